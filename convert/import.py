r"""Import a PyTorch checkpoint (official, timm or transformers layout) as a jaxmim run.

Usage::

    python -m convert.import --checkpoint=mae_pretrain_vit_base_full.pth --source=mae_vit \
        --workdir=work/mae_imported --model=mae_vit_base_patch16_dec512d8b \
        [--model_overrides='{"img_size": 224}'] [--method_overrides='{"norm_pix_loss": true}']
    # a timm state_dict (timm.create_model(NAME, **kwargs).state_dict(), .safetensors or .pth)
    python -m convert.import --format=timm --timm_model=vit_base_patch16_224 --checkpoint=vit.safetensors \
        --workdir=work/vit_imported [--timm_kwargs='{"num_classes": 0}']
    # a transformers save_pretrained folder (config.json + model.safetensors) or a weights file
    python -m convert.import --format=hf --hf_model=SwinForImageClassification --checkpoint=hf_swin \
        --workdir=work/swin_imported

With ``--format=timm`` / ``--format=hf`` the jaxmim model, its overrides and method settings come
from the library source's ``library_import_fn`` (:mod:`convert.official`): for timm from the model
name and its ``timm.create_model`` arguments (``--timm_kwargs``; default: the ones recorded in the
metadata of a ``.safetensors`` file written by ``convert.export``, else none), for transformers
from the folder's ``config.json``. ``--model``, ``--model_overrides`` and ``--method_overrides``
still override them. Variables a library layout does not hold (e.g. the decoder of a
pre-training model) keep their initial values and are named in the summary.

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
    ``finetune_defaults()``; ``model.name`` = ``model``, ``model.overrides`` updated from the
    source's ``import_model_overrides`` (the official behaviour where a registry model's training
    default differs) then from ``model_overrides``, the method block from ``method_overrides``.

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
    config.model.overrides.update({**dict(src.import_model_overrides), **dict(model_overrides or {})})
    config.seed = int(seed)
    return config


def import_checkpoint(checkpoint: str, source: str | None, workdir: str, model: str | None,
                      model_overrides: Mapping[str, Any] | None = None,
                      method_overrides: Mapping[str, Any] | None = None, *, format: str = 'official',
                      library_model: str | None = None, library_kwargs: Mapping[str, Any] | None = None,
                      allow_pickle: bool = False, require_buffers: bool = True, allow_nonfinite: bool = False,
                      verbose: bool = True) -> dict[str, Any]:
    """Strict-loads ``checkpoint`` into registry model ``model`` and saves it as run ``workdir``.

    Args:
      checkpoint: ``.pth`` / ``.safetensors`` file; for ``format='hf'`` also a ``save_pretrained``
        folder (``config.json`` + ``model.safetensors``).
      source: conversion source (``format='official'``); None for a library format.
      model: registered jaxmim model (required for ``'official'``; for a library format it
        overrides the one ``library_import_fn`` chooses).
      model_overrides, method_overrides: JSON-able dicts; for a library format they update the
        ones ``library_import_fn`` gives.
      format: ``'official'``, ``'timm'`` or ``'hf'``.
      library_model: timm model name / transformers class name (library formats).
      library_kwargs: timm ``create_model`` arguments of the file (default: from its metadata).

    Returns:
      ``{'source', 'model', 'workdir', 'mode', 'num_tensors', 'num_values', 'ignored', 'omitted'}``;
      ``ignored`` lists checkpoint keys the source accepts but does not load (bookkeeping such as
      ``num_batches_tracked``, checked derived buffers), ``omitted`` the model variables the
      layout does not hold (they keep their initial values).

    Raises:
      FileNotFoundError: no checkpoint file. KeyError: unknown source / model / method.
      TypeError: the registry model is not a model of ``source``. ValueError: the checkpoint does
      not match the model (one message naming every missing, unexpected and mis-shaped key), or
      it holds NaN / inf values and not ``allow_nonfinite`` (the keys named).
    """
    from jaxmim import rundir

    from convert import _cli, official

    if format == 'official' and source and not model:
        raise ValueError('--format=official needs --source and --model')
    src = _cli.source_for_format(format, source, library_model, library_kwargs, '--source and --model')
    if format == 'official':
        sd = official.unwrap_state_dict(_cli.read_checkpoint(checkpoint, allow_pickle=allow_pickle))
    else:
        if src.library_import_fn is None:
            raise ValueError(f'source {src.name!r} cannot import: it has no library_import_fn')
        sd, model, model_overrides, method_overrides = _library_inputs(
            checkpoint, src, format, library_model, library_kwargs, model, model_overrides, method_overrides,
            allow_pickle)
    config = run_config(src.name, model, model_overrides, method_overrides)
    _cli.check_finite(sd, checkpoint, allow_nonfinite)
    jm = rundir.build_model(config)
    if format != 'official':
        src = official.library_source(format, library_model, jm)
    official.load_state_dict(jm, src, sd, require_buffers=require_buffers)
    omitted = [official._path_str(e.path) for e in src.omitted(jm)]
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
        if omitted:
            print(f'not in the checkpoint\'s layout, kept at initialisation: {len(omitted)} variables '
                  f'{omitted[:6]}{" ..." if len(omitted) > 6 else ""}')
        print(f'fine-tune from it with --config.pretrained.workdir={workdir}')
    return {'source': src.name, 'model': model, 'workdir': workdir, 'mode': config.mode,
            'num_tensors': len(loaded), 'num_values': num_values, 'ignored': ignored, 'omitted': omitted,
            'model_overrides': dict(config.model.overrides)}


def _library_inputs(checkpoint: str, src: Any, format: str, library_model: str,
                    library_kwargs: Mapping[str, Any] | None, model: str | None,
                    model_overrides: Mapping[str, Any] | None, method_overrides: Mapping[str, Any] | None,
                    allow_pickle: bool) -> tuple[dict, str, dict, dict]:
    """Reads a library checkpoint and resolves the run's model: ``(state_dict, model,
    model_overrides, method_overrides)`` from ``src.library_import_fn(library_model, config)``
    (``config``: a folder's ``config.json``; timm: ``library_kwargs``, else the ``library_kwargs``
    recorded by ``convert.export`` in a ``.safetensors`` file for the same model, else ``{}``),
    updated with the caller's values."""
    from convert import _cli, official
    if format == 'hf' and not _cli.is_checkpoint_file(checkpoint):
        sd, lib_config = _cli.read_pretrained_folder(checkpoint)
    else:
        sd = official.unwrap_state_dict(_cli.read_checkpoint(checkpoint, allow_pickle=allow_pickle))
        lib_config = None
        if format == 'timm':
            lib_config = dict(library_kwargs) if library_kwargs is not None else {}
            meta = _cli.read_metadata(checkpoint)
            if (library_kwargs is None and meta.get('library') == format
                    and meta.get('library_model') == library_model and meta.get('library_kwargs')):
                lib_config = json.loads(meta['library_kwargs'])
    name, lib_model_overrides, lib_method_overrides = src.library_import_fn(library_model, lib_config)
    return (sd, model or name, {**lib_model_overrides, **dict(model_overrides or {})},
            {**lib_method_overrides, **dict(method_overrides or {})})


