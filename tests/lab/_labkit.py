# Private to the lab (tests/lab): engines, sticks and packages, importable by lab.py and fleet.py.
"""Building blocks of the lab: packages, Docker engines, loop-backed sticks.

Everything here acts only on what the lab owns: state under /var/lib/pibackup-lab,
runtime files under /run/pibackup-lab, loop devices whose backing file is one of
the lab's stick images. Every command is an argument list; a failing command
raises LabError naming the command and showing its stderr.

Public entry points (used by lab.py and by the fleet lab):
    require_root(), ensure_packages(), ensure_docker26(),
    start_engine(name, version='20', containerd_store=False) -> DOCKER_HOST URL,
    stop_engine(name), engine_answers(name), docker_cli(name), docker_host(name),
    create_stick(name, fs, size_mib, label, read_only=False, recreate=False) -> /dev/loopN,
    remove_stick(name, delete=False), list_sticks(), clear_stale_state(),
    lab_lock() (a context manager: hold it while changing engines or sticks, as lab.py does).
"""
from __future__ import absolute_import, division, print_function

import errno
import json
import os
import signal
import subprocess
import sys
import time

STATE = '/var/lib/pibackup-lab'
RUN = '/run/pibackup-lab'
LOGS = os.path.join(STATE, 'logs')
STICKS = os.path.join(STATE, 'sticks')
ENGINES = os.path.join(STATE, 'engines')
CONFIGS = os.path.join(STATE, 'config')
DOCKER26 = os.path.join(STATE, 'docker26')
DOCKER26_ROOT = os.path.join(DOCKER26, 'root')
DOCKER26_STAMP = os.path.join(DOCKER26, 'installed.json')
# Mount points the lab (or a test using the lab) may create; dead FUSE mounts there are ours.
LAB_MOUNT_PREFIXES = ('/run/pibackup-lab/', '/media/pibackup-lab/', '/mnt/pibackup-lab/')

APT_PACKAGES = ('docker.io', 'exfatprogs', 'exfat-fuse', 'dosfstools', 'fusefat',
                'pigz', 'zstd', 'rsync')
TRIXIE_SOURCE = ('deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] '
                 'http://deb.debian.org/debian trixie main\n')
# What dockerd 26 runs: itself, its containerd + shims, runc, docker-init (tini), the CLI.
TRIXIE_PACKAGES = ('docker.io', 'containerd', 'runc', 'docker-cli', 'tini')

# The three engines of the lab contract (CONTRIBUTING.md); the fleet lab adds its own names.
LAB_ENGINES = (
    ('d20', '20', False),
    ('d26', '26', False),
    ('d26c', '26', True),
)
SYSTEM_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'


class LabError(Exception):
    """A lab step failed; the message says which and what to look at."""


def log(message):
    print('lab: %s' % message, file=sys.stderr)
    sys.stderr.flush()


def run(cmd, check=True, env=None, input_bytes=None, timeout=None, stdout=subprocess.PIPE):
    """Run an argument list; on failure raise LabError with the command and its stderr."""
    try:
        result = subprocess.run(cmd, stdout=stdout, stderr=subprocess.PIPE, env=env,
                                input=input_bytes, timeout=timeout, check=False)
    except FileNotFoundError:
        raise LabError('command not found: %s' % cmd[0])
    except subprocess.TimeoutExpired:
        raise LabError('command timed out after %ss: %s' % (timeout, ' '.join(cmd)))
    if check and result.returncode != 0:
        raise LabError('command failed (exit %d): %s\n%s' % (
            result.returncode, ' '.join(cmd), _text(result.stderr).strip()))
    return result


def _text(data):
    if data is None:
        return ''
    return data.decode('utf-8', 'replace')


def out(cmd, **kwargs):
    return _text(run(cmd, **kwargs).stdout)


class lab_lock(object):
    """Serialise the lab's changes (engine starts, sticks, samples) between processes."""

    def __init__(self):
        self._handle = None

    def __enter__(self):
        import fcntl
        _makedirs(STATE)
        self._handle = open(os.path.join(STATE, 'lab.lock'), 'a')
        fcntl.flock(self._handle, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc_info):
        self._handle.close()
        return False


