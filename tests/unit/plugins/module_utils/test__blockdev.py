# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pibackup maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os

from ansible_collections.pibackup.docker_usb.plugins.module_utils import _blockdev


# Real `blkid -c /dev/null -o export` output of the lab machine (two loop sticks
# and a FAT32 one) plus an ext4 root as on a Pi.
BLKID_ALL = """DEVNAME=/dev/mmcblk0p2
LABEL=rootfs
UUID=3ad7386b-e1ae-4032-ae33-0c40f5ecc4ac
BLOCK_SIZE=4096
TYPE=ext4
PARTUUID=6c586e13-02

DEVNAME=/dev/loop0
LABEL=MP\\ LABEL
UUID=EF35-9712
BLOCK_SIZE=512
TYPE=exfat
PTTYPE=dos

DEVNAME=/dev/loop1
LABEL_FATBOOT=MPFAT
LABEL=MPFAT
UUID=7127-C117
BLOCK_SIZE=512
TYPE=vfat

DEVNAME=/dev/sda1
LABEL=DockerIMGs
UUID=1A2B-3C4D
BLOCK_SIZE=512
TYPE=exfat
PARTUUID=0004a1b2-01
"""


def test_parse_blkid_export():
    devices = _blockdev.parse_blkid_export(BLKID_ALL)
    assert [d['DEVNAME'] for d in devices] == ['/dev/mmcblk0p2', '/dev/loop0', '/dev/loop1', '/dev/sda1']
    assert devices[1]['LABEL'] == 'MP LABEL'
    assert devices[2]['TYPE'] == 'vfat'


def test_parse_blkid_export_without_blank_lines():
    text = 'DEVNAME=/dev/a\nTYPE=exfat\nDEVNAME=/dev/b\nTYPE=vfat\n'
    assert [d['TYPE'] for d in _blockdev.parse_blkid_export(text)] == ['exfat', 'vfat']


def test_blkid_command_bypasses_the_cache():
    assert _blockdev.blkid_command('/sbin/blkid', '/dev/sda1') == [
        '/sbin/blkid', '-c', '/dev/null', '-o', 'export', '/dev/sda1']


def make_sysfs(tmp_path):
    """A sysfs-like tree: sda (USB, removable) with sda1, mmcblk0 (not removable), loop0."""
    devices = tmp_path / 'devices'
    usb_disk = devices / 'platform' / 'scb' / 'usb1' / '1-1' / '1-1.2' / 'host0' / 'block' / 'sda'
    (usb_disk / 'sda1').mkdir(parents=True)
    (usb_disk / 'removable').write_text('1\n')
    (usb_disk / 'size').write_text('60437492\n')
    (usb_disk / 'sda1' / 'partition').write_text('1\n')
    (usb_disk / 'sda1' / 'size').write_text('60435456\n')
    (usb_disk / 'sda1' / 'ro').write_text('0\n')
    sd = devices / 'platform' / 'emmc2bus' / 'mmc_host' / 'block' / 'mmcblk0'
    (sd / 'mmcblk0p2').mkdir(parents=True)
    (sd / 'removable').write_text('0\n')
    (sd / 'mmcblk0p2' / 'partition').write_text('2\n')
    (sd / 'mmcblk0p2' / 'size').write_text('1000\n')
    loops = {}
    for name, size, ro in (('loop0', '32768', '0'), ('loop1', '81920', '1')):
        loop = devices / 'virtual' / 'block' / name
        loop.mkdir(parents=True)
        (loop / 'removable').write_text('0\n')
        (loop / 'size').write_text(size + '\n')
        (loop / 'ro').write_text(ro + '\n')
        loops[name] = loop
    block = tmp_path / 'class' / 'block'
    block.mkdir(parents=True)
    for name, target in (('sda', usb_disk), ('sda1', usb_disk / 'sda1'), ('mmcblk0', sd),
                         ('mmcblk0p2', sd / 'mmcblk0p2'), ('loop0', loops['loop0']), ('loop1', loops['loop1'])):
        os.symlink(os.path.relpath(str(target), str(block)), str(block / name))
    return _blockdev.SysBlock(str(block))


def test_sysblock_facts(tmp_path):
    sysblock = make_sysfs(tmp_path)
    sda1 = sysblock.facts('/dev/sda1')
    assert sda1 == dict(name='sda1', disk='sda', removable=True, usb=True,
                        size_bytes=60435456 * 512, read_only=False)
    loop0 = sysblock.facts('/dev/loop0')
    assert (loop0['disk'], loop0['removable'], loop0['usb'], loop0['size_bytes']) == ('loop0', False, False, 16777216)
    assert sysblock.facts('/dev/loop1')['read_only'] is True
    assert sysblock.facts('/dev/mmcblk0p2')['disk'] == 'mmcblk0'


