#!/usr/bin/env python
"""Profile docker_image_archive in-process (private to tests/lab/bench.py --profile).

Runs the module's main() with the given arguments under cProfile, directly in
Python against a lab engine (no Ansible around it), so the profile shows where
the module's own time goes. Every thread the module starts is profiled too
(one cProfile per thread, merged). Prints the top functions by own time and by
cumulative time; writes the raw stats next to --out when asked.

  python tests/lab/_bench_profile.py --collections DIR --args '{"state": "archived", ...}'
"""
import argparse
import cProfile
import io
import json
import pstats
import sys
import threading
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--collections', required=True, help='folder holding ansible_collections/')
    parser.add_argument('--args', required=True, help='module arguments as JSON')
    parser.add_argument('--out', help='write the merged pstats file here')
    parser.add_argument('--top', type=int, default=18)
    options = parser.parse_args()
    sys.path.insert(0, options.collections)
    from ansible.module_utils.testing import patch_module_args
    from ansible_collections.pibackup.docker_usb.plugins.modules import docker_image_archive

    profiles = []
    lock = threading.Lock()

    def thread_profile(frame, event, arg):
        # First call in a new thread: switch that thread to its own cProfile.
        profile = cProfile.Profile()
        with lock:
            profiles.append(profile)
        sys.setprofile(None)
        profile.enable()

    main_profile = cProfile.Profile()
    threading.setprofile(thread_profile)
    captured = io.StringIO()
    real_stdout = sys.stdout
    start = time.monotonic()
    code = 0
    with patch_module_args(json.loads(options.args)):
        sys.stdout = captured
        main_profile.enable()
        try:
            docker_image_archive.main()
        except SystemExit as exc:
            code = exc.code or 0
        finally:
            main_profile.disable()
            sys.stdout = real_stdout
    wall = time.monotonic() - start
    threading.setprofile(None)
    for profile in profiles:
        profile.disable()

    stats = pstats.Stats(main_profile)
    for profile in profiles:
        try:
            stats.add(profile)
        except TypeError:
            pass  # a thread that never ran a profiled call
    try:
        result = json.loads(captured.getvalue())
    except ValueError:
        result = {'raw': captured.getvalue()[-2000:]}
    print('module wall %.2fs, exit %s, changed=%s, %s' % (
        wall, code, result.get('changed'), result.get('msg', '')))
    for item in result.get('images', []):
        print('  %s %s %s bytes in %ss' % (item.get('action'), item.get('file'), item.get('bytes'),
                                           item.get('seconds')))
    for order in ('tottime', 'cumulative'):
        text = io.StringIO()
        stats.stream = text
        stats.sort_stats(order).print_stats(options.top)
        lines = text.getvalue().splitlines()
        start_at = next((i for i, line in enumerate(lines) if line.strip().startswith('ncalls')), 0)
        print('--- top %d by %s (all threads) ---' % (options.top, order))
        print('\n'.join(lines[start_at:start_at + options.top + 1]))
    if options.out:
        stats.dump_stats(options.out)
    return 0 if code == 0 else 1


if __name__ == '__main__':
    sys.exit(main())
