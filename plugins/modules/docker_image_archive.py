#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pibackup maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: docker_image_archive
short_description: Save Docker images to archives on a USB stick, verify them, load them back
version_added: 1.0.0
description:
  - O(state=archived) saves each image into one archive in O(path), loadable by hand with plain
    C(docker load -i), with every tag of the image. The archive is streamed from the engine into a
    temporary file in the same folder while its SHA-256 is computed and its content checked (see
    O(verify)), fsynced, and only then renamed over the older archive of the same image, so a failure never leaves a
    partial file under a final name and never touches the last good archive.
  - Beside each archive C(NAME.tar) it writes the metadata file C(NAME.tar.meta.json) (tags, the
    engine's image ID, the config digest, the identity fingerprint, os/architecture/variant, size,
    sha256, compression, creation time, the engine that saved it, when) and a line in C(SHA256SUMS)
    (coreutils format, so C(sha256sum -c SHA256SUMS) works on any machine). Lines of other files in
    C(SHA256SUMS) are kept.
  - O(state=loaded) checks every archive it is about to send (sha256 against the record, tar
    structure, every blob and layer the manifest names present, the config digest) before sending any
    of them, refuses archives for a platform the engine cannot run, and loads them streamed. When a
    sha256 was recorded and matches, the layers are not hashed one by one again (the matching sha256
    proves them unchanged, and the engine checks them on load); an archive without a record (made by
    hand) has every layer hashed.
  - O(state=verified) reads every archive (or those in O(images)) and reports each as ok or what is
    wrong; the task fails when any archive is bad, with every result returned.
  - "Identity: the image config digest is what survives every engine. Engines with the overlay2
    store show it as the IMAGE ID; engines with the containerd image store (default on new Docker
    installs) show the manifest digest instead and do not expose the config digest. The module then
    compares a fingerprint of the layer diffIDs, creation time, os and architecture, computed from the
    engine's inspect data and from the archived config, so it stays idempotent on every engine.
    Results report both RV(images[].image_id) and RV(images[].config_digest)."
  - Archive file names come from the image's first tag in sorted order, with C(/) and C(:) turned
    into C(_) (C(pibackup-lab/small:1.0) gives C(pibackup-lab_small_1.0.tar)). A reference whose
    readable name could be mistaken for another one (with C(_), upper case, a registry port or a
    digest) gets a short hash of the exact reference appended, so two references never share a file,
    also on exFAT, which ignores case. An untagged image is saved by ID as C(id-<hex>.tar). The tags
    always come back from the archive, never from its name.
  - Archives made by hand with C(docker save -o) (C(*.tar), C(*.tar.gz), C(*.tgz), C(*.tar.zst),
    without metadata or checksum) are found by O(state=loaded) and O(state=verified), checked as far
    as their content allows and loaded; the result says that no checksum had been recorded.
  - Talks to the engine through the Docker SDK for Python; never runs the docker CLI.
extends_documentation_fragment:
  - pibackup.docker_usb.engine
attributes:
  check_mode:
    support: full
    description: Check mode predicts exactly which archives would be saved or replaced and which images loaded.
  diff_mode:
    support: full
    description: Lists the archives (with their sha256) before and after, and the archives that would be loaded.
  idempotent:
    support: full
    description:
      - O(state=archived) leaves an archive untouched (same mtime) when its metadata, its C(SHA256SUMS)
        line and its size agree and it holds the same image with the same tags; such a run reads no image data.
      - O(state=loaded) skips an archive whose image the engine already has with all its tags.
