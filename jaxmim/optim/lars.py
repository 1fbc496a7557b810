"""LARS as MAE's linear probing runs it (the MoCo v3 implementation), without the learning rate.

For a leaf ``p`` with gradient ``g`` (after any clipping), facebookresearch/mae@6a2ba40
``util/lars.py:24-47`` (copied from MoCo v3) does, per step::

    if p.ndim > 1:                                   # not a bias / norm scale / 1-D tensor
        g <- g + weight_decay * p
        q  = trust_coefficient * ||p|| / ||g||   if ||p|| > 0 and ||g|| > 0   else 1
        g <- q * g
    mu <- momentum * mu + g                          # mu starts at 0
    p  <- p - lr * mu

:func:`lars_direction` is everything but the last line, as one optax chain:
``optax.add_decayed_weights`` and ``optax.scale_by_trust_ratio`` (masked to the leaves with
``ndim > 1``: :func:`lars_mask`), then ``optax.trace(momentum)``; the lr is applied after it by
:func:`jaxmim.optim.build_optimizer` (``optax.scale_by_learning_rate`` per lr group).

Why not ``optax.lars``: it scales by the learning rate *before* the momentum trace
(``mu <- momentum * mu + lr * g; p <- p - mu``), so past gradients keep the lr of their own step,
where MAE's ``p <- p - lr * mu`` applies the current lr to the whole trace. With a constant lr
the two are the same update; under MAE's warm-up + cosine schedule they are not
(``tests/test_linprobe.py`` checks both statements).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import optax

from jaxmim.optim.groups import tree_map_named, _ndim

PyTree = Any

__all__ = ['lars_mask', 'lars_direction']


def lars_mask(params: PyTree) -> PyTree:
    """Which leaves LARS decays and rescales by the trust ratio: ``True`` for ``ndim > 1``.

    MAE's LARS tests only the dimension (``if p.ndim > 1``), not names: biases, norm scales and
    every other 1-D tensor take the plain momentum step, with neither weight decay nor the trust
    ratio.

    Args:
        params: pytree of arrays (or anything with ``.shape``), or an ``nnx.State``.

    Returns:
        Pytree with the structure of ``params`` and Python ``bool`` leaves.

    Source: facebookresearch/mae@6a2ba40 ``util/lars.py:31`` (``if p.ndim > 1``).
    """
    return tree_map_named(lambda _, leaf: _ndim(leaf) > 1, params)


def lars_direction(params: PyTree, *, weight_decay: float, momentum: float,
                   trust_coefficient: float) -> optax.GradientTransformation:
    """MAE / MoCo v3 LARS up to the learning rate: ``mu`` of the module docstring, which the caller
    scales by ``-lr``.

    Args:
        params: the parameter pytree (structure and ``ndim`` only: :func:`lars_mask`).
        weight_decay: L2 coefficient added to the gradient of the ``ndim > 1`` leaves (>= 0; MAE's
            linear probing uses 0).
        momentum: the trace's decay in ``[0, 1)`` (MAE 0.9).
        trust_coefficient: the trust ratio's coefficient (> 0; MAE 1e-3).

    Returns:
        The chain ``add_decayed_weights(weight_decay, mask) -> masked(scale_by_trust_ratio(
        trust_coefficient)) -> trace(momentum)``; its state is one momentum buffer per leaf (and
        empty masked states), arrays and empty NamedTuples only (savable by orbax).

    Raises:
        ValueError: ``momentum`` outside ``[0, 1)``, ``trust_coefficient <= 0`` or a negative
            ``weight_decay`` (named as the ``config.optim`` field).

    Source: facebookresearch/mae@6a2ba40 ``util/lars.py:14-47``; MAE paper (He et al., 2022)
    Appendix A, "Linear probing" (LARS, momentum 0.9, weight decay 0, batch 16384).
    """
    for field, value in (('weight_decay', weight_decay), ('momentum', momentum),
                         ('trust_coefficient', trust_coefficient)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f'config.optim.{field} must be a number, got {value!r}')
    if not 0.0 <= float(momentum) < 1.0:
        raise ValueError(f'config.optim.momentum must be in [0, 1) for LARS, got {momentum!r}')
    if not float(trust_coefficient) > 0.0:
        raise ValueError(f'config.optim.trust_coefficient must be > 0 for LARS, got {trust_coefficient!r}')
    if float(weight_decay) < 0.0:
        raise ValueError(f'config.optim.weight_decay must be >= 0, got {weight_decay!r}')
    mask = lars_mask(params)
    return optax.chain(
        optax.add_decayed_weights(float(weight_decay), mask=mask),
        optax.masked(optax.scale_by_trust_ratio(trust_coefficient=float(trust_coefficient)), mask),
        optax.trace(decay=float(momentum), nesterov=False),
    )
