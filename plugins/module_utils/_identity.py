# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pibackup maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# Private helper of pibackup.docker_usb: not a public API, may change without notice.
"""Image identity that survives every engine.

The config digest (sha256 of the image config JSON) is the identity an image
keeps across engines. Overlay2 engines report it as the IMAGE ID; the
containerd image store reports the manifest digest instead and, up to API 1.45
at least, does not expose the config digest at all. What every engine does
expose in image inspect is what the config says: the layer diffIDs, the
creation time, the OS and the architecture. Their fingerprint is computed the
same way from an archive's config JSON and from the engine's inspect data, so
the two can be compared without saving the image again.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import datetime
import hashlib
import json
import re

_RFC3339 = re.compile(
    r'^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|z|[+-]\d{2}:\d{2})?$'
)
_EPOCH = datetime.datetime(1970, 1, 1)


def normalize_created(value):
    """Return an RFC 3339 time as integer nanoseconds since the epoch (UTC), as a string.

    Config files and engines write the same instant differently (trailing
    zeros, 'Z' or '+00:00'); the number is the same. Unparseable or missing
    values are returned as they are.
    """
    if not value:
        return ''
    match = _RFC3339.match(value.strip())
    if not match:
        return value
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    fraction = (match.group(7) or '')[:9].ljust(9, '0')
    stamp = datetime.datetime(year, month, day, hour, minute, second)
    seconds = int((stamp - _EPOCH).total_seconds())
    zone = match.group(8)
    if zone and zone not in ('Z', 'z'):
        sign = 1 if zone[0] == '+' else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return str(seconds * 1000000000 + int(fraction))


def image_fingerprint(diff_ids, created, os_name, architecture):
    """Digest of what identifies an image on every engine."""
    payload = json.dumps(
        [list(diff_ids or []), normalize_created(created), os_name or '', architecture or ''],
        separators=(',', ':'),
    )
    return 'sha256:' + hashlib.sha256(payload.encode('utf-8')).hexdigest()


def fingerprint_from_config(config):
    """Fingerprint from an image config JSON document (as stored in an archive)."""
    rootfs = config.get('rootfs') or {}
    return image_fingerprint(rootfs.get('diff_ids'), config.get('created'),
                             config.get('os'), config.get('architecture'))


def fingerprint_from_inspect(inspect):
    """Fingerprint from the engine's image inspect data."""
    rootfs = inspect.get('RootFS') or {}
    return image_fingerprint(rootfs.get('Layers'), inspect.get('Created'),
                             inspect.get('Os'), inspect.get('Architecture'))
