# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pibackup maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Let developers run ``pytest tests/unit`` straight from a checkout.

The tests import the collection as ``ansible_collections.pibackup.docker_usb``.
ansible-test units runs from a copy laid out that way, so there is nothing to
do. A plain checkout (any directory name) gets a temporary
``ansible_collections/pibackup/docker_usb`` symlink to it, put first on
sys.path for the session.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import atexit
import os
import shutil
import sys
import tempfile

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_LAID_OUT = os.path.join('ansible_collections', 'pibackup', 'docker_usb')

if not _ROOT.endswith(os.sep + _LAID_OUT):
    _TOP = tempfile.mkdtemp(prefix='pibackup-pytest-')
    atexit.register(shutil.rmtree, _TOP, True)
    os.makedirs(os.path.join(_TOP, 'ansible_collections', 'pibackup'))
    os.symlink(_ROOT, os.path.join(_TOP, _LAID_OUT))
    sys.path.insert(0, _TOP)
