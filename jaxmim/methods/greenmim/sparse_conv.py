"""Sparse convolutions of GreenMIM-Twins written as dense, static-shape operations on visible tokens.

GreenMIM's Twins-SVT encoder (``LayneH/GreenMIM@b981012 modeling/green_twins_models.py``,
``modeling/sparse_conv_spconv.py:21-60``) uses spconv for two operations:

* a regular sparse convolution with kernel = stride = k and no padding (``SparsePatchEmbed``,
  k = 2; GSA spatial reduction, k = sr). Mask units are aligned with k at every stage, so every
  output site has a fully visible k x k input block and the convolution is a per-block dense
  linear map (:func:`sparse_conv_blocks`, :func:`block_indices`);
* the positional depthwise 3x3 convolution (PEG, ``SparseDWConv2d``): densified on a
  zero-filled canvas, convolved, gathered back (:func:`masked_depthwise_conv`).

The Twins encoder (:mod:`jaxmim.methods.greenmim.twins`) uses per-sample-capable versions of
these (``sparse_conv_visible``, ``depthwise_conv_visible``) with indices from its planner. Output
sites are produced in raster order explicitly (the official code assumes spconv's order,
``green_twins_models.py:203-204``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ['block_indices', 'sparse_conv_blocks', 'masked_depthwise_conv']


def block_indices(pos: np.ndarray, resolution: tuple[int, int], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Input indices of every fully visible k x k block of visible tokens.

    Args:
      pos: ``(N,)`` int raster positions (ascending) of the visible tokens on an ``H x W`` grid.
      resolution: ``(H, W)``, both divisible by ``k``.
      k: kernel = stride.

    Returns:
      ``(idx, out_pos)``: ``idx`` int32 ``(N_out, k*k)`` indices into the visible-token list, the
      block's tokens in ``(kh, kw)`` row-major order; ``out_pos`` int32 ``(N_out,)`` raster
      positions of the output sites on the ``(H/k) x (W/k)`` grid, ascending.

    Raises:
      ValueError: ``k`` does not divide the grid, or a block is partly visible (the mask unit is
        not aligned with ``k``).
    """
    h, w = resolution
    if h % k or w % k:
        raise ValueError(f'k {k} must divide the grid {h}x{w}')
    rank = np.full(h * w, -1, np.int64)
    rank[np.asarray(pos)] = np.arange(len(pos))
    vis = (rank >= 0).reshape(h // k, k, w // k, k)
    any_vis, all_vis = vis.any(axis=(1, 3)), vis.all(axis=(1, 3))
    if (any_vis != all_vis).any():
        raise ValueError(f'a {k}x{k} block is partly visible: the mask unit must be a multiple of k')
    out_pos = np.flatnonzero(all_vis.reshape(-1))
    r, c = out_pos // (w // k), out_pos % (w // k)
    dh, dw = np.meshgrid(np.arange(k), np.arange(k), indexing='ij')
    rows = (r[:, None] * k + dh.reshape(-1)[None]) * w + c[:, None] * k + dw.reshape(-1)[None]
    return rank[rows].astype(np.int32), out_pos.astype(np.int32)


def sparse_conv_blocks(x: jax.Array, idx: jax.Array, kernel: jax.Array, bias: jax.Array | None = None) -> jax.Array:
    """Conv with kernel = stride = k at the visible output sites, as a per-block linear map.

    Args:
      x: ``(B, N, C_in)`` visible tokens.
      idx: ``(N_out, k*k)`` int from :func:`block_indices` (shared by the batch).
      kernel: Flax ``(k, k, C_in, C_out)`` (HWIO).
      bias: ``(C_out,)`` or None.

    Returns:
      ``(B, N_out, C_out)``: equals ``conv(canvas, kernel, stride k)`` gathered at the output
      sites, where ``canvas`` holds ``x`` at the visible positions and zeros elsewhere.
    """
    b, _, c = x.shape
    kk = idx.shape[1]
    blocks = jnp.take(x, idx.reshape(-1), axis=1).reshape(b, idx.shape[0], kk * c)
    out = blocks @ kernel.reshape(kk * c, -1).astype(x.dtype)
    return out + bias.astype(x.dtype) if bias is not None else out


def masked_depthwise_conv(x: jax.Array, pos: jax.Array, resolution: tuple[int, int], kernel: jax.Array,
                          bias: jax.Array | None = None) -> jax.Array:
    """Depthwise conv (stride 1, 'SAME' zero padding) of visible tokens on a zero-filled canvas,
    read back at the visible sites (``SparseDWConv2d``, ``sparse_conv_spconv.py:41-60``; no
    residual, as GreenMIM's ``PosCNN``).

    Args:
      x: ``(B, N, C)`` visible tokens.
      pos: ``(N,)`` int raster positions on the ``H x W`` grid.
      resolution: ``(H, W)``.
      kernel: Flax depthwise kernel ``(kh, kw, 1, C)``, odd sizes.
      bias: ``(C,)`` or None.

    Returns:
      ``(B, N, C)``; masked neighbours contribute 0.
    """
    b, _, c = x.shape
    h, w = resolution
    canvas = jnp.zeros((b, h * w, c), x.dtype).at[:, pos].set(x).reshape(b, h, w, c)
    out = jax.lax.conv_general_dilated(canvas, kernel.astype(x.dtype), (1, 1), 'SAME',
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=c)
    out = out.reshape(b, h * w, c)[:, pos]
    return out + bias.astype(x.dtype) if bias is not None else out
