"""Gradient norms and PyTorch-style global-norm clipping.

:func:`global_norm` is the one L2 norm of a gradient tree per step (the clip and the train step's
``grad_norm`` metric share it); :func:`clip_by_global_norm_torch` is
``torch.nn.utils.clip_grad_norm_`` as an optax transformation. ``optax.clip_by_global_norm``
uses the coefficient ``max_norm / norm``, without torch's ``+ 1e-6``, hence hand-written.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxmim.ops import sum_squares

PyTree = Any

__all__ = ['global_norm', 'clip_by_global_norm_torch']


def global_norm(tree: PyTree) -> jax.Array:
    """The L2 norm of all the leaves of ``tree`` together: ``sqrt(sum_leaves sum(g ** 2))``.

    Each leaf's sum of squares is :func:`jaxmim.ops.sum_squares` (one read of the leaf through
    XLA's matrix path on CPU, where ``optax.tree.norm`` writes the squares out first). Used by
    :func:`clip_by_global_norm_torch` and the train step's ``grad_norm`` metric, so XLA computes
    it once per step.

    Args:
        tree: pytree of float arrays of any shapes and float dtypes (e.g. gradients).

    Returns:
        A float32 scalar ``jax.Array`` (0 for a tree without leaves).

    Source: ``torch/nn/utils/clip_grad.py`` (``clip_grad_norm_`` with ``norm_type=2``).
    """
    leaves = jax.tree.leaves(tree)
    return jnp.sqrt(sum(sum_squares(g) for g in leaves)) if leaves else jnp.zeros((), jnp.float32)


def clip_by_global_norm_torch(max_norm: float) -> optax.GradientTransformation:
    """Global-norm clipping with ``torch.nn.utils.clip_grad_norm_``'s coefficient.

    ``norm = sqrt(sum_leaves sum(g**2))`` (computed in float32, :func:`global_norm`); every
    gradient is multiplied by ``min(1, max_norm / (norm + 1e-6))``. ``optax.clip_by_global_norm``
    uses ``max_norm / norm`` without the 1e-6, hence hand-written. A non-finite norm propagates
    (as in torch with ``error_if_nonfinite=False``).

    Args:
        max_norm: clipping threshold (> 0), in gradient units.

    Returns:
        A stateless ``optax.GradientTransformation`` (state ``optax.EmptyState()``).

    Raises:
        ValueError: if ``max_norm <= 0``.

    Source: microsoft/SimMIM@d3e29bc ``main_simmim.py:160-169``;
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
