#!/usr/bin/env python
"""The quality gates of pibackup.docker_usb, one subcommand each.

    gate.py units | sanity | lint | build | integration | molecule

Each gate refreshes the collection copy (tests/lab/collection.py lays the
working tree out as ansible_collections/pibackup/docker_usb, which ansible-test
needs), prints every command it runs with how long it took, and exits non-zero
as soon as a step fails. Every command is an argument list; nothing goes
through a shell. Run it with the project's virtual environment python
(``make test-<gate>`` does), as root on a lab machine.
"""
from __future__ import absolute_import, division, print_function

import argparse
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time

import _labkit  # the lab's engine table and sockets (tests/lab/_labkit.py)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
# The tools live beside the python running this script (the project's venv).
BIN = os.path.dirname(os.path.abspath(sys.executable))
PYTHON = os.path.join(BIN, 'python')
NAMESPACE, NAME = 'pibackup', 'docker_usb'
FQCN = '%s.%s' % (NAMESPACE, NAME)
DEFAULT_COLLROOT = os.path.join(REPO, 'build', 'collections')

# Python versions the sanity and unit gates test with: the controller's (3.11)
# and every version the modules claim on the managed host (tests/config.yml:
# >=3.9). ansible-test finds them as pythonX.Y on PATH.
PYTHON_VERSIONS = ('3.9', '3.10', '3.11', '3.12', '3.13')
# Unit tests run on both ends and the controller: 3.9 with the oldest Docker
# SDK we support (5.0.3, tests/unit/requirements.txt), 3.11, and 3.13. The
# versions between add a minute each and little coverage: sanity's compile and
# import tests still cover every one of them.
UNIT_PYTHONS = ('3.9', '3.11', '3.13')

# The lab engines (CONTRIBUTING.md, "The lab"), as the lab itself knows them.
LAB_ENGINES = tuple(name for name, _version, _store in _labkit.LAB_ENGINES)
MATRIX_ALIAS = 'engine_matrix'

# What the build gate runs from the installed tarball: every module once, with
# arguments that must leave the machine alone and report "ok, not changed".
MODULE_SMOKE = {
    'usb_exfat_mount': 'path={empty}/not-a-mount-point state=unmounted',
    'docker_image_archive': 'path={empty} state=verified',
}
# Upper bounds (seconds) so that a hanging test fails its gate, well inside
# CI's 90 minutes; the cold runs take a fraction of these.
UNITS_TIMEOUT = 6 * 60  # per Python version
SANITY_TIMEOUT = 25 * 60
TARGET_TIMEOUT = 15 * 60
MOLECULE_TIMEOUT = 20 * 60
# Paths that build_ignore must keep out of the tarball.
NOT_SHIPPED = ('.venv/', '.git/', 'build/', 'tests/lab/', 'tests/output/', '.ci/', 'Makefile', 'inventory.lab.yml',
               '.ansible/')


class GateFailure(Exception):
    """A step of a gate failed; the message says which and why."""


def log(message):
    print('[gate] %s' % message, flush=True)


def run(argv, cwd=None, env=None, capture=False, check=True, timeout=None):
    """Run one command (a list), print it and its duration, fail on non-zero.

    With a timeout, a command that hangs (a deadlocked test) is ended with its
    whole process group and the gate fails saying so, instead of eating CI's
    time budget.
    """
    shown = ' '.join(argv)
    log('$ %s%s' % (shown, '   (in %s)' % cwd if cwd else ''))
    started = time.monotonic()
    process = subprocess.Popen(argv, cwd=cwd, env=env, universal_newlines=True, start_new_session=True,
                               stdout=subprocess.PIPE if capture else None,
                               stderr=subprocess.STDOUT if capture else None)
    try:
        output = process.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise GateFailure('no result after %ds, ended it: %s' % (timeout, shown))
    except KeyboardInterrupt:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    log('  took %.1fs, exit code %d' % (time.monotonic() - started, process.returncode))
    if check and process.returncode != 0:
        if capture:
            print(output)
        raise GateFailure('command failed with exit code %d: %s' % (process.returncode, shown))
    return subprocess.CompletedProcess(argv, process.returncode, output)


