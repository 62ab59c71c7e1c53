#!/usr/bin/env python
"""The demo behind `make demo`: back up the lab's sample images, remove them, restore them.

Runs after `lab.py up` (the Makefile's `lab` target): engine d20 and the demo stick
(label PBLAB-DEMO) of the lab. Steps:

1. write a lab inventory (localhost over the local connection, the project's venv Python,
   the d20 engine, the demo stick, the sample images only);
2. record the tags and IMAGE ID of each sample image;
3. run the backup playbook, then run it again and require changed=0;
4. remove the sample images, only them, by their exact references (never a prune);
5. run the restore playbook;
6. print each image's tags and IMAGE ID before and after, marked equal or DIFFERENT.

Exits non-zero unless every image came back equal and the second backup changed nothing.
Touches no image and no stick that is not the lab's own. Commands are argument lists.
"""
from __future__ import absolute_import, division, print_function

import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import _labkit  # noqa: E402
import _labsamples  # noqa: E402
from _labkit import LabError  # noqa: E402

ENGINE = 'd20'
STICK_NAME = 'demo'
STICK_LABEL = 'PBLAB-DEMO'
MOUNT_PATH = '/mnt/pibackup-lab/demo'
INVENTORY = os.path.join(HERE, 'inventory', 'demo.ini')
REPORT_DIR = os.path.join(REPO, 'reports', 'demo')
RECAP = re.compile(r'^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)')


def venv_python():
    """The project's venv Python, found from the repository path (not from PATH)."""
    path = os.path.join(REPO, '.venv', 'bin', 'python')
    if not os.path.exists(path):
        raise LabError('no virtual environment at %s: run `make venv` first' % path)
    return path


def write_inventory(references):
    lines = [
        '# Written by tests/lab/demo.py on every run: the lab host for `make demo`.',
        '[demo]',
        'localhost ansible_connection=local',
        '',
        '[demo:vars]',
        'ansible_python_interpreter=%s' % venv_python(),
        'backup_docker_host=%s' % _labkit.docker_host(ENGINE),
        'restore_docker_host=%s' % _labkit.docker_host(ENGINE),
        'backup_label=%s' % STICK_LABEL,
        'restore_label=%s' % STICK_LABEL,
        'backup_mount_path=%s' % MOUNT_PATH,
        'restore_mount_path=%s' % MOUNT_PATH,
        # A [group:vars] value is read as a Python literal: this is a list. Sample images only.
        'backup_images=%s' % json.dumps(references),
        'restore_images=%s' % json.dumps(references),
        'report_dir=%s' % REPORT_DIR,
        '',
    ]
    os.makedirs(os.path.dirname(INVENTORY), exist_ok=True)
    with open(INVENTORY, 'w') as handle:
        handle.write('\n'.join(lines))
    print('demo: inventory written to %s' % INVENTORY)


def inspect(reference):
    """(image ID, sorted tags) of the image a reference names, or None when it is absent."""
    result = _labkit.docker(ENGINE, ['image', 'inspect', '--format', '{{json .}}', reference],
                            check=False)
    if result.returncode != 0:
        return None
    data = json.loads(result.stdout.decode('utf-8'))
    return data['Id'], sorted(data.get('RepoTags') or [])


def snapshot(references):
    return dict((ref, inspect(ref)) for ref in references)


def playbook_env():
    env = dict(os.environ)
    env.setdefault('ANSIBLE_COLLECTIONS_PATH', os.path.join(REPO, 'build', 'collections'))
    env['ANSIBLE_FORCE_COLOR'] = '0'
    env['ANSIBLE_NOCOLOR'] = '1'
    return env


