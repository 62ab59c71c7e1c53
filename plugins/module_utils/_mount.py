# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pibackup maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# Private helper of pibackup.docker_usb: not a public API, may change without notice.
"""MountManager: the mounted/unmounted state machine of ``usb_exfat_mount``.

It reads the live state (mountinfo, blkid, sysfs, /proc), computes what differs
from the request, acts only outside check mode, records one action line per
step, and returns the live result (and a diff in diff mode).
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import errno
import grp
import os
import pwd
import stat
import time

from ansible_collections.pibackup.docker_usb.plugins.module_utils._common import ModuleFailure
from ansible_collections.pibackup.docker_usb.plugins.module_utils import _blockdev
from ansible_collections.pibackup.docker_usb.plugins.module_utils import _mountinfo


MAX_ID = 4294967294          # (uid_t)-1 is reserved
VFAT_MAX_FILE_BYTES = 4294967295
PROC_FILESYSTEMS = '/proc/filesystems'
UID_MAP = '/proc/self/uid_map'
GID_MAP = '/proc/self/gid_map'

# fstype (blkid TYPE) -> FUSE daemon and the package that ships it.
FUSE_DRIVERS = {
    'exfat': ('mount.exfat-fuse', 'exfat-fuse'),
    'vfat': ('fusefat', 'fusefat'),
}
KERNEL_PACKAGES = {'exfat': 'exfatprogs', 'vfat': 'dosfstools'}
# mountinfo fstypes a stick can show up as (kernel and FUSE).
STICK_MOUNT_FSTYPES = ('exfat', 'vfat', 'msdos', 'fuseblk', 'fuse.fusefat', 'fuse.exfat')


# ---------------------------------------------------------------- pure helpers

def parse_mask(value, name):
    """An octal mask given as a string ('022', '0o022') or int -> int 0..0o777."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ModuleFailure('%s=%r is not an octal mask' % (name, value), item=name)
    if isinstance(value, int):
        mask = value
    else:
        text = str(value).strip()
        if text.lower().startswith('0o'):
            text = text[2:]
        if not text or any(c not in '01234567' for c in text):
            raise ModuleFailure('%s=%r is not an octal mask; write it like "022" or "0077"'
                                % (name, value), item=name)
        mask = int(text, 8)
    if not 0 <= mask <= 0o777:
        raise ModuleFailure('%s=%r is out of range; a mask is between 000 and 777 (octal)'
                            % (name, value), item=name)
    return mask


def id_is_mapped(number, map_path):
    """Whether number lies in one of the ranges of a /proc/self/uid_map-style file.

    A missing or unreadable map counts as mapped (the kernel range was checked already)."""
    try:
        with open(map_path) as handle:
            ranges = [tuple(int(f) for f in line.split()) for line in handle if line.strip()]
    except (IOError, OSError, ValueError):
        return True
    return any(inside <= number < inside + count for inside, _outside, count in ranges)


def resolve_id(value, kind, map_path=None):
    """A uid/gid given as a number or a name -> int; names resolved with pwd/grp."""
    if value is None:
        return None
    text = str(value).strip()
    if text.lstrip('-').isdigit():
        number = int(text)
        if not 0 <= number <= MAX_ID:
            raise ModuleFailure('%s=%s is out of range (0 to %d)' % (kind, text, MAX_ID), item=kind)
        if map_path and not id_is_mapped(number, map_path):
            raise ModuleFailure('%s=%s is out of range: it is not mapped in this user namespace (%s)'
                                % (kind, text, map_path), item=kind)
        return number
    try:
        if kind in ('uid', 'path_owner'):
            return pwd.getpwnam(text).pw_uid
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise ModuleFailure('%s=%s: no such %s on this host; give a number instead'
                            % (kind, text, 'user' if kind in ('uid', 'path_owner') else 'group'),
                            item=kind)


def format_mask(mask):
    return None if mask is None else '%04o' % mask


