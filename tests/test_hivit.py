"""HiViT backbone and its MAE pre-training (jaxmim/models/hivit.py, jaxmim/methods/mae/hivit.py).

Expectations are written out independently: brute-force index loops for the unit regrouping, the
Swin merge order and the relative-position index, NumPy LayerNorm / matmul for PatchMerge, the
parameter counts and fvcore FLOPs of the official classes (``zhangxiaosong18/hivit@2718339
supervised/configs/hivit_*_224.yaml``; 66.42M / 15.85G for base is also the comment at
``self_supervised/models/models_hivit.py:282``), the official drop-path / layer-id / weight-decay
rules (``models_hivit.py:187``, ``:201``; ``self_supervised/util/lr_decay.py:16-84``). The MAE loop
test runs the real ``jaxmim.train.pretrain`` on synthetic batches (no dataset preparation). Sizes
are tiny except for the counts, which need only ``nnx.eval_shape`` / ``jax.make_jaxpr``.
"""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jaxmim import layers as L
from jaxmim.methods import create_mim_model
from jaxmim.methods.mae.hivit import HiViTMaskedAutoencoder, masking_ids
from jaxmim.models import hivit as H
from jaxmim.models import windows as W
from jaxmim.registry import classifier_for, create_model, model_data_defaults

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny HiViT: 32 px, 8 px units (4x4 grid, 16 units) of 2x2-px inner tokens.
TINY = dict(img_size=32, patch_size=8, embed_dim=32, depths=(1, 1, 2), num_heads=2)


def _images(b=2, size=32, seed=0):
    return jnp.asarray(np.random.RandomState(seed).randn(b, size, size, 3).astype(np.float32))


# ------------------------------------------------------------------------------------------------
# Unit regrouping, in-unit merging, relative-position index
# ------------------------------------------------------------------------------------------------

def test_unit_regrouping_matches_loop_and_inverts():
    b, hp, wp, i, c = 2, 3, 5, 4, 3
    x = np.random.RandomState(0).randn(b, hp * i, wp * i, c).astype(np.float32)
    want = np.zeros((b, hp * wp, i, i, c), np.float32)
    for r in range(hp):
        for q in range(wp):
            for y in range(i):
                for z in range(i):
                    want[:, r * wp + q, y, z] = x[:, r * i + y, q * i + z]
    units = W.units_from_map(jnp.asarray(x), i)
    np.testing.assert_array_equal(np.asarray(units), want)
    np.testing.assert_array_equal(np.asarray(W.map_from_units(units, hp, wp)), x)
    # the official NCHW view/permute on the same map (models_hivit.py:111-115)
    t = torch.from_numpy(x.transpose(0, 3, 1, 2)).view(b, c, hp, i, wp, i).permute(0, 2, 4, 3, 5, 1)
    np.testing.assert_array_equal(t.reshape(b, hp * wp, i, i, c).numpy(), want)
    with pytest.raises(ValueError, match='inner_patches'):
        W.units_from_map(jnp.asarray(x), 7)


def test_patch_embed_regroups_the_conv_map_per_unit():
    m = H.PatchEmbed(32, 8, 4, 3, 6, patch_norm=False, rngs=nnx.Rngs(0))
    x = _images()
    dense = np.asarray(m.proj(x))                          # (2, 16, 16, 6): 2x2-px tokens
    units = np.asarray(m(x))                               # (2, 16 units, 4, 4, 6)
    assert units.shape == (2, 16, 4, 4, 6)
    for n in range(16):
        r, q = divmod(n, 4)
        np.testing.assert_array_equal(units[:, n], dense[:, 4 * r:4 * r + 4, 4 * q:4 * q + 4])
    with pytest.raises(ValueError, match='NHWC'):
        m(jnp.zeros((2, 3, 32, 32)))


