"""Group Window Attention of GreenMIM with static shapes (host-side grouping, device-side attention).

Huang et al., "Green Hierarchical Vision Transformer for Masked Image Modeling", NeurIPS 2022;
follows ``LayneH/GreenMIM@b981012 modeling/group_window_attention.py`` (``knapsack`` :111-154,
``group_windows`` :157-183, ``GroupingModule`` :186-295, ``WindowAttention.forward`` :67-105).

The encoder sees only the visible tokens of a stage, kept in raster order. Their (shifted)
windows hold different numbers of visible tokens, so the official code packs the windows into
groups of at most ``g`` tokens with a repeated 0/1 knapsack, pads each group to ``g`` and runs
dense attention per group under an additive -100 mask that keeps windows apart. Group count and
size change with every mask there. Here:

* the group size ``g`` and the number of groups ``nG`` of every (stage, shift) are **static**
  (:func:`static_group_plan`): ``g >= ws^2`` (so any window fits) chosen by the paper's
  attention-cost model evaluated on the padded static shape (50 for Swin-B w7 stage 1), and
  ``nG`` the provable bound of :func:`max_groups_bound` (30 there; 21 observed over 2000 masks);
* the per-mask index work (window ids, knapsack packing, shuffle / unshuffle indices) runs in
  NumPy on the host (:class:`GreenSwinPlanner`), once per step for the one mask of the batch or
  once per sample, and enters the jitted step as one int32 array of fixed length;
* the additive mask and the relative-position bias are built on device from the gathered window
  ids and token coordinates (:func:`group_attention_logits_bias`).

Mask convention of this module: ``keep`` / ``visible`` True = visible.
"""

from __future__ import annotations

import atexit
import dataclasses
import multiprocessing
import pickle
from concurrent import futures
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ['window_ids', 'knapsack', 'group_windows', 'group_attention_cost', 'search_group_size',
           'max_groups_bound', 'static_group_plan', 'WindowGrouping', 'StageSpec', 'GreenSwinPlanner',
           'PlannerPool', 'planner_pool', 'group_attention_logits_bias', 'MASK_VALUE']

MASK_VALUE = -100.0
"""Additive logit of a forbidden pair (Swin's and GreenMIM's -100, not -inf;
``group_window_attention.py:203-210``)."""


# ----------------------------------------------------------------------------------------
# Host side (NumPy / Python): window ids, knapsack packing, group-size search.
# ----------------------------------------------------------------------------------------

def num_windows_1d(size: int, window_size: int, shift_size: int) -> int:
    """Windows along one axis of length ``size`` for the offset partition of shift ``shift_size``:
    ``size / ws`` unshifted, ``size / ws + 1`` shifted (the cut-off edge windows ``[0, s)`` and
    ``[H - ws + s, H)``)."""
    return (size - 1 + (window_size - shift_size) % window_size) // window_size + 1


def window_ids(coords: np.ndarray, resolution: tuple[int, int], window_size: int, shift_size: int) -> np.ndarray:
    """Window id of tokens for the regular (``shift_size == 0``) or shifted window partition,
    without a roll (``_get_group_id``, ``group_window_attention.py:196-201``).

    Per axis ``(coord + (ws - shift) % ws) // ws``; flattened h-major with the true number of
    windows along w (:func:`num_windows_1d`; the official code uses ``N_vis`` as stride, which can
    collide). Boundaries of the shifted partition are ``s, s + ws, ...``: the regions
    Swin's roll by ``-s`` plus its -100 mask let attend to each other.

    Args:
      coords: ``(..., 2)`` int (h, w) token coordinates on the stage grid.
      resolution: ``(H, W)`` of the stage grid.
      window_size, shift_size: in tokens, ``0 <= shift_size < window_size``.

    Returns:
      int64 ``(...)`` window ids in ``[0, nWh * nWw)``, raster order over windows.

    Raises:
      ValueError: ``shift_size`` outside ``[0, window_size)``.
    """
    if not 0 <= shift_size < window_size:
        raise ValueError(f'shift_size must be in [0, window_size={window_size}), got {shift_size}')
    off = (window_size - shift_size) % window_size
    nww = num_windows_1d(resolution[1], window_size, shift_size)
    g = (np.asarray(coords, np.int64) + off) // window_size
    return g[..., 0] * nww + g[..., 1]