def main(argv: list[str]) -> None:
    """absl main (flags: --checkpoint, --format, --source, --timm_model, --hf_model, --timm_kwargs,
    --workdir, --model, --model_overrides,
    --method_overrides, --allow_pickle, --require_buffers, --allow_nonfinite)."""
    from convert import _cli
    _cli.run_main(argv, _run)


def _run(f: Any) -> None:
    """:func:`import_checkpoint` from the parsed flags ``f``.

    Raises:
      app.UsageError: ``--model_overrides`` / ``--method_overrides`` not JSON objects.
    """
    from absl import app

    from convert import _cli
    try:
        model_overrides = json.loads(f.model_overrides)
        method_overrides = json.loads(f.method_overrides)
    except json.JSONDecodeError as err:
        raise app.UsageError(f'--model_overrides / --method_overrides must be JSON objects: {err}') from err
    if not isinstance(model_overrides, dict) or not isinstance(method_overrides, dict):
        raise app.UsageError('--model_overrides / --method_overrides must be JSON objects')
    fmt = _cli.resolve_format(f)
    if fmt['format'] == 'official' and not f.model:
        raise ValueError('--format=official needs --model (a registered jaxmim model)')
    import_checkpoint(f.checkpoint, fmt['source'], f.workdir, f.model, model_overrides, method_overrides,
                      format=fmt['format'], library_model=fmt['library_model'],
                      library_kwargs=fmt['library_kwargs'], allow_pickle=f.allow_pickle,
                      require_buffers=f.require_buffers, allow_nonfinite=f.allow_nonfinite)


def _define_flags() -> None:
    from absl import flags

    from convert import _cli
    flags.DEFINE_string('checkpoint', None, 'checkpoint, .pth or .safetensors; for --format=hf also a '
                        'save_pretrained folder (config.json + model.safetensors).', required=True)
    _cli.define_format_flags()
    flags.DEFINE_string('workdir', None, 'run directory to write (orbax checkpoint + config.json).', required=True)
    flags.DEFINE_string('model', None, 'registered jaxmim model, e.g. mae_vit_base_patch16_dec512d8b '
                        '(required for --format=official; for timm / hf it overrides the one chosen from '
                        'the library model).')
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
