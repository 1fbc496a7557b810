r"""GreenMIM's ``util/extract_backbone.py`` step as a command: the encoder of a pre-training checkpoint.

Usage::

    # official semantics: official pre-training .pth -> flat backbone .pth
    python -m convert.extract_backbone --src=greenmim_swin_base.pth --out=swin_base_backbone.pth

    # a jaxmim pre-training run -> flat backbone in the official key layout (source inferred)
    python -m convert.extract_backbone --src=work/greenmim_pre --out=backbone.pth

    # -> a backbone-only jaxmim run that fine-tuning loads (--config.pretrained.workdir=<out>)
    python -m convert.extract_backbone --src=work/greenmim_pre --out=work/backbone
    python -m convert.extract_backbone --src=greenmim_swin_base.pth --out=work/backbone \
        --model=green_mim_swin_base_patch4_dec512b1 [--model_overrides='{"merge_order": "v1"}']

``--out`` ending in ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` / ``.safetensors`` is a file, anything
else a run directory.

File output (``LayneH/GreenMIM@b981012 util/extract_backbone.py:8-53``; ``load_pretrained`` :8-34,
``remap_pretrained_keys_swin`` :37-53): the state_dict is unwrapped from ``{'model': ...}``; when
any key starts with ``encoder.`` only those keys are kept, the prefix stripped (decoder,
``mask_token`` and ``decoder_pos_embed`` dropped); every ``relative_position_index``,
``relative_coords_table`` and ``attn_mask`` key is deleted; the flat dict is written without a
``'model'`` wrapper. The result loads into the official Swin with ``strict=False`` (missing:
``head.*``, ``attn_mask``, ``relative_position_index``). SimMIM's fine-tuning ``load_pretrained``
wants the raw checkpoint (with ``'model'``), not this file.

Run-directory output: the pre-training model's ``encoder`` variables written as a jaxmim run
(orbax checkpoint, step 0, names without the ``encoder.`` prefix) plus ``config.json`` (the
pre-training config, for provenance) and ``extract_backbone.json`` (what was extracted).
``jaxmim.rundir.load_pretrained`` loads it into the registered classifier of the pre-training
model (e.g. ``swin_base_patch4_window7_224`` for ``green_mim_swin_base_patch4_dec512b1``); only the
head starts fresh. jaxmim has no Twins-SVT classifier, so a GreenMIM-Twins backbone run can be
written but no registered model fine-tunes from it yet.

This module registers no conversion source (it is a tool, like ``convert.export``).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

__all__ = ['DROPPED_KEYS', 'extract_backbone_state_dict', 'extract_backbone', 'main']

DROPPED_KEYS = ('relative_position_index', 'relative_coords_table', 'attn_mask')
"""Substrings of the keys ``remap_pretrained_keys_swin`` deletes (``extract_backbone.py:37-53``)."""


def extract_backbone_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The official extraction on a flat state_dict (tensors or arrays; order kept).

    Keys starting with ``encoder.`` are kept with the prefix stripped when any key does (else
    all keys are kept: a model that is not a pre-training wrapper passes unchanged, as the
    official "non-pre-trained model" branch); then every key containing one of
    :data:`DROPPED_KEYS` is removed. The input is not modified (the official code mutates it).
    """
    sd = dict(state_dict)
    if any(k.startswith('encoder.') for k in sd):
        sd = {k[len('encoder.'):]: v for k, v in sd.items() if k.startswith('encoder.')}
    return {k: v for k, v in sd.items() if not any(d in k for d in DROPPED_KEYS)}


def _is_file(path: str) -> bool:
    from convert import _cli
    return os.path.splitext(path)[1].lower() in _cli.PTH_SUFFIXES + (_cli.SAFETENSORS_SUFFIX,)


