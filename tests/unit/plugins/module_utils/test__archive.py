# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pibackup maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tests of _archive: real archives built here (and by the lab engines), real files, real compressors."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap

import pytest

from ansible_collections.pibackup.docker_usb.plugins.module_utils import _archive
from ansible_collections.pibackup.docker_usb.plugins.module_utils._archive import (
    ArchiveError,
    ArchiveWriter,
    COMPRESSIONS,
    SUFFIX,
    detect_compression,
    hash_file,
    open_tar_stream,
    read_archive,
    remove_stale_partials,
)
from ansible_collections.pibackup.docker_usb.plugins.module_utils._identity import fingerprint_from_config

CREATED = '2026-01-02T03:04:05.123456789Z'
HAVE_ZSTD = shutil.which('zstd') is not None
needs_zstd = pytest.mark.skipif(not HAVE_ZSTD, reason='the zstd command is not installed')


# ---------------------------------------------------------------------------
# Building real archives, the way each engine writes them


def sha(data):
    return hashlib.sha256(data).hexdigest()


def layer_tar(files):
    """An uncompressed layer tar holding ``files`` ({name: bytes})."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode='w', format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1700000000
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def image_config(layers, arch='arm64', variant='v8'):
    config = {
        'architecture': arch, 'os': 'linux', 'created': CREATED,
        'config': {'Cmd': ['/bin/sh']},
        'rootfs': {'type': 'layers', 'diff_ids': ['sha256:' + sha(layer) for layer in layers]},
    }
    if variant:
        config['variant'] = variant
    return json.dumps(config, sort_keys=True).encode()


class Member(object):
    def __init__(self, name, data=b'', kind=tarfile.REGTYPE, link=''):
        self.name, self.data, self.kind, self.link = name, data, kind, link


def write_tar(path, members):
    with tarfile.open(path, 'w', format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type = member.kind
            info.mtime = 1700000000
            info.linkname = member.link
            if member.kind == tarfile.REGTYPE:
                info.size = len(member.data)
                tar.addfile(info, io.BytesIO(member.data))
            else:
                info.mode = 0o755 if member.kind == tarfile.DIRTYPE else 0o777
                tar.addfile(info)
    return path


def legacy_members(layers, tags=('pibackup/unit:1.0',)):
    """docker-archive as Docker 20.10 writes it: <config hex>.json, <id>/layer.tar, manifest.json, repositories."""
    config = image_config(layers)
    config_hex = sha(config)
    members, layer_paths = [], []
    for number, layer in enumerate(layers):
        layer_id = sha(b'layer-id-%d' % number)
        members.append(Member(layer_id, kind=tarfile.DIRTYPE))
        members.append(Member(layer_id + '/VERSION', b'1.0'))
        members.append(Member(layer_id + '/json', json.dumps({'id': layer_id}).encode()))
        members.append(Member(layer_id + '/layer.tar', layer))
        layer_paths.append(layer_id + '/layer.tar')
    members.append(Member(config_hex + '.json', config))
    manifest = [{'Config': config_hex + '.json', 'RepoTags': list(tags) or None, 'Layers': layer_paths}]
    members.append(Member('manifest.json', json.dumps(manifest).encode()))
    repositories = {}
    for tag in tags:
        repo, version = tag.rsplit(':', 1)
        repositories.setdefault(repo, {})[version] = layer_paths[-1].split('/')[0]
    members.append(Member('repositories', json.dumps(repositories).encode()))
    return members, config, manifest


def blob(data):
    return Member('blobs/sha256/' + sha(data), data)


def descriptor(media_type, data, annotations=None):
    desc = {'mediaType': media_type, 'digest': 'sha256:' + sha(data), 'size': len(data)}
    if annotations:
        desc['annotations'] = annotations
    return desc


def oci_manifest(layers, config):
    return json.dumps({
        'schemaVersion': 2, 'mediaType': 'application/vnd.oci.image.manifest.v1+json',
        'config': descriptor('application/vnd.oci.image.config.v1+json', config),
        'layers': [descriptor('application/vnd.oci.image.layer.v1.tar', layer) for layer in layers],
    }).encode()


def oci_members(layers, tag='pibackup/unit:1.0', nested=False):
    """OCI layout as Docker 25+ writes it; ``nested``: the containerd store's index -> index -> manifest."""
    config = image_config(layers)
    manifest = oci_manifest(layers, config)
    members = [Member('blobs', kind=tarfile.DIRTYPE), Member('blobs/sha256', kind=tarfile.DIRTYPE)]
    members += [blob(layer) for layer in layers] + [blob(config), blob(manifest)]
    annotations = {'io.containerd.image.name': 'docker.io/' + tag, 'org.opencontainers.image.ref.name': tag.split(':')[1]}
    top = descriptor('application/vnd.oci.image.manifest.v1+json', manifest)
    if nested:
        top['platform'] = {'architecture': 'arm64', 'os': 'linux', 'variant': 'v8'}
        other = {'mediaType': 'application/vnd.oci.image.manifest.v1+json', 'digest': 'sha256:' + sha(b'not saved'),
                 'size': 1234, 'platform': {'architecture': 'amd64', 'os': 'linux'}}
        image_index = json.dumps({'schemaVersion': 2, 'mediaType': 'application/vnd.oci.image.index.v1+json',
                                  'manifests': [top, other]}).encode()
        members.append(blob(image_index))
        top = descriptor('application/vnd.oci.image.index.v1+json', image_index, annotations)
    else:
        top['annotations'] = annotations
    index = {'schemaVersion': 2, 'mediaType': 'application/vnd.oci.image.index.v1+json', 'manifests': [top]}
    members.append(Member('index.json', json.dumps(index).encode()))
    members.append(Member('oci-layout', b'{"imageLayoutVersion": "1.0.0"}'))
    docker_manifest = [{'Config': 'blobs/sha256/' + sha(config), 'RepoTags': [tag],
                        'Layers': ['blobs/sha256/' + sha(layer) for layer in layers]}]
    members.append(Member('manifest.json', json.dumps(docker_manifest).encode()))
    return members, config, manifest


