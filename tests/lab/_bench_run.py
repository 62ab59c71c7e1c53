"""What the benchmark measures, one function per flow (private to tests/lab/bench.py).

Every flow is timed as a user would see it: wall seconds of the whole command
(time.monotonic around the processes), never a number the tool reports about
itself. Commands are argument lists; nothing goes through a shell.
"""
import glob
import json
import os
import subprocess
import sys
import time

import _labkit
from _bench_set import docker, run

STICK_NAME = 'bench'
STICK_LABEL = 'PBLAB-BENCH'
MOUNT_POINT = '/mnt/pibackup-lab/bench'
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def timed(argv, **kwargs):
    """Run argv (list), return wall seconds; raise with stderr on failure."""
    start = time.monotonic()
    run(argv, **kwargs)
    return time.monotonic() - start


def folder_bytes(folder, patterns=('*.tar', '*.tar.gz', '*.tar.zst', '*.tgz')):
    total = 0
    for pattern in patterns:
        for path in glob.glob(os.path.join(folder, pattern)):
            total += os.path.getsize(path)
    return total


def empty_folder(folder):
    """Remove the files of one of the benchmark's own folders on its stick."""
    if not folder.startswith(MOUNT_POINT + '/'):
        raise RuntimeError('refusing to empty %s: not on the bench stick' % folder)
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            os.unlink(os.path.join(folder, name))
    else:
        os.makedirs(folder)


# ------------------------------------------------------------------ the stick

class Stick(object):
    """The benchmark's own exFAT loop stick, mounted with mount.exfat-fuse."""

    def __init__(self, size_mib):
        self.size_mib = int(size_mib)
        self.device = None

    def up(self, log=print):
        path = _labkit.stick_file(STICK_NAME)
        recreate = False
        if os.path.exists(path) and os.path.getsize(path) < self.size_mib * 1024 * 1024:
            log('bench stick is smaller than %d MiB: recreating it' % self.size_mib)
            recreate = True
        self.device = _labkit.create_stick(STICK_NAME, fs='exfat', size_mib=self.size_mib,
                                           label=STICK_LABEL, recreate=recreate)
        mounted = [m['mount_point'] for m in _labkit.mounts_of_devices([self.device])]
        for point in mounted:
            if point != MOUNT_POINT or _labkit.mount_is_dead(point):
                _labkit.unmount(point)
        if _labkit.mount_is_dead(MOUNT_POINT):
            _labkit.unmount(MOUNT_POINT)
        if not any(m['mount_point'] == MOUNT_POINT for m in _labkit.mounts_of_devices([self.device])):
            os.makedirs(MOUNT_POINT, exist_ok=True)
            run(['mount.exfat-fuse', '-o', 'uid=0,gid=0,umask=022', self.device, MOUNT_POINT])
        log('bench stick %s (LABEL=%s, %d MiB) mounted at %s'
            % (self.device, STICK_LABEL, self.size_mib, MOUNT_POINT))
        return self.device

    def down(self):
        """Unmount (never lazy); the loop device and the image file stay for the next run."""
        if self.device is None:
            return
        for entry in _labkit.mounts_of_devices([self.device]):
            run(['sync', '-f', entry['mount_point']])
            _labkit.unmount(entry['mount_point'])

    @staticmethod
    def remove():
        return _labkit.remove_stick(STICK_NAME, delete=True)


# ------------------------------------------------------------------ baselines

def physical_limit(folder, nbytes):
    """dd of nbytes to the stick with conv=fsync: what the stick + filesystem can take."""
    empty_folder(folder)
    target = os.path.join(folder, 'dd.bin')
    seconds = timed(['dd', 'if=/dev/zero', 'of=' + target, 'bs=4M', 'count=%d' % nbytes,
                     'iflag=count_bytes', 'conv=fsync', 'status=none'])
    os.unlink(target)
    return {'seconds': seconds, 'bytes': nbytes}


def archive_name(ref):
    return ref.replace('/', '_').replace(':', '_') + '.tar'


def manual_backup(engine, refs, folder):
    """The by-hand flow: docker save -o per image, sha256sum, sync (each phase timed)."""
    empty_folder(folder)
    files = [os.path.join(folder, archive_name(ref)) for ref in refs]
    start = time.monotonic()
    for ref, path in zip(refs, files):
        run(docker(engine, 'save', '-o', path, ref))
    save = time.monotonic() - start
    start = time.monotonic()
    proc = run(['sha256sum'] + [os.path.basename(p) for p in files], cwd=folder)
    with open(os.path.join(folder, 'SHA256SUMS'), 'wb') as handle:
        handle.write(proc.stdout)
    hashing = time.monotonic() - start
    start = time.monotonic()
    # sync of the files written (fsync each): durable like the module's fsync,
    # without flushing what other users of this machine have in flight.
    run(['sync'] + files + [os.path.join(folder, 'SHA256SUMS')])
    sync = time.monotonic() - start
    return {'save': save, 'sha256sum': hashing, 'sync': sync,
            'seconds': save + hashing + sync, 'save_sync': save + sync,
            'bytes': folder_bytes(folder), 'files': files}


def plain_load(engine, files):
    """docker load -i of each archive; seconds."""
    start = time.monotonic()
    for path in files:
        run(docker(engine, 'load', '-i', path))
    return time.monotonic() - start


# ------------------------------------------------------------------ Ansible

