#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pibackup maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: usb_exfat_mount
short_description: Mount or unmount an exFAT or FAT32 USB stick, found by label, UUID or device
version_added: 1.0.0
description:
  - Finds a USB stick with C(blkid) (no udev needed) by O(device), O(label) or O(uuid); with none of
    them, uses the single exFAT or FAT filesystem on a removable or USB disk.
  - Mounts it at O(path) with the requested owner and masks, using the kernel driver when
    C(/proc/filesystems) lists the filesystem, else the FUSE driver (C(mount.exfat-fuse) for exFAT,
    C(fusefat) for FAT32).
  - Idempotent against the live mount table C(/proc/self/mountinfo), never against fstab, which
    it does not touch. For FUSE mounts, whose mount table entry does not show uid, gid or masks,
    the live options are read from the command line of the daemon serving the mount and from
    the owner and mode of the mount's root directory.
  - When the stick is mounted elsewhere (a desktop automount under C(/media) or C(/run/media)), it
    is released there first (O(release_automount)). When it is mounted at O(path) with other
    options, it is unmounted and mounted again (FUSE mounts cannot be remounted).
  - A FUSE mount whose daemon died (C(Transport endpoint is not connected)) counts as not mounted;
    the dead entry is unmounted and the stick mounted again.
  - After mounting, a small file is created, fsynced and deleted as O(uid)/O(gid) to prove the
    stick is writable for that user; a read-only stick, or one the driver refuses to write to, is
    unmounted again and the task fails with advice (C(fsck.exfat) on the unmounted device, or
    C(ro) in O(options)), unless O(options) contains C(ro). A stick whose boot sector is marked dirty
    is mounted with a warning advising C(fsck) (see RV(dirty)).
  - O(state=unmounted) syncs, then unmounts, retrying while the mount is busy for O(busy_timeout)
    seconds; then it fails listing the processes holding the mount and leaves it mounted. It never
    unmounts lazily.
  - The kernel driver path (C(mount -t exfat|vfat -o uid=,gid=,fmask=,dmask=)) is the one a Raspberry
    Pi uses; the collection's own integration tests run on machines without kernel exfat/vfat and
    exercise the FUSE path; the kernel path is covered by unit tests of its option handling.
author:
  - pibackup maintainers (@pibackup)
options:
  path:
    description:
      - Absolute path of the mount point. Created when missing, with O(path_owner), O(path_group)
        and O(path_mode).
      - Required with O(state=mounted). With O(state=unmounted) it may be left out when O(device),
        O(label) or O(uuid) is given; the stick is then unmounted wherever it is mounted.
    type: path
  state:
    description:
      - V(mounted) makes sure the stick is mounted at O(path) with the requested options.
      - V(unmounted) makes sure nothing from the stick is mounted (at O(path), or anywhere when only
        a selector is given). A path that is not mounted is not an error.
    type: str
    choices: [mounted, unmounted]
    default: mounted
  device:
    description:
      - The block device of the filesystem, such as C(/dev/sda1). Symlinks are followed.
      - With O(state=unmounted), a device that no longer exists (a pulled stick) is not an error;
        mounts whose source is that device are still unmounted.
      - Mutually exclusive with O(label) and O(uuid).
    type: path
  label:
    description:
      - The filesystem label, as C(blkid) reports it. Two filesystems with this label make the
        task fail, listing both.
    type: str
  uuid:
    description:
      - The filesystem UUID (for exFAT and FAT the volume serial such as C(1A2B-3C4D)), compared
        without regard to case.
    type: str
  candidates:
    description:
      - Which filesystems count as candidates when no O(device), O(label) or O(uuid) is given.
      - V(removable) takes only filesystems on a disk whose C(/sys/block/DISK/removable) is 1 or
        whose sysfs path runs through the USB bus. Loop devices are neither.
      - V(any) takes every filesystem of O(fstypes), loop devices included (for labs and tests).
    type: str
    choices: [removable, any]
    default: removable
  candidate_devices:
    description:
      - Shell-style patterns (such as C(/dev/sd*)) the device path of a candidate must match when
        no O(device), O(label) or O(uuid) is given. Empty means every device.
    type: list
    elements: str
    default: []
  fstypes:
    description:
      - Filesystem types (C(blkid) TYPE) the module agrees to mount. Anything else is refused,
        naming the type it found.
    type: list
    elements: str
    default: [exfat, vfat]
  driver:
    description:
      - V(auto) uses the kernel driver when C(/proc/filesystems) lists the filesystem, else FUSE.
      - V(kernel) requires the kernel driver; V(fuse) always uses C(mount.exfat-fuse) (exFAT) or
        C(fusefat) (FAT32).
      - When no driver exists the task fails naming the packages to install (C(exfatprogs),
        C(exfat-fuse); C(dosfstools), C(fusefat)).
    type: str
    choices: [auto, kernel, fuse]
    default: auto
  uid:
    description:
      - Owner of every file on the stick, as a number or a user name (resolved on the host).
    type: str
    default: '0'
  gid:
    description:
      - Group of every file on the stick, as a number or a group name.
    type: str
    default: '0'
  umask:
    description:
      - Octal mask applied to files and directories, as a quoted string such as V('022').
      - An unquoted YAML number is taken as the number YAML made of it (YAML reads C(0022) as
        octal, but C(22) as decimal 22), so quote it.
    type: raw
    default: '022'
  fmask:
    description:
      - Octal mask for files only, as a quoted string; overrides O(umask) for files. Not supported
        by C(fusefat) unless equal to O(dmask).
    type: raw
  dmask:
    description:
      - Octal mask for directories only, as a quoted string; overrides O(umask) for directories.
    type: raw
  options:
    description:
      - Extra mount options, such as V(ro), V(noatime) or V(sync). V(ro) mounts read-only and skips
        the write test.
    type: list
    elements: str
    default: []
  release_automount:
    description:
      - When the stick is already mounted somewhere other than O(path) (a desktop automount),
        unmount it there first and list that path in RV(released).
      - With V(false), the task fails naming that mount.
    type: bool
    default: true
  busy_timeout:
    description:
      - Seconds to keep retrying an unmount that fails because the mount is busy.
    type: int
    default: 10
  path_owner:
    description:
      - Owner (number or name) of the mount point directory, set when it is created and whenever
        it is not a mount point. The owner of the mounted stick's root comes from O(uid).
    type: str
    default: '0'
  path_group:
    description:
      - Group (number or name) of the mount point directory.
    type: str
    default: '0'
  path_mode:
    description:
      - Octal mode of the mount point directory as a quoted string, set explicitly (never left to
        the process umask).
    type: raw
    default: '0755'
