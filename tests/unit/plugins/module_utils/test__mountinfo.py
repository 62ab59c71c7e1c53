# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pibackup maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import stat

import pytest

from ansible_collections.pibackup.docker_usb.plugins.module_utils import _mountinfo


# Real lines: FUSE exFAT and fusefat as seen on the lab machine, kernel exfat and
# vfat as a Raspberry Pi shows them (optional fields, escaped space in a path).
FUSEBLK = ('45 27 7:0 / /tmp/mount/mp rw,nosuid,nodev,relatime - fuseblk /dev/loop0 '
           'rw,user_id=0,group_id=0,default_permissions,allow_other,blksize=4096')
FUSEFAT = '46 27 0:40 / /tmp/mount/fat rw,nosuid,nodev,relatime - fuse.fusefat fusefat rw,user_id=0,group_id=0'
KERNEL_EXFAT = ('123 29 8:1 / /media/pi/My\\040Stick rw,nosuid,nodev,relatime shared:67 - exfat /dev/sda1 '
                'rw,uid=1000,gid=1000,fmask=0022,dmask=0022,iocharset=utf8,errors=remount-ro')
KERNEL_VFAT_RO = ('130 29 8:17 / /mnt/docker-usb ro,relatime shared:70 master:1 - vfat /dev/sdb1 '
                  'ro,uid=0,gid=0,fmask=0133,dmask=0022,codepage=437,iocharset=ascii,shortname=mixed,'
                  'errors=remount-ro')
ROOT = '26 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw'


def fake_stat(uid, gid, mode):
    return os.stat_result((stat.S_IFDIR | mode, 1, 1, 1, uid, gid, 4096, 0, 0, 0))


def test_unescape_octal():
    assert _mountinfo.unescape('/media/pi/My\\040Stick\\011x\\134y') == '/media/pi/My Stick\tx\\y'


@pytest.mark.parametrize('line, mount_point, fstype, source, is_fuse', [
    (FUSEBLK, '/tmp/mount/mp', 'fuseblk', '/dev/loop0', True),
    (FUSEFAT, '/tmp/mount/fat', 'fuse.fusefat', 'fusefat', True),
    (KERNEL_EXFAT, '/media/pi/My Stick', 'exfat', '/dev/sda1', False),
    (KERNEL_VFAT_RO, '/mnt/docker-usb', 'vfat', '/dev/sdb1', False),
])
def test_parse_line(line, mount_point, fstype, source, is_fuse):
    entry = _mountinfo.parse_line(line)
    assert entry.mount_point == mount_point
    assert entry.fstype == fstype
    assert entry.source == source
    assert entry.is_fuse is is_fuse


def test_parse_mountinfo_skips_garbage_and_keeps_order():
    entries = _mountinfo.parse_mountinfo('\n'.join([ROOT, 'garbage line', FUSEBLK, '', KERNEL_EXFAT]))
    assert [e.mount_id for e in entries] == [26, 45, 123]
    assert entries[2].super_options[:2] == ['rw', 'uid=1000']


def test_top_mount_at_is_the_last_one():
    over = FUSEBLK.replace('45 27 7:0', '50 45 7:1').replace('/dev/loop0', '/dev/loop1')
    entries = _mountinfo.parse_mountinfo('\n'.join([FUSEBLK, over]))
    assert _mountinfo.top_mount_at(entries, '/tmp/mount/mp').source == '/dev/loop1'
    assert _mountinfo.top_mount_at(entries, '/tmp/mount') is None


def test_mount_holding_is_the_longest_mount_point_above_the_path():
    inner = FUSEFAT.replace('/tmp/mount/fat', '/tmp/mount/mp/inner')
    entries = _mountinfo.parse_mountinfo('\n'.join([ROOT, FUSEBLK, FUSEFAT, inner]))
    assert _mountinfo.mount_holding(entries, '/tmp/mount/mp/docker_images_backup/host').fstype == 'fuseblk'
    assert _mountinfo.mount_holding(entries, '/tmp/mount/mp/inner/x').fstype == 'fuse.fusefat'
    assert _mountinfo.mount_holding(entries, '/tmp/mount/fat').fstype == 'fuse.fusefat'
    assert _mountinfo.mount_holding(entries, '/tmp/mount/fatter').fstype == 'ext4'
    assert _mountinfo.mount_holding([], '/anything') is None


