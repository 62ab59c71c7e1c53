# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pibackup maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# Private helper of pibackup.docker_usb: not a public API, may change without notice.
"""Block devices: ``blkid`` output, ``/sys/class/block`` facts, stick candidates.

Nothing here needs udev: ``blkid`` probes the devices itself (its cache is
bypassed so a re-used loop device never shows a stale label), and
removable/USB/size come from sysfs.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import fnmatch
import os


SYS_CLASS_BLOCK = '/sys/class/block'

# blkid TYPE values this collection knows how to mount.
KNOWN_FSTYPES = ('exfat', 'vfat')


def _unescape_export_value(value):
    """``blkid -o export`` escapes spaces and shell characters with a backslash."""
    out = []
    escaped = False
    for char in value:
        if escaped:
            out.append(char)
            escaped = False
        elif char == '\\':
            escaped = True
        else:
            out.append(char)
    return ''.join(out)


def parse_blkid_export(text):
    """Parse ``blkid -o export`` output (one block per device) into a list of dicts."""
    devices = []
    current = {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            if current:
                devices.append(current)
                current = {}
            continue
        key, sep, value = line.partition('=')
        if not sep:
            continue
        if key == 'DEVNAME' and current.get('DEVNAME'):
            devices.append(current)
            current = {}
        current[key] = _unescape_export_value(value)
    if current:
        devices.append(current)
    return devices


def blkid_command(blkid_path, device=None):
    """The argv that probes one device, or every device, bypassing blkid's cache."""
    argv = [blkid_path, '-c', '/dev/null', '-o', 'export']
    if device:
        argv.append(device)
    return argv


class SysBlock(object):
    """Facts about one block device read from sysfs (root is a parameter for tests)."""

    def __init__(self, root=SYS_CLASS_BLOCK):
        self.root = root

    def _read(self, *parts):
        try:
            with open(os.path.join(self.root, *parts)) as handle:
                return handle.read().strip()
        except (IOError, OSError):
            return None

    def facts(self, device):
        """dict(name, disk, removable, usb, size_bytes, read_only) for /dev/NAME."""
        name = os.path.basename(device)
        link = os.path.join(self.root, name)
        real = os.path.realpath(link)
        is_partition = os.path.exists(os.path.join(link, 'partition'))
        disk = os.path.basename(os.path.dirname(real)) if is_partition else name
        size = self._read(name, 'size')
        removable = self._read(disk, 'removable')
        ro = self._read(name, 'ro')
        # A USB disk's sysfs path runs through the usb bus (.../usbN/N-1/...).
        usb = any(part.startswith('usb') for part in real.split(os.sep))
        return dict(
            name=name,
            disk=disk,
            removable=removable == '1',
            usb=usb,
            size_bytes=int(size) * 512 if size and size.isdigit() else None,
            read_only=ro == '1',
        )


def describe(fs):
    """One line naming a filesystem the way blkid saw it, for error messages."""
    return '%s (TYPE=%s, LABEL=%s, UUID=%s, size=%s)' % (
        fs.get('DEVNAME'), fs.get('TYPE') or '-', fs.get('LABEL') or '-',
        fs.get('UUID') or '-',
        fs.get('size_bytes') if fs.get('size_bytes') is not None else '?')


def select_candidates(filesystems, facts, fstypes, mode='removable', patterns=None):
    """Decide which filesystems may be auto-selected as the stick.

    ``filesystems``: blkid dicts; ``facts``: device -> SysBlock.facts(); ``mode``:
    ``removable`` (removable or USB disks only) or ``any``; ``patterns``: optional
    list of globs the device path must match. Returns ``(taken, report)`` where
    report lists, for every exFAT/FAT filesystem (and every filesystem of
    ``fstypes``), ``device, label, uuid, fstype, size_bytes, taken, reason``.
    """
    taken = []
    report = []
    interesting = set(fstypes) | set(KNOWN_FSTYPES)
    for fs in filesystems:
        fstype = fs.get('TYPE')
        if fstype not in interesting:
            continue
        device = fs.get('DEVNAME')
        fact = facts.get(device) or {}
        reason = None
        if patterns and not any(fnmatch.fnmatch(device, p) for p in patterns):
            reason = 'not in candidate_devices'
        elif fstype not in fstypes:
            reason = 'filesystem %s not in fstypes' % fstype
        elif mode != 'any' and not (fact.get('removable') or fact.get('usb')):
            reason = 'disk %s is neither removable nor on USB' % fact.get('disk', '?')
        entry = dict(
            device=device,
            label=fs.get('LABEL'),
            uuid=fs.get('UUID'),
            fstype=fstype,
            size_bytes=fact.get('size_bytes'),
            taken=reason is None,
            reason=reason or ('candidates=any' if mode == 'any' else
                              'removable disk' if fact.get('removable') else 'USB disk'),
        )
        report.append(entry)
        if reason is None:
            taken.append(fs)
    return taken, report


def format_report(report):
    """Human-readable list of a select_candidates() report."""
    if not report:
        return 'blkid saw no exFAT or FAT filesystem'
    return '; '.join(
        '%s (LABEL=%s, UUID=%s, %s, %s bytes): %s, %s' % (
            r['device'], r['label'] or '-', r['uuid'] or '-', r['fstype'],
            r['size_bytes'] if r['size_bytes'] is not None else '?',
            'taken' if r['taken'] else 'not taken', r['reason'])
        for r in report)


def _le(data, offset, size):
    return int.from_bytes(bytearray(data[offset:offset + size]), 'little')


def boot_sector_dirty(fstype, boot, fat_entry_1=None):
    """Whether a filesystem is marked dirty (not cleanly unmounted), from its raw boot sector.

    exFAT: VolumeFlags (offset 106) bit 1 VolumeDirty. FAT32: the state byte (offset 0x41)
    bit 0, or the clean-shutdown bit 0x08000000 of FAT entry 1 cleared. None when the boot
    sector is not one of those (FAT12/16, unknown).
    """
    if fstype == 'exfat' and boot[3:11] == b'EXFAT   ':
        return bool(_le(boot, 106, 2) & 0x0002)
    if fstype == 'vfat' and boot[82:90] == b'FAT32   ':
        dirty = bool(bytearray(boot[0x41:0x42])[0] & 0x01)
        if fat_entry_1 is not None:
            dirty = dirty or not fat_entry_1 & 0x08000000
        return dirty
    return None


def read_dirty_flag(device, fstype):
    """Read the boot sector (and FAT32's FAT entry 1) of an unmounted device; see boot_sector_dirty."""
    try:
        with open(device, 'rb') as handle:
            boot = handle.read(512)
            fat_entry_1 = None
            if fstype == 'vfat' and boot[82:90] == b'FAT32   ':
                handle.seek(_le(boot, 14, 2) * _le(boot, 11, 2) + 4)
                fat_entry_1 = _le(handle.read(4), 0, 4)
    except (IOError, OSError):
        return None
    return boot_sector_dirty(fstype, boot, fat_entry_1)