def require_root():
    if os.geteuid() != 0:
        raise LabError('the lab must run as root (it installs packages, starts Docker '
                       'engines and attaches loop devices); run it with sudo')


def _makedirs(path, mode=0o755):
    if not os.path.isdir(path):
        os.makedirs(path, mode)


# ---------------------------------------------------------------- packages

def _installed(package):
    result = run(['dpkg-query', '-W', '-f=${db:Status-Status}', package], check=False)
    return result.returncode == 0 and _text(result.stdout).strip() == 'installed'


def ensure_packages(packages=APT_PACKAGES):
    """apt-get install what is missing; apt-get update once, only when something is."""
    missing = [p for p in packages if not _installed(p)]
    if not missing:
        return []
    env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
    log('installing %s' % ' '.join(missing))
    run(['apt-get', 'update'], env=env, stdout=subprocess.DEVNULL)
    run(['apt-get', 'install', '-y', '--no-install-recommends'] + missing, env=env,
        stdout=subprocess.DEVNULL)
    return missing


def _trixie_apt_options():
    apt_dir = os.path.join(DOCKER26, 'apt')
    return [
        '-o', 'Dir::Etc::sourcelist=%s' % os.path.join(apt_dir, 'sources.list'),
        '-o', 'Dir::Etc::sourceparts=-',
        '-o', 'Dir::State::Lists=%s' % os.path.join(apt_dir, 'lists'),
        '-o', 'Dir::Cache=%s' % os.path.join(apt_dir, 'cache'),
        '-o', 'APT::Get::List-Cleanup=0',
        '-o', 'APT::Sandbox::User=root',
    ]


def docker26_installed():
    return os.path.exists(DOCKER26_STAMP)


def ensure_docker26():
    """Unpack Docker 26 from Debian trixie into DOCKER26_ROOT; the system stays on bookworm."""
    if docker26_installed():
        return False
    apt_dir = os.path.join(DOCKER26, 'apt')
    debs = os.path.join(DOCKER26, 'debs')
    for path in (os.path.join(apt_dir, 'lists', 'partial'),
                 os.path.join(apt_dir, 'cache', 'archives', 'partial'), debs):
        _makedirs(path)
    with open(os.path.join(apt_dir, 'sources.list'), 'w') as handle:
        handle.write(TRIXIE_SOURCE)
    options = _trixie_apt_options()
    log('downloading Docker 26 from Debian trixie (%s)' % ' '.join(TRIXIE_PACKAGES))
    run(['apt-get'] + options + ['update'], stdout=subprocess.DEVNULL)
    for name in os.listdir(debs):
        os.unlink(os.path.join(debs, name))
    _download_in(debs, options)
    if os.path.isdir(DOCKER26_ROOT):
        run(['rm', '-rf', '--one-file-system', DOCKER26_ROOT])
    _makedirs(DOCKER26_ROOT)
    versions = {}
    for name in sorted(os.listdir(debs)):
        if name.endswith('.deb'):
            path = os.path.join(debs, name)
            run(['dpkg', '-x', path, DOCKER26_ROOT])
            package = out(['dpkg-deb', '-f', path, 'Package']).strip()
            versions[package] = out(['dpkg-deb', '-f', path, 'Version']).strip()
    notes = _disable_unrunnable(['usr/sbin/runc'])
    dockerd = os.path.join(DOCKER26_ROOT, 'usr', 'sbin', 'dockerd')
    run([dockerd, '--version'])
    with open(DOCKER26_STAMP, 'w') as handle:
        json.dump({'packages': versions, 'notes': notes}, handle, indent=2, sort_keys=True)
    return True


def _download_in(folder, options):
    cmd = ['apt-get'] + options + ['download'] + ['%s/trixie' % p for p in TRIXIE_PACKAGES]
    try:
        result = subprocess.run(cmd, cwd=folder, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, timeout=900, check=False)
    except subprocess.TimeoutExpired:
        raise LabError('command timed out: %s' % ' '.join(cmd))
    if result.returncode != 0:
        raise LabError('command failed (exit %d): %s\n%s' % (
            result.returncode, ' '.join(cmd), _text(result.stderr).strip()))


