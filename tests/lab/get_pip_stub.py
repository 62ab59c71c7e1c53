#!/usr/bin/env python
"""Offline stand-in for the get-pip.py that ansible-test downloads.

ansible-test bootstraps pip into each virtual environment it creates by
running ``get-pip.py`` from https://ci-files.testing.ansible.com, a host the
lab and CI machines cannot reach. It looks in its cache first
(``~/.ansible/test/cache/get_pip_<version>.py``); tests/lab/gate.py copies this
file there. It does what get-pip.py does, from local parts:

1. seed pip from the standard library's ensurepip (no network);
2. install the pinned packages ansible-test asked for (``pip==X.Y`` ...) from
   PyPI with ``python -m pip install``, trusting the system CA bundle.

The packages and their versions stay exactly those ansible-test chose, so the
tests are not weakened. ``--no-setuptools`` and ``--no-wheel`` are options of
get-pip.py only (they mean "do not add these"), so they are dropped here: we
never add them either.
"""
import ensurepip
import os
import subprocess
import sys

GET_PIP_ONLY = ('--no-setuptools', '--no-wheel')
CA_BUNDLE = '/etc/ssl/certs/ca-certificates.crt'


def main():
    ensurepip.bootstrap(upgrade=True)
    args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY]
    command = [sys.executable, '-m', 'pip', 'install']
    if os.path.exists(CA_BUNDLE):
        command += ['--cert', CA_BUNDLE]
    command += args
    sys.exit(subprocess.call(command))


if __name__ == '__main__':
    main()
