"""Optimizer, parameter groups, layer-wise lr decay and lr schedules (SimMIM and MAE recipes).

Builds, as one optax chain, what microsoft/SimMIM@d3e29bc (``optimizer.py``, ``lr_scheduler.py``;
spec ``simmim_swin.md`` sections 4.3-4.7) and facebookresearch/mae@be47fef (``util/lr_sched.py``,
``util/lr_decay.py``; spec ``ummae.md`` section 10) build in PyTorch:

* torch AdamW (decoupled weight decay ``p <- p - lr wd p``) whose decay is switched off for 1-D
  tensors, biases and the fnmatch patterns of the model's ``no_weight_decay()`` hook;
* layer-wise lr decay: every parameter gets a layer id from the model's ``layer_id`` hook and
  the lr multiplier ``layer_decay ** (num_layer_ids - 1 - id)``; one ``optax.partition`` label
  per distinct multiplier;
* per-iteration (or per-epoch) schedules chosen by name (:data:`SCHEDULES`);
* global-norm gradient clipping with PyTorch's coefficient ``max_norm / (norm + 1e-6)``.

Parameter trees are the nested dicts of ``nnx.to_pure_dict(nnx.state(model, nnx.Param))`` (an
``nnx.State`` works as well). A leaf is named by its keys joined with ``'.'``, e.g.
``'encoder.layers.0.blocks.1.attn.qkv.kernel'``; these names mirror the PyTorch ``state_dict``
names with ``weight`` spelled ``kernel`` / ``scale``.

Typical use (the hooks come from the model, see ``notes/protocol.md``)::

    ocfg = scaled_optim_config(config.optim.to_dict(), config.batch_size)
    tx, lr_fn = build_optimizer(ocfg, params, total_steps,
                                layer_id_fn=model.layer_id, num_layer_ids=model.num_layer_ids,
                                no_weight_decay=model.no_weight_decay())
    opt_state = tx.init(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)

Which pieces are optax and which are hand-written (and why):

* optax: ``cosine_decay_schedule`` (both cosines), ``piecewise_constant_schedule`` (multistep),
  ``join_schedules`` (warm-up -> decay), ``constant_schedule``, ``partition`` (per-group lr),
  ``scale_by_learning_rate``, ``scale_by_adam``, ``add_decayed_weights``, ``chain``.
* hand-written linear warm-up (:func:`_linear_warmup`): ``optax.linear_schedule`` evaluates
  ``(init - end) * (1 - t / T) + end`` in float32, which cancels at the start of a long warm-up
  (relative error 5e-5 at MAE ViT-B's 3120-step warm-up, 8e-4 at 100k steps, and
  ``lr(0) != warmup_lr`` by ~1 ulp of ``base_lr``); ``init + t (end - init) / T`` stays within
  2e-7. The same applies to ``optax.warmup_cosine_decay_schedule`` (built on it), which in
  addition returns 0 instead of ``min_lr * (1 - c)`` (``c`` the cosine factor) when the peak
  is 0, and raises when
  ``warmup_steps == total_steps``.
* hand-written step remapping (the schedulers' one-update lag, epoch holding): ``t -> f(t)``
  wrappers, which optax has no transformation for.
* :func:`clip_by_global_norm_torch`: ``optax.clip_by_global_norm`` uses ``max_norm / norm``,
  without torch's ``+ 1e-6``.
"""

from __future__ import annotations

import collections
import fnmatch
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxmim.layers import sum_squares

PyTree = Any
Schedule = Callable[[Any], jax.Array]

__all__ = [
    'SCHEDULES',
    'SCHEDULE_UNITS',
    'LR_SCALE_FIELDS',
    'path_names',
    'weight_decay_mask',
    'layer_decay_scales',
    'simmim_lr_schedule',
    'mae_lr_schedule',
    'lr_schedule',
    'scale_lrs',
    'scaled_optim_config',
    'global_norm',
    'clip_by_global_norm_torch',
    'build_optimizer',
]

# --------------------------------------------------------------------------------------------
# Names and parameter groups.


def _key_name(key) -> str:
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return key.name
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return str(key.key)
    return str(key)


def _path_name(path: Sequence[Any]) -> str:
    # An nnx.State holds each array inside an nnx.Variable, which flattens through
    # GetAttrKey('value'); that component is not part of the parameter's name.
    if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == 'value':
        path = path[:-1]
    return '.'.join(_key_name(k) for k in path)


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def _tree_map_named(fn: Callable[[str, Any], Any], tree: PyTree) -> PyTree:
    # nnx.Variables are treated as leaves (and replaced by fn's result), so trees built from an
    # nnx.State match the Variable-free ("pure") trees that nnx.Optimizer hands to optax.
    return jax.tree_util.tree_map_with_path(
        lambda path, x: fn(_path_name(path), x), tree, is_leaf=_is_variable)


