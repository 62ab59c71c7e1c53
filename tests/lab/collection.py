#!/usr/bin/env python
"""Lay the working tree out as ansible_collections/pibackup/docker_usb.

ansible-test only runs from inside such a path, and ansible-playbook finds the
collection through ANSIBLE_COLLECTIONS_PATH. The copy is refreshed (files
removed from the tree disappear from the copy) so a gate never tests stale code.
"""
import argparse
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SKIP_TOP = {'.git', '.venv', 'build', 'reports', '.pytest_cache'}
SKIP_ANY = {'__pycache__', 'output'}


def ignore(directory, names):
    rel = os.path.relpath(directory, REPO)
    skipped = set()
    for name in names:
        if rel == '.' and name in SKIP_TOP:
            skipped.add(name)
        elif name in SKIP_ANY and (name != 'output' or rel == 'tests'):
            skipped.add(name)
        elif rel == os.path.join('bench') and name == 'results':
            skipped.add(name)
    return skipped


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--dest', required=True)
    args = parser.parse_args()
    dest = os.path.abspath(args.dest)
    if not dest.endswith(os.path.join('ansible_collections', 'pibackup', 'docker_usb')):
        sys.exit('--dest must end with ansible_collections/pibackup/docker_usb: %s' % dest)
    # Keep ansible-test's own output (tests/output) between runs: it holds the
    # sanity virtual environments, which take minutes to build.
    keep = os.path.join(dest, 'tests', 'output')
    saved = None
    if os.path.isdir(keep):
        saved = dest + '.output'
        if os.path.exists(saved):
            shutil.rmtree(saved)
        os.rename(keep, saved)
    if os.path.exists(dest):
        shutil.rmtree(dest)
    shutil.copytree(REPO, dest, ignore=ignore, symlinks=True)
    if saved:
        os.rename(saved, keep)
    print('collection laid out at %s' % dest)


if __name__ == '__main__':
    main()
