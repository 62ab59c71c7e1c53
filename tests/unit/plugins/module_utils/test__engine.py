# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pibackup maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import pytest

from ansible_collections.pibackup.docker_usb.plugins.module_utils._engine import (
    can_run,
    engine_tags,
    normalize_platform,
    same_image,
)
from ansible_collections.pibackup.docker_usb.plugins.module_utils._identity import fingerprint_from_config

CONFIG = {'os': 'linux', 'architecture': 'amd64', 'created': '2026-01-02T03:04:05.1Z',
          'rootfs': {'type': 'layers', 'diff_ids': ['sha256:' + 'a' * 64]}}
INSPECT_OVERLAY = {'Id': 'sha256:' + 'c' * 64, 'Os': 'linux', 'Architecture': 'amd64',
                   'Created': '2026-01-02T03:04:05.100000000Z', 'RootFS': {'Layers': ['sha256:' + 'a' * 64]},
                   'RepoTags': ['app:1', 'app:latest']}


@pytest.mark.parametrize('machine,expected', [
    (('linux', 'x86_64'), ('linux', 'amd64', None)),
    (('linux', 'aarch64'), ('linux', 'arm64', None)),
    (('linux', 'armv7l'), ('linux', 'arm', 'v7')),
    (('Linux', 'AMD64'), ('linux', 'amd64', None)),
    (('linux', 'arm64', 'v8'), ('linux', 'arm64', None)),
])
def test_normalize_platform(machine, expected):
    assert normalize_platform(*machine) == expected


@pytest.mark.parametrize('engine,image,ok', [
    (('linux', 'amd64', None), ('linux', 'amd64', None), True),
    (('linux', 'amd64', None), ('linux', 'arm64', None), False),
    (('linux', 'arm64', None), ('linux', 'amd64', None), False),
    (('linux', 'arm', 'v7'), ('linux', 'arm', 'v6'), True),
    (('linux', 'arm', 'v6'), ('linux', 'arm', 'v7'), False),
    (('linux', 'amd64', None), ('windows', 'amd64', None), False),
    (('linux', 'amd64', None), ('linux', '386', None), True),
])
def test_can_run(engine, image, ok):
    assert can_run(engine, image) is ok


def test_same_image_by_config_digest_on_overlay():
    assert same_image(INSPECT_OVERLAY, {'config_digest': 'sha256:' + 'c' * 64})
    assert not same_image(INSPECT_OVERLAY, {'config_digest': 'sha256:' + 'd' * 64})


def test_same_image_by_fingerprint_on_containerd_store():
    inspect = dict(INSPECT_OVERLAY, Id='sha256:' + 'e' * 64)   # manifest digest, no config digest
    record = {'config_digest': 'sha256:' + 'c' * 64, 'fingerprint': fingerprint_from_config(CONFIG)}
    assert same_image(inspect, record)
    other = dict(CONFIG, created='2026-01-02T03:04:06Z')
    assert not same_image(inspect, dict(record, fingerprint=fingerprint_from_config(other)))


def test_engine_tags_skip_none():
    assert engine_tags({'RepoTags': ['<none>:<none>', 'b:1', 'a:1']}) == ['a:1', 'b:1']
    assert engine_tags({'RepoTags': None}) == []