def path_names(tree: PyTree) -> PyTree:
    """Dotted name of every leaf, e.g. ``'encoder.layers.0.blocks.1.attn.qkv.kernel'``.

    Args:
        tree: any pytree; typically nested dicts of arrays as produced by
            ``nnx.to_pure_dict(nnx.state(model, nnx.Param))`` (integer keys for list indices).
            An ``nnx.State`` works too: each ``nnx.Variable`` counts as one leaf.

    Returns:
        A pytree with the structure of ``tree`` (``nnx.Variable`` nodes replaced by their
        name) whose leaves are ``str``: the path's keys (dict keys, sequence indices, attribute
        names) joined with ``'.'``.

    Source: jaxmim convention mirroring PyTorch ``named_parameters()`` names (spec section 0).
    """
    return _tree_map_named(lambda name, _: name, tree)


def _ndim(x) -> int:
    if _is_variable(x):
        x = x.get_value()
    shape = getattr(x, 'shape', None)
    return len(shape) if shape is not None else int(np.ndim(x))


def _patterns(field: str, patterns) -> tuple[str, ...]:
    if isinstance(patterns, (str, bytes)) or not isinstance(patterns, Sequence) or not all(
            isinstance(p, str) for p in patterns):
        raise ValueError(
            f'{field} must be a sequence (tuple/list) of fnmatch pattern strings, e.g. '
            f"('*mask_token',), got {patterns!r}")
    return tuple(patterns)


def weight_decay_mask(params: PyTree, patterns: Sequence[str] = ()) -> PyTree:
    """Which leaves receive weight decay (True): the universal rule plus the model's patterns.

    A leaf gets **no** decay iff any of the following holds:

    * it is 1-D (``ndim == 1``: LayerNorm scale/bias, Linear/Conv biases);
    * its dotted name ends with ``'.bias'`` or is ``'bias'``;
    * its full dotted name matches one of ``patterns`` under ``fnmatch.fnmatchcase`` (so
      ``'pos_embed'`` matches only the top-level ``pos_embed``, ``'*pos_embed'`` any depth,
      ``'*relative_position_bias_table'`` every block's table).

    Everything else (Linear/Conv kernels, 2-D+ tokens not matched by a pattern) is decayed.
    The patterns are the model's ``no_weight_decay()`` hook: SimMIM/Swin declare
    ``('*absolute_pos_embed', '*mask_token', '*relative_position_bias_table')`` (SimMIM's
    ``no_weight_decay`` + ``no_weight_decay_keywords``), MAE's ViT ``('pos_embed', 'cls_token',
    'mask_token', 'dist_token')``; UM-MAE's timm-0.3.2 ``add_weight_decay`` has none.

    Args:
        params: pytree of arrays (or anything with ``.shape``, e.g. ``jax.ShapeDtypeStruct``),
            or an ``nnx.State``.
        patterns: fnmatch patterns over full dotted names (case-sensitive).

    Returns:
        Pytree with the structure of ``params`` and Python ``bool`` leaves (True = decay),
        directly usable as the ``mask`` of ``optax.add_decayed_weights`` (``nnx.Variable``
        nodes of an ``nnx.State`` become plain leaves).

    Raises:
        ValueError: if ``patterns`` is a bare string or holds a non-string.

    Source: spec ``simmim_swin.md`` sections 1.9, 4.4 (microsoft/SimMIM@d3e29bc
    ``optimizer.py:47-66``, ``:146-147``, ``:186-191``); ``ummae.md`` section 10;
    facebookresearch/mae@be47fef ``util/lr_decay.py:31`` (``p.ndim == 1 or n in
    no_weight_decay_list``).
    """
    patterns = _patterns('no_weight_decay', patterns)

    def decay(name: str, leaf) -> bool:
        if _ndim(leaf) == 1 or name == 'bias' or name.endswith('.bias'):
            return False
        return not any(fnmatch.fnmatchcase(name, p) for p in patterns)

    return _tree_map_named(decay, params)


def _layer_exponents(
    params: PyTree,
    layer_id_fn: Callable[[str], int],
    num_ids: int,
) -> PyTree:
    """Per-leaf exponent ``num_ids - 1 - layer_id_fn(name)`` (an ``int``); validates the ids."""
    if isinstance(num_ids, bool) or int(num_ids) != num_ids or num_ids < 1:
        raise ValueError(f'num_layer_ids must be a positive integer, got {num_ids!r}')
    num_ids = int(num_ids)

    def exponent(name: str, _) -> int:
        layer_id = layer_id_fn(name)
        if isinstance(layer_id, bool) or int(layer_id) != layer_id:
            raise ValueError(f'layer id of {name!r} must be an integer, got {layer_id!r}')
        layer_id = int(layer_id)
        if not 0 <= layer_id < num_ids:
            raise ValueError(f'layer id {layer_id} of {name!r} is outside [0, {num_ids})')
        return num_ids - 1 - layer_id

    return _tree_map_named(exponent, params)


