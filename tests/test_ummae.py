"""UM-MAE (JAX side): Uniform Sampling, Secondary Masking, compaction, the pyramid decoder and loss,
the SimMIM baselines, fine-tuning hooks, parameter counts and tiny runs of the real train step.

Expectations are independent of the code under test: the official PyTorch lines written out
(``implus/UM-MAE@cb7776b``), brute-force loops, closed-form statistics, the issue's published
parameter counts and the 76 % decoder-order mismatch measured by rerunning the official index
logic (``models_mae_pvt.py:358-407``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from flax import nnx

from jaxmim.methods.ummae import masking as U
from jaxmim.config import check_config, load_config_file
from jaxmim.models import ummae_swin
from jaxmim.registry import create_model, model_class

# 64 px, 8-px units: an 8x8 unit grid (64 units, 16 visible, 4 secondary-masked), tokens 16x16 (k=2).
TINY_PVT = dict(img_size=64, patch_size=4, stride=8, embed_dims=(16, 32, 32), depths=(1, 1, 1),
                num_heads=(1, 2, 2), mlp_ratios=(2, 2, 2), sr_ratios=(2, 1, 1))
TINY_DEC = dict(decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
TINY_SWIN = dict(img_size=64, patch_size=4, stride=8, embed_dim=16, depths=(2, 1, 1), num_heads=(1, 2, 2),
                 window_size=4, posmlp_dim=8, mlp_ratio=2.0)
TINY_VIT = dict(img_size=32, patch_size=4, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16,
                decoder_depth=1, decoder_num_heads=2)


def _patterns(mask, grid):
    """Kept position (row-major in the block) of every 2x2 block, written out; -1 where a block
    does not hold exactly one visible unit. (B, (grid/2)^2)."""
    m = np.asarray(mask).astype(bool).reshape(-1, grid, grid)
    out = np.full((m.shape[0], (grid // 2) ** 2), -1)
    for b in range(m.shape[0]):
        for u in range(grid // 2):
            for v in range(grid // 2):
                cells = [m[b, 2 * u, 2 * v], m[b, 2 * u, 2 * v + 1], m[b, 2 * u + 1, 2 * v], m[b, 2 * u + 1, 2 * v + 1]]
                if sum(not c for c in cells) == 1:
                    out[b, u * (grid // 2) + v] = cells.index(False)
    return out


# ----------------------------------------------------------------------------------------
# Uniform Sampling and random sampling.
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize('grid,rows,each', [(16, 128, 32), (14, 100, 25)])
def test_pool_is_the_official_balanced_pool(grid, rows, each):
    pool = U.uniform_pool(grid)
    assert pool.shape == (rows, 4)
    assert (pool.sum(1) == 3).all()
    np.testing.assert_array_equal(pool.argmin(1), np.arange(rows) % 4)     # appended cyclically
    assert np.bincount(pool.argmin(1)).tolist() == [each] * 4


@pytest.mark.parametrize('sampling', ['uniform', 'uniform_block'])
@pytest.mark.parametrize('grid', [16, 14])
def test_uniform_sampling_keeps_one_unit_per_block(sampling, grid):
    for seed in range(3):
        dev = U.make_mask(jax.random.key(seed), 8, grid, 0.75, sampling)
        host = U.make_mask_numpy(np.random.default_rng(seed), 8, grid, 0.75, sampling)
        for m in (np.asarray(dev), host):
            assert m.shape == (8, grid * grid) and m.dtype == bool
            assert (_patterns(m, grid) >= 0).all()
            np.testing.assert_array_equal(m.sum(1), int(0.75 * grid * grid))   # 192 of 256, 147 of 196
            U.check_uniform_numpy(m, grid)
    with pytest.raises(ValueError, match='exactly one visible'):
        U.check_uniform_numpy(np.zeros((1, grid * grid), bool), grid)
    with pytest.raises(ValueError, match='mask_ratio 0.75'):
        U.make_mask_numpy(np.random.default_rng(0), 2, grid, 0.6, sampling)


def test_pattern_counts_follow_the_pool():
    """Balanced pool (16x16 grid): each sample's 64 blocks are 64 rows drawn without replacement from
    128 rows holding 32 of each pattern, so a pattern's count is hypergeometric: mean 16, variance
    64 * 1/4 * 3/4 * (128 - 64) / (128 - 1) = 6.047, never above 32. I.i.d. blocks: binomial,
    variance 12."""
    n = 3000
    for sampling, var in (('uniform', 64 * 0.25 * 0.75 * 64 / 127), ('uniform_block', 64 * 0.25 * 0.75)):
        m = np.asarray(U.make_mask(jax.random.key(1), n, 16, 0.75, sampling))
        m = m.reshape(n, 8, 2, 8, 2).transpose(0, 1, 3, 2, 4).reshape(n, 64, 4)
        counts = np.stack([(np.argmin(m, -1) == j).sum(1) for j in range(4)], 1)     # (n, 4)
        assert (counts.sum(1) == 64).all()
        assert abs(counts.mean() - 16) < 0.3
        assert abs(counts.var() / var - 1) < 0.1, (sampling, counts.var(), var)
        if sampling == 'uniform':
            assert counts.max() <= 32
    host = U.make_mask_numpy(np.random.default_rng(0), 200, 16, 0.75, 'uniform')
    counts = np.stack([(_patterns(host, 16) == j).sum(1) for j in range(4)], 1)
    assert counts.max() <= 32 and abs(counts.var() / (64 * 0.25 * 0.75 * 64 / 127) - 1) < 0.35


def test_random_sampling_is_a_fixed_size_uniform_subset():
    dev = np.asarray(U.make_mask(jax.random.key(0), 2000, 14, 0.75, 'random'))
    host = U.make_mask_numpy(np.random.default_rng(0), 300, 14, 0.75, 'random')
    for m in (dev, host):
        np.testing.assert_array_equal(m.sum(1), 147)
    assert np.abs(dev.mean(0) - 0.75).max() < 0.05
    assert (_patterns(dev[:20], 14) == -1).any()        # RS is not uniform: some blocks hold 0 or 2+ visible


# ----------------------------------------------------------------------------------------
# Secondary Masking (official torch lines written out).
# ----------------------------------------------------------------------------------------

def _official_pyramid_new_mask(mask, noise, vmr):
    """models_mae_pvt.py:295-306."""
    mask, noise = torch.from_numpy(mask), torch.from_numpy(noise)
    n, length = mask.shape
    vis_cnt = length - len(mask[0].nonzero())
    vis_final_cnt = int(vis_cnt * (1. - vmr))
    ids_shuffle = torch.argsort(mask.float() + noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    new_mask = torch.ones([n, length])
    new_mask[:, :vis_final_cnt] = 0
    return torch.gather(new_mask, dim=1, index=ids_restore).to(torch.bool).numpy()


def test_secondary_masking_pyramid_matches_official():
    mask = U.make_mask_numpy(np.random.default_rng(0), 16, 16, 0.75, 'uniform')
    noise = np.random.default_rng(1).random((16, 256), dtype=np.float32)
    still = np.asarray(U.secondary_visible_pyramid(jnp.asarray(mask), jnp.asarray(noise), 64, 0.25))
    np.testing.assert_array_equal(still, ~_official_pyramid_new_mask(mask, noise, 0.25))
    secondary = ~mask & ~still
    np.testing.assert_array_equal(secondary.sum(1), int(64 * 0.25))      # 16 of 64 re-masked
    np.testing.assert_array_equal(still.sum(1), 48)
    assert not (still & mask).any()
    for b in range(16):   # brute force: the 48 visible units of smallest noise stay visible
        vis = np.flatnonzero(~mask[b])
        assert set(vis[np.argsort(noise[b, vis])[:48]]) == set(np.flatnonzero(still[b]))


def test_secondary_masking_vit_matches_official():
    noise = np.random.default_rng(2).random((16, 49), dtype=np.float32)
    got = np.asarray(U.secondary_mask_vit(jnp.asarray(noise), 0.25))
    # models_mae.py:141-154
    t = torch.from_numpy(noise)
    ids_restore = torch.argsort(t, dim=1)
    len_keep = int(49 * (1 - 0.25))
    vis_mask = torch.ones([16, 49])
    vis_mask[:, :len_keep] = 0
    vis_mask = torch.gather(vis_mask, dim=1, index=ids_restore).bool().numpy()
    np.testing.assert_array_equal(got, vis_mask)
    np.testing.assert_array_equal(got.sum(1), 13)                        # 49 - int(49 * 0.75)
    assert U.num_secondary(49, 0.25) == 13 and U.num_secondary(64, 0.25) == 16


# ----------------------------------------------------------------------------------------
# Compaction.
# ----------------------------------------------------------------------------------------

def test_compaction_is_the_official_dilated_conv_and_inverts():
    grid, k, c, b = 8, 4, 3, 4
    mask = U.make_mask_numpy(np.random.default_rng(3), b, grid, 0.75, 'uniform')
    x = np.random.default_rng(4).standard_normal((b, grid * k, grid * k, c)).astype(np.float32)
    choice = U.block_choice(jnp.asarray(mask), grid)
    got = np.asarray(U.compact(jnp.asarray(x), choice, k))
    # official: zero the masked tokens, cut 2K x 2K blocks, all-ones depthwise conv with dilation K
    vis_tok = ~np.repeat(np.repeat(mask.reshape(b, grid, grid), k, 1), k, 2)
    xt = torch.from_numpy(x * vis_tok[..., None]).permute(0, 3, 1, 2)
    xt = rearrange(xt, 'b c (h p1) (w p2) -> (b h w) c p1 p2', p1=2 * k, p2=2 * k)
    xt = F.conv2d(xt, torch.ones(c, 1, 2, 2), dilation=k, groups=c)
    xt = rearrange(xt, '(b h w) c p1 p2 -> b c (h p1) (w p2)', h=grid // 2, w=grid // 2)
    np.testing.assert_array_equal(got, xt.permute(0, 2, 3, 1).numpy())
    # brute force: compact unit (u, v) is original unit (2u + a, 2v + b), tokens in the same order
    pat = _patterns(mask, grid)
    for s in range(b):
        for blk, p in enumerate(pat[s]):
            u, v = divmod(blk, grid // 2)
            r0, c0 = (2 * u + p // 2) * k, (2 * v + p % 2) * k
            np.testing.assert_array_equal(got[s, u * k:(u + 1) * k, v * k:(v + 1) * k], x[s, r0:r0 + k, c0:c0 + k])
    # inverse restores the visible units, zeros elsewhere
    back = np.asarray(U.uncompact(jnp.asarray(got), choice, k))
    np.testing.assert_array_equal(back, x * vis_tok[..., None])


def test_visible_unit_order_and_the_official_decoder_mismatch():
    """block_visible_units written out; the official decoder's raster-order pos-embeds disagree with
    the block order for about 76 % of the visible tokens (``implus/UM-MAE@cb7776b
    models_mae_pvt.py:358-407``, ``models_mae_swin.py:499-548``)."""
    mask = U.make_mask_numpy(np.random.default_rng(5), 400, 16, 0.75, 'uniform')
    units = np.asarray(U.block_visible_units(U.block_choice(jnp.asarray(mask), 16), 16))
    pat = _patterns(mask, 16)
    blk = np.arange(64)
    want = (2 * (blk // 8) + pat // 2) * 16 + 2 * (blk % 8) + pat % 2
    np.testing.assert_array_equal(units, want)
    raster = np.stack([np.flatnonzero(~m) for m in mask])                 # official decoder_pos_embed[~mask]
    vis, masked = (np.asarray(a) for a in U.unit_orders(jnp.asarray(mask), 64))
    np.testing.assert_array_equal(vis, raster)
    np.testing.assert_array_equal(masked, np.stack([np.flatnonzero(m) for m in mask]))
    frac = (raster != units).mean()
    assert 0.72 < frac < 0.80, frac
    assert (np.sort(units, 1) == raster).all()                            # same set, other order


# ----------------------------------------------------------------------------------------
# Models: loss, outputs, decoder modes, position bias.
# ----------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def tiny_pvt():
    return create_model('mae_pvt_small_256', seed=0, vis_mask_ratio=0.25, norm_pix_loss=True, **TINY_PVT, **TINY_DEC)


@nnx.jit
def _forward(model, images, mask, noise):
    """The model's forward, jitted (eager dispatch of a whole model is slow on a shared CPU)."""
    return model(images, mask=mask, noise=noise)