def extract_backbone(src: str, out: str, *, source: str | None = None, model: str | None = None,
                     model_overrides: Mapping[str, Any] | None = None, step: int | None = None,
                     allow_pickle: bool = False, verbose: bool = True) -> dict[str, Any]:
    """Extracts the backbone of pre-training checkpoint ``src`` into ``out``.

    Args:
      src: an official checkpoint file (``.pth`` / ``.safetensors``, possibly ``{'model': sd}``)
        or a jaxmim pre-training run directory.
      out: a checkpoint file (official flat backbone) or a run directory (backbone-only jaxmim run).
      source: conversion source of a jaxmim run (default: the one source whose layout describes
        the run's model, e.g. ``greenmim_swin`` / ``greenmim_twins``); with an official file and
        a run-directory ``out``, the source to load it through (default: inferred from ``model``).
      model, model_overrides: registered pre-training model (and constructor overrides) to load
        an official file into; needed only for official file -> run directory.
      step: checkpoint step of a jaxmim run (None: latest).
      allow_pickle: ``torch.load(weights_only=False)`` for trusted official files.

    Returns:
      ``{'src', 'out', 'kind' ('file' | 'run'), 'num_tensors', 'keys'}``.

    Raises:
      FileNotFoundError: no ``src``. ValueError: official file -> run directory without
        ``model``, no / several sources for the model, a run that is not a pre-training run
        with an ``encoder``, or an unknown output suffix. KeyError / TypeError: unknown or
        mismatched source / model.
    """
    import numpy as np

    from convert import _cli, official

    from_run = os.path.isdir(src)
    if not from_run and not os.path.isfile(src):
        raise FileNotFoundError(f'--src {src!r} is neither a checkpoint file nor a run directory')
    jm, config = None, None
    if from_run:
        from jaxmim import rundir
        config = rundir.load_run_config(src)
        jm = rundir.build_model(config)
        rundir.restore_model(jm, src, step)
    if _is_file(out):
        if from_run:
            src_name = source or _single_source(jm)
            sd = official.state_dict(jm, src_name)
        else:
            sd = official.unwrap_state_dict(_cli.read_checkpoint(src, allow_pickle=allow_pickle))
            sd = {k: (v.detach().cpu().numpy() if hasattr(v, 'detach') else np.asarray(v)) for k, v in sd.items()}
        backbone = extract_backbone_state_dict(sd)
        _cli.write_checkpoint(backbone, out, metadata={'extracted_from': os.path.basename(src)})
        result = {'src': src, 'out': out, 'kind': 'file', 'num_tensors': len(backbone), 'keys': list(backbone)}
    else:
        if not from_run:
            if not model:
                raise ValueError('an official checkpoint -> run directory needs --model (the registered '
                                 'pre-training model, e.g. green_mim_swin_base_patch4_dec512b1)')
            import importlib

            from flax import nnx

            from jaxmim import rundir
            from jaxmim.registry import create_model
            import_cli = importlib.import_module('convert.import')
            if source is None:
                source = _single_source(nnx.eval_shape(lambda: create_model(model, **dict(model_overrides or {}))))
            config = import_cli.run_config(source, model, model_overrides)
            jm = rundir.build_model(config)
            sd = official.unwrap_state_dict(_cli.read_checkpoint(src, allow_pickle=allow_pickle))
            official.load_state_dict(jm, source, sd)
        encoder = getattr(jm, 'encoder', None)
        if encoder is None:
            raise ValueError(f'{src}: model {type(jm).__name__} has no encoder (not a pre-training wrapper)')
        from flax import nnx

        from jaxmim import files, tree_util
        from jaxmim import rundir
        rundir.save_model_checkpoint(encoder, out, config, step=0)
        names = sorted(tree_util.flatten_names(nnx.to_pure_dict(nnx.state(encoder))))
        files.write_json(os.path.join(out, 'extract_backbone.json'),
                         {'src': os.path.abspath(src), 'pretrain_model': config.model.name,
                          'encoder': type(encoder).__name__, 'num_tensors': len(names)})
        result = {'src': src, 'out': out, 'kind': 'run', 'num_tensors': len(names), 'keys': names}
    if verbose:
        print(f'extracted {result["num_tensors"]} backbone tensors of {src} into {out} ({result["kind"]})')
        if result['kind'] == 'run':
            print(f'fine-tune from it with --config.pretrained.workdir={out}')
    return result


def _single_source(model) -> str:
    from convert import official
    names = official.sources_for(model)
    if len(names) != 1:
        raise ValueError(f'cannot infer the conversion source of {type(model).__name__}: candidates {names}; '
                         'pass --source')
    return names[0]


def main(argv: list[str]) -> None:
    """absl main (flags: --src, --out, --source, --model, --model_overrides, --step, --allow_pickle)."""
    from convert import _cli

    def body(f):
        overrides = json.loads(f.model_overrides)
        if not isinstance(overrides, dict):
            raise ValueError('--model_overrides must be a JSON object')
        extract_backbone(f.src, f.out, source=f.source or None, model=f.model or None, model_overrides=overrides,
                         step=None if f.step < 0 else f.step, allow_pickle=f.allow_pickle)
    _cli.run_main(argv, body)


def _define_flags() -> None:
    from absl import flags
    flags.DEFINE_string('src', None, 'official pre-training checkpoint (.pth / .safetensors) or jaxmim run '
                        'directory.', required=True)
    flags.DEFINE_string('out', None, 'output: a checkpoint file (.pth / .safetensors: official flat backbone) '
                        'or a directory (backbone-only jaxmim run).', required=True)
    flags.DEFINE_string('source', '', 'conversion source (default: inferred from the model).')
    flags.DEFINE_string('model', '', 'registered pre-training model to load an official file into (file -> run).')
    flags.DEFINE_string('model_overrides', '{}', 'JSON object of model constructor overrides.')
    flags.DEFINE_integer('step', -1, 'checkpoint step of a jaxmim run; -1: the latest.')
    flags.DEFINE_bool('allow_pickle', False, 'torch.load(weights_only=False) for trusted .pth files.')


if __name__ == '__main__':
    from absl import app
    _define_flags()
    app.run(main)