def layer_decay_scales(
    params: PyTree,
    layer_id_fn: Callable[[str], int],
    num_ids: int,
    layer_decay: float,
) -> PyTree:
    """Per-leaf lr multiplier ``layer_decay ** (num_ids - 1 - layer_id_fn(name))``.

    Args:
        params: pytree of arrays (only the structure and names are used).
        layer_id_fn: maps a dotted name to an id in ``[0, num_ids)``: the model's ``layer_id``
            hook, e.g. ``model.layer_id`` of a Swin-B.
        num_ids: number of ids (Swin: ``sum(depths) + 2``; ViT: ``depth + 2``).
        layer_decay: decay factor per layer (1.0 gives all-ones).

    Returns:
        Pytree with the structure of ``params`` and Python ``float`` leaves (dimensionless).

    Raises:
        ValueError: if ``num_ids < 1``, ``layer_decay <= 0`` or an id falls outside
            ``[0, num_ids)`` (the error names the leaf).

    Source: spec ``simmim_swin.md`` 4.5 (microsoft/SimMIM@d3e29bc ``optimizer.py:73-81``,
    ``:165-177``); ``ummae.md`` 10 (facebookresearch/mae@be47fef ``util/lr_decay.py:22``, where
    ``num_layers = depth + 1`` and ``scale = decay ** (num_layers - id)`` is the same rule).
    """
    if not (np.isfinite(float(layer_decay)) and layer_decay > 0):
        raise ValueError(f'layer_decay must be > 0, got {layer_decay!r}')
    exponents = _layer_exponents(params, layer_id_fn, num_ids)
    return jax.tree.map(lambda k: float(layer_decay) ** k, exponents)


def _group_label(exponent: int) -> str:
    # Plain identifiers ('.' would clash with dotted checkpoint key names).
    return f'layer_decay_pow_{exponent}'


# --------------------------------------------------------------------------------------------
# Learning-rate schedules.

SCHEDULES = ('cosine', 'multistep', 'mae_cosine')
"""Accepted ``config.schedule`` names (see :func:`lr_schedule`)."""

SCHEDULE_UNITS = ('step', 'epoch')
"""Accepted ``config.schedule_unit`` values (see :func:`lr_schedule`)."""

_SIMMIM_SCHEDULES = ('cosine', 'multistep')


def _is_concrete_number(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_nonneg(field: str, value) -> None:
    if _is_concrete_number(value):
        arr = np.asarray(value, dtype=np.float64)
        if not np.all(np.isfinite(arr)) or np.any(arr < 0):
            raise ValueError(f'{field} must be finite and >= 0, got {value!r}')


def _as_int(field: str, value, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, float, np.floating)):
        raise ValueError(f'{field} must be an integer, got {value!r}')
    if float(value) != int(value) or int(value) < minimum:
        raise ValueError(f'{field} must be an integer >= {minimum}, got {value!r}')
    return int(value)


def _linear_warmup(init_value: float, peak_value, warmup_steps: int) -> Schedule:
    """``init + t (peak - init) / Tw`` in float32, as SimMIM/timm and MAE write it.

    Hand-written rather than ``optax.linear_schedule``: optax computes
    ``(init - peak) * (1 - t / Tw) + peak``, whose float32 cancellation gives relative errors of
    5e-5 .. 1e-3 early in realistic warm-ups (3k .. 100k steps) and ``lr(0) != init``; this form
    stays within ~2e-7 of the float64 value. Only called for ``t < Tw`` (``optax.join_schedules``
    switches to the decay segment at ``Tw``).
    """
    def schedule(t):
        t = jnp.asarray(t).astype(jnp.float32)
        peak = jnp.asarray(peak_value, jnp.float32)
        return init_value + t * (peak - init_value) / warmup_steps

    return schedule


def _shifted(schedule: Schedule, offset: int) -> Schedule:
    # optax.join_schedules hands later segments ``t - boundary``; SimMIM's cosine and milestones
    # are functions of the global ``t`` (not re-based after the warm-up), so add it back.
    return lambda s: schedule(s + offset)


def _check_steps(total_steps, warmup_steps) -> tuple[int, int]:
    total_steps = _as_int('total_steps', total_steps, minimum=1)
    warmup_steps = _as_int('warmup_steps', warmup_steps, minimum=0)
    if warmup_steps > total_steps:
        raise ValueError(
            f'warmup_steps ({warmup_steps}) must be <= total_steps ({total_steps})')
    return total_steps, warmup_steps


