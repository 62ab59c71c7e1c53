# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pibackup maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# Private helper of pibackup.docker_usb: not a public API, may change without notice.
"""Talking to the Docker engine through the Docker SDK: inspect, streamed save and load.

Works with Docker SDK 5.0.3 (Debian, Raspberry Pi OS) up to 7.x: only the
low-level ``APIClient`` and calls both offer are used. ``GET /images/get``
takes several ``names`` so every tag of one image goes into one archive (the
SDK's ``get_image`` takes one name).
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import os
import traceback

from ansible_collections.pibackup.docker_usb.plugins.module_utils._identity import (
    fingerprint_from_inspect,
)

DOCKER_IMPORT_ERROR = None
try:
    import docker
    from docker.errors import APIError, DockerException, NotFound
except ImportError:
    DOCKER_IMPORT_ERROR = traceback.format_exc()

    class DockerException(Exception):
        pass

    class APIError(DockerException):
        pass

    class NotFound(APIError):
        pass

CHUNK_SIZE = 1024 * 1024

# Machine names as engines and `uname -m` write them, mapped to OCI architectures.
_ARCH_ALIASES = {
    'x86_64': ('amd64', None),
    'x86-64': ('amd64', None),
    'amd64': ('amd64', None),
    'aarch64': ('arm64', None),
    'arm64': ('arm64', None),
    'armv7l': ('arm', 'v7'),
    'armhf': ('arm', 'v7'),
    'armv6l': ('arm', 'v6'),
    'armel': ('arm', 'v6'),
    'i386': ('386', None),
    'i686': ('386', None),
}


def normalize_platform(os_name, architecture, variant=None):
    """Return (os, architecture, variant) in OCI spelling."""
    arch, default_variant = _ARCH_ALIASES.get((architecture or '').lower(), ((architecture or '').lower(), None))
    if arch == 'arm64' and variant == 'v8':
        variant = None
    return ((os_name or '').lower(), arch, variant or default_variant)


def platform_text(os_name, architecture, variant=None):
    return '/'.join(part for part in (os_name, architecture, variant) if part)


def can_run(engine_platform, image_platform):
    """True when an engine of engine_platform runs images of image_platform natively."""
    e_os, e_arch, e_variant = engine_platform
    i_os, i_arch, i_variant = image_platform
    if not i_arch and not i_os:
        return True
    if i_os and e_os and i_os != e_os:
        return False
    if e_arch == i_arch:
        if e_arch == 'arm' and e_variant and i_variant:
            # an armv7 engine runs v6 and v7 images, not v8
            return i_variant <= e_variant
        return True
    return (e_arch, i_arch) in (('amd64', '386'),)


class SizedReader(object):
    """A read()-able stream of known length (decompressed archives), sent with a Content-Length."""

    def __init__(self, stream, size):
        self._stream = stream
        self._size = size

    def __len__(self):
        return self._size

    def read(self, size=-1):
        return self._stream.read(size)


class EngineError(Exception):
    def __init__(self, msg, item=None):
        super(EngineError, self).__init__(msg)
        self.msg = msg
        self.item = item


class Engine(object):
    """One Docker engine, reached through the Docker SDK's low-level client."""

    def __init__(self, docker_host, timeout, api_version='auto'):
        self.docker_host = docker_host
        try:
            self.api = docker.APIClient(base_url=docker_host, version=api_version or 'auto', timeout=timeout)
            self.api.ping()
        except DockerException as exc:
            raise EngineError('cannot reach the Docker engine at %s: %s; is the engine running and may '
                              'this user use its socket?' % (docker_host, exc), docker_host)
        self._info = None
        self._version = None

    @property
    def info(self):
        if self._info is None:
            self._info = self.api.info()
        return self._info

    @property
    def version(self):
        if self._version is None:
            self._version = self.api.version()
        return self._version

    @property
    def containerd_store(self):
        """True when the engine keeps images in the containerd image store."""
        for pair in self.info.get('DriverStatus') or []:
            if len(pair) == 2 and pair[0] == 'driver-type' and 'containerd' in pair[1]:
                return True
        return False

    @property
    def platform(self):
        return normalize_platform(self.info.get('OSType'), self.info.get('Architecture'))

    def describe(self):
        return dict(
            version=self.version.get('Version'),
            api_version=self.version.get('ApiVersion'),
            containerd_store=self.containerd_store,
            platform=platform_text(*self.platform),
        )

    def api_at_least(self, wanted):
        have = [int(part) for part in str(self.version.get('ApiVersion', '0')).split('.') if part.isdigit()]
        want = [int(part) for part in wanted.split('.')]
        return have >= want

    def inspect(self, reference):
        """Image inspect data for a reference or ID, or None when the engine has no such image."""
        try:
            return self.api.inspect_image(reference)
        except NotFound:
            return None
        except APIError as exc:
            if getattr(exc, 'status_code', None) in (400, 404):
                return None
            raise EngineError('the engine at %s failed to inspect %s: %s' % (self.docker_host, reference, exc),
                              reference)

    def list_images(self):
        """Inspect data of every image the engine has (dangling ones included)."""
        result = []
        seen = set()
        for summary in self.api.images(all=False):
            image_id = summary.get('Id')
            if image_id in seen:
                continue
            seen.add(image_id)
            data = self.inspect(image_id)
            if data is not None:
                result.append(data)
        return result

    def data_root_room(self):
        """(path, free bytes) of the engine's data root, or (path, None) when it is not local."""
        root = self.info.get('DockerRootDir')
        if not root or not self.docker_host.startswith('unix://') or not os.path.isdir(root):
            return root, None
        stats = os.statvfs(root)
        return root, stats.f_bavail * stats.f_frsize

    def save(self, names, chunk_size=CHUNK_SIZE):
        """Stream one archive holding every name (tags or one ID) as raw tar bytes."""
        response = self.api._get(self.api._url('/images/get'), params={'names': list(names)}, stream=True)
        try:
            self.api._raise_for_status(response)
        except APIError as exc:
            raise EngineError('the engine at %s refused to save %s: %s'
                              % (self.docker_host, ', '.join(names), exc), names[0])
        sent = 0
        try:
            for chunk in response.raw.stream(chunk_size, decode_content=False):
                if chunk:
                    sent += len(chunk)
                    yield chunk
        except Exception as exc:  # pylint: disable=broad-except
            # urllib3's ProtocolError (IncompleteRead) and the like: the engine stopped or died mid-stream
            raise EngineError('the engine at %s stopped sending the archive of %s after %d bytes (was it stopped '
                              'or restarted?): %s' % (self.docker_host, ', '.join(names), sent, exc), names[0])
        finally:
            response.close()

    def load(self, data):
        """Send a tar stream to POST /images/load; return the engine's lines.

        ``data`` is an open regular file or a SizedReader: the request always
        carries a Content-Length, because the Docker SDK 5.0.3 transport cannot
        send chunked bodies over a unix socket.
        """
        response = self.api._post(self.api._url('/images/load'), data=data, params={'quiet': '1'},
                                  headers={'Content-Type': 'application/x-tar'}, stream=True)
        lines = []
        try:
            self.api._raise_for_status(response)
            for raw in response.iter_lines():
                if not raw:
                    continue
                try:
                    message = json.loads(raw.decode('utf-8', 'replace'))
                except ValueError:
                    lines.append(raw.decode('utf-8', 'replace'))
                    continue
                if message.get('error') or message.get('errorDetail'):
                    detail = message.get('error') or message['errorDetail'].get('message')
                    raise EngineError('the engine at %s refused the archive: %s' % (self.docker_host, detail))
                text = (message.get('stream') or message.get('status') or '').strip()
                if text:
                    lines.append(text)
        except APIError as exc:
            raise EngineError('the engine at %s refused the archive: %s' % (self.docker_host, exc))
        finally:
            response.close()
        return lines

    def tag(self, image_id, reference):
        repository, tag = reference.rsplit(':', 1) if ':' in reference.rsplit('/', 1)[-1] else (reference, 'latest')
        self.api.tag(image_id, repository, tag)


def engine_tags(inspect):
    return sorted(tag for tag in (inspect.get('RepoTags') or []) if tag and tag != '<none>:<none>')


def same_image(inspect, record):
    """True when the engine's image (inspect data) is the archived image (a dict with
    config_digest, manifest_digests, image_id, fingerprint)."""
    image_id = inspect.get('Id')
    if image_id and image_id in (record.get('config_digest'), record.get('image_id')):
        return True
    if image_id and image_id in (record.get('manifest_digests') or []):
        return True
    fingerprint = record.get('fingerprint')
    return bool(fingerprint) and fingerprint == fingerprint_from_inspect(inspect)
