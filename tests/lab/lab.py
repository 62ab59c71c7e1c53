#!/usr/bin/env python
"""The pibackup lab: Docker engines, loop-backed USB sticks and sample images.

    lab.py up [--engines d20,d26,d26c]   install what is missing, clear stale state, start the
                                         engines, create the demo stick and the sample images
    lab.py down [--engines NAMES]        stop engines; without --engines also unmount and
                                         detach every lab stick (the files stay)
    lab.py status                        engines, their containerds, sticks
    lab.py check                         exit 1 (naming each problem) unless the lab is as promised
    lab.py env ENGINE                    print DOCKER_HOST=... for the engine
    lab.py stick create NAME [--fs exfat|vfat] [--size MIB] [--label L] [--read-only] [--recreate]
    lab.py stick remove NAME [--delete]
    lab.py stick list
    lab.py samples ENGINE [--remove]

Runs as root, with the standard library only (plain python3 or the project's venv).
See CONTRIBUTING.md ("The lab") for the names and paths it owns.
"""
from __future__ import absolute_import, division, print_function

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _labkit  # noqa: E402
import _labsamples  # noqa: E402
from _labkit import LabError  # noqa: E402

DEMO_STICK = {'name': 'demo', 'fs': 'exfat', 'size_mib': 1024, 'label': 'PBLAB-DEMO'}
ENGINE_TABLE = dict((name, (version, store)) for name, version, store in _labkit.LAB_ENGINES)


def _engine_list(text):
    names = [n.strip() for n in text.split(',') if n.strip()] if text else list(ENGINE_TABLE)
    unknown = [n for n in names if n not in ENGINE_TABLE]
    if unknown:
        raise LabError('unknown engine(s) %s; the lab has %s' % (
            ', '.join(unknown), ', '.join(ENGINE_TABLE)))
    return names


def cmd_up(args):
    started = time.time()
    engines = _engine_list(args.engines)
    installed = _labkit.ensure_packages()
    for action in _labkit.clear_stale_state():
        _labkit.log(action)
    device = None
    for name in engines:
        version, store = ENGINE_TABLE[name]
        was_up = _labkit.engine_answers(name)
        host = _labkit.start_engine(name, version=version, containerd_store=store)
        print('engine %s: %s (%s, Docker %s)' % (
            name, 'running' if was_up else 'started', host, _labkit.engine_answers(name)))
        if device is None:
            # the demo stick right after the first engine: others can start working
            device = _labkit.create_stick(DEMO_STICK['name'], DEMO_STICK['fs'],
                                          DEMO_STICK['size_mib'], DEMO_STICK['label'])
            print('stick %s: %s (%s, LABEL=%s)' % (DEMO_STICK['name'], device,
                                                   DEMO_STICK['fs'], DEMO_STICK['label']))
        created = _labsamples.ensure_samples(name)
        print('engine %s: samples %s' % (name, ('created ' + ', '.join(created))
                                         if created else 'present'))
    if installed:
        print('installed: %s' % ' '.join(installed))
    print('lab up in %.1fs' % (time.time() - started))
    return 0


def cmd_down(args):
    engines = _labkit.known_engines()
    if args.engines:
        wanted = [n.strip() for n in args.engines.split(',') if n.strip()]
        unknown = [n for n in wanted if n not in engines]
        if unknown:
            raise LabError('unknown engine(s) %s; known: %s' % (
                ', '.join(unknown), ', '.join(engines)))
        engines = wanted
    for name in engines:
        stopped = _labkit.stop_engine(name)
        print('engine %s: %s' % (name, 'stopped' if stopped else 'not running'))
    if not args.engines:
        for row in _labkit.list_sticks():
            devices = _labkit.remove_stick(row['name'])
            if devices:
                print('stick %s: detached %s' % (row['name'], ', '.join(devices)))
    return 0