def _disable_unrunnable(relative_paths):
    """Trixie's runc needs glibc 2.38; bookworm has 2.36. Move such binaries aside so the
    engine falls back to the system's one on PATH (bookworm runc from docker.io)."""
    notes = []
    for relative in relative_paths:
        path = os.path.join(DOCKER26_ROOT, relative)
        if not os.path.exists(path):
            continue
        result = run([path, '--version'], check=False)
        if result.returncode != 0:
            os.rename(path, path + '.unrunnable')
            notes.append('%s does not run here (%s); using the system one' % (
                relative, _text(result.stderr).strip().splitlines()[-1:]))
    return notes


# ---------------------------------------------------------------- engines

def _engine_paths(name):
    run_dir = os.path.join(RUN, name)
    return {
        'run': run_dir,
        'socket': os.path.join(run_dir, 'docker.sock'),
        'pidfile': os.path.join(run_dir, 'docker.pid'),
        'exec_root': os.path.join(run_dir, 'x'),
        'data_root': os.path.join(ENGINES, name),
        'config': os.path.join(CONFIGS, '%s.json' % name),
        'log': os.path.join(LOGS, '%s.log' % name),
        'meta': os.path.join(CONFIGS, '%s.engine.json' % name),
    }


def docker_host(name):
    return 'unix://%s' % _engine_paths(name)['socket']


def engine_version(name):
    """'20' or '26' as recorded when the engine was first started (default: lab table)."""
    meta = _engine_paths(name)['meta']
    if os.path.exists(meta):
        with open(meta) as handle:
            return json.load(handle)['version']
    for engine, version, _store in LAB_ENGINES:
        if engine == name:
            return version
    return '20'


def docker_cli(name_or_version):
    """The engine's own docker CLI (the 20.10 one or the one unpacked with Docker 26)."""
    version = name_or_version if name_or_version in ('20', '26') else engine_version(name_or_version)
    if version == '26':
        cli = os.path.join(DOCKER26_ROOT, 'usr', 'bin', 'docker')
        if os.path.exists(cli):
            return cli
    for cli in ('/usr/bin/docker', '/usr/local/bin/docker'):
        if os.path.exists(cli):
            return cli
    return 'docker'


def docker(name, args, **kwargs):
    return run([docker_cli(name), '-H', docker_host(name)] + list(args), **kwargs)


def engine_answers(name):
    """The server version when the engine's socket answers, else None."""
    if not os.path.exists(_engine_paths(name)['socket']):
        return None
    result = run([docker_cli(name), '-H', docker_host(name), 'version', '--format',
                  '{{.Server.Version}}'], check=False, timeout=20)
    if result.returncode != 0:
        return None
    return _text(result.stdout).strip() or None


def _read_pid(pidfile):
    try:
        with open(pidfile) as handle:
            return int(handle.read().strip())
    except (IOError, OSError, ValueError):
        return None


def _alive(pid):
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    try:
        with open('/proc/%d/stat' % pid) as handle:
            return handle.read().split(') ', 1)[1][:1] != 'Z'
    except (IOError, OSError, IndexError):
        return False


def _cmdline(pid):
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as handle:
            return [_text(a) for a in handle.read().split(b'\0') if a]
    except (IOError, OSError):
        return []


def _ours(pid, marker):
    """The process is alive and its command line names `marker` (a pid may be re-used)."""
    return _alive(pid) and any(marker in arg for arg in _cmdline(pid))


def engine_pid(name):
    paths = _engine_paths(name)
    pid = _read_pid(paths['pidfile'])
    return pid if _ours(pid, paths['data_root']) else None


def _terminate(pid, marker, wait_seconds):
    if not _ours(pid, marker):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.time() + wait_seconds
    while time.time() < deadline and _alive(pid):
        time.sleep(0.2)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def _log_tail(path, lines=25):
    try:
        with open(path, 'rb') as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 16384))
            return '\n'.join(_text(handle.read()).splitlines()[-lines:])
    except (IOError, OSError):
        return '(no log at %s)' % path


