"""UM-MAE masking: Uniform Sampling, random sampling, Secondary Masking and compaction.

Li et al., "Uniform Masking: Enabling MAE Pre-training for Pyramid-based Vision Transformers with
Locality" (arXiv 2205.10063), §3.1-§3.2; follows ``implus/UM-MAE@cb7776b`` ``mask_transform.py``
(``RandomMaskingGenerator``, :7-53), ``models_mae_pvt.py:295-345`` / ``models_mae_swin.py:440-488``
(Secondary Masking, dilated all-ones compaction), ``models_mae.py:141-154`` (ViT Secondary Masking)
and the decoder's use of the visible units, ``models_mae_pvt.py:358-386``.

Conventions: a *unit* is a ``stride``-pixel square (16 px in the paper); masks are ``(B, L)`` with
``L = M * M`` units in raster order, ``1 / True = masked``. Every function keeps static shapes: the
number of visible units per sample is fixed (``L - int(mask_ratio * L)``), so all of this runs
inside ``jax.jit`` without recompilation. Functions named ``*_numpy`` are the host (input
pipeline) versions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ['SAMPLINGS', 'check_sampling', 'num_masked', 'num_visible', 'num_secondary', 'uniform_pool',
           'uniform_mask_numpy', 'random_mask_numpy', 'uniform_mask', 'random_mask', 'make_mask',
           'make_mask_numpy', 'block_choice', 'block_visible_units', 'unit_orders',
           'secondary_visible_pyramid', 'secondary_mask_vit', 'compact', 'uncompact', 'upsample_units',
           'check_uniform_numpy']

SAMPLINGS = ('uniform', 'uniform_block', 'random')
"""Mask samplers: ``'uniform'`` = the official balanced-pool Uniform Sampling (``--mask_regular``);
``'uniform_block'`` = one visible unit per 2x2 block drawn i.i.d. uniformly (the distributional
approximation of the official pool shuffle); ``'random'`` = the RS baseline (a uniformly random subset of
``int(mask_ratio * L)`` masked units)."""


def check_sampling(mask_ratio: float, sampling: str) -> None:
    """Validates a ``(mask_ratio, sampling)`` pair.

    Raises:
      ValueError: unknown ``sampling``, ``mask_ratio`` outside [0, 1), or a uniform sampling with
        ``mask_ratio != 0.75`` (``mask_transform.py:19``).
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f'sampling must be one of {SAMPLINGS}, got {sampling!r}')
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f'mask_ratio must be in [0, 1), got {mask_ratio}')
    if sampling != 'random' and mask_ratio != 0.75:
        raise ValueError(f"sampling={sampling!r} keeps one unit of every 2x2 block, so it needs mask_ratio 0.75 "
                         f"(mask_transform.py:19), got {mask_ratio}")


def num_masked(num_units: int, mask_ratio: float) -> int:
    """Masked units per sample: ``int(mask_ratio * L)`` (``mask_transform.py:15``; 192 of 256, 147 of 196)."""
    return int(mask_ratio * num_units)


def num_visible(num_units: int, mask_ratio: float) -> int:
    """Visible units per sample: ``L - int(mask_ratio * L)`` (64 of 256, 49 of 196)."""
    return num_units - num_masked(num_units, mask_ratio)


def num_secondary(n_visible: int, vis_mask_ratio: float) -> int:
    """Visible units the Secondary Masking replaces by ``vis_mask_token``:
    ``n_visible - int(n_visible * (1 - vis_mask_ratio))`` (16 of 64; 13 of 49 for ViT-B, not
    ``int(49 * 0.25) = 12``). Sources: ``models_mae_pvt.py:298`` ``vis_final_cnt``; ``models_mae.py:148``
    ``len_keep``."""
    return n_visible - int(n_visible * (1.0 - vis_mask_ratio))


# ----------------------------------------------------------------------------------------
# Host generators (the official data-loader masks).
# ----------------------------------------------------------------------------------------

def uniform_pool(grid: int) -> np.ndarray:
    """The official candidate pool of Uniform Sampling.

    The four 2x2 patterns with one 0 (keep) and three 1s (masked), pattern j keeping position j of
    the block in row-major order ``(p1, p2)``, appended cyclically until ``4 * rows >= 2 * grid^2``:
    128 rows (32 of each) for a 16x16 grid, 100 rows (25 each) for 14x14. Row r keeps position
    ``r % 4``. Source: ``mask_transform.py:21-29``.

    Returns:
      float64 ``(rows, 4)``.
    """
    rows = []
    while True:
        for j in range(4):
            cand = np.ones(4)
            cand[j] = 0
            rows.append(cand)
        if len(rows) * 4 >= grid * grid * 2:
            break
    return np.vstack(rows)


