r"""Import an official PyTorch checkpoint (``.pth`` or ``.safetensors``) as a jaxmim run.

Usage::

    python -m convert.import --checkpoint=mae_pretrain_vit_base_full.pth --source=mae_vit \
        --workdir=work/mae_imported --model=mae_vit_base_patch16_dec512d8b \
        [--model_overrides='{"img_size": 224}'] [--method_overrides='{"norm_pix_loss": true}']

(the module is named ``import``, so it runs with ``python -m convert.import``). Builds the
registered jaxmim model ``--model`` with ``--model_overrides`` (JSON) the way a run does
(``jaxmim.rundir.build_model``): for a source of a pre-training model (e.g. ``mae_vit``,
``simmim_swin_pretrain``) the run is a pre-training run of that source's method (block settings
from ``--method_overrides``), for a classifier source (``mae_vit_cls``, ``simmim_swin``) a
fine-tuning run. It then strict-loads the checkpoint through the source (every official key
mapped, shapes checked, derived buffers recomputed and compared), writes an orbax checkpoint
(step 0) and ``config.json`` into ``--workdir`` and prints the mapping
(``official key -> jaxmim variable [collection, layout]  shape dtype``). Fine-tune from it with
``--config.pretrained.workdir=<workdir>``, or export it again with ``convert.export``.

``.pth`` files are read with ``torch.load(weights_only=True)``; official checkpoints that also
pickle Python objects (MAE's ``args``) need ``--allow_pickle`` (trusted files only).
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

__all__ = ['import_checkpoint', 'run_config', 'main']


def run_config(source: str, model: str, model_overrides: Mapping[str, Any] | None = None,
               method_overrides: Mapping[str, Any] | None = None, seed: int = 0):
    """The run config of an imported checkpoint: ``jaxmim.config.pretrain_defaults(method)`` when
    the source describes a pre-training model of a jaxmim method (``Source.method``), else
    ``finetune_defaults()``; ``model.name`` = ``model``, ``model.overrides`` and the method block
    updated from the overrides.

    Raises:
      KeyError: unknown source or method. ValueError: ``method_overrides`` for a classifier
      source, or a key the method block lacks.
    """
    from jaxmim import config as config_lib

    from convert import official

    src = official.get_source(source)
    method_overrides = dict(method_overrides or {})
    if src.method:
        config = config_lib.pretrain_defaults(src.method)
        for key, value in method_overrides.items():
            if key in ('name',) or key not in config.method:
                raise ValueError(f'--method_overrides: {key!r} is not a setting of method {src.method!r}; '
                                 f'accepted: {sorted(k for k in config.method.keys() if k != "name")}')
            config.method[key] = value
    else:
        if method_overrides:
            raise ValueError(f'source {src.name!r} describes a classifier: --method_overrides does not apply')
        config = config_lib.finetune_defaults()
    config.model.name = model
    config.model.overrides.update(dict(model_overrides or {}))
    config.seed = int(seed)
    return config


def import_checkpoint(checkpoint: str, source: str, workdir: str, model: str,
                      model_overrides: Mapping[str, Any] | None = None,
                      method_overrides: Mapping[str, Any] | None = None, *, allow_pickle: bool = False,
                      require_buffers: bool = True, allow_nonfinite: bool = False,
                      verbose: bool = True) -> dict[str, Any]:
    """Strict-loads official ``checkpoint`` into registry model ``model`` and saves it as run ``workdir``.

    Returns:
      ``{'source', 'model', 'workdir', 'mode', 'num_tensors', 'num_values', 'ignored'}``; ``ignored``
      lists checkpoint keys the source accepts but does not load (bookkeeping such as
      ``num_batches_tracked``, checked derived buffers).

    Raises:
      FileNotFoundError: no checkpoint file. KeyError: unknown source / model / method.
      TypeError: the registry model is not a model of ``source``. ValueError: the checkpoint does
      not match the model (one message naming every missing, unexpected and mis-shaped key), or
      it holds NaN / inf values and not ``allow_nonfinite`` (the keys named).
    """
    from jaxmim import rundir

    from convert import _cli, official

    src = official.get_source(source)
    config = run_config(src.name, model, model_overrides, method_overrides)
    raw = _cli.read_checkpoint(checkpoint, allow_pickle=allow_pickle)
    sd = official.unwrap_state_dict(raw)
    _cli.check_finite(sd, checkpoint, allow_nonfinite)
    jm = rundir.build_model(config)
    official.load_state_dict(jm, src, sd, require_buffers=require_buffers)
    rundir.save_model_checkpoint(jm, workdir, config, step=0)
    rows = official.describe(jm, src)
    loaded = {k for k, path in src.key_map(jm).items() if path is not None}
    ignored = [k for k in sd if k not in loaded]
    num_values = sum(math.prod(shape) for key, _, shape, _ in rows if key in loaded)
    if verbose:
        for line in _cli.mapping_lines(rows, '->'):
            print(line)
        print(f'imported {len(loaded)} tensors ({num_values:,} values) of {checkpoint} as source {src.name} '
              f'({src.reference}) into model {model} ({config.mode} run {workdir}, step 0); checked, not '
              f'loaded: {len(ignored)} {ignored[:4]}{" ..." if len(ignored) > 4 else ""}')
        print(f'fine-tune from it with --config.pretrained.workdir={workdir}')
    return {'source': src.name, 'model': model, 'workdir': workdir, 'mode': config.mode,
            'num_tensors': len(loaded), 'num_values': num_values, 'ignored': ignored}


def main(argv: list[str]) -> None:
    """absl main (flags: --checkpoint, --source, --workdir, --model, --model_overrides,
    --method_overrides, --allow_pickle, --require_buffers, --allow_nonfinite)."""
    from convert import _cli
    _cli.run_main(argv, _run)


def _run(f: Any) -> None:
    """:func:`import_checkpoint` from the parsed flags ``f``.

    Raises:
      app.UsageError: ``--model_overrides`` / ``--method_overrides`` not JSON objects.
    """
    from absl import app
    try:
        model_overrides = json.loads(f.model_overrides)
        method_overrides = json.loads(f.method_overrides)
    except json.JSONDecodeError as err:
        raise app.UsageError(f'--model_overrides / --method_overrides must be JSON objects: {err}') from err
    if not isinstance(model_overrides, dict) or not isinstance(method_overrides, dict):
        raise app.UsageError('--model_overrides / --method_overrides must be JSON objects')
    import_checkpoint(f.checkpoint, f.source, f.workdir, f.model, model_overrides, method_overrides,
                      allow_pickle=f.allow_pickle, require_buffers=f.require_buffers,
                      allow_nonfinite=f.allow_nonfinite)


def _define_flags() -> None:
    from absl import flags

    from convert import _cli
    flags.DEFINE_string('checkpoint', None, 'official checkpoint, .pth or .safetensors.', required=True)
    _cli.define_source_flag()
    flags.DEFINE_string('workdir', None, 'run directory to write (orbax checkpoint + config.json).', required=True)
    flags.DEFINE_string('model', None, 'registered jaxmim model, e.g. mae_vit_base_patch16_dec512d8b.',
                        required=True)
    flags.DEFINE_string('model_overrides', '{}', 'JSON object of model constructor overrides.')
    flags.DEFINE_string('method_overrides', '{}', 'JSON object of config.method settings (pre-training sources).')
    flags.DEFINE_bool('allow_pickle', False, 'torch.load(weights_only=False): for trusted .pth files that '
                      'pickle Python objects.')
    flags.DEFINE_bool('require_buffers', True, 'require derived buffers (relative_position_index, attn_mask) '
                      'in the checkpoint; present ones are always checked.')
    flags.DEFINE_bool('allow_nonfinite', False, 'convert a checkpoint holding NaN / inf values (refused '
                      'by default: a diverged or damaged checkpoint).')


if __name__ == '__main__':
    from absl import app
    _define_flags()
    app.run(main)
