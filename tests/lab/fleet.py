#!/usr/bin/env python
"""The fleet lab: N simulated Raspberry Pis on this one machine.

    fleet.py up [--hosts N] [--fresh-sticks]
                                start (or complete) the fleet; default 3 hosts;
                                --fresh-sticks gives each host an empty stick
    fleet.py down [--purge]     stop the fleet's engines and sshd, detach its sticks
    fleet.py status             one line per host: engine, stick, interpreter, images
    fleet.py stop-engine HOST   stop one host's engine (a host whose engine is down)

Each host `fleetN` has its own Docker 20.10 engine (socket
/run/pibackup-lab/fleetN/docker.sock, own data root), its own file-backed exFAT
stick labelled FLEETN, and sample images of its own (pibackup-fleet/fleetN-*).
Host fleet1 is reached over SSH like a real Pi: an sshd of the lab's own on
127.0.0.2:2222 (own config and host key, the system's sshd is not touched), key
authentication as the unprivileged user `pbfleet` who becomes root with sudo, and
the system Python with Debian's python3-docker 5.0.3. The other hosts are local
connections with other interpreters: fleet2 Python 3.9 (Docker SDK 6.1), fleet3
Python 3.13 (Docker SDK 7.1), further hosts the controller's virtual environment.

The inventory is written to /var/lib/pibackup-lab/fleet/inventory.yml; for three
hosts it equals inventory.lab.yml at the collection root. Everything the fleet
creates lives under /var/lib/pibackup-lab/fleet, /run/pibackup-lab/fleet* and
/mnt/pibackup-lab/fleetN; nothing else is touched.
"""
from __future__ import absolute_import, division, print_function

import argparse
import glob
import io
import json
import os
import random
import socket
import subprocess
import sys
import tarfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _labkit as kit  # noqa: E402  (the lab's building blocks, beside this file)

FLEET = os.path.join(kit.STATE, 'fleet')
FLEET_RUN = os.path.join(kit.RUN, 'fleet')
SSH_DIR = os.path.join(FLEET, 'ssh')
INVENTORY = os.path.join(FLEET, 'inventory.yml')
MOUNT_ROOT = '/mnt/pibackup-lab'
STICK_MIB = 256

SSH_ADDRESS = '127.0.0.2'
SSH_PORT = 2222
SSH_USER = 'pbfleet'
SSH_UID = 2990
SSHD_CONFIG = os.path.join(SSH_DIR, 'sshd_config')
SSHD_PIDFILE = os.path.join(FLEET_RUN, 'sshd.pid')
SSHD_LOG = os.path.join(kit.LOGS, 'fleet-sshd.log')
CLIENT_KEY = os.path.join(SSH_DIR, 'id_ed25519')
HOST_KEY = os.path.join(SSH_DIR, 'ssh_host_ed25519_key')
KNOWN_HOSTS = os.path.join(SSH_DIR, 'known_hosts')
AUTHORIZED_KEYS = os.path.join(SSH_DIR, 'authorized_keys')
SUDOERS = '/etc/sudoers.d/pibackup-lab-fleet'

# What the SSH host needs: sshd, sudo for `become`, the system Python's Docker SDK 5.0.3.
FLEET_PACKAGES = ('openssh-server', 'openssh-client', 'sudo', 'python3-docker')
SYSTEM_PYTHON = '/usr/bin/python3'
# Interpreters of the local hosts: (python version, pip requirements of its venv).
# Docker SDK 6.1 does not work with requests >= 2.32 ("Not supported URL scheme
# http+docker"; fixed in SDK 7.1), so its venv keeps the requests of its time.
LOCAL_PYTHONS = (('3.9', ('docker==6.1.3', 'requests<2.32')), ('3.13', ('docker==7.1.0',)))
PYENV_VERSIONS = '/root/.pyenv/versions'
IMAGE_LABEL = 'pibackup.lab=fleet'


def host_name(index):
    return 'fleet%d' % index


def images_of(host):
    """The sample images of one host: (reference, extra tags, size in bytes)."""
    return [
        ('pibackup-fleet/%s-app:1.0' % host, [], 2 * 1024 * 1024),
        ('pibackup-fleet/%s-tool:1.0' % host, ['pibackup-fleet/%s-tool:latest' % host],
         512 * 1024),
    ]