CALLBACK = '''
# Written by tests/lab/bench.py: appends every task result as one JSON line.
import json
import os

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'aggregate'
    CALLBACK_NAME = 'pibackup_bench'
    CALLBACK_NEEDS_ENABLED = True

    def _save(self, result, status):
        task = getattr(result, 'task_name', None) or result._task.get_name()
        data = getattr(result, 'result', None)
        if data is None:
            data = result._result
        line = json.dumps({'task': str(task), 'status': status,
                           'result': json.loads(self._dump_results(data))}) + '\\n'
        with open(os.environ['PIBACKUP_BENCH_RESULTS'], 'a') as handle:
            handle.write(line)

    def v2_runner_on_ok(self, result):
        self._save(result, 'ok')

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._save(result, 'failed')

    def v2_runner_on_skipped(self, result):
        self._save(result, 'skipped')

    def v2_runner_on_unreachable(self, result):
        self._save(result, 'unreachable')
'''

RSS_WRAPPER = '''#!%(python)s
# Written by tests/lab/bench.py: runs the module with the real interpreter as a
# child; when the child has exited (not yet reaped) reads its I/O counters, then
# its peak resident set size (getrusage of the reaped child).
import json
import os
import resource
import subprocess
import sys

child = subprocess.Popen([%(python)r] + sys.argv[1:])
os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
io = {}
try:
    with open('/proc/%%d/io' %% child.pid) as handle:
        for line in handle:
            key, _sep, value = line.partition(':')
            io[key.strip()] = int(value)
except (IOError, OSError, ValueError):
    pass
rc = child.wait()
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(%(out)r, 'a') as handle:
    handle.write(json.dumps({'argv': sys.argv[1:], 'maxrss_kib': usage.ru_maxrss,
                             'rchar': io.get('rchar'), 'wchar': io.get('wchar')}) + '\\n')
sys.exit(rc)
'''


class Ansible(object):
    """Runs one-task playbooks against localhost, the way a user runs them."""

    def __init__(self, workdir, python=None):
        self.workdir = workdir
        self.python = python or sys.executable
        self.playbook_bin = os.path.join(os.path.dirname(self.python), 'ansible-playbook')
        coll = os.path.join(workdir, 'collections', 'ansible_collections', 'pibackup')
        os.makedirs(coll, exist_ok=True)
        link = os.path.join(coll, 'docker_usb')
        if os.path.islink(link) and os.readlink(link) != REPO_ROOT:
            os.unlink(link)
        if not os.path.islink(link):
            os.symlink(REPO_ROOT, link)
        plugins = os.path.join(workdir, 'callback_plugins')
        os.makedirs(plugins, exist_ok=True)
        with open(os.path.join(plugins, 'pibackup_bench.py'), 'w') as handle:
            handle.write(CALLBACK)
        self.rss_file = os.path.join(workdir, 'rss.jsonl')
        self.wrapper = os.path.join(workdir, 'python-rss')
        with open(self.wrapper, 'w') as handle:
            handle.write(RSS_WRAPPER % {'python': self.python, 'out': self.rss_file})
        os.chmod(self.wrapper, 0o755)
        # An empty config of our own: no ansible.cfg of the user changes what is measured.
        config = os.path.join(workdir, 'ansible.cfg')
        with open(config, 'w') as handle:
            handle.write('[defaults]\n')
        self.env = dict(os.environ)
        self.env.update({
            'ANSIBLE_COLLECTIONS_PATH': os.path.join(workdir, 'collections'),
            'ANSIBLE_CALLBACK_PLUGINS': plugins,
            'ANSIBLE_CALLBACKS_ENABLED': 'pibackup_bench',
            'ANSIBLE_LOCALHOST_WARNING': 'False',
            'ANSIBLE_INVENTORY_UNPARSED_WARNING': 'False',
            'ANSIBLE_RETRY_FILES_ENABLED': 'False',
            'ANSIBLE_NOCOLOR': '1',
            'ANSIBLE_CONFIG': config,
        })
        self.env.pop('ANSIBLE_COLLECTIONS_PATHS', None)
        self.count = 0

    def play(self, task, rss=False):
        """Run a playbook with this one task; return (seconds, task result dict, probe).

        With rss=True the module runs under the wrapper interpreter and probe is
        {'maxrss_kib', 'rchar', 'wchar'} of the module process (else None).
        """
        self.count += 1
        name = 'play%03d' % self.count
        interpreter = self.wrapper if rss else self.python
        inventory = os.path.join(self.workdir, name + '.ini')
        with open(inventory, 'w') as handle:
            handle.write('localhost ansible_connection=local ansible_python_interpreter=%s\n'
                         % interpreter)
        playbook = os.path.join(self.workdir, name + '.yml')
        with open(playbook, 'w') as handle:
            json.dump([{'name': 'bench', 'hosts': 'localhost', 'gather_facts': False,
                        'tasks': [task]}], handle, indent=1)
        results = os.path.join(self.workdir, name + '.jsonl')
        env = dict(self.env, PIBACKUP_BENCH_RESULTS=results)
        if rss and os.path.exists(self.rss_file):
            os.unlink(self.rss_file)
        start = time.monotonic()
        proc = subprocess.run([self.playbook_bin, '-i', inventory, playbook], cwd=self.workdir,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
        seconds = time.monotonic() - start
        lines = []
        if os.path.exists(results):
            with open(results) as handle:
                lines = [json.loads(line) for line in handle if line.strip()]
        if proc.returncode != 0 or not lines or lines[-1]['status'] != 'ok':
            detail = lines[-1]['result'].get('msg') if lines else proc.stdout.decode()[-2000:]
            raise RuntimeError('playbook %s failed (rc=%d): %s' % (playbook, proc.returncode, detail))
        probe = None
        if rss:
            with open(self.rss_file) as handle:
                probes = [json.loads(line) for line in handle if line.strip()]
            probe = max(probes, key=lambda item: item['maxrss_kib'])
        return seconds, lines[-1]['result'], probe