def cmd_status(_args):
    line = '%-7s %-8s %-16s %-44s %-8s %s'
    print(line % ('ENGINE', 'STATE', 'VERSION', 'DOCKER_HOST', 'PID', 'SAMPLES'))
    wanted = len(_labsamples.sample_references())
    for name in _labkit.known_engines():
        version = _labkit.engine_answers(name)
        pid = _labkit.engine_pid(name)
        state = 'up' if version else ('starting' if pid else 'down')
        samples = '%d/%d' % (len(_labsamples.list_samples(name)), wanted) if version else '-'
        print(line % (name, state, version or '-', _labkit.docker_host(name), pid or '-',
                      samples))
    print('')
    print('containerd processes (one per engine, each with its own state dir):')
    for pid, argv, dirs in _labkit.containerd_processes():
        print('  pid %d %s\n    state %s\n    root  %s' % (
            pid, ' '.join(argv), dirs.get('state', '?'), dirs.get('root', '?')))
    print('')
    _print_sticks()
    return 0


def lab_problems():
    """What differs from the lab contract (CONTRIBUTING.md); empty when all is well."""
    problems = []
    containerd_states = {}
    for pid, _argv, dirs in _labkit.containerd_processes():
        containerd_states[dirs.get('state')] = pid
    for name, (version, store) in sorted(ENGINE_TABLE.items()):
        server = _labkit.engine_answers(name)
        if not server:
            problems.append('engine %s does not answer on %s' % (name, _labkit.docker_host(name)))
            continue
        if not server.startswith('%s.' % version):
            problems.append('engine %s runs Docker %s, not %s' % (name, server, version))
        driver = _labkit.out([_labkit.docker_cli(name), '-H', _labkit.docker_host(name), 'info',
                              '--format', '{{.Driver}} {{json .DriverStatus}}']).strip()
        if store and 'io.containerd.snapshotter' not in driver:
            problems.append('engine %s does not use the containerd image store: %s' % (
                name, driver))
        if not store and not driver.startswith('overlay2 '):
            problems.append('engine %s uses %s, not overlay2' % (name, driver))
        state = os.path.join(_labkit.RUN, name, 'x', 'containerd', 'daemon')
        if state not in containerd_states:
            problems.append('engine %s has no containerd of its own (state %s)' % (name, state))
        samples = dict(_labsamples.list_samples(name))
        missing = [r for r in _labsamples.sample_references() if r not in samples]
        if missing:
            problems.append('engine %s lacks samples %s' % (name, ', '.join(missing)))
        elif samples['pibackup-lab/multi:1.0'] != samples['pibackup-lab/multi:latest']:
            problems.append('engine %s: multi:1.0 and multi:latest differ' % name)
        else:
            size = int(_labkit.out([_labkit.docker_cli(name), '-H', _labkit.docker_host(name),
                                    'image', 'inspect', '--format', '{{.Size}}',
                                    'pibackup-lab/big:1.0']).strip())
            if size < 100 * 1000 * 1000:
                problems.append('engine %s: pibackup-lab/big:1.0 has %d bytes' % (name, size))
    devices = [d for d, _ro in _labkit.loop_devices_of(_labkit.stick_file(DEMO_STICK['name']))]
    if len(devices) != 1:
        problems.append('demo stick attached %d times (%s)' % (len(devices), devices))
    else:
        info = _labkit.blkid(devices[0])
        if (info.get('TYPE'), info.get('LABEL')) != (DEMO_STICK['fs'], DEMO_STICK['label']):
            problems.append('demo stick %s: blkid says TYPE=%s LABEL=%s' % (
                devices[0], info.get('TYPE'), info.get('LABEL')))
    return problems


def cmd_check(_args):
    problems = lab_problems()
    for problem in problems:
        print('PROBLEM: %s' % problem)
    if not problems:
        print('lab ok: %s answer with their own containerd, demo stick %s, samples on each' % (
            ', '.join(sorted(ENGINE_TABLE)), DEMO_STICK['label']))
    return 1 if problems else 0


def _print_sticks():
    rows = _labkit.list_sticks()
    print('%-12s %-12s %-12s %-6s %-4s %s' % ('STICK', 'DEVICE', 'LABEL', 'FS', 'RO', 'MOUNTED'))
    for row in rows:
        print('%-12s %-12s %-12s %-6s %-4s %s' % (row['name'], row['device'], row['label'],
                                                  row['fs'], 'ro' if row['read_only'] else 'rw',
                                                  row['mounted']))