def references_of(host):
    refs = []
    for reference, extra, _size in images_of(host):
        refs.append(reference)
        refs.extend(extra)
    return refs


# ---------------------------------------------------------------- interpreters

def _pyenv_python(version):
    """The pyenv interpreter binary for `version` (e.g. '3.9'), or None."""
    for folder in sorted(glob.glob(os.path.join(PYENV_VERSIONS, version + '.*')), reverse=True):
        binary = os.path.join(folder, 'bin', 'python' + version)
        if os.access(binary, os.X_OK):
            return binary
    return None


def venv_path(version):
    return os.path.join(FLEET, 'py' + version)


def ensure_venv(version, requirements):
    """A small venv of pyenv's Python `version` holding only the Docker SDK (`requirements`)."""
    folder = venv_path(version)
    python = os.path.join(folder, 'bin', 'python')
    stamp = os.path.join(folder, 'fleet-sdk.txt')
    if os.path.exists(stamp) and os.access(python, os.X_OK):
        with open(stamp) as handle:
            if handle.read().split() == list(requirements):
                return python
    base = _pyenv_python(version)
    if base is None:
        raise kit.LabError('Python %s is missing under %s (the fleet lab uses pyenv Pythons '
                           'as target interpreters)' % (version, PYENV_VERSIONS))
    kit.log('creating %s with %s' % (folder, ' '.join(requirements)))
    kit.run([base, '-m', 'venv', '--clear', folder], stdout=subprocess.DEVNULL)
    pip = [python, '-m', 'pip', 'install', '--quiet', '--disable-pip-version-check']
    if os.path.exists('/etc/ssl/certs/ca-certificates.crt'):
        pip += ['--cert', '/etc/ssl/certs/ca-certificates.crt']
    kit.run(pip + list(requirements), stdout=subprocess.DEVNULL, timeout=600)
    with open(stamp, 'w') as handle:
        handle.write('\n'.join(requirements) + '\n')
    return python


def controller_python():
    """The controller's venv python (the repo's .venv), resolved from this file's place."""
    candidate = os.path.join(os.path.dirname(os.path.dirname(HERE)), '.venv', 'bin', 'python')
    return candidate if os.path.exists(candidate) else sys.executable


def interpreter_of(index):
    if index == 1:
        return SYSTEM_PYTHON
    if index - 2 < len(LOCAL_PYTHONS):
        return os.path.join(venv_path(LOCAL_PYTHONS[index - 2][0]), 'bin', 'python')
    return controller_python()


def sdk_version(python):
    result = kit.run([python, '-c', 'import sys, docker; print("%d.%d.%d docker %s" % ('
                      'sys.version_info[:3] + (docker.__version__,)))'], check=False)
    if result.returncode != 0:
        return 'no docker SDK'
    return kit._text(result.stdout).strip()


# ---------------------------------------------------------------- ssh host

def _user_exists():
    return kit.run(['id', '-u', SSH_USER], check=False).returncode == 0


def ensure_user():
    """The unprivileged login `pbfleet` (fixed uid), sudo NOPASSWD through a drop-in file."""
    if not _user_exists():
        kit.log('creating user %s (uid %d)' % (SSH_USER, SSH_UID))
        kit.run(['useradd', '--uid', str(SSH_UID), '--create-home', '--shell', '/bin/bash',
                 '--comment', 'pibackup fleet lab', SSH_USER])
    # '*' = no password, not locked: sshd without PAM refuses locked ('!') accounts.
    kit.run(['usermod', '--password', '*', SSH_USER])
    rule = '%s ALL=(root) NOPASSWD: ALL\n' % SSH_USER
    current = None
    if os.path.exists(SUDOERS):
        with open(SUDOERS) as handle:
            current = handle.read()
    if current != rule:
        temp = SUDOERS + '.new'
        with open(temp, 'w') as handle:
            handle.write(rule)
        os.chmod(temp, 0o440)
        kit.run(['visudo', '-c', '-q', '-f', temp])
        os.rename(temp, SUDOERS)


def _keygen(path, comment):
    if not os.path.exists(path):
        kit.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', comment, '-f', path])


def _write_if_changed(path, text, mode=0o644):
    current = None
    if os.path.exists(path):
        with open(path) as handle:
            current = handle.read()
    if current != text:
        with open(path + '.new', 'w') as handle:
            handle.write(text)
        os.chmod(path + '.new', mode)
        os.rename(path + '.new', path)
        return True
    return False


