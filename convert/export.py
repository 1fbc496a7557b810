r"""Export a jaxmim run as an official PyTorch state_dict (``.pth`` or ``.safetensors``).

Usage::

    python -m convert.export --workdir=work/mae_pre --source=mae_vit --output=mae.pth [--step=N]

Reads ``<workdir>/config.json``, builds the run's model (the pre-training model for a
pre-training run, the classifier for a fine-tuning run), restores checkpoint ``--step`` (default:
the latest) and writes the official state_dict of ``--source`` (``python -c "from convert import
official; print(official.list_sources())"``) in the official key order and layouts: a flat
``{key: torch.Tensor}`` dict with ``torch.save`` for ``.pth``, or a safetensors file. Prints one
line per official key (``official key <- jaxmim variable [collection, layout]  shape dtype``) and
a summary. The file loads into the official PyTorch model with ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ['export_run', 'main']


def export_run(workdir: str, source: str, output: str, step: int | None = None, *,
               allow_nonfinite: bool = False, verbose: bool = True) -> dict[str, Any]:
    """Exports checkpoint ``step`` (None: latest) of run ``workdir`` as ``source``'s official
    state_dict to ``output``.

    Returns:
      ``{'source', 'step', 'output', 'format', 'num_tensors', 'num_values', 'keys'}``.

    Raises:
      FileNotFoundError: no run config or checkpoint. KeyError: unknown source. TypeError: the
      run's model is not a model of ``source``. ValueError: unknown output suffix, or NaN / inf
      values without ``allow_nonfinite`` (nothing is written).
    """
    from jaxmim import rundir

    from convert import _cli, official

    src = official.get_source(source)
    config = rundir.load_run_config(workdir)
    model = rundir.build_model(config)
    src.entries(model)   # fails early (TypeError) when the run's model is not one of this source
    restored = rundir.restore_model(model, workdir, step)
    rows = official.describe(model, src)
    sd = official.state_dict(model, src)
    _cli.check_finite(sd, f'run {workdir} step {restored}', allow_nonfinite)
    fmt = _cli.write_checkpoint(sd, output, metadata={'source': src.name, 'reference': src.reference,
                                                      'jaxmim_model': config.model.name,
                                                      'jaxmim_step': restored})
    num_values = sum(math.prod(v.shape) for v in sd.values())
    if verbose:
        for line in _cli.mapping_lines(rows, '<-'):
            print(line)
        print(f'exported {len(sd)} tensors ({num_values:,} values) of run {workdir} step {restored} '
              f'(model {config.model.name}) as source {src.name} ({src.reference}) to {output} [{fmt}]')
    return {'source': src.name, 'step': restored, 'output': output, 'format': fmt, 'num_tensors': len(sd),
            'num_values': num_values, 'keys': list(sd)}


def main(argv: list[str]) -> None:
    """absl main (flags: --workdir, --source, --output, --step, --allow_nonfinite)."""
    from convert import _cli
    _cli.run_main(argv, lambda f: export_run(f.workdir, f.source, f.output, None if f.step < 0 else f.step,
                                             allow_nonfinite=f.allow_nonfinite))


def _define_flags() -> None:
    from absl import flags

    from convert import _cli
    flags.DEFINE_string('workdir', None, 'jaxmim run directory (config.json + checkpoints/).', required=True)
    _cli.define_source_flag()
    flags.DEFINE_string('output', None, 'output file, .pth (torch.save) or .safetensors.', required=True)
    flags.DEFINE_integer('step', -1, 'checkpoint step; -1: the latest.')
    flags.DEFINE_bool('allow_nonfinite', False, 'export a checkpoint holding NaN / inf values (refused '
                      'by default).')


if __name__ == '__main__':
    from absl import app
    _define_flags()
    app.run(main)
