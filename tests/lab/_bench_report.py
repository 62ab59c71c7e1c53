"""Turning the benchmark's measurements into a table, targets, JSON and a chart
(private to tests/lab/bench.py).

Every ratio is taken between lines of the SAME run: wall-clock limits are never
asserted, only ratios are compared with the targets of issue 8.
"""
import json
import os
import statistics

MB = 1000 * 1000
MIB = 1024 * 1024

# Lines of the table, in order: key, label, what it is compared with.
LINES = (
    ('physical', 'physical limit: dd to the stick, conv=fsync'),
    ('save_sync', 'docker save -o + sync (no hashing)'),
    ('manual', 'manual flow: docker save -o, sha256sum, sync'),
    ('backup', 'module archived, default verification (playbook wall)'),
    ('backup_net', '  the same minus the no-op task run'),
    ('backup_full', 'module archived, verify read-back (playbook wall)'),
    ('backup_full_net', '  the same minus the no-op task run'),
    ('rerun', 'module archived again, nothing changed'),
    ('noop', 'no-op task run the same way (debug)'),
    ('noop_module', 'no-op module run the same way (ping)'),
    ('load_plain', 'restore: docker load -i of each archive'),
    ('load_module', 'restore: module loaded with pre-load check (wall)'),
    ('load_module_net', '  the same minus the no-op task run'),
    ('gzip', 'module archived, compression gzip (wall)'),
    ('zstd', 'module archived, compression zstd (wall)'),
)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(samples):
    """{key: [seconds per rep]} -> {key: {'runs': [...], 'median': s}}"""
    return dict((key, {'runs': [round(v, 3) for v in runs], 'median': round(median(runs), 3)})
                for key, runs in samples.items() if runs)


def ratio(value, base):
    if value is None or not base:
        return None
    return value / base


def table(summary, nbytes, stick_bytes):
    """Rows: label, median seconds, MB/s of the set, x manual flow, x physical limit, bytes."""
    manual = summary.get('manual', {}).get('median')
    physical = summary.get('physical', {}).get('median')
    rows = []
    for key, label in LINES:
        if key not in summary:
            continue
        seconds = summary[key]['median']
        moves_data = key not in ('rerun', 'noop', 'noop_module')
        rows.append({
            'key': key,
            'label': label,
            'seconds': seconds,
            'mb_per_s': (nbytes / MB / seconds) if moves_data and seconds > 0 else None,
            'x_manual': ratio(seconds, manual),
            'x_physical': ratio(seconds, physical),
            'bytes': stick_bytes.get(key),
        })
    return rows


def format_table(rows):
    def cell(value, fmt):
        return '-' if value is None else fmt % value
    head = '%-56s %9s %8s %9s %9s %12s' % ('', 'seconds', 'MB/s', 'x manual', 'x limit', 'bytes')
    out = [head, '-' * len(head)]
    for row in rows:
        out.append('%-56s %9s %8s %9s %9s %12s' % (
            row['label'][:56], cell(row['seconds'], '%.2f'), cell(row['mb_per_s'], '%.0f'),
            cell(row['x_manual'], '%.2f'), cell(row['x_physical'], '%.2f'),
            cell(row['bytes'], '%d')))
    return '\n'.join(out)


def target(name, value, limit, unit, detail, higher_is_worse=True):
    if value is None:
        verdict = 'SKIP'
    elif limit is None:
        verdict = 'INFO'
    elif higher_is_worse:
        verdict = 'PASS' if value <= limit else 'MISS'
    else:
        verdict = 'PASS' if value >= limit else 'MISS'
    return {'name': name, 'value': None if value is None else round(value, 4), 'limit': limit,
            'unit': unit, 'verdict': verdict, 'detail': detail}


def paired(summary, key, base, how='ratio'):
    """Median over reps of key/base (or key-base) taken within the same rep, minutes apart.

    On a shared machine the load drifts between reps; a ratio of two medians
    would mix reps, a median of per-rep ratios does not.
    """
    runs = (summary.get(key) or {}).get('runs')
    bases = (summary.get(base) or {}).get('runs')
    if not runs or not bases or len(runs) != len(bases):
        return None
    if how == 'ratio':
        return median([value / reference for value, reference in zip(runs, bases) if reference])
    return median([value - reference for value, reference in zip(runs, bases)])