def _engine_env(version):
    path = SYSTEM_PATH
    if version == '26':
        path = '%s:%s:%s' % (os.path.join(DOCKER26_ROOT, 'usr', 'sbin'),
                             os.path.join(DOCKER26_ROOT, 'usr', 'bin'), SYSTEM_PATH)
    env = {'PATH': path, 'HOME': '/root', 'LANG': 'C.UTF-8'}
    return env


def _clean_dead(paths):
    """Remove what a dead engine left: its pidfile and socket; stop a containerd it left
    running (dockerd killed hard leaves its containerd behind) and remove its pidfile."""
    containerd_pidfile = os.path.join(paths['exec_root'], 'containerd', 'containerd.pid')
    _terminate(_read_pid(containerd_pidfile), paths['exec_root'], 15)
    for path in (paths['pidfile'], paths['socket'], containerd_pidfile):
        if os.path.lexists(path):
            os.unlink(path)


def start_engine(name, version='20', containerd_store=False, wait_seconds=120):
    """Start dockerd `name` detached with its own containerd; return its DOCKER_HOST.

    Leaves a running engine alone. Cleans up after a dead one (stale pidfile/socket).
    """
    if version not in ('20', '26'):
        raise LabError('engine %s: version must be 20 or 26, not %r' % (name, version))
    paths = _engine_paths(name)
    if len(paths['exec_root'] + '/containerd/containerd.sock.ttrpc') >= 108:
        raise LabError('engine name %r makes socket paths longer than 107 bytes' % name)
    if engine_answers(name):
        return docker_host(name)
    if version == '26':
        ensure_docker26()
    for path in (paths['run'], paths['data_root'], LOGS, CONFIGS):
        _makedirs(path, 0o711 if path == paths['data_root'] else 0o755)
    pid = engine_pid(name)
    if pid is None:
        _clean_dead(paths)
        config = {'features': {'containerd-snapshotter': True}} if containerd_store else {}
        with open(paths['config'], 'w') as handle:
            json.dump(config, handle)
        with open(paths['meta'], 'w') as handle:
            json.dump({'version': version, 'containerd_store': containerd_store}, handle)
        dockerd = '/usr/sbin/dockerd' if version == '20' else os.path.join(
            DOCKER26_ROOT, 'usr', 'sbin', 'dockerd')
        if not os.path.exists(dockerd):
            raise LabError('engine %s: %s is missing (install docker.io)' % (name, dockerd))
        cmd = [dockerd,
               '--config-file', paths['config'],
               '--data-root', paths['data_root'],
               '--exec-root', paths['exec_root'],
               '--pidfile', paths['pidfile'],
               '-H', docker_host(name),
               '--iptables=false', '--ip6tables=false', '--bridge=none',
               '--userland-proxy=false', '--storage-driver=overlay2']
        if containerd_store:
            # the containerd image store picks its snapshotter; overlay2 names the graph driver
            cmd.remove('--storage-driver=overlay2')
        log('starting engine %s: %s' % (name, ' '.join(cmd)))
        with open(paths['log'], 'ab') as log_handle:
            log_handle.write(('\n=== %s starting %s\n' % (
                time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()), ' '.join(cmd))).encode())
            log_handle.flush()
            # start_new_session is the setsid; the setsid(1) wrapper would fork (the child
            # already leads its group) and exit 0 at once, which looked like a failed start.
            process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                       stdout=log_handle, stderr=log_handle,
                                       env=_engine_env(version), close_fds=True,
                                       start_new_session=True)
    else:
        process = None
        log('engine %s: process %d exists but does not answer yet; waiting' % (name, pid))
    deadline = time.time() + wait_seconds
    while time.time() < deadline:
        if engine_answers(name):
            _check_own_containerd(name, paths)
            return docker_host(name)
        if process is not None and process.poll() is not None:
            raise LabError('engine %s exited (code %s) while starting; log %s:\n%s' % (
                name, process.returncode, paths['log'], _log_tail(paths['log'])))
        time.sleep(0.5)
    raise LabError('engine %s did not answer on %s within %ss; log %s:\n%s' % (
        name, docker_host(name), wait_seconds, paths['log'], _log_tail(paths['log'])))