LAYERS = [layer_tar({'etc/os-release': b'ID=unit\n', 'bin/sh': b'\x7fELF' + b'x' * 3000}),
          layer_tar({'app/data.bin': os.urandom(20000)})]

FORMATS = {
    'docker-archive': lambda: legacy_members(LAYERS),
    'oci': lambda: oci_members(LAYERS),
    'containerd': lambda: oci_members(LAYERS, nested=True),
}


def compress(path, compression):
    if compression == 'none':
        return path
    if compression == 'gzip':
        with open(path, 'rb') as source, gzip.open(path + '.gz', 'wb') as target:
            shutil.copyfileobj(source, target)
        return path + '.gz'
    subprocess.run(['zstd', '-q', '-f', path, '-o', path + '.zst'], check=True)
    return path + '.zst'


def build(tmp_path, kind, compression='none', edit=None):
    members, config, manifest = FORMATS[kind]()
    if edit:
        members = edit(members)
    path = write_tar(str(tmp_path / ('%s.tar' % kind)), members)
    return compress(path, compression), config, manifest


def compressions():
    return [pytest.param(c, marks=needs_zstd) if c == 'zstd' else c for c in COMPRESSIONS]


# ---------------------------------------------------------------------------
# Good archives in every format and compression


@pytest.mark.parametrize('compression', compressions())
@pytest.mark.parametrize('kind', sorted(FORMATS))
def test_reads_good_archives(tmp_path, kind, compression):
    path, config, manifest = build(tmp_path, kind, compression)
    report = read_archive(path)
    assert report.problems == []
    assert report.ok
    assert report.compression == compression
    assert report.format == {'docker-archive': 'docker-archive'}.get(kind, 'oci+docker')
    assert (report.sha256, report.bytes) == hash_file(path)
    assert report.sha256 == sha(open(path, 'rb').read())
    assert len(report.images) == 1
    image = report.images[0]
    assert image.config_digest == 'sha256:' + sha(config)
    assert image.repo_tags == ['pibackup/unit:1.0']
    assert image.manifest_digest == (None if kind == 'docker-archive' else 'sha256:' + sha(manifest))
    assert image.diff_ids == ['sha256:' + sha(layer) for layer in LAYERS]
    assert (image.os, image.architecture, image.variant, image.created) == ('linux', 'arm64', 'v8', CREATED)
    assert image.fingerprint == fingerprint_from_config(json.loads(config))
    assert image.layers_bytes == sum(len(layer) for layer in LAYERS)


def test_untagged_image_saved_by_id(tmp_path):
    members, config, dummy = legacy_members(LAYERS, tags=())
    report = read_archive(write_tar(str(tmp_path / 'byid.tar'), members))
    assert report.ok, report.problems
    assert report.images[0].repo_tags == []
    assert report.images[0].config_digest == 'sha256:' + sha(config)


def test_shared_layer_symlink_inside_archive_is_fine(tmp_path):
    """Docker 20.10 links a layer shared by two images: '<id>/layer.tar -> ../<other>/layer.tar'."""
    members, dummy, manifest = legacy_members(LAYERS)
    first = manifest[0]['Layers'][0]
    members.insert(0, Member('aaaa', kind=tarfile.DIRTYPE))
    members.insert(1, Member('aaaa/layer.tar', kind=tarfile.SYMTYPE, link='../' + first))
    manifest[0]['Layers'][0] = 'aaaa/layer.tar'
    members[-2] = Member('manifest.json', json.dumps(manifest).encode())
    report = read_archive(write_tar(str(tmp_path / 'link.tar'), members))
    assert report.ok, report.problems


