# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pibackup maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import hashlib
import json
import os
import subprocess

import pytest

from ansible_collections.pibackup.docker_usb.plugins.module_utils._catalog import (
    CatalogError,
    Sums,
    atomic_write,
    read_metadata,
    write_metadata,
)

A = 'a' * 64
B = 'b' * 64


def test_sums_keep_foreign_lines_and_update_ours(tmp_path):
    (tmp_path / 'SHA256SUMS').write_text('# made by hand\n%s  foreign.iso\n%s *mine.tar\n' % (A, A))
    sums = Sums(str(tmp_path))
    assert sums.get('mine.tar') == A and sums.get('foreign.iso') == A
    assert sums.update({'mine.tar': B, 'new.tar.gz': A})
    text = (tmp_path / 'SHA256SUMS').read_text()
    assert text == '# made by hand\n%s  foreign.iso\n%s  mine.tar\n%s  new.tar.gz\n' % (A, B, A)
    assert sums.update({'mine.tar': None})
    assert 'mine.tar' not in (tmp_path / 'SHA256SUMS').read_text()
    assert 'foreign.iso' in (tmp_path / 'SHA256SUMS').read_text()


def test_sums_no_write_without_change(tmp_path):
    (tmp_path / 'SHA256SUMS').write_text('%s  x.tar\n' % A)
    before = os.stat(str(tmp_path / 'SHA256SUMS'))
    assert not Sums(str(tmp_path)).update({'x.tar': A})
    assert os.stat(str(tmp_path / 'SHA256SUMS')).st_ino == before.st_ino


def test_sums_file_checks_with_coreutils(tmp_path):
    (tmp_path / 'x.tar').write_bytes(b'hello')
    Sums(str(tmp_path)).update({'x.tar': hashlib.sha256(b'hello').hexdigest()})
    done = subprocess.run(['sha256sum', '-c', 'SHA256SUMS'], cwd=str(tmp_path), capture_output=True, check=False)
    assert done.returncode == 0, done.stdout


def test_atomic_write_mode_ignores_umask_and_leaves_no_temp(tmp_path):
    old = os.umask(0o077)
    try:
        atomic_write(str(tmp_path / 'f'), b'data')
    finally:
        os.umask(old)
    assert oct(os.stat(str(tmp_path / 'f')).st_mode & 0o777) == oct(0o644)
    assert os.listdir(str(tmp_path)) == ['f']


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / 'SHA256SUMS'
    target.write_bytes(b'old\n')
    with pytest.raises(TypeError):
        atomic_write(str(target), u'not bytes')
    assert target.read_bytes() == b'old\n'
    assert os.listdir(str(tmp_path)) == ['SHA256SUMS']


def test_metadata_round_trip(tmp_path):
    write_metadata(str(tmp_path), dict(file='app_1.tar', tags=['app:1'], sha256=A))
    data = read_metadata(str(tmp_path), 'app_1.tar.meta.json')
    assert data['tags'] == ['app:1'] and data['format'] == 1


@pytest.mark.parametrize('content,needle', [
    ('{not json', 'not valid JSON'),
    ('[1, 2]', 'JSON object'),
    (json.dumps(dict(file='../../etc/passwd')), 'not a file inside'),
    (json.dumps(dict(file='/etc/passwd')), 'not a file inside'),
    (json.dumps(dict(file='other.tar')), 'expected'),
])
def test_bad_metadata_is_named(tmp_path, content, needle):
    (tmp_path / 'app_1.tar.meta.json').write_text(content)
    with pytest.raises(CatalogError) as info:
        read_metadata(str(tmp_path), 'app_1.tar.meta.json')
    assert needle in info.value.msg
    assert info.value.path.endswith('app_1.tar.meta.json')