def desired_options(params):
    """The options the user asked for, in the same shape as _mountinfo.live_options()."""
    umask = parse_mask(params.get('umask'), 'umask')
    fmask = parse_mask(params.get('fmask'), 'fmask')
    dmask = parse_mask(params.get('dmask'), 'dmask')
    extra = [o for o in (params.get('options') or []) if o not in ('rw',)]
    return dict(
        uid=resolve_id(params.get('uid'), 'uid', UID_MAP),
        gid=resolve_id(params.get('gid'), 'gid', GID_MAP),
        umask=umask,
        fmask=umask if fmask is None else fmask,
        dmask=umask if dmask is None else dmask,
        ro='ro' in extra,
        extra=[o for o in extra if o != 'ro'],
    )


def option_differences(desired, live):
    """Human-readable differences between desired and live options ([] when equal)."""
    diffs = []
    for key in ('uid', 'gid'):
        if desired[key] != live.get(key):
            diffs.append('%s %s -> %s' % (key, live.get(key), desired[key]))
    for key in ('fmask', 'dmask'):
        if desired[key] != live.get(key):
            diffs.append('%s %s -> %s' % (key, format_mask(live.get(key)), format_mask(desired[key])))
    if desired['ro'] != bool(live.get('ro')):
        diffs.append('%s -> %s' % ('ro' if live.get('ro') else 'rw', 'ro' if desired['ro'] else 'rw'))
    raw = live.get('raw') or []
    for option in desired['extra']:
        if option not in raw:
            diffs.append('option %s missing' % option)
    return diffs


def mount_command(driver, fstype, binary, device, path, desired):
    """The argv that mounts device at path with the desired options."""
    opts = ['uid=%d' % desired['uid'], 'gid=%d' % desired['gid']]
    if driver == 'kernel':
        opts += ['fmask=%s' % format_mask(desired['fmask']), 'dmask=%s' % format_mask(desired['dmask'])]
        opts.append('ro' if desired['ro'] else 'rw')
        return [binary, '-t', fstype, '-o', ','.join(opts + desired['extra']), device, path]
    if os.path.basename(binary) == 'fusefat':
        # fusefat knows only umask, mounts read-only unless given 'rw+', and
        # without allow_other only root could use the mount.
        if desired['fmask'] != desired['dmask']:
            raise ModuleFailure('fusefat applies one umask to files and directories; '
                                'fmask=%s and dmask=%s differ: give umask only, or use the kernel vfat driver'
                                % (format_mask(desired['fmask']), format_mask(desired['dmask'])), item=device)
        opts = (['ro' if desired['ro'] else 'rw+'] + opts
                + ['umask=%s' % format_mask(desired['dmask']), 'allow_other', 'default_permissions'])
    else:
        opts += ['fmask=%s' % format_mask(desired['fmask']), 'dmask=%s' % format_mask(desired['dmask'])]
        if desired['ro']:
            opts.append('ro')
    return [binary, '-o', ','.join(opts + desired['extra']), device, path]


def _inside(target, mount_point):
    return target == mount_point or target.startswith(mount_point.rstrip('/') + '/')


def find_holders(mount_point, exclude_pids=(), proc='/proc'):
    """Processes holding mount_point busy: dicts pid, command, via (cwd/root/fd/maps)."""
    holders = []
    for name in os.listdir(proc):
        if not name.isdigit() or int(name) in exclude_pids:
            continue
        base = os.path.join(proc, name)
        via = []
        for link in ('cwd', 'root'):
            try:
                if _inside(os.readlink(os.path.join(base, link)), mount_point):
                    via.append(link)
            except OSError:
                pass
        try:
            for fd in os.listdir(os.path.join(base, 'fd')):
                try:
                    if _inside(os.readlink(os.path.join(base, 'fd', fd)), mount_point):
                        via.append('fd %s' % fd)
                except OSError:
                    pass
        except OSError:
            pass
        try:
            with open(os.path.join(base, 'maps')) as handle:
                for line in handle:
                    parts = line.split(None, 5)
                    if len(parts) == 6 and _inside(parts[5].strip(), mount_point):
                        via.append('maps')
                        break
        except (IOError, OSError):
            pass
        if via:
            argv = _mountinfo.read_cmdline(name, proc) or []
            holders.append(dict(pid=int(name), command=' '.join(argv), via=via))
    return holders


def kernel_supports(fstype, proc_filesystems=PROC_FILESYSTEMS):
    try:
        with open(proc_filesystems) as handle:
            return any(line.split()[-1] == fstype for line in handle if line.strip())
    except (IOError, OSError):
        return False