def knapsack(capacity: int, weights: Sequence[int]) -> tuple[int, list[int]]:
    """0/1 knapsack with value = weight: the largest total ``<= capacity`` and the items chosen.

    Same optimum and the same choice among equal optima as the official DP table with
    backtracking from the last item (``knapsack``, ``group_window_attention.py:111-154``): item i
    is skipped when the remaining target is reachable with items ``< i``. Reachable sums are
    Python-int bitsets (``reach |= reach << w``), O(n) big-int operations.

    Args:
      capacity: group size ``g`` (tokens), >= 0.
      weights: visible-token counts of the windows, each >= 1.

    Returns:
      ``(total, indices)``: the packed token count and the chosen item indices, ascending.
    """
    full = (1 << (capacity + 1)) - 1
    reach = [1]
    for w in weights:
        reach.append((reach[-1] | (reach[-1] << int(w))) & full)
    best = reach[-1].bit_length() - 1
    target, chosen = best, []
    for i in range(len(weights), 0, -1):
        if target <= 0:
            break
        if (reach[i - 1] >> target) & 1:
            continue
        chosen.append(i - 1)
        target -= int(weights[i - 1])
    return best, chosen[::-1]


def group_windows(group_size: int, counts: Sequence[int]) -> tuple[list[int], list[list[int]]]:
    """Greedy repeated knapsack: packs windows (``counts`` tokens each) into groups of at most
    ``group_size`` tokens, each group the fullest subset of the windows left
    (``group_windows``, ``group_window_attention.py:157-183``).

    Returns:
      ``(tokens_per_group, window_indices_per_group)``, indices into ``counts``, ascending inside a
      group.

    Raises:
      ValueError: a window holds more than ``group_size`` tokens (it could never be packed).
    """
    if len(counts) and max(counts) > group_size:
        raise ValueError(f'group_size {group_size} is smaller than the largest window count {max(counts)}')
    left = list(range(len(counts)))
    sizes, groups = [], []
    while left:
        total, idx = knapsack(group_size, [counts[i] for i in left])
        chosen = [left[i] for i in idx]
        sizes.append(total)
        groups.append(chosen)
        chosen_set = set(chosen)
        left = [i for i in left if i not in chosen_set]
    return sizes, groups


def group_attention_cost(group_size: int, dim: int) -> int:
    """Attention cost of one group of ``g`` tokens in the paper's model, FLOPs up to a constant:
    ``4 g C^2`` (q, k, v and output projections) ``+ 2 g^2 C`` (``q k^T`` and ``attn v``)
    (the "optimal grouping" of the GreenMIM paper, Huang et al., 2022; the formula is this port's
    reading, not checked against the paper's text)."""
    return 4 * group_size * dim * dim + 2 * group_size * group_size * dim


def search_group_size(counts: Sequence[int], dim: int, candidates: Sequence[int] | None = None
                      ) -> tuple[int, list[int], list[list[int]]]:
    """The paper's optimal grouping for one mask: for every candidate group size ``g >= max(counts)``
    pack with :func:`group_windows` and keep the ``g`` minimising
    ``n_groups(g) * group_attention_cost(g, dim)`` (smallest g on ties). Source: the dynamic-programming
    grouping of the GreenMIM paper (Huang et al., 2022, abstract); the released code instead fixes
    ``g = max(counts)`` (``group_window_attention.py:241``).

    Args:
      counts: visible tokens per non-empty window.
      dim: channels C of the stage.
      candidates: group sizes to try; default ``max(counts) .. sum(counts)``.

    Returns:
      ``(g, tokens_per_group, window_indices_per_group)``.

    Raises:
      ValueError: no candidate fits the largest window.
    """
    lo = max(counts)
    cands = [g for g in (candidates if candidates is not None else range(lo, sum(counts) + 1)) if g >= lo]
    if not cands:
        raise ValueError(f'no candidate group size fits the largest window ({lo} tokens)')
    best = None
    for g in cands:
        sizes, groups = group_windows(g, counts)
        cost = len(groups) * group_attention_cost(g, dim)
        if best is None or cost < best[0]:
            best = (cost, g, sizes, groups)
    return best[1], best[2], best[3]