def _norm_pix(t):
    return (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, ddof=1, keepdims=True) + 1e-6)


def _patchify(x, p):
    b, h, w, c = x.shape
    return x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, p * p * c)


def test_loss_ignores_visible_and_secondary_masked_units(tiny_pvt):
    model = tiny_pvt
    images = np.random.default_rng(0).standard_normal((3, 64, 64, 3)).astype(np.float32)
    inputs = model.host_inputs(np.random.default_rng(1), 3)
    out = _forward(model, jnp.asarray(images), inputs['mask'], inputs['noise'])
    mask, sec = inputs['mask'], np.asarray(out['secondary_mask']).astype(bool)
    np.testing.assert_array_equal(sec.sum(1), 4)                          # 16 - int(16 * 0.75)
    assert not (sec & mask).any()
    pred = np.asarray(out['pred'], np.float64)
    per_unit = ((pred - _norm_pix(_patchify(images.astype(np.float64), 8))) ** 2).mean(-1)
    np.testing.assert_allclose(float(out['loss']), per_unit[mask].mean(), rtol=2e-5)
    # the raster prediction is the official sequence scattered back: masked units in raster order
    seq = np.asarray(out['pred_seq'])
    for b in range(3):
        np.testing.assert_array_equal(pred[b, np.flatnonzero(mask[b])], seq[b, 16:])
    # moving the visible (incl. secondary-masked) predictions leaves the loss unchanged
    order = jnp.concatenate(U.unit_orders(jnp.asarray(mask), 16), 1)
    choice = U.block_choice(jnp.asarray(mask), 8)
    order = order.at[:, :16].set(U.block_visible_units(choice, 8))
    moved = out['pred_seq'].at[:, :16].add(100.0)
    again = model.mae_outputs(jnp.asarray(images), moved, order, jnp.asarray(mask), jnp.asarray(sec))
    assert float(again['loss']) == pytest.approx(float(out['loss']), rel=1e-6)
    changed = model.mae_outputs(jnp.asarray(images), out['pred_seq'].at[:, 16:].add(1.0), order,
                                jnp.asarray(mask), jnp.asarray(sec))
    assert float(changed['loss']) > float(out['loss']) + 0.5