def facts_for(sysblock):
    return dict((fs['DEVNAME'], sysblock.facts(fs['DEVNAME'])) for fs in _blockdev.parse_blkid_export(BLKID_ALL))


def test_only_the_usb_stick_is_a_removable_candidate(tmp_path):
    filesystems = _blockdev.parse_blkid_export(BLKID_ALL)
    taken, report = _blockdev.select_candidates(filesystems, facts_for(make_sysfs(tmp_path)), ['exfat', 'vfat'])
    assert [fs['DEVNAME'] for fs in taken] == ['/dev/sda1']
    by_device = dict((r['device'], r) for r in report)
    assert '/dev/mmcblk0p2' not in by_device          # ext4 is not listed
    assert by_device['/dev/loop0']['reason'] == 'disk loop0 is neither removable nor on USB'
    assert by_device['/dev/sda1']['taken'] and by_device['/dev/sda1']['label'] == 'DockerIMGs'
    text = _blockdev.format_report(report)
    assert '/dev/loop0 (LABEL=MP LABEL, UUID=EF35-9712, exfat, 16777216 bytes): not taken' in text


def test_any_with_patterns_scopes_loop_devices(tmp_path):
    filesystems = _blockdev.parse_blkid_export(BLKID_ALL)
    facts = facts_for(make_sysfs(tmp_path))
    taken, report = _blockdev.select_candidates(filesystems, facts, ['exfat', 'vfat'], 'any', ['/dev/loop*'])
    assert sorted(fs['DEVNAME'] for fs in taken) == ['/dev/loop0', '/dev/loop1']
    assert [r['reason'] for r in report if r['device'] == '/dev/sda1'] == ['not in candidate_devices']
    taken, report = _blockdev.select_candidates(filesystems, facts, ['exfat'], 'any', ['/dev/loop*'])
    assert [fs['DEVNAME'] for fs in taken] == ['/dev/loop0']
    assert [r['reason'] for r in report if r['device'] == '/dev/loop1'] == ['filesystem vfat not in fstypes']


def test_report_of_nothing():
    assert _blockdev.format_report([]) == 'blkid saw no exFAT or FAT filesystem'


def exfat_boot(flags):
    boot = bytearray(512)
    boot[3:11] = b'EXFAT   '
    boot[106:108] = flags.to_bytes(2, 'little')
    return bytes(boot)


def fat32_boot(state):
    boot = bytearray(512)
    boot[11:13] = (512).to_bytes(2, 'little')
    boot[14:16] = (32).to_bytes(2, 'little')
    boot[0x41] = state
    boot[82:90] = b'FAT32   '
    return bytes(boot)


def test_boot_sector_dirty():
    assert _blockdev.boot_sector_dirty('exfat', exfat_boot(0x0000)) is False
    assert _blockdev.boot_sector_dirty('exfat', exfat_boot(0x0002)) is True
    assert _blockdev.boot_sector_dirty('exfat', exfat_boot(0x0001)) is False     # ActiveFat, not dirty
    assert _blockdev.boot_sector_dirty('vfat', fat32_boot(0), 0x0FFFFFFF) is False
    assert _blockdev.boot_sector_dirty('vfat', fat32_boot(1), 0x0FFFFFFF) is True
    assert _blockdev.boot_sector_dirty('vfat', fat32_boot(0), 0x07FFFFFF) is True
    assert _blockdev.boot_sector_dirty('vfat', exfat_boot(0)) is None
    assert _blockdev.boot_sector_dirty('exfat', bytes(512)) is None


def test_read_dirty_flag_from_an_image_file(tmp_path):
    image = tmp_path / 'fat32.img'
    fat = bytearray(64 * 512)
    fat[:512] = fat32_boot(0)
    fat[32 * 512 + 4:32 * 512 + 8] = (0x0FFFFFFF).to_bytes(4, 'little')
    image.write_bytes(bytes(fat))
    assert _blockdev.read_dirty_flag(str(image), 'vfat') is False
    fat[32 * 512 + 4:32 * 512 + 8] = (0x07FFFFFF).to_bytes(4, 'little')
    image.write_bytes(bytes(fat))
    assert _blockdev.read_dirty_flag(str(image), 'vfat') is True
    assert _blockdev.read_dirty_flag(str(tmp_path / 'missing'), 'vfat') is None