def test_expected_sha256(tmp_path):
    path, dummy, dummy2 = build(tmp_path, 'oci')
    digest = hash_file(path)[0]
    assert read_archive(path, expected_sha256='sha256:' + digest.upper()).ok
    report = read_archive(path, expected_sha256='0' * 64)
    assert not report.ok
    assert 'the record says ' + '0' * 64 in report.problems[0]


def test_detect_compression_by_magic():
    assert detect_compression(b'\x1f\x8b\x08\x00') == 'gzip'
    assert detect_compression(b'\x28\xb5\x2f\xfd\x00') == 'zstd'
    assert detect_compression(b'manifest.json\x00') == 'none'
    assert detect_compression(b'') == 'none'
    with pytest.raises(ArchiveError, match='xz'):
        detect_compression(b'\xfd7zXZ\x00\x00')
    assert SUFFIX == {'none': '.tar', 'gzip': '.tar.gz', 'zstd': '.tar.zst'}


def test_long_names_and_gnu_format(tmp_path):
    """GNU long names ('././@LongLink') and ustar prefixes are read like PAX paths."""
    members, dummy, dummy2 = oci_members(LAYERS)
    long_dir = 'x' * 120
    members.append(Member(long_dir, kind=tarfile.DIRTYPE))
    members.append(Member(long_dir + '/' + 'y' * 150, b'long'))
    path = str(tmp_path / 'gnu.tar')
    with tarfile.open(path, 'w', format=tarfile.GNU_FORMAT) as tar:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type = member.kind
            info.size = len(member.data)
            tar.addfile(info, io.BytesIO(member.data))
    report = read_archive(path)
    assert report.ok, report.problems
    assert report.images[0].repo_tags == ['pibackup/unit:1.0']


# ---------------------------------------------------------------------------
# Damage


