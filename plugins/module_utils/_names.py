# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pibackup maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# Private helper of pibackup.docker_usb: not a public API, may change without notice.
"""Image references and the exFAT-safe, collision-free file names made from them.

A reference is checked against the grammar Docker uses (distribution/reference):
``[domain[:port]/]path[:tag][@digest]``, lower-case path components joined by
``_``, ``__``, ``.`` or dashes, a tag of at most 128 word characters, dots and
dashes, a name of at most 255 characters. An image ID (``sha256:<hex>`` or at
least 12 hex digits) is accepted wherever a reference is.

File names: ``/`` and ``:`` become ``_``. That readable form is reversible
only when the reference has no ``_`` of its own, no upper case, no registry
port and no digest; for every other reference a short hash of the exact
reference is appended (``app_v1-h0c4f2a1b`` for ``app:V1`` beside ``app_v1``
for ``app:v1``), so distinct references never share a name, also on a
case-insensitive filesystem such as exFAT. The real tags always come from the
archive, never from its file name.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import hashlib
import re

_ALNUM = r'[a-z0-9]+'
_SEPARATOR = r'(?:[._]|__|[-]+)'
_PATH_COMPONENT = _ALNUM + r'(?:' + _SEPARATOR + _ALNUM + r')*'
_DOMAIN_COMPONENT = r'(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])'
_DOMAIN = (r'(?:' + _DOMAIN_COMPONENT + r'(?:\.' + _DOMAIN_COMPONENT + r')*'
           r'|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?')
_NAME = r'(?:(?P<domain>' + _DOMAIN + r')/)?(?P<path>' + _PATH_COMPONENT + r'(?:/' + _PATH_COMPONENT + r')*)'
_TAG = r'[\w][\w.-]{0,127}'
_DIGEST = r'[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}'
_REFERENCE = re.compile(r'^' + _NAME + r'(?::(?P<tag>' + _TAG + r'))?(?:@(?P<digest>' + _DIGEST + r'))?$')
_IMAGE_ID = re.compile(r'^(?:sha256:[0-9a-f]{64}|(?:sha256:)?[0-9a-f]{12,64})$')

NAME_MAX = 255
# Room left for the suffix (.tar.zst), the metadata suffix and the writer's
# temporary prefix/suffix ('.<name>.partial-<random>'): exFAT allows 255 characters.
BASE_MAX = 160
HASH_LENGTH = 8
METADATA_SUFFIX = '.meta.json'
ID_PREFIX = 'id-'


class Reference(object):
    """A parsed image reference: name (repository), tag, digest, or an image ID."""

    def __init__(self, text, name=None, tag=None, digest=None, image_id=None, domain=None):
        self.text = text
        self.name = name
        self.tag = tag
        self.digest = digest
        self.image_id = image_id
        self.domain = domain

    @property
    def is_id(self):
        return self.image_id is not None

    @property
    def canonical(self):
        """``name:tag`` as engines list it in RepoTags (``latest`` when no tag was given)."""
        if self.is_id:
            return self.image_id
        text = self.name
        if self.tag or not self.digest:
            text += ':' + (self.tag or 'latest')
        if self.digest:
            text += '@' + self.digest
        return text

    def __repr__(self):
        return 'Reference(%r)' % self.text


def parse_reference(text):
    """Parse an image reference or image ID; return a Reference or raise ValueError saying why."""
    if not isinstance(text, str) or not text:
        raise ValueError('an image reference must be a non-empty string')
    if text != text.strip() or any(ord(char) < 32 or ord(char) == 127 for char in text):
        raise ValueError('%r is not a valid image reference: it contains spaces or control characters' % text)
    if _IMAGE_ID.match(text):
        image_id = text if text.startswith('sha256:') else 'sha256:' + text
        # 12 to 63 hex digits may also be a repository name: the engine decides.
        return Reference(text, name=None if len(image_id) == 71 else text, image_id=image_id)
    match = _REFERENCE.match(text)
    if not match:
        raise ValueError(
            '%r is not a valid image reference: expected [registry[:port]/]name[:tag][@digest] with a '
            'lower-case name (letters, digits, separators . _ __ -), a tag of at most 128 characters '
            '(letters, digits, _ . -) or an image ID such as sha256:<64 hex digits>' % text)
    name = (match.group('domain') + '/' if match.group('domain') else '') + match.group('path')
    if len(name) > NAME_MAX:
        raise ValueError('%r is not a valid image reference: the name is longer than %d characters'
                         % (text, NAME_MAX))
    return Reference(text, name=name, tag=match.group('tag'), digest=match.group('digest'),
                     domain=match.group('domain'))


def short_hash(text):
    return hashlib.sha256(text.encode('utf-8')).hexdigest()[:HASH_LENGTH]


def _readable(reference):
    return reference.replace('/', '_').replace(':', '_').replace('@', '_')


def _plain(reference):
    """True when the readable name can be read back into exactly this reference."""
    try:
        parsed = parse_reference(reference)
    except ValueError:
        return False
    if parsed.is_id or parsed.digest or parsed.tag is None:
        return False
    if parsed.domain and ':' in parsed.domain:
        return False
    return '_' not in reference and reference == reference.lower()


def safe_char(char):
    return not (char in ':/\\*?"<>|' or ord(char) < 32 or ord(char) == 127)


def archive_base(tags, image_id):
    """File name (without suffix) for an image with these tags, or by its ID when it has none.

    The name comes from the first tag in sorted order, so the same tag set
    always gives the same name.
    """
    tags = sorted(tag for tag in (tags or []) if tag and tag != '<none>:<none>')
    if not tags:
        hex_id = (image_id or '').split(':', 1)[-1]
        return ID_PREFIX + ''.join(char for char in hex_id.lower() if char in '0123456789abcdef')
    reference = tags[0]
    base = ''.join(char if safe_char(char) else '_' for char in _readable(reference))
    if _plain(reference) and len(base) <= BASE_MAX:
        return base
    return base.lower()[:BASE_MAX - HASH_LENGTH - 2].rstrip('. ') + '-h' + short_hash(reference)


def metadata_name(archive_file):
    """Name of the metadata file beside an archive: ``<archive file>.meta.json``."""
    return archive_file + METADATA_SUFFIX


def is_plain_file_name(name):
    """True for a name that stays inside its folder: no separators, not '.' or '..'."""
    return bool(name) and name not in ('.', '..') and '/' not in name and '\\' not in name \
        and '\x00' not in name
