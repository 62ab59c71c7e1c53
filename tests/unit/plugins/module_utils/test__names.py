# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pibackup maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import itertools

import pytest

from ansible_collections.pibackup.docker_usb.plugins.module_utils._names import (
    BASE_MAX,
    archive_base,
    is_plain_file_name,
    metadata_name,
    parse_reference,
    safe_char,
)

VALID = [
    ('alpine', 'alpine', None, 'alpine:latest'),
    ('alpine:3.19', 'alpine', '3.19', 'alpine:3.19'),
    ('pibackup-lab/small:1.0', 'pibackup-lab/small', '1.0', 'pibackup-lab/small:1.0'),
    ('lscr.io/linuxserver/sonarr:latest', 'lscr.io/linuxserver/sonarr', 'latest', 'lscr.io/linuxserver/sonarr:latest'),
    ('localhost:5000/app:V1', 'localhost:5000/app', 'V1', 'localhost:5000/app:V1'),
    ('a__b/c.d-e:tag_1', 'a__b/c.d-e', 'tag_1', 'a__b/c.d-e:tag_1'),
]
INVALID = ['', 'App:1', 'app:', ':tag', 'app:1:2', 'app:' + 'x' * 129, 'a//b', 'app name', ' app',
           'app;rm -rf /', '../etc', 'app:$(id)', 'app\n', 'a' * 256, '-app', 'app-', 'app:-x']


@pytest.mark.parametrize('text,name,tag,canonical', VALID)
def test_valid_references(text, name, tag, canonical):
    ref = parse_reference(text)
    assert (ref.name, ref.tag, ref.canonical) == (name, tag, canonical)
    assert not ref.is_id


@pytest.mark.parametrize('text', INVALID)
def test_invalid_references_say_why(text):
    with pytest.raises(ValueError) as info:
        parse_reference(text)
    assert 'reference' in str(info.value)


def test_image_ids():
    full = 'sha256:' + 'ab' * 32
    assert parse_reference(full).image_id == full
    assert parse_reference(full).name is None
    short = parse_reference('0123456789ab')
    assert short.image_id == 'sha256:0123456789ab'
    assert short.name == '0123456789ab'   # may also be a repository: the engine decides


def test_plain_names_are_readable():
    assert archive_base(['pibackup-lab/small:1.0'], 'sha256:aa') == 'pibackup-lab_small_1.0'
    assert archive_base(['pibackup-lab/multi:latest', 'pibackup-lab/multi:1.0'], None) == 'pibackup-lab_multi_1.0'


def test_untagged_images_are_named_by_id():
    assert archive_base([], 'sha256:' + 'a' * 64) == 'id-' + 'a' * 64
    assert archive_base(['<none>:<none>'], 'sha256:' + 'b' * 64) == 'id-' + 'b' * 64


def test_case_only_difference_gets_distinct_names():
    upper = archive_base(['app:V1'], None)
    lower = archive_base(['app:v1'], None)
    assert lower == 'app_v1'
    assert upper != lower and upper.lower() != lower.lower()
    assert upper.startswith('app_v1-h')


def test_ambiguous_references_never_share_a_name():
    refs = ['a/b:c', 'a:b_c', 'a_b:c', 'a/b/c:latest', 'a/b:c_latest', 'a_b_c:latest', 'a:b_c_latest',
            'host:5000/a:b', 'host/5000/a:b', 'host_5000_a:b', 'app:V1', 'app:v1', 'App:v1'.lower(),
            'a.b:c', 'a-b:c', 'a__b:c']
    names = [archive_base([ref], None).lower() for ref in refs]
    assert len(set(names)) == len(set(refs))


def test_names_are_exfat_safe_and_bounded():
    long_ref = 'registry.example.com:5000/' + '/'.join(['component'] * 25) + ':' + 'T' * 128
    for ref in [long_ref, 'a:b', 'host:5000/x:Y', 'x:y.']:
        base = archive_base([ref], None)
        assert len(base) <= BASE_MAX
        assert all(safe_char(char) for char in base)
        assert not base.endswith(' ')
    assert archive_base([long_ref], None) != archive_base([long_ref[:-1] + 'U'], None)


def test_metadata_name_and_plain_file_names():
    assert metadata_name('app_1.tar.gz') == 'app_1.tar.gz.meta.json'
    assert is_plain_file_name('app_1.tar')
    for bad in ['', '.', '..', '../x.tar', '/etc/passwd', 'a/b.tar', 'a\\b.tar']:
        assert not is_plain_file_name(bad)


def test_no_collision_in_a_generated_set():
    parts = ['a', 'b', 'a_b', 'a/b', 'A']
    refs = set()
    for repo, tag in itertools.product(['a', 'b', 'a_b', 'a/b', 'a.b'], parts):
        try:
            ref = parse_reference('%s:%s' % (repo, tag))
        except ValueError:
            continue
        refs.add(ref.canonical)
    names = set(archive_base([ref], None).lower() for ref in refs)
    assert len(names) == len(refs)