@pytest.mark.parametrize('compression', compressions())
@pytest.mark.parametrize('kind', sorted(FORMATS))
def test_truncated_at_several_offsets(tmp_path, kind, compression):
    path, dummy, dummy2 = build(tmp_path, kind)
    data = open(path, 'rb').read()
    with tarfile.open(path) as tar:
        infos = tar.getmembers()
    biggest = max(infos, key=lambda info: info.size)
    last = infos[-1]
    end = last.offset_data + (last.size + 511) // 512 * 512
    # inside a header, inside the biggest member, on a member boundary, just before the end marker
    for cut in (infos[1].offset + 100, biggest.offset_data + biggest.size // 2, last.offset, end):
        short = str(tmp_path / ('short-%d.tar' % cut))
        with open(short, 'wb') as handle:
            handle.write(data[:cut])
        short = compress(short, compression)
        report = read_archive(short)
        assert not report.ok, cut
        assert 'truncated' in report.problems[0], (cut, report.problems)
        assert 'member' in report.problems[0] or 'header' in report.problems[0]
        assert report.sha256 == hash_file(short)[0]


@pytest.mark.parametrize('compression', [c for c in compressions() if c != 'none'])
def test_truncated_compressed_stream(tmp_path, compression):
    path, dummy, dummy2 = build(tmp_path, 'oci', compression)
    data = open(path, 'rb').read()
    short = str(tmp_path / ('cut' + SUFFIX[compression]))
    with open(short, 'wb') as handle:
        handle.write(data[:len(data) - 40])
    report = read_archive(short)
    assert not report.ok
    assert 'truncated' in ' '.join(report.problems)
    assert report.sha256 == hash_file(short)[0]


def flip_byte_in(path, needle):
    data = bytearray(open(path, 'rb').read())
    at = data.find(needle)
    assert at > 0
    data[at] ^= 0x01
    with open(path, 'wb') as handle:
        handle.write(data)


@pytest.mark.parametrize('kind', sorted(FORMATS))
def test_one_byte_flipped_in_a_layer(tmp_path, kind):
    path, dummy, dummy2 = build(tmp_path, kind)
    flip_byte_in(path, b'ID=unit')
    report = read_archive(path)
    assert not report.ok
    text = ' '.join(report.problems)
    assert 'damaged' in text
    layer_hex = sha(LAYERS[0])
    if kind == 'docker-archive':
        assert 'diff_ids' in text and 'layer.tar' in text
    else:
        assert 'blobs/sha256/' + layer_hex in text


def test_flipped_byte_in_compressed_archive(tmp_path):
    path, dummy, dummy2 = build(tmp_path, 'oci', 'gzip')
    data = bytearray(open(path, 'rb').read())
    data[len(data) // 2] ^= 0xff
    with open(path, 'wb') as handle:
        handle.write(data)
    report = read_archive(path)
    assert not report.ok
    assert report.problems


@pytest.mark.parametrize('kind', ['oci', 'containerd'])
def test_missing_blob(tmp_path, kind):
    layer_name = 'blobs/sha256/' + sha(LAYERS[1])
    path, dummy, dummy2 = build(tmp_path, kind, edit=lambda ms: [m for m in ms if m.name != layer_name])
    report = read_archive(path)
    assert not report.ok
    assert any(p.startswith(layer_name) and 'not in the archive' in p for p in report.problems), report.problems


def test_missing_legacy_layer(tmp_path):
    members, dummy, manifest = legacy_members(LAYERS)
    gone = manifest[0]['Layers'][1]
    report = read_archive(write_tar(str(tmp_path / 'gone.tar'), [m for m in members if m.name != gone]))
    assert any(p.startswith(gone) and 'not in the archive' in p for p in report.problems), report.problems


def test_manifest_json_edited(tmp_path):
    def edit(members):
        manifest = json.loads(members[-1].data)
        manifest[0]['Config'] = 'blobs/sha256/' + sha(b'another config')
        members[-1] = Member('manifest.json', json.dumps(manifest).encode())
        return members
    path, dummy, dummy2 = build(tmp_path, 'oci', edit=edit)
    report = read_archive(path)
    assert any('blobs/sha256/' + sha(b'another config') in p and 'not in the archive' in p for p in report.problems)


def test_config_edited_legacy(tmp_path):
    members, config, dummy = legacy_members(LAYERS)
    name = sha(config) + '.json'
    for member in members:
        if member.name == name:
            member.data = member.data.replace(b'arm64', b'amd64')
    report = read_archive(write_tar(str(tmp_path / 'cfg.tar'), members))
    assert any(p.startswith(name) and 'edited' in p for p in report.problems), report.problems


def test_not_an_archive(tmp_path):
    path = tmp_path / 'junk.tar'
    path.write_bytes(b'hello world' * 100)
    report = read_archive(str(path))
    assert not report.ok
    assert 'checksum' in report.problems[0]
    with pytest.raises(ArchiveError, match='cannot open'):
        read_archive(str(tmp_path / 'absent.tar'))


# ---------------------------------------------------------------------------
# Hostile members


@pytest.mark.parametrize('member, expected', [
    (Member('/etc/evil', b'x'), 'absolute path'),
    (Member('../evil', b'x'), "climbs out"),
    (Member('blobs/../../evil', b'x'), "climbs out"),
    (Member('evil-link', kind=tarfile.SYMTYPE, link='/etc/passwd'), 'symlink to an absolute path'),
    (Member('blobs/evil-link', kind=tarfile.SYMTYPE, link='../../etc/passwd'), 'points outside the archive'),
    (Member('evil-hard', kind=tarfile.LNKTYPE, link='../etc/shadow'), 'points outside the archive'),
    (Member('evil-hard', kind=tarfile.LNKTYPE, link='/etc/shadow'), 'points outside the archive'),
    (Member('evil-fifo', kind=tarfile.FIFOTYPE), 'unexpected tar entry type'),
])
def test_unsafe_members(tmp_path, member, expected):
    path, dummy, dummy2 = build(tmp_path, 'oci', edit=lambda ms: [member] + ms)
    report = read_archive(path)
    assert not report.ok
    assert any(expected in p and member.name in p for p in report.problems), report.problems


@pytest.mark.parametrize('bad', ['../../../etc/passwd', '/etc/passwd'])
def test_manifest_names_a_path_outside(tmp_path, bad):
    def edit(members):
        manifest = json.loads(members[-1].data)
        manifest[0]['Layers'][0] = bad
        members[-1] = Member('manifest.json', json.dumps(manifest).encode())
        return members
    path, dummy, dummy2 = build(tmp_path, 'oci', edit=edit)
    report = read_archive(path)
    assert any(bad in p and 'outside the archive' in p for p in report.problems), report.problems


# ---------------------------------------------------------------------------
# The writer


def tar_bytes(tmp_path):
    path, dummy, dummy2 = build(tmp_path, 'oci')
    return open(path, 'rb').read()


def feed(writer, data, step=7777):
    for start in range(0, len(data), step):
        writer.write(data[start:start + step])


@pytest.mark.parametrize('compression', compressions())
def test_writer_round_trip(tmp_path, compression):
    raw = tar_bytes(tmp_path)
    final = str(tmp_path / ('out' + SUFFIX[compression]))
    with ArchiveWriter(final, compression=compression) as writer:
        feed(writer, raw)
        assert not os.path.exists(final)
        assert os.path.exists(writer.temp_path)
        assert os.path.basename(writer.temp_path).startswith('.out%s.partial-' % SUFFIX[compression])
        digest, size = writer.commit()
    assert not os.path.exists(writer.temp_path)
    assert (digest, size) == hash_file(final)
    assert digest == subprocess.run(['sha256sum', final], check=True, stdout=subprocess.PIPE).stdout.split()[0].decode()
    assert writer.sha256 == digest and writer.bytes_written == size
    report = read_archive(final, expected_sha256=digest)
    assert report.ok, report.problems
    assert report.compression == compression
    with open_tar_stream(final) as stream:
        assert stream.read() == raw
    assert os.listdir(str(tmp_path)).count('out' + SUFFIX[compression]) == 1


def test_writer_gzip_without_pigz(tmp_path, monkeypatch):
    """The in-process gzip fallback (no pigz on PATH) writes a valid stream too."""
    monkeypatch.setattr(_archive.shutil, 'which', lambda name: None)
    raw = tar_bytes(tmp_path)
    final = str(tmp_path / 'fallback.tar.gz')
    with ArchiveWriter(final, compression='gzip') as writer:
        feed(writer, raw)
        digest, dummy = writer.commit()
    assert writer.tool == 'python zlib'
    assert gzip.decompress(open(final, 'rb').read()) == raw
    assert digest == hash_file(final)[0]
    with pytest.raises(ArchiveError, match='install the zstd package'):
        ArchiveWriter(str(tmp_path / 'x.tar.zst'), compression='zstd')


def test_writer_abort_on_exception_keeps_older_archive(tmp_path):
    final = tmp_path / 'keep.tar'
    final.write_bytes(b'older good archive')
    with pytest.raises(RuntimeError):
        with ArchiveWriter(str(final)) as writer:
            writer.write(b'new data')
            temp = writer.temp_path
            assert os.path.exists(temp)
            raise RuntimeError('engine went away')
    assert not os.path.exists(temp)
    assert final.read_bytes() == b'older good archive'
    assert sorted(os.listdir(str(tmp_path))) == ['keep.tar']


def test_writer_without_commit_publishes_nothing(tmp_path):
    final = str(tmp_path / 'never.tar')
    with ArchiveWriter(final, compression='gzip') as writer:
        writer.write(b'x' * 1000)
    assert os.listdir(str(tmp_path)) == []


def test_writer_mode_ignores_umask(tmp_path):
    old = os.umask(0o077)
    try:
        final = str(tmp_path / 'mode.tar')
        with ArchiveWriter(final) as writer:
            writer.write(b'data')
            writer.commit()
    finally:
        os.umask(old)
    assert os.stat(final).st_mode & 0o777 == 0o644


@pytest.mark.parametrize('compression', ['none', 'gzip'])
def test_writer_file_size_limit(tmp_path, compression):
    final = str(tmp_path / 'big.tar')
    with pytest.raises(ArchiveError) as caught:
        with ArchiveWriter(final, compression=compression, max_file_bytes=1000) as writer:
            for dummy in range(200):
                writer.write(os.urandom(1000))
            writer.commit()
    text = str(caught.value)
    assert '1000 bytes' in text and 'exFAT' in text and 'compression' in text and final in text
    assert os.listdir(str(tmp_path)) == []


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 256 KiB filesystem that fills up (needs root to mount; removed afterwards)."""
    if os.geteuid() != 0 or not shutil.which('mount'):
        pytest.skip('mounting a small tmpfs needs root')
    point = tmp_path / 'format-full'
    point.mkdir()
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=256k,mode=0755', 'format-full', str(point)], check=True)
    try:
        yield point
    finally:
        subprocess.run(['umount', str(point)], check=True)


def test_writer_disk_full(small_tmpfs):
    final = small_tmpfs / 'full.tar'
    final.write_bytes(b'older good archive')
    with pytest.raises(ArchiveError) as caught:
        with ArchiveWriter(str(final)) as writer:
            for dummy in range(100):
                writer.write(b'x' * 10000)
            writer.commit()
    text = str(caught.value)
    assert 'no space left on the device after writing' in text
    written = int(text.split('after writing ')[1].split(' ')[0])
    assert 100000 < written < 262144
    assert writer.temp_path in text
    assert sorted(os.listdir(str(small_tmpfs))) == ['full.tar']
    assert final.read_bytes() == b'older good archive'


def test_remove_stale_partials(tmp_path):
    keep = ['a.tar', 'SHA256SUMS', '.hidden', 'b.tar.partial-x']
    stale = ['.a.tar.partial-0a1b2c', '.c.tar.zst.partial-ffffff']
    for name in keep + stale:
        (tmp_path / name).write_bytes(b'x')
    (tmp_path / '.d.partial-dir').mkdir()
    assert remove_stale_partials(str(tmp_path)) == sorted(stale)
    assert sorted(os.listdir(str(tmp_path))) == sorted(keep + ['.d.partial-dir'])


# ---------------------------------------------------------------------------
# Memory stays flat


MEMORY_SCRIPT = textwrap.dedent('''
    import resource, sys
    sys.path.insert(0, sys.argv[2])
    from ansible_collections.pibackup.docker_usb.plugins.module_utils._archive import read_archive
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = read_archive(sys.argv[1])
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert report.ok, report.problems
    print((after - before) * 1024)
''')


def big_archive(folder, block):
    """A 200 MB docker-archive whose one layer repeats ``block``, streamed to disk (never held in memory)."""
    layer_path = str(folder / 'big-layer.tar')
    with tarfile.open(layer_path, 'w') as tar:
        info = tarfile.TarInfo('big.bin')
        info.size = 200 * len(block)
        tar.addfile(info, io.BufferedReader(_Repeat(block, 200)))
    layer_hex = hash_file(layer_path)[0]
    config = json.dumps({'architecture': 'arm64', 'os': 'linux', 'created': CREATED,
                         'rootfs': {'type': 'layers', 'diff_ids': ['sha256:' + layer_hex]}}).encode()
    manifest = json.dumps([{'Config': 'blobs/sha256/' + sha(config), 'RepoTags': ['big:1'],
                            'Layers': ['blobs/sha256/' + layer_hex]}]).encode()
    path = str(folder / 'big.tar')
    with tarfile.open(path, 'w') as tar:
        tar.add(layer_path, 'blobs/sha256/' + layer_hex)
        for name, data in (('blobs/sha256/' + sha(config), config), ('manifest.json', manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    os.unlink(layer_path)
    return path


@pytest.mark.parametrize('compression', ['none', 'gzip'])
def test_memory_flat_on_200_mb(tmp_path, compression):
    """Peak RSS of read_archive grows by far less than the archive.

    none: 200 MB of incompressible data; gzip: 200 MB of zeros in a tiny file,
    so decompression must be bounded too. zstd decompresses in its own process.
    """
    block = os.urandom(1024 * 1024) if compression == 'none' else b'\0' * (1024 * 1024)
    path = big_archive(tmp_path, block)
    if compression == 'gzip':
        raw, path = path, str(tmp_path / 'big.tar.gz')
        with ArchiveWriter(path, compression='gzip', level=1) as writer, open(raw, 'rb') as source:
            for chunk in iter(lambda: source.read(1024 * 1024), b''):
                writer.write(chunk)
            writer.commit()
        os.unlink(raw)
        assert os.path.getsize(path) < 10 * 1024 * 1024
    root = os.path.abspath(os.path.join(os.path.dirname(_archive.__file__), '..', '..', '..', '..', '..'))
    out = subprocess.run([sys.executable, '-c', MEMORY_SCRIPT, path, root], check=True, stdout=subprocess.PIPE)
    growth = int(out.stdout.decode().strip())
    assert growth < 64 * 1024 * 1024


class _Repeat(io.RawIOBase):
    """A readable stream of ``count`` copies of ``block``, without holding them all."""

    def __init__(self, block, count):
        self.block, self.left, self.pos = block, count, 0

    def readable(self):
        return True

    def readinto(self, buf):
        if not self.left:
            return 0
        take = min(len(buf), len(self.block) - self.pos)
        buf[:take] = self.block[self.pos:self.pos + take]
        self.pos += take
        if self.pos == len(self.block):
            self.pos, self.left = 0, self.left - 1
        return take


# ---------------------------------------------------------------------------
# Real archives written by the lab engines (tests/lab/lab.py up)


ENGINES = ('d20', 'd26', 'd26c')
# Images of this test only (unique per run, removed afterwards): never the lab's samples, which
# other tests remove and restore while these run.
RUN_ID = os.urandom(4).hex()
LAB_IMAGES = ['pibackup-format/unit-%s:1.0' % RUN_ID, 'pibackup-format/unit-%s:latest' % RUN_ID,
              'pibackup-format/other-%s:1.0' % RUN_ID]


def lab_docker(engine, *args, **kwargs):
    socket = '/run/pibackup-lab/%s/docker.sock' % engine
    if not shutil.which('docker') or not os.path.exists(socket):
        pytest.skip('lab engine %s is not up (run tests/lab/lab.py up)' % engine)
    return subprocess.run(['docker', '-H', 'unix://' + socket] + list(args), check=True, stdout=subprocess.PIPE,
                          **kwargs)


@pytest.fixture(scope='module', params=ENGINES)
def real_archive(request, tmp_path_factory):
    """docker save of two imported images (one with two tags) on a lab engine."""
    engine = request.param
    try:
        lab_docker(engine, 'version', stderr=subprocess.DEVNULL)
    except subprocess.CalledProcessError:
        pytest.skip('lab engine %s does not answer (run tests/lab/lab.py up)' % engine)
    created = []
    try:
        for name, content in ((LAB_IMAGES[0], b'unit image\n'), (LAB_IMAGES[2], os.urandom(50000))):
            lab_docker(engine, 'import', '-', name, input=layer_tar({'data/file': content}))
            created.append(name)
        lab_docker(engine, 'tag', LAB_IMAGES[0], LAB_IMAGES[1])
        created.append(LAB_IMAGES[1])
        inspect = json.loads(lab_docker(engine, 'image', 'inspect', *LAB_IMAGES).stdout)
        path = str(tmp_path_factory.mktemp('format-' + engine) / 'lab.tar')
        lab_docker(engine, 'save', '-o', path, *LAB_IMAGES)
        yield engine, path, inspect
    finally:
        if created:
            lab_docker(engine, 'rmi', *created)


def test_real_engine_archive(real_archive):
    from ansible_collections.pibackup.docker_usb.plugins.module_utils._identity import fingerprint_from_inspect
    engine, path, inspect = real_archive
    report = read_archive(path)
    assert report.ok, report.problems
    assert report.format == ('docker-archive' if engine == 'd20' else 'oci+docker')
    assert (report.sha256, report.bytes) == hash_file(path)
    by_tag = dict((tag, image) for image in report.images for tag in image.repo_tags)
    assert sorted(by_tag) == sorted(LAB_IMAGES)
    assert by_tag[LAB_IMAGES[0]] is by_tag[LAB_IMAGES[1]]
    assert by_tag[LAB_IMAGES[0]] is not by_tag[LAB_IMAGES[2]]
    assert len(report.images) == 2
    for data in inspect:
        image = by_tag[data['RepoTags'][0]]
        assert image.fingerprint == fingerprint_from_inspect(data)
        # overlay2 engines show the config digest as the IMAGE ID, the containerd store the manifest digest
        assert data['Id'] == (image.manifest_digest if engine == 'd26c' else image.config_digest)


@pytest.mark.parametrize('compression', compressions())
def test_real_engine_stream_through_writer(real_archive, tmp_path, compression):
    """docker save's stdout streamed through ArchiveWriter, then checked and decompressed again."""
    engine, dummy, dummy2 = real_archive
    final = str(tmp_path / ('%s-lab%s' % (engine, SUFFIX[compression])))
    proc = subprocess.Popen(['docker', '-H', 'unix:///run/pibackup-lab/%s/docker.sock' % engine, 'save'] + LAB_IMAGES,
                            stdout=subprocess.PIPE)
    raw = hashlib.sha256()
    with ArchiveWriter(final, compression=compression, inspect=True) as writer:
        for chunk in iter(lambda: proc.stdout.read(65536), b''):
            raw.update(chunk)
            writer.write(chunk)
        assert proc.wait() == 0
        digest, size = writer.commit()
    report = read_archive(final, expected_sha256=digest)
    assert report.ok, report.problems
    assert writer.report.to_dict() == report.to_dict()
    assert report.bytes == size and report.compression == compression
    assert sorted(tag for image in report.images for tag in image.repo_tags) == sorted(LAB_IMAGES)
    with open_tar_stream(final) as stream:
        streamed = hashlib.sha256(stream.read()).hexdigest()
    assert streamed == raw.hexdigest()


def test_real_engine_damage(real_archive, tmp_path):
    engine, path, dummy = real_archive
    data = open(path, 'rb').read()
    with tarfile.open(path) as tar:
        infos = tar.getmembers()
    layer = max(infos, key=lambda info: info.size)
    flipped = bytearray(data)
    flipped[layer.offset_data + layer.size // 2] ^= 0x01
    damaged = tmp_path / 'flipped.tar'
    damaged.write_bytes(bytes(flipped))
    report = read_archive(str(damaged))
    assert not report.ok
    assert any(layer.name in problem and 'damaged' in problem for problem in report.problems), report.problems

    short = tmp_path / 'short.tar'
    short.write_bytes(data[:layer.offset_data + 1000])
    report = read_archive(str(short))
    assert 'ends inside member %s after 1000 of %d bytes' % (layer.name, layer.size) in report.problems[0]


@pytest.mark.parametrize('nested', [False, True])
def test_pure_oci_layout_tags_from_annotations(tmp_path, nested):
    """Without manifest.json the tags come from index.json annotations, in the form docker images shows."""
    members, config, manifest = oci_members(LAYERS, tag='pibackup/unit:2.0', nested=nested)
    members = [member for member in members if member.name != 'manifest.json']
    report = read_archive(write_tar(str(tmp_path / 'pure-oci.tar'), members))
    assert report.ok, report.problems
    assert report.format == 'oci'
    assert report.images[0].repo_tags == ['pibackup/unit:2.0']
    assert report.images[0].manifest_digest == 'sha256:' + sha(manifest)
    assert report.images[0].config_digest == 'sha256:' + sha(config)


def test_nested_index_with_no_saved_manifest(tmp_path):
    """The containerd store's image index must lead to at least one manifest that was saved."""
    manifest_name = 'blobs/sha256/' + sha(oci_members(LAYERS, nested=True)[2])
    path, dummy, dummy2 = build(tmp_path, 'containerd', edit=lambda ms: [m for m in ms if m.name != manifest_name])
    report = read_archive(path)
    assert any('none of the 2 manifests this index names is in the archive' in p for p in report.problems), \
        report.problems


@pytest.mark.parametrize('compression', compressions())
@pytest.mark.parametrize('kind', sorted(FORMATS))
def test_writer_inspects_while_writing(tmp_path, kind, compression):
    """inspect=True gives the same report as reading the file again, without reading it."""
    source, dummy, dummy2 = build(tmp_path, kind)
    raw = open(source, 'rb').read()
    final = str(tmp_path / ('inspected' + SUFFIX[compression]))
    with ArchiveWriter(final, compression=compression, inspect=True) as writer:
        feed(writer, raw, step=3001)
        digest, size = writer.commit()
    again = read_archive(final)
    assert writer.report.ok, writer.report.problems
    assert writer.report.to_dict() == again.to_dict()
    assert (writer.report.sha256, writer.report.bytes) == (digest, size)


@pytest.mark.parametrize('kind', sorted(FORMATS))
def test_writer_structure_inspection(tmp_path, kind):
    """inspect='structure' finds the same images as a full read, and still sees a cut stream."""
    source, dummy, dummy2 = build(tmp_path, kind)
    raw = open(source, 'rb').read()
    final = str(tmp_path / 'structure.tar')
    with ArchiveWriter(final, inspect='structure') as writer:
        feed(writer, raw, step=3001)
        writer.commit()
    full = read_archive(final)
    assert writer.report.ok, writer.report.problems
    assert [image.to_dict() for image in writer.report.images] == [image.to_dict() for image in full.images]
    cut = str(tmp_path / 'cut.tar')
    with ArchiveWriter(cut, inspect='structure') as writer:
        feed(writer, raw[:len(raw) // 2], step=3001)
        writer.commit()
    assert not writer.report.ok
    assert any('truncated' in problem for problem in writer.report.problems), writer.report.problems


def test_writer_inspect_reports_damage_and_never_blocks(tmp_path):
    source, dummy, dummy2 = build(tmp_path, 'oci')
    raw = bytearray(open(source, 'rb').read())
    raw[raw.find(b'ID=unit')] ^= 1
    with tarfile.open(source) as tar:
        header = tar.getmembers()[-1].offset
    raw[header + 148] ^= 1  # a broken header checksum stops the scan early; writing must go on
    final = str(tmp_path / 'damaged.tar')
    with ArchiveWriter(final, inspect=True) as writer:
        feed(writer, bytes(raw) + b'\0' * (3 * 1024 * 1024), step=4096)
        writer.commit()
    assert not writer.report.ok
    assert 'checksum' in writer.report.problems[0]
    assert os.path.getsize(final) == len(raw) + 3 * 1024 * 1024


@pytest.mark.parametrize('compression', [c for c in compressions() if c != 'none'])
def test_open_tar_stream_refuses_damaged_streams(tmp_path, compression):
    path, dummy, dummy2 = build(tmp_path, 'oci', compression)
    data = open(path, 'rb').read()
    with open(path, 'wb') as handle:
        handle.write(data[:len(data) // 2])
    with pytest.raises(ArchiveError) as caught:
        with open_tar_stream(path) as stream:
            while stream.read(4096):
                pass
    assert path in str(caught.value) and ('truncated' in str(caught.value) or 'zstd -d failed' in str(caught.value))


@pytest.mark.parametrize('kind', sorted(FORMATS))
def test_shallow_read_trusts_only_a_matching_record(tmp_path, kind):
    """deep=False skips layer hashing only when the file's sha256 matches the record."""
    source, dummy, dummy2 = build(tmp_path, kind)
    good_sha = hash_file(source)[0]
    assert read_archive(source, expected_sha256=good_sha, deep=False).ok
    data = bytearray(open(source, 'rb').read())
    data[data.find(b'ID=unit')] ^= 1
    damaged = tmp_path / 'damaged.tar'
    damaged.write_bytes(bytes(data))
    shallow = read_archive(str(damaged), expected_sha256=good_sha, deep=False)
    assert not shallow.ok and 'sha256 of the file' in shallow.problems[0]
    # without a record, a shallow read is a deep one: the damaged layer is named
    unrecorded = read_archive(str(damaged), deep=False)
    assert not unrecorded.ok
    assert any('damaged' in problem for problem in unrecorded.problems), unrecorded.problems


def test_commit_check_runs_before_the_rename_and_a_failure_keeps_the_old_file(tmp_path):
    """commit(check) sees the complete temporary file; raising there leaves the final path as it was."""
    source, dummy, dummy2 = build(tmp_path, 'docker-archive')
    raw = open(source, 'rb').read()
    final = tmp_path / 'kept.tar'
    final.write_bytes(b'the older archive')
    seen = []

    def refuse(temp_path, sha256, report):
        seen.append((temp_path, os.path.getsize(temp_path), sha256, report.ok))
        raise ValueError('refused by the check')

    writer = ArchiveWriter(str(final), inspect='structure')
    feed(writer, raw, step=4096)
    with pytest.raises(ValueError):
        writer.commit(refuse)
    assert seen and seen[0][1] == len(raw) and seen[0][2] == hash_file(source)[0] and seen[0][3]
    assert not os.path.exists(seen[0][0])
    assert final.read_bytes() == b'the older archive'
    assert not [name for name in os.listdir(str(tmp_path)) if '.partial-' in name]
    writer = ArchiveWriter(str(final))
    feed(writer, raw, step=4096)
    writer.commit(lambda temp_path, sha256, report: seen.append(report))
    assert seen[-1] is None and final.read_bytes() == raw