def test_read_only_from_mount_or_super_options():
    assert _mountinfo.parse_line(KERNEL_VFAT_RO).read_only
    assert not _mountinfo.parse_line(KERNEL_EXFAT).read_only


def test_kernel_live_options_come_from_super_options():
    live = _mountinfo.live_options(_mountinfo.parse_line(KERNEL_VFAT_RO))
    assert (live['uid'], live['gid'], live['fmask'], live['dmask'], live['ro']) == (0, 0, 0o133, 0o022, True)
    assert live['source'] == 'super_options'
    assert 'codepage=437' in live['raw']


def test_fuse_live_options_come_from_the_daemon_and_root():
    argv = ['mount.exfat-fuse', '-o', 'uid=1000,gid=1000,umask=027', '/dev/loop0', '/tmp/mount/mp']
    live = _mountinfo.live_options(_mountinfo.parse_line(FUSEBLK), argv, fake_stat(1000, 1000, 0o750))
    assert (live['uid'], live['gid'], live['fmask'], live['dmask'], live['ro']) == (1000, 1000, 0o027, 0o027, False)
    assert live['source'] == 'daemon'
    assert 'umask=027' in live['raw'] and 'allow_other' in live['raw']


def test_fuse_without_daemon_falls_back_to_the_root_directory():
    live = _mountinfo.live_options(_mountinfo.parse_line(FUSEBLK), None, fake_stat(1000, 100, 0o755))
    assert (live['uid'], live['gid'], live['fmask'], live['dmask']) == (1000, 100, 0o022, 0o022)
    assert live['source'] == 'root_dir'


def test_fusefat_without_rw_is_read_only():
    entry = _mountinfo.parse_line(FUSEFAT)
    rw = ['fusefat', '-o', 'rw,uid=0,gid=0,umask=0022', '/dev/loop1', '/tmp/mount/fat']
    ro = ['fusefat', '-o', 'uid=0,gid=0,umask=0022', '/dev/loop1', '/tmp/mount/fat']
    assert _mountinfo.live_options(entry, rw, fake_stat(0, 0, 0o755))['ro'] is False
    assert _mountinfo.live_options(entry, ro, fake_stat(0, 0, 0o755))['ro'] is True


def test_daemon_option_list_forms():
    assert _mountinfo.daemon_option_list(['x', '-o', 'a,b', '-oc', '/dev/x', '/m']) == ['a', 'b', 'c']
    assert _mountinfo.daemon_option_list(['x', '/dev/x', '/m']) == []


def test_read_cmdline_and_daemons_from_a_proc_tree(tmp_path):
    # fusefat rewrites its argv in place: 'rw+' becomes 'rw,' plus an empty element.
    (tmp_path / '812').mkdir()
    (tmp_path / '812' / 'cmdline').write_bytes(
        b'fusefat\0-o\0rw,uid=1000,gid=1000,umask=022\0\0/dev/loop1\0/tmp/mount/fat\0')
    (tmp_path / '900').mkdir()
    (tmp_path / '900' / 'cmdline').write_bytes(b'sleep\x00300\x00')
    (tmp_path / 'self').mkdir()
    daemons = _mountinfo.fuse_daemons(str(tmp_path))
    assert daemons == [(812, ['fusefat', '-o', 'rw,uid=1000,gid=1000,umask=022', '/dev/loop1', '/tmp/mount/fat'])]
    assert _mountinfo.daemon_for(daemons, '/dev/loop1', '/tmp/mount/fat')[0] == 812
    assert _mountinfo.daemon_for(daemons, '/dev/loop2', '/tmp/mount/fat') is None
    assert _mountinfo.read_cmdline(12345678, str(tmp_path)) is None


def test_is_alive_on_a_real_directory(tmp_path):
    assert _mountinfo.is_alive(str(tmp_path))
    with pytest.raises(OSError):
        _mountinfo.is_alive(str(tmp_path / 'missing'))
