"""Parameter names and parameter groups: dotted names, the weight-decay mask, layer-wise lr decay.

Parameter trees are the nested dicts of ``nnx.to_pure_dict(nnx.state(model, nnx.Param))`` (an
``nnx.State`` works as well). A leaf is named by its keys joined with ``'.'``, e.g.
``'encoder.layers.0.blocks.1.attn.qkv.kernel'``; these names mirror the PyTorch ``state_dict``
names with ``weight`` spelled ``kernel`` / ``scale``. The model supplies the rules through its
hooks (``no_weight_decay()``, ``layer_id``, ``num_layer_ids``; see :mod:`jaxmim.registry`); this
module turns them into per-leaf pytrees that :func:`jaxmim.optim.build_optimizer` feeds to
``optax.add_decayed_weights`` and ``optax.partition``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

PyTree = Any

__all__ = [
    'path_names',
    'tree_map_named',
    'weight_decay_mask',
    'layer_exponents',
    'layer_decay_scales',
    'group_label',
]


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


def tree_map_named(fn: Callable[[str, Any], Any], tree: PyTree) -> PyTree:
    """``fn(dotted_name, leaf)`` over every leaf of ``tree``.

    ``nnx.Variable`` nodes count as leaves (and are replaced by ``fn``'s result), so trees built
    from an ``nnx.State`` match the Variable-free ("pure") trees that ``nnx.Optimizer`` hands to
    optax.

    Args:
        fn: ``(name, leaf) -> value``; ``name`` as in :func:`path_names`.
        tree: any pytree, or an ``nnx.State``.

    Returns:
        A pytree with the structure of ``tree`` (Variables replaced) holding ``fn``'s results.

    Source: jaxmim helper over ``jax.tree_util.tree_map_with_path``.
    """
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

    Source: jaxmim convention; the names mirror PyTorch ``nn.Module.named_parameters()``
    (``torch/nn/modules/module.py``) with list indices as integer keys.
    """
    return tree_map_named(lambda name, _: name, tree)


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

    Source: microsoft/SimMIM@d3e29bc ``optimizer.py:47-66``, ``:146-147``, ``:186-191`` and
    ``models/swin_transformer.py:556-562`` (``no_weight_decay`` /
    ``no_weight_decay_keywords``); implus/UM-MAE@cb7776b ``main_pretrain.py:198-199`` (timm
    0.3.2 ``add_weight_decay``); facebookresearch/mae@be47fef ``util/lr_decay.py:31``
    (``p.ndim == 1 or n in no_weight_decay_list``).
    """
    patterns = _patterns('no_weight_decay', patterns)

    def decay(name: str, leaf) -> bool:
        if _ndim(leaf) == 1 or name == 'bias' or name.endswith('.bias'):
            return False
        return not any(fnmatch.fnmatchcase(name, p) for p in patterns)

    return tree_map_named(decay, params)


def layer_exponents(
    params: PyTree,
    layer_id_fn: Callable[[str], int],
    num_ids: int,
) -> PyTree:
    """Per-leaf layer-decay exponent ``num_ids - 1 - layer_id_fn(name)``, the ids validated.

    Args:
        params: pytree of arrays (only the structure and names are used), or an ``nnx.State``.
        layer_id_fn: dotted name -> layer id in ``[0, num_ids)`` (the model's ``layer_id``).
        num_ids: number of ids (the model's ``num_layer_ids``), a positive integer.

    Returns:
        Pytree with the structure of ``params`` and Python ``int`` leaves in
        ``[0, num_ids)`` (0 for the last id, the final norm / head).

    Raises:
        ValueError: if ``num_ids`` is not a positive integer, or an id is not an integer or
            falls outside ``[0, num_ids)`` (the error names the leaf).

    Source: microsoft/SimMIM@d3e29bc ``optimizer.py:73-81``; facebookresearch/mae@be47fef
    ``util/lr_decay.py:22``.
    """
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

    return tree_map_named(exponent, params)


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

    Source: microsoft/SimMIM@d3e29bc ``optimizer.py:73-81``, ``:165-177``;
    facebookresearch/mae@be47fef ``util/lr_decay.py:22`` (and implus/UM-MAE@cb7776b
    ``util/lr_decay.py:13-74``), where ``num_layers = depth + 1`` and ``scale = decay **
    (num_layers - id)`` is the same rule.
    """
    if not (np.isfinite(float(layer_decay)) and layer_decay > 0):
        raise ValueError(f'layer_decay must be > 0, got {layer_decay!r}')
    exponents = layer_exponents(params, layer_id_fn, num_ids)
    return jax.tree.map(lambda k: float(layer_decay) ** k, exponents)


def group_label(exponent: int) -> str:
    """The ``optax.partition`` label of the parameter group with layer-decay exponent ``exponent``.

    Args:
        exponent: a non-negative ``int`` from :func:`layer_exponents` (0 without layer decay).

    Returns:
        ``'layer_decay_pow_<exponent>'``: a plain identifier, as ``'.'`` would clash with the
        dotted key names of the optimizer state in checkpoints.

    Source: jaxmim convention.
    """
    return f'layer_decay_pow_{exponent}'