# ---------------------------------------------------------------- the manager

class MountManager(object):
    """Brings the stick to state mounted (with the requested options) or unmounted."""

    def __init__(self, client):
        self.client = client
        self.module = client.module
        self.params = client.params
        self.check_mode = client.check_mode
        self.result = client.result
        self.sys = _blockdev.SysBlock()
        self.device_param = None
        self.device_gone = False
        self.result.update(device=None, uuid=None, label=None, fstype=None, driver=None,
                           path=None, options=None, size_bytes=None, free_bytes=None,
                           max_file_bytes=None, released=[], dirty=None)

    # ---- reading the live state

    def _blkid(self, device=None):
        binary = self.module.get_bin_path('blkid', opt_dirs=['/sbin', '/usr/sbin'])
        if not binary:
            raise ModuleFailure('blkid not found; install util-linux (or blkid)', item='blkid')
        rc, out, err = self.module.run_command(_blockdev.blkid_command(binary, device))
        if rc == 2:      # nothing found
            return []
        if rc != 0:
            raise ModuleFailure('blkid failed (rc=%d): %s' % (rc, err.strip()), item=device)
        filesystems = _blockdev.parse_blkid_export(out)
        for fs in filesystems:
            fs['size_bytes'] = self.sys.facts(fs.get('DEVNAME', '')).get('size_bytes')
        return filesystems

    def _mounts(self):
        return _mountinfo.read_mountinfo()

    def _daemons(self):
        return _mountinfo.fuse_daemons()

    def _device_ids(self, device):
        try:
            rdev = os.stat(device).st_rdev
        except OSError:
            return None
        return '%d:%d' % (os.major(rdev), os.minor(rdev))

    def _mounts_of(self, device, entries, daemons):
        """Entries that mount device: by source, by major:minor (fuseblk, kernel) or daemon argv."""
        ids = self._device_ids(device)
        found = []
        for entry in entries:
            if entry.source == device or (ids and entry.major_minor == ids and entry.fstype != 'fuse.fusefat'):
                found.append(entry)
            elif entry.is_fuse and _mountinfo.daemon_for(daemons, device, entry.mount_point):
                found.append(entry)
        return found

    def _entry_device(self, entry, daemons):
        """The /dev path behind a mount entry (fusefat shows 'fusefat' as source)."""
        if entry.source.startswith('/dev/'):
            return entry.source
        for pid, argv in daemons:
            if entry.mount_point in argv[1:]:
                for arg in argv[1:]:
                    if arg.startswith('/dev/'):
                        return arg
        return entry.source

    def _live(self, entry, device, daemons):
        found = _mountinfo.daemon_for(daemons, device, entry.mount_point) if entry.is_fuse else None
        try:
            root_stat = os.stat(entry.mount_point)
        except OSError:
            root_stat = None
        return _mountinfo.live_options(entry, found[1] if found else None, root_stat)

    # ---- validating the request

    def _validate(self):
        p = self.params
        path = p['path']
        if path is not None:
            if not os.path.isabs(path):
                raise ModuleFailure('path=%s is relative; give an absolute mount point such as /mnt/docker-usb'
                                    % path, item=path)
            path = os.path.normpath(path)
            if os.path.lexists(path) and not os.path.isdir(path):
                raise ModuleFailure('path=%s exists and is not a directory; choose another mount point '
                                    'or remove that file' % path, item=path)
            if os.path.isdir(path):
                path = os.path.realpath(path)
        self.path = path
        self.desired = desired_options(p)
        self.path_uid = resolve_id(p['path_owner'], 'path_owner')
        self.path_gid = resolve_id(p['path_group'], 'path_group')
        self.path_mode = parse_mask(p['path_mode'], 'path_mode')
        if p['busy_timeout'] < 0:
            raise ModuleFailure('busy_timeout=%d: give 0 or more seconds' % p['busy_timeout'], item='busy_timeout')
        if p['device']:
            device = os.path.realpath(p['device'])
            self.device_param = device
            try:
                mode = os.stat(device).st_mode
            except OSError as exc:
                if exc.errno == errno.ENOENT and p['state'] == 'unmounted':
                    # A pulled stick: its stale mounts are still found by source below.
                    self.device_gone = True
                    return
                raise ModuleFailure('device=%s: %s' % (p['device'], exc.strerror), item=p['device'])
            if not stat.S_ISBLK(mode):
                raise ModuleFailure('device=%s is not a block device; give the partition, such as /dev/sda1, '
                                    'or select the stick with label or uuid' % p['device'], item=p['device'])

    # ---- finding the stick

    def _find_stick(self, required=True):
        """blkid dict of the selected stick; None when not found and not required."""
        p = self.params
        fstypes = p['fstypes']
        if p['device']:
            found = self._blkid(self.device_param)
            if not found:
                raise ModuleFailure('device=%s holds no filesystem blkid recognises; format it with '
                                    'mkfs.exfat, or check the device name' % self.device_param,
                                    item=self.device_param)
            fs = found[0]
            fs['DEVNAME'] = self.device_param
            return fs
        everything = self._blkid()
        if p['label'] or p['uuid']:
            key, value = ('LABEL', p['label']) if p['label'] else ('UUID', p['uuid'])
            matches = [fs for fs in everything
                       if fs.get(key) == value or (key == 'UUID' and (fs.get(key) or '').lower() == value.lower())]
            if len(matches) == 1:
                return matches[0]
            seen = '; '.join(_blockdev.describe(fs) for fs in everything) or 'nothing'
            if not matches:
                if not required:
                    return None
                raise ModuleFailure('stick %s=%s not found; blkid saw: %s' % (key, value, seen),
                                    item='%s=%s' % (key, value))
            raise ModuleFailure('%s=%s matches %d filesystems: %s; select the stick by uuid or device'
                                % (key, value, len(matches),
                                   '; '.join(_blockdev.describe(fs) for fs in matches)),
                                item='%s=%s' % (key, value))
        facts = dict((fs.get('DEVNAME'), self.sys.facts(fs.get('DEVNAME', ''))) for fs in everything)
        taken, report = _blockdev.select_candidates(everything, facts, fstypes,
                                                    p['candidates'], p['candidate_devices'])
        self.result['candidates'] = report
        if len(taken) == 1:
            self.client.action('selected %s as the only candidate stick' % taken[0].get('DEVNAME'))
            return taken[0]
        if not taken and not required:
            return None
        raise ModuleFailure('%s candidate sticks with no device, label or uuid given (need exactly one): %s'
                            % ('no' if not taken else len(taken), _blockdev.format_report(report)),
                            item='auto-selection')

    def _describe_stick(self, fs):
        self.result.update(device=fs.get('DEVNAME'), uuid=fs.get('UUID'), label=fs.get('LABEL'),
                           fstype=fs.get('TYPE'))

    def _choose_driver(self, fstype):
        want = self.params['driver']
        fuse_binary, fuse_package = FUSE_DRIVERS.get(fstype, (None, None))
        kernel = kernel_supports(fstype)
        if want in ('auto', 'kernel') and kernel:
            return 'kernel', self.module.get_bin_path('mount', required=True, opt_dirs=['/bin', '/usr/bin'])
        if want == 'kernel':
            raise ModuleFailure('driver=kernel but the kernel has no %s driver (/proc/filesystems does not list it); '
                                'use driver=fuse or driver=auto' % fstype, item=fstype)
        binary = fuse_binary and self.module.get_bin_path(fuse_binary, opt_dirs=['/sbin', '/usr/sbin'])
        if binary:
            return 'fuse', binary
        if fuse_binary is None:
            raise ModuleFailure('no %s driver: the kernel does not list %s in /proc/filesystems and this module '
                                'knows no FUSE driver for it' % (fstype, fstype), item=fstype)
        raise ModuleFailure('no %s driver: the kernel does not list %s in /proc/filesystems and %s is not installed; '
                            'install the packages %s and %s (apt-get install %s %s)'
                            % (fstype, fstype, fuse_binary, KERNEL_PACKAGES[fstype], fuse_package,
                               KERNEL_PACKAGES[fstype], fuse_package), item=fstype)

    # ---- acting

    def _umount(self, entry, daemons, why):
        """sync then umount entry.mount_point, retrying while busy; never lazy."""
        target = entry.mount_point
        self.client.action('unmount %s from %s (%s)' % (entry.source, target, why))
        if self.check_mode:
            return
        os.sync()
        binary = self.module.get_bin_path('umount', required=True, opt_dirs=['/bin', '/usr/bin'])
        deadline = time.time() + self.params['busy_timeout']
        while True:
            rc, out, err = self.module.run_command([binary, target])
            if rc == 0:
                return
            message = (err or out).strip()
            if 'busy' not in message or time.time() >= deadline:
                break
            time.sleep(0.5)
        if 'busy' in message:
            exclude = set([os.getpid()] + [pid for pid, argv in daemons
                                           if entry.mount_point in argv[1:]])
            holders = find_holders(target, exclude)
            listed = '; '.join('pid %d (%s) via %s' % (h['pid'], h['command'], ', '.join(h['via']))
                               for h in holders) or 'none found in /proc (a kernel user such as a loop device or swap?)'
            raise ModuleFailure('%s is busy after %s s, left mounted; stop these processes and retry: %s'
                                % (target, self.params['busy_timeout'], listed), item=target, holders=holders)
        raise ModuleFailure('umount %s failed (rc=%d): %s' % (target, rc, message), item=target)

    def _ensure_mount_point(self):
        path = self.path
        if not os.path.exists(path):
            self.client.action('create mount point %s (owner %d:%d, mode %s)'
                               % (path, self.path_uid, self.path_gid, format_mask(self.path_mode)))
            if not self.check_mode:
                parent = os.path.dirname(path)
                if not os.path.isdir(parent):
                    os.makedirs(parent, 0o755)
                os.mkdir(path, 0o700)
                os.chown(path, self.path_uid, self.path_gid)
                os.chmod(path, self.path_mode)
            return True
        st = os.stat(path)
        changed = False
        if (st.st_uid, st.st_gid) != (self.path_uid, self.path_gid):
            self.client.action('set owner of %s %d:%d -> %d:%d'
                               % (path, st.st_uid, st.st_gid, self.path_uid, self.path_gid))
            if not self.check_mode:
                os.chown(path, self.path_uid, self.path_gid)
            changed = True
        if stat.S_IMODE(st.st_mode) != self.path_mode:
            self.client.action('set mode of %s %s -> %s' % (path, format_mask(stat.S_IMODE(st.st_mode)),
                                                            format_mask(self.path_mode)))
            if not self.check_mode:
                os.chmod(path, self.path_mode)
            changed = True
        return changed

    def _write_test(self, path):
        """Create, fsync and delete a small file as the requested uid/gid in a child process.

        Returns None when it worked, else the errno text."""
        uid, gid = self.desired['uid'], self.desired['gid']
        name = os.path.join(path, '.pibackup-write-test-%d' % os.getpid())
        pid = os.fork()
        if pid == 0:     # child: drop to the requested ids, never return
            code = 0
            try:
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    os.write(fd, b'pibackup write test\n' * 50)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.unlink(name)
            except OSError as exc:
                code = exc.errno or 1
            except BaseException:
                code = 1
            os._exit(code)
        status = os.waitpid(pid, 0)[1]
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1
        if code == 0:
            return None
        try:
            if os.path.lexists(name):
                os.unlink(name)
        except OSError:
            pass
        return '%s (%s)' % (os.strerror(code), errno.errorcode.get(code, code))

    # ---- states

    def run(self):
        self._validate()
        if self.params['state'] == 'mounted':
            self.mounted()
        else:
            self.unmounted()

    def _view(self, entry, device, options):
        if entry is None:
            return dict(state='unmounted', path=self.path)
        view = dict(state='mounted', device=device, path=entry.mount_point)
        if options is not None:
            view['options'] = self._public_options(options)
        return view

    @staticmethod
    def _public_options(options):
        public = dict(options)
        # One umask describes the mount when files and directories share a mask.
        public['umask'] = public.get('fmask') if public.get('fmask') == public.get('dmask') else None
        for key in ('umask', 'fmask', 'dmask'):
            public[key] = format_mask(public.get(key))
        public.pop('extra', None)
        return public

    def mounted(self):
        p = self.params
        path = self.path
        if path is None:
            raise ModuleFailure('state=mounted needs path', item='path')
        self.result['path'] = path
        fs = self._find_stick()
        self._describe_stick(fs)
        device, fstype = fs.get('DEVNAME'), fs.get('TYPE')
        if fstype not in p['fstypes']:
            raise ModuleFailure('%s holds a %s filesystem, which is not in fstypes (%s); refusing to mount it. '
                                'Add %s to fstypes if you really mean it'
                                % (device, fstype, ', '.join(p['fstypes']), fstype), item=device)
        self.result['max_file_bytes'] = VFAT_MAX_FILE_BYTES if fstype == 'vfat' else None
        driver, binary = self._choose_driver(fstype)
        self.result['driver'] = driver
        # Built before anything is touched: a request the driver cannot honour fails here.
        argv = mount_command(driver, fstype, binary, device, path, self.desired)

        daemons = self._daemons()
        entries = self._mounts()
        device_mounts = self._mounts_of(device, entries, daemons)
        was_mounted = bool(device_mounts)
        at_path = _mountinfo.top_mount_at(entries, path)
        before = None
        if at_path is not None:
            at_device = self._entry_device(at_path, daemons)
            live = self._live(at_path, at_device, daemons) if _mountinfo.is_alive(path) else None
            before = self._view(at_path, at_device, live)
        else:
            before = self._view(None, None, None)

        # 1. dead FUSE mounts of this device or at the path
        suspects = [e for e in device_mounts if e.mount_point != path] + ([at_path] if at_path else [])
        dead = [e for e in suspects if e.is_fuse and not _mountinfo.is_alive(e.mount_point)]
        for entry in dead:
            self._umount(entry, daemons, 'dead FUSE mount: its daemon is gone')
            self.result['changed'] = True
        dead_points = set(e.mount_point for e in dead)
        device_mounts = [e for e in device_mounts if e.mount_point not in dead_points]
        if at_path is not None and at_path.mount_point in dead_points:
            at_path = None

        # 2. something else mounted at path
        if at_path is not None and at_path not in device_mounts:
            raise ModuleFailure('%s already has %s (%s) mounted; unmount it first or choose another path'
                                % (path, self._entry_device(at_path, daemons), at_path.fstype), item=path)

        # 3. mounted elsewhere (desktop automount)
        elsewhere = [e for e in device_mounts if e.mount_point != path]
        if elsewhere and not p['release_automount']:
            raise ModuleFailure('%s is already mounted at %s; unmount it there or set release_automount=true'
                                % (device, ', '.join(e.mount_point for e in elsewhere)),
                                item=device, mounted_at=[e.mount_point for e in elsewhere])
        for entry in elsewhere:
            self._umount(entry, daemons, 'release automount')
            self.result['released'].append(entry.mount_point)
            self.result['changed'] = True

        # 4. mounted at path: compare live options
        need_mount = True
        if at_path is not None:
            live = self._live(at_path, device, daemons)
            diffs = option_differences(self.desired, live)
            if diffs:
                self._umount(at_path, daemons, 'options differ: %s' % ', '.join(diffs))
                self.result['changed'] = True
            else:
                need_mount = False

        if need_mount:
            facts = self.sys.facts(device)
            if facts.get('read_only') and not self.desired['ro']:
                raise ModuleFailure('%s is read-only (write-protect switch, or a read-only loop device); '
                                    'mount it with options: [ro] to read it, or make it writable and retry'
                                    % device, item=device)
            if not was_mounted or not self.check_mode:
                # Read only while nothing has it mounted: a mounted volume is always flagged dirty.
                self.result['dirty'] = _blockdev.read_dirty_flag(device, fstype)
            if self.result['dirty']:
                # A warning, not a failure: FUSE daemons killed at shutdown leave the flag set
                # on sticks that are fine; the write test below still fails on a broken one.
                self.module.warn('%s is marked dirty (not cleanly unmounted: pulled while in use, or its FUSE '
                                 'daemon was killed); check it with fsck.%s %s while it is unmounted'
                                 % (device, fstype, device))
            if self._ensure_mount_point():
                self.result['changed'] = True
            self.client.action('mount %s (%s, %s driver) at %s: %s' % (device, fstype, driver, path, ' '.join(argv)))
            self.result['changed'] = True
            if not self.check_mode:
                rc, out, err = self.module.run_command(argv)
                if rc != 0:
                    message = (err or out).strip()
                    raise ModuleFailure('mounting %s at %s failed (rc=%d): %s. If the filesystem is damaged, run '
                                        'fsck.%s on the unmounted %s' % (device, path, rc, message, fstype, device),
                                        item=device, cmd=argv, rc=rc, stdout=out, stderr=err)
                self._after_mount(device, path)

        self._report_live(device, path, need_mount)
        if self.client.diff_mode:
            after = dict(state='mounted', device=device, path=path, options=self.result['options'])
            self.result['diff'] = dict(before=before, after=after)

    def _after_mount(self, device, path):
        """Check that the new mount is there, alive, writable unless ro was asked."""
        daemons = self._daemons()
        entry = _mountinfo.top_mount_at(self._mounts(), path)
        if entry is None or not _mountinfo.is_alive(path):
            raise ModuleFailure('mounting %s at %s reported success but the mount is not there' % (device, path),
                                item=device)
        if self.desired['ro']:
            return
        live = self._live(entry, device, daemons)
        problem = None
        if live['ro']:
            problem = 'the driver mounted it read-only (write-protected stick or read-only device)'
        else:
            error = self._write_test(path)
            if error:
                problem = 'a test file could not be written as uid %d gid %d: %s' % (
                    self.desired['uid'], self.desired['gid'], error)
        if problem:
            self._umount(entry, daemons, 'write test failed')
            raise ModuleFailure('%s at %s is not writable: %s. Unmounted it again. If the stick is dirty, run '
                                'fsck.exfat (or fsck.vfat) on the unmounted %s; if it is write-protected, unlock '
                                'it; to use it read-only, pass options: [ro]' % (device, path, problem, device),
                                item=device)

    def _report_live(self, device, path, predicted):
        if self.check_mode and predicted:
            options = dict(self.desired)
            options['raw'] = None
            options['source'] = 'predicted'
            self.result['options'] = self._public_options(options)
            self.result['size_bytes'] = self.sys.facts(device).get('size_bytes')
            return
        entry = _mountinfo.top_mount_at(self._mounts(), path)
        if entry is None:
            return
        self.result['options'] = self._public_options(self._live(entry, device, self._daemons()))
        vfs = os.statvfs(path)
        if vfs.f_blocks:
            self.result['size_bytes'] = vfs.f_blocks * vfs.f_frsize
            self.result['free_bytes'] = vfs.f_bavail * vfs.f_frsize
        else:
            # fusefat answers statfs with zeros: report the device size, free unknown.
            self.result['size_bytes'] = self.sys.facts(device).get('size_bytes')

    def unmounted(self):
        p = self.params
        path = self.path
        selector = p['device'] or p['label'] or p['uuid']
        if path is None and not selector:
            raise ModuleFailure('state=unmounted needs path, device, label or uuid', item='path')
        self.result['path'] = path
        self.result['unmounted'] = []
        daemons = self._daemons()
        entries = self._mounts()
        targets = []
        if self.device_gone:
            self.result['device'] = self.device_param
            targets = [e for e in entries if e.source == self.device_param
                       and (path is None or e.mount_point == path)]
        elif selector:
            fs = self._find_stick(required=False)
            if fs is None:
                self.module.warn('no stick matches %s; nothing to unmount' % selector)
            else:
                self._describe_stick(fs)
                targets = self._mounts_of(fs.get('DEVNAME'), entries, daemons)
                if path is not None:
                    targets = [e for e in targets if e.mount_point == path]
        elif path is not None:
            entry = _mountinfo.top_mount_at(entries, path)
            if entry is not None:
                if entry.fstype not in STICK_MOUNT_FSTYPES + tuple(p['fstypes']):
                    raise ModuleFailure('%s is a %s mount of %s, not a stick; refusing to unmount it'
                                        % (path, entry.fstype, entry.source), item=path)
                targets = [entry]
                self.result['device'] = self._entry_device(entry, daemons)
        before = [self._view(e, self._entry_device(e, daemons), None) for e in targets]
        for entry in targets:
            alive = _mountinfo.is_alive(entry.mount_point)
            self._umount(entry, daemons, 'state=unmounted' if alive else 'dead FUSE mount')
            self.result['unmounted'].append(entry.mount_point)
            self.result['changed'] = True
        if self.client.diff_mode:
            after = [dict(state='unmounted', path=e.mount_point) for e in targets]
            self.result['diff'] = dict(before=before, after=after)
