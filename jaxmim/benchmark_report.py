"""The benchmark's text table: one fixed-width row per measured step (:mod:`jaxmim.benchmark`), and
the cell format it shares with ``launch/accelerator_bench.py``'s Markdown table.
"""

from __future__ import annotations

from typing import Sequence

__all__ = ['format_table', 'format_value']


def format_value(v: float | None, fmt: str, unit: str = '') -> str:
    """``v`` formatted with ``fmt`` (a ``format`` spec such as ``',.1f'``) plus ``unit``, or ``'n/a'``
    when ``v`` is None."""
    return 'n/a' if v is None else format(v, fmt) + unit


def format_table(rows: Sequence[dict]) -> str:
    """A fixed-width text table of the rows of :func:`jaxmim.benchmark.run_benchmark`, one line each
    (``GFLOPs/img`` is the row's ``model_flops_per_image``, else its ``flops_per_image``); a last
    ``config`` column when rows carry ``config`` (the ``path[:variant]`` each row was measured
    from). Missing values print as ``n/a``, a step that did not fit as ``OOM``."""
    num = format_value
    has_mfu = any(r.get('mfu') is not None for r in rows)
    has_torch = any('torch_eager_img_s' in r for r in rows)
    head = ['step', 'model', 'image', 'batch', 'devices', 'compile s', 'img/s', 'img/s overall',
            'GFLOPs/img', 'TFLOP/s', 'memory GiB'] + (['MFU %'] if has_mfu else []) + (
            ['torch eager img/s', 'JAX/eager', 'torch.compile img/s', 'JAX/compile'] if has_torch else []) + (
            ['config'] if any(r.get('config') for r in rows) else [])
    body = []
    for r in rows:
        fpi = r.get('model_flops_per_image') or r.get('flops_per_image')
        line = [r['kind'], r['model'], str(r['image_size']), str(r['batch_size']), str(r['devices']),
                num(r['compile_s'], '.1f'), 'OOM' if r.get('out_of_memory') else num(r['img_s'], ',.1f'),
                'OOM' if r.get('out_of_memory') else num(r['img_s_overall'], ',.1f'),
                num(fpi / 1e9 if fpi else None, '.3f'), num(r.get('achieved_tflops'), '.3f'),
                num(r.get('device_memory_gib'), '.3f')]
        if has_mfu:
            mfu = r.get('mfu')
            line.append(num(100 * mfu if mfu is not None else None, '.1f'))
        if has_torch:
            line += [num(r.get('torch_eager_img_s'), ',.1f'), num(r.get('jax_over_torch_eager'), '.2f', 'x'),
                     num(r.get('torch_compile_img_s'), ',.1f'), num(r.get('jax_over_torch_compile'), '.2f', 'x')]
        if head[-1] == 'config':
            line.append(r.get('config') or '')
        body.append(line)
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    left = {0, 1, len(head) - 1} if head[-1] == 'config' else {0, 1}
    fmt = lambda cells: '  '.join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    rule = '  '.join('-' * w for w in widths)
    return '\n'.join([fmt(head), rule] + [fmt(b) for b in body])
