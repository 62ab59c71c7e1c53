#!/usr/bin/env python
"""make bench: this collection's backup and restore against the manual flow and the stick's limit.

On one lab engine (default d20) and the benchmark's own exFAT loop stick
(`bench`, label PBLAB-BENCH, mounted with mount.exfat-fuse at
/mnt/pibackup-lab/bench), in ONE run and over --reps repetitions (median
reported), side by side:

  physical limit   dd of the same number of bytes to the stick, conv=fsync
  manual flow      docker save -o per image, sha256sum, sync (phases timed apart)
  backup           ansible-playbook, one docker_image_archive task, state archived,
                   force (it really writes), default verification; and verify=full
  no-change rerun  the same task without force, beside a no-op task run the same way
  restore          docker load -i of each archive vs the module's `loaded`
                   (bench images removed before each, only them)
  compression      none / gzip / zstd: time and bytes on the stick
  memory           peak RSS and bytes read of the module process at two set sizes
  --scale          the backup at three set sizes: seconds per GB (linearity)
  --fleet          the backup playbook on the fleet lab: 3 hosts in parallel vs one

Prints a table (wall seconds, ratio to the manual flow, ratio to the physical
limit) and the targets of issue 8 as PASS/MISS (ratios of the same run; no
wall-clock limit is ever asserted), writes bench/results/<timestamp>.json and
a chart (docs/bench.png by default). The images it creates are named
pibackup-bench/... and labelled pibackup.lab=bench; --cleanup removes them and
the bench stick, nothing else.
"""
import argparse
import ast
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _labkit  # noqa: E402
import _bench_report as report  # noqa: E402
from _bench_set import BenchSet, Engine, remove_all  # noqa: E402
from _bench_run import (REPO_ROOT, MOUNT_POINT, Ansible, Stick, empty_folder, folder_bytes,  # noqa: E402
                        manual_backup, physical_limit, plain_load)

MODULE = 'pibackup.docker_usb.docker_image_archive'
MODULE_FILE = os.path.join(REPO_ROOT, 'plugins', 'modules', 'docker_image_archive.py')
SMALL_SET_MB = 10
FOLDERS = ('dd', 'manual', 'none', 'full', 'gzip', 'zstd', 'small', 'scale')


def log(message):
    print('[bench %s] %s' % (time.strftime('%H:%M:%S'), message), flush=True)


def module_options():
    """The option names of docker_image_archive from its argument spec, or None when absent."""
    if not os.path.exists(MODULE_FILE):
        return None
    with open(MODULE_FILE) as handle:
        tree = ast.parse(handle.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, 'id', None) == 'argument_spec' for t in node.targets):
            if isinstance(node.value, ast.Call):
                return set(kw.arg for kw in node.value.keywords)
    return set()


def git_commit():
    """HEAD of the working tree measured, '+dirty' when plugins/ has uncommitted changes."""
    import subprocess
    head = subprocess.run(['git', '-C', REPO_ROOT, 'rev-parse', '--short', 'HEAD'],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=False).stdout.decode().strip()
    dirty = subprocess.run(['git', '-C', REPO_ROOT, 'status', '--porcelain', '--', 'plugins'],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=False).stdout.decode().strip()
    return head + ('+dirty' if dirty else '')