def _check_own_containerd(name, paths):
    """dockerd uses a system containerd when /run/containerd/containerd.sock exists; the lab
    wants each engine on its own one (own state dir), so say so instead of sharing quietly."""
    pid = _read_pid(os.path.join(paths['exec_root'], 'containerd', 'containerd.pid'))
    if not _ours(pid, paths['exec_root']):
        raise LabError('engine %s answers but did not start its own containerd (is a system '
                       'containerd running at /run/containerd/containerd.sock?); stop it and '
                       'run the lab again. Log %s:\n%s' % (name, paths['log'],
                                                           _log_tail(paths['log'])))


def stop_engine(name, wait_seconds=60):
    """SIGTERM the engine (it stops its own containerd), wait, then clear its runtime files."""
    paths = _engine_paths(name)
    pid = engine_pid(name)
    if pid is None:
        _clean_dead(paths)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.time() + wait_seconds
    while time.time() < deadline and _alive(pid):
        time.sleep(0.3)
    if _alive(pid):
        raise LabError('engine %s (pid %d) did not stop within %ss; log %s:\n%s' % (
            name, pid, wait_seconds, paths['log'], _log_tail(paths['log'])))
    _clean_dead(paths)
    return True


def known_engines():
    """The lab's engines plus any other engine that has a run folder (the fleet's)."""
    names = [engine for engine, _v, _s in LAB_ENGINES]
    if os.path.isdir(RUN):
        for entry in sorted(os.listdir(RUN)):
            if entry not in names and os.path.isdir(os.path.join(RUN, entry)) and \
                    os.path.exists(os.path.join(CONFIGS, '%s.engine.json' % entry)):
                names.append(entry)
    return names


def _process_argvs():
    """(pid, argv) of every running process whose command line can be read."""
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/cmdline' % entry, 'rb') as handle:
                argv = [_text(a) for a in handle.read().split(b'\0') if a]
        except (IOError, OSError):
            continue
        yield int(entry), argv


def containerd_processes():
    """(pid, argv, dirs) of every running containerd (not shims), to show each engine has its own."""
    found = []
    for pid, argv in _process_argvs():
        if argv and os.path.basename(argv[0]) == 'containerd':
            found.append((pid, argv, _containerd_dirs(argv)))
    return sorted(found)


def _containerd_dirs(argv):
    """{'root': ..., 'state': ...} from the config file a containerd was started with."""
    dirs = {}
    if '--config' in argv[:-1]:
        try:
            with open(argv[argv.index('--config') + 1]) as handle:
                for line in handle:
                    key, sep, value = line.partition('=')
                    if sep and key.strip() in ('root', 'state'):
                        dirs[key.strip()] = value.strip().strip('"')
        except (IOError, OSError):
            pass
    return dirs


# ---------------------------------------------------------------- mounts

def _unescape(field):
    out_chars = []
    i = 0
    while i < len(field):
        if field[i] == '\\' and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out_chars.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out_chars.append(field[i])
            i += 1
    return ''.join(out_chars)


def mounts():
    """Dicts with mount_point, fstype, source from /proc/self/mountinfo."""
    result = []
    with open('/proc/self/mountinfo') as handle:
        for line in handle:
            left, _sep, right = line.rstrip('\n').partition(' - ')
            fields = left.split(' ')
            tail = right.split(' ')
            if len(fields) < 5 or len(tail) < 2:
                continue
            result.append({'mount_point': _unescape(fields[4]), 'fstype': tail[0],
                           'source': _unescape(tail[1]), 'major_minor': fields[2]})
    return result


def mount_is_dead(mount_point):
    """True when a FUSE mount's daemon is gone (stat gives ENOTCONN)."""
    try:
        os.stat(mount_point)
    except OSError as exc:
        return exc.errno in (errno.ENOTCONN, errno.EIO)
    return False


