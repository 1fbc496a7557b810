"""The dense layer's product and the ``1 x 1`` convolution, with a hand-written backward pass
for XLA's CPU backend.

Sources: docs/performance.md, "Session 6" (1. The weight gradients ran outside the fast matrix
path) and "Session 7" (3. The SimMIM decoder's 1x1 convolution); PyTorch's ``nn.Linear``
backward (``addmm``'s ``mm(grad.t(), input)`` and ``grad.sum(0)``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxmim.ops.dispatch import form
from jaxmim.ops.reductions import sum_rows_fast

__all__ = ['linear_apply', 'linear_apply_fast', 'linear_apply_portable', 'SWAP_MIN_ROWS', 'pointwise_conv',
           'pointwise_conv_fast', 'pointwise_conv_portable']

SWAP_MIN_ROWS = 2048
"""Fewest rows for which :func:`linear_apply_fast` computes a narrowing layer's kernel gradient
as a transposed ``(out, in)`` product (below it the transposed gradient read by the optimizer
costs more than the faster product saves; docs/performance.md, "Session 6")."""


def linear_apply(x: jax.Array, kernel: jax.Array, bias: jax.Array | None) -> jax.Array:
    """``x @ kernel + bias`` over the last axis.

    ``x`` is ``(..., K)``, ``kernel`` ``(K, N)``, ``bias`` ``(N,)`` or None, all of one dtype; the
    result is ``(..., N)`` in that dtype. Both forms compute the forward pass as
    ``flax.nnx.Linear`` does (bit-identical); they differ in the backward pass. Dispatches
    (:func:`jaxmim.ops.form`) to :func:`linear_apply_fast` (CPU) or :func:`linear_apply_portable`.
    """
    if form('linear_apply') == 'fast':
        return linear_apply_fast(x, kernel, bias)
    return linear_apply_portable(x, kernel, bias)


def linear_apply_portable(x: jax.Array, kernel: jax.Array, bias: jax.Array | None) -> jax.Array:
    """The reference form of :func:`linear_apply`: ``nnx.Linear``'s ``dot_general`` and bias
    add, differentiated by JAX's autodiff."""
    y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
    return y if bias is None else y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))


@jax.custom_vjp
def linear_apply_fast(x: jax.Array, kernel: jax.Array, bias: jax.Array | None) -> jax.Array:
    """:func:`linear_apply` with a hand-written backward pass (a ``jax.custom_vjp``).

    The forward pass is :func:`linear_apply_portable`'s (bit-identical). The backward pass
    computes ``dx = g @ kernel.T``, ``dkernel = x2.T @ g2`` on the inputs flattened to ``(M, K)``
    and ``(M, N)`` as one contraction over their first axes, and ``dbias`` with
    :func:`jaxmim.ops.sum_rows_fast`; gradients take the dtypes of ``x``, ``kernel``, ``bias``.
    XLA's autodiff of the forward pass instead emits ``dkernel`` as a contraction over the first
    axis of ``x`` and the *second* axis of a transposed copy of ``g``, which XLA's CPU backend
    runs outside its fast matrix-product path (YNNPACK): on the demo Swin's SimMIM step on one
    core, 300 -> 373 img/s.

    When ``K > N`` and ``M >= 2048`` (:data:`SWAP_MIN_ROWS`) the contraction is computed as
    ``(g2.T @ x2)`` and transposed after it (an ``optimization_barrier`` keeps XLA from folding
    the transpose back in): XLA's CPU contraction over rows runs about half as fast when its
    output has more rows than columns, e.g. 19.8 against 10.7 ms for ``(8320, 512), (8320, 128)
    -> (512, 128)`` on one core. XLA then fuses the transpose into the optimizer's update, whose
    strided read of a ``(4096, 1024)`` gradient costs 44 ms per moment on one core, so few rows
    keep the direct form (docs/performance.md, "Session 6").
    """
    y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
    return y if bias is None else y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))


def _linear_fwd(x, kernel, bias):
    return linear_apply_fast(x, kernel, bias), (x, kernel, bias)