def simmim_lr_schedule(
    base_lr,
    warmup_lr: float,
    min_lr: float,
    total_steps: int,
    warmup_steps: int,
    name: str = 'cosine',
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    lag: bool = True,
) -> Schedule:
    """Per-iteration lr of SimMIM (timm ``CosineLRScheduler``, SimMIM ``MultiStepLRScheduler``).

    With ``t`` the global iteration, ``T = total_steps``, ``Tw = warmup_steps``, the scheduler
    value is

    * ``t < Tw``: ``warmup_lr + t (base_lr - warmup_lr) / Tw`` (linear warmup);
    * cosine, ``Tw <= t < T``: ``min_lr + 0.5 (base_lr - min_lr)(1 + cos(pi t / T))``; the cosine is
      *not* re-based after the warmup, so the lr jumps at ``t = Tw`` (to ``0.905 base_lr`` for
      ``Tw / T = 0.2``); ``t >= T``: ``min_lr`` (timm's ``cycle_limit=1``);
    * multistep, ``t >= Tw``: ``base_lr * gamma ** (number of milestones <= t)`` (bisect_right);
      ``min_lr`` is unused.

    SimMIM calls ``lr_scheduler.step_update(t)`` *after* ``optimizer.step()`` and the scheduler's
    constructor already set the lr to ``warmup_lr``, so the lr used by iteration ``t`` is
    ``value(max(t - 1, 0))``: iterations 0 and 1 both run at ``warmup_lr``. ``lag=True`` returns
    that (the lr actually applied at optimizer step ``t``); ``lag=False`` returns ``value(t)``.

    ``warmup_lr`` and ``min_lr`` are absolute while ``base_lr`` is the parameter group's own base
    lr (layer-decayed in fine-tuning, spec 4.5), so a group whose ``base_lr`` is below
    ``warmup_lr`` sees its lr fall during warmup, as in the official code.

    Built from ``optax.join_schedules`` of the hand-written warm-up (see
    :func:`_linear_warmup`) and ``min_lr + optax.cosine_decay_schedule(base_lr - min_lr, T)``
    (the offset form also covers ``base_lr = 0`` and ``base_lr < min_lr``, where optax's
    ``alpha = min_lr / base_lr`` is undefined or > 1) or ``optax.piecewise_constant_schedule``
    (repeated milestones multiply ``gamma`` once per repetition, as bisect_right counts them).

    Args:
        base_lr: peak lr of the group (already batch-scaled), a float.
        warmup_lr: lr at iteration 0 (absolute).
        min_lr: final cosine lr (absolute; unused by multistep).
        total_steps: T, total number of optimizer steps (> 0).
        warmup_steps: Tw in ``[0, T]``; 0 disables warmup.
        name: ``'cosine'`` or ``'multistep'``.
        milestones: multistep boundaries in steps, ascending, each ``>= warmup_steps``
            (required, non-empty, for multistep).
        gamma: multistep decay factor (> 0).
        lag: apply SimMIM's one-iteration lag.

    Returns:
        An optax schedule: ``step`` (int scalar or array, the optimizer step count starting at 0)
        -> lr as a float32 ``jax.Array`` of the step's shape. Jit-friendly.

    Raises:
        ValueError: naming the argument, for an unknown ``name``, a negative or non-finite lr,
            ``total_steps < 1``, ``warmup_steps`` outside ``[0, total_steps]``, bad milestones or
            ``gamma <= 0``.

    Source: spec ``simmim_swin.md`` 4.6; microsoft/SimMIM@d3e29bc ``lr_scheduler.py:18-35``,
    ``:119-141``, ``main_simmim.py:156-171``; timm 0.5 ``scheduler/cosine_lr.py``.
    """
    if name not in _SIMMIM_SCHEDULES:
        raise ValueError(f'schedule name must be one of {_SIMMIM_SCHEDULES}, got {name!r}')
    _check_nonneg('base_lr', base_lr)
    _check_nonneg('warmup_lr', warmup_lr)
    _check_nonneg('min_lr', min_lr)
    total_steps, warmup_steps = _check_steps(total_steps, warmup_steps)
    milestones = tuple(_as_int('milestones', m) for m in (milestones or ()))
    if name == 'multistep':
        if not milestones:
            raise ValueError('milestones must be non-empty for the multistep schedule')
        if list(milestones) != sorted(milestones):
            raise ValueError(f'milestones must be ascending, got {milestones}')
        if warmup_steps > milestones[0]:
            raise ValueError(
                f'warmup_steps ({warmup_steps}) must be <= the first milestone ({milestones[0]})')
        if not (np.isfinite(float(gamma)) and gamma > 0):
            raise ValueError(f'gamma must be > 0, got {gamma!r}')
    warmup_lr, min_lr, gamma = float(warmup_lr), float(min_lr), float(gamma)

    if name == 'cosine':
        cosine = optax.cosine_decay_schedule(init_value=base_lr - min_lr, decay_steps=total_steps)
        after = lambda t: min_lr + cosine(t)  # noqa: E731
    else:
        counts = collections.Counter(milestones)
        after = optax.piecewise_constant_schedule(
            init_value=base_lr, boundaries_and_scales={m: gamma ** c for m, c in counts.items()})
    if warmup_steps:
        value = optax.join_schedules(
            [_linear_warmup(warmup_lr, base_lr, warmup_steps), _shifted(after, warmup_steps)],
            [warmup_steps])
    else:
        value = after
    return _remap_steps(value, unit=1, lag=1 if lag else 0)


