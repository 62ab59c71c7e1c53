#!/usr/bin/env python
# Copyright: (c) 2026, pibackup maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test helper of the docker_image_archive targets: make small images and damaged archives.

Every command runs as an argument list; images are made with `docker import`
of a small generated tar (no registry), so each run has its own unique images.
"""
import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile


def docker(host, *args, **kwargs):
    return subprocess.run(['docker', '-H', host] + list(args), check=True, capture_output=True, text=True, **kwargs)


def layer_tar(seed, size):
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode='w', format=tarfile.USTAR_FORMAT) as tar:
        payload = (seed.encode() * (size // max(1, len(seed)) + 1))[:size] + os.urandom(64)
        info = tarfile.TarInfo('data/%s.bin' % hashlib.sha256(seed.encode()).hexdigest()[:8])
        info.size = len(payload)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(payload))
    return data.getvalue()


def make_image(args):
    """Import one new image; tag it with every --ref; print its ID."""
    with tempfile.NamedTemporaryFile(suffix='.tar') as handle:
        handle.write(layer_tar(args.seed, args.size))
        handle.flush()
        argv = ['import', handle.name] + ([args.ref[0]] if args.ref else [])
        image_id = docker(args.host, *argv).stdout.strip()
    for ref in args.ref[1:]:
        docker(args.host, 'tag', image_id, ref)
    print(image_id)


def foreign_archive(args):
    """Write a legacy docker-archive whose config names another platform."""
    layer = layer_tar(args.seed, 2048)
    diff_id = 'sha256:' + hashlib.sha256(layer).hexdigest()
    config = json.dumps(dict(
        architecture=args.arch, os='linux', created='2026-01-02T03:04:05.123456789Z',
        config=dict(Cmd=['/bin/true']), rootfs=dict(type='layers', diff_ids=[diff_id]),
        history=[dict(created='2026-01-02T03:04:05.123456789Z', created_by='archive_lab.py')],
    ), sort_keys=True).encode()
    config_hex = hashlib.sha256(config).hexdigest()
    layer_dir = hashlib.sha256(diff_id.encode()).hexdigest()
    repo, tag = args.tag.rsplit(':', 1)
    members = [
        (config_hex + '.json', config),
        (layer_dir + '/layer.tar', layer),
        ('manifest.json', json.dumps([dict(Config=config_hex + '.json', RepoTags=[args.tag],
                                           Layers=[layer_dir + '/layer.tar'])]).encode()),
        ('repositories', json.dumps({repo: {tag: layer_dir}}).encode()),
    ]
    os.makedirs(os.path.dirname(os.path.abspath(args.path)), exist_ok=True)
    with tarfile.open(args.path, 'w', format=tarfile.USTAR_FORMAT) as tar:
        for name, blob in members:
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    print('sha256:' + config_hex)


def climbing_archive(args):
    """A tar whose member climbs out of the folder."""
    os.makedirs(os.path.dirname(os.path.abspath(args.path)), exist_ok=True)
    with tarfile.open(args.path, 'w', format=tarfile.USTAR_FORMAT) as tar:
        for name in ('manifest.json', '../../escape.txt'):
            blob = b'[]' if name == 'manifest.json' else b'x'
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def flip(args):
    """Flip one byte at a fraction of the file (into layer data, past the first headers)."""
    size = os.path.getsize(args.path)
    offset = int(size * args.at)
    with open(args.path, 'r+b') as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def truncate(args):
    size = os.path.getsize(args.path)
    os.truncate(args.path, int(size * args.at))


def rmi(args):
    for ref in args.refs:
        subprocess.run(['docker', '-H', args.host, 'rmi', '--force', ref], capture_output=True, check=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser('make-image')
    p.add_argument('--host', required=True)
    p.add_argument('--seed', required=True)
    p.add_argument('--size', type=int, default=4096)
    p.add_argument('--ref', action='append', default=[])
    p.set_defaults(func=make_image)
    p = sub.add_parser('foreign-archive')
    p.add_argument('path')
    p.add_argument('--tag', required=True)
    p.add_argument('--arch', default='arm64')
    p.add_argument('--seed', default='foreign')
    p.set_defaults(func=foreign_archive)
    p = sub.add_parser('climbing-archive')
    p.add_argument('path')
    p.set_defaults(func=climbing_archive)
    for name, func in (('flip', flip), ('truncate', truncate)):
        p = sub.add_parser(name)
        p.add_argument('path')
        p.add_argument('--at', type=float, default=0.5)
        p.set_defaults(func=func)
    p = sub.add_parser('rmi')
    p.add_argument('--host', required=True)
    p.add_argument('refs', nargs='+')
    p.set_defaults(func=rmi)
    args = parser.parse_args()
    try:
        args.func(args)
    except subprocess.CalledProcessError as exc:
        sys.exit('%s failed: %s' % (' '.join(exc.cmd), exc.stderr))


if __name__ == '__main__':
    main()
