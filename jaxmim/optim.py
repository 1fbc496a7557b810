"""Optimizer, parameter groups, layer-wise lr decay and lr schedules of SimMIM.

Reproduces, for pure JAX/optax, what microsoft/SimMIM@d3e29bc builds in ``optimizer.py`` and
``lr_scheduler.py`` (spec ``simmim_swin.md`` sections 4.3-4.7):

* AdamW (betas (0.9, 0.999), eps 1e-8, decoupled weight decay ``p <- p (1 - lr wd)``) whose
  weight decay is switched off for 1-D tensors, biases, ``relative_position_bias_table``,
  ``absolute_pos_embed`` and ``mask_token`` (section 4.4);
* layer-wise lr decay for fine-tuning: every parameter gets a layer id and its group's base lr is
  ``base_lr * layer_decay ** (num_ids - 1 - id)`` (section 4.5);
* a per-iteration schedule: linear warmup from ``warmup_lr``, then cosine (not re-based after the
  warmup) or multistep, with the one-iteration lag of SimMIM's training loop (section 4.6);
* global-norm gradient clipping with PyTorch's coefficient ``max_norm / (norm + 1e-6)``
  (section 4.7).

Parameter trees are the nested dicts of ``nnx.to_pure_dict(nnx.state(model, nnx.Param))`` (an
``nnx.State`` works as well). A leaf is named by its keys joined with ``'.'``, e.g.
``'encoder.layers.0.blocks.1.attn.qkv.kernel'``; these names mirror the PyTorch ``state_dict``
names with ``weight`` spelled ``kernel`` / ``scale``, so the official name-based rules apply
unchanged.

Typical use::

    tx, lr_fn = build_optimizer(config.optim, params, total_steps,
                                layer_id_fn=functools.partial(swin_layer_id, depths=depths),
                                num_layer_ids=sum(depths) + 2)
    opt_state = tx.init(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

PyTree = Any
Schedule = Callable[[Any], jax.Array]

__all__ = [
    'path_names',
    'weight_decay_mask',
    'swin_layer_id',
    'vit_layer_id',
    'layer_decay_scales',
    'simmim_lr_schedule',
    'scale_lrs',
    'clip_by_global_norm_torch',
    'scale_by_layerwise_schedule',
    'ScaleByLayerwiseScheduleState',
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


def weight_decay_mask(
    params: PyTree,
    no_weight_decay: Sequence[str] = ('absolute_pos_embed', 'mask_token'),
    no_weight_decay_keywords: Sequence[str] = ('relative_position_bias_table',),
) -> PyTree:
    """Which leaves receive weight decay (True) under SimMIM's parameter-group rule.

    A leaf gets **no** decay iff any of the following holds (official
    ``get_pretrain_param_groups`` / ``get_finetune_param_groups``):

    * it is 1-D (``ndim == 1``: LayerNorm scale/bias, Linear/Conv biases);
    * its dotted name ends with ``'.bias'`` (or is ``'bias'``);
    * its name, or the name's last component, is in ``no_weight_decay`` (the official lists hold
      ``'absolute_pos_embed'`` for Swin and ``'encoder.mask_token'`` for SimMIM; matching the last
      component covers both the pre-training and the fine-tuning trees);
    * any string of ``no_weight_decay_keywords`` is a substring of its name.

    Everything else (Linear/Conv kernels incl. ``patch_embed.proj.kernel`` and the SimMIM
    decoder's ``kernel``) is decayed.

    Args:
        params: pytree of arrays (or anything with ``.shape``, e.g. ``jax.ShapeDtypeStruct``).
        no_weight_decay: exact names / last name components excluded from decay.
        no_weight_decay_keywords: substrings that exclude a name from decay.

    Returns:
        Pytree with the structure of ``params`` and Python ``bool`` leaves (True = decay),
        directly usable as the ``mask`` of ``optax.add_decayed_weights`` (``nnx.Variable``
        nodes of an ``nnx.State`` become plain leaves).

    Source: spec section 4.4 and 1.9; microsoft/SimMIM@d3e29bc ``optimizer.py:47-66``,
    ``:146-147``, ``:186-191``; ``models/swin_transformer.py:556-562``; ``models/simmim.py``.
    """
    skip = set(no_weight_decay)
    keywords = tuple(no_weight_decay_keywords)

    def decay(name: str, leaf) -> bool:
        last = name.rsplit('.', 1)[-1]
        if _ndim(leaf) == 1 or last == 'bias':
            return False
        if name in skip or last in skip:
            return False
        return not any(k in name for k in keywords)

    return _tree_map_named(decay, params)


def swin_layer_id(name: str, depths: Sequence[int]) -> int:
    """Layer id of a Swin parameter for layer-wise lr decay (official ``get_swin_layer``).

    With ``L = sum(depths)`` the ids run over ``0 .. L + 1`` (``L + 2`` ids):

    * ``mask_token`` and ``patch_embed.*`` -> 0;
    * ``layers.l.blocks.b.*`` -> ``sum(depths[:l]) + b + 1``;
    * ``layers.l.downsample.*`` (PatchMerging reduction/norm) -> ``sum(depths[:l + 1])``, the id of
      the last block of stage ``l``;
    * everything else (final ``norm.*``, ``head.*``, ``absolute_pos_embed``) -> ``L + 1``.

    For depths ``[2, 2, 18, 2]``: stage-1 blocks 1-2 (merge 2), stage-2 blocks 3-4 (merge 4),
    stage-3 blocks 5-22 (merge 22), stage-4 blocks 23-24, norm/head 25.

    Args:
        name: dotted parameter name; a leading ``'encoder.'`` (SimMIM wrapper) is stripped.
        depths: blocks per stage, e.g. ``(2, 2, 18, 2)``.

    Returns:
        The integer layer id.

    Raises:
        ValueError: for a ``layers.*`` name whose stage index is out of range or that is neither
            a block nor a downsample parameter.

    Source: spec section 4.5; microsoft/SimMIM@d3e29bc ``optimizer.py:123-136``.
    """
    depths = [int(d) for d in depths]
    num_blocks = sum(depths)
    if name.startswith('encoder.'):
        name = name[len('encoder.'):]
    parts = name.split('.')
    if parts[0] in ('mask_token', 'patch_embed'):
        return 0
    if parts[0] == 'layers':
        if len(parts) < 4 or not parts[1].isdigit():
            raise ValueError(f'swin_layer_id: cannot parse parameter name {name!r}')
        stage = int(parts[1])
        if stage >= len(depths):
            raise ValueError(
                f'swin_layer_id: stage {stage} of {name!r} is out of range for depths {depths}')
        if parts[2] == 'downsample':
            return sum(depths[:stage + 1])
        if parts[2] == 'blocks' and parts[3].isdigit():
            return sum(depths[:stage]) + int(parts[3]) + 1
        raise ValueError(f'swin_layer_id: cannot parse parameter name {name!r}')
    return num_blocks + 1


def vit_layer_id(name: str, depth: int) -> int:
    """Layer id of a ViT parameter for layer-wise lr decay (official ``get_vit_layer``).

    ``cls_token``, ``mask_token``, ``pos_embed``, ``patch_embed.*`` -> 0; ``blocks.i.*`` ->
    ``i + 1``; everything else (``rel_pos_bias``, final norm, head) -> ``depth + 1``. A leading
    ``'encoder.'`` is stripped. Ids run over ``0 .. depth + 1`` (``depth + 2`` ids).

    Args:
        name: dotted parameter name.
        depth: number of transformer blocks.

    Returns:
        The integer layer id.

    Source: spec section 4.5; microsoft/SimMIM@d3e29bc ``optimizer.py:109-120``.
    """
    if name.startswith('encoder.'):
        name = name[len('encoder.'):]
    parts = name.split('.')
    if parts[0] in ('cls_token', 'mask_token', 'pos_embed', 'patch_embed'):
        return 0
    if parts[0] == 'blocks' and len(parts) > 1 and parts[1].isdigit():
        return int(parts[1]) + 1
    return int(depth) + 1


def layer_decay_scales(
    params: PyTree,
    layer_id_fn: Callable[[str], int],
    num_ids: int,
    layer_decay: float,
) -> PyTree:
    """Per-leaf lr multiplier ``layer_decay ** (num_ids - 1 - layer_id_fn(name))``.

    Args:
        params: pytree of arrays (only the structure and names are used).
        layer_id_fn: maps a dotted name to an id in ``[0, num_ids)``, e.g.
            ``functools.partial(swin_layer_id, depths=(2, 2, 18, 2))``.
        num_ids: number of ids (Swin: ``sum(depths) + 2``; ViT: ``depth + 2``).
        layer_decay: decay factor per layer (1.0 gives all-ones).

    Returns:
        Pytree with the structure of ``params`` and Python ``float`` leaves (dimensionless).

    Raises:
        ValueError: if ``num_ids < 1``, ``layer_decay <= 0`` or an id falls outside
            ``[0, num_ids)`` (the error names the leaf).

    Source: spec section 4.5; microsoft/SimMIM@d3e29bc ``optimizer.py:73-81``, ``:165-177``.
    """
    if int(num_ids) != num_ids or num_ids < 1:
        raise ValueError(f'num_ids must be a positive integer, got {num_ids!r}')
    if not layer_decay > 0:
        raise ValueError(f'layer_decay must be > 0, got {layer_decay!r}')

    def scale(name: str, _) -> float:
        layer_id = int(layer_id_fn(name))
        if not 0 <= layer_id < num_ids:
            raise ValueError(f'layer id {layer_id} of {name!r} is outside [0, {num_ids})')
        return float(layer_decay) ** (int(num_ids) - 1 - layer_id)

    return _tree_map_named(scale, params)


# --------------------------------------------------------------------------------------------
# Learning-rate schedules.


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


SCHEDULES = ('cosine', 'multistep')


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

    Args:
        base_lr: peak lr of the group (already batch-scaled), a float or a concrete array
            (broadcast against the step).
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
        -> lr as a float32 ``jax.Array`` of the broadcast shape. Jit-friendly.

    Raises:
        ValueError: naming the argument, for an unknown ``name``, a negative or non-finite lr,
            ``total_steps < 1``, ``warmup_steps`` outside ``[0, total_steps]``, bad milestones or
            ``gamma <= 0``.

    Source: spec section 4.6; microsoft/SimMIM@d3e29bc ``lr_scheduler.py:18-35``, ``:119-141``,
    ``main_simmim.py:156-171``; timm 0.5 ``scheduler/cosine_lr.py``.
    """
    if name not in SCHEDULES:
        raise ValueError(f'schedule name must be one of {SCHEDULES}, got {name!r}')
    _check_nonneg('base_lr', base_lr)
    _check_nonneg('warmup_lr', warmup_lr)
    _check_nonneg('min_lr', min_lr)
    total_steps = _as_int('total_steps', total_steps, minimum=1)
    warmup_steps = _as_int('warmup_steps', warmup_steps, minimum=0)
    if warmup_steps > total_steps:
        raise ValueError(
            f'warmup_steps ({warmup_steps}) must be <= total_steps ({total_steps})')
    milestones = tuple(_as_int('milestones', m) for m in milestones)
    if name == 'multistep':
        if not milestones:
            raise ValueError('milestones must be non-empty for the multistep schedule')
        if list(milestones) != sorted(milestones):
            raise ValueError(f'milestones must be ascending, got {milestones}')
        if warmup_steps > milestones[0]:
            raise ValueError(
                f'warmup_steps ({warmup_steps}) must be <= the first milestone ({milestones[0]})')
        if not gamma > 0:
            raise ValueError(f'gamma must be > 0, got {gamma!r}')
    base = base_lr
    warmup_lr = float(warmup_lr)
    min_lr = float(min_lr)
    gamma = float(gamma)

    def value(t_int: jax.Array) -> jax.Array:
        t = t_int.astype(jnp.float32)
        b = jnp.asarray(base, jnp.float32)
        if name == 'cosine':
            cos = min_lr + 0.5 * (b - min_lr) * (1.0 + jnp.cos(math.pi * t / total_steps))
            after = jnp.where(t_int >= total_steps, jnp.float32(min_lr), cos)
        else:
            count = sum((t_int >= m).astype(jnp.int32) for m in milestones)
            after = b * jnp.power(jnp.float32(gamma), count.astype(jnp.float32))
        if warmup_steps == 0:
            return after
        warm = warmup_lr + t * (b - warmup_lr) / warmup_steps
        return jnp.where(t_int < warmup_steps, warm, after)

    def schedule(step) -> jax.Array:
        t = jnp.asarray(step, jnp.int32)
        if lag:
            t = jnp.maximum(t - 1, 0)
        return value(t).astype(jnp.float32)

    return schedule


def scale_lrs(lr, batch_size_total: int, reference: int = 512):
    """Linear lr scaling ``lr * batch_size_total / reference``.

    SimMIM multiplies BASE_LR, WARMUP_LR and MIN_LR each by ``BATCH_SIZE * world_size / 512``
    (times ACCUMULATION_STEPS when > 1) before building anything.

    Args:
        lr: a float, or a pytree of floats (e.g. ``(base_lr, warmup_lr, min_lr)`` or a dict).
        batch_size_total: images per optimizer step over all devices and accumulation steps (> 0).
        reference: the batch size the configured lrs refer to (SimMIM: 512).

    Returns:
        ``lr`` scaled, with the same structure (floats for float input).

    Raises:
        ValueError: if ``batch_size_total`` or ``reference`` is not a positive integer.

    Source: spec section 4.3; microsoft/SimMIM@d3e29bc ``main_simmim.py:217-230``,
    ``main_finetune.py:321-334``.
    """
    batch_size_total = _as_int('batch_size_total', batch_size_total, minimum=1)
    reference = _as_int('reference', reference, minimum=1)
    factor = batch_size_total / reference
    return jax.tree.map(lambda x: float(x) * factor, lr)


# --------------------------------------------------------------------------------------------
# Gradient transformations.


def clip_by_global_norm_torch(max_norm: float) -> optax.GradientTransformation:
    """Global-norm clipping with ``torch.nn.utils.clip_grad_norm_``'s coefficient.

    ``norm = sqrt(sum_leaves sum(g**2))`` (computed in float32); every gradient is multiplied by
    ``min(1, max_norm / (norm + 1e-6))``. ``optax.clip_by_global_norm`` uses ``max_norm / norm``
    without the 1e-6. A non-finite norm propagates (as in torch with ``error_if_nonfinite=False``).

    Args:
        max_norm: clipping threshold (> 0), in gradient units.

    Returns:
        A stateless ``optax.GradientTransformation`` (state ``optax.EmptyState()``).

    Raises:
        ValueError: if ``max_norm <= 0``.

    Source: spec section 4.7; microsoft/SimMIM@d3e29bc ``main_simmim.py:160-169``;
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
        leaves = jax.tree.leaves(updates)
        sq = sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in leaves)
        norm = jnp.sqrt(sq)
        coef = jnp.minimum(max_norm / (norm + 1e-6), 1.0)
        updates = jax.tree.map(lambda g: (g * coef).astype(g.dtype), updates)
        return updates, state

    return optax.GradientTransformation(init_fn, update_fn)


class ScaleByLayerwiseScheduleState(NamedTuple):
    """State of :func:`scale_by_layerwise_schedule`: ``count`` is the int32 scalar step."""

    count: jax.Array


def scale_by_layerwise_schedule(
    lr_scales: PyTree,
    schedule_for_scale: Callable[[float], Schedule],
) -> optax.GradientTransformation:
    """Multiply each update by ``-lr``, with ``lr = schedule_for_scale(scale)(count)`` per leaf.

    Leaves sharing a scale (a parameter group) share one schedule evaluation; all the work is
    traced into the update function, so there is no Python-side per-step work.

    Args:
        lr_scales: pytree with the structure of the parameters and Python ``float`` leaves
            (e.g. from :func:`layer_decay_scales`).
        schedule_for_scale: maps a group's scale to its schedule (step -> lr), e.g.
            ``lambda s: simmim_lr_schedule(base_lr * s, warmup_lr, min_lr, ...)``.

    Returns:
        An ``optax.GradientTransformation`` with state :class:`ScaleByLayerwiseScheduleState`.

    Source: jaxmim; replaces SimMIM's per-group ``lr`` (spec 4.5) inside an optax chain.
    """
    cache: dict[float, Schedule] = {}

    def schedule_of(scale: float) -> Schedule:
        if scale not in cache:
            cache[scale] = schedule_for_scale(scale)
        return cache[scale]

    def init_fn(params):
        del params
        return ScaleByLayerwiseScheduleState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
        del params
        lrs: dict[float, jax.Array] = {}

        def lr_of(scale: float) -> jax.Array:
            if scale not in lrs:
                lrs[scale] = schedule_of(scale)(state.count)
            return lrs[scale]

        updates = jax.tree.map(lambda u, s: (-lr_of(s) * u).astype(u.dtype), updates, lr_scales)
        return updates, ScaleByLayerwiseScheduleState(count=optax.safe_increment(state.count))

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


def build_optimizer(
    config,
    params: PyTree,
    total_steps: int,
    layer_id_fn: Callable[[str], int] | None = None,
    num_layer_ids: int | None = None,
) -> tuple[optax.GradientTransformation, Schedule]:
    """SimMIM's optimizer as one optax chain: clip -> Adam moments -> masked decay -> per-group lr.

    The update of a leaf ``p`` with gradient ``g`` at step ``t`` (0-based) is, as torch AdamW::

        g   <- g * min(1, clip_grad / (||g_all||_2 + 1e-6))          (if clip_grad)
        m, v = Adam moments (betas), m_hat = m / (1 - b1^(t+1)), v_hat = v / (1 - b2^(t+1))
        p   <- p - lr_p(t) * (m_hat / (sqrt(v_hat) + eps) + wd_p * p)

    with ``wd_p = weight_decay`` where :func:`weight_decay_mask` is True, else 0, and
    ``lr_p = simmim_lr_schedule(base_lr * scale_p, warmup_lr, min_lr, ...)`` where ``scale_p`` is
    the layer-decay scale (1 without layer decay).

    Args:
        config: ``ml_collections.ConfigDict`` (or mapping) with fields

            * ``base_lr``, ``warmup_lr``, ``min_lr`` (floats >= 0, already batch-scaled, see
              :func:`scale_lrs`), ``weight_decay`` (>= 0), ``warmup_steps`` (int in
              ``[0, total_steps]``) — required;
            * ``schedule`` ('cosine' | 'multistep', default 'cosine'), ``milestones`` (steps,
              default ()), ``gamma`` (default 0.1), ``clip_grad`` (> 0, or None / 0 to disable;
              default 5.0), ``betas`` (default (0.9, 0.999)), ``eps`` (default 1e-8),
              ``layer_decay`` (default 1.0 = off), optional ``no_weight_decay`` and
              ``no_weight_decay_keywords`` overriding :func:`weight_decay_mask`'s defaults.
        params: the parameter pytree the optimizer will be applied to (arrays or
            ``jax.ShapeDtypeStruct``; only structure, names and ndim are used): nested dicts
            (``to_pure_dict()``), or an ``nnx.State`` for use with ``nnx.Optimizer(model, tx,
            wrt=nnx.Param)``.
        total_steps: total number of optimizer steps (> 0).
        layer_id_fn: name -> layer id, required when ``layer_decay != 1``
            (e.g. ``functools.partial(swin_layer_id, depths=depths)``).
        num_layer_ids: number of layer ids (Swin ``sum(depths) + 2``), required with
            ``layer_id_fn``.

    Returns:
        ``(tx, lr_fn)``: the ``optax.GradientTransformation`` (its state is a pytree of arrays
        and empty NamedTuples, savable by orbax) and, for logging, the lr schedule of a scale-1
        group (the final norm/head group; every group without layer decay), i.e. the lr applied
        at step ``t``.

    Raises:
        ValueError: naming the config field for a missing or invalid value (unknown schedule,
            negative lr, warmup > total, bad betas/eps/clip/layer_decay, layer decay without
            ``layer_id_fn``/``num_layer_ids``).

    Source: spec sections 4.4-4.7; microsoft/SimMIM@d3e29bc ``optimizer.py``, ``lr_scheduler.py``,
    ``main_simmim.py:156-171``, ``main_finetune.py:192-208``.
    """
    base_lr = float(_cfg(config, 'base_lr'))
    warmup_lr = float(_cfg(config, 'warmup_lr'))
    min_lr = float(_cfg(config, 'min_lr'))
    weight_decay = float(_cfg(config, 'weight_decay'))
    warmup_steps = _cfg(config, 'warmup_steps')
    schedule_name = _cfg(config, 'schedule', 'cosine')
    milestones = tuple(_cfg(config, 'milestones', ()) or ())
    gamma = float(_cfg(config, 'gamma', 0.1))
    clip_grad = _cfg(config, 'clip_grad', 5.0)
    betas = tuple(_cfg(config, 'betas', (0.9, 0.999)))
    eps = float(_cfg(config, 'eps', 1e-8))
    layer_decay = float(_cfg(config, 'layer_decay', 1.0))
    no_wd = tuple(_cfg(config, 'no_weight_decay', ('absolute_pos_embed', 'mask_token')))
    no_wd_kw = tuple(_cfg(config, 'no_weight_decay_keywords', ('relative_position_bias_table',)))

    for field, v in (('base_lr', base_lr), ('warmup_lr', warmup_lr), ('min_lr', min_lr),
                     ('weight_decay', weight_decay), ('eps', eps)):
        _check_nonneg(field, v)
    if len(betas) != 2 or not all(0.0 <= float(b) < 1.0 for b in betas):
        raise ValueError(f'betas must be two floats in [0, 1), got {betas!r}')
    if clip_grad is not None and not (np.isfinite(float(clip_grad)) and float(clip_grad) >= 0):
        raise ValueError(f'clip_grad must be None, 0 (off) or > 0, got {clip_grad!r}')
    if not (np.isfinite(layer_decay) and layer_decay > 0):
        raise ValueError(f'layer_decay must be > 0, got {layer_decay!r}')
    if layer_decay != 1.0 and (layer_id_fn is None or num_layer_ids is None):
        raise ValueError(
            f'layer_decay={layer_decay} requires layer_id_fn and num_layer_ids')

    def schedule_for_scale(scale: float) -> Schedule:
        return simmim_lr_schedule(
            base_lr * scale, warmup_lr, min_lr, total_steps, warmup_steps, name=schedule_name,
            milestones=milestones, gamma=gamma, lag=True)

    # Validates total_steps / warmup_steps / schedule / milestones / gamma eagerly.
    try:
        lr_fn = schedule_for_scale(1.0)
    except ValueError as e:
        raise ValueError(f'invalid optimizer config: {e}') from e

    if layer_decay != 1.0:
        scales = layer_decay_scales(params, layer_id_fn, num_layer_ids, layer_decay)
    else:
        scales = _tree_map_named(lambda name, _: 1.0, params)
    mask = weight_decay_mask(params, no_wd, no_wd_kw)

    parts = []
    if clip_grad:
        parts.append(clip_by_global_norm_torch(float(clip_grad)))
    parts += [
        optax.scale_by_adam(b1=float(betas[0]), b2=float(betas[1]), eps=eps, eps_root=0.0),
        optax.add_decayed_weights(weight_decay, mask=mask),
        scale_by_layerwise_schedule(scales, schedule_for_scale),
    ]
    return optax.chain(*parts), lr_fn
