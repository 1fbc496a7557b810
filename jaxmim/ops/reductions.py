"""Reductions written for XLA's CPU backend: column sums and sums of squares as matrix products.

Sources: docs/performance.md, "Session 6" (2. Column sums became strided ``reduce-window``
loops) and "Session 7" (1. The gradient norm).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxmim.ops.dispatch import form

__all__ = ['sum_rows', 'sum_rows_fast', 'sum_rows_portable', 'sum_squares', 'sum_squares_fast',
           'sum_squares_portable']


def sum_rows(a: jax.Array) -> jax.Array:
    """Sum of ``a`` ``(..., C)`` over all its leading axes: ``(C,)``, float32 (any float input).

    Dispatches (:func:`jaxmim.ops.form`) to :func:`sum_rows_fast` (CPU) or
    :func:`sum_rows_portable`. This is the bias and LayerNorm gradients' reduction
    (:func:`jaxmim.ops.linear_apply`, :func:`jaxmim.ops.layer_norm_last`).
    """
    return sum_rows_fast(a) if form('sum_rows') == 'fast' else sum_rows_portable(a)


def sum_rows_portable(a: jax.Array) -> jax.Array:
    """The reference form of :func:`sum_rows`: ``a.reshape(-1, C).sum(0)`` accumulated in float32."""
    return a.reshape(-1, a.shape[-1]).sum(0, dtype=jnp.float32)


def sum_rows_fast(a: jax.Array) -> jax.Array:
    """:func:`sum_rows` as the matrix-vector product ``ones(1, M) @ a.reshape(M, C)``
    (``precision=HIGHEST``, float32 accumulation); ``a`` ``(..., C)`` of any float dtype, result
    ``(C,)`` float32.

    XLA's CPU compiler rewrites a multi-axis sum such as ``(128, 8, 8, 256) -> (256,)`` into a
    ``reduce-window`` with ``32 x 8 x 8 x 1`` windows, whose loop walks each output channel with a
    stride of ``C`` floats: 4.2 ms on one core for that shape inside the demo Swin's train step,
    where the product takes the matrix path; the step's ``reduce-window`` total fell from 37 to
    10 ms (docs/performance.md, "Session 6", "Column sums").
    """
    a2 = a.reshape(-1, a.shape[-1])
    ones = jnp.ones((1, a2.shape[0]), a2.dtype)
    return jax.lax.dot_general(ones, a2, (((1,), (0,)), ((), ())), precision=jax.lax.Precision.HIGHEST,
                               preferred_element_type=jnp.float32)[0]


GRAM_ROWS = 4
"""Rows of the matrix whose Gram trace :func:`sum_squares_fast` takes."""
GRAM_MIN_SIZE = 1 << 16
"""Fewest elements for which :func:`sum_squares_fast` takes the Gram trace (smaller arrays, and
sizes not a multiple of :data:`GRAM_ROWS`, take the plain sum)."""


def sum_squares(a: jax.Array) -> jax.Array:
    """``sum(a ** 2)`` over every element of ``a`` (any shape, any float dtype): a float32 scalar.

    Dispatches (:func:`jaxmim.ops.form`) to :func:`sum_squares_fast` (CPU) or
    :func:`sum_squares_portable`. This is the gradient-clipping and ``grad_norm`` reduction
    (:func:`jaxmim.optim.global_norm`).
    """
    return sum_squares_fast(a) if form('sum_squares') == 'fast' else sum_squares_portable(a)


def sum_squares_portable(a: jax.Array) -> jax.Array:
    """The reference form of :func:`sum_squares`: ``sum(square(a))`` in float32 (what
    ``optax.tree.norm`` computes per leaf)."""
    return jnp.sum(jnp.square(a.astype(jnp.float32)))


def sum_squares_fast(a: jax.Array) -> jax.Array:
    """:func:`sum_squares` as a Gram trace: an array of at least 65,536 elements whose size is a
    multiple of 4 is reshaped to ``V`` ``(4, size / 4)`` and the sum is ``trace(V V^T)``
    (``precision=HIGHEST``, float32 accumulation), one read of ``a`` through XLA's matrix path;
    smaller or odd-sized arrays take :func:`sum_squares_portable`.

    XLA's CPU compiler writes ``square(a)`` to a temporary buffer and then sums it with
    ``32 x 32`` ``reduce-window`` loops: the norm of 54 M values shaped like Swin-B's kernels took
    97 ms on the 2-core machine that way, 26 ms as Gram traces (PyTorch's ``clip_grad_norm_``:
    7.5 ms), and Swin-B's whole optimizer update fell from 366 to 130 ms on one core
    (docs/performance.md, "Session 7").
    """
    if a.size < GRAM_MIN_SIZE or a.size % GRAM_ROWS:
        return sum_squares_portable(a)
    v = a.reshape(GRAM_ROWS, -1)
    gram = jax.lax.dot_general(v, v, (((1,), (1,)), ((), ())), precision=jax.lax.Precision.HIGHEST,
                               preferred_element_type=jnp.float32)
    return jnp.trace(gram)
