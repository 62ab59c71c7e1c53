# Private to the faults_* integration targets: makes their images, damages archives, causes faults.
"""Helper of the faults_* integration targets (issue 7).

Each subcommand prints one JSON object on stdout, so a task can read it with
``from_json``. Every command it runs is an argument list; nothing goes
through a shell.

    image      --host H --ref NAME:TAG --mib N [--label K=V]   make an image (docker import of random data)
    rmi        --host H REF...                                  remove images this test made
    images     --host H                                         the engine's images: ["<id> <tags>", ...]
    snapshot   FOLDER                                           sha256/size/inode/mtime of every file in FOLDER
    fill       FOLDER --leave BYTES                             write filler so only BYTES stay free
    damage     KIND ARCHIVE                                     truncate | flip-layer | drop-blob |
                                                                meta-tags | sums-line
    hostile    KIND ARCHIVE --outside PATH                      absolute | dotdot | symlink | hardlink
    mid-save   --fault KIND ...                                 run a save with ansible-playbook in the
                                                                background and cause KIND while the
                                                                temporary file grows: kill-ansible
                                                                (SIGKILL of its process groups: the
                                                                module's own included),
                                                                kill-fuse (SIGKILL of the stick's FUSE daemon)
                                                                or kill-engine (SIGKILL of --engine-pid)
    playbook   --state S --host H --folder F [--images ...] [--umask 077] [--become-user U]
                                                                run the module once through ansible-playbook
    engine     start|stop|kill NAME --lab LAB_PY                this test's own engine (never d20/d26/d26c)
"""
from __future__ import absolute_import, division, print_function

import argparse
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time


def emit(data):
    print(json.dumps(data, sort_keys=True))


def client(host):
    import docker
    return docker.APIClient(base_url=host, version='auto', timeout=300)


# ---------------------------------------------------------------- images

def cmd_image(args):
    """A one-layer image of random (incompressible) data, made with docker import."""
    name, _sep, tag = args.ref.rpartition(':')
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w') as tar:
        data = os.urandom(int(args.mib * 1024 * 1024))
        info = tarfile.TarInfo('data/random.bin')
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
        marker = args.ref.encode('utf-8')
        info = tarfile.TarInfo('data/ref.txt')
        info.size = len(marker)
        tar.addfile(info, io.BytesIO(marker))
    changes = ['LABEL %s' % label for label in args.label or []]
    api = client(args.host)
    api.import_image_from_data(buf.getvalue(), repository=name, tag=tag, changes=changes or None)
    inspect = api.inspect_image(args.ref)
    emit({'id': inspect['Id'], 'size': inspect.get('Size'), 'ref': args.ref})


def cmd_rmi(args):
    api = client(args.host)
    removed = []
    for ref in args.refs:
        try:
            api.remove_image(ref, force=True)
            removed.append(ref)
        except Exception:  # pylint: disable=broad-except
            pass  # already gone
    emit({'removed': removed})


def cmd_images(args):
    api = client(args.host)
    rows = sorted('%s %s' % (image['Id'], ','.join(sorted(image.get('RepoTags') or [])))
                  for image in api.images(all=True))
    emit({'images': rows})


# ---------------------------------------------------------------- files

def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for chunk in iter(lambda: handle.read(1024 * 1024), b''):
            digest.update(chunk)
    return digest.hexdigest()


def cmd_snapshot(args):
    files = {}
    for name in sorted(os.listdir(args.folder)):
        path = os.path.join(args.folder, name)
        if not os.path.isfile(path):
            continue
        stat = os.stat(path)
        files[name] = {'sha256': sha256_of(path), 'bytes': stat.st_size, 'inode': stat.st_ino,
                       'mtime': stat.st_mtime, 'mode': '%04o' % (stat.st_mode & 0o7777),
                       'uid': stat.st_uid, 'gid': stat.st_gid}
    partials = sorted(name for name in files if '.partial-' in name)
    emit({'files': files, 'names': sorted(files), 'partials': partials})