attributes:
  check_mode:
    support: full
    description: Check mode reports exactly the actions a real run would take and changes nothing.
  diff_mode:
    support: full
    description: Returns the device, path and options before and after.
  idempotent:
    support: full
    description: A second run with the same arguments reports no change.
notes:
  - Must run as root (mount, umount, the write test as another uid).
  - The live options of a FUSE mount are read from C(/proc); a FUSE daemon started by something
    else without C(uid)/C(gid)/C(umask) options is judged by the owner and mode of the mount root.
  - The owner and mode of the mount point directory can only be checked while nothing is mounted
    on it.
  - As for every module that returns O(path), Ansible adds C(uid), C(gid), C(owner), C(group),
    C(mode), C(state) and C(size) of the mount point (its root directory) to the result; the
    options the stick is mounted with are in RV(options).
  - O(uid) and O(gid) must lie between 0 and 4294967294 and be mapped in the user namespace the
    module runs in (C(/proc/self/uid_map)); names are resolved with the host's user database.
requirements:
  - blkid (util-linux), mount and umount
  - exfat-fuse (mount.exfat-fuse) when the kernel has no exfat driver; fusefat when it has no vfat driver
'''

EXAMPLES = r'''
- name: Mount the backup stick by label for user 1000
  pibackup.docker_usb.usb_exfat_mount:
    path: /mnt/docker-usb
    label: DockerIMGs
    uid: 1000
    gid: 1000
    umask: '022'

- name: Mount by UUID, read-only
  pibackup.docker_usb.usb_exfat_mount:
    path: /mnt/docker-usb
    uuid: 1A2B-3C4D
    options: [ro]

- name: Mount the only USB exFAT stick plugged in, releasing a desktop automount
  pibackup.docker_usb.usb_exfat_mount:
    path: /mnt/docker-usb
    uid: 1000
    gid: 1000
  register: stick

- name: Show where the desktop had mounted it
  ansible.builtin.debug:
    var: stick.released

- name: Unmount it, waiting up to 30 seconds for busy processes
  pibackup.docker_usb.usb_exfat_mount:
    path: /mnt/docker-usb
    state: unmounted
    busy_timeout: 30

- name: Unmount the stick wherever it is mounted
  pibackup.docker_usb.usb_exfat_mount:
    label: DockerIMGs
    state: unmounted
'''

RETURN = r'''
device:
  description: The block device of the stick.
  returned: when the stick was found
  type: str
  sample: /dev/sda1
uuid:
  description: The filesystem UUID reported by blkid.
  returned: when the stick was found
  type: str
  sample: 1A2B-3C4D
label:
  description: The filesystem label reported by blkid.
  returned: when the stick was found
  type: str
  sample: DockerIMGs
fstype:
  description: The filesystem type reported by blkid (V(exfat) or V(vfat)).
  returned: when the stick was found
  type: str
  sample: exfat
driver:
  description: The driver used, V(kernel) or V(fuse).
  returned: state=mounted
  type: str
  sample: fuse
path:
  description: The mount point.
  returned: always
  type: str
  sample: /mnt/docker-usb