def max_groups_bound(num_tokens: int, group_size: int, num_windows: int) -> int:
    """A bound on the groups :func:`group_windows` can produce, valid for **every** mask.

    Proof: let groups be produced in order G_1, G_2, ... . When G_i is packed, every window of a
    later group G_j is still available; were it to fit in G_i's free space, adding it would give
    a fuller subset, contradicting the knapsack optimum. So ``fill(G_i) + fill(G_j) > g`` for all
    ``i < j``; hence at most one group holds ``<= g // 2`` tokens, and the others hold at least
    ``g // 2 + 1``: ``(n - 1) (g // 2 + 1) + 1 <= N``. Also ``n <= number of windows``.

    Args:
      num_tokens: visible tokens N of the stage (>= 1).
      group_size: g.
      num_windows: windows of the partition.

    Returns:
      ``min(num_windows, (N - 1) // (g // 2 + 1) + 1)``.
    """
    return max(1, min(num_windows, (num_tokens - 1) // (group_size // 2 + 1) + 1))


def static_group_plan(num_tokens: int, window_size: int, num_windows: int, dim: int) -> tuple[int, int]:
    """Static group size and group count of a grouping-mode partition.

    The paper's search (:func:`search_group_size`) applied to the *static* shape: a fixed
    ``g`` must fit any window, so ``g >= ws^2`` (a window can be fully visible), and the padded
    compute is ``max_groups_bound(g) * group_attention_cost(g)``; the ``g`` in
    ``[ws^2, 4 ws^2]`` minimising it is kept (smallest on ties).

    Returns:
      ``(g, nG)``.
    """
    best = None
    for g in range(window_size ** 2, 4 * window_size ** 2 + 1):
        n = max_groups_bound(num_tokens, g, num_windows)
        cost = n * group_attention_cost(g, dim)
        if best is None or cost < best[0]:
            best = (cost, g, n)
    return best[1], best[2]


# ----------------------------------------------------------------------------------------
# Static layout of one encoder and the NumPy planner.
# ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class WindowGrouping:
    """Static description of one window partition of one stage and how its windows are grouped.

    Attributes:
      window_size, shift_size: after Swin's clamp rule.
      mode: ``'grouping'`` (packed groups) or ``'masking'`` (one group of all ``N`` visible tokens,
        used when ``N <= 2 ws^2``, ``GroupingModule.prepare`` :275-281).
      group_size: g (``N`` in masking mode).
      num_groups: nG (1 in masking mode).
      num_windows: windows of the partition on the stage grid.
    """
    window_size: int
    shift_size: int
    mode: str
    group_size: int
    num_groups: int
    num_windows: int


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """Static description of one stage: ``resolution`` (H, W) in tokens, ``unit`` tokens per mask
    unit side, ``num_tokens`` visible tokens N, ``dim`` channels, its ``partitions`` (regular, and
    shifted when the stage shifts and has >= 2 blocks)."""
    resolution: tuple[int, int]
    unit: int
    num_tokens: int
    dim: int
    partitions: tuple[WindowGrouping, ...]


class GreenSwinPlanner:
    """Static layout and host-side computation of the index arrays of a visible-token Swin.

    ``plan`` is one int32 vector per sample (length :attr:`plan_length`) holding, at fixed offsets
    (:attr:`layout`, ``name -> (offset, shape)``):

    * ``pos{s}`` ``(N_s,)``: raster positions (on the stage-s grid) of the visible tokens;
    * ``gid{s}_{p}`` ``(nG * g,)``: window id of each group slot, -1 for a pad (grouping mode),
      or ``(N_s,)`` the window id of each visible token (masking mode);
    * ``idx{s}_{p}`` ``(nG * g,)``: visible-token index of each slot, 0 for a pad (grouping mode);
    * ``inv{s}_{p}`` ``(N_s,)``: slot of each visible token (grouping mode);
    * ``merge{s}`` ``(N_{s+1} * 4,)``: for each visible stage-s+1 token (raster order) the indices
      of its 2x2 stage-s tokens in Swin's order (0,0),(1,0),(0,1),(1,1)
      (``green_swin_models.py:126-137``).

    Args:
      img_size, patch_size: pixels.
      mask_unit: mask-unit side in pixels (32); must equal ``patch_size * 2**(stages-1)`` so the
        last stage has one token per unit.
      len_keep: visible units.
      window_size: Swin window (tokens), clamped per stage.
      depths: blocks per stage (a stage with one block has no shifted partition).
      dims: channels per stage (for the cost model).

    Raises:
      ValueError: a size that does not fit (see the messages).
    """

    def __init__(self, img_size: int, patch_size: int, mask_unit: int, len_keep: int, window_size: int,
                 depths: Sequence[int], dims: Sequence[int]):
        num_stages = len(depths)
        if img_size % mask_unit:
            raise ValueError(f'mask_unit {mask_unit} must divide img_size {img_size}')
        if mask_unit != patch_size * 2 ** (num_stages - 1):
            raise ValueError(f'mask_unit {mask_unit} must equal patch_size * 2**(stages-1) = '
                             f'{patch_size * 2 ** (num_stages - 1)} (one last-stage token per unit)')
        self.units = img_size // mask_unit
        if not 1 <= len_keep <= self.units ** 2:
            raise ValueError(f'len_keep must be in [1, {self.units ** 2}], got {len_keep}')
        self.len_keep = len_keep
        grid = img_size // patch_size
        stages = []
        for s in range(num_stages):
            res = grid // 2 ** s
            unit = mask_unit // (patch_size * 2 ** s)
            n = len_keep * unit * unit
            if min(res, res) <= window_size:
                ws, shifts = res, (0,)
            else:
                ws, shifts = window_size, ((0, window_size // 2) if depths[s] > 1 else (0,))
            if res % ws:
                raise ValueError(f'window_size {ws} must divide the stage-{s} resolution {res}')
            parts = []
            for sh in shifts:
                nw = num_windows_1d(res, ws, sh) ** 2
                if n <= 2 * ws * ws:
                    parts.append(WindowGrouping(ws, sh, 'masking', n, 1, nw))
                else:
                    g, ng = static_group_plan(n, ws, nw, dims[s])
                    parts.append(WindowGrouping(ws, sh, 'grouping', g, ng, nw))
            stages.append(StageSpec((res, res), unit, n, dims[s], tuple(parts)))
        self.stages = tuple(stages)
        layout, off = {}, 0

        def add(name, length):
            nonlocal off
            layout[name] = (off, (length,))
            off += length

        for s, st in enumerate(stages):
            add(f'pos{s}', st.num_tokens)
            for p, part in enumerate(st.partitions):
                if part.mode == 'grouping':
                    add(f'gid{s}_{p}', part.num_groups * part.group_size)
                    add(f'idx{s}_{p}', part.num_groups * part.group_size)
                    add(f'inv{s}_{p}', st.num_tokens)
                else:
                    add(f'gid{s}_{p}', st.num_tokens)
            if s + 1 < num_stages:
                add(f'merge{s}', stages[s + 1].num_tokens * 4)
        self.layout = layout
        self.plan_length = off

    # -- NumPy ---------------------------------------------------------------------------

    def keep_from_noise(self, noise: np.ndarray) -> np.ndarray:
        """``(L,)`` noise -> ``(L,)`` bool keep: the ``len_keep`` smallest noises, as
        ``argsort(noise)[:len_keep]`` (stable) of ``random_masking`` (``base_green_models.py:160-181``)."""
        keep = np.zeros(noise.shape[-1], bool)
        keep[np.argsort(noise, kind='stable')[:self.len_keep]] = True
        return keep

    def plan(self, keep: np.ndarray) -> np.ndarray:
        """The int32 plan ``(plan_length,)`` of one unit mask ``keep`` ``(units**2,)`` bool (True =
        visible, exactly ``len_keep`` True).

        Raises:
          ValueError: wrong shape or count. RuntimeError: a packing exceeds its static bound (this
            cannot happen, see :func:`max_groups_bound`; raised rather than silently truncated).
        """
        keep = np.asarray(keep, bool).reshape(-1)
        if keep.shape != (self.units ** 2,) or keep.sum() != self.len_keep:
            raise ValueError(f'keep must be ({self.units ** 2},) bool with {self.len_keep} True, got shape '
                             f'{keep.shape} with {int(keep.sum())} True')
        out = np.zeros(self.plan_length, np.int32)

        def put(name, value):
            o, (n,) = self.layout[name]
            out[o:o + n] = value

        unit_keep = keep.reshape(self.units, self.units)
        pos_prev = None
        for s, st in enumerate(self.stages):
            vis = np.kron(unit_keep, np.ones((st.unit, st.unit), bool))     # (H, W)
            h, w = st.resolution
            pos = np.flatnonzero(vis.reshape(-1))
            put(f'pos{s}', pos)
            coords = np.stack([pos // w, pos % w], axis=-1)
            for p, part in enumerate(st.partitions):
                wid = window_ids(coords, st.resolution, part.window_size, part.shift_size)
                if part.mode == 'masking':
                    put(f'gid{s}_{p}', wid)
                    continue
                order = np.argsort(wid, kind='stable')
                win, counts = np.unique(wid[order], return_counts=True)
                starts = np.concatenate([[0], np.cumsum(counts)])
                _, groups = group_windows(part.group_size, counts.tolist())
                if len(groups) > part.num_groups:
                    raise RuntimeError(f'stage {s} partition {p}: {len(groups)} groups exceed the static bound '
                                       f'{part.num_groups}')
                gid = np.full(part.num_groups * part.group_size, -1, np.int64)
                idx = np.zeros(part.num_groups * part.group_size, np.int64)
                for k, members in enumerate(groups):
                    tok = np.concatenate([order[starts[m]:starts[m + 1]] for m in members])
                    o = k * part.group_size
                    idx[o:o + len(tok)] = tok
                    gid[o:o + len(tok)] = wid[tok]
                inv = np.zeros(st.num_tokens, np.int64)
                slots = np.flatnonzero(gid >= 0)
                inv[idx[slots]] = slots
                put(f'gid{s}_{p}', gid)
                put(f'idx{s}_{p}', idx)
                put(f'inv{s}_{p}', inv)
            if s > 0:
                # merge{s-1}: the four stage-(s-1) tokens of each visible stage-s token.
                hp, wp = self.stages[s - 1].resolution
                rank = np.full(hp * wp, -1, np.int64)
                rank[pos_prev] = np.arange(len(pos_prev))
                r, c = pos // w, pos % w
                quads = [(2 * r + dr) * wp + (2 * c + dc) for dr, dc in ((0, 0), (1, 0), (0, 1), (1, 1))]
                m = np.stack([rank[q] for q in quads], axis=-1)
                if (m < 0).any():
                    raise ValueError('a 2x2 merge window is partly visible: the mask unit must be aligned')
                put(f'merge{s - 1}', m.reshape(-1))
            pos_prev = pos
        return out

    def plans(self, noise: np.ndarray, per_sample: bool) -> np.ndarray:
        """``(B, L)`` noise -> ``(B, plan_length)`` int32; with ``per_sample=False`` only row 0
        is used and its plan repeated (one mask per batch, as the official code)."""
        noise = np.asarray(noise)
        if per_sample:
            return np.stack([self.plan(self.keep_from_noise(row)) for row in noise])
        return np.repeat(self.plan(self.keep_from_noise(noise[0]))[None], noise.shape[0], axis=0)

    def get(self, plan, name: str):
        """Slice ``name`` out of a plan ``(..., plan_length)`` (NumPy or JAX): ``(..., n)``."""
        o, (n,) = self.layout[name]
        return plan[..., o:o + n]


# ----------------------------------------------------------------------------------------
# Per-sample plans on several host processes.
# ----------------------------------------------------------------------------------------

_WORKER_PLANNER = None


def _init_worker(planner) -> None:
    global _WORKER_PLANNER
    _WORKER_PLANNER = planner


def _worker_plans(noise: np.ndarray) -> np.ndarray:
    return _WORKER_PLANNER.plans(noise, per_sample=True)


class PlannerPool:
    """Per-sample plans of one planner computed by ``workers`` host processes.

    A per-sample plan costs about 1 ms of Python per sample (Swin-B w7 and Twins-L at 224 px), so
    one core plans ~1,000 samples/s: below what one accelerator trains GreenMIM at, and a host
    feeds 4-8 of them. The pool splits the ``(B, L)`` noise into ``workers`` contiguous chunks,
    plans them in parallel and concatenates in order, so the result is bit-identical to
    ``planner.plans(noise, per_sample=True)``. Processes start with ``spawn`` (forking a process
    that runs JAX's threads can deadlock) and receive the planner once; start-up costs a few
    seconds, once per run. Spawn re-imports the main script in each worker, so a script run
    directly must guard its entry with ``if __name__ == '__main__'`` (``python -m jaxmim.main``
    does); otherwise :meth:`plans` raises RuntimeError saying so.

    Args:
      planner: a :class:`GreenSwinPlanner` (or subclass); pickled to each worker.
      workers: processes (>= 2).

    Raises:
      ValueError: ``workers < 2``.
    """

    def __init__(self, planner, workers: int):
        if workers < 2:
            raise ValueError(f'planner_workers must be >= 2 for a pool (0 or 1 plan in-process), got {workers}')
        self.planner, self.workers = planner, int(workers)
        self._executor = futures.ProcessPoolExecutor(
            self.workers, mp_context=multiprocessing.get_context('spawn'),
            initializer=_init_worker, initargs=(planner,))

    def plans(self, noise: np.ndarray) -> np.ndarray:
        """``(B, L)`` noise -> ``(B, plan_length)`` int32, one plan per row (as
        ``planner.plans(noise, per_sample=True)``)."""
        noise = np.asarray(noise)
        chunks = [c for c in np.array_split(noise, min(self.workers, len(noise))) if len(c)]
        try:
            return np.concatenate(list(self._executor.map(_worker_plans, chunks)), axis=0)
        except futures.process.BrokenProcessPool as e:
            raise RuntimeError(
                'a planner process died (planner_workers > 1 starts processes with spawn, which re-imports '
                "the main script: a script run directly must guard its entry with if __name__ == '__main__'; "
                '`python -m jaxmim.main` does)') from e

    def close(self) -> None:
        """Stops the worker processes."""
        self._executor.shutdown(wait=True, cancel_futures=True)


_POOLS: dict = {}


def planner_pool(planner, workers: int) -> PlannerPool:
    """The process-wide :class:`PlannerPool` of an equal planner and worker count (made once,
    closed at exit), so every training step reuses the same processes.

    Args:
      planner: the model's planner; pools are keyed by its pickle (what each worker receives,
        about 1 KB), so only equal planners share one.
      workers: processes (>= 2).
    """
    key = (pickle.dumps(planner), int(workers))
    pool = _POOLS.get(key)
    if pool is None:
        pool = _POOLS[key] = PlannerPool(planner, workers)
    return pool


@atexit.register
def _close_pools() -> None:
    for pool in _POOLS.values():
        pool.close()
    _POOLS.clear()


# ----------------------------------------------------------------------------------------
# Device side.
# ----------------------------------------------------------------------------------------

def group_attention_logits_bias(table: jax.Array, gid: jax.Array, coords: jax.Array, window_size: int
                                ) -> jax.Array:
    """Additive attention term of Group Window Attention: relative-position bias for same-window
    pairs plus the -100 mask for every other pair (``WindowAttention.forward`` :80-94 with
    ``_get_attn_mask`` :203-210 and ``_get_rel_pos_idx`` :212-218).

    For slots i, j of a group: allowed iff ``gid_i == gid_j >= 0``; then the term is
    ``table[(dh + ws - 1)(2 ws - 1) + (dw + ws - 1)]`` with ``d = coord_i - coord_j``, else
    ``-100`` (the index is zeroed before the gather and the bias multiplied by 0, so pairs of
    different windows never index out of range, ``group_window_attention.py:83-87``).

    Args:
      table: ``((2ws-1)^2, nH)`` relative-position bias table.
      gid: ``(..., n)`` int window id per slot, -1 for pads.
      coords: ``(..., n, 2)`` int token coordinates per slot.
      window_size: ws.

    Returns:
      float32 ``(..., nH, n, n)``.
    """
    allowed = (gid[..., :, None] == gid[..., None, :]) & (gid[..., :, None] >= 0)
    d = coords[..., :, None, :] - coords[..., None, :, :] + (window_size - 1)
    idx = jnp.where(allowed, d[..., 0] * (2 * window_size - 1) + d[..., 1], 0)
    bias = jnp.where(allowed[..., None], table[idx].astype(jnp.float32), 0.0)       # (..., n, n, nH)
    bias = jnp.moveaxis(bias, -1, -3)
    return bias + jnp.where(allowed, 0.0, MASK_VALUE)[..., None, :, :]