def _fuse_daemon_devices():
    """{mount point: device} from the command lines of running FUSE filesystem daemons."""
    found = {}
    for _pid, argv in _process_argvs():
        if not argv or os.path.basename(argv[0]) not in ('mount.exfat-fuse', 'mount.exfat',
                                                         'fusefat', 'exfat-fuse'):
            continue
        positional = []
        skip = False
        for arg in argv[1:]:
            if skip:
                skip = False
                continue
            if arg == '-o':
                skip = True
                continue
            if arg.startswith('-'):
                continue
            positional.append(arg)
        if len(positional) >= 2:
            found[os.path.realpath(positional[-1])] = positional[-2]
    return found


def mounts_of_devices(devices):
    """Mounts whose source is one of `devices` (kernel or FUSE, also fusefat's own source)."""
    devices = set(devices)
    daemons = _fuse_daemon_devices()
    found = []
    for entry in mounts():
        source = entry['source']
        if source in devices or daemons.get(entry['mount_point']) in devices:
            found.append(entry)
    return found


def unmount(mount_point):
    """Plain umount (never lazy); FUSE mounts of a live daemon end their daemon too."""
    run(['umount', mount_point])


# ---------------------------------------------------------------- sticks

def stick_file(name):
    return os.path.join(STICKS, '%s.img' % name)


def _loop_table():
    """[(device, backing file, read_only)] of every attached loop device."""
    text = out(['losetup', '--list', '--noheadings', '--raw', '--output', 'NAME,RO,BACK-FILE'])
    rows = []
    for line in text.splitlines():
        parts = line.split(' ', 2)
        if len(parts) == 3:
            back = parts[2].replace('\\x20', ' ')
            if back.endswith(' (deleted)'):
                back = back[:-len(' (deleted)')]
            rows.append((parts[0], back, parts[1] == '1'))
    return rows


def loop_devices_of(path):
    """[(device, read_only)] attached to `path` (also when the file has been deleted)."""
    path = os.path.realpath(path)
    return [(dev, ro) for dev, back, ro in _loop_table() if back == path]


def lab_loop_devices():
    """[(device, backing file)] of loop devices backed by the lab's stick files."""
    prefix = STICKS + '/'
    return [(dev, back) for dev, back, _ro in _loop_table() if back.startswith(prefix)]


def _release_device(device):
    for entry in reversed(mounts_of_devices([device])):
        log('unmounting %s (%s)' % (entry['mount_point'], device))
        unmount(entry['mount_point'])
    run(['losetup', '-d', device])


def blkid(device):
    """{'TYPE':..., 'LABEL':..., 'UUID':...} or {} when blkid sees no filesystem."""
    result = run(['blkid', '-c', '/dev/null', '-o', 'export', device], check=False)
    info = {}
    for line in _text(result.stdout).splitlines():
        key, sep, value = line.partition('=')
        if sep:
            info[key] = value
    return info


def _mkfs(fs, label, path):
    if fs == 'exfat':
        run(['mkfs.exfat', '-L', label, path], stdout=subprocess.DEVNULL)
    elif fs == 'vfat':
        run(['mkfs.vfat', '-F', '32', '-n', label, path], stdout=subprocess.DEVNULL)
    else:
        raise LabError('stick filesystem must be exfat or vfat, not %r' % fs)