def test_decoder_position_modes(tiny_pvt):
    model = tiny_pvt
    images = jnp.asarray(np.random.default_rng(2).standard_normal((2, 64, 64, 3)), jnp.float32)
    noise = jnp.asarray(np.random.default_rng(3).random((2, 64)), jnp.float32)
    top_left = np.ones((8, 8), bool)
    top_left[0::2, 0::2] = False                      # every block keeps (0, 0): both orders agree
    random_mask = U.make_mask_numpy(np.random.default_rng(4), 1, 8, 0.75, 'uniform')[0]
    mask = jnp.asarray(np.stack([top_left.reshape(64), random_mask]))
    res = {}
    for official in (False, True):
        model.official_decoder_pos = official
        res[official] = np.asarray(_forward(model, images, mask, noise)['pred'])
    model.official_decoder_pos = False
    np.testing.assert_array_equal(res[False][0], res[True][0])
    assert np.abs(res[False][1] - res[True][1]).max() > 1e-4


@pytest.mark.parametrize('pos_lattice', [None, (1, 20), (4, 20)])
def test_swin_position_bias_formula(pos_lattice):
    """Direct per-pair evaluation and the offset table (coordinates = integers in [0, 20) / scale)
    both equal the MLP written out on ``sign(d) log(1 + |d|)``."""
    attn = ummae_swin.WindowAttention(8, 2, posmlp_dim=4, pos_lattice=pos_lattice, rngs=nnx.Rngs(0))
    scale = 1 if pos_lattice is None else pos_lattice[0]
    pos = np.random.default_rng(0).integers(0, 20, (3, 5, 2)).astype(np.float32) / scale
    pos[0, 0], pos[0, 1] = 0, 19 / scale                                 # both ends of the offset range
    got = np.asarray(attn.position_bias(jnp.asarray(pos)))
    w1, b1 = np.asarray(attn.posmlp[0].kernel[...])[0, 0], np.asarray(attn.posmlp[0].bias[...])
    w2, b2 = np.asarray(attn.posmlp[2].kernel[...])[0, 0], np.asarray(attn.posmlp[2].bias[...])
    want = np.zeros((3, 2, 5, 5), np.float32)
    for n in range(3):
        for i in range(5):
            for j in range(5):
                d = pos[n, j] - pos[n, i]                                 # key - query
                d = np.sign(d) * np.log(1 + np.abs(d))
                want[n, :, i, j] = np.maximum(d @ w1 + b1, 0) @ w2 + b2
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_swin_position_lattice_is_checked():
    with pytest.raises(ValueError, match='pos_lattice'):
        ummae_swin.WindowAttention(8, 2, pos_lattice=(0, 20), rngs=nnx.Rngs(0))


