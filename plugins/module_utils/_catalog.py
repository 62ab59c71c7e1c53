# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pibackup maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# Private helper of pibackup.docker_usb: not a public API, may change without notice.
"""The stick's catalog: ``SHA256SUMS`` and the metadata file beside each archive.

``SHA256SUMS`` is in coreutils format (``<hex>  <name>``), so
``sha256sum -c SHA256SUMS`` works on any machine. It is rewritten atomically
(temporary file, fsync, rename, fsync of the folder): a failure leaves the old
file whole. Only the lines of the names the caller changes are touched; lines
for other files (made by people or other tools) are kept as they are.

The metadata file of ``app_1.0.tar`` is ``app_1.0.tar.meta.json``: a small
JSON object with the tags, the engine's image ID, the config digest, the
fingerprint, platform, size, sha256, compression, creation time, the engine
that saved it and when.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import errno
import json
import os
import re
import tempfile

from ansible_collections.pibackup.docker_usb.plugins.module_utils._archive import fsync_folder
from ansible_collections.pibackup.docker_usb.plugins.module_utils._names import (
    METADATA_SUFFIX,
    is_plain_file_name,
)

SUMS_NAME = 'SHA256SUMS'
METADATA_FORMAT = 1
_SUM_LINE = re.compile(r'^(?P<hex>[0-9a-fA-F]{64}) (?P<mode>[ *])(?P<name>.+)$')
# Larger metadata files are not ours: never read them into memory.
METADATA_MAX_BYTES = 1024 * 1024


class CatalogError(Exception):
    """A catalog file that cannot be read or written; ``path`` names it."""

    def __init__(self, msg, path):
        super(CatalogError, self).__init__(msg)
        self.msg = msg
        self.path = path


def atomic_write(path, data, mode=0o644, uid=None, gid=None):
    """Write bytes to path through a temporary file in the same folder, fsync, rename."""
    folder = os.path.dirname(path) or '.'
    fd, temp = tempfile.mkstemp(prefix='.%s.partial-' % os.path.basename(path), dir=folder)
    try:
        with os.fdopen(fd, 'wb') as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        if uid is not None or gid is not None:
            try:
                os.chown(temp, -1 if uid is None else uid, -1 if gid is None else gid)
            except OSError:
                pass  # filesystems without owners (exFAT, FAT32) fix them at mount time
        os.rename(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    fsync_folder(folder)


class Sums(object):
    """``SHA256SUMS`` of one folder: its lines in order, managed names updated in place."""

    def __init__(self, folder):
        self.folder = folder
        self.path = os.path.join(folder, SUMS_NAME)
        self.lines = []          # (name or None, text) in file order
        self.sums = {}           # name -> lower-case hex
        self.exists = False
        self._read()

    def _read(self):
        try:
            with open(self.path, 'rb') as handle:
                raw = handle.read()
        except (IOError, OSError) as exc:
            if exc.errno == errno.ENOENT:
                return
            raise CatalogError('cannot read %s: %s' % (self.path, exc.strerror), self.path)
        self.exists = True
        text = raw.decode('utf-8', 'surrogateescape')
        for line in text.splitlines():
            match = _SUM_LINE.match(line)
            if match:
                name = match.group('name')
                self.sums[name] = match.group('hex').lower()
                self.lines.append((name, line))
            else:
                self.lines.append((None, line))

    def get(self, name):
        return self.sums.get(name)

    def render(self, updates):
        """Text of the file after ``updates`` ({name: hex, or None to drop the line})."""
        out = []
        seen = set()
        for name, line in self.lines:
            if name is not None and name in updates:
                if name in seen:
                    continue
                seen.add(name)
                if updates[name] is not None:
                    out.append('%s  %s' % (updates[name], name))
            else:
                out.append(line)
        for name in sorted(updates):
            if name not in seen and updates[name] is not None:
                out.append('%s  %s' % (updates[name], name))
        return ''.join(line + '\n' for line in out)

    def update(self, updates, mode=0o644, uid=None, gid=None):
        """Rewrite the file atomically with ``updates`` applied; no write when nothing changes."""
        if all(self.sums.get(name) == value for name, value in updates.items()):
            return False
        text = self.render(updates)
        atomic_write(self.path, text.encode('utf-8', 'surrogateescape'), mode=mode, uid=uid, gid=gid)
        self.lines = []
        self.sums = {}
        self._read()
        return True


def read_metadata(folder, name):
    """Read the metadata file ``name`` in ``folder``; return the dict or raise CatalogError.

    The file it describes must be a plain name inside the same folder.
    """
    path = os.path.join(folder, name)
    try:
        size = os.path.getsize(path)
        if size > METADATA_MAX_BYTES:
            raise CatalogError('metadata file %s is %d bytes, larger than any this module writes'
                               % (path, size), path)
        with open(path, 'rb') as handle:
            data = json.loads(handle.read().decode('utf-8'))
    except (IOError, OSError) as exc:
        raise CatalogError('cannot read metadata file %s: %s' % (path, exc.strerror or exc), path)
    except ValueError as exc:
        raise CatalogError('metadata file %s is not valid JSON (%s); move it away or delete it, '
                           'the archive beside it can still be verified and loaded without it'
                           % (path, exc), path)
    if not isinstance(data, dict):
        raise CatalogError('metadata file %s does not hold a JSON object' % path, path)
    target = data.get('file')
    if not isinstance(target, str) or not is_plain_file_name(target):
        raise CatalogError('metadata file %s names %r as its archive: not a file inside %s'
                           % (path, target, folder), path)
    if target + METADATA_SUFFIX != name:
        raise CatalogError('metadata file %s names %r as its archive, expected %r'
                           % (path, target, name[:-len(METADATA_SUFFIX)]), path)
    return data


def write_metadata(folder, data, mode=0o644, uid=None, gid=None):
    path = os.path.join(folder, data['file'] + METADATA_SUFFIX)
    payload = dict(data)
    payload['format'] = METADATA_FORMAT
    text = json.dumps(payload, indent=2, sort_keys=True) + '\n'
    atomic_write(path, text.encode('utf-8'), mode=mode, uid=uid, gid=gid)
    return path