class Bench(object):

    def __init__(self, args):
        self.args = args
        self.engine = Engine(args.engine, _labkit.docker_cli(args.engine), _labkit.docker_host(args.engine))
        self.set = BenchSet(self.engine, args.size_mb)
        self.options = None if args.baselines_only else module_options()
        self.workdir = tempfile.mkdtemp(prefix='pibackup-bench-')
        self.ansible = Ansible(self.workdir)
        self.samples = {}
        self.stick_bytes = {}
        self.probes = {}
        self.problems = []
        self.compression = []
        self.load = []  # 1-minute load average at the start of each rep: other users of the machine

    # ---------------------------------------------------------------- helpers

    def add(self, key, seconds):
        self.samples.setdefault(key, []).append(seconds)

    def folder(self, name):
        return os.path.join(MOUNT_POINT, name)

    def task(self, state, folder, images=None, **options):
        params = dict(state=state, path=folder, docker_host=self.engine.host)
        if images:
            params['images'] = images
        params.update(options)
        return {'name': 'bench %s' % state, MODULE: params}

    def play(self, task, rss=False):
        return self.ansible.play(task, rss=rss)

    def check_actions(self, what, result, expected):
        actions = sorted(set(item.get('action') for item in result.get('images', [])))
        if actions != [expected]:
            self.problems.append('%s: expected every image %s, got %s' % (what, expected, actions))

    def check_identity(self, what, before):
        after = self.set.present()
        if after != before:
            self.problems.append('%s: images differ after restore: before %s, after %s' % (what, before, after))

    # ---------------------------------------------------------------- flows

    def rep(self, index):
        refs = self.set.refs
        self.load.append(round(os.getloadavg()[0], 2))
        for name in FOLDERS:
            empty_folder(self.folder(name))
        ids = self.set.present()
        nbytes = self.set_bytes or int(self.args.size_mb * 1000 * 1000)

        self.add('physical', physical_limit(self.folder('dd'), nbytes)['seconds'])
        manual = manual_backup(self.engine, refs, self.folder('manual'))
        self.set_bytes = manual['bytes']
        self.stick_bytes['manual'] = manual['bytes']
        for key in ('save', 'sha256sum', 'sync', 'save_sync'):
            self.add(key, manual[key])
        self.add('manual', manual['seconds'])
        log('rep %d: dd %.1fs, manual %.1fs (save %.1f, sha256sum %.1f, sync %.1f)' % (
            index, self.samples['physical'][-1], manual['seconds'], manual['save'],
            manual['sha256sum'], manual['sync']))

        if self.options is not None:
            seconds, _r, _p = self.play({'name': 'noop', 'ansible.builtin.debug': {'msg': 'noop'}})
            self.add('noop', seconds)
            seconds, _r, _p = self.play({'name': 'noop module', 'ansible.builtin.ping': {}})
            self.add('noop_module', seconds)

            seconds, result, _p = self.play(self.task('archived', self.folder('none'), refs, force=True))
            self.check_actions('backup', result, 'saved')
            self.add('backup', seconds)
            self.add('backup_net', seconds - self.samples['noop'][-1])
            self.stick_bytes['backup'] = folder_bytes(self.folder('none'))

            seconds, result, _p = self.play(self.task('archived', self.folder('none'), refs))
            self.check_actions('no-change rerun', result, 'unchanged')
            if result.get('changed'):
                self.problems.append('no-change rerun reported changed')
            self.add('rerun', seconds)
            log('rep %d: noop %.1fs, ping %.1fs, backup %.1fs, rerun %.1fs' % (
                index, self.samples['noop'][-1], self.samples['noop_module'][-1],
                self.samples['backup'][-1], seconds))

            if 'verify' in self.options:
                seconds, result, _p = self.play(self.task('archived', self.folder('full'), refs,
                                                          force=True, verify='full'))
                self.add('backup_full', seconds)
                self.add('backup_full_net', seconds - self.samples['noop'][-1])
                self.stick_bytes['backup_full'] = folder_bytes(self.folder('full'))
            if 'compression' in self.options:
                for kind in ('gzip', 'zstd'):
                    seconds, result, _p = self.play(self.task('archived', self.folder(kind), refs,
                                                              force=True, compression=kind))
                    self.add(kind, seconds)
                    self.stick_bytes[kind] = folder_bytes(self.folder(kind))
                    empty_folder(self.folder(kind))
                log('rep %d: verify=full %s, gzip %.1fs, zstd %.1fs' % (
                    index, '%.1fs' % self.samples['backup_full'][-1] if 'backup_full' in self.samples else '-',
                    self.samples['gzip'][-1], self.samples['zstd'][-1]))
            empty_folder(self.folder('full'))

        # Restore: alternate which goes first so page-cache warmth favours neither.
        order = ['plain', 'module'] if index % 2 == 0 else ['module', 'plain']
        for which in order:
            if which == 'plain':
                self.set.remove()
                self.add('load_plain', plain_load(self.engine, manual['files']))
                self.check_identity('docker load -i', ids)
            elif self.options is not None:
                self.set.remove()
                seconds, result, _p = self.play(self.task('loaded', self.folder('none')))
                self.check_actions('module loaded', result, 'loaded')
                self.check_identity('module loaded', ids)
                self.add('load_module', seconds)
                self.add('load_module_net', seconds - self.samples['noop'][-1])
        log('rep %d: restore docker load %.1fs, module loaded %s' % (
            index, self.samples['load_plain'][-1],
            '%.1fs' % self.samples['load_module'][-1] if 'load_module' in self.samples else '-'))

    def memory(self):
        """Peak RSS and bytes read of the module process, small set vs the main set."""
        _s, _r, self.probes['noop_module'] = self.play({'name': 'noop module', 'ansible.builtin.ping': {}},
                                                       rss=True)
        small = BenchSet(self.engine, SMALL_SET_MB)
        small.ensure(log=log)
        memory = {'archived': {}, 'loaded': {}}
        for label, bench_set, folder in (('small', small, self.folder('small')),
                                         ('big', self.set, self.folder('none'))):
            empty_folder(folder)
            ids = bench_set.present()
            _s, _r, probe = self.play(self.task('archived', folder, bench_set.refs, force=True), rss=True)
            probe['set_bytes'] = folder_bytes(folder)
            memory['archived'][label] = probe
            if label == 'big':
                _s, _r, probe = self.play(self.task('archived', folder, bench_set.refs), rss=True)
                self.probes['rerun'] = probe
            bench_set.remove()
            _s, _r, probe = self.play(self.task('loaded', folder), rss=True)
            probe['set_bytes'] = folder_bytes(folder)
            memory['loaded'][label] = probe
            if bench_set.present() != ids:
                self.problems.append('memory run: %s set not restored with the same ids' % label)
        for state in ('archived', 'loaded'):
            for label in ('small', 'big'):
                probe = memory[state][label]
                log('memory %s %s set (%d MB): peak RSS %.1f MiB, read %.0f MB, written %.0f MB' % (
                    state, label, probe['set_bytes'] // 10 ** 6, probe['maxrss_kib'] / 1024.0,
                    (probe['rchar'] or 0) / 1e6, (probe['wchar'] or 0) / 1e6))
        log('no-change rerun read %.1f MB, a ping module %.1f MB (set: %.0f MB)' % (
            (self.probes['rerun']['rchar'] or 0) / 1e6, (self.probes['noop_module']['rchar'] or 0) / 1e6,
            self.set_bytes / 1e6))
        return memory

    def scale(self):
        """module archived and docker save -o + sync at three set sizes: seconds per GB."""
        points = []
        for size in self.args.scale_sizes:
            bench_set = BenchSet(self.engine, size)
            bench_set.ensure(log=log)
            save_runs, module_runs, nbytes = [], [], 0
            for _rep in range(self.args.reps):
                manual = manual_backup(self.engine, bench_set.refs, self.folder('scale'))
                save_runs.append(manual['save_sync'])
                nbytes = manual['bytes']
                empty_folder(self.folder('scale'))
                if self.options is not None:
                    # A no-op run right before: the machine's load changes within a run.
                    noop, _r, _p = self.play({'name': 'noop', 'ansible.builtin.debug': {'msg': 'noop'}})
                    seconds, _r, _p = self.play(self.task('archived', self.folder('scale'),
                                                          bench_set.refs, force=True))
                    module_runs.append(seconds - noop)
                    empty_folder(self.folder('scale'))
            point = {'set_mb': nbytes / 1e6, 'bytes': nbytes,
                     'save_sync_seconds': report.median(save_runs),
                     'module_seconds': report.median(module_runs)}
            point['save_sync_s_per_gb'] = point['save_sync_seconds'] / (nbytes / 1e9)
            if point['module_seconds'] is not None:
                point['module_s_per_gb'] = point['module_seconds'] / (nbytes / 1e9)
            log('scale %d MB: docker save -o + sync %.2f s/GB, module %s s/GB' % (
                point['set_mb'], point['save_sync_s_per_gb'],
                '%.2f' % point['module_s_per_gb'] if 'module_s_per_gb' in point else '-'))
            points.append(point)
            if size != self.args.size_mb and not self.args.keep_scale_images:
                bench_set.remove()
        return points

    def profile(self):
        """--profile: the module in-process under cProfile, archived then loaded, on the main set."""
        import subprocess
        if self.options is None:
            sys.exit('--profile needs %s' % MODULE_FILE)
        stick = Stick(max(1024, int(self.args.size_mb * 2 * 0.954) + 512))
        self.set.ensure(log=log)
        stick.up(log=log)
        folder = self.folder('none')
        runs = [('archived', dict(state='archived', path=folder, images=self.set.refs, force=True)),
                ('archived again (no change)', dict(state='archived', path=folder, images=self.set.refs)),
                ('loaded', dict(state='loaded', path=folder))]
        if self.args.profile_compression != 'none':
            runs[0][1]['compression'] = self.args.profile_compression
            runs[1][1]['compression'] = self.args.profile_compression
        try:
            empty_folder(folder)
            for title, params in runs:
                params['docker_host'] = self.engine.host
                if params['state'] == 'loaded':
                    self.set.remove()
                log('profiling %s: %s' % (title, params))
                stats = os.path.join(self.workdir, '%s.pstats' % params['state'])
                subprocess.run([sys.executable, os.path.join(HERE, '_bench_profile.py'),
                                '--collections', os.path.join(self.workdir, 'collections'),
                                '--args', json.dumps(params), '--out', stats], check=True)
            self.set.ensure(log=log)
        finally:
            empty_folder(folder)
            stick.down()
        log('pstats files in %s' % self.workdir)
        return 0

    # ---------------------------------------------------------------- main

    def run(self):
        args = self.args
        started = datetime.datetime.utcnow()
        if not _labkit.engine_answers(args.engine):
            sys.exit('engine %s does not answer at %s: run `make lab` (tests/lab/lab.py up) first'
                     % (args.engine, self.engine.host))
        if self.options is None and not args.baselines_only:
            log('%s is not there yet: measuring the baselines only' % MODULE_FILE)
        if args.profile:
            return self.profile()
        # The fleet first: it needs the fleet lab up, which other runs may take down;
        # a failed fleet run is reported as a problem, the rest is still measured.
        fleet = None
        if args.fleet:
            import _bench_fleet
            try:
                fleet = _bench_fleet.measure(self.ansible, args.reps, log=log)
            except RuntimeError as exc:
                fleet = {'error': str(exc)[:500]}
                self.problems.append('fleet: %s' % str(exc)[:300])
        biggest = max([args.size_mb] + (args.scale_sizes if args.scale else []))
        stick = Stick(max(1024, int(args.size_mb * 5 * 0.954) + int(biggest * 0.954) + 512))
        self.set.ensure(log=log)
        self.set_bytes = None
        stick.up(log=log)
        try:
            for index in range(args.reps):
                self.rep(index)
            memory = self.memory() if self.options is not None else {}
            scale = self.scale() if args.scale else None
        finally:
            for name in FOLDERS:
                if os.path.isdir(self.folder(name)):
                    empty_folder(self.folder(name))
            stick.down()
        summary = report.summarize(self.samples)
        rows = report.table(summary, self.set_bytes, self.stick_bytes)
        compression = []
        for kind, key in (('none', 'backup'), ('gzip', 'gzip'), ('zstd', 'zstd')):
            if key in summary:
                compression.append({'compression': kind, 'seconds': summary[key]['median'],
                                    'bytes': self.stick_bytes.get(key)})
        checks = report.targets(summary, memory, self.probes, self.set_bytes, scale=scale, fleet=fleet)
        finished = datetime.datetime.utcnow()
        stamp = started.strftime('%Y%m%dT%H%M%SZ')
        data = {
            'started': started.isoformat() + 'Z', 'finished': finished.isoformat() + 'Z',
            'minutes': round((finished - started).total_seconds() / 60.0, 2),
            'machine': {'cpus': os.cpu_count(), 'kernel': platform.release(),
                        'python': platform.python_version(),
                        'engine': args.engine, 'engine_version': _labkit.engine_answers(args.engine),
                        'stick': 'exFAT loop device over a sparse file, mount.exfat-fuse',
                        'load_average_per_rep': self.load},
            'set': {'size_mb': args.size_mb, 'refs': self.set.refs, 'bytes': self.set_bytes},
            'reps': args.reps, 'module_present': self.options is not None, 'commit': git_commit(),
            'summary': summary, 'table': rows, 'compression': compression, 'memory': memory,
            'probes': self.probes, 'scale': scale, 'fleet': fleet, 'targets': checks,
            'problems': self.problems,
        }
        results = os.path.join(REPO_ROOT, 'bench', 'results', stamp + '.json')
        report.write_json(results, data)
        with open(results[:-len('.json')] + '.md', 'w') as handle:
            handle.write(report.markdown(data))
        title = '%d MB set, %s (Docker %s), exFAT loop stick, median of %d' % (
            self.set_bytes / 1e6, args.engine, data['machine']['engine_version'], args.reps)
        charts = [os.path.join(REPO_ROOT, 'bench', 'results', stamp + '.png')]
        if args.chart:
            charts.append(args.chart)
        for path in charts:
            report.chart(path, rows, compression, scale, title)

        print()
        print('Set: %s = %d bytes (%s), %d reps, median wall seconds; load average per rep: %s' % (
            ', '.join(self.set.refs), self.set_bytes, args.engine, args.reps,
            ' '.join('%.1f' % load for load in self.load)))
        print(report.format_table(rows))
        if scale:
            print()
            for point in scale:
                print('scale %6.0f MB: docker save -o + sync %.2f s/GB, module archived (net) %s s/GB' % (
                    point['set_mb'], point['save_sync_s_per_gb'],
                    '%.2f' % point['module_s_per_gb'] if 'module_s_per_gb' in point else '-'))
        print()
        print(report.format_targets(checks))
        for problem in self.problems:
            print('PROBLEM %s' % problem)
        print()
        print('results: %s' % results)
        print('chart:   %s' % ', '.join(charts))
        print('took %.1f minutes' % data['minutes'])
        if not self.problems:
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            print('playbooks and their results kept in %s' % self.workdir)
        return 1 if self.problems else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--engine', default='d20', help='lab engine (default d20)')
    parser.add_argument('--size-mb', type=int, default=1000, help='total MB of the sample set (default 1000)')
    parser.add_argument('--reps', type=int, default=3, help='repetitions, the median is reported (default 3)')
    parser.add_argument('--scale', action='store_true', help='also measure at three set sizes')
    parser.add_argument('--scale-sizes', default=None,
                        help='comma-separated MB for --scale (default: size/4, size/2, size)')
    parser.add_argument('--keep-scale-images', action='store_true', help='keep the extra sets of --scale')
    parser.add_argument('--fleet', action='store_true', help='also measure the fleet lab: 3 hosts vs one')
    parser.add_argument('--chart', default=os.path.join(REPO_ROOT, 'docs', 'bench.png'),
                        help='where to write the chart besides bench/results (default docs/bench.png; '
                             'empty string: results only)')
    parser.add_argument('--baselines-only', action='store_true',
                        help='measure dd, docker save/load only (no module runs)')
    parser.add_argument('--profile', action='store_true',
                        help='only profile the module in-process (cProfile, all threads) on the main set')
    parser.add_argument('--profile-compression', default='none', choices=('none', 'gzip', 'zstd'))
    parser.add_argument('--cleanup', action='store_true',
                        help='remove the benchmark images and the bench stick, then exit')
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit('bench.py must run as root (loop devices, FUSE mounts, the lab engines)')
    if args.cleanup:
        engine = Engine(args.engine, _labkit.docker_cli(args.engine), _labkit.docker_host(args.engine))
        if _labkit.engine_answers(args.engine):
            removed = remove_all(engine, log=log)
            log('removed %d benchmark images from %s' % (len(removed), args.engine))
        log('removed the bench stick (%s)' % (', '.join(Stick.remove()) or 'not attached'))
        return 0
    if args.scale_sizes:
        args.scale_sizes = [int(size) for size in args.scale_sizes.split(',')]
    else:
        args.scale_sizes = [args.size_mb // 4, args.size_mb // 2, args.size_mb]
    return Bench(args).run()


if __name__ == '__main__':
    sys.exit(main())
