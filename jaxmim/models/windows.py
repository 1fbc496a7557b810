"""Geometry of windowed and relative-position attention: static NumPy tables (computed once per
shape, read-only) and pure regroupings of token maps, for Swin (:mod:`jaxmim.models.swin`, the UM-MAE
Swin of :mod:`jaxmim.models.ummae_swin`, GreenMIM's encoders) and HiViT (:mod:`jaxmim.models.hivit`).

* Swin windows: relative-position index of a square window, shifted-window attention mask,
  window partition / reverse, the clamp of the window to small stages. Bare
  ``models/swin_transformer.py:lines`` references point into ``microsoft/SimMIM@d3e29bc``.
* HiViT units (a window of ``inner x inner`` tokens that stays a separate axis) and the
  relative-position index over a rectangular unit grid, with its gather for MAE's kept units. Bare
  ``models_hivit.py:lines`` references point into ``zhangxiaosong18/hivit@2718339
  self_supervised/models/``.

Layout: token maps ``(B, H, W, C)`` (NHWC), windows and units row-major. The indices and the mask
are NumPy constants (cached, read-only; never model variables); the regroupings work on NumPy and
JAX arrays alike.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ['relative_position_index', 'shifted_window_mask', 'window_partition', 'window_reverse',
           'stage_window', 'units_from_map', 'map_from_units', 'relative_position_index_hw',
           'masked_relative_position_index']


# ----------------------------------------------------------------------------------------
# Static window helpers (NumPy, computed once per shape).
# ----------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def relative_position_index(window_size: int) -> np.ndarray:
    """Relative-position index of a ``window_size`` x ``window_size`` window.

    ``idx[i, j] = (h_i - h_j + W - 1) * (2W - 1) + (w_i - w_j + W - 1)`` for tokens i, j in
    row-major order inside the window (an 'ij' meshgrid). Returns int32 ``(W*W, W*W)`` with
    values in ``[0, (2W-1)^2)``. Source: ``models/swin_transformer.py:94-104``.
    """
    ws = window_size
    coords = np.stack(np.meshgrid(np.arange(ws), np.arange(ws), indexing='ij')).reshape(2, -1)
    rel = coords[:, :, None] - coords[:, None, :] + (ws - 1)   # (2, N, N)
    idx = rel[0] * (2 * ws - 1) + rel[1]
    idx.setflags(write=False)
    return idx.astype(np.int32)


@functools.lru_cache(maxsize=None)
def shifted_window_mask(height: int, width: int, window_size: int, shift_size: int) -> np.ndarray:
    """Attention mask of the shifted windows of a ``height`` x ``width`` map.

    Regions are labelled by the slices ``[0, H-ws), [H-ws, H-s), [H-s, H)`` of rows and
    columns (label = 3·row_slice + col_slice); two tokens of one window may attend to each
    other only when they carry the same label. Returns float32 ``(nW, N, N)`` with 0 where
    allowed and -100 elsewhere, windows in row-major order, N = window_size^2.
    Source: ``models/swin_transformer.py:209-232``.

    Raises:
      ValueError: if the window does not divide the map or ``shift_size`` is not in
        ``(0, window_size)``.
    """
    ws, s = window_size, shift_size
    if height % ws or width % ws:
        raise ValueError(f'window_size {ws} must divide the feature map {height}x{width}')
    if not 0 < s < ws:
        raise ValueError(f'shift_size must be in (0, window_size={ws}), got {s}')
    label = np.zeros((height, width), np.int32)
    bounds = lambda n: ((0, n - ws), (n - ws, n - s), (n - s, n))
    for r, (r0, r1) in enumerate(bounds(height)):
        for c, (c0, c1) in enumerate(bounds(width)):
            label[r0:r1, c0:c1] = 3 * r + c
    windows = window_partition(label[None, :, :, None], ws).reshape(-1, ws * ws)
    mask = np.where(windows[:, None, :] != windows[:, :, None], -100.0, 0.0).astype(np.float32)
    mask.setflags(write=False)
    return mask


def window_partition(x, window_size: int):
    """Cuts ``(B, H, W, C)`` into windows ``(B*nW, ws, ws, C)``, window index fastest within a
    batch element and row-major over the window grid. Works on NumPy and JAX arrays.
    Source: ``models/swin_transformer.py:34-46``."""
    b, h, w, c = x.shape
    ws = window_size
    x = x.reshape(b, h // ws, ws, w // ws, ws, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, ws, ws, c)


def window_reverse(windows, window_size: int, height: int, width: int):
    """Inverse of :func:`window_partition`: ``(B*nW, ws, ws, C)`` -> ``(B, H, W, C)``."""
    ws = window_size
    c = windows.shape[-1]
    x = windows.reshape(-1, height // ws, width // ws, ws, ws, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, height, width, c)


def stage_window(resolution: tuple[int, int], window_size: int, shift_size: int) -> tuple[int, int]:
    """The clamp rule (``swin_transformer.py:193-197``): a stage no larger than its window
    uses one unshifted window covering the whole map. Returns ``(window, shift)``."""
    if min(resolution) <= window_size:
        return min(resolution), 0
    return window_size, shift_size


# ----------------------------------------------------------------------------------------
# HiViT units and the relative-position index over a unit grid.
# ----------------------------------------------------------------------------------------

def units_from_map(x: jax.Array, inner: int) -> jax.Array:
    """Regroups a dense token map into units of ``inner x inner`` tokens.

    ``(B, Hp*inner, Wp*inner, C)`` -> ``(B, Hp*Wp, inner, inner, C)``: unit ``n = r * Wp + c``
    (raster order) holds the tokens ``x[:, r*inner + i, c*inner + j]`` at inner position ``(i, j)``.
    The NHWC form of the official ``view(B, C, Hp, i, Wp, i).permute(0, 2, 4, 3, 5, 1)``
    (``models_hivit.py:111-115``).

    Raises:
      ValueError: ``inner`` does not divide the map's height and width.
    """
    b, h, w, c = x.shape
    if h % inner or w % inner:
        raise ValueError(f'inner_patches {inner} must divide the token map {h}x{w}')
    hp, wp = h // inner, w // inner
    x = x.reshape(b, hp, inner, wp, inner, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, hp * wp, inner, inner, c)


def map_from_units(x: jax.Array, hp: int, wp: int) -> jax.Array:
    """Inverse of :func:`units_from_map`: ``(B, hp*wp, i, i, C)`` -> ``(B, hp*i, wp*i, C)``.

    Raises:
      ValueError: ``hp * wp`` is not the number of units.
    """
    b, n, i, j, c = x.shape
    if n != hp * wp:
        raise ValueError(f'{n} units do not form a {hp}x{wp} grid')
    return x.reshape(b, hp, wp, i, j, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, hp * i, wp * j, c)


def masked_relative_position_index(index: np.ndarray, ids_keep: jax.Array) -> jax.Array:
    """Relative-position index among the kept units of every sample.

    ``out[b, p, q] = index[ids_keep[b, p], ids_keep[b, q]]``: the official gather of rows then
    columns (``models_hivit.py:258-264``).

    Args:
      index: ``(N, N)`` integer index over all units.
      ids_keep: ``(B, L)`` int kept unit ids.

    Returns:
      ``(B, L, L)`` int32.
    """
    idx = jnp.asarray(index, jnp.int32)
    return idx[ids_keep[:, :, None], ids_keep[:, None, :]]


@functools.lru_cache(maxsize=None)
def relative_position_index_hw(hp: int, wp: int) -> np.ndarray:
    """Relative-position index over an ``hp x wp`` unit grid (units row-major):
    ``idx[p, q] = (h_p - h_q + hp - 1) * (2 wp - 1) + (w_p - w_q + wp - 1)``, int32 ``(hp*wp, hp*wp)``
    into a ``(2hp-1) x (2wp-1)`` table (row-major). Equals :func:`relative_position_index`
    for ``hp == wp``. Source: ``open-mmlab/mmpretrain@ee7f2e8 mmpretrain/models/backbones/hivit.py``
    ``HiViT.__init__`` (the rectangular ``Hp, Wp`` form of ``models_hivit.py:171-182``)."""
    hh, ww = np.meshgrid(np.arange(hp), np.arange(wp), indexing='ij')
    coords = np.stack([hh.reshape(-1), ww.reshape(-1)])
    rel = coords[:, :, None] - coords[:, None, :]
    idx = ((rel[0] + hp - 1) * (2 * wp - 1) + rel[1] + wp - 1).astype(np.int32)
    idx.setflags(write=False)
    return idx