def test_in_unit_patch_merge_equals_the_dense_definition():
    """Swin PatchMerging on the dense 4x4-px map, then regrouped per unit, equals HiViT's merge
    inside each unit (``zhangxiaosong18/hivit@2718339 self_supervised/models/models_hivit.py:121-136``):
    x0 = (even row, even col), x1 = (odd row, even col), x2 = (even row, odd col), x3 = (odd row,
    odd col), LayerNorm(4C), bias-free reduction."""
    rng = np.random.RandomState(1)
    b, hp, wp, i, c = 2, 2, 3, 4, 5
    dense = rng.randn(b, hp * i, wp * i, c).astype(np.float32)
    merged = np.zeros((b, hp * i // 2, wp * i // 2, 4 * c), np.float32)
    for y in range(hp * i // 2):
        for x in range(wp * i // 2):
            merged[:, y, x] = np.concatenate([dense[:, 2 * y, 2 * x], dense[:, 2 * y + 1, 2 * x],
                                              dense[:, 2 * y, 2 * x + 1], dense[:, 2 * y + 1, 2 * x + 1]], -1)
    pm = H.PatchMerge(c, rngs=nnx.Rngs(0))
    scale, bias = rng.randn(4 * c).astype(np.float32), rng.randn(4 * c).astype(np.float32)
    pm.norm.scale[...] = scale
    pm.norm.bias[...] = bias
    w = np.asarray(pm.reduction.kernel[...])
    mu = merged.mean(-1, keepdims=True)
    normed = (merged - mu) / np.sqrt(((merged - mu) ** 2).mean(-1, keepdims=True) + 1e-6) * scale + bias
    want = (normed.astype(np.float64) @ w).astype(np.float32)                     # (B, H/2, W/2, 2C)
    got = pm(W.units_from_map(jnp.asarray(dense), i))                             # (B, N, 2, 2, 2C)
    np.testing.assert_allclose(np.asarray(W.map_from_units(got, hp, wp)), want, rtol=1e-5, atol=1e-5)
    assert pm.reduction.bias is None


def test_relative_position_index_formula_and_masked_gather():
    g = 14
    m = nnx.eval_shape(lambda: create_model('hivit_base'))
    idx = m.relative_position_index()
    assert idx.shape == (196, 196) and idx.min() == 0 and idx.max() == 728
    for p in (0, 15, 100, 195):
        for q in (0, 27, 150, 195):
            (hp, wp), (hq, wq) = divmod(p, g), divmod(q, g)
            assert idx[p, q] == (hp - hq + 13) * 27 + (wp - wq + 13)
    ids = jnp.asarray([[5, 0, 190], [7, 3, 3]])
    got = np.asarray(W.masked_relative_position_index(idx, ids))
    for bb in range(2):
        for a in range(3):
            for c in range(3):
                assert got[bb, a, c] == idx[int(ids[bb, a]), int(ids[bb, c])]


# ------------------------------------------------------------------------------------------------
# Masking and the MAE encoder
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('length,ratio', [(196, 0.75), (16, 0.75), (64, 0.6), (10, 0.33), (16, 0.0)])
def test_masking_keeps_exactly_int_L_times_one_minus_ratio(length, ratio):
    noise = jax.random.uniform(jax.random.key(length), (3, length))
    ids_keep, ids_restore, mask = masking_ids(noise, ratio)
    keep = int(length * (1 - ratio))
    assert ids_keep.shape == (3, keep)
    np.testing.assert_array_equal(np.asarray(mask).sum(1), length - keep)
    for b in range(3):
        order = np.argsort(np.asarray(noise[b]), kind='stable')
        np.testing.assert_array_equal(np.asarray(ids_keep[b]), order[:keep])     # smallest noise kept
        expect = np.ones(length)
        expect[order[:keep]] = 0
        np.testing.assert_array_equal(np.asarray(mask[b]), expect)
        np.testing.assert_array_equal(order[np.asarray(ids_restore[b])], np.arange(length))
    with pytest.raises(ValueError, match='mask_ratio'):
        masking_ids(noise, 1.0)


@nnx.jit
def _features(m, x, ids_keep):
    return m.forward_features(x, ids_keep, return_hifeat=True)


def _mae_and_classifier(rpe, mask_ratio, hifeat=True):
    mae = HiViTMaskedAutoencoder(**TINY, rpe=rpe, hifeat=hifeat, decoder_embed_dim=16, decoder_depth=1,
                                 decoder_num_heads=2, mask_ratio=mask_ratio, rngs=nnx.Rngs(0))
    cls = H.HiViT(**TINY, rpe=rpe, num_classes=0, fc_norm=False, rngs=nnx.Rngs(1))
    # perturb the MAE's tables so that RPE matters, then copy every shared variable by name
    if rpe:
        for i in mae.main_block[-TINY['depths'][-1]:]:
            t = mae.blocks[i].attn.relative_position_bias_table
            t[...] = jax.random.normal(jax.random.key(i), t.shape)
    src = nnx.to_pure_dict(nnx.state(mae))
    dst = nnx.to_pure_dict(nnx.state(cls))
    shared = jax.tree_util.tree_map(lambda a: a, {k: src[k] for k in dst})
    nnx.update(cls, nnx.State(shared))
    return mae, cls


@pytest.mark.parametrize('rpe', [False, True])
def test_unmasked_pretraining_encoder_equals_the_classification_backbone(rpe):
    """mask_ratio 0: the encoder sees every unit in the shuffled order ``ids_keep``; its output is
    the classifier's on the same weights, permuted the same way (RPE index gathered per sample)."""
    mae, cls = _mae_and_classifier(rpe, 0.0)
    x = _images()
    noise = jax.random.uniform(jax.random.key(3), (2, 16))
    ids_keep, _, mask = masking_ids(noise, 0.0)
    assert float(mask.sum()) == 0.0
    enc = _features(mae, x, ids_keep)
    full = _features(cls, x, None)
    for e, f in zip(enc, full):
        want = np.take_along_axis(np.asarray(f), np.asarray(ids_keep).reshape(2, 16, *([1] * (f.ndim - 2))), 1)
        np.testing.assert_allclose(np.asarray(e), want, rtol=1e-5, atol=1e-5)
    # and the classifier head path on the same tokens
    np.testing.assert_allclose(np.asarray(nnx.jit(lambda m, x: m(x))(cls, x)), np.asarray(full[-1]).mean(1),
                               rtol=1e-5, atol=1e-6)


def test_masked_encoder_early_features_equal_the_unmasked_ones():
    """Nothing before the main stage mixes units: with 75% masking the kept units' stage-1/2
    features (hifeat inputs) equal the unmasked ones gathered at the same units (the official
    encoder gathers the kept units right after the patch embedding,
    ``zhangxiaosong18/hivit@2718339 self_supervised/models/models_hivit.py:236-239``)."""
    mae, cls = _mae_and_classifier(True, 0.75)
    x = _images(seed=4)
    noise = jax.random.uniform(jax.random.key(5), (2, 16))
    ids_keep, _, _ = masking_ids(noise, 0.75)
    enc = _features(mae, x, ids_keep)
    full = _features(cls, x, None)
    assert enc[-1].shape == (2, 4, 32)
    for e, f in zip(enc[:-1], full[:-1]):
        want = np.take_along_axis(np.asarray(f), np.asarray(ids_keep).reshape(2, 4, 1, 1, 1), 1)
        np.testing.assert_allclose(np.asarray(e), want, rtol=1e-6, atol=1e-6)   # batch-shape rounding only
    latent, mask, _ = nnx.jit(lambda m, x, n: m.forward_encoder(x, n))(mae, x, noise)
    assert latent.shape == (2, 4, 7 * 32) and float(mask.sum()) == 2 * 12


def test_mae_output_protocol_and_loss_formula():
    mae = create_model('mae_hivit_demo_patch4_32_dec128d2b', embed_dim=32, depths=(1, 1, 1), num_heads=2,
                       decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    x = _images(seed=6)
    inputs = mae.sample_inputs(jax.random.key(0), 2)
    assert inputs['noise'].shape == (2, 64) and mae.input_keys == ('noise',)
    assert mae.host_inputs(np.random.default_rng(0), 2)['noise'].shape == (2, 64)
    out = nnx.jit(lambda m, x, noise: m(x, noise=noise))(mae, x, inputs['noise'])
    assert out['pred'].shape == (2, 64, 48) and out['mask'].shape == (2, 64)
    assert out['latent'].shape == (2, 16, 224)        # 16 visible units x (128 + 64 + 32)
    # norm-pix MSE on removed units, written out (unbiased variance, eps 1e-6)
    img = np.asarray(x, np.float64)
    target = img.reshape(2, 8, 4, 8, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 64, 48)
    target = (target - target.mean(-1, keepdims=True)) / np.sqrt(target.var(-1, ddof=1, keepdims=True) + 1e-6)
    per_unit = ((np.asarray(out['pred'], np.float64) - target) ** 2).mean(-1)
    m = np.asarray(out['mask'])
    np.testing.assert_allclose(float(out['loss']), (per_unit * m).sum() / m.sum(), rtol=1e-5)
    with pytest.raises(ValueError, match='noise'):
        mae(x, noise=jnp.zeros((2, 63)))


# ------------------------------------------------------------------------------------------------
# Sizes: parameters and FLOPs (of the official classes, fvcore), drop path, hooks
# ------------------------------------------------------------------------------------------------

def _count(m, kind=nnx.Param):
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(m, kind)))


@pytest.mark.parametrize('name,params', [
    ('hivit_tiny', 19_181_668), ('hivit_small', 37_526_464), ('hivit_base', 66_418_952)])
def test_parameter_counts_equal_the_published_ones(name, params):
    m = nnx.eval_shape(lambda: create_model(name))
    assert _count(m) == params          # official classes, buffers excluded (19.18M / 37.53M / 66.42M)


def test_mmpretrain_and_mae_parameter_counts():
    base = nnx.eval_shape(lambda: create_model('hivit_base_mmpretrain'))
    assert round(_count(base) / 1e6, 2) == 79.05         # mmpretrain base [2, 2, 24] (arch_zoo,
    # open-mmlab/mmpretrain@ee7f2e8 mmpretrain/models/backbones/hivit.py:385-402)
    mae = nnx.eval_shape(lambda: create_model('mae_hivit_base_dec512d6b'))
    # 87.04M with the fixed decoder_pos_embed (a Buffer here, nn.Parameter officially)
    assert round((_count(mae) + _count(mae, L.Buffer)) / 1e6, 2) == 87.04
    enc = sum(math.prod(x.shape) for p, x in nnx.to_flat_state(nnx.state(mae, nnx.Param))
              if p[0] in ('patch_embed', 'absolute_pos_embed', 'blocks', 'norm'))
    assert round(enc / 1e6, 2) == 65.80                   # encoder incl. the hifeat LayerNorm(3584)
    assert classifier_for('mae_hivit_base_dec512d6b') == 'hivit_base'
    assert model_data_defaults('hivit_base')['image_size'] == 224


def _macs(jaxpr):
    """Multiply-adds of every dot_general / conv in a jaxpr (sub-jaxprs included)."""
    from jax.extend import core
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == 'dot_general':
            (contract, _), _ = eqn.params['dimension_numbers']
            lhs = eqn.invars[0].aval.shape
            total += math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract)
        elif eqn.primitive.name == 'conv_general_dilated':
            rhs = eqn.invars[1].aval.shape
            out_features = rhs[eqn.params['dimension_numbers'].rhs_spec[0]]
            total += math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs) // out_features
        for v in eqn.params.values():
            if isinstance(v, core.ClosedJaxpr):
                total += _macs(v.jaxpr)
            elif isinstance(v, core.Jaxpr):
                total += _macs(v)
    return total


def _layer_norm_elements(embed_dim, depths, grid=14, inner=4):
    """Elements normalised by every LayerNorm of a 3-stage HiViT at 224 px (fvcore counts 5 FLOPs
    each): patch norm, each early block's norm2, each merge's norm, two per main block, fc_norm."""
    n = grid * grid
    c0 = embed_dim // 4
    e = n * inner * inner * c0                               # patch_embed.norm
    e += 2 * depths[0] * n * 16 * c0 + n * 4 * 4 * c0        # stage-1 blocks, merge 1 (4 tokens x 4c0)
    e += 2 * depths[1] * n * 4 * 2 * c0 + n * 4 * 2 * c0     # stage-2 blocks, merge 2 (1 token x 8c0)
    return e + 2 * depths[2] * n * embed_dim + embed_dim


@pytest.mark.parametrize('name,gflops', [('hivit_tiny', 4.60), ('hivit_small', 9.07), ('hivit_base', 15.85)])
def test_flops_match_the_published_fvcore_counts(name, gflops):
    """fvcore ``flop_count`` convention (the counter called at ``zhangxiaosong18/hivit@2718339
    supervised/main.py:86``): one multiply-add = one FLOP for matmuls / convs, 5 per
    LayerNorm element, GELU / softmax / adds free."""
    m = nnx.eval_shape(lambda: create_model(name))
    graphdef, state = nnx.split(m)
    jaxpr = jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x))(
        state, jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
    flops = _macs(jaxpr.jaxpr) + 5 * _layer_norm_elements(m.embed_dim, m.depths)
    assert abs(flops / 1e9 - gflops) < 0.005 * gflops, flops / 1e9


def test_drop_path_schedule_over_all_blocks():
    m = nnx.eval_shape(lambda: create_model('hivit_base'))
    dpr = np.linspace(0, 0.5, 28, dtype=np.float32)
    rates = {i: blk.drop_path for i, blk in enumerate(m.blocks) if isinstance(blk, H.BlockWithRPE)}
    assert sorted(rates) == [0, 1, 2, 3, 5, 6, 7, 8] + list(range(10, 30))
    for j, i in enumerate(sorted(rates)):
        assert rates[i] == pytest.approx(float(dpr[j]), abs=1e-7)
    assert isinstance(m.blocks[4], H.PatchMerge) and isinstance(m.blocks[9], H.PatchMerge)
    assert m.blocks[3].attn is None and m.blocks[10].attn is not None


def test_hooks_follow_the_official_rules():
    m = nnx.eval_shape(lambda: create_model('hivit_base'))
    lid = m.layer_id
    assert m.num_layer_ids == 30
    assert lid('absolute_pos_embed') == 0 and lid('patch_embed.proj.kernel') == 0
    assert lid('blocks.0.mlp.fc1.kernel') == 1 and lid('blocks.3.norm2.scale') == 4
    assert lid('blocks.4.reduction.kernel') == 4           # merge inherits the block before it
    assert lid('blocks.5.mlp.fc2.bias') == 5 and lid('blocks.9.norm.bias') == 8
    assert lid('blocks.10.attn.qkv.kernel') == 9 and lid('blocks.29.mlp.fc2.kernel') == 28
    assert lid('fc_norm.scale') == 29 and lid('head.kernel') == 29
    from jaxmim.registry import match_any
    nwd = m.no_weight_decay()
    assert match_any('absolute_pos_embed', nwd) and match_any('blocks.12.attn.relative_position_bias_table', nwd)
    assert not match_any('blocks.12.attn.qkv.kernel', nwd)
    mae = nnx.eval_shape(lambda: create_model('mae_hivit_base_dec512d6b'))
    assert mae.no_weight_decay() == ()                     # APE and mask_token decayed (timm add_weight_decay)
    assert isinstance(mae.absolute_pos_embed, nnx.Param) and isinstance(mae.decoder_pos_embed, L.Buffer)
    fresh = m.pretrained_fresh()
    assert match_any('blocks.11.attn.relative_position_bias_table', fresh) and match_any('head.kernel', fresh)
    assert not match_any('blocks.11.attn.qkv.kernel', fresh)


def test_adapt_pretrained_resizes_ape_and_rpe_like_torch_bicubic():
    m = H.HiViT(img_size=48, patch_size=8, embed_dim=32, depths=(1, 1, 1), num_heads=2, num_classes=0,
                rngs=nnx.Rngs(0))                          # 6x6 unit grid
    ape = np.random.RandomState(0).randn(1, 16, 32).astype(np.float32)       # from a 4x4 grid
    got = m.adapt_pretrained('absolute_pos_embed', ape, (1, 36, 32))
    want = torch.nn.functional.interpolate(torch.from_numpy(ape).reshape(1, 4, 4, 32).permute(0, 3, 1, 2),
                                           size=(6, 6), mode='bicubic', align_corners=False)
    np.testing.assert_allclose(got, want.flatten(2).transpose(1, 2).numpy(), rtol=1e-5, atol=1e-5)
    table = np.random.RandomState(1).randn(49, 2).astype(np.float32)          # 7x7 offsets -> 11x11
    got = m.adapt_pretrained('blocks.6.attn.relative_position_bias_table', table, (121, 2))
    want = torch.nn.functional.interpolate(torch.from_numpy(table).reshape(1, 7, 7, 2).permute(0, 3, 1, 2),
                                           size=(11, 11), mode='bicubic', align_corners=False)
    np.testing.assert_allclose(got, want.flatten(2).transpose(1, 2).numpy()[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match='blocks.6.mlp.fc1.kernel'):
        m.adapt_pretrained('blocks.6.mlp.fc1.kernel', np.zeros((3, 3)), (2, 2))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match='inner_patches'):
        H.HiViT(**dict(TINY, depths=(1, 2)), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match='rpe_init'):
        H.HiViT(**TINY, rpe_init='normal', rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match='mask_ratio'):
        HiViTMaskedAutoencoder(**TINY, mask_ratio=1.0, rngs=nnx.Rngs(0))


def test_train_mode_draws_stochastic_depth_over_every_block():
    m = H.HiViT(**TINY, num_classes=3, drop_path_rate=0.5, rngs=nnx.Rngs(0))
    x = _images()
    run = nnx.jit(lambda m, x, key, train: m(x, train=train, rng=key), static_argnums=3)
    a, b = run(m, x, jax.random.key(0), True), run(m, x, jax.random.key(1), True)
    assert not np.allclose(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(run(m, x, jax.random.key(0), False)),
                                  np.asarray(run(m, x, jax.random.key(1), False)))


# ------------------------------------------------------------------------------------------------
# The real pre-training loop, then loading into the classifier by name
# ------------------------------------------------------------------------------------------------

def test_tiny_mae_run_lowers_the_loss_compiles_once_and_fine_tunes_by_name(tmp_path, monkeypatch):
    from jaxmim import train
    from jaxmim import rundir
    from jaxmim.config import load_config_file

    cfg = load_config_file(os.path.join(ROOT, 'configs/demo/mae_hivit_fmnist.py'))
    cfg.model.overrides.update(dict(embed_dim=32, depths=(1, 1, 1), num_heads=2, decoder_embed_dim=32,
                                     decoder_depth=1, decoder_num_heads=2))
    cfg.batch_size, cfg.total_steps, cfg.log_every, cfg.checkpoint_every = 16, 30, 1, 30
    cfg.optim.warmup_steps, cfg.optim.lr_scale_batch, cfg.optim.base_lr = 2, 0, 3e-3
    cfg.progress_bar = False
    cfg.method.norm_pix_loss = False      # raw-pixel targets: their shared structure is learnt within a few steps
    # 32 fixed smooth images (no dataset preparation): the loss must fall as they are fitted.
    yy, xx = np.meshgrid(np.linspace(0, 1, 32), np.linspace(0, 1, 32), indexing='ij')
    rng = np.random.RandomState(0)
    bank = np.stack([np.stack([1.0 + 0.5 * np.sin(2 * np.pi * (f * xx + g * yy + p)) for p in rng.rand(3)], -1)
                     for f, g in rng.randint(1, 4, size=(32, 2))]).astype(np.float32)

    def data_fn(config, mesh, model=None, *, train):
        def make(start):
            for step in range(start, 10_000):
                idx = np.arange(16) + 16 * (step % 2)
                yield {'image': bank[idx], 'label': np.zeros(16, np.int32)}
        return make

    monkeypatch.setattr(train, '_data_fn', data_fn)
    _, summary = train.pretrain(cfg, str(tmp_path / 'pre'))
    losses = [h['loss'] for h in summary['history']]
    assert len(losses) == 30 and summary['compilations'] == 1
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses

    cls = create_model('hivit_demo_patch4_32', embed_dim=32, depths=(1, 1, 1), num_heads=2)
    report = rundir.load_pretrained(cls, str(tmp_path / 'pre'))
    assert sorted(report['fresh']) == ['blocks.6.attn.relative_position_bias_table', 'fc_norm.bias',
                                       'fc_norm.scale', 'head.bias', 'head.kernel']
    assert 'absolute_pos_embed' in report['loaded'] and 'blocks.6.attn.qkv.kernel' in report['loaded']
    assert 'mask_token' in report['unused'] and 'norm.scale' in report['unused']
    np.testing.assert_array_equal(np.asarray(cls.blocks[6].attn.relative_position_bias_table[...]), 0.0)


def test_mae_method_builds_the_registered_model():
    m = create_mim_model({'name': 'mae', 'mask_ratio': 0.5, 'norm_pix_loss': True},
                         'mae_hivit_demo_patch4_32_dec128d2b', overrides=dict(embed_dim=32, depths=(1, 1, 1),
                                                                              num_heads=2, decoder_embed_dim=16,
                                                                              decoder_depth=1, decoder_num_heads=2))
    assert isinstance(m, HiViTMaskedAutoencoder) and m.len_keep == 32 and m.norm_pix_loss


@pytest.mark.parametrize('spec,model,steps', [
    ('configs/pretrain/mae_hivit_base.py:1600ep', 'mae_hivit_base_dec512d6b', 1600 * 312),
    ('configs/pretrain/mae_hivit_base.py:800ep', 'mae_hivit_base_dec512d6b', 800 * 312),
    ('configs/finetune/mae_hivit_base_100ep.py', 'hivit_base', 100 * 1251),
    ('configs/supervised/hivit.py:tiny', 'hivit_tiny', 300 * 1251),
    ('configs/supervised/hivit.py:small_mmpretrain', 'hivit_small_mmpretrain', 300 * 1251),
    ('configs/supervised/hivit.py:base_mmpretrain', 'hivit_base_mmpretrain', 300 * 1251),
    ('configs/demo/mae_hivit_fmnist.py', 'mae_hivit_demo_patch4_32_dec128d2b', 800),
    ('configs/demo/finetune_hivit_fmnist.py:pretrained', 'hivit_demo_patch4_32', 1000),
])
def test_configs_are_the_recipes(spec, model, steps):
    from jaxmim.config import check_config, load_config_file
    path, _, variant = spec.partition(':')
    c = load_config_file(os.path.join(ROOT, path) + (f':{variant}' if variant else ''))
    check_config(c)
    assert c.model.name == model and c.total_steps == steps
    # official commands (zhangxiaosong18/hivit@2718339): self_supervised/get_started.md:25-29
    # (pre-training), :33-38 (fine-tuning), supervised/get_started.md:27-44; mmpretrain@ee7f2e8
    # configs/_base_/schedules/imagenet_bs1024_adamw_hivit.py
    if 'pretrain/' in path:   # 4096 x blr 1e-4 / 256 = 1.6e-3, betas (0.9, 0.95), 40 warm-up epochs
        assert c.batch_size * c.optim.base_lr / c.optim.lr_scale_batch == pytest.approx(1.6e-3)
        assert c.optim.betas == (0.9, 0.95) and c.optim.warmup_steps == 40 * 312 and c.method.norm_pix_loss
    if 'finetune/' in path:   # lr 2e-3, layer decay 0.85, drop path 0.2, zero RPE tables
        assert c.batch_size * c.optim.base_lr / c.optim.lr_scale_batch == pytest.approx(2e-3)
        assert c.optim.layer_decay == 0.85 and c.model.overrides.drop_path_rate == 0.2
        assert c.model.overrides.rpe_init == 'zeros' and c.mixup.mixup_alpha == 0.8 and c.data.reprob == 0.25
    if 'supervised/' in path:  # lr 1e-3 at batch 1024; clipping only in mmpretrain's
        assert c.batch_size * c.optim.base_lr / c.optim.lr_scale_batch == pytest.approx(1e-3)
        assert c.optim.clip_grad == (5.0 if variant.endswith('mmpretrain') else 0.0)
        assert c.data.auto_augment == 'rand-m9-mstd0.5-inc1' and c.mixup.cutmix_alpha == 1.0
