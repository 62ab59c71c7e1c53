# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pibackup maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Let developers run ``pytest tests/unit`` straight from a checkout.

The tests import the collection as ``ansible_collections.pibackup.docker_usb``.
ansible-test units runs from a copy laid out that way, so there is nothing to
do. A plain checkout (any directory name) gets an
``ansible_collections/pibackup/docker_usb`` symlink to it in the temporary
directory (one per checkout, re-used, so nothing piles up), put first on
sys.path for the session.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import hashlib
import os
import sys
import tempfile

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_LAID_OUT = os.path.join('ansible_collections', 'pibackup', 'docker_usb')

if not _ROOT.endswith(os.sep + _LAID_OUT):
    _TOP = os.path.join(tempfile.gettempdir(), 'pibackup-pytest-%s'
                        % hashlib.sha256(_ROOT.encode('utf-8')).hexdigest()[:12])
    _LINK = os.path.join(_TOP, _LAID_OUT)
    if os.path.realpath(_LINK) != os.path.realpath(_ROOT):
        try:
            os.makedirs(os.path.dirname(_LINK))
        except OSError:
            pass  # already there
        _NEW = '%s.%d' % (_LINK, os.getpid())
        os.symlink(_ROOT, _NEW)
        os.rename(_NEW, _LINK)  # atomic, also when another session races us
    sys.path.insert(0, _TOP)