def _choice_to_mask(choice: np.ndarray | jax.Array, grid: int, xp=np):
    """Per-block kept position ``(B, n_blocks)`` in 0..3 (row-major in the block) -> mask ``(B, L)``
    bool in raster order (the ``(h w)(p1 p2) -> (h p1)(w p2)`` rearrange of ``mask_transform.py:49``)."""
    b = choice.shape[0]
    h = grid // 2
    onehot = (choice[..., None] == xp.arange(4))                      # (B, nb, 4), True = kept
    m = ~onehot.reshape(b, h, h, 2, 2)                                # (B, h, w, p1, p2)
    return m.transpose(0, 1, 3, 2, 4).reshape(b, grid * grid)


def uniform_mask_numpy(rng: np.random.Generator, batch_size: int, grid: int, balanced: bool = True) -> np.ndarray:
    """Uniform Sampling masks made on the host, one per sample.

    ``balanced``: the official rule: shuffle the rows of :func:`uniform_pool` and give block k
    (block-raster order) row k, so the per-block choices are drawn without replacement from a
    balanced pool (pattern counts hypergeometric). Otherwise each block keeps an i.i.d. uniform
    position. Source: ``mask_transform.py:46-51`` (``np.random.shuffle``; here a seeded
    ``Generator.permutation``: same law, different stream).

    Args:
      rng: NumPy generator.
      batch_size: B.
      grid: units per side M (even).

    Returns:
      bool ``(B, M*M)``, True = masked, exactly one False per 2x2 block.

    Raises:
      ValueError: odd ``grid``.
    """
    if grid % 2:
        raise ValueError(f'Uniform Sampling needs an even unit grid, got {grid}')
    nb = (grid // 2) ** 2
    if balanced:
        pool_rows = len(uniform_pool(grid))
        choice = np.stack([rng.permutation(pool_rows)[:nb] % 4 for _ in range(batch_size)])
    else:
        choice = rng.integers(0, 4, size=(batch_size, nb))
    return _choice_to_mask(choice, grid)


def random_mask_numpy(rng: np.random.Generator, batch_size: int, num_units: int, mask_ratio: float) -> np.ndarray:
    """The RS baseline on the host: per sample a random permutation of ``int(mask_ratio * L)`` ones.
    Source: ``mask_transform.py:41-45``. Returns bool ``(B, L)``."""
    k = num_masked(num_units, mask_ratio)
    out = np.zeros((batch_size, num_units), bool)
    for b in range(batch_size):
        out[b, rng.permutation(num_units)[:k]] = True
    return out


def make_mask_numpy(rng: np.random.Generator, batch_size: int, grid: int, mask_ratio: float,
                    sampling: str) -> np.ndarray:
    """Host masks ``(B, grid^2)`` bool for ``sampling`` in :data:`SAMPLINGS`.

    Raises:
      ValueError: unknown sampling, or a uniform sampling with ``mask_ratio != 0.75``.
    """
    check_sampling(mask_ratio, sampling)
    if sampling == 'random':
        return random_mask_numpy(rng, batch_size, grid * grid, mask_ratio)
    return uniform_mask_numpy(rng, batch_size, grid, balanced=sampling == 'uniform')


def check_uniform_numpy(mask: np.ndarray, grid: int) -> None:
    """Raises ValueError unless every 2x2 block of every sample of ``mask`` ``(B, grid^2)`` holds
    exactly one visible unit (what the pyramid encoders' compaction needs)."""
    m = np.asarray(mask).astype(bool).reshape(-1, grid // 2, 2, grid // 2, 2)
    vis = (~m).sum(axis=(2, 4))
    if not (vis == 1).all():
        bad = np.argwhere(vis != 1)[:3].tolist()
        raise ValueError(f'mask is not a Uniform Sampling mask: (sample, block row, block col) {bad} do not '
                         'hold exactly one visible unit')


# ----------------------------------------------------------------------------------------
# Device generators (drawn inside the jitted step).
# ----------------------------------------------------------------------------------------

def uniform_mask(key: jax.Array, batch_size: int, grid: int, balanced: bool = True) -> jax.Array:
    """:func:`uniform_mask_numpy` on device: bool ``(B, grid^2)``. ``balanced`` permutes the pool rows
    per sample by the argsort of uniform noise (a uniform permutation); otherwise i.i.d.
    ``randint(0, 4)`` per block."""
    nb = (grid // 2) ** 2
    if balanced:
        rows = len(uniform_pool(grid))
        perm = jnp.argsort(jax.random.uniform(key, (batch_size, rows)), axis=1)
        choice = perm[:, :nb] % 4
    else:
        choice = jax.random.randint(key, (batch_size, nb), 0, 4)
    return _choice_to_mask(choice, grid, jnp)


def random_mask(key: jax.Array, batch_size: int, num_units: int, mask_ratio: float) -> jax.Array:
    """:func:`random_mask_numpy` on device: the ``int(mask_ratio * L)`` units of smallest uniform
    noise are masked. bool ``(B, L)``."""
    k = num_masked(num_units, mask_ratio)
    ranks = jnp.argsort(jnp.argsort(jax.random.uniform(key, (batch_size, num_units)), axis=1), axis=1)
    return ranks < k


def make_mask(key: jax.Array, batch_size: int, grid: int, mask_ratio: float, sampling: str) -> jax.Array:
    """Device masks ``(B, grid^2)`` bool for ``sampling`` in :data:`SAMPLINGS`.

    Raises:
      ValueError: unknown sampling, or a uniform sampling with ``mask_ratio != 0.75``.
    """
    check_sampling(mask_ratio, sampling)
    if sampling == 'random':
        return random_mask(key, batch_size, grid * grid, mask_ratio)
    return uniform_mask(key, batch_size, grid, balanced=sampling == 'uniform')


# ----------------------------------------------------------------------------------------
# Index bookkeeping.
# ----------------------------------------------------------------------------------------

def block_choice(mask: jax.Array, grid: int) -> jax.Array:
    """Kept position of every 2x2 block of a Uniform Sampling mask.

    Args:
      mask: ``(B, grid^2)`` 1 = masked, one 0 per 2x2 block.
      grid: M.

    Returns:
      int32 ``(B, M/2, M/2)``: ``a * 2 + b`` where original unit ``(2u + a, 2v + b)`` is the visible
      unit of block ``(u, v)`` (first visible one if a block had several: undefined input).
    """
    b = mask.shape[0]
    h = grid // 2
    m = mask.astype(jnp.int32).reshape(b, h, 2, h, 2).transpose(0, 1, 3, 2, 4).reshape(b, h, h, 4)
    return jnp.argmin(m, axis=-1).astype(jnp.int32)


def block_visible_units(choice: jax.Array, grid: int) -> jax.Array:
    """Raster index of each block's visible unit: ``(2u + a) * M + 2v + b`` for block ``(u, v)`` in
    block-raster order. ``choice`` ``(B, M/2, M/2)`` -> int32 ``(B, (M/2)^2)``. This is the unit the
    k-th compact token stands for (the corrected decoder placement; the official decoder instead
    pairs token k with the k-th visible unit in raster order, ``models_mae_pvt.py:358-386``)."""
    h = grid // 2
    u = jnp.arange(h)[:, None]
    v = jnp.arange(h)[None, :]
    rows = 2 * u + choice // 2
    cols = 2 * v + choice % 2
    return (rows * grid + cols).reshape(choice.shape[0], -1).astype(jnp.int32)


def unit_orders(mask: jax.Array, n_visible: int) -> tuple[jax.Array, jax.Array]:
    """``(visible, masked)`` raster indices: ``x[~mask]`` and ``x[mask]`` of the official code as
    static-shape gathers. int32 ``(B, n_visible)`` and ``(B, L - n_visible)``, each ascending.
    ``mask`` must hold exactly ``L - n_visible`` masked units per sample."""
    order = jnp.argsort(mask.astype(jnp.int32), axis=1, stable=True).astype(jnp.int32)
    return order[:, :n_visible], order[:, n_visible:]


# ----------------------------------------------------------------------------------------
# Secondary Masking.
# ----------------------------------------------------------------------------------------

def secondary_visible_pyramid(mask: jax.Array, noise: jax.Array, n_visible: int,
                              vis_mask_ratio: float) -> jax.Array:
    """The pyramids' Secondary Masking: which units stay visible.

    Sorting ``mask + noise`` ascending puts every visible unit before every masked one, in random
    order; the first ``vis_final_cnt = int(n_visible * (1 - vis_mask_ratio))`` stay visible. So a
    uniformly random subset of ``num_secondary`` visible units is turned into ``vis_mask_token``.
    Source: ``models_mae_pvt.py:295-306`` (``new_mask`` = not the returned array).

    Args:
      mask: ``(B, L)`` primary mask, 1 = masked.
      noise: ``(B, L)`` float in [0, 1) (official ``torch.rand(N, L)``).
      n_visible: visible units per sample (the official ``vis_cnt`` of sample 0).
      vis_mask_ratio: fraction re-masked.

    Returns:
      bool ``(B, L)``: True = still visible after the Secondary Masking.

    Raises:
      ValueError: ``noise`` not ``(B, L)``.
    """
    if noise.shape != mask.shape:
        raise ValueError(f'noise must have the mask\'s shape (B, L) = {mask.shape}, got {noise.shape}')
    final = int(n_visible * (1.0 - vis_mask_ratio))
    keys = mask.astype(noise.dtype) + noise
    rank = jnp.argsort(jnp.argsort(keys, axis=1, stable=True), axis=1, stable=True)
    return rank < final


def secondary_mask_vit(noise: jax.Array, vis_mask_ratio: float) -> jax.Array:
    """ViT Secondary Masking over the gathered visible tokens.

    ``ids = argsort(noise)``; token i is re-masked when ``ids[i] >= len_keep`` with
    ``len_keep = int(n_vis * (1 - vis_mask_ratio))`` (the official gathers a ones/zeros vector by
    ``argsort(noise)``, whatever its variable name says). Source: ``models_mae.py:141-154``.

    Args:
      noise: ``(B, n_vis)`` float (official ``torch.rand(N, L_vis)``).
      vis_mask_ratio: fraction re-masked.

    Returns:
      bool ``(B, n_vis)``, True = replaced by ``vis_mask_token``; exactly ``num_secondary`` per row.
    """
    n = noise.shape[1]
    len_keep = int(n * (1.0 - vis_mask_ratio))
    return jnp.argsort(noise, axis=1, stable=True) >= len_keep


# ----------------------------------------------------------------------------------------
# Compaction.
# ----------------------------------------------------------------------------------------

def upsample_units(unit_map: jax.Array, k: int) -> jax.Array:
    """``(B, m, m)`` -> ``(B, m*k, m*k)`` by repetition (``repeat_interleave`` on both axes)."""
    return jnp.repeat(jnp.repeat(unit_map, k, axis=1), k, axis=2)


def compact(x: jax.Array, choice: jax.Array, k: int) -> jax.Array:
    """Collapses every 2x2 block of units to its visible unit: the half-resolution image.

    Compact unit ``(u, v)`` <- original unit ``(2u + a, 2v + b)`` with ``a * 2 + b = choice[u, v]``,
    relative token positions inside the unit kept. An exact gather; equals the official dilated
    all-ones depthwise conv on inputs zeroed outside the visible units
    (``models_mae_pvt.py:324-342``, kernel ``(C, 1, 2, 2)``, dilation K).

    Args:
      x: ``(B, H, W, C)`` token map, ``H = W = M * k``.
      choice: int ``(B, M/2, M/2)`` from :func:`block_choice`.
      k: tokens per unit side (``stride / patch_size``; 4 at 256 px).

    Returns:
      ``(B, H/2, W/2, C)``.

    Raises:
      ValueError: shapes that do not fit.
    """
    b, h, w, c = x.shape
    hb = choice.shape[1]
    if h != w or h != 2 * hb * k or choice.shape != (b, hb, hb):
        raise ValueError(f'compact: token map {x.shape} does not fit block choices {choice.shape} with k={k}')
    y = x.reshape(b, hb, 2, k, hb, 2, k, c).transpose(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, hb, hb, 4, k, k, c)
    y = jnp.take_along_axis(y, choice[:, :, :, None, None, None, None].astype(jnp.int32), axis=3)[:, :, :, 0]
    return y.transpose(0, 1, 3, 2, 4, 5).reshape(b, hb * k, hb * k, c)


def uncompact(y: jax.Array, choice: jax.Array, k: int) -> jax.Array:
    """Inverse of :func:`compact`: puts each compact unit back at its original place, zeros at the
    masked units. ``(B, H/2, W/2, C)`` -> ``(B, H, W, C)``."""
    b, hh, _, c = y.shape
    hb = hh // k
    y = y.reshape(b, hb, k, hb, k, c).transpose(0, 1, 3, 2, 4, 5)                  # (B, hb, hb, k, k, C)
    onehot = (choice[..., None] == jnp.arange(4)).astype(y.dtype)                  # (B, hb, hb, 4)
    z = y[:, :, :, None] * onehot[..., None, None, None]                           # (B, hb, hb, 4, k, k, C)
    z = z.reshape(b, hb, hb, 2, 2, k, k, c).transpose(0, 1, 3, 5, 2, 4, 6, 7)
    return z.reshape(b, 2 * hb * k, 2 * hb * k, c)
