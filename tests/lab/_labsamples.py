# Private to the lab (tests/lab): the sample images, made with `docker import`, never pulled.
"""Sample images of the lab, generated as tar streams and imported into an engine.

Each image is labelled pibackup.lab=sample. Only missing ones are created: `docker import`
stamps a fresh creation time, so re-creating an image would change its identity.
"""
from __future__ import absolute_import, division, print_function

import io
import json
import os
import random
import subprocess
import tarfile

import _labkit
from _labkit import LabError

SAMPLE_LABEL = 'pibackup.lab=sample'
BIG_FILES = 4
BIG_FILE_BYTES = 26 * 1024 * 1024  # 4 x 26 MiB = 104 MiB of pseudo-random bytes
CHUNK = 1024 * 1024
FIXED_MTIME = 1700000000  # tar members get a fixed time: same content every run
TINI = '/usr/bin/tini-static'  # static binary from the tini package (a docker.io dependency)

# reference -> (content kind, extra tags pointing at the same image)
SAMPLES = (
    ('pibackup-lab/big:1.0', 'big', ()),
    ('pibackup-lab/multi:1.0', 'multi', ('pibackup-lab/multi:latest',)),
    ('pibackup-lab/small:1.0', 'small', ()),
)


def sample_references():
    refs = []
    for ref, _kind, extra in SAMPLES:
        refs.append(ref)
        refs.extend(extra)
    return refs


class _RandomReader(object):
    """A file-like object yielding `size` deterministic pseudo-random bytes."""

    def __init__(self, seed, size):
        self._random = random.Random(seed)
        self._left = size
        self._buffer = b''

    def _next_chunk(self):
        if hasattr(self._random, 'randbytes'):
            return self._random.randbytes(CHUNK)
        return self._random.getrandbits(CHUNK * 8).to_bytes(CHUNK, 'little')

    def read(self, size=-1):
        if size is None or size < 0:
            size = self._left
        size = min(size, self._left)
        while len(self._buffer) < size:
            self._buffer += self._next_chunk()
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        self._left -= len(data)
        return data


def _add_dir(tar, name):
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    info.mtime = FIXED_MTIME
    tar.addfile(info)


def _add_file(tar, name, fileobj, size, mode=0o644):
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = FIXED_MTIME
    tar.addfile(info, fileobj)


def _add_bytes(tar, name, data, mode=0o644):
    _add_file(tar, name, io.BytesIO(data), len(data), mode)


def _write_rootfs(kind, stream):
    """Write the image's root filesystem as a tar stream."""
    with tarfile.open(fileobj=stream, mode='w|', format=tarfile.GNU_FORMAT) as tar:
        for folder in ('bin', 'etc', 'etc/pibackup-lab'):
            _add_dir(tar, folder)
        text = ('pibackup lab sample image: %s\n' % kind).encode()
        _add_bytes(tar, 'etc/pibackup-lab/sample.txt', text)
        if os.path.exists(TINI):
            with open(TINI, 'rb') as handle:
                _add_bytes(tar, 'bin/tini', handle.read(), 0o755)
        if kind == 'big':
            _add_dir(tar, 'data')
            for index in range(BIG_FILES):
                _add_file(tar, 'data/blob-%02d.bin' % index,
                          _RandomReader('pibackup-lab-big-%d' % index, BIG_FILE_BYTES),
                          BIG_FILE_BYTES)


def _inspect(engine, ref):
    """(image id, labels) of `ref` on the engine, or (None, None) when it is not there."""
    result = _labkit.docker(engine, ['image', 'inspect', '--format',
                                     '{{.Id}} {{json .Config.Labels}}', ref], check=False)
    if result.returncode != 0:
        return None, None
    image_id, _sep, labels = _labkit._text(result.stdout).strip().partition(' ')
    try:
        labels = json.loads(labels) or {}
    except ValueError:
        labels = {}
    return image_id, labels


def _is_sample(labels):
    key, value = SAMPLE_LABEL.split('=', 1)
    return bool(labels) and labels.get(key) == value


def _import(engine, kind, ref):
    cmd = [_labkit.docker_cli(engine), '-H', _labkit.docker_host(engine), 'import',
           '--change', 'LABEL %s' % SAMPLE_LABEL,
           '--message', 'pibackup lab sample (%s)' % kind]
    if os.path.exists(TINI):
        cmd += ['--change', 'CMD ["/bin/tini", "--version"]']
    cmd += ['-', ref]
    process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    write_error = None
    try:
        _write_rootfs(kind, process.stdin)
    except (IOError, OSError) as exc:  # broken pipe: docker import failed, its stderr says why
        write_error = exc
    finally:
        try:
            process.stdin.close()
        except (IOError, OSError):
            pass
    stdout = process.stdout.read()
    stderr = process.stderr.read()
    process.wait()
    if process.returncode != 0 or write_error is not None:
        raise LabError('command failed (exit %s): %s\n%s' % (
            process.returncode, ' '.join(cmd), _labkit._text(stderr).strip() or write_error))
    return _labkit._text(stdout).strip()


def ensure_samples(engine):
    """Create the missing sample images on `engine`; return the references created."""
    foreign = []
    for ref in sample_references():
        image_id, labels = _inspect(engine, ref)
        if image_id is not None and not _is_sample(labels):
            foreign.append(ref)
    if foreign:
        raise LabError('engine %s: %s exist(s) but is not a lab sample (no label %s); the lab '
                       'leaves such images alone: remove or rename them yourself' % (
                           engine, ', '.join(foreign), SAMPLE_LABEL))
    created = []
    for ref, kind, extra in SAMPLES:
        image_id, _labels = _inspect(engine, ref)
        if image_id is None:
            # a sibling tag may still hold the image (e.g. only multi:latest is left)
            for other in extra:
                other_id, other_labels = _inspect(engine, other)
                if other_id is not None and _is_sample(other_labels):
                    _labkit.docker(engine, ['tag', other_id, ref])
                    image_id = other_id
                    created.append(ref)
                    break
        if image_id is None:
            _labkit.log('engine %s: importing %s' % (engine, ref))
            image_id = _import(engine, kind, ref)
            created.append(ref)
        for other in extra:
            other_id, _labels = _inspect(engine, other)
            if other_id == image_id:
                continue
            _labkit.docker(engine, ['tag', image_id, other])
            created.append(other)
    return created


def remove_samples(engine):
    """Untag/remove the sample references (only those, and only if labelled as samples)."""
    removed = []
    for ref in sample_references():
        image_id, labels = _inspect(engine, ref)
        if image_id is not None and _is_sample(labels):
            _labkit.docker(engine, ['rmi', ref])
            removed.append(ref)
    return removed


def list_samples(engine):
    """[(reference, image id)] of the samples present on `engine`."""
    rows = []
    for ref in sample_references():
        image_id, labels = _inspect(engine, ref)
        if image_id is not None and _is_sample(labels):
            rows.append((ref, image_id))
    return rows