def ensure_ssh_files():
    """Host key, client key, authorized_keys, known_hosts and sshd_config of the lab's sshd."""
    kit._makedirs(SSH_DIR, 0o755)
    _keygen(HOST_KEY, 'pibackup-fleet-host')
    _keygen(CLIENT_KEY, 'pibackup-fleet-controller')
    with open(CLIENT_KEY + '.pub') as handle:
        _write_if_changed(AUTHORIZED_KEYS, handle.read(), 0o644)
    with open(HOST_KEY + '.pub') as handle:
        host_key = ' '.join(handle.read().split()[:2])
    _write_if_changed(KNOWN_HOSTS, '[%s]:%d %s\n' % (SSH_ADDRESS, SSH_PORT, host_key))
    config = '\n'.join([
        '# The fleet lab\'s own sshd (tests/lab/fleet.py); the system sshd is not used.',
        'ListenAddress %s:%d' % (SSH_ADDRESS, SSH_PORT),
        'HostKey %s' % HOST_KEY,
        'PidFile %s' % SSHD_PIDFILE,
        'AuthorizedKeysFile %s' % AUTHORIZED_KEYS,
        'AllowUsers %s' % SSH_USER,
        'PermitRootLogin no',
        'PubkeyAuthentication yes',
        'PasswordAuthentication no',
        'KbdInteractiveAuthentication no',
        'UsePAM no',
        'MaxStartups 30',
        'Subsystem sftp internal-sftp',
        '',
    ])
    _write_if_changed(SSHD_CONFIG, config)


def sshd_pid():
    pid = kit._read_pid(SSHD_PIDFILE)
    return pid if kit._alive(pid) else None


def ssh_answers():
    try:
        with socket.create_connection((SSH_ADDRESS, SSH_PORT), timeout=3) as conn:
            return conn.recv(64).startswith(b'SSH-')
    except (OSError, socket.timeout):
        return False


def start_sshd(wait_seconds=20):
    if sshd_pid() and ssh_answers():
        return
    kit._makedirs(FLEET_RUN)
    kit._makedirs('/run/sshd', 0o755)  # sshd's privilege separation folder
    kit._makedirs(kit.LOGS)
    kit.run(['/usr/sbin/sshd', '-t', '-f', SSHD_CONFIG])
    kit.log('starting sshd on %s:%d' % (SSH_ADDRESS, SSH_PORT))
    kit.run(['setsid', '/usr/sbin/sshd', '-f', SSHD_CONFIG, '-E', SSHD_LOG])
    deadline = time.time() + wait_seconds
    while time.time() < deadline:
        if ssh_answers():
            return
        time.sleep(0.3)
    raise kit.LabError('sshd did not answer on %s:%d within %ss; log %s:\n%s' % (
        SSH_ADDRESS, SSH_PORT, wait_seconds, SSHD_LOG, kit._log_tail(SSHD_LOG)))


def stop_sshd():
    pid = sshd_pid()
    if pid:
        os.kill(pid, 15)
        deadline = time.time() + 10
        while time.time() < deadline and kit._alive(pid):
            time.sleep(0.2)
    if os.path.exists(SSHD_PIDFILE):
        os.unlink(SSHD_PIDFILE)
    return bool(pid)


def ssh_login_works():
    """Log in as pbfleet with the key, become root with sudo, import the system's docker."""
    cmd = ['ssh', '-i', CLIENT_KEY, '-p', str(SSH_PORT), '-o', 'BatchMode=yes',
           '-o', 'UserKnownHostsFile=%s' % KNOWN_HOSTS, '-o', 'StrictHostKeyChecking=yes',
           '%s@%s' % (SSH_USER, SSH_ADDRESS),
           'sudo', '-n', SYSTEM_PYTHON, '-']
    probe = b'import os, docker\nprint(os.geteuid(), docker.__version__)\n'
    result = kit.run(cmd, check=False, timeout=30, input_bytes=probe)
    return result.returncode == 0, (kit._text(result.stdout) + kit._text(result.stderr)).strip()


# ---------------------------------------------------------------- images