def mae_lr_schedule(base_lr, min_lr: float, total_steps: int, warmup_steps: int) -> Schedule:
    """MAE's per-iteration lr: linear warm-up from 0, then a half cosine re-based after warm-up.

    facebookresearch/mae ``adjust_learning_rate`` is called at the *start* of every iteration
    with the fractional epoch ``it / len(loader) + epoch``; in steps (``T = total_steps``,
    ``Tw = warmup_steps``) it is

    * ``t < Tw``: ``base_lr * t / Tw`` (so ``lr(0) = 0``);
    * ``Tw <= t <= T``: ``min_lr + (base_lr - min_lr) * 0.5 * (1 + cos(pi (t - Tw) / (T - Tw)))``
      (``base_lr`` at ``t = Tw``, ``min_lr`` at ``t = T``);
    * ``t > T`` (never evaluated by MAE, whose loop stops at ``T - 1``): held at ``min_lr``.

    There is no lag. Built as ``optax.join_schedules`` of the hand-written warm-up (see
    :func:`_linear_warmup` for why not ``optax.linear_schedule``) and
    ``min_lr + optax.cosine_decay_schedule(base_lr - min_lr, T - Tw)`` (``optax.
    warmup_cosine_decay_schedule`` is the same formula but inherits the warm-up cancellation,
    returns 0 instead of the cosine when ``base_lr = 0 < min_lr`` and rejects ``Tw = T``);
    ``Tw = T`` gives the warm-up followed by ``min_lr``.

    Args:
        base_lr: peak lr (MAE's ``args.lr = blr * eff_batch / 256``; times the group's
            ``lr_scale`` for a layer-decayed group, see :func:`lr_schedule`).
        min_lr: final lr (MAE ``--min_lr``, absolute; times ``lr_scale`` for a group).
        total_steps: ``T = epochs * iters_per_epoch`` (> 0).
        warmup_steps: ``Tw = warmup_epochs * iters_per_epoch`` in ``[0, T]``.

    Returns:
        An optax schedule ``step -> lr`` (float32 ``jax.Array`` of the step's shape).

    Raises:
        ValueError: naming the argument, for a negative or non-finite lr, ``total_steps < 1``
            or ``warmup_steps`` outside ``[0, total_steps]``.

    Source: spec ``ummae.md`` 10, ``hivit.md`` (MAE recipe), ``greenmim.md``;
    facebookresearch/mae@be47fef ``util/lr_sched.py:9-21``, ``engine_pretrain.py:32-33``,
    ``engine_finetune.py`` (same call).
    """
    _check_nonneg('base_lr', base_lr)
    _check_nonneg('min_lr', min_lr)
    total_steps, warmup_steps = _check_steps(total_steps, warmup_steps)
    min_lr = float(min_lr)
    if warmup_steps < total_steps:
        cosine = optax.cosine_decay_schedule(init_value=base_lr - min_lr,
                                             decay_steps=total_steps - warmup_steps)
        after = lambda s: min_lr + cosine(s)  # noqa: E731
    else:
        after = optax.constant_schedule(min_lr)
    if warmup_steps:
        value = optax.join_schedules([_linear_warmup(0.0, base_lr, warmup_steps), after],
                                     [warmup_steps])
    else:
        value = after
    return _remap_steps(value, unit=1, lag=0)