options:
  description:
    - The live options of the mount (in check mode, when a mount would happen, the predicted ones).
  returned: state=mounted
  type: dict
  contains:
    uid:
      description: Owner of the files.
      type: int
    gid:
      description: Group of the files.
      type: int
    umask:
      description: The umask given to the driver, as 4-digit octal, or null when it was not given.
      type: str
    fmask:
      description: Effective file mask, 4-digit octal.
      type: str
    dmask:
      description: Effective directory mask, 4-digit octal.
      type: str
    ro:
      description: Whether the mount is read-only.
      type: bool
    raw:
      description: The raw option list (mount options, super options, FUSE daemon options).
      type: list
      elements: str
    source:
      description: Where uid/gid/masks were read, V(super_options), V(daemon), V(root_dir) or V(predicted).
      type: str
  sample: {uid: 1000, gid: 1000, umask: '0022', fmask: '0022', dmask: '0022', ro: false,
           raw: [rw, nosuid, nodev, relatime, user_id=0, group_id=0], source: daemon}
size_bytes:
  description: Size of the filesystem in bytes (in check mode before mounting, the size of the device).
  returned: state=mounted
  type: int
  sample: 31914983424
free_bytes:
  description: Bytes available for writing, or null when unknown (check mode before mounting; C(fusefat), which reports no free space).
  returned: state=mounted
  type: int
  sample: 30112341504
max_file_bytes:
  description: Largest file the filesystem can hold; 4294967295 for vfat (FAT32), null for exFAT.
  returned: state=mounted
  type: int
  sample: 4294967295
dirty:
  description:
    - Whether the filesystem was marked dirty (not cleanly unmounted) before this task mounted it,
      read from its boot sector (exFAT VolumeDirty flag; FAT32 state byte and FAT entry 1).
      A dirty stick is mounted with a warning advising C(fsck.exfat) or C(fsck.vfat).
    - Null when the module did not mount (already mounted as requested, or mounted in check mode)
      or the boot sector is not exFAT/FAT32.
  returned: state=mounted
  type: bool
  sample: false
released:
  description: Paths the stick was unmounted from because it was automounted there.
  returned: always
  type: list
  elements: str
  sample: [/media/pi/DockerIMGs]
unmounted:
  description: Paths unmounted by O(state=unmounted).
  returned: state=unmounted
  type: list
  elements: str
  sample: [/mnt/docker-usb]
candidates:
  description:
    - When no device, label or uuid was given, every exFAT/FAT filesystem blkid saw and whether it
      was taken, with the reason.
  returned: when auto-selection ran
  type: list
  elements: dict
  sample: [{device: /dev/sda1, label: DockerIMGs, uuid: 1A2B-3C4D, fstype: exfat, size_bytes: 31914983424,
            taken: true, reason: removable disk}]
holders:
  description: On a busy unmount failure, the processes holding the mount (pid, command, via).
  returned: failure
  type: list
  elements: dict
actions:
  description: What was done (in check mode, what would be done), one line per step.
  returned: always
  type: list
  elements: str
  sample: ["unmount /dev/sda1 from /media/pi/DockerIMGs (release automount)", "mount /dev/sda1 ..."]
diff:
  description: Before and after (device, path, options) in diff mode.
  returned: diff mode
  type: dict
'''

from ansible_collections.pibackup.docker_usb.plugins.module_utils._common import ModuleClient
from ansible_collections.pibackup.docker_usb.plugins.module_utils._mount import MountManager


def main():
    argument_spec = dict(
        path=dict(type='path'),
        state=dict(type='str', default='mounted', choices=['mounted', 'unmounted']),
        device=dict(type='path'),
        label=dict(type='str'),
        uuid=dict(type='str'),
        candidates=dict(type='str', default='removable', choices=['removable', 'any']),
        candidate_devices=dict(type='list', elements='str', default=[]),
        fstypes=dict(type='list', elements='str', default=['exfat', 'vfat']),
        driver=dict(type='str', default='auto', choices=['auto', 'kernel', 'fuse']),
        uid=dict(type='str', default='0'),
        gid=dict(type='str', default='0'),
        umask=dict(type='raw', default='022'),
        fmask=dict(type='raw'),
        dmask=dict(type='raw'),
        options=dict(type='list', elements='str', default=[]),
        release_automount=dict(type='bool', default=True),
        busy_timeout=dict(type='int', default=10),
        path_owner=dict(type='str', default='0'),
        path_group=dict(type='str', default='0'),
        path_mode=dict(type='raw', default='0755'),
    )
    client = ModuleClient(
        argument_spec,
        mutually_exclusive=[('device', 'label', 'uuid')],
        required_if=[('state', 'mounted', ('path',))],
        required_one_of=[('path', 'device', 'label', 'uuid')],
    )
    client.run(MountManager)


if __name__ == '__main__':
    main()
