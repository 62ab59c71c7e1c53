# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pibackup maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import subprocess
import time

import pytest

from ansible_collections.pibackup.docker_usb.plugins.module_utils._common import ModuleFailure
from ansible_collections.pibackup.docker_usb.plugins.module_utils import _mount
from ansible_collections.pibackup.docker_usb.plugins.module_utils import _mountinfo


def params(**kwargs):
    base = dict(uid='1000', gid='1000', umask='022', fmask=None, dmask=None, options=[])
    base.update(kwargs)
    return base


@pytest.mark.parametrize('value, expected', [
    ('022', 0o022), ('0022', 0o022), ('0o077', 0o077), ('7', 0o7), (0o027, 0o027), ('777', 0o777),
])
def test_parse_mask(value, expected):
    assert _mount.parse_mask(value, 'umask') == expected


@pytest.mark.parametrize('value, message', [
    ('0x9', 'not an octal mask'), ('089', 'not an octal mask'), ('', 'not an octal mask'),
    ('1777', 'out of range'), (True, 'not an octal mask'),
])
def test_parse_mask_refuses(value, message):
    with pytest.raises(ModuleFailure) as exc:
        _mount.parse_mask(value, 'umask')
    assert message in exc.value.msg


def test_resolve_id():
    assert _mount.resolve_id('1000', 'uid') == 1000
    assert _mount.resolve_id('root', 'uid') == 0
    assert _mount.resolve_id('root', 'gid') == 0
    for bad, message in (('70000000000', 'out of range'), ('-1', 'out of range'),
                         ('no-such-user-pibackup', 'no such user')):
        with pytest.raises(ModuleFailure) as exc:
            _mount.resolve_id(bad, 'uid')
        assert message in exc.value.msg


def test_desired_options_masks_and_ro():
    desired = _mount.desired_options(params(fmask='133', options=['ro', 'noatime', 'rw']))
    assert desired == dict(uid=1000, gid=1000, umask=0o022, fmask=0o133, dmask=0o022, ro=True, extra=['noatime'])


KERNEL_EXFAT = ('123 29 8:1 / /mnt/docker-usb rw,nosuid,nodev,relatime - exfat /dev/sda1 '
                'rw,uid=1000,gid=1000,fmask=0022,dmask=0022,iocharset=utf8,errors=remount-ro')


def test_option_differences_against_a_kernel_mount():
    live = _mountinfo.live_options(_mountinfo.parse_line(KERNEL_EXFAT))
    assert _mount.option_differences(_mount.desired_options(params()), live) == []
    assert _mount.option_differences(_mount.desired_options(params(uid='0', umask='077')), live) == [
        'uid 1000 -> 0', 'fmask 0022 -> 0077', 'dmask 0022 -> 0077']
    assert _mount.option_differences(_mount.desired_options(params(options=['ro', 'noatime'])), live) == [
        'rw -> ro', 'option noatime missing']


def test_option_differences_against_a_fuse_mount_with_uid_0():
    entry = _mountinfo.parse_line('45 27 7:0 / /mnt/docker-usb rw,nosuid,nodev,relatime - fuseblk /dev/sda1 '
                                  'rw,user_id=0,group_id=0,default_permissions,allow_other,blksize=4096')
    argv = ['/sbin/mount.exfat-fuse', '-o', 'uid=0,gid=0,fmask=0022,dmask=0022', '/dev/sda1', '/mnt/docker-usb']
    root = os.stat_result((0o40755, 1, 1, 1, 0, 0, 4096, 0, 0, 0))
    live = _mountinfo.live_options(entry, argv, root)
    assert _mount.option_differences(_mount.desired_options(params()), live) == [
        'uid 0 -> 1000', 'gid 0 -> 1000']


def test_mount_command_kernel():
    desired = _mount.desired_options(params(options=['noatime']))
    assert _mount.mount_command('kernel', 'exfat', '/bin/mount', '/dev/sda1', '/mnt/x', desired) == [
        '/bin/mount', '-t', 'exfat', '-o', 'uid=1000,gid=1000,fmask=0022,dmask=0022,rw,noatime',
        '/dev/sda1', '/mnt/x']