def _remap_steps(schedule: Schedule, unit: int, lag: int) -> Schedule:
    """``t -> schedule(max(t // unit - lag, 0) * unit)`` as float32 (hand-written: optax has
    no step-remapping transformation)."""
    def remapped(step) -> jax.Array:
        t = jnp.asarray(step, jnp.int32)
        if unit != 1 or lag:
            t = jnp.maximum(t // unit - lag, 0) * unit
        return jnp.broadcast_to(jnp.asarray(schedule(t), jnp.float32), jnp.shape(t))

    return remapped


def lr_schedule(
    name: str,
    *,
    base_lr: float,
    warmup_lr: float,
    min_lr: float,
    total_steps: int,
    warmup_steps: int,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    scale: float = 1.0,
    unit: str = 'step',
    steps_per_epoch: int | None = None,
) -> Schedule:
    """The lr of one parameter group at optimizer step ``t``, for a schedule chosen by name.

    Names (:data:`SCHEDULES`):

    * ``'cosine'``: SimMIM/timm linear warm-up from ``warmup_lr`` + cosine that is not re-based
      after the warm-up, with the scheduler's one-update lag (:func:`simmim_lr_schedule`);
    * ``'multistep'``: the same warm-up + ``gamma ** (milestones <= t)``, same lag
      (:func:`simmim_lr_schedule`);
    * ``'mae_cosine'``: MAE's warm-up from 0 + re-based half cosine, no lag
      (:func:`mae_lr_schedule`); ``warmup_lr`` is unused.

    Per-group semantics for a group whose layer-decay multiplier is ``scale``:

    * SimMIM (``'cosine'``, ``'multistep'``): the group's *base* lr is ``base_lr * scale``
      while ``warmup_lr`` and ``min_lr`` stay absolute (timm keeps ``initial_lr`` per group);
    * MAE (``'mae_cosine'``): ``param_group['lr'] = lr * param_group['lr_scale']``, i.e. the
      whole schedule, ``min_lr`` included, is multiplied by ``scale``.

    Units (:data:`SCHEDULE_UNITS`): ``'step'`` updates the lr every iteration. ``'epoch'`` is a
    timm scheduler stepped once per epoch (DeiT-style supervised recipes): the lr is evaluated at
    the start of each epoch and held constant within it. The schedule is then a function of the
    epoch index ``e = t // steps_per_epoch``: ``'mae_cosine'`` gives ``raw(e * spe)``; for
    ``'cosine'``/``'multistep'`` the one-update lag becomes one epoch (the constructor sets
    ``raw(0)``, and DeiT's ``lr_scheduler.step(epoch)`` after epoch ``e`` sets ``raw(e)``), so
    epoch ``e`` runs at ``raw(max(e - 1, 0) * spe)``, where ``raw`` is the un-lagged step
    schedule. ``warmup_steps``, ``total_steps`` and ``milestones`` stay in steps and must be
    multiples of ``steps_per_epoch`` (then ``raw(e * spe)`` equals timm's ``t_in_epochs=True``
    value at epoch ``e``).

    Args:
        name: one of :data:`SCHEDULES`.
        base_lr, warmup_lr, min_lr: lrs (already batch-scaled; see :func:`scaled_optim_config`).
        total_steps: total optimizer steps (> 0).
        warmup_steps: warm-up steps in ``[0, total_steps]``.
        milestones: multistep boundaries in steps (ascending, ``>= warmup_steps``).
        gamma: multistep factor (> 0).
        scale: the group's lr multiplier (> 0), 1 for the un-decayed group.
        unit: one of :data:`SCHEDULE_UNITS`.
        steps_per_epoch: iterations per epoch (int >= 1), required when ``unit == 'epoch'``.

    Returns:
        An optax schedule ``step -> lr`` (float32 ``jax.Array``; jit-friendly).

    Raises:
        ValueError: naming the argument and the accepted values, for an unknown name or unit, a
            missing/non-positive ``steps_per_epoch``, step counts that are not multiples of it,
            and everything :func:`simmim_lr_schedule` / :func:`mae_lr_schedule` reject.

    Source: spec ``simmim_swin.md`` 4.5-4.6, ``ummae.md`` 10; microsoft/SimMIM@d3e29bc
    ``lr_scheduler.py``; facebookresearch/mae@be47fef ``util/lr_sched.py:9-21``;
    facebookresearch/deit ``main.py`` (``lr_scheduler.step(epoch)`` after each epoch).
    """
    if name not in SCHEDULES:
        raise ValueError(f'schedule name must be one of {SCHEDULES}, got {name!r}')
    if unit not in SCHEDULE_UNITS:
        raise ValueError(f'schedule_unit must be one of {SCHEDULE_UNITS}, got {unit!r}')
    if isinstance(scale, bool) or not (np.isfinite(float(scale)) and scale > 0):
        raise ValueError(f'scale must be finite and > 0, got {scale!r}')
    spe = 1
    if unit == 'epoch':
        if steps_per_epoch is None:
            raise ValueError("steps_per_epoch (an integer >= 1) is required when schedule_unit "
                             "is 'epoch'")
        spe = _as_int('steps_per_epoch', steps_per_epoch, minimum=1)
        for field, value in (('total_steps', total_steps), ('warmup_steps', warmup_steps)):
            if _as_int(field, value) % spe:
                raise ValueError(
                    f"{field} ({value}) must be a multiple of steps_per_epoch ({spe}) when "
                    f"schedule_unit is 'epoch'")
        if name == 'multistep' and any(_as_int('milestones', m) % spe for m in milestones):
            raise ValueError(
                f"milestones {tuple(milestones)} must be multiples of steps_per_epoch ({spe}) "
                f"when schedule_unit is 'epoch'")
    scale = float(scale)
    if name == 'mae_cosine':
        _check_nonneg('base_lr', base_lr)
        _check_nonneg('min_lr', min_lr)
        raw = mae_lr_schedule(base_lr * scale, min_lr * scale, total_steps, warmup_steps)
        lag = 0
    else:
        raw = simmim_lr_schedule(base_lr * scale, warmup_lr, min_lr, total_steps, warmup_steps,
                                 name=name, milestones=milestones, gamma=gamma, lag=False)
        lag = 1
    return _remap_steps(raw, unit=spe, lag=lag)


# --------------------------------------------------------------------------------------------
# Linear lr scaling by batch size.

LR_SCALE_FIELDS = ('base_lr', 'warmup_lr', 'min_lr')
"""The optimizer-config fields that ``lr_scale_fields`` may name."""


def scale_lrs(lr, batch_size_total: int, reference: int = 512):
    """Linear lr scaling ``lr * batch_size_total / reference``.

    SimMIM multiplies BASE_LR, WARMUP_LR and MIN_LR each by ``BATCH_SIZE * world_size / 512``
    (times ACCUMULATION_STEPS when > 1); MAE multiplies only ``--blr`` by ``eff_batch / 256``.

    Args:
        lr: a float, or a pytree of floats (e.g. ``(base_lr, warmup_lr, min_lr)`` or a dict).
        batch_size_total: images per optimizer step over all devices and accumulation steps (> 0).
        reference: the batch size the configured lrs refer to (SimMIM: 512, MAE: 256).

    Returns:
        ``lr`` scaled, with the same structure (floats for float input).

    Raises:
        ValueError: if ``batch_size_total`` or ``reference`` is not a positive integer.

    Source: spec ``simmim_swin.md`` 4.3; microsoft/SimMIM@d3e29bc ``main_simmim.py:217-230``,
    ``main_finetune.py:321-334``; facebookresearch/mae@be47fef ``main_pretrain.py`` (``args.lr =
    args.blr * eff_batch_size / 256``).
    """
    batch_size_total = _as_int('batch_size_total', batch_size_total, minimum=1)
    reference = _as_int('reference', reference, minimum=1)
    factor = batch_size_total / reference
    return jax.tree.map(lambda x: float(x) * factor, lr)


def scaled_optim_config(optim_config, batch_size: int) -> dict:
    """The optimizer config with the linear lr scaling rule applied, ready for build_optimizer.

    Pops ``lr_scale_batch`` (the reference batch; 0 or None disables scaling) and
    ``lr_scale_fields`` (which of :data:`LR_SCALE_FIELDS` scale; default all three) and
    multiplies each listed field by ``batch_size / lr_scale_batch``:

    * SimMIM: ``lr_scale_batch=512``, ``lr_scale_fields=('base_lr', 'warmup_lr', 'min_lr')``
      (all three scale);
    * MAE: ``lr_scale_batch=256``, ``lr_scale_fields=('base_lr',)`` (``base_lr`` is MAE's
      ``--blr``; ``min_lr`` is absolute).

    Args:
        optim_config: mapping (or ``ml_collections.ConfigDict``) of optimizer fields including
            ``lr_scale_batch``; not modified.
        batch_size: images per optimizer step over all devices and accumulation steps (> 0).

    Returns:
        A new ``dict`` without ``lr_scale_batch`` / ``lr_scale_fields``, the listed fields
        scaled (floats), everything else unchanged.

    Raises:
        ValueError: if ``lr_scale_batch`` is missing or not a non-negative integer,
            ``lr_scale_fields`` is not a tuple/list of distinct names among
            :data:`LR_SCALE_FIELDS`, a listed field is absent, or ``batch_size < 1``.

    Source: spec ``simmim_swin.md`` 4.3, ``ummae.md`` 10; microsoft/SimMIM@d3e29bc
    ``main_simmim.py:217-230``; facebookresearch/mae@be47fef ``main_pretrain.py``,
    ``main_finetune.py``.
    """
    config = dict(optim_config.to_dict() if hasattr(optim_config, 'to_dict') else optim_config)
    if 'lr_scale_batch' not in config:
        raise ValueError("optimizer config is missing the required field 'lr_scale_batch' "
                         "(reference batch size of the lrs; 0 disables the scaling)")
    reference = config.pop('lr_scale_batch')
    fields = config.pop('lr_scale_fields', LR_SCALE_FIELDS)
    if isinstance(fields, (str, bytes)) or not isinstance(fields, Sequence):
        raise ValueError(f'lr_scale_fields must be a tuple of names among {LR_SCALE_FIELDS}, '
                         f'got {fields!r}')
    fields = tuple(fields)
    unknown = [f for f in fields if f not in LR_SCALE_FIELDS]
    if unknown or len(set(fields)) != len(fields):
        raise ValueError(f'lr_scale_fields must be distinct names among {LR_SCALE_FIELDS}, '
                         f'got {fields!r}')
    if reference is None or reference == 0:
        return config
    reference = _as_int('lr_scale_batch', reference, minimum=0)
    batch_size = _as_int('batch_size', batch_size, minimum=1)
    for field in fields:
        if field not in config:
            raise ValueError(f'lr_scale_fields names {field!r}, which the optimizer config lacks')
        config[field] = scale_lrs(config[field], batch_size, reference)
    return config


# --------------------------------------------------------------------------------------------
# Gradient transformations.


def global_norm(tree: PyTree) -> jax.Array:
    """The L2 norm of all the leaves of ``tree`` together: ``sqrt(sum_leaves sum(g ** 2))``, a float32
    scalar (any float leaves). Each leaf's sum of squares is :func:`jaxmim.layers.sum_squares`
    (one read of the leaf through XLA's matrix path on CPU, where ``optax.tree.norm`` writes the
    squares out first). Used by :func:`clip_by_global_norm_torch` and the train step's
    ``grad_norm`` metric, so XLA computes it once per step."""
    leaves = jax.tree.leaves(tree)
    return jnp.sqrt(sum(sum_squares(g) for g in leaves)) if leaves else jnp.zeros((), jnp.float32)


def clip_by_global_norm_torch(max_norm: float) -> optax.GradientTransformation:
    """Global-norm clipping with ``torch.nn.utils.clip_grad_norm_``'s coefficient.

    ``norm = sqrt(sum_leaves sum(g**2))`` (computed in float32, :func:`global_norm`); every
    gradient is multiplied by ``min(1, max_norm / (norm + 1e-6))``. ``optax.clip_by_global_norm``
    uses ``max_norm / norm`` without the 1e-6, hence hand-written. A non-finite norm propagates (as in torch with
    ``error_if_nonfinite=False``).

    Args:
        max_norm: clipping threshold (> 0), in gradient units.

    Returns:
        A stateless ``optax.GradientTransformation`` (state ``optax.EmptyState()``).

    Raises:
        ValueError: if ``max_norm <= 0``.

    Source: spec ``simmim_swin.md`` 4.7; microsoft/SimMIM@d3e29bc ``main_simmim.py:160-169``;
    ``torch/nn/utils/clip_grad.py``.
    """
    if not max_norm > 0:
        raise ValueError(f'max_norm must be > 0, got {max_norm!r}')
    max_norm = float(max_norm)

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        norm = global_norm(updates)
        coef = jnp.minimum(max_norm / (norm + 1e-6), 1.0)
        updates = jax.tree.map(lambda g: (g * coef).astype(g.dtype), updates)
        return updates, state

    return optax.GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------------------------
# The optimizer.

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
    """torch AdamW with per-group lr schedules as one optax chain.

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
            ``layer_id_fn`` / ``num_layer_ids``, out-of-range layer ids, bad patterns).

    Source: spec ``simmim_swin.md`` 4.4-4.7, ``ummae.md`` 10; microsoft/SimMIM@d3e29bc
    ``optimizer.py``, ``lr_scheduler.py``, ``main_simmim.py:156-171``; facebookresearch/mae@be47fef
    ``util/lr_decay.py``, ``util/lr_sched.py``, ``main_finetune.py`` (torch AdamW).
    """
    for field in ('no_weight_decay', 'no_weight_decay_keywords'):
        if _has(config, field):
            raise ValueError(
                f'optimizer config field {field!r} is no longer read: weight-decay exclusions '
                f"are fnmatch patterns from the model's no_weight_decay() hook, passed as "
                f'build_optimizer(..., no_weight_decay=...)')
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
        _check_nonneg(field, v)
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
        exponents = _layer_exponents(params, layer_id_fn, num_layer_ids)
    else:
        exponents = _tree_map_named(lambda name, _: 0, params)
    labels = jax.tree.map(_group_label, exponents)
    transforms = {
        _group_label(k): optax.scale_by_learning_rate(
            lr_fn if k == 0 else schedule_for(layer_decay ** k))
        for k in sorted(set(jax.tree.leaves(exponents)))
    }

    parts = []
    if clip_grad:
        parts.append(clip_by_global_norm_torch(float(clip_grad)))
    parts += [
        optax.scale_by_adam(b1=float(betas[0]), b2=float(betas[1]), eps=eps, eps_root=0.0),
        optax.add_decayed_weights(weight_decay, mask=mask),
        optax.partition(transforms, labels),
    ]
    return optax.chain(*parts), lr_fn
