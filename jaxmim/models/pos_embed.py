"""Position tables: MAE's fixed 2-D sin-cos tables and the resizing of position tables to other grids.

Shared by the backbones (ViT, PVT, HiViT, Swin) and the pre-training models of
:mod:`jaxmim.methods` (MAE, UM-MAE, GreenMIM):

* 2-D sin-cos tables (:func:`get_2d_sincos_pos_embed`), exact copies of
  ``facebookresearch/mae@efb2a80 util/pos_embed.py``.
* PyTorch's bicubic ``F.interpolate(mode='bicubic', align_corners=False)`` (A = -0.75, taps clamped
  to the border) as float64 NumPy for loading checkpoints (:func:`torch_bicubic_resize`, MAE's
  :func:`interpolate_pos_embed`) and as jit-friendly float32 matrix products for inputs of another
  size (:func:`bicubic_resize`, timm's :func:`resample_abs_pos_embed`); source PyTorch
  ``aten/src/ATen/native/UpSample.h``.
* SimMIM's geometric bicubic-spline resize of Swin relative-position bias tables to another window
  size (:func:`resize_rel_pos_table`, ``microsoft/SimMIM@d3e29bc utils.py:126-204``).

Layout: tables are ``(B?, N, D)`` with grid rows in raster (row-major) order, maps channels-last
``(..., H, W, C)``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ['get_1d_sincos_pos_embed_from_grid', 'get_2d_sincos_pos_embed', 'torch_bicubic_resize',
           'bicubic_resize', 'resample_abs_pos_embed', 'interpolate_pos_embed', 'resize_rel_pos_table']


# ----------------------------------------------------------------------------------------
# 2-D sin-cos position tables (MAE util/pos_embed.py, exact).
# ----------------------------------------------------------------------------------------

def get_1d_sincos_pos_embed_from_grid(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    """1-D sin-cos embedding of positions ``pos``.

    ``out[m] = [sin(pos_m * w_0..w_{D/2-1}), cos(pos_m * w_0..w_{D/2-1})]`` with
    ``w_k = 1 / 10000^(k / (D/2))``, computed in float64.
    Source: ``facebookresearch/mae@efb2a80 util/pos_embed.py`` ``get_1d_sincos_pos_embed_from_grid``.

    Args:
      embed_dim: output channels D (even).
      pos: positions, any shape (flattened to ``(M,)``).

    Returns:
      float64 ``(M, D)``.

    Raises:
      ValueError: odd ``embed_dim``.
    """
    if embed_dim % 2:
        raise ValueError(f'embed_dim must be even, got {embed_dim}')
    omega = np.arange(embed_dim // 2, dtype=np.float64)
    omega /= embed_dim / 2.0
    omega = 1.0 / 10000 ** omega                                    # (D/2,)
    pos = np.asarray(pos).reshape(-1)                               # (M,)
    out = np.einsum('m,d->md', pos, omega)                          # (M, D/2) float64
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int | tuple[int, int],
                            cls_token: bool = False) -> np.ndarray:
    """MAE's fixed 2-D sin-cos position table.

    ``np.meshgrid(w, h)`` puts the column index first, so for the patch at row ``i``, column
    ``j`` (raster index ``i * W + j``) the first D/2 channels are the 1-D embedding of ``j`` and
    the last D/2 channels that of ``i`` (each half ``[sin(.. w_k), cos(.. w_k)]``,
    ``w_k = 10000^(-k/(D/4))``, k < D/4). Computed in float64 and cast to float32, as the
    official ``torch.from_numpy(pos_embed).float()``. With ``cls_token`` a zero row is
    prepended. Source: ``facebookresearch/mae@efb2a80 util/pos_embed.py``
    ``get_2d_sincos_pos_embed`` / ``get_2d_sincos_pos_embed_from_grid`` (the same code as
    ``implus/UM-MAE@cb7776b util/pos_embed.py``).

    Args:
      embed_dim: channels D, a multiple of 4.
      grid_size: grid side, or ``(H, W)`` in patches.
      cls_token: prepend a zero row for the class token.

    Returns:
      float32 ``(H*W, D)``, or ``(1 + H*W, D)`` with ``cls_token``.

    Raises:
      ValueError: ``embed_dim`` not a multiple of 4.
    """
    if embed_dim % 4:
        raise ValueError(f'embed_dim must be a multiple of 4 for the 2-D sin-cos table, got {embed_dim}')
    gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else tuple(grid_size)
    grid_h = np.arange(gh, dtype=np.float32)
    grid_w = np.arange(gw, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape(2, 1, gh, gw)   # w goes first
    emb = np.concatenate([get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[0]),
                          get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[1])], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)
    return emb.astype(np.float32)


# ----------------------------------------------------------------------------------------
# Position-table interpolation (torch bicubic, align_corners=False).
# ----------------------------------------------------------------------------------------

def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys cubic-convolution weights of the taps at offsets -1, 0, 1, 2 for fraction ``t``
    (PyTorch ``get_cubic_upsample_coefficients``, A = -0.75). Returns ``(len(t), 4)``."""
    def near(x):   # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):    # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)], axis=-1)