def _linear_bwd(res, g):
    x, kernel, bias = res
    k, n = kernel.shape
    dx = jax.lax.dot_general(g, kernel, (((g.ndim - 1,), (1,)), ((), ())))
    rows = (((0,), (0,)), ((), ()))
    x2, g2 = x.reshape(-1, k), g.reshape(-1, n)
    if k > n and x2.shape[0] >= SWAP_MIN_ROWS:
        # the (n, k) product, transposed after it (see the docstring)
        dkernel = jax.lax.optimization_barrier(jax.lax.dot_general(g2, x2, rows)).T
    else:
        dkernel = jax.lax.dot_general(x2, g2, rows)
    dbias = None if bias is None else sum_rows_fast(g).astype(bias.dtype)
    return dx.astype(x.dtype), dkernel.astype(kernel.dtype), dbias


linear_apply_fast.defvjp(_linear_fwd, _linear_bwd)


def pointwise_conv(x: jax.Array, kernel: jax.Array, bias: jax.Array | None) -> jax.Array:
    """A ``1 x ... x 1`` convolution with unit strides and dilations, one feature group.

    ``x`` is ``(B, *spatial, in)`` (channels last), ``kernel`` ``(1, ..., 1, in, out)`` with one
    unit axis per spatial axis (``nnx.Conv``'s layout), ``bias`` ``(out,)`` or None, all of one
    dtype; the result is ``(B, *spatial, out)`` in that dtype. Dispatches
    (:func:`jaxmim.ops.form`) to :func:`pointwise_conv_fast` (CPU) or
    :func:`pointwise_conv_portable`.

    Raises:
      ValueError: ``kernel`` is not ``(1, ..., 1, in, out)`` for ``x``'s rank and channels.
    """
    _check_pointwise(x, kernel)
    if form('pointwise_conv') == 'fast':
        return pointwise_conv_fast(x, kernel, bias)
    return pointwise_conv_portable(x, kernel, bias)


def _check_pointwise(x, kernel):
    if kernel.ndim != x.ndim or any(d != 1 for d in kernel.shape[:-2]) or kernel.shape[-2] != x.shape[-1]:
        raise ValueError(f'pointwise_conv: kernel {tuple(kernel.shape)} is not (1, ..., 1, in, out) for '
                         f'input {tuple(x.shape)} (one unit axis per spatial axis, in = {x.shape[-1]})')


def pointwise_conv_fast(x: jax.Array, kernel: jax.Array, bias: jax.Array | None) -> jax.Array:
    """:func:`pointwise_conv` as :func:`linear_apply_fast` on the kernel viewed as ``(in, out)``.

    A ``1 x 1`` convolution with unit strides is a matrix product over the channels; XLA's CPU
    backend, however, runs its weight gradient as a window convolution over the spatial grid:
    55.8 ms per step for SimMIM's Swin-B decoder (``(8, 6, 6, 1024) -> 3072``) on one core, where
    the product takes a few (docs/performance.md, "Session 7").
    """
    return linear_apply_fast(x, kernel.reshape(kernel.shape[-2], kernel.shape[-1]), bias)


def pointwise_conv_portable(x: jax.Array, kernel: jax.Array, bias: jax.Array | None) -> jax.Array:
    """The reference form of :func:`pointwise_conv`: ``lax.conv_general_dilated`` with unit
    strides, ``VALID`` padding (equal to ``SAME`` for a unit kernel) and channels-last dimension
    numbers, plus the bias, as ``nnx.Conv`` computes it; JAX's autodiff for the backward pass."""
    n = x.ndim
    lhs = (0, n - 1) + tuple(range(1, n - 1))
    rhs = (n - 1, n - 2) + tuple(range(0, n - 2))
    dims = jax.lax.ConvDimensionNumbers(lhs_spec=lhs, rhs_spec=rhs, out_spec=lhs)
    y = jax.lax.conv_general_dilated(x, kernel, (1,) * (n - 2), 'VALID', dimension_numbers=dims)
    return y if bias is None else y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