def test_vit_pred_is_raster_and_secondary_units_marked():
    model = create_model('mae_vit_base_patch16_dec512d2b', seed=0, vis_mask_ratio=0.25, sampling='uniform', **TINY_VIT)
    inputs = model.host_inputs(np.random.default_rng(0), 2)
    assert inputs['noise'].shape == (2, 16) and inputs['mask'].sum() == 2 * 48
    images = jnp.asarray(np.random.default_rng(1).standard_normal((2, 32, 32, 3)), jnp.float32)
    out = _forward(model, images, inputs['mask'], inputs['noise'])
    sec = np.asarray(out['secondary_mask']).astype(bool)
    np.testing.assert_array_equal(sec.sum(1), 4)
    for b in range(2):
        vis, masked = np.flatnonzero(~inputs['mask'][b]), np.flatnonzero(inputs['mask'][b])
        np.testing.assert_array_equal(np.asarray(out['pred'])[b, masked], np.asarray(out['pred_seq'])[b, 16:])
        np.testing.assert_array_equal(np.flatnonzero(sec[b]), vis[np.asarray(U.secondary_mask_vit(
            jnp.asarray(inputs['noise']), 0.25))[b]])


def test_model_rejects_bad_settings():
    with pytest.raises(ValueError, match='sampling'):
        create_model('mae_pvt_small_256', sampling='random', **TINY_PVT, **TINY_DEC)
    with pytest.raises(ValueError, match='2\\^\\(stages-2\\)'):
        create_model('mae_pvt_small_256', **dict(TINY_PVT, stride=16), **TINY_DEC)
    model = create_model('simmim_pvt_small_256', **dict(TINY_PVT, sr_ratios=(4, 2, 1)))
    with pytest.raises(ValueError, match='mask must be'):
        model(jnp.zeros((1, 64, 64, 3)), mask=jnp.zeros((1, 16), bool))