def tool(name):
    path = os.path.join(BIN, name)
    if not os.path.exists(path):
        raise GateFailure('%s not found in %s: run "make venv" first' % (name, BIN))
    return path


def pyenv_bins():
    """The bin directories of the pyenv Pythons we test with (never the shims)."""
    root = os.environ.get('PYENV_ROOT') or os.path.expanduser('~/.pyenv')
    found = {}
    for version in PYTHON_VERSIONS:
        for directory in sorted(glob.glob(os.path.join(root, 'versions', version + '.*', 'bin')), reverse=True):
            if os.path.exists(os.path.join(directory, 'python' + version)):
                found[version] = directory
                break
    return found


def gate_env(collroot, with_pythons=False):
    """Environment for the tools: the venv first, the collection copy on the path."""
    env = dict(os.environ)
    path = [p for p in env.get('PATH', '').split(os.pathsep) if p and not p.rstrip('/').endswith('/shims')]
    extra = [BIN]
    if with_pythons:
        bins = pyenv_bins()
        missing = [v for v in PYTHON_VERSIONS if v not in bins and not shutil.which('python' + v)]
        log('Python versions from pyenv: %s' % ', '.join('%s (%s)' % (v, bins[v]) for v in sorted(bins)))
        if missing:
            log('WARNING: no python%s on this machine: those versions are NOT tested' % '/'.join(missing))
        extra += [bins[v] for v in PYTHON_VERSIONS if v in bins]
    env['PATH'] = os.pathsep.join(extra + [p for p in path if p not in extra])
    env['ANSIBLE_COLLECTIONS_PATH'] = collroot
    env['NO_COLOR'] = '1'  # plain CI logs
    env.pop('PYENV_VERSION', None)
    return env


def refresh_copy(collroot):
    """Lay the collection out afresh; make it a git work tree of its own.

    ansible-test lists a collection's files with ``git ls-files`` when it finds
    a ``.git`` in the collection or any directory above it. The default copy
    (build/collections) lies inside the checkout, where build/ is ignored: git
    would list nothing and every sanity and unit test would be "skipped" and
    pass. An empty repository in the copy makes ansible-test list exactly the
    files a checkout has (tracked or not, minus .gitignore'd ones such as
    tests/output).
    """
    coll = os.path.join(collroot, 'ansible_collections', NAMESPACE, NAME)
    run([PYTHON, os.path.join(HERE, 'collection.py'), '--dest', coll])
    if not os.path.isdir(os.path.join(coll, '.git')):
        run(['git', 'init', '--quiet', coll])
    listed = run(['git', 'ls-files', '--cached', '--others', '--exclude-standard', 'plugins', 'tests/unit'],
                 cwd=coll, capture=True).stdout.split()
    if not any(path.startswith('plugins/modules/') for path in listed):
        raise GateFailure('git ls-files in %s lists no modules: ansible-test would test nothing' % coll)
    return coll


def install_get_pip_stub():
    """Put the offline get-pip stand-in where ansible-test looks first."""
    source = os.path.join(BIN, '..', 'lib')
    pattern = os.path.join(source, 'python*', 'site-packages', 'ansible_test', '_internal', 'python_requirements.py')
    candidates = glob.glob(pattern)
    if not candidates:
        raise GateFailure('ansible-test not found under %s' % source)
    with open(candidates[0]) as handle:
        match = re.search(r"default_packages = dict\(\s*pip='([0-9.]+)'", handle.read())
    if not match:
        raise GateFailure('cannot tell which pip version ansible-test bootstraps (%s)' % candidates[0])
    cache = os.path.expanduser('~/.ansible/test/cache')
    os.makedirs(cache, exist_ok=True)
    target = os.path.join(cache, 'get_pip_%s.py' % match.group(1).replace('.', '_'))
    shutil.copyfile(os.path.join(HERE, 'get_pip_stub.py'), target)
    log('offline pip bootstrap for pip %s: %s' % (match.group(1), target))


