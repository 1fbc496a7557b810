r"""Activation memory of a training step: what its forward pass keeps for the backward pass.

Usage::

    python -m jaxmim.residuals --config=configs/pretrain/mae_vit_base_800ep.py --batch_size=8 \
        --remat=none,block,dots_saveable --scan_blocks=false,true

For every ``(remat, scan_blocks)`` pair (``config.model.overrides.remat`` /
``.scan_blocks``, :data:`jaxmim.layers.REMAT_POLICIES`) it builds the config's model as the
training loop does (:func:`jaxmim.rundir.build_model`, shapes only: nothing is initialised or run)
and sizes the residuals of its loss (:func:`jaxmim.steps.mim_loss` for a pre-training config,
:func:`jaxmim.steps.classification_loss` otherwise) at ``config.compute_dtype``: the arrays the
``jax.vjp`` of the loss keeps for the backward pass (parameters and their low-precision copies
included), from ``jax.eval_shape``. It prints one line per pair, in MiB, twice: with the ops
traced for this host's platform (on CPU the hand-written backward passes of :mod:`jaxmim.ops`,
whose products the ``dots`` policies cannot see) and for an accelerator (``'gpu'``: the portable
forms).

Why not only XLA's memory analysis (``python -m jaxmim.benchmark``, "memory GiB"): on XLA:CPU
rematerialising an unrolled stack barely moves it (the demo ViT's temporaries do not move at all,
Swin-B's step shrinks by 2.5 %; README, "Rematerialisation and scanned blocks"), while the
residuals are what any backend keeps alive between the two passes unless it recomputes them.
"""

from __future__ import annotations

import functools
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = _BATCH = _REMAT = _SCAN = None


def _define_flags() -> None:
    """The command line's flags, defined only when the module runs as a program, so that it can be
    imported beside :mod:`jaxmim.benchmark` (both name a ``--config`` flag)."""
    global _CONFIG, _BATCH, _REMAT, _SCAN
    _CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, path[:variant].', lock_config=False,
                                              accept_new_attributes=True)
    _BATCH = flags.DEFINE_integer('batch_size', None, 'Global batch size (default: config.batch_size).')
    _REMAT = flags.DEFINE_list('remat', ['none', 'block'], 'remat policies to size (jaxmim.layers.REMAT_POLICIES).')
    _SCAN = flags.DEFINE_list('scan_blocks', ['false'], 'scan_blocks values to size (false, true).')

ACCELERATOR = 'gpu'
"""The platform whose op forms stand for an accelerator's (:func:`jaxmim.ops.platform_scope`)."""


def step_residual_bytes(config, batch_size: int, platform: str) -> int:
    """Bytes of the residuals the training loss of ``config`` keeps for its backward pass at
    ``batch_size``, with the ops traced for ``platform`` (shapes only, nothing runs).

    Raises:
      KeyError / TypeError / ValueError: from building the model (unknown model, override or method key).
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from jaxmim import config as config_lib
    from jaxmim import ops, rundir
    from jaxmim import steps as steps_lib

    model = nnx.eval_shape(lambda: rundir.build_model(config))
    graphdef, params, rest = rundir.split_variables(model)
    dtype = jnp.dtype(config.get('compute_dtype', 'float32'))
    size = int(config_lib.resolve_data_config(config).image_size)
    images = jax.ShapeDtypeStruct((batch_size, size, size, getattr(model, 'in_chans', 3)), jnp.float32)
    if config.mode == 'pretrain':
        loss_fn = steps_lib.mim_loss
    else:
        loss_fn = functools.partial(steps_lib.classification_loss, label_smoothing=0.0,
                                    num_classes=model.num_classes)
    labels = jax.ShapeDtypeStruct((batch_size,), jnp.int32)

    def loss(p, ms, image, label):
        if dtype != jnp.float32:
            p = steps_lib.cast_floating(p, dtype)   # as the step: float32 images, bf16 weights
        m = rundir.merge_variables(graphdef, p, ms)
        return loss_fn(m, {'image': image, 'label': label}, jax.random.key(0))[0].astype(jnp.float32)

    with ops.platform_scope(platform):
        res = jax.eval_shape(lambda p, ms, i, y: jax.vjp(lambda q: loss(q, ms, i, y), p)[1],
                             params, rest, images, labels)
    return int(sum(np.prod(a.shape) * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(res)))


def _bool(text: str) -> bool:
    if text.lower() not in ('true', 'false'):
        raise ValueError(f'--scan_blocks takes true / false values, got {text!r}')
    return text.lower() == 'true'


def main(argv):
    """Prints a Markdown table of one training step's residual MiB per ``--remat`` x ``--scan_blocks``.

    Returns 0, or 2 after one ``error:`` line when ``--config`` is missing or a remat/scan value is bad.

    Raises:
      KeyError / TypeError / ValueError: from building the model (:func:`step_residual_bytes`).
    """
    del argv
    import jax

    from jaxmim import layers as L

    config = _CONFIG.value
    if config is None:
        print('error: --config is required', file=sys.stderr)
        return 2
    try:
        for r in _REMAT.value:
            L.check_remat(r)
        scans = [_bool(s) for s in _SCAN.value]
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    batch = int(_BATCH.value or config.batch_size)
    host = jax.default_backend()
    print(f'{config.model.name} at batch {batch}, compute_dtype {config.get("compute_dtype", "float32")}: '
          f'residual MiB with the {host} forms / the accelerator forms')
    print('| remat | scan_blocks | residual MiB | residual MiB (accelerator ops) |')
    print('|---|---|---|---|')
    for remat in _REMAT.value:
        for scan in scans:
            with config.unlocked():
                config.model.overrides.remat = remat
                config.model.overrides.scan_blocks = scan
            mib = step_residual_bytes(config, batch, host) / 2 ** 20
            acc = step_residual_bytes(config, batch, ACCELERATOR) / 2 ** 20
            print(f'| {remat} | {scan} | {mib:,.1f} | {acc:,.1f} |', flush=True)
    return 0


if __name__ == '__main__':
    _define_flags()
    app.run(lambda argv: sys.exit(main(argv)))