# ----------------------------------------------------------------------------------------
# Parameter counts (issue 6) and fine-tuning hooks.
# ----------------------------------------------------------------------------------------

def _count(name, **kw):
    model = nnx.eval_shape(lambda: create_model(name, **kw))
    return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model)))


def test_parameter_counts_equal_the_official_ones():
    assert _count('pvt_small_256') == 21_546_728
    assert _count('swin_tiny_256') == 28_268_050
    assert _count('mae_pvt_small_256', vis_mask_ratio=0.25) == 28_915_776      # incl. the fixed sin-cos tables


@pytest.mark.parametrize('name', ['pvt_small_256', 'pvt_demo_32', 'mae_pvt_small_256', 'mae_pvt_demo_32',
                                  'simmim_pvt_small_256', 'simmim_pvt_demo_32', 'swin_tiny_256', 'swin_large_256',
                                  'mae_swin_tiny_256', 'mae_swin_large_256', 'mae_swin_large_256_dec512d2b',
                                  'simmim_swin_tiny_256'])
def test_registered_layer_norm_eps_follow_the_official_constructors(name):
    """The official pyramid constructors never pass ``norm_layer`` to ``PVTBlock`` / ``SwinBlock``
    (``models_mae_pvt.py:185-196``, ``models_pvt.py:53-64``, ``models_simmim_pvt.py:59-70``,
    ``models_mae_swin.py:326-343``, ``models_swin.py:57-75``, ``models_simmim_swin.py:60-77``), so
    ``blocks.{i}.norm1`` / ``norm2`` (and PVT ``attn.norm``) are ``nn.LayerNorm(dim)``, eps 1e-5; the
    factories' ``partial(nn.LayerNorm, eps=1e-6)`` reaches every other LayerNorm (Swin
    ``patch_embed.norm`` / ``downsample.norm``, ``norm`` / ``fc_norm``, ``decoder_blocks``,
    ``decoder_norm``). Registered defaults, sizes shrunk (eps does not depend on them)."""
    import inspect
    cls = model_class(name)
    accepted = inspect.signature(cls.__init__).parameters
    tiny = {**(TINY_PVT if 'pvt' in name else TINY_SWIN), **TINY_DEC}
    tiny = {k: v for k, v in tiny.items() if k in accepted and not (k == 'stride' and 'num_classes' in accepted)}
    model = nnx.eval_shape(lambda: create_model(name, **tiny))
    eps = {'.'.join(map(str, p)): m.epsilon for p, m in nnx.iter_modules(model) if isinstance(m, nnx.LayerNorm)}
    want = {}
    for path in eps:
        parts = path.split('.')
        in_block = parts[0] == 'blocks' and parts[2:] in (['norm1'], ['norm2'], ['attn', 'norm'])
        want[path] = 1e-5 if in_block else 1e-6
    assert eps == want
    kinds = {p.split('.')[0] if p.split('.')[0] != 'blocks' else '.'.join(p.split('.')[2:]) for p in eps}
    expected = {'norm1', 'norm2'} | ({'attn.norm'} if 'pvt' in name else {'patch_embed', 'downsample.norm'})
    expected |= {'fc_norm'} if 'num_classes' in accepted else {'norm'}
    expected |= {'decoder_blocks', 'decoder_norm'} if name.startswith('mae_') else set()
    assert kinds == expected