def create_stick(name, fs='exfat', size_mib=1024, label=None, read_only=False, recreate=False):
    """Make (if missing) and attach the stick `name`; return its loop device.

    The image file is sparse. An attached loop device of the file is re-used; extra ones
    (left by earlier sessions) are detached. `recreate` makes a fresh filesystem.
    """
    if fs not in ('exfat', 'vfat'):
        raise LabError('stick filesystem must be exfat or vfat, not %r' % fs)
    label = label or name.upper()[:11]
    _makedirs(STICKS)
    path = stick_file(name)
    attached = loop_devices_of(path)
    if recreate:
        for device, _ro in attached:
            _release_device(device)
        attached = []
        if os.path.exists(path):
            os.unlink(path)
    if not os.path.exists(path):
        run(['truncate', '-s', '%dM' % int(size_mib), path])
        _mkfs(fs, label, path)
    else:
        info = blkid(attached[0][0] if attached else path)
        if not info.get('TYPE') and not attached:
            _mkfs(fs, label, path)
        elif info.get('TYPE') != fs:
            raise LabError('stick %s already exists with filesystem %s, not %s; use '
                           '--recreate (recreate=True) for a fresh %s stick' % (
                               name, info.get('TYPE') or 'none', fs, fs))
        elif info.get('LABEL') != label:
            log('stick %s: keeping its label %s (asked for %s; --recreate makes it new)' % (
                name, info.get('LABEL'), label))
    # one loop device per file, with the requested read-only mode
    keep = None
    for device, ro in attached:
        if keep is None and ro == bool(read_only):
            keep = device
        elif keep is None and not mounts_of_devices([device]):
            run(['losetup', '-d', device])
        elif keep is None:
            raise LabError('stick %s: %s is attached %s and mounted; unmount it before '
                           'asking for %s' % (name, device, 'read-only' if ro else 'read-write',
                                              'read-only' if read_only else 'read-write'))
        elif not mounts_of_devices([device]):
            log('stick %s: detaching duplicate loop device %s' % (name, device))
            run(['losetup', '-d', device])
    if keep is None:
        cmd = ['losetup', '--show', '-f'] + (['-r'] if read_only else []) + [path]
        keep = out(cmd).strip()
    return keep


def remove_stick(name, delete=False):
    """Unmount the stick wherever it is mounted, detach it; delete the file if asked."""
    path = stick_file(name)
    devices = [device for device, _ro in loop_devices_of(path)]
    for device in devices:
        _release_device(device)
    if delete and os.path.exists(path):
        os.unlink(path)
    return devices


def list_sticks():
    """One dict per stick file or lab loop device: name, device, label, fs, mounted."""
    names = set()
    if os.path.isdir(STICKS):
        names.update(n[:-4] for n in os.listdir(STICKS) if n.endswith('.img'))
    for _dev, back in lab_loop_devices():
        names.add(os.path.basename(back)[:-4])
    rows = []
    for name in sorted(names):
        path = stick_file(name)
        devices = [device for device, _ro in loop_devices_of(path)]
        info = blkid(devices[0] if devices else path) if os.path.exists(path) or devices else {}
        rows.append({
            'name': name,
            'device': ','.join(devices) or '-',
            'read_only': any(ro for _d, ro in loop_devices_of(path)),
            'label': info.get('LABEL', '-'),
            'fs': info.get('TYPE', '-'),
            'mounted': ','.join(m['mount_point'] for m in mounts_of_devices(devices)) or '-',
            'file': path if os.path.exists(path) else '(deleted)',
        })
    return rows


def clear_stale_state():
    """Undo what an earlier session left: dead FUSE mounts that are the lab's, duplicate or
    orphaned loop devices of the lab's stick files. Returns a list of actions taken."""
    actions = []
    # Any loop device backed by a file under the lab's state folder is the lab's or a
    # test's (test sticks live beside the lab's own); only dead mounts of them are cleared.
    lab_devices = [dev for dev, back, _ro in _loop_table() if back.startswith(STATE + '/')]
    for entry in reversed(mounts()):
        if not entry['fstype'].startswith('fuse'):
            continue
        ours = entry['source'] in lab_devices or \
            (entry['mount_point'] + '/').startswith(LAB_MOUNT_PREFIXES)
        if ours and mount_is_dead(entry['mount_point']):
            run(['umount', entry['mount_point']])
            actions.append('unmounted dead FUSE mount %s (%s)' % (entry['mount_point'],
                                                                  entry['source']))
    seen = {}
    for device, back, _ro in _loop_table():
        if not back.startswith(STICKS + '/'):
            continue
        busy = bool(mounts_of_devices([device]))
        if not os.path.exists(back) and not busy:
            run(['losetup', '-d', device])
            actions.append('detached %s (its file %s is gone)' % (device, back))
        elif back in seen and not busy:
            run(['losetup', '-d', device])
            actions.append('detached duplicate %s of %s (kept %s)' % (device, back, seen[back]))
        else:
            seen.setdefault(back, device)
    return actions