def _layer_tar(host, reference, size):
    """A deterministic root filesystem: random bytes seeded by the reference, a host file."""
    generator = random.Random(reference)
    payload = bytes(bytearray(generator.getrandbits(8) for _byte in range(size)))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w', format=tarfile.PAX_FORMAT) as tar:
        for name, data in (('data/payload.bin', payload),
                           ('etc/pibackup-fleet-host', (host + '\n').encode('ascii'))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1700000000
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _image_exists(engine, reference):
    return kit.docker(engine, ['image', 'inspect', '--format', '{{.Id}}', reference],
                      check=False).returncode == 0


def ensure_images(host):
    """Create the host's sample images that are missing (never touches other images)."""
    made = []
    for reference, extra, size in images_of(host):
        if not _image_exists(host, reference):
            kit.docker(host, ['import', '--change', 'LABEL %s' % IMAGE_LABEL,
                              '--change', 'LABEL pibackup.fleet.host=%s' % host,
                              '-', reference], input_bytes=_layer_tar(host, reference, size))
            made.append(reference)
        for tag in extra:
            if not _image_exists(host, tag):
                kit.docker(host, ['tag', reference, tag])
                made.append(tag)
    return made


# ---------------------------------------------------------------- inventory

def _q(value):
    """A YAML scalar: JSON strings and lists are valid YAML flow values."""
    return json.dumps(value)


def inventory_text(count):
    lines = [
        '---',
        '# The fleet lab (tests/lab/fleet.py up --hosts %d): each host has its own Docker' % count,
        '# engine and its own exFAT stick; fleet1 is reached over SSH with become, the',
        '# others are local connections with different Python / Docker SDK versions.',
        'all:',
        '  children:',
        '    fleet:',
        '      vars:',
        '        ansible_become_method: sudo',
        '      hosts:',
    ]
    for index in range(1, count + 1):
        host = host_name(index)
        lines.append('        %s:' % host)
        if index == 1:
            lines += [
                '          ansible_host: %s' % SSH_ADDRESS,
                '          ansible_port: %d' % SSH_PORT,
                '          ansible_user: %s' % SSH_USER,
                '          ansible_ssh_private_key_file: %s' % CLIENT_KEY,
                '          ansible_ssh_common_args: >-',
                '            -o UserKnownHostsFile=%s' % KNOWN_HOSTS,
                '            -o StrictHostKeyChecking=yes',
                '            -o ControlMaster=auto -o ControlPersist=60s',
                '          ansible_become: true',
                '          ansible_pipelining: true',
            ]
        else:
            lines.append('          ansible_connection: local')
        docker_host = kit.docker_host(host)
        mount_path = os.path.join(MOUNT_ROOT, host)
        label = host.upper()
        lines += [
            '          ansible_python_interpreter: %s' % interpreter_of(index),
            '          backup_label: %s' % label,
            '          backup_mount_path: %s' % mount_path,
            '          backup_docker_host: %s' % _q(docker_host),
            '          backup_images:',
        ] + ['            - %s' % _q(ref) for ref in references_of(host)] + [
            '          restore_label: %s' % label,
            '          restore_mount_path: %s' % mount_path,
            '          restore_docker_host: %s' % _q(docker_host),
        ]
    return '\n'.join(lines) + '\n'


# ---------------------------------------------------------------- commands

def fleet_hosts():
    """Hosts the fleet has state for (engine config), in order."""
    found = []
    for path in glob.glob(os.path.join(kit.CONFIGS, 'fleet*.engine.json')):
        name = os.path.basename(path)[:-len('.engine.json')]
        if name[len('fleet'):].isdigit():
            found.append(name)
    return sorted(found, key=lambda n: int(n[len('fleet'):]))


def up(count, fresh_sticks=False):
    started = time.time()
    kit.require_root()
    kit.ensure_packages(kit.APT_PACKAGES + FLEET_PACKAGES)
    for action in kit.clear_stale_state():
        kit.log(action)
    kit._makedirs(FLEET)
    kit._makedirs(MOUNT_ROOT)
    # a smaller fleet than last time: retire the hosts beyond `count`
    for host in fleet_hosts():
        if int(host[len('fleet'):]) > count:
            retire(host)
    for version, requirements in LOCAL_PYTHONS[:max(0, count - 1)]:
        ensure_venv(version, requirements)
    ensure_user()
    ensure_ssh_files()
    start_sshd()
    for index in range(1, count + 1):
        host = host_name(index)
        kit.start_engine(host, version='20')
        device = kit.create_stick(host, fs='exfat', size_mib=STICK_MIB, label=host.upper(),
                                  recreate=fresh_sticks)
        made = ensure_images(host)
        kit.log('%s: engine %s, stick %s (%s)%s' % (
            host, kit.docker_host(host), device, host.upper(),
            ', images created: %s' % ' '.join(made) if made else ''))
    ok, detail = ssh_login_works()
    if not ok:
        raise kit.LabError('ssh to %s@%s:%d with sudo and python3-docker failed: %s' % (
            SSH_USER, SSH_ADDRESS, SSH_PORT, detail))
    _write_if_changed(INVENTORY, inventory_text(count))
    print('fleet of %d up in %.1fs; inventory: %s' % (count, time.time() - started, INVENTORY))


def retire(host):
    """Stop one host's engine and detach its stick (state files stay unless purged)."""
    kit.stop_engine(host)
    kit.remove_stick(host)


def down(purge):
    kit.require_root()
    for host in fleet_hosts():
        kit.log('stopping %s' % host)
        retire(host)
        if purge:
            kit.remove_stick(host, delete=True)
            for path in (kit._engine_paths(host)['data_root'], os.path.join(MOUNT_ROOT, host)):
                if os.path.isdir(path):
                    kit.run(['rm', '-rf', '--one-file-system', path])
            for key in ('meta', 'config'):
                path = kit._engine_paths(host)[key]
                if os.path.exists(path):
                    os.unlink(path)
    if stop_sshd():
        kit.log('stopped the fleet sshd')
    if purge and os.path.isdir(FLEET):
        kit.run(['rm', '-rf', '--one-file-system', FLEET])
    print('fleet down%s' % (' (purged)' if purge else ''))


def status():
    hosts = fleet_hosts()
    if not hosts:
        print('no fleet (run: fleet.py up)')
        return 1
    sticks = dict((row['name'], row) for row in kit.list_sticks())
    healthy = True
    print('%-8s %-8s %-14s %-12s %-7s %-30s %s' % (
        'host', 'engine', 'stick', 'label', 'images', 'interpreter', 'mounted'))
    for host in hosts:
        index = int(host[len('fleet'):])
        version = kit.engine_answers(host)
        stick = sticks.get(host, {})
        images = sum(1 for ref in references_of(host) if version and _image_exists(host, ref))
        python = interpreter_of(index)
        print('%-8s %-8s %-14s %-12s %d/%-5d %-30s %s' % (
            host, version or 'DOWN', stick.get('device', '-'), stick.get('label', '-'), images,
            len(references_of(host)), sdk_version(python), stick.get('mounted', '-')))
        healthy = healthy and bool(version) and stick.get('device', '-') != '-'
    ok, detail = ssh_login_works() if ssh_answers() else (False, 'sshd not answering')
    print('ssh %s@%s:%d: %s' % (SSH_USER, SSH_ADDRESS, SSH_PORT,
                                'ok (uid, docker SDK: %s)' % detail if ok else detail))
    print('inventory: %s' % (INVENTORY if os.path.exists(INVENTORY) else '(none)'))
    return 0 if healthy and ok else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', 1)[0])
    sub = parser.add_subparsers(dest='command')
    sub.required = True
    up_parser = sub.add_parser('up', help='start the fleet (idempotent)')
    up_parser.add_argument('--hosts', type=int, default=3)
    up_parser.add_argument('--fresh-sticks', action='store_true',
                           help='make a new empty filesystem on every host\'s stick')
    down_parser = sub.add_parser('down', help='stop the fleet')
    down_parser.add_argument('--purge', action='store_true',
                             help='also delete stick files, engine data and fleet state')
    sub.add_parser('status', help='show the fleet')
    stop_parser = sub.add_parser('stop-engine', help="stop one host's engine")
    stop_parser.add_argument('host')
    args = parser.parse_args()
    try:
        if args.command == 'up':
            if args.hosts < 1:
                parser.error('--hosts must be at least 1')
            up(args.hosts, args.fresh_sticks)
        elif args.command == 'down':
            down(args.purge)
        elif args.command == 'status':
            return status()
        elif args.command == 'stop-engine':
            kit.require_root()
            if args.host not in fleet_hosts():
                parser.error('%s is not a fleet host (%s)' % (args.host, ', '.join(fleet_hosts())))
            kit.stop_engine(args.host)
            print('%s: engine stopped' % args.host)
    except kit.LabError as exc:
        print('fleet: %s' % exc, file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