def test_layer_ids_follow_lr_decay_py():
    model = nnx.eval_shape(lambda: create_model('pvt_small_256'))
    assert model.num_layer_ids == 18                 # len(blocks) + 1 = 17 -> ids 0..17
    for name, want in (('pos_embed', 0), ('patch_embed.proj.kernel', 0), ('blocks.0.attn.q.kernel', 1),
                       ('blocks.3.downsample.proj.kernel', 4), ('blocks.15.mlp.fc2.bias', 16),
                       ('fc_norm.scale', 17), ('head.kernel', 17)):
        assert model.layer_id(name) == want, name


# ----------------------------------------------------------------------------------------
# Configs.
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize('spec,model,steps', [
    ('configs/pretrain/ummae.py:pvt_small_200ep', 'mae_pvt_small_256', 200 * 312),
    ('configs/pretrain/ummae.py:swin_tiny_800ep', 'mae_swin_tiny_256', 800 * 312),
    ('configs/pretrain/ummae.py:swin_large_800ep', 'mae_swin_large_256', 800 * 312),
    ('configs/pretrain/ummae.py:vit_base_mae_200ep', 'mae_vit_base_patch16_dec512d2b', 200 * 312),
    ('configs/pretrain/ummae.py:vit_base_200ep', 'mae_vit_base_patch16_dec512d2b', 200 * 312),
    ('configs/pretrain/ummae_simmim_256.py:pvt_small_200ep', 'simmim_pvt_small_256', 200 * 312),
    ('configs/pretrain/ummae_simmim_256.py:swin_tiny_200ep', 'simmim_swin_tiny_256', 200 * 312),
    ('configs/finetune/ummae_finetune.py:pvt_small_256', 'pvt_small_256', 100 * 1251),
    ('configs/finetune/ummae_finetune.py:swin_large_256', 'swin_large_256', 100 * 1251),
    ('configs/finetune/ummae_finetune.py:vit_base_224', 'vit_base_patch16_224', 100 * 1251),
    ('configs/demo/ummae_pvt_fmnist.py', 'mae_pvt_demo_32', 2400),
    ('configs/demo/finetune_pvt_fmnist.py:pretrained', 'pvt_demo_32', 2000),
])
def test_configs_mirror_the_makefile(spec, model, steps):
    c = load_config_file(spec)
    check_config(c)
    assert c.model.name == model and c.total_steps == steps
    if c.mode == 'pretrain' and c.method.name == 'ummae' and 'demo' not in spec:
        assert c.batch_size == 4096 and c.optim.base_lr == 1.5e-4 and c.method.norm_pix_loss
        want = ('random', 0.0) if spec.endswith('_mae_200ep') else ('uniform', 0.25)
        assert (c.method.sampling, c.method.vis_mask_ratio) == want
    if c.mode == 'finetune' and 'demo' not in spec:
        assert c.batch_size == 1024 and c.optim.layer_decay == {'pvt': 0.85, 'swi': 0.7, 'vit': 0.8}[model[:3]]
        assert c.mixup.mixup_alpha == 0.8 and c.data.reprob == 0.25