def cmd_env(args):
    if args.engine not in _labkit.known_engines():
        raise LabError('unknown engine %s; the lab has %s' % (
            args.engine, ', '.join(_labkit.known_engines())))
    print('DOCKER_HOST=%s' % _labkit.docker_host(args.engine))
    return 0


def cmd_stick(args):
    if args.stick_command == 'create':
        device = _labkit.create_stick(args.name, args.fs, args.size, args.label,
                                      read_only=args.read_only, recreate=args.recreate)
        print(device)
    elif args.stick_command == 'remove':
        devices = _labkit.remove_stick(args.name, delete=args.delete)
        print('stick %s: detached %s%s' % (args.name, ', '.join(devices) or 'nothing',
                                           ', file deleted' if args.delete else ''))
    else:
        _print_sticks()
    return 0


def cmd_samples(args):
    if not _labkit.engine_answers(args.engine):
        raise LabError('engine %s does not answer on %s; run lab.py up first' % (
            args.engine, _labkit.docker_host(args.engine)))
    if args.remove:
        removed = _labsamples.remove_samples(args.engine)
        print('engine %s: removed %s' % (args.engine, ', '.join(removed) or 'nothing'))
    else:
        created = _labsamples.ensure_samples(args.engine)
        print('engine %s: %s' % (args.engine, ('created ' + ', '.join(created))
                                 if created else 'samples present'))
        for ref, image_id in _labsamples.list_samples(args.engine):
            print('  %-28s %s' % (ref, image_id))
    return 0


def parser():
    summary, _sep, details = __doc__.partition('\n\n')
    top = argparse.ArgumentParser(description=summary,
                                  formatter_class=argparse.RawDescriptionHelpFormatter,
                                  epilog=details)
    sub = top.add_subparsers(dest='command')
    sub.required = True
    up = sub.add_parser('up', help='install, clear stale state, start engines, sticks, samples')
    up.add_argument('--engines', help='comma-separated subset of d20,d26,d26c (default: all)')
    up.set_defaults(func=cmd_up)
    down = sub.add_parser('down', help='stop engines, unmount and detach the lab sticks')
    down.add_argument('--engines', help='only stop these engines (sticks stay attached)')
    down.set_defaults(func=cmd_down)
    sub.add_parser('status', help='engines and sticks').set_defaults(func=cmd_status)
    sub.add_parser('check', help='exit 1 unless the lab matches its contract (after up)'
                   ).set_defaults(func=cmd_check)
    env = sub.add_parser('env', help='print DOCKER_HOST for an engine')
    env.add_argument('engine')
    env.set_defaults(func=cmd_env)
    stick = sub.add_parser('stick', help='create, remove or list loop-backed sticks')
    stick_sub = stick.add_subparsers(dest='stick_command')
    stick_sub.required = True
    create = stick_sub.add_parser('create')
    create.add_argument('name')
    create.add_argument('--fs', choices=('exfat', 'vfat'), default='exfat')
    create.add_argument('--size', type=int, default=256, help='MiB (sparse), default 256')
    create.add_argument('--label', help='filesystem label (default: NAME upper-cased)')
    create.add_argument('--read-only', action='store_true', help='attach with losetup -r')
    create.add_argument('--recreate', action='store_true', help='make a fresh filesystem')
    remove = stick_sub.add_parser('remove')
    remove.add_argument('name')
    remove.add_argument('--delete', action='store_true', help='also delete the image file')
    stick_sub.add_parser('list')
    stick.set_defaults(func=cmd_stick)
    samples = sub.add_parser('samples', help='create (or --remove) the sample images')
    samples.add_argument('engine')
    samples.add_argument('--remove', action='store_true')
    samples.set_defaults(func=cmd_samples)
    return top


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        if args.command in ('env',):
            return args.func(args)
        _labkit.require_root()
        if args.command in ('status', 'check') or getattr(args, 'stick_command', None) == 'list':
            return args.func(args)
        with _labkit.lab_lock():
            return args.func(args)
    except LabError as exc:
        print('lab.py %s: %s' % (args.command, exc), file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
