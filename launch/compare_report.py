"""The report of :mod:`launch.compare`: rows from ``comparison.json``, the Markdown table and the
bar chart (matplotlib). No JAX: it reads the record only, so a partial comparison can be
reported at any time (``python -m launch.compare_report --workdir=work/compare``)."""

from __future__ import annotations

import os
import platform
from typing import Any, Mapping

PROTOCOLS = (('knn', 'k-NN'), ('linprobe', 'linear probe'), ('finetune', 'fine-tune'))
"""Stage key -> column title, in the order of the table and of the bars."""


def machine() -> str:
    """One line naming this machine: CPU model (``/proc/cpuinfo``), cores, Python."""
    model = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            model = next((ln.split(':', 1)[1].strip() for ln in f if ln.startswith('model name')), model)
    except OSError:
        pass
    return f'{model}, {os.cpu_count()} cores, Python {platform.python_version()}'


def _top1(rec: Mapping[str, Any] | None) -> float | None:
    return rec.get('top1') if rec and rec.get('done') and not rec.get('skipped') else None


def rows(data: Mapping[str, Any]) -> list[dict]:
    """Table rows from a ``comparison.json`` record: one per pair that started (method, backbone,
    pre-training steps and minutes, top-1 per protocol or None), then one ``scratch`` row per
    backbone with its fine-tune top-1. Method and backbone are those recorded on the pair's
    pre-training stage."""
    stages = data.get('stages', {})
    out, backbones = [], []
    for name in data.get('settings', {}).get('pairs', []):
        pre = stages.get(f'{name}/pretrain')
        if pre is None:
            continue
        ft = stages.get(f'{name}/finetune', {})
        backbone = _backbone(ft, stages, name)
        row = {'pair': name, 'method': pre.get('method', name), 'backbone': backbone,
               'scratch': False, 'pretrain_steps': pre.get('steps'), 'skipped': pre.get('skipped'),
               'pretrain_minutes': round(pre.get('wall_seconds', 0.0) / 60, 1),
               'wall_minutes': _minutes(pre, ft)}
        for key, _ in PROTOCOLS:
            row[key] = _top1(stages.get(f'{name}/{key}'))
        out.append(row)
        if backbone and backbone not in backbones:
            backbones.append(backbone)
    for backbone in backbones:
        rec = stages.get(f'scratch/{backbone}')
        if rec is None:
            continue
        out.append({'pair': f'scratch/{backbone}', 'method': 'from scratch', 'backbone': backbone, 'scratch': True,
                    'pretrain_steps': 0, 'skipped': None, 'pretrain_minutes': 0.0, 'knn': None, 'linprobe': None,
                    'finetune': _top1(rec), 'steps': rec.get('steps'),
                    'wall_minutes': _minutes(rec)})
    return out


def _minutes(*recs: Mapping[str, Any] | None) -> float | None:
    """Measured minutes of the training stages that the equal-time comparison sets side by side
    (pre-training + fine-tuning of a pair, or the scratch run): the sum of their ``wall_seconds``
    (whole processes: start-up, compilation, checkpoints and evaluation included, calibration
    runs not), or ``None`` until all of them are done."""
    if not all(r and r.get('done') and not r.get('skipped') for r in recs):
        return None
    return round(sum(r.get('wall_seconds', 0.0) for r in recs) / 60, 1)


def _backbone(ft: Mapping[str, Any], stages: Mapping[str, Any], name: str) -> str | None:
    """The backbone of pair ``name``: recorded on its fine-tuning stage, else ``None``."""
    return ft.get('backbone') or stages.get(f'{name}/pretrain', {}).get('backbone')