# ---------------------------------------------------------------- the gates

def gate_units(args):
    coll = refresh_copy(args.collroot)
    install_get_pip_stub()
    env = gate_env(args.collroot, with_pythons=True)
    if not glob.glob(os.path.join(coll, 'tests', 'unit', '**', 'test_*.py'), recursive=True):
        raise GateFailure('no unit tests under tests/unit')
    command = [tool('ansible-test'), 'units', '--venv', '--color', 'no']
    if '--python' in args.extra:
        run(command + args.extra, cwd=coll, env=env, timeout=UNITS_TIMEOUT)
        return
    for version in UNIT_PYTHONS:
        run(command + ['--python', version] + args.extra, cwd=coll, env=env, timeout=UNITS_TIMEOUT)


def gate_sanity(args):
    coll = refresh_copy(args.collroot)
    install_get_pip_stub()
    env = gate_env(args.collroot, with_pythons=True)
    run([tool('ansible-test'), 'sanity', '--venv', '--color', 'no'] + args.extra, cwd=coll, env=env,
        timeout=SANITY_TIMEOUT)


def gate_lint(args):
    coll = refresh_copy(args.collroot)
    env = gate_env(args.collroot)
    env['ANSIBLE_LINT_SKIP_VERSION_CHECK'] = '1'
    run([tool('ansible-lint'), '--profile', 'production', '--offline'] + args.extra, cwd=coll, env=env)
    run([tool('antsibull-changelog'), 'lint'], cwd=coll, env=env)


def smoke_module(env, module, arguments):
    """Run one module ad hoc on localhost; it must succeed and change nothing."""
    result = run([tool('ansible'), 'localhost', '-i', 'localhost,', '-c', 'local', '-m', '%s.%s' % (FQCN, module), '-a', arguments,
                  '-e', 'ansible_python_interpreter=%s' % PYTHON], env=env, capture=True, check=False)
    print(result.stdout)
    match = re.search(r'^localhost \| (\w+) => (\{.*\})\s*$', result.stdout, re.S | re.M)
    if result.returncode != 0 or not match or match.group(1) != 'SUCCESS':
        raise GateFailure('%s from the installed tarball did not succeed' % module)
    if json.loads(match.group(2)).get('changed'):
        raise GateFailure('%s reported changed for a no-op (%s)' % (module, arguments))


def render_changelog(tmp):
    """Prove the fragments render: release the next version in a throw-away copy."""
    with open(os.path.join(REPO, 'galaxy.yml')) as handle:
        version = re.search(r'^version:\s*(\S+)', handle.read(), re.M).group(1)
    collroot = os.path.join(tmp, 'release')
    coll = refresh_copy(collroot)
    run([tool('antsibull-changelog'), 'release', '--version', version], cwd=coll, env=gate_env(collroot))
    with open(os.path.join(coll, 'CHANGELOG.rst')) as handle:
        text = handle.read()
    if 'v%s' % version not in text or 'Release Summary' not in text:
        raise GateFailure('CHANGELOG.rst of the trial release lacks v%s or its release summary' % version)
    log('changelog renders: CHANGELOG.rst has v%s (%d lines)' % (version, text.count('\n')))