options:
  state:
    description:
      - V(archived) saves images to archives; V(loaded) loads archives into the engine; V(verified) only checks archives.
    type: str
    choices: [archived, loaded, verified]
    default: archived
  path:
    description:
      - The folder on the stick that holds the archives, for example C(/mnt/docker-usb/docker_images_backup/pi1).
      - Created when missing for O(state=archived); must exist for the other states.
    type: path
    required: true
  images:
    description:
      - For O(state=archived), image references (C(name:tag), C(name) meaning C(name:latest)) or image IDs.
        An image with several tags is saved once, with all of them. An untagged image given by ID is saved
        and restored by ID.
      - For O(state=loaded) and O(state=verified), references (tags the archives hold) or file names of
        archives in O(path).
      - When neither O(images) nor O(select) is given, O(state=archived) saves every tagged image of the
        engine, and the other states take every archive in O(path).
    type: list
    elements: str
  select:
    description:
      - For O(state=archived), a JMESPath expression evaluated over the list of the engine's image inspect
        data (as C(docker image inspect) prints it). It must give a list of inspect dicts, IDs or tags;
        those images are archived, in addition to O(images).
      - Needs the C(jmespath) Python library.
    type: str
  force:
    description:
      - Save (or load) even when the archive (or the engine) already holds the same image with the same tags.
    type: bool
    default: false
  compression:
    description:
      - Compression of new archives. V(gzip) uses C(pigz) when it is on PATH (all cores), else Python's zlib;
        V(zstd) uses C(zstd -T0) (all cores) and needs the C(zstd) program.
      - Both are streamed, with no uncompressed temporary copy. Plain C(docker load -i) reads V(gzip) on every
        engine and V(zstd) on Docker 25 and newer; this module decompresses V(zstd) itself when loading.
    type: str
    choices: [none, gzip, zstd]
    default: none
  verify:
    description:
      - How a new archive is checked after it was written, before it replaces the older one.
      - V(quick) checks the tar stream while it is written, in the same pass that writes and hashes it. It checks the
        tar structure to its end-of-archive marker, every member the manifest or index names present, the
        config digest and the tags. Layers are not hashed a second time (the engine made them); what reached
        the disk is covered by the sha256 computed from the bytes written. The archive is not read again.
      - V(full) instead reads the file back from the stick after dropping it from the kernel's cache and
        makes the whole check of O(state=verified) (every blob and layer hashed), so it sees what the stick
        really holds; it costs a second read of the archive (the README's Performance section has the
        measured ratios).
    type: str
    choices: [quick, full]
    default: quick
  max_file_bytes:
    description:
      - The largest file the stick may hold. The C(usb_exfat_mount) module returns it; on FAT32 (found in
        C(/proc/self/mountinfo) as C(vfat), C(msdos) or C(fuse.fusefat)) 4294967295 (4 GiB - 1) is used
        when this is not set. An archive that would be larger is refused before or while it is written,
        naming the limit.
    type: int
  allow_platform_mismatch:
    description:
      - Load archives whose os/architecture the engine cannot run natively (for example an amd64 image on a
        Raspberry Pi), instead of failing.
    type: bool
    default: false
notes:
  - C(docker save) stages the whole image under the engine's data root before streaming it. Before saving,
    the free space there (when the engine runs on the same host, else a note says it was not checked) and on
    the stick is compared with the image size; before loading, the data root is checked. The task fails
    naming the path, the bytes needed and the bytes free.
  - Temporary files are named C(.NAME.partial-*); leftovers of an interrupted run are removed by the next
    O(state=archived) run.
  - When loading would move a tag away from another image of the engine, RV(images[].tags_moved) names the
    image that lost it.
seealso:
  - module: pibackup.docker_usb.usb_exfat_mount
author:
  - pibackup maintainers (@pibackup)
'''

EXAMPLES = r'''
- name: Save every tagged image to the stick
  pibackup.docker_usb.docker_image_archive:
    path: /mnt/docker-usb/docker_images_backup/{{ inventory_hostname }}

- name: Save two images, zstd compressed
  pibackup.docker_usb.docker_image_archive:
    path: /mnt/docker-usb/docker_images_backup/pi1
    images:
      - homeassistant/home-assistant:2024.6
      - sha256:3f57d9401f8d42f986df300f0c69192fc41da28ccc8d797829467780db3dd741
    compression: zstd

- name: Save every image whose first tag comes from lscr.io
  pibackup.docker_usb.docker_image_archive:
    path: /mnt/docker-usb/docker_images_backup/pi1
    select: "[?RepoTags && starts_with(RepoTags[0], 'lscr.io/')]"

- name: Save images labelled for backup and built for arm64
  pibackup.docker_usb.docker_image_archive:
    path: /mnt/docker-usb/docker_images_backup/pi1
    select: "[?Config.Labels.\"backup\" == 'yes' && Architecture == 'arm64']"

- name: Check every archive on the stick
  pibackup.docker_usb.docker_image_archive:
    path: /mnt/docker-usb/docker_images_backup/pi1
    state: verified

