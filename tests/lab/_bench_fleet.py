"""The fleet part of the benchmark (private to tests/lab/bench.py --fleet).

Runs the collection's backup playbook on the fleet lab (tests/lab/fleet.py up:
fleet1 over SSH, fleet2/fleet3 local, each with its own engine and stick), once
for one host and once for all three in parallel (forks), with backup_force so
every host really writes. Reports the median wall seconds and the ratio
three hosts / one host (issue 8 point 3: at most 1.5).
"""
import os
import subprocess
import time

import _bench_report as report

INVENTORY = '/var/lib/pibackup-lab/fleet/inventory.yml'


def _play(ansible, limit):
    argv = [ansible.playbook_bin, '-i', INVENTORY, 'pibackup.docker_usb.backup',
            '-e', 'backup_force=true', '-f', '5']
    if limit:
        argv += ['--limit', limit]
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=ansible.workdir, env=dict(ansible.env, PIBACKUP_BENCH_RESULTS=os.devnull),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise RuntimeError('fleet backup (%s) failed (rc=%d): %s'
                           % (limit or 'all hosts', proc.returncode, proc.stdout.decode()[-3000:]))
    return seconds


def measure(ansible, reps, log=print, one='fleet2'):
    if not os.path.exists(INVENTORY):
        log('fleet lab not up (%s missing): run tests/lab/fleet.py up' % INVENTORY)
        return {'skipped': 'fleet lab not up'}
    single, fleet = [], []
    for rep in range(reps):
        single.append(_play(ansible, one))
        fleet.append(_play(ansible, None))
        log('fleet rep %d: one host (%s) %.1fs, three hosts %.1fs' % (rep, one, single[-1], fleet[-1]))
    result = {'one_host': one, 'one_runs': single, 'three_runs': fleet,
              'one_seconds': report.median(single), 'three_seconds': report.median(fleet)}
    result['ratio'] = result['three_seconds'] / result['one_seconds']
    return result