def run_playbook(name):
    """Run pibackup.docker_usb.<name>, echo its output, return the recap of localhost."""
    argv = [os.path.join(os.path.dirname(venv_python()), 'ansible-playbook'),
            '-i', INVENTORY, 'pibackup.docker_usb.%s' % name]
    print('\ndemo: running %s' % ' '.join(argv))
    sys.stdout.flush()
    proc = subprocess.Popen(argv, cwd=REPO, env=playbook_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    recap = None
    for raw in proc.stdout:
        line = raw.decode('utf-8', 'replace')
        sys.stdout.write(line)
        match = RECAP.match(line)
        if match and match.group(1) == 'localhost':
            recap = dict(ok=int(match.group(2)), changed=int(match.group(3)),
                         unreachable=int(match.group(4)), failed=int(match.group(5)))
    proc.wait()
    sys.stdout.flush()
    if proc.returncode != 0 or recap is None:
        raise LabError('the %s playbook failed (exit %d); its output is above, the run report is '
                       'in %s' % (name, proc.returncode, REPORT_DIR))
    return recap


def remove_samples(references):
    """Remove the sample images by their exact references: nothing else, never a prune."""
    present = [ref for ref in references if inspect(ref) is not None]
    if present:
        print('\ndemo: removing the sample images (only them): %s' % ' '.join(present))
        _labkit.docker(ENGINE, ['image', 'rm'] + present)
    left = [ref for ref in references if inspect(ref) is not None]
    if left:
        raise LabError('the sample images are still there after removal: %s' % ' '.join(left))


def table(references, before, after):
    """Rows per image (grouped by the IMAGE ID before) and whether all are equal."""
    rows = []
    seen = set()
    all_equal = True
    for ref in references:
        image_id, tags = before[ref]
        if image_id in seen:
            continue
        seen.add(image_id)
        now = after.get(ref)
        id_after, tags_after = now if now else ('(missing)', [])
        equal = now is not None and id_after == image_id and tags_after == tags
        all_equal = all_equal and equal
        rows.append((ref, ', '.join(tags), ', '.join(tags_after) or '(none)',
                     short(image_id), short(id_after), 'equal' if equal else 'DIFFERENT'))
    headers = ('image', 'tags before', 'tags after', 'IMAGE ID before', 'IMAGE ID after', 'result')
    widths = [max(len(str(row[i])) for row in rows + [headers]) for i in range(len(headers))]
    print()
    for row in [headers, tuple('-' * w for w in widths)] + rows:
        print('  '.join(str(cell).ljust(width) for cell, width in zip(row, widths)))
    return all_equal


def short(image_id):
    return image_id[7:19] if image_id.startswith('sha256:') else image_id


def main():
    _labkit.require_root()
    if not _labkit.engine_answers(ENGINE):
        raise LabError('engine %s does not answer at %s: run `make lab` (tests/lab/lab.py up) first'
                       % (ENGINE, _labkit.docker_host(ENGINE)))
    if not any(line.split()[:1] == [STICK_NAME] for line in _list_sticks()):
        raise LabError('the demo stick (%s, label %s) is missing: run `make lab` first'
                       % (STICK_NAME, STICK_LABEL))
    references = _labsamples.sample_references()
    before = snapshot(references)
    missing = [ref for ref, state in before.items() if state is None]
    if missing:
        raise LabError('sample images missing on %s: %s; run `make lab` to create them'
                       % (ENGINE, ' '.join(missing)))
    write_inventory(references)

    first = run_playbook('backup')
    second = run_playbook('backup')
    print('\ndemo: second backup: changed=%d (must be 0)' % second['changed'])

    remove_samples(references)
    restored = run_playbook('restore')
    after = snapshot(references)

    all_equal = table(references, before, after)
    print('\ndemo: first backup changed=%d, second backup changed=%d, restore changed=%d'
          % (first['changed'], second['changed'], restored['changed']))
    print('demo: run reports in %s' % REPORT_DIR)
    problems = []
    if second['changed'] != 0:
        problems.append('the second backup reported changed=%d, not 0' % second['changed'])
    if not all_equal:
        problems.append('some restored images differ from the originals (see the table)')
    if problems:
        print('demo: FAILED: %s' % '; '.join(problems))
        return 1
    print('demo: OK: every sample image came back with the same tags and the same IMAGE ID')
    return 0


def _list_sticks():
    return _labkit.out([sys.executable, os.path.join(HERE, 'lab.py'), 'stick', 'list']).splitlines()


if __name__ == '__main__':
    try:
        sys.exit(main())
    except LabError as exc:
        print('demo: FAILED: %s' % exc, file=sys.stderr)
        sys.exit(1)
