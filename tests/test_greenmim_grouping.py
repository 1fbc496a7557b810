"""GreenMIM Group Window Attention: knapsack packing, window ids, static bounds, grouped attention.

Expectations are independent: brute-force subset sums, the textbook DP table of the official
``knapsack``, Swin's roll + region labels for the shifted windows, exhaustive / sampled masks for
the static bounds, a per-token NumPy attention loop, and dense Swin merging on a zero canvas.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxmim.methods.greenmim import grouping as gwa
from jaxmim.methods.greenmim.swin import GreenSwinTransformer
from jaxmim.models import swin as swin_lib
from jaxmim.models import windows as W


# ----------------------------------------------------------------------------------------
# Knapsack and grouping (host).
# ----------------------------------------------------------------------------------------

def _official_knapsack(W, wt):
    """The textbook DP table with backtracking from the last item, as in the official code."""
    n = len(wt)
    K = [[0] * (W + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        for w in range(W + 1):
            K[i][w] = max(wt[i - 1] + K[i - 1][w - wt[i - 1]], K[i - 1][w]) if wt[i - 1] <= w else K[i - 1][w]
    res = best = K[n][W]
    w, idx = W, []
    for i in range(n, 0, -1):
        if res <= 0:
            break
        if res == K[i - 1][w]:
            continue
        idx.append(i - 1)
        res -= wt[i - 1]
        w -= wt[i - 1]
    return best, idx[::-1]


def test_knapsack_matches_dp_table_and_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 9))
        wt = [int(v) for v in rng.integers(1, 30, n)]
        cap = int(rng.integers(1, 60))
        total, idx = gwa.knapsack(cap, wt)
        brute = max(sum(c) for r in range(n + 1) for c in itertools.combinations(wt, r) if sum(c) <= cap)
        assert total == brute == sum(wt[i] for i in idx)
        assert (total, idx) == _official_knapsack(cap, wt)


def test_group_windows_partitions_all_windows():
    counts = [49, 10, 39, 7, 42, 3, 20, 29]
    sizes, groups = gwa.group_windows(49, counts)
    assert sorted(i for g in groups for i in g) == list(range(len(counts)))
    assert sizes == [sum(counts[i] for i in g) for g in groups] and max(sizes) <= 49
    assert sizes[0] == 49 and groups[0] == [0]          # the first fullest subset, ascending
    with pytest.raises(ValueError, match='group_size'):
        gwa.group_windows(40, counts)


def test_max_groups_bound_holds_for_random_and_adversarial_counts():
    rng = np.random.default_rng(1)
    for _ in range(3000):
        g = int(rng.integers(4, 60))
        n = int(rng.integers(1, 40))
        hi = int(rng.integers(1, g + 1))
        counts = [int(c) for c in rng.integers(1, hi + 1, n)]
        ng = len(gwa.group_windows(g, counts)[1])
        assert ng <= gwa.max_groups_bound(sum(counts), g, n)
    # adversarial: windows just over half the group cannot share a group -> bound is reached
    counts = [25] * 7
    assert len(gwa.group_windows(49, counts)[1]) == 7 == gwa.max_groups_bound(175, 49, 7)


def test_search_group_size_minimises_the_cost_model():
    counts = [12, 30, 7, 41, 16, 16, 3, 25]
    dim = 64
    g, sizes, groups = gwa.search_group_size(counts, dim)
    costs = {c: len(gwa.group_windows(c, counts)[1]) * (4 * c * dim ** 2 + 2 * c * c * dim)
             for c in range(41, sum(counts) + 1)}
    assert costs[g] == min(costs.values()) and g == min(c for c in costs if costs[c] == costs[g])
    assert sorted(i for grp in groups for i in grp) == list(range(len(counts)))


# ----------------------------------------------------------------------------------------
# Window ids: offset partition == Swin's roll + region mask.
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize('res,ws,shift', [(8, 4, 0), (8, 4, 2), (14, 7, 3), (12, 4, 1)])
def test_window_ids_match_swin_roll_and_mask(res, ws, shift):
    hh, ww = np.meshgrid(np.arange(res), np.arange(res), indexing='ij')
    coords = np.stack([hh.reshape(-1), ww.reshape(-1)], -1)
    wid = gwa.window_ids(coords, (res, res), ws, shift)
    # Swin: token (h, w) sits at rolled position ((h - s) % H, (w - s) % W); it may attend to
    # another token iff both share the rolled window and the region label of the shift mask.
    rh, rw = (coords[:, 0] - shift) % res, (coords[:, 1] - shift) % res
    rolled_win = (rh // ws) * (res // ws) + rw // ws
    if shift:
        label_mask = W.shifted_window_mask(res, res, ws, shift)          # (nW, N, N)
        inner = (rh % ws) * ws + rw % ws
        same = (rolled_win[:, None] == rolled_win[None, :]) & \
            (label_mask[rolled_win[:, None], inner[:, None], inner[None, :]] == 0)
    else:
        same = rolled_win[:, None] == rolled_win[None, :]
    np.testing.assert_array_equal(wid[:, None] == wid[None, :], same)
    assert wid.max() < gwa.num_windows_1d(res, ws, shift) ** 2


# ----------------------------------------------------------------------------------------
# Static bounds: the plan never overflows; structural invariants of every plan.
# ----------------------------------------------------------------------------------------

def _check_plan(planner, keep):
    plan = planner.plan(keep)
    for s, st in enumerate(planner.stages):
        n = st.num_tokens
        pos = planner.get(plan, f'pos{s}')
        assert len(pos) == n and np.all(np.diff(pos) > 0)               # raster order
        for p, part in enumerate(st.partitions):
            gid = planner.get(plan, f'gid{s}_{p}')
            if part.mode == 'masking':
                assert len(gid) == n and part.group_size == n and n <= 2 * part.window_size ** 2
                continue
            idx, inv = planner.get(plan, f'idx{s}_{p}'), planner.get(plan, f'inv{s}_{p}')
            real = gid >= 0
            assert sorted(idx[real]) == list(range(n))                    # each token exactly once
            assert np.all(idx[~real] == 0)
            np.testing.assert_array_equal(inv[idx[real]], np.flatnonzero(real))
            coords = np.stack([pos // st.resolution[1], pos % st.resolution[1]], -1)
            np.testing.assert_array_equal(
                gid[real], gwa.window_ids(coords[idx[real]], st.resolution, part.window_size, part.shift_size))
            groups = gid.reshape(part.num_groups, part.group_size)
            # a window never straddles two groups
            owners = {}
            for k, row in enumerate(groups):
                for w in set(row[row >= 0].tolist()):
                    assert owners.setdefault(w, k) == k
    return plan


def _groups_used(planner, plan):
    used = {}
    for s, st in enumerate(planner.stages):
        for p, part in enumerate(st.partitions):
            if part.mode == 'grouping':
                gid = planner.get(plan, f'gid{s}_{p}').reshape(part.num_groups, part.group_size)
                used[(s, p)] = int((gid >= 0).any(axis=1).sum())
    return used


def test_static_bounds_exhaustive_demo():
    """All C(16, 4) = 1820 masks of the demo (32 px, 8-px units, ratio 0.75, window 4)."""
    planner = gwa.GreenSwinPlanner(32, 2, 8, 4, 4, (2, 2, 2), (32, 64, 128))
    worst = {}
    for kept in itertools.combinations(range(16), 4):
        keep = np.zeros(16, bool)
        keep[list(kept)] = True
        plan = _check_plan(planner, keep)
        for k, v in _groups_used(planner, plan).items():
            worst[k] = max(worst.get(k, 0), v)
    for (s, p), v in worst.items():
        assert v <= planner.stages[s].partitions[p].num_groups


@pytest.mark.parametrize('window_size', [7, 14])
def test_static_bounds_sampled_swin_224(window_size):
    """2000 random 12-of-49 masks for Swin-B at 224 (ratio 0.75), window 7 and 14, plus the
    masks whose visible units are packed in one corner or spread on a checkerboard."""
    planner = gwa.GreenSwinPlanner(224, 4, 32, 12, window_size, (2, 2, 18, 2), (128, 256, 512, 1024))
    rng = np.random.default_rng(window_size)
    masks = [np.argsort(rng.random(49))[:12] for _ in range(2000)]
    masks += [np.arange(12), np.arange(0, 49, 4)[:12], np.array([0, 2, 4, 6, 14, 16, 18, 20, 28, 30, 32, 34])]
    worst = {}
    for kept in masks:
        keep = np.zeros(49, bool)
        keep[kept] = True
        plan = planner.plan(keep) if len(worst) and rng.random() < 0.9 else _check_plan(planner, keep)
        for k, v in _groups_used(planner, plan).items():
            worst[k] = max(worst.get(k, 0), v)
    for (s, p), v in worst.items():
        assert v <= planner.stages[s].partitions[p].num_groups
    if window_size == 7:
        stage1 = planner.stages[0].partitions[0]
        assert (stage1.mode, stage1.group_size, stage1.num_groups) == ('grouping', 50, 30)
        assert [p.mode for p in planner.stages[2].partitions] == ['masking', 'masking']


# ----------------------------------------------------------------------------------------
# Device side: grouped attention == brute-force per-window attention; merging == dense.
# ----------------------------------------------------------------------------------------

def _reference_window_attention(attn, y, coords, res, ws, shift):
    """Per-token loop: token i attends to the visible tokens of its Swin window (rolled position
    and region label), with the bias index of their in-window offsets. float64 NumPy."""
    y = np.asarray(y, np.float64)
    b, n, c = y.shape
    nh, hd = attn.num_heads, c // attn.num_heads
    wq = np.asarray(attn.qkv.kernel[...], np.float64)
    bq = np.asarray(attn.qkv.bias[...], np.float64)
    wp, bp = np.asarray(attn.proj.kernel[...], np.float64), np.asarray(attn.proj.bias[...], np.float64)
    table = np.asarray(attn.relative_position_bias_table[...], np.float64)
    qkv = (y @ wq + bq).reshape(b, n, 3, nh, hd)
    q, k, v = qkv[:, :, 0] * hd ** -0.5, qkv[:, :, 1], qkv[:, :, 2]
    rh, rw = (coords[:, 0] - shift) % res, (coords[:, 1] - shift) % res
    win = (rh // ws) * (res // ws) + rw // ws
    if shift:
        lab = W.shifted_window_mask(res, res, ws, shift)
        inner = (rh % ws) * ws + rw % ws
    rpi = W.relative_position_index(ws)
    out = np.zeros((b, n, nh, hd))
    for i in range(n):
        js = [j for j in range(n) if win[j] == win[i] and (not shift or lab[win[i], inner[i], inner[j]] == 0)]
        bias = np.array([table[rpi[(rh[i] % ws) * ws + rw[i] % ws, (rh[j] % ws) * ws + rw[j] % ws]] for j in js])
        logits = np.einsum('bhd,jbhd->bhj', q[:, i], k[:, js].transpose(1, 0, 2, 3)) + bias.T[None]
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out[:, i] = np.einsum('bhj,jbhd->bhd', p, v[:, js].transpose(1, 0, 2, 3))
    return out.reshape(b, n, c) @ wp + bp


@pytest.fixture(scope='module')
def tiny_encoder():
    # 32 px, patch 2, 8-px units, 6 visible of 16, window 4: stage 1 (96 tokens) grouping, stage 2 masking
    return nnx.jit(lambda: GreenSwinTransformer(img_size=32, patch_size=2, embed_dim=16, depths=(2, 2, 2),
                                                num_heads=(2, 2, 4), window_size=4, mask_unit=8, len_keep=6,
                                                rngs=nnx.Rngs(0)))()


@pytest.mark.parametrize('stage,partition', [(0, 0), (0, 1), (1, 0), (1, 1)])
@pytest.mark.parametrize('per_sample', [False, True])
def test_group_attention_equals_bruteforce(tiny_encoder, stage, partition, per_sample):
    enc = tiny_encoder
    pl = enc.planner
    rng = np.random.default_rng(stage * 10 + partition)
    noise = rng.random((2, 16)).astype(np.float32)
    plan = pl.plans(noise, per_sample=True)
    if not per_sample:
        plan = plan[:1]
    st = pl.stages[stage]
    part = st.partitions[partition]
    assert part.mode == ('grouping' if stage == 0 else 'masking')
    blk = enc.layers[stage].blocks[partition]
    # perturb the bias table so the bias matters
    blk.attn.relative_position_bias_table[...] = jax.random.normal(jax.random.key(1),
                                                                   blk.attn.relative_position_bias_table.shape)
    y = jax.random.normal(jax.random.key(2), (2, st.num_tokens, st.dim))
    out = blk.window_attention(y, part, enc.stage_arrays(jnp.asarray(plan), stage, partition))
    for b in range(2):
        pos = pl.get(plan[b if per_sample else 0], f'pos{stage}')
        coords = np.stack([pos // st.resolution[1], pos % st.resolution[1]], -1)
        ref = _reference_window_attention(blk.attn, y[b:b + 1], coords, st.resolution[0], part.window_size,
                                          part.shift_size)
        np.testing.assert_allclose(np.asarray(out[b:b + 1]), ref, rtol=2e-4, atol=2e-5)


def test_merge_equals_dense_merging_on_zero_canvas(tiny_encoder):
    enc = tiny_encoder
    pl = enc.planner
    noise = np.random.default_rng(5).random((1, 16)).astype(np.float32)
    plan = pl.plans(noise, per_sample=True)
    st0, st1 = pl.stages[0], pl.stages[1]
    x = jax.random.normal(jax.random.key(3), (2, st0.num_tokens, st0.dim))
    out = enc.merge(enc.layers[0], x, jnp.asarray(pl.get(plan, 'merge0')))
    h, w = st0.resolution
    canvas = jnp.zeros((2, h * w, st0.dim)).at[:, pl.get(plan[0], 'pos0')].set(x).reshape(2, h, w, st0.dim)
    dense = enc.layers[0].downsample(canvas).reshape(2, -1, 2 * st0.dim)[:, pl.get(plan[0], 'pos1')]
    np.testing.assert_allclose(np.asarray(out), np.asarray(dense), rtol=1e-5, atol=1e-5)
    assert out.shape == (2, st1.num_tokens, 2 * st0.dim)


def test_all_visible_encoder_equals_dense_swin():
    """With every unit visible (len_keep = L) the visible-token encoder is the dense Swin."""
    kw = dict(img_size=32, patch_size=2, embed_dim=16, depths=(2, 2, 2), num_heads=(2, 2, 4), window_size=4)
    green = nnx.jit(lambda: GreenSwinTransformer(**kw, mask_unit=8, len_keep=16, norm_eps=1e-5, rngs=nnx.Rngs(0)))()
    dense = nnx.jit(lambda: swin_lib.SwinTransformer(**kw, num_classes=0, drop_path_rate=0.0, rngs=nnx.Rngs(1)))()
    for blk in (b for layer in dense.layers for b in layer.blocks):
        t = blk.attn.relative_position_bias_table
        t[...] = jax.random.normal(jax.random.key(7), t.shape)
    nnx.update(green, nnx.state(dense, nnx.Param))
    assert [p.mode for p in green.planner.stages[0].partitions] == ['grouping', 'grouping']
    images = jax.random.normal(jax.random.key(4), (2, 32, 32, 3))
    plan = jnp.asarray(green.planner.plans(np.zeros((1, 16), np.float32), per_sample=True))
    out = nnx.jit(lambda m, x, p: m(x, p))(green, images, plan)
    ref = nnx.jit(lambda m, x: m.forward_tokens(m.embed(x)))(dense, images)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref).reshape(2, -1, ref.shape[-1]), rtol=1e-4, atol=1e-4)