def targets(summary, memory, probes, nbytes, scale=None, fleet=None):
    """The targets of issue 8 point 2 and 3, each PASS, MISS or SKIP (not measured)."""
    out = []
    out.append(target(
        'backup <= 1.05 x docker save -o', paired(summary, 'backup_net', 'save_sync'), 1.05, 'x',
        'per rep: module archived (default verification) minus the no-op task run, over docker save -o + sync'))
    out.append(target('backup verify=full (own line)', paired(summary, 'backup_full_net', 'save_sync'), None, 'x',
                      'per rep: module archived with read-back minus the no-op task run, over docker save -o + sync'))
    extra = paired(summary, 'rerun', 'noop', how='difference')
    out.append(target('no-change rerun <= no-op + 1 s', extra, 1.0, 's',
                      'per rep: second archived run minus a debug task run the same way'))
    extra = paired(summary, 'rerun', 'noop_module', how='difference')
    out.append(target('no-change rerun <= no-op module + 1 s', extra, 1.0, 's',
                      'per rep: second archived run minus a ping module task run the same way'))
    read = (probes.get('rerun') or {}).get('rchar')
    base = (probes.get('noop_module') or {}).get('rchar')
    extra_read = None if read is None or base is None else max(0, read - base) / float(MIB)
    out.append(target('no-change rerun reads no image data', extra_read, 16, 'MiB',
                      'bytes the module process read (rchar) beyond what a ping module reads; '
                      'reading any archive of the default set (>= 300 MB each) would exceed the limit'))
    out.append(target('restore <= 1.10 x docker load -i', paired(summary, 'load_module_net', 'load_plain'), 1.10, 'x',
                      'per rep: module loaded (incl. pre-load check) minus the no-op task run, over docker load -i'))
    for state in ('archived', 'loaded'):
        small = (memory.get(state) or {}).get('small')
        big = (memory.get(state) or {}).get('big')
        growth = None
        if small and big:
            growth = (big['maxrss_kib'] - small['maxrss_kib']) / 1024.0
        out.append(target('memory flat (%s)' % state, growth, 32, 'MiB',
                          'peak RSS of the module process, big set minus small set'))
    if scale and len(scale) >= 3:
        # Marginal seconds per GB between consecutive sizes: the fixed cost of a run
        # (Ansible, engine round trips) cancels out, what is left is time per byte.
        points = [p for p in scale if p.get('module_seconds') is not None]
        rates = [(b['module_seconds'] - a['module_seconds']) / ((b['bytes'] - a['bytes']) / 1e9)
                 for a, b in zip(points, points[1:]) if b['bytes'] > a['bytes']]
        spread = (max(rates) / min(rates)) if len(rates) > 1 and min(rates) > 0 else None
        out.append(target('scale linear (marginal s/GB spread)', spread, 1.20, 'x',
                          'largest over smallest marginal seconds per GB of module archived between sizes'))
    if fleet:
        out.append(target('fleet: 3 hosts <= 1.5 x one host', fleet.get('ratio'), 1.5, 'x',
                          'backup playbook wall time, 3 hosts in parallel over one host'))
    return out


def format_targets(items):
    lines = []
    for item in items:
        value = '-' if item['value'] is None else '%.3f' % item['value']
        lines.append('%-4s %-40s %10s %-12s (limit %s) %s' % (
            item['verdict'], item['name'], value, item['unit'], item['limit'], item['detail']))
    return '\n'.join(lines)


def write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
        handle.write('\n')
    return path


def chart(path, rows, compression, scale, title):
    """A PNG with the table's medians, the compression trade-off and, if run, the scale."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    panels = 2 + (1 if scale else 0)
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 5.5))
    ax = axes[0]
    shown = [row for row in rows if not row['label'].startswith('  ')]
    labels = [row['label'].replace(' (playbook wall)', '').replace(' (wall)', '')[:48] for row in shown]
    seconds = [row['seconds'] for row in shown]
    colors = ['#999999' if row['key'] in ('physical', 'save_sync', 'manual', 'load_plain', 'noop', 'noop_module')
              else '#2a6fb0' for row in shown]
    ax.barh(range(len(shown)), seconds, color=colors)
    ax.set_yticks(range(len(shown)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel('median wall seconds (grey: baselines, blue: this collection)')
    ax.set_title(title, fontsize=9)
    for index, value in enumerate(seconds):
        ax.text(value, index, ' %.1f' % value, va='center', fontsize=7)

    ax = axes[1]
    names = [item['compression'] for item in compression]
    if names:
        ax.bar([i - 0.2 for i in range(len(names))], [item['seconds'] for item in compression],
               width=0.4, color='#2a6fb0', label='seconds')
        ax.set_ylabel('median wall seconds')
        ax2 = ax.twinx()
        ax2.bar([i + 0.2 for i in range(len(names))], [item['bytes'] / MB for item in compression],
                width=0.4, color='#e08a2c', label='MB on the stick')
        ax2.set_ylabel('MB on the stick')
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names)
        ax.set_title('compression: time (blue) and bytes on the stick (orange)', fontsize=9)
    else:
        ax.set_axis_off()

    if scale:
        ax = axes[2]
        sizes = [point['set_mb'] for point in scale]
        ax.plot(sizes, [point['module_seconds'] for point in scale], 'o-', color='#2a6fb0',
                label='module archived')
        ax.plot(sizes, [point['save_sync_seconds'] for point in scale], 's--', color='#999999',
                label='docker save -o + sync')
        ax.set_xlabel('set size (MB written)')
        ax.set_ylabel('median wall seconds')
        ax.set_title('scale: time against bytes', fontsize=9)
        ax.legend(fontsize=8)
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(data):
    """The table, scale and targets of one run as Markdown (docs/performance.md pastes it)."""
    def cell(value, fmt):
        return '-' if value is None else fmt % value
    out = ['| flow | median s | MB/s | x manual flow | x physical limit | bytes on stick |',
           '| --- | ---: | ---: | ---: | ---: | ---: |']
    for row in data['table']:
        label = row['label'].strip()
        if row['label'].startswith('  '):
            label = '&nbsp;&nbsp;' + label
        out.append('| %s | %s | %s | %s | %s | %s |' % (
            label, cell(row['seconds'], '%.2f'), cell(row['mb_per_s'], '%.0f'), cell(row['x_manual'], '%.2f'),
            cell(row['x_physical'], '%.2f'), cell(row['bytes'], '%d')))
    if data.get('scale'):
        out += ['', '| set size MB | docker save -o + sync s/GB | module archived (net) s/GB |',
                '| ---: | ---: | ---: |']
        for point in data['scale']:
            out.append('| %.0f | %.2f | %s |' % (point['set_mb'], point['save_sync_s_per_gb'],
                                                 cell(point.get('module_s_per_gb'), '%.2f')))
    out += ['', '| target | value | limit | verdict |', '| --- | ---: | ---: | --- |']
    for item in data['targets']:
        out.append('| %s | %s %s | %s | %s |' % (item['name'], cell(item['value'], '%.3f'), item['unit'],
                                                 item['limit'], item['verdict']))
    return '\n'.join(out) + '\n'
