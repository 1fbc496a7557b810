"""The optimizer: torch AdamW (or MAE's LARS) with per-group lr schedules, as one optax chain.

:func:`build_optimizer` reads an optimizer config and assembles clipping
(:mod:`jaxmim.optim.clipping`), the update direction of ``name`` (:data:`OPTIMIZERS`): Adam
moments and decoupled weight decay masked by :func:`jaxmim.optim.groups.weight_decay_mask`
(``'adamw'``), or LARS's trust ratio and momentum (``'lars'``, :mod:`jaxmim.optim.lars`), and
one lr schedule (:mod:`jaxmim.optim.schedules`) per layer-decay group
(:func:`jaxmim.optim.groups.layer_exponents`) through ``optax.partition``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import optax

from jaxmim.optim.checks import check_nonneg
from jaxmim.optim.clipping import clip_by_global_norm_torch
from jaxmim.optim.groups import group_label, layer_exponents, tree_map_named, weight_decay_mask
from jaxmim.optim.lars import lars_direction
from jaxmim.optim.schedules import SCHEDULE_UNITS, SCHEDULES, Schedule, lr_schedule

PyTree = Any

__all__ = ['build_optimizer', 'OPTIMIZERS']

OPTIMIZERS = ('adamw', 'lars')
"""Accepted values of the optimizer config's ``name`` (``config.optim.name``)."""


_REQUIRED = object()


def _cfg(config, field: str, default=_REQUIRED):
    if isinstance(config, Mapping) or hasattr(config, '__contains__'):
        if field in config:
            return config[field]
    elif hasattr(config, field):
        return getattr(config, field)
    if default is _REQUIRED:
        raise ValueError(f'optimizer config is missing the required field {field!r}')
    return default


def _has(config, field: str) -> bool:
    return _cfg(config, field, None) is not None