def cmd_fill(args):
    stats = os.statvfs(args.folder)
    free = stats.f_bavail * stats.f_frsize
    size = max(0, free - args.leave)
    path = os.path.join(args.folder, 'filler.bin')
    with open(path, 'wb') as handle:
        left = size
        block = b'\0' * (1024 * 1024)
        while left > 0:
            handle.write(block[:min(left, len(block))])
            left -= min(left, len(block))
        handle.flush()
        os.fsync(handle.fileno())
    stats = os.statvfs(args.folder)
    emit({'file': path, 'bytes': size, 'free': stats.f_bavail * stats.f_frsize})


def _layer_members(tar):
    """Names of the layer members the archive's manifest.json lists (symlinks resolved)."""
    manifest = json.load(tar.extractfile('manifest.json'))
    names = []
    for entry in manifest:
        for name in entry['Layers']:
            member = tar.getmember(name)
            while member.issym():
                target = os.path.normpath(os.path.join(os.path.dirname(member.name), member.linkname))
                member = tar.getmember(target)
            names.append(member.name)
    return names


def cmd_damage(args):
    path = args.archive
    if args.kind == 'meta-tags':
        meta = path + '.meta.json'
        with open(meta) as handle:
            data = json.load(handle)
        was = data.get('tags')
        data['tags'] = ['pbfaults/edited-by-hand:1']
        with open(meta, 'w') as handle:
            json.dump(data, handle, indent=2)
        emit({'kind': 'meta-tags', 'file': meta, 'was': was})
        return
    if args.kind == 'sums-line':
        sums = os.path.join(os.path.dirname(path), 'SHA256SUMS')
        with open(sums) as handle:
            lines = handle.readlines()
        keep = [line for line in lines if not line.rstrip('\n').endswith('  ' + os.path.basename(path))]
        with open(sums, 'w') as handle:
            handle.writelines(keep)
        emit({'kind': 'sums-line', 'dropped': len(lines) - len(keep)})
        return
    if args.kind == 'truncate':
        size = os.path.getsize(path)
        with open(path, 'r+b') as handle:
            handle.truncate(size // 2)
        emit({'kind': 'truncate', 'bytes': size // 2, 'was': size})
        return
    with tarfile.open(path, 'r:') as tar:
        layers = _layer_members(tar)
        member = tar.getmember(layers[0])
        if args.kind == 'flip-layer':
            offset = member.offset_data + member.size // 2
        else:
            keep = [m for m in tar.getmembers() if m.name != member.name]
            out = path + '.rewrite'
            with tarfile.open(out, 'w', format=tarfile.PAX_FORMAT) as new:
                for item in keep:
                    new.addfile(item, tar.extractfile(item) if item.isfile() else None)
    if args.kind == 'flip-layer':
        with open(path, 'r+b') as handle:
            handle.seek(offset)
            byte = handle.read(1)
            handle.seek(offset)
            handle.write(bytes([byte[0] ^ 0xFF]))
        emit({'kind': 'flip-layer', 'member': member.name, 'offset': offset})
        return
    os.rename(out, path)
    emit({'kind': 'drop-blob', 'member': member.name})


def cmd_hostile(args):
    """A docker-archive-like tar with one member that points or climbs outside."""
    config = json.dumps({'architecture': 'amd64', 'os': 'linux',
                         'rootfs': {'type': 'layers', 'diff_ids': []}}).encode()
    config_name = hashlib.sha256(config).hexdigest() + '.json'
    manifest = json.dumps([{'Config': config_name, 'RepoTags': [args.tag],
                            'Layers': []}]).encode()
    with tarfile.open(args.archive, 'w', format=tarfile.GNU_FORMAT) as tar:
        for name, data in ((config_name, config), ('manifest.json', manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        payload = b'pwned\n'
        if args.kind in ('absolute', 'dotdot'):
            name = args.outside if args.kind == 'absolute' else '../' * 12 + args.outside.lstrip('/')
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        else:
            info = tarfile.TarInfo('escape')
            info.type = tarfile.SYMTYPE if args.kind == 'symlink' else tarfile.LNKTYPE
            info.linkname = args.outside
            tar.addfile(info)
            info = tarfile.TarInfo('escape')
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    emit({'kind': args.kind, 'archive': args.archive})


# ---------------------------------------------------------------- own engines

def _labkit(lab):
    sys.path.insert(0, os.path.dirname(os.path.abspath(lab)))
    import _labkit  # pylint: disable=import-error
    return _labkit


def _mounted_at(path):
    """True when something is mounted at path (also a bind mount of a folder onto itself)."""
    with open('/proc/self/mountinfo') as handle:
        return any(line.split()[4] == path for line in handle if len(line.split()) > 4)


def cmd_engine(args):
    """Start, stop or SIGKILL this test's own engine (never one of the shared lab engines)."""
    if args.name in ('d20', 'd26', 'd26c'):
        raise SystemExit('refusing to touch the shared lab engine %s' % args.name)
    kit = _labkit(args.lab)
    if args.action == 'start':
        with kit.lab_lock():
            host = kit.start_engine(args.name, version=args.version)
        emit({'host': host, 'pid': kit.engine_pid(args.name)})
    elif args.action == 'stop':
        with kit.lab_lock():
            stopped = kit.stop_engine(args.name)
            purged = []
            if args.purge:
                # a per-run engine: remove its data root, run folder, config and log too
                paths = kit._engine_paths(args.name)  # pylint: disable=protected-access
                for key in ('data_root', 'run'):
                    if _mounted_at(paths[key]):
                        # dockerd bind-mounts its data root onto itself and leaves that mount behind
                        subprocess.run(['umount', paths[key]], check=False)
                    if os.path.isdir(paths[key]):
                        shutil.rmtree(paths[key], ignore_errors=True)
                        purged.append(paths[key])
                        if os.path.isdir(paths[key]):
                            raise SystemExit('could not remove %s' % paths[key])
                for key in ('config', 'meta', 'log'):
                    if os.path.exists(paths[key]):
                        os.unlink(paths[key])
                        purged.append(paths[key])
        emit({'stopped': stopped, 'purged': purged})
    else:
        pid = kit.engine_pid(args.name)
        if pid:
            os.kill(pid, signal.SIGKILL)
        emit({'killed': pid})


# ---------------------------------------------------------------- faults during a save

PLAYBOOK = '''---
- hosts: localhost
  gather_facts: false
  become: "{{ faults_become_user is defined }}"
  become_user: "{{ faults_become_user | default(omit) }}"
  become_method: ansible.builtin.su
  tasks:
    - name: The umask the module runs with
      ansible.builtin.command:
        argv: ["{{ ansible_python_interpreter }}", -c, "import os; print('%04o' % os.umask(0))"]
      register: faults_umask
      changed_when: false

    - name: Run the module while a fault is caused (or as another user, with another umask)
      pibackup.docker_usb.docker_image_archive:
        path: "{{ faults_folder }}"
        state: "{{ faults_state | default('archived') }}"
        images: "{{ faults_images | default(omit) }}"
        docker_host: "{{ faults_host }}"
        force: "{{ faults_force | default(false) }}"
      register: faults_result
      ignore_errors: true

    - name: Keep the result for the driver
      become: false
      ansible.builtin.copy:
        content: "{{ faults_result | combine({'faults_umask': faults_umask.stdout}) | to_json }}"
        dest: "{{ faults_result_file }}"
        mode: "0644"
'''


def _partials(folder):
    found = []
    try:
        names = os.listdir(folder)
    except OSError:
        return found
    for name in names:
        if '.partial-' in name:
            try:
                found.append((name, os.path.getsize(os.path.join(folder, name))))
            except OSError:
                pass
    return found


def _fuse_daemons(mount_point):
    """Pids of mount.exfat-fuse / fusefat processes whose command line names mount_point."""
    pids = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/cmdline' % entry, 'rb') as handle:
                argv = [a.decode('utf-8', 'replace') for a in handle.read().split(b'\0') if a]
        except (IOError, OSError):
            continue
        if argv and ('exfat' in os.path.basename(argv[0]) or 'fusefat' in os.path.basename(argv[0])) \
                and mount_point.rstrip('/') in [a.rstrip('/') for a in argv]:
            pids.append(int(entry))
    return pids


def _processes():
    """{pid: (state, ppid, pgid)} of every process."""
    table = {}
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % entry) as handle:
                fields = handle.read().rsplit(') ', 1)[1].split()
        except (IOError, OSError, IndexError):
            continue
        table[int(entry)] = (fields[0], int(fields[1]), int(fields[2]))
    return table


def _process_groups(root):
    """Process groups of root and all its descendants: ansible-core 2.19 workers call setsid(), so the
    module runs in a group of its own, not in ansible-playbook's."""
    table = _processes()
    pids, groups = {root}, {root}
    grew = True
    while grew:
        grew = False
        for pid, (_state, ppid, pgid) in table.items():
            if ppid in pids and pid not in pids:
                pids.add(pid)
                groups.add(pgid)
                grew = True
    return groups


def _group_alive(pgid):
    return any(group == pgid and state != 'Z' for state, _ppid, group in _processes().values())


def cmd_mid_save(args):
    work = tempfile.mkdtemp(prefix='pbfaults-midsave-')
    playbook = os.path.join(work, 'save.yml')
    with open(playbook, 'w') as handle:
        handle.write(PLAYBOOK)
    extra = os.path.join(work, 'vars.json')
    with open(extra, 'w') as handle:
        json.dump({'faults_result_file': os.path.join(work, 'result.json'), 'faults_folder': args.folder,
                   'faults_images': args.images, 'faults_host': args.host, 'faults_force': True,
                   'ansible_python_interpreter': sys.executable}, handle)
    env = dict(os.environ)
    argv = [os.path.join(os.path.dirname(sys.executable), 'ansible-playbook'), '-i', 'localhost,', '-c', 'local',
            '-e', '@' + extra, playbook]
    log = open(os.path.join(work, 'out.txt'), 'wb')
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    seen, caused, deadline = None, None, time.time() + args.wait
    groups = [process.pid]
    while time.time() < deadline and process.poll() is None:
        grown = [(name, size) for name, size in _partials(args.folder) if size >= args.min_bytes]
        if grown:
            seen = grown[0]
            if args.fault == 'kill-ansible':
                groups = sorted(_process_groups(process.pid))
                for pgid in groups:
                    os.killpg(pgid, signal.SIGKILL)
                caused = 'SIGKILL to process groups %s (ansible-playbook, its workers, the module)' % groups
            elif args.fault == 'kill-engine':
                os.kill(args.engine_pid, signal.SIGKILL)
                caused = 'SIGKILL to the engine, pid %d' % args.engine_pid
            else:
                pids = _fuse_daemons(args.mount)
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                caused = 'SIGKILL to FUSE daemon(s) %s of %s' % (pids, args.mount)
            break
        time.sleep(0.005)
    try:
        rc = process.wait(timeout=args.wait)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        rc = process.wait()
    log.close()
    for dummy in range(100):  # wait until every killed process is gone
        if not any(_group_alive(pgid) for pgid in groups):
            break
        time.sleep(0.1)
    with open(os.path.join(work, 'out.txt'), 'rb') as handle:
        output = handle.read().decode('utf-8', 'replace')
    task = None
    try:
        with open(os.path.join(work, 'result.json')) as handle:
            task = json.load(handle)
    except (IOError, OSError, ValueError):
        pass
    shutil.rmtree(work, ignore_errors=True)
    emit({'caused': caused, 'partial_seen': seen, 'rc': rc, 'group_alive': any(_group_alive(pgid) for pgid in groups),
          'partials_after': _partials(args.folder) if os.path.isdir(args.folder) else None,
          'task': task, 'output_tail': output[-3000:] if task is None else None})


def cmd_playbook(args):
    """Run the module once through ansible-playbook with a given umask, optionally become_user (su)."""
    work = tempfile.mkdtemp(prefix='pbfaults-run-')
    os.chmod(work, 0o755)
    remote_tmp = os.path.join(work, 'tmp')
    os.mkdir(remote_tmp)
    os.chmod(remote_tmp, 0o1777)
    playbook = os.path.join(work, 'run.yml')
    with open(playbook, 'w') as handle:
        handle.write(PLAYBOOK)
    result_file = os.path.join(work, 'result.json')
    options = {'faults_result_file': result_file, 'faults_folder': args.folder, 'faults_host': args.host,
               'faults_state': args.state, 'faults_force': args.force,
               'ansible_python_interpreter': args.interpreter or sys.executable}
    if args.images:
        options['faults_images'] = args.images
    if args.become_user:
        options['faults_become_user'] = args.become_user
    extra = os.path.join(work, 'vars.json')
    with open(extra, 'w') as handle:
        json.dump(options, handle)
    env = dict(os.environ, ANSIBLE_REMOTE_TMP=remote_tmp, ANSIBLE_PIPELINING='1')
    argv = [os.path.join(os.path.dirname(sys.executable), 'ansible-playbook'), '-i', 'localhost,', '-c', 'local',
            '-e', '@' + extra, playbook]
    umask = int(args.umask, 8)
    done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                          preexec_fn=lambda: os.umask(umask), check=False)
    output = done.stdout.decode('utf-8', 'replace')
    task = None
    try:
        with open(result_file) as handle:
            task = json.load(handle)
    except (IOError, OSError, ValueError):
        pass
    shutil.rmtree(work, ignore_errors=True)
    emit({'rc': done.returncode, 'task': task, 'output_tail': output[-3000:] if task is None else None})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command')
    sub.required = True
    p = sub.add_parser('image')
    p.add_argument('--host', required=True)
    p.add_argument('--ref', required=True)
    p.add_argument('--mib', type=float, default=1)
    p.add_argument('--label', action='append')
    p.set_defaults(func=cmd_image)
    p = sub.add_parser('rmi')
    p.add_argument('--host', required=True)
    p.add_argument('refs', nargs='+')
    p.set_defaults(func=cmd_rmi)
    p = sub.add_parser('images')
    p.add_argument('--host', required=True)
    p.set_defaults(func=cmd_images)
    p = sub.add_parser('snapshot')
    p.add_argument('folder')
    p.set_defaults(func=cmd_snapshot)
    p = sub.add_parser('fill')
    p.add_argument('folder')
    p.add_argument('--leave', type=int, required=True)
    p.set_defaults(func=cmd_fill)
    p = sub.add_parser('damage')
    p.add_argument('kind', choices=['truncate', 'flip-layer', 'drop-blob', 'meta-tags', 'sums-line'])
    p.add_argument('archive')
    p.set_defaults(func=cmd_damage)
    p = sub.add_parser('hostile')
    p.add_argument('kind', choices=['absolute', 'dotdot', 'symlink', 'hardlink'])
    p.add_argument('archive')
    p.add_argument('--outside', required=True)
    p.add_argument('--tag', default='pbfaults/hostile:1')
    p.set_defaults(func=cmd_hostile)
    p = sub.add_parser('playbook')
    p.add_argument('--state', default='archived', choices=['archived', 'loaded', 'verified'])
    p.add_argument('--host', required=True)
    p.add_argument('--folder', required=True)
    p.add_argument('--images', nargs='*')
    p.add_argument('--force', action='store_true')
    p.add_argument('--umask', default='022')
    p.add_argument('--become-user')
    p.add_argument('--interpreter', help='Python of the module (default: this one)')
    p.set_defaults(func=cmd_playbook)
    p = sub.add_parser('engine')
    p.add_argument('action', choices=['start', 'stop', 'kill'])
    p.add_argument('name')
    p.add_argument('--lab', required=True, help='path of tests/lab/lab.py')
    p.add_argument('--version', default='20', choices=['20', '26'])
    p.add_argument('--purge', action='store_true', help='stop: also remove the engine\'s data root and files')
    p.set_defaults(func=cmd_engine)
    p = sub.add_parser('mid-save')
    p.add_argument('--fault', required=True, choices=['kill-ansible', 'kill-fuse', 'kill-engine'])
    p.add_argument('--engine-pid', type=int, help='pid of the engine (kill-engine)')
    p.add_argument('--host', required=True)
    p.add_argument('--folder', required=True)
    p.add_argument('--images', nargs='+', required=True)
    p.add_argument('--mount', help='mount point of the stick (kill-fuse)')
    p.add_argument('--min-bytes', type=int, default=1024 * 1024)
    p.add_argument('--wait', type=float, default=180)
    p.set_defaults(func=cmd_mid_save)
    args = parser.parse_args()
    args.func(args)


if __name__ == '__main__':
    main()