def test_mount_command_exfat_fuse():
    desired = _mount.desired_options(params(options=['ro']))
    assert _mount.mount_command('fuse', 'exfat', '/sbin/mount.exfat-fuse', '/dev/sda1', '/mnt/x', desired) == [
        '/sbin/mount.exfat-fuse', '-o', 'uid=1000,gid=1000,fmask=0022,dmask=0022,ro', '/dev/sda1', '/mnt/x']


def test_mount_command_fusefat():
    desired = _mount.desired_options(params())
    argv = _mount.mount_command('fuse', 'vfat', '/usr/bin/fusefat', '/dev/sdb1', '/mnt/x', desired)
    assert argv == ['/usr/bin/fusefat', '-o',
                    'rw+,uid=1000,gid=1000,umask=0022,allow_other,default_permissions', '/dev/sdb1', '/mnt/x']
    with pytest.raises(ModuleFailure) as exc:
        _mount.mount_command('fuse', 'vfat', '/usr/bin/fusefat', '/dev/sdb1', '/mnt/x',
                             _mount.desired_options(params(fmask='133')))
    assert 'fusefat applies one umask' in exc.value.msg


def test_find_holders_sees_a_real_process_cwd(tmp_path):
    inside = tmp_path / 'mnt' / 'inside'
    inside.mkdir(parents=True)
    sleeper = subprocess.Popen(['sleep', '30'], cwd=str(inside))
    try:
        deadline = time.time() + 5
        while os.readlink('/proc/%d/cwd' % sleeper.pid) != str(inside) and time.time() < deadline:
            time.sleep(0.05)
        holders = _mount.find_holders(str(tmp_path / 'mnt'))
        mine = [h for h in holders if h['pid'] == sleeper.pid]
        assert mine == [dict(pid=sleeper.pid, command='sleep 30', via=['cwd'])]
        assert _mount.find_holders(str(tmp_path / 'mnt'), exclude_pids=[sleeper.pid]) == []
        assert _mount.find_holders(str(tmp_path / 'mn')) == []      # a prefix is not inside
    finally:
        sleeper.kill()
        sleeper.wait()


def test_kernel_supports(tmp_path):
    table = tmp_path / 'filesystems'
    table.write_text('nodev\tsysfs\n\text4\nnodev\tfuse\n\tfuseblk\n\tvfat\n')
    assert _mount.kernel_supports('vfat', str(table))
    assert not _mount.kernel_supports('exfat', str(table))
    assert not _mount.kernel_supports('exfat', str(tmp_path / 'missing'))


def test_id_is_mapped(tmp_path):
    uid_map = tmp_path / 'uid_map'
    uid_map.write_text('         0     100000      65536\n')
    assert _mount.id_is_mapped(0, str(uid_map))
    assert _mount.id_is_mapped(65535, str(uid_map))
    assert not _mount.id_is_mapped(70000000, str(uid_map))
    assert _mount.id_is_mapped(70000000, str(tmp_path / 'missing'))
    with pytest.raises(ModuleFailure) as exc:
        _mount.resolve_id('70000000', 'uid', str(uid_map))
    assert 'not mapped in this user namespace' in exc.value.msg


class _NoBinaries(object):
    """Just enough of a module for the driver choice: no helper binary is installed."""

    check_mode = False

    def get_bin_path(self, name, required=False, opt_dirs=None):
        return None


class _Client(object):
    def __init__(self, **params):
        self.module = _NoBinaries()
        self.params = params
        self.check_mode = False
        self.diff_mode = False
        self.result = dict(changed=False, actions=[])


@pytest.mark.parametrize('fstype, packages', [
    ('exfat', 'apt-get install exfatprogs exfat-fuse'),
    ('vfat', 'apt-get install dosfstools fusefat'),
])
def test_no_driver_names_the_packages(fstype, packages):
    manager = _mount.MountManager(_Client(driver='fuse'))
    with pytest.raises(ModuleFailure) as exc:
        manager._choose_driver(fstype)
    assert packages in exc.value.msg


def test_kernel_driver_required_but_missing():
    if _mount.kernel_supports('ntfs3'):
        pytest.skip('this kernel has ntfs3')
    manager = _mount.MountManager(_Client(driver='kernel'))
    with pytest.raises(ModuleFailure) as exc:
        manager._choose_driver('ntfs3')
    assert 'driver=kernel but the kernel has no ntfs3 driver' in exc.value.msg