def build_optimizer(
    config,
    params: PyTree,
    total_steps: int,
    *,
    layer_id_fn: Callable[[str], int] | None = None,
    num_layer_ids: int | None = None,
    no_weight_decay: Sequence[str] = (),
) -> tuple[optax.GradientTransformation, Schedule]:
    """torch AdamW (``name='adamw'``, the default) or MAE's LARS (``name='lars'``) with per-group
    lr schedules as one optax chain.

    The chain is ``clip_by_global_norm_torch`` (if ``clip_grad``) -> ``optax.scale_by_adam(b1,
    b2, eps, eps_root=0)`` -> ``optax.add_decayed_weights(weight_decay, mask)`` ->
    ``optax.partition({label: optax.scale_by_learning_rate(schedule_of_group)})``, i.e. for a
    leaf ``p`` with gradient ``g`` at step ``t`` (0-based), as torch AdamW::

        g   <- g * min(1, clip_grad / (||g_all||_2 + 1e-6))          (if clip_grad)
        m, v = Adam moments (betas), m_hat = m / (1 - b1^(t+1)), v_hat = v / (1 - b2^(t+1))
        p   <- p - lr_p(t) * (m_hat / (sqrt(v_hat) + eps) + wd_p * p)

    with ``wd_p = weight_decay`` where :func:`weight_decay_mask` (``no_weight_decay``) is True,
    else 0, and ``lr_p = lr_schedule(schedule, ..., scale=scale_p)`` where ``scale_p =
    layer_decay ** (num_layer_ids - 1 - layer_id_fn(name))`` (1 without layer decay). One
    partition label ``'layer_decay_pow_<k>'`` per distinct exponent ``k`` (``'layer_decay_pow_0'``
    only, without layer decay). How ``scale_p`` enters the schedule depends on the recipe (see
    :func:`lr_schedule`): SimMIM (``'cosine'``, ``'multistep'``) scales the group's base lr only,
    MAE (``'mae_cosine'``) scales the whole schedule including ``min_lr``.

    With ``name='lars'`` the Adam moments and the decoupled decay are replaced by
    :func:`jaxmim.optim.lars.lars_direction` (MAE / MoCo v3 ``util/lars.py``): for ``ndim > 1``
    leaves ``g <- g + wd p``, then ``g <- trust_coefficient ||p|| / ||g|| * g`` (1 when a norm
    is 0); every leaf ``mu <- momentum mu + g`` and ``p <- p - lr_p(t) mu``. ``betas`` / ``eps``
    are not read; ``no_weight_decay`` patterns do not apply (MAE's LARS tests ``ndim`` only).

    Args:
        config: ``ml_collections.ConfigDict`` (or mapping) with fields

            * ``base_lr``, ``min_lr`` (floats >= 0, already batch-scaled, see
              :func:`scaled_optim_config`), ``weight_decay`` (>= 0), ``warmup_steps`` (int in
              ``[0, total_steps]``) - required; ``warmup_lr`` (>= 0) - required except for
              ``'mae_cosine'``, which ignores it;
            * ``schedule`` (one of :data:`SCHEDULES`, default 'cosine'), ``milestones`` (steps,
              default ()), ``gamma`` (default 0.1), ``schedule_unit`` (one of
              :data:`SCHEDULE_UNITS`, default 'step'), ``steps_per_epoch`` (int, required for
              'epoch'), ``clip_grad`` (> 0, or None / 0 to disable; default 5.0), ``betas``
              (default (0.9, 0.999)), ``eps`` (default 1e-8), ``layer_decay`` (default 1.0 =
              off).

            Other fields (e.g. ``lr_scale_batch``) are ignored; ``no_weight_decay`` and
            ``no_weight_decay_keywords`` are rejected (they are the model's hook now).

            ``name`` (one of :data:`OPTIMIZERS`, default 'adamw'); with 'lars' also
            ``momentum`` (default 0.9) and ``trust_coefficient`` (default 1e-3).
        params: the parameter pytree the optimizer will be applied to (arrays or
            ``jax.ShapeDtypeStruct``; only structure, names and ndim are used): nested dicts
            (``to_pure_dict()``), or an ``nnx.State`` for use with ``nnx.Optimizer(model, tx,
            wrt=nnx.Param)``.
        total_steps: total number of optimizer steps (> 0).
        layer_id_fn: name -> layer id (the model's ``layer_id`` hook), required when
            ``layer_decay != 1``.
        num_layer_ids: number of layer ids (the model's ``num_layer_ids``), required with
            ``layer_id_fn``.
        no_weight_decay: fnmatch patterns over dotted names excluded from weight decay on top
            of the universal 1-D / ``.bias`` rule (the model's ``no_weight_decay()`` hook).

    Returns:
        ``(tx, lr_fn)``: the ``optax.GradientTransformation`` (its state is a pytree of arrays,
        dicts with string keys and empty NamedTuples, savable by orbax) and, for logging, the lr
        schedule of a scale-1 group (the final norm/head group; every group without layer
        decay), i.e. the lr applied at step ``t``.

    Raises:
        ValueError: naming the config field and the accepted values for a missing or invalid
            value (unknown schedule / unit, negative lr, warmup > total, bad betas / eps /
            clip / layer_decay, steps not multiples of ``steps_per_epoch``, layer decay without
            ``layer_id_fn`` / ``num_layer_ids``, out-of-range layer ids, bad patterns, an
            unknown ``name``, LARS's momentum outside [0, 1) or trust coefficient <= 0).

    Source: microsoft/SimMIM@d3e29bc ``optimizer.py``, ``lr_scheduler.py``,
    ``main_simmim.py:156-171``; facebookresearch/mae@be47fef ``util/lr_decay.py``,
    ``util/lr_sched.py``, ``main_finetune.py`` (torch AdamW); facebookresearch/mae@6a2ba40
    ``util/lars.py``, ``main_linprobe.py`` (LARS).
    """
    for field in ('no_weight_decay', 'no_weight_decay_keywords'):
        if _has(config, field):
            raise ValueError(
                f'optimizer config field {field!r} is no longer read: weight-decay exclusions '
                f"are fnmatch patterns from the model's no_weight_decay() hook, passed as "
                f'build_optimizer(..., no_weight_decay=...)')
    name = _cfg(config, 'name', 'adamw')
    if name not in OPTIMIZERS:
        raise ValueError(f'optim.name must be one of {OPTIMIZERS}, got {name!r}')
    schedule_name = _cfg(config, 'schedule', 'cosine')
    if schedule_name not in SCHEDULES:
        raise ValueError(f'schedule must be one of {SCHEDULES}, got {schedule_name!r}')
    unit = _cfg(config, 'schedule_unit', 'step')
    if unit not in SCHEDULE_UNITS:
        raise ValueError(f'schedule_unit must be one of {SCHEDULE_UNITS}, got {unit!r}')
    base_lr = _cfg(config, 'base_lr')
    warmup_lr = _cfg(config, 'warmup_lr', 0.0 if schedule_name == 'mae_cosine' else _REQUIRED)
    min_lr = _cfg(config, 'min_lr')
    weight_decay = _cfg(config, 'weight_decay')
    warmup_steps = _cfg(config, 'warmup_steps')
    milestones = tuple(_cfg(config, 'milestones', ()) or ())
    gamma = _cfg(config, 'gamma', 0.1)
    steps_per_epoch = _cfg(config, 'steps_per_epoch', None)
    clip_grad = _cfg(config, 'clip_grad', 5.0)
    betas = _cfg(config, 'betas', (0.9, 0.999))
    eps = _cfg(config, 'eps', 1e-8)
    layer_decay = _cfg(config, 'layer_decay', 1.0)

    for field, v in (('base_lr', base_lr), ('warmup_lr', warmup_lr), ('min_lr', min_lr),
                     ('weight_decay', weight_decay), ('eps', eps), ('gamma', gamma),
                     ('layer_decay', layer_decay)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise ValueError(f'{field} must be a number, got {v!r}')
        check_nonneg(field, v)
    base_lr, warmup_lr, min_lr = float(base_lr), float(warmup_lr), float(min_lr)
    weight_decay, eps, gamma, layer_decay = (float(weight_decay), float(eps), float(gamma),
                                             float(layer_decay))
    if (isinstance(betas, (str, bytes)) or not isinstance(betas, Sequence) or len(betas) != 2
            or not all(isinstance(b, (int, float, np.floating)) and 0.0 <= float(b) < 1.0
                       for b in betas)):
        raise ValueError(f'betas must be two floats in [0, 1), got {betas!r}')
    if clip_grad is not None and not (
            isinstance(clip_grad, (int, float, np.integer, np.floating))
            and np.isfinite(float(clip_grad)) and float(clip_grad) >= 0):
        raise ValueError(f'clip_grad must be None, 0 (off) or a finite float > 0, '
                         f'got {clip_grad!r}')
    if not layer_decay > 0:
        raise ValueError(f'layer_decay must be > 0 (1.0 = off), got {layer_decay!r}')
    if layer_decay != 1.0 and (layer_id_fn is None or num_layer_ids is None):
        raise ValueError(
            f'layer_decay={layer_decay} requires layer_id_fn and num_layer_ids (the model\'s '
            f'layer_id / num_layer_ids hooks)')
    mask = weight_decay_mask(params, no_weight_decay)

    def schedule_for(scale: float) -> Schedule:
        return lr_schedule(
            schedule_name, base_lr=base_lr, warmup_lr=warmup_lr, min_lr=min_lr,
            total_steps=total_steps, warmup_steps=warmup_steps, milestones=milestones,
            gamma=gamma, scale=scale, unit=unit, steps_per_epoch=steps_per_epoch)

    # Validates total_steps / warmup_steps / milestones / gamma / steps_per_epoch eagerly.
    try:
        lr_fn = schedule_for(1.0)
    except ValueError as e:
        raise ValueError(f'invalid optimizer config: {e}') from e

    if layer_decay != 1.0:
        exponents = layer_exponents(params, layer_id_fn, num_layer_ids)
    else:
        exponents = tree_map_named(lambda name, _: 0, params)
    labels = jax.tree.map(group_label, exponents)
    transforms = {
        group_label(k): optax.scale_by_learning_rate(
            lr_fn if k == 0 else schedule_for(layer_decay ** k))
        for k in sorted(set(jax.tree.leaves(exponents)))
    }

    parts = []
    if clip_grad:
        parts.append(clip_by_global_norm_torch(float(clip_grad)))
    if name == 'lars':
        parts.append(lars_direction(params, weight_decay=weight_decay, momentum=_cfg(config, 'momentum', 0.9),
                                    trust_coefficient=_cfg(config, 'trust_coefficient', 1e-3)))
    else:
        parts += [optax.scale_by_adam(b1=float(betas[0]), b2=float(betas[1]), eps=eps, eps_root=0.0),
                  optax.add_decayed_weights(weight_decay, mask=mask)]
    parts.append(optax.partition(transforms, labels))
    return optax.chain(*parts), lr_fn
