# Private to the lab (tests/lab): a real end-to-end test of lab.py in a separate state folder.
"""Run the whole lab cycle for real, beside the team's lab, and check what it promises.

State goes to /var/lib/pibackup-lab-selftest and /run/plst, the engines are named st20,
st26 and st26c, the demo stick is labelled PBLAB-SELFT: nothing of the real lab
(d20/d26/d26c, the PBLAB-DEMO stick) is touched. Steps, each checked:

1. cold `up` (downloads Docker 26 into the separate folder), `check` passes;
2. warm `up` is quick and changes nothing (same image IDs, same loop device);
3. a mount.exfat-fuse daemon of the stick killed: its dead mount is gone after `up`;
4. an engine killed hard (as when a session ends): `up` restarts it, samples kept;
5. `down` stops every engine and detaches the stick; `check` then fails.

Everything is removed at the end, also on failure. Exit code 0 when every step held.
Run as root: python3 tests/lab/_labselftest.py
"""
from __future__ import absolute_import, division, print_function

import os
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _labkit as kit  # noqa: E402
import _labsamples  # noqa: E402
import lab  # noqa: E402

STATE = '/var/lib/pibackup-lab-selftest'
RUN = '/run/plst'
MOUNT_POINT = os.path.join(RUN, 'mnt')
ENGINES = (('st20', '20', False), ('st26', '26', False), ('st26c', '26', True))
LABEL = 'PBLAB-SELFT'


def redirect_lab():
    kit.STATE = STATE
    kit.RUN = RUN
    kit.LOGS = os.path.join(STATE, 'logs')
    kit.STICKS = os.path.join(STATE, 'sticks')
    kit.ENGINES = os.path.join(STATE, 'engines')
    kit.CONFIGS = os.path.join(STATE, 'config')
    kit.DOCKER26 = os.path.join(STATE, 'docker26')
    kit.DOCKER26_ROOT = os.path.join(kit.DOCKER26, 'root')
    kit.DOCKER26_STAMP = os.path.join(kit.DOCKER26, 'installed.json')
    kit.LAB_ENGINES = ENGINES
    lab.ENGINE_TABLE = dict((name, (version, store)) for name, version, store in ENGINES)
    lab.DEMO_STICK = dict(lab.DEMO_STICK, label=LABEL)


def lab_cli(*argv):
    started = time.time()
    code = lab.main(list(argv))
    seconds = time.time() - started
    print('selftest: lab.py %s -> exit %s in %.1fs' % (' '.join(argv), code, seconds))
    return code, seconds


def expect(condition, message):
    if not condition:
        raise AssertionError(message)
    print('selftest: ok - %s' % message)


def snapshot():
    ids = dict((name, dict(_labsamples.list_samples(name))) for name, _v, _s in ENGINES)
    devices = kit.loop_devices_of(kit.stick_file('demo'))
    return ids, devices


def demo_device():
    devices = kit.loop_devices_of(kit.stick_file('demo'))
    return devices[0][0] if devices else None


def main():
    kit.require_root()
    redirect_lab()
    try:
        code, cold = lab_cli('up')
        expect(code == 0, 'cold up succeeds (%.1fs)' % cold)
        expect(lab_cli('check')[0] == 0, 'check passes after up')
        before = snapshot()
        code, warm = lab_cli('up')
        expect(code == 0 and warm < 10, 'warm up succeeds quickly (%.1fs)' % warm)
        expect(snapshot() == before, 'warm up changes nothing (image IDs, loop device)')

        os.makedirs(MOUNT_POINT)
        subprocess.run(['mount.exfat-fuse', demo_device(), MOUNT_POINT], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        daemons = [pid for pid, argv in _daemons() if MOUNT_POINT in argv]
        expect(len(daemons) == 1, 'stick mounted by one mount.exfat-fuse daemon')
        os.kill(daemons[0], signal.SIGKILL)
        time.sleep(0.5)
        expect(kit.mount_is_dead(MOUNT_POINT), 'killed daemon leaves a dead mount')
        expect(lab_cli('up')[0] == 0, 'up after the daemon died')
        expect(not [m for m in kit.mounts() if m['mount_point'] == MOUNT_POINT],
               'the dead mount is gone')

        pid = kit.engine_pid('st26c')
        os.kill(pid, signal.SIGKILL)
        time.sleep(1)
        expect(not kit.engine_answers('st26c'), 'killed engine st26c does not answer')
        expect(lab_cli('up')[0] == 0, 'up after the engine died')
        expect(kit.engine_pid('st26c') not in (None, pid), 'st26c runs again (new pid)')
        expect(snapshot() == before, 'samples and stick survive the restart unchanged')

        expect(lab_cli('down')[0] == 0, 'down succeeds')
        expect(not any(kit.engine_answers(n) for n, _v, _s in ENGINES), 'no engine answers')
        expect(not kit.loop_devices_of(kit.stick_file('demo')), 'the stick is detached')
        expect(lab_cli('check')[0] == 1, 'check fails when the lab is down')
    finally:
        cleanup()
    print('selftest: passed')
    return 0


def _daemons():
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            argv = kit._cmdline(int(entry))
            if argv and os.path.basename(argv[0]) == 'mount.exfat-fuse':
                yield int(entry), argv


def cleanup():
    for entry in reversed(kit.mounts()):
        if entry['mount_point'].startswith((STATE + '/', RUN + '/')) or \
                entry['mount_point'] in (STATE, RUN):
            subprocess.run(['umount', entry['mount_point']], check=False)
    for name, _v, _s in ENGINES:
        try:
            kit.stop_engine(name)
        except kit.LabError as exc:
            print('selftest: cleanup: %s' % exc)
    kit.remove_stick('demo', delete=True)
    for entry in reversed(kit.mounts()):  # data roots dockerd bind-mounted onto themselves
        if entry['mount_point'].startswith((STATE + '/', RUN + '/')):
            subprocess.run(['umount', entry['mount_point']], check=False)
    for path in (STATE, RUN):
        shutil.rmtree(path, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