def _bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` float64 matrix of 1-D torch bicubic resizing with align_corners=False:
    source coordinate ``(x + 0.5) * n_in / n_out - 0.5`` (not clamped), taps
    ``floor(src) - 1 .. floor(src) + 2`` clamped to the border (``upsample_get_value_bounded``)."""
    scale = n_in / n_out
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
    base = np.floor(src)
    w = _cubic_weights(src - base)
    mat = np.zeros((n_out, n_in), np.float64)
    for tap in range(4):
        idx = np.clip(base.astype(np.int64) - 1 + tap, 0, n_in - 1)
        np.add.at(mat, (np.arange(n_out), idx), w[:, tap])
    return mat


def torch_bicubic_resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``torch.nn.functional.interpolate(mode='bicubic', align_corners=False)`` on a channels-last map.

    Separable cubic convolution with A = -0.75 (not ``jax.image.resize``'s Keys A = -0.5 with
    antialiasing), computed in float64. Source: PyTorch ``aten/src/ATen/native/UpSample.h``
    (``area_pixel_compute_source_index``, ``cubic_convolution1/2``).

    Args:
      x: ``(..., H, W, C)`` array.
      size: output ``(H', W')``.

    Returns:
      ``(..., H', W', C)`` in ``x``'s dtype; ``x`` itself (a copy) when the size is unchanged.
    """
    x = np.asarray(x)
    h, w = x.shape[-3], x.shape[-2]
    if (h, w) == tuple(size):
        return x.copy()
    mh, mw = _bicubic_matrix(h, size[0]), _bicubic_matrix(w, size[1])
    y = np.einsum('ph,...hwc->...pwc', mh, x.astype(np.float64))
    y = np.einsum('qw,...pwc->...pqc', mw, y)
    return y.astype(x.dtype)


def bicubic_resize(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """:func:`torch_bicubic_resize` in JAX, for traced arrays (under ``jax.jit``, on parameters).

    The resize is two fixed matrix products with the float64-built :func:`_bicubic_matrix` of the
    static shapes, cast to float32 and applied at ``Precision.HIGHEST`` (no TF32 / bf16 passes on
    accelerators): ``torch.nn.functional.interpolate(mode='bicubic', align_corners=False,
    antialias=False)`` on the ``(..., C, H, W)`` transpose, computed in float32 and cast back to
    ``x``'s dtype, as timm's ``resample_abs_pos_embed`` does (``timm/layers/pos_embed.py``).

    Args:
      x: ``(..., H, W, C)`` array.
      size: output ``(H', W')``.

    Returns:
      ``(..., H', W', C)`` in ``x``'s dtype; ``x`` itself when the size is unchanged.
    """
    h, w = x.shape[-3], x.shape[-2]
    if (h, w) == tuple(size):
        return x
    hi = jax.lax.Precision.HIGHEST
    mh = jnp.asarray(_bicubic_matrix(h, int(size[0])), jnp.float32)
    mw = jnp.asarray(_bicubic_matrix(w, int(size[1])), jnp.float32)
    y = jnp.einsum('ph,...hwc->...pwc', mh, x.astype(jnp.float32), precision=hi)
    y = jnp.einsum('qw,...pwc->...pqc', mw, y, precision=hi)
    return y.astype(x.dtype)


def resample_abs_pos_embed(pos_embed: jax.Array, new_size: tuple[int, int], old_size: tuple[int, int] | None = None,
                           num_prefix_tokens: int = 1) -> jax.Array:
    """Resamples an absolute position table to another token grid, timm's way, jit-friendly.

    The leading ``num_prefix_tokens`` rows (class tokens) are kept; the ``old_size`` grid of the
    other rows (raster order) is resized with :func:`bicubic_resize` (torch bicubic,
    align_corners=False, float32). Source: ``huggingface/pytorch-image-models``
    ``timm/layers/pos_embed.py`` ``resample_abs_pos_embed`` called with ``antialias=False``, the
    plain bicubic of the official dense backbones (mmseg's MAE / BEiT, ViTDet, UM-MAE, HiViT, mmdet
    Swin); timm's own default ``antialias=True`` is PyTorch's antialiased bicubic (a PIL-style
    A = -0.5 kernel with border renormalisation), which differs even when upsampling.

    Args:
      pos_embed: ``(B?, P + h*w, D)`` table (a traced array is fine).
      new_size: target grid ``(H', W')``.
      old_size: source grid ``(h, w)``; None: square.
      num_prefix_tokens: P.

    Returns:
      ``(B?, P + H'*W', D)`` in the input dtype (the input itself when the grid is unchanged).

    Raises:
      ValueError: the rows after the prefix do not form the ``old_size`` (or a square) grid.
    """
    n, d = pos_embed.shape[-2:]
    m = n - num_prefix_tokens
    if old_size is None:
        s = math.isqrt(max(m, 0))
        old_size = (s, s)
    old_size, new_size = tuple(int(v) for v in old_size), tuple(int(v) for v in new_size)
    if m <= 0 or old_size[0] * old_size[1] != m:
        raise ValueError(f'pos_embed of shape {tuple(pos_embed.shape)} with {num_prefix_tokens} prefix token(s) '
                         f'does not hold a {old_size[0]}x{old_size[1]} grid')
    if old_size == new_size:
        return pos_embed
    lead = pos_embed.shape[:-2]
    grid = pos_embed[..., num_prefix_tokens:, :].reshape(*lead, *old_size, d)
    grid = bicubic_resize(grid, new_size).reshape(*lead, new_size[0] * new_size[1], d)
    return jnp.concatenate([pos_embed[..., :num_prefix_tokens, :], grid], axis=-2)


def interpolate_pos_embed(pos_embed: np.ndarray, new_grid: int | tuple[int, int],
                          num_extra_tokens: int = 1) -> np.ndarray:
    """Resizes a ViT position table to another patch grid, MAE/DeiT's way.

    The leading ``num_extra_tokens`` rows (class / distillation tokens) are kept unchanged; the
    remaining rows, a square ``gs x gs`` grid in raster order, are resized with torch bicubic
    (align_corners=False, :func:`torch_bicubic_resize`) to ``new_grid``.
    Source: ``facebookresearch/mae@efb2a80 util/pos_embed.py`` ``interpolate_pos_embed``.

    Args:
      pos_embed: ``(1, E + gs*gs, D)`` or ``(E + gs*gs, D)`` table.
      new_grid: target grid side, or ``(H', W')``.
      num_extra_tokens: E, rows that are not patch positions.

    Returns:
      ``(..., E + H'*W', D)`` in the input dtype; an unchanged copy when the grid already matches.

    Raises:
      ValueError: the patch rows do not form a square grid.
    """
    pe = np.asarray(pos_embed)
    n, d = pe.shape[-2:]
    gs = math.isqrt(max(n - num_extra_tokens, 0))
    if n - num_extra_tokens <= 0 or gs * gs != n - num_extra_tokens:
        raise ValueError(f'pos_embed of shape {pe.shape} with {num_extra_tokens} extra token(s) does not '
                         'hold a square patch grid')
    new = (new_grid, new_grid) if isinstance(new_grid, int) else tuple(new_grid)
    if (gs, gs) == new:
        return pe.copy()
    lead = pe.shape[:-2]
    extra = pe[..., :num_extra_tokens, :]
    grid = pe[..., num_extra_tokens:, :].reshape(*lead, gs, gs, d)
    grid = torch_bicubic_resize(grid, new).reshape(*lead, new[0] * new[1], d)
    return np.concatenate([extra, grid], axis=-2).astype(pe.dtype)


# ----------------------------------------------------------------------------------------
# Swin relative-position bias tables at another window size (SimMIM).
# ----------------------------------------------------------------------------------------

def resize_rel_pos_table(table: np.ndarray, new_length: int) -> np.ndarray:
    """Resizes a relative-position bias table to another window size, SimMIM's way.

    The ``(2W-1)^2`` offsets of the source are placed on a geometrically stretched grid whose
    outermost offset lands on the target's outermost integer offset (ratio q by bisection
    on [1.01, 1.5]); each head is then fitted by an interpolating bicubic spline (FITPACK,
    s=0; what ``scipy.interpolate.interp2d(kind='cubic')`` did) and evaluated on the
    target's integer offsets. Source: ``microsoft/SimMIM@d3e29bc utils.py:126-204``
    (``remap_pretrained_keys_swin``; bisection :148-155, source axis :160-169, spline
    :180-187).

    Args:
      table: ``(L1, nH)`` float table, L1 = (2W1-1)^2.
      new_length: L2 = (2W2-1)^2.

    Returns:
      ``(L2, nH)`` float32 table (the input itself when ``L1 == L2``).

    Raises:
      ValueError: lengths that are not squares of odd numbers, or a source window below 3
        (a bicubic spline needs at least 4 offsets per axis).
    """
    from scipy.interpolate import RectBivariateSpline

    table = np.asarray(table, np.float32)
    src, dst = int(round(table.shape[0] ** 0.5)), int(round(new_length ** 0.5))
    if src * src != table.shape[0] or dst * dst != new_length or src % 2 == 0 or dst % 2 == 0:
        raise ValueError(f'relative_position_bias_table lengths must be (2W-1)^2: got {table.shape[0]} '
                         f'-> {new_length}')
    if src == dst:
        return table
    if src < 5:
        raise ValueError(f'relative_position_bias_table of {table.shape[0]} offsets (window {(src + 1) // 2}) is '
                         'too small for the bicubic resize: it needs a source window of at least 3')
    n, m = src // 2, dst // 2
    left, right = 1.01, 1.5
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if (1.0 - q ** n) / (1.0 - q) > m:
            right = q
        else:
            left = q
    dis = np.cumsum([q ** i for i in range(n)])   # 1, 1+q, 1+q+q^2, ...
    axis = np.concatenate([-dis[::-1], [0.0], dis])
    target = np.arange(-m, m + 0.1, 1.0)
    out = [RectBivariateSpline(axis, axis, table[:, h].reshape(src, src).astype(np.float64),
                               kx=3, ky=3, s=0)(target, target).reshape(-1)
           for h in range(table.shape[1])]
    return np.stack(out, axis=1).astype(np.float32)