def gate_build(args):
    tmp = tempfile.mkdtemp(prefix='pibackup-gate-build-')
    try:
        dist = os.path.join(tmp, 'dist')
        run([tool('ansible-galaxy'), 'collection', 'build', '--output-path', dist, REPO], cwd=tmp)
        tarballs = glob.glob(os.path.join(dist, '%s-%s-*.tar.gz' % (NAMESPACE, NAME)))
        if len(tarballs) != 1:
            raise GateFailure('expected one tarball in %s, found %s' % (dist, tarballs))
        tarball = tarballs[0]
        with tarfile.open(tarball) as archive:
            members = archive.getnames()
        log('%s: %d members' % (os.path.basename(tarball), len(members)))
        leaked = sorted(m for m in members if any(m == p.rstrip('/') or m.startswith(p) for p in NOT_SHIPPED)
                        or '__pycache__' in m.split('/'))
        if leaked:
            raise GateFailure('build_ignore let these into the tarball: %s' % ', '.join(leaked[:20]))
        modules = sorted(os.path.splitext(m)[0].split('/')[-1] for m in members
                         if m.startswith('plugins/modules/') and m.endswith('.py') and not m.endswith('__init__.py'))
        for needed in ('MANIFEST.json', 'FILES.json', 'meta/runtime.yml', 'README.md'):
            if needed not in members:
                raise GateFailure('%s missing from the tarball' % needed)
        missing = sorted(set(MODULE_SMOKE) - set(modules))
        if missing:
            raise GateFailure('modules missing from the tarball: %s' % ', '.join(missing))

        collections = os.path.join(tmp, 'collections')
        env = gate_env(collections)
        run([tool('ansible-galaxy'), 'collection', 'install', '--offline', '-p', collections, tarball],
            cwd=tmp, env=env)
        env['ANSIBLE_COLLECTIONS_SCAN_SYS_PATH'] = 'false'
        env['ANSIBLE_STDOUT_CALLBACK'] = 'minimal'
        env['ANSIBLE_LOAD_CALLBACK_PLUGINS'] = 'true'
        env['ANSIBLE_NOCOLOR'] = 'true'
        installed = os.path.join(collections, 'ansible_collections', NAMESPACE, NAME)
        if not os.path.isfile(os.path.join(installed, 'MANIFEST.json')):
            raise GateFailure('the collection did not install to %s' % installed)

        for module in modules:
            result = run([tool('ansible-doc'), '--json', '%s.%s' % (FQCN, module)], env=env, capture=True)
            doc = json.loads(result.stdout)['%s.%s' % (FQCN, module)]['doc']
            log('ansible-doc %s: %s' % (module, doc.get('short_description')))
            run([tool('ansible-doc'), '%s.%s' % (FQCN, module)], env=dict(env, PAGER='cat'), capture=True)
        empty = os.path.join(tmp, 'empty')
        os.mkdir(empty)
        for module, arguments in sorted(MODULE_SMOKE.items()):
            smoke_module(env, module, arguments.format(empty=empty))
        log('built, installed and ran %s from %s' % (FQCN, os.path.basename(tarball)))
        render_changelog(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def engine_answers(engine):
    """True when the lab engine's socket answers /_ping."""
    path = _labkit.docker_host(engine)[len('unix://'):]
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(10)
    try:
        client.connect(path)
        client.sendall(b'GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n')
        return client.recv(64).split(b'\r\n', 1)[0].split(b' ')[1:2] == [b'200']
    except (OSError, IndexError):
        return False
    finally:
        client.close()


def integration_targets(coll):
    root = os.path.join(coll, 'tests', 'integration', 'targets')
    targets = []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        if not os.path.isdir(os.path.join(root, name)):
            continue
        aliases_path = os.path.join(root, name, 'aliases')
        aliases = []
        if os.path.exists(aliases_path):
            with open(aliases_path) as handle:
                aliases = [line.split('#', 1)[0].strip() for line in handle]
        targets.append((name, [a for a in aliases if a]))
    return targets


def write_integration_config(coll, engine):
    path = os.path.join(coll, 'tests', 'integration', 'integration_config.yml')
    with open(path, 'w') as handle:
        handle.write('---\n# Written by tests/lab/gate.py for this run.\n')
        handle.write('lab_engine: %s\n' % engine)
        handle.write('lab_docker_host: %s\n' % _labkit.docker_host(engine))


def gate_integration(args):
    coll = refresh_copy(args.collroot)
    env = gate_env(args.collroot)
    targets = integration_targets(coll)
    if args.extra:
        targets = [t for t in targets if t[0] in args.extra]
    runs, skipped = [], []
    for name, aliases in targets:
        if name.startswith(('setup_', 'prepare_')) or 'hidden' in aliases:
            skipped.append('%s (a dependency of other targets, runs through them)' % name)
        elif 'disabled' in aliases or 'unsupported' in aliases:
            skipped.append('%s (aliases: %s)' % (name, ', '.join(aliases)))
        else:
            engines = LAB_ENGINES if MATRIX_ALIAS in aliases else LAB_ENGINES[:1]
            runs += [(name, engine) for engine in engines]
    if not runs:
        log('no integration targets under tests/integration/targets yet')
    for engine in sorted({engine for _target, engine in runs}):
        if not engine_answers(engine):
            raise GateFailure('lab engine %s does not answer on %s: run "make lab"'
                              % (engine, _labkit.docker_host(engine)))
    passed, failed = [], []
    for number, (name, engine) in enumerate(runs, 1):
        log('integration %d/%d: %s on engine %s' % (number, len(runs), name, engine))
        write_integration_config(coll, engine)
        started = time.monotonic()
        try:
            run([tool('ansible-test'), 'integration', '--local', '--color', 'no', '--allow-destructive',
                 '--allow-root', name], cwd=coll, env=env, timeout=TARGET_TIMEOUT)
        except GateFailure as failure:
            # Go on with the other targets: one report with every failure.
            failed.append('%-36s %-5s %s' % (name, engine, failure))
            continue
        passed.append('%-36s %-5s %6.1fs' % (name, engine, time.monotonic() - started))
    for line in passed:
        log('passed:  %s' % line)
    for line in skipped:
        log('SKIPPED: %s' % line)
    for line in failed:
        log('FAILED:  %s' % line)
    if failed:
        raise GateFailure('%d of %d integration runs failed' % (len(failed), len(runs)))


def gate_molecule(args):
    coll = refresh_copy(args.collroot)
    env = gate_env(args.collroot)
    scenarios = os.path.join(coll, 'extensions', 'molecule')
    found = sorted(os.path.basename(os.path.dirname(p)) for p in glob.glob(os.path.join(scenarios, '*', 'molecule.yml')))
    if not found:
        log('no Molecule scenarios under extensions/molecule yet: nothing to run')
        return
    log('Molecule scenarios: %s' % ', '.join(found))
    run([tool('molecule'), 'test', '--all'], cwd=os.path.join(coll, 'extensions'), env=env,
        timeout=MOLECULE_TIMEOUT)


GATES = {
    'units': gate_units,
    'sanity': gate_sanity,
    'lint': gate_lint,
    'build': gate_build,
    'integration': gate_integration,
    'molecule': gate_molecule,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('gate', choices=sorted(GATES))
    parser.add_argument('--collroot', default=os.environ.get('PIBACKUP_COLLROOT', DEFAULT_COLLROOT),
                        help='where the collection copy goes (default: build/collections)')
    parser.add_argument('extra', nargs=argparse.REMAINDER,
                        help='passed on: ansible-test/ansible-lint options, or integration target names')
    args = parser.parse_args()
    args.collroot = os.path.abspath(args.collroot)
    started = time.monotonic()
    try:
        GATES[args.gate](args)
    except GateFailure as failure:
        log('FAILED gate %s after %.0fs: %s' % (args.gate, time.monotonic() - started, failure))
        return 1
    log('gate %s passed in %.0fs' % (args.gate, time.monotonic() - started))
    return 0


if __name__ == '__main__':
    sys.exit(main())