@pytest.mark.parametrize('pretrain,classifier', [('mae_pvt_small_256', 'pvt_small_256'),
                                                 ('simmim_pvt_small_256', 'pvt_small_256'),
                                                 ('mae_swin_tiny_256', 'swin_tiny_256'),
                                                 ('simmim_swin_tiny_256', 'swin_tiny_256'),
                                                 ('mae_vit_base_patch16_dec512d2b', 'vit_base_patch16_224')])
def test_classifier_variables_are_the_pretrained_encoder_key_for_key(pretrain, classifier):
    """main_finetune.py asserts the missing keys are exactly head.* and fc_norm.*: every other
    classifier variable has a pre-training variable of the same name and shape (real sizes)."""
    def shapes(name, **kw):
        model = nnx.eval_shape(lambda: create_model(name, **kw))
        return {'.'.join(str(k) for k in path): tuple(v.shape) for path, v in nnx.to_flat_state(nnx.state(model))}
    pre = shapes(pretrain, vis_mask_ratio=0.25) if pretrain.startswith('mae_') else shapes(pretrain)
    clf = shapes(classifier)
    missing = sorted(k for k in clf if k not in pre)
    assert missing == ['fc_norm.bias', 'fc_norm.scale', 'head.bias', 'head.kernel']
    assert all(pre[k] == v for k, v in clf.items() if k in pre)