- name: Load everything back into a new Pi's engine
  pibackup.docker_usb.docker_image_archive:
    path: /mnt/docker-usb/docker_images_backup/pi1
    state: loaded
  register: restored

- name: Load one image by tag from a remote engine
  pibackup.docker_usb.docker_image_archive:
    path: /mnt/docker-usb/docker_images_backup/pi1
    state: loaded
    images: [homeassistant/home-assistant:2024.6]
    docker_host: tcp://192.0.2.10:2375
'''

RETURN = r'''
images:
  description: One entry per image (archived) or per archive (loaded, verified).
  returned: always
  type: list
  elements: dict
  contains:
    action:
      description:
        - V(saved) (also in check mode, where it means would be saved), V(unchanged), V(loaded),
          V(verified) or V(failed).
      type: str
      sample: saved
    tags:
      description: Every tag of the image, as the archive holds them; empty for an image saved by ID.
      type: list
      elements: str
      sample: [pibackup-lab/multi:1.0, pibackup-lab/multi:latest]
    image_id:
      description: The image ID this engine shows (null in check mode for an image not yet loaded).
      type: str
      sample: sha256:0a1b...
    config_digest:
      description: The digest of the image config, the identity kept on every engine.
      type: str
      sample: sha256:0a1b...
    identity_note:
      description: Present when RV(images[].image_id) and RV(images[].config_digest) differ, saying why.
      type: str
      returned: when they differ
    file:
      description: The archive's file name in O(path).
      type: str
      sample: pibackup-lab_small_1.0.tar
    bytes:
      description: The archive's size on the stick (null in check mode for an archive not yet written).
      type: int
    sha256:
      description: The archive file's SHA-256 (of the bytes on the stick).
      type: str
    compression:
      description: V(none), V(gzip) or V(zstd).
      type: str
    seconds:
      description: Time spent saving, checking or loading this image.
      type: float
    by_id:
      description: True for an untagged image saved by ID.
      type: bool
      returned: state=archived
    checksum_recorded:
      description: False for an archive without metadata or C(SHA256SUMS) line (made by hand).
      type: bool
      returned: state=loaded or state=verified
    note:
      description: Present when no checksum had been recorded.
      type: str
      returned: sometimes
    problems:
      description: What is wrong with the archive; empty when it is ok.
      type: list
      elements: str
      returned: state=verified, or a failed check
    platform:
      description: os/architecture[/variant] of the archived image.
      type: str
      returned: state=loaded or state=verified
    tags_moved:
      description: Tags that loading moved away from another image, each with C(tag), C(from_image) and C(from_tags).
      type: list
      elements: dict
      returned: when a tag moved
summary:
  description: How many images got each action.
  returned: always
  type: dict
  sample: {saved: 1, unchanged: 2, loaded: 0, verified: 0, failed: 0}
archives:
  description: For O(state=archived), file names C(added), C(replaced), C(unchanged) and C(removed)
    (an older archive of the same image with another compression).
  returned: state=archived
  type: dict
engine:
  description: The engine's C(version), C(api_version), C(containerd_store) and C(platform).
  returned: when the engine was contacted
  type: dict
actions:
  description: Human-readable list of what was (or in check mode would be) done.
  returned: always
  type: list
  elements: str
removed_partials:
  description: Temporary files of interrupted earlier runs that were removed.
  returned: when there were any
  type: list
  elements: str
notes:
  description: Checks that could not be made (for example the free space of a remote engine's data root).
  returned: sometimes
  type: list
  elements: str
'''

from ansible_collections.pibackup.docker_usb.plugins.module_utils._common import ModuleClient
from ansible_collections.pibackup.docker_usb.plugins.module_utils._archive_manager import ArchiveManager


def main():
    argument_spec = dict(
        state=dict(type='str', default='archived', choices=['archived', 'loaded', 'verified']),
        path=dict(type='path', required=True),
        images=dict(type='list', elements='str'),
        select=dict(type='str'),
        force=dict(type='bool', default=False),
        compression=dict(type='str', default='none', choices=['none', 'gzip', 'zstd']),
        verify=dict(type='str', default='quick', choices=['quick', 'full']),
        max_file_bytes=dict(type='int'),
        allow_platform_mismatch=dict(type='bool', default=False),
    )
    client = ModuleClient(argument_spec, engine=True)
    client.run(ArchiveManager)


if __name__ == '__main__':
    main()