def markdown(data: Mapping[str, Any], table: list[dict]) -> str:
    """The Markdown table (top-1 %, '—' where a stage has not run) and a line of settings."""
    s = data.get('settings', {})
    m = s.get('minutes', {})
    fmt = lambda v: '—' if v is None else f'{v:.2f}'
    lines = [f"Top-1 (%) on {s.get('dataset', '?')} test; pre-training {m.get('pretrain', '?'):g} min, "
             f"linear probe {m.get('probe', 0):g} min, fine-tuning {m.get('finetune', 0):g} min, from scratch "
             f"{m.get('scratch', 0):g} min per backbone; k-NN k={s.get('knn', {}).get('k')}, "
             f"T={s.get('knn', {}).get('temperature')}; {s.get('machine', '')}.", '',
             '| method | backbone | pre-train steps | ' + ' | '.join(t for _, t in PROTOCOLS)
             + ' | pre-train + fine-tune wall (min) |',
             '|---|---|---:|' + '---:|' * len(PROTOCOLS) + '---:|']
    for r in table:
        steps = 'does not fit: ' + r['skipped'] if r['skipped'] else str(r['pretrain_steps'])
        if r['scratch']:
            steps = f"0 ({r.get('steps')} supervised steps)"
        wall = '—' if r['wall_minutes'] is None else f"{r['wall_minutes']:.1f}"
        lines.append(f"| {r['method']} | {r['backbone'] or '?'} | {steps} | "
                     + ' | '.join(fmt(r[k]) for k, _ in PROTOCOLS) + f' | {wall} |')
    return '\n'.join(lines) + '\n'


def chart(table: list[dict], path: str, title: str) -> None:
    """Grouped bars, one group per pair: k-NN, linear probe and fine-tune top-1, then the pair's
    backbone from scratch (hatched) beside them; a scratch row whose backbone has no pair gets a
    group of its own. Missing values are left out. Written as PNG to ``path``."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np

    scratch = {r['backbone']: r for r in table if r['scratch']}
    groups = [(r, scratch.get(r['backbone'])) for r in table if not r['scratch']]
    paired = {r['backbone'] for r, _ in groups}
    groups += [(None, r) for r in table if r['scratch'] and r['backbone'] not in paired]
    bars = [(key, title_j, color) for (key, title_j), color in zip(PROTOCOLS, ('#4c72b0', '#dd8452', '#55a868'))]
    width, x = 0.2, np.arange(len(groups))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.9 * len(groups)), 4.2))
    labelled = set()
    for i, (pair, base) in enumerate(groups):
        values = [(pair[key] if pair else None, title_j, color, False) for key, title_j, color in bars]
        values.append((base['finetune'] if base else None, 'from scratch, equal time', '#55a868', True))
        for j, (v, name, color, hatched) in enumerate(values):
            if v is None:
                continue
            bar = ax.bar(x[i] + (j - 1.5) * width, v, width, color='white' if hatched else color,
                         hatch='//' if hatched else None, edgecolor=color,
                         label=None if name in labelled else name)
            labelled.add(name)
            ax.bar_label(bar, fmt='%.1f', fontsize=6, padding=1)
    values = [r[k] for r in table for k, _ in PROTOCOLS if r[k] is not None]
    low = max(0.0, min(values) - 10) if values else 0.0
    ax.set_ylim(low, 110)   # headroom for the legend above the bars
    names = [f"{p['method'] if p else 'from scratch'}\n{(p or b)['backbone'] or '?'}".replace('_demo', '')
             for p, b in groups]
    ax.set_xticks(x, names, fontsize=7)
    ax.set_ylabel('top-1 (%)')
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc='upper center', ncol=len(PROTOCOLS) + 1, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def write_report(data: Mapping[str, Any], workdir: str) -> dict[str, str]:
    """Writes ``comparison.md`` and ``comparison.png`` into ``workdir``; returns their paths."""
    table = rows(data)
    paths = {'markdown': os.path.join(workdir, 'comparison.md'), 'chart': os.path.join(workdir, 'comparison.png')}
    with open(paths['markdown'], 'w') as f:
        f.write(markdown(data, table))
    s = data.get('settings', {})
    chart(table, paths['chart'], f"{s.get('dataset', '')}: pre-training {s.get('minutes', {}).get('pretrain', '?'):g} "
          'min per method\nhatched: the backbone from scratch at equal wall-clock time')
    return paths


if __name__ == '__main__':
    import json

    from absl import app, flags

    _W = flags.DEFINE_string('workdir', 'work/compare', 'Directory holding comparison.json.')

    def _main(argv):
        del argv
        with open(os.path.join(_W.value, 'comparison.json')) as f:
            data = json.load(f)
        paths = write_report(data, _W.value)
        print(open(paths['markdown']).read())

    app.run(_main)
