"""GroupMixFormer backbone (jaxmim/models/groupmixformer.py): Group-Mix Attention against written-out
NumPy computations, parameter counts and FLOPs against the official table, BatchNorm behaviour (train
vs eval, statistics shared by q/k/v, global statistics over 1 and 8 devices), the masked
pre-training encoder, and tiny supervised and SimMIM runs through the real loops.

Expectations: dense reference convolutions written as loops over kernel offsets (depthwise kernels
expanded to block-diagonal dense ones), the factorised attention formula of the official
``EfficientAtt`` (``AILab-CVC/GroupMixFormer@3d3f40977c6a models/groupmixformer.py:159-200``),
BatchNorm / LayerNorm formulas, the parameter counts of the official classes and their fvcore FLOPs
(counted as the official ``cal_flops.py`` does).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxmim.models import groupmixformer as G
from jaxmim.registry import create_model, model_defaults

RNG = np.random.default_rng(0)
TINY = dict(img_size=32, embed_dims=(10, 20, 20, 30), depths=(1, 1, 1, 1), mlp_ratios=(2, 2, 2, 2),
            drop_path_rate=0.0)


# ------------------------------------------------------------------------------------------
# NumPy references.
# ------------------------------------------------------------------------------------------

def np_conv(x, kernel, stride=1, groups=1, bias=None):
    """Brute-force conv, NHWC, symmetric zero padding k // 2: a loop over kernel offsets. A grouped
    (depthwise) kernel (k, k, cin/groups, cout) is first expanded to a dense block-diagonal one."""
    x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    k, _, cig, cout = kernel.shape
    cin = x.shape[-1]
    dense = np.zeros((k, k, cin, cout))
    cog = cout // groups
    for g in range(groups):
        dense[:, :, g * cig:(g + 1) * cig, g * cog:(g + 1) * cog] = kernel[:, :, :, g * cog:(g + 1) * cog]
    p = k // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    b, h, w, _ = x.shape
    ho, wo = (h + 2 * p - k) // stride + 1, (w + 2 * p - k) // stride + 1
    out = np.zeros((b, ho, wo, cout))
    for di in range(k):
        for dj in range(k):
            patch = xp[:, di:di + stride * (ho - 1) + 1:stride, dj:dj + stride * (wo - 1) + 1:stride]
            out += patch @ dense[di, dj]
    return out + (0 if bias is None else np.asarray(bias))


def np_sep(sep, x, stride=1):
    return np_conv(np_conv(x, sep.conv1.kernel[...], stride, groups=x.shape[-1]), sep.pointwise_conv.kernel[...])


def np_bn_eval(bn, x):
    return ((x - np.asarray(bn.mean[...])) / np.sqrt(np.asarray(bn.var[...]) + 1e-5) * np.asarray(bn.scale[...])
            + np.asarray(bn.bias[...]))


def np_ln(ln, x, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * np.asarray(ln.scale[...]) + np.asarray(ln.bias[...])


def hswish(x):
    return x * np.minimum(np.maximum(x + 3, 0), 6) / 6


def perturb_bn(module, seed=0):
    """Non-trivial running statistics and affine parameters in every BatchNorm of ``module``."""
    rng = np.random.default_rng(seed)
    for _, m in nnx.iter_modules(module):
        if isinstance(m, nnx.BatchNorm):
            n = m.mean[...].shape
            m.mean[...] = jnp.asarray(rng.normal(0, 0.3, n), jnp.float32)
            m.var[...] = jnp.asarray(rng.uniform(0.5, 2.0, n), jnp.float32)
            m.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, n), jnp.float32)
            m.bias[...] = jnp.asarray(rng.normal(0, 0.2, n), jnp.float32)


# ------------------------------------------------------------------------------------------
# Group-Mix Attention.
# ------------------------------------------------------------------------------------------

def test_aggregator_branches_against_dense_convolutions():
    dim, b, h, w = 40, 2, 5, 6                 # s = 8, 8 heads of 4 channels; odd, non-square map
    agg = G.Aggregator(dim, rngs=nnx.Rngs(0))
    perturb_bn(agg)
    x = RNG.normal(size=(3 * b, h, w, dim)).astype(np.float32)        # [q; k; v] on the batch axis
    qkv, local = nnx.jit(lambda m, x: m(x, 8, train=False))(agg, jnp.asarray(x))
    s = dim // 5
    seg = [x[..., i * s:(i + 1) * s] for i in range(5)]
    ref = [hswish(np_bn_eval(agg.norm0, seg[0]))]
    for i, (conv, bn) in enumerate([(agg.agg1, agg.norm1), (agg.agg2, agg.norm2), (agg.agg3, agg.norm3)], 1):
        assert conv.conv1.kernel[...].shape == (2 * i + 1, 2 * i + 1, 1, s)      # 3x3, 5x5, 7x7 depthwise
        ref.append(hswish(np_bn_eval(bn, np_sep(conv, seg[i]))))
    cat = np.concatenate(ref, -1)                                      # (3B, H, W, 4s)
    c = 4 * s // 8
    for t in range(3):                                                 # q, k, v
        for head in range(8):
            want = cat[t * b:(t + 1) * b, :, :, head * c:(head + 1) * c].reshape(b, h * w, c)
            np.testing.assert_allclose(qkv[t, :, head], want, rtol=1e-4, atol=1e-5)
    # Non-attention branch: segment 4 of q, k, v concatenated on channels [q4 | k4 | v4].
    x4 = np.concatenate([seg[4][t * b:(t + 1) * b] for t in range(3)], -1)
    want = hswish(np_ln(agg.agg0.norm, np_sep(agg.agg0.conv, x4), 1e-5))
    np.testing.assert_allclose(local, want, rtol=1e-4, atol=1e-5)
    assert agg.agg0.norm.epsilon == 1e-5


def test_factorised_attention_against_the_written_out_formula():
    dim, b, h, w = 40, 2, 4, 5                 # C // 8 = 5 while the head width is C / 10 = 4
    att = G.EfficientAtt(dim, rngs=nnx.Rngs(1))
    perturb_bn(att)
    x = RNG.normal(size=(b, h, w, dim)).astype(np.float32)
    out = np.asarray(nnx.jit(lambda m, x: m(x, train=False))(att, jnp.asarray(x)))
    qkv = np.asarray(att.qkv(jnp.asarray(x)))
    stacked = np.concatenate([qkv[..., t * dim:(t + 1) * dim] for t in range(3)], 0)   # [q; k; v]
    heads, local = nnx.jit(lambda m, x: m(x, 8, train=False))(att.aggregator, jnp.asarray(stacked))
    q, k, v = (np.asarray(heads[t], np.float64) for t in range(3))    # (B, 8, N, 4)
    n, c = h * w, 4
    expected = np.zeros((b, n, 8, c))
    for bi in range(b):
        for hd in range(8):
            ek = np.exp(k[bi, hd] - k[bi, hd].max(0))
            sk = ek / ek.sum(0)                                      # softmax over the tokens
            g = sum(np.outer(sk[m], v[bi, hd, m]) for m in range(n))  # c x c
            expected[bi, :, hd] = 5 ** -0.5 * q[bi, hd] @ g
    # Convolutional relative position term: heads 0-1 3x3, 2-4 5x5, 7x7 for 5-7 (depthwise + bias).
    v_img = v.transpose(0, 2, 1, 3).reshape(b, h, w, 8 * c)
    start = 0
    for conv, (kk, nh) in zip(att.crpe.conv_list, G.CRPE_WINDOW):
        assert conv.kernel[...].shape == (kk, kk, 1, nh * c)
        cv = np_conv(v_img[..., start:start + nh * c], conv.kernel[...], groups=nh * c, bias=conv.bias[...])
        cv = cv.reshape(b, n, nh, c)
        expected[:, :, start // c:start // c + nh] += q.transpose(0, 2, 1, 3)[:, :, start // c:start // c + nh] * cv
        start += nh * c
    merged = np.concatenate([expected.reshape(b, h, w, 8 * c), np.asarray(local)], -1)
    want = merged @ np.asarray(att.proj.kernel[...]) + np.asarray(att.proj.bias[...])
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)


def test_stride_two_patch_embedding_pads_symmetrically():
    pe = G.PatchEmbedLayer(6, 10, 2, rngs=nnx.Rngs(2))
    perturb_bn(pe)
    x = RNG.normal(size=(2, 8, 8, 6)).astype(np.float32)
    want = hswish(np_bn_eval(pe.norm, np_sep(pe.proj, x, stride=2)))   # pad (1, 1): 'SAME' would pad (0, 1)
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(pe, jnp.asarray(x)), want, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------
# Sizes: parameter counts and FLOPs of the registered variants.
# ------------------------------------------------------------------------------------------

OFFICIAL_PARAMS = {'groupmixformer_mini': 5_733_120, 'groupmixformer_tiny': 10_949_152,
                   'groupmixformer_small': 22_421_320, 'groupmixformer_base': 45_827_272,
                   'groupmixformer_large': 71_833_648}     # L: configs/groupmixformer_large.yaml
# fvcore FLOPs (1 multiply-add = 1 FLOP) of the official classes, 2 decimals (``cal_flops.py``'s
# counter), and the README's rounded figures (L: the yaml's; the official L yaml, marked "# need to
# adjust", does not reproduce the README's 70.3M / 36.1G).
FVCORE_GFLOPS = {'groupmixformer_mini': 1.35, 'groupmixformer_tiny': 3.72, 'groupmixformer_small': 5.16,
                 'groupmixformer_base': 17.55, 'groupmixformer_large': 38.25}
README_GFLOPS = {'groupmixformer_mini': 1.4, 'groupmixformer_tiny': 3.7, 'groupmixformer_small': 5.2,
                 'groupmixformer_base': 17.6}


def _n_params(module):
    return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(module, nnx.Param)))


def _shallow_and_blocks(name):
    """The variant with one block per stage and one abstract block per stage (``nnx.eval_shape``):
    every block of a stage has the same shapes, so the full model is the shallow one plus
    ``depth - 1`` blocks per stage (building the full L abstractly takes minutes on 2 cores)."""
    d = model_defaults(name)
    shallow = nnx.eval_shape(lambda: create_model(name, depths=(1, 1, 1, 1)))
    blocks = [nnx.eval_shape(lambda i=i: G.GMABlock(d['embed_dims'][i], 8, d['mlp_ratios'][i], rngs=nnx.Rngs(0)))
              for i in range(4)]
    return d, shallow, blocks


def _macs(jaxpr):
    """Multiply-adds of every dot_general and conv in a jaxpr (sub-jaxprs included)."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == 'dot_general':
            (lc, _), _ = eqn.params['dimension_numbers']
            lhs = eqn.invars[0].aval.shape
            total += int(np.prod(eqn.outvars[0].aval.shape)) * int(np.prod([lhs[i] for i in lc]))
        elif eqn.primitive.name == 'conv_general_dilated':
            rhs = eqn.invars[1].aval.shape
            total += int(np.prod(eqn.outvars[0].aval.shape)) * int(np.prod(rhs)) // rhs[eqn.params['dimension_numbers'].rhs_spec[0]]
        for v in eqn.params.values():
            sub = getattr(v, 'jaxpr', v)
            if hasattr(sub, 'eqns'):
                total += _macs(sub)
    return total


def _module_macs(module, shape):
    g, st = nnx.split(module)
    jp = jax.make_jaxpr(lambda st, x: nnx.merge(g, st)(x))(st, jax.ShapeDtypeStruct(shape, jnp.float32))
    return _macs(jp.jaxpr)


def _fvcore_norm_flops(d, img=224):
    """What fvcore adds for normalisation layers in eval mode: BatchNorm 2 per element (affine),
    LayerNorm 5 per element (``fvcore/nn/jit_handles.py``), written out per layer."""
    e, depths = d['embed_dims'], d['depths']
    f = 2 * (img // 2) ** 2 * (e[0] // 2) + 2 * (img // 4) ** 2 * e[0]              # stem BNs
    for i in range(4):
        n, c = (img // 4 // 2 ** i) ** 2, e[i]
        s = c // 5
        f += 2 * n * c                                                                # patch-embed BN
        f += depths[i] * (2 * 5 * n * c + 4 * 2 * 3 * n * s + 5 * n * s)               # LN1/2, 4 agg BNs, Agg_0 LN
    return f + 2 * (img // 32) ** 2 * e[3]                                            # norm4


@pytest.mark.parametrize('name', sorted(OFFICIAL_PARAMS))
def test_parameter_counts_and_flops_match_the_official_table(name):
    """Parameters: equal to the official count (the model with one block per stage plus
    ``depth - 1`` abstract blocks per stage, all through ``nnx.eval_shape``).

    FLOPs: multiply-adds of every dot and conv from the jaxpr (batch 1, 224 px, eval), plus fvcore's
    normalisation terms written out. fvcore does not count element-wise ops (CRPE's q * conv(v),
    activations, softmax, residual adds, the mean pool), and neither does this count. The official
    numbers are given with 2 decimals, so the tolerance is their rounding, 0.005 GFLOPs (the
    normalisation terms alone are 16-124 MFLOPs, i.e. they must be right too); against the README's
    1-decimal figures: the README rounds the 2-decimal value half up (M: 1.35 -> 1.4)."""
    d, shallow, blocks = _shallow_and_blocks(name)
    total = _n_params(shallow) + sum((d['depths'][i] - 1) * _n_params(blocks[i]) for i in range(4))
    assert total == OFFICIAL_PARAMS[name]
    macs = _module_macs(shallow, (1, 224, 224, 3))
    for i in range(4):
        r = 56 // 2 ** i
        macs += (d['depths'][i] - 1) * _module_macs(blocks[i], (1, r, r, d['embed_dims'][i]))
    gflops = (macs + _fvcore_norm_flops(d)) / 1e9
    assert abs(gflops - FVCORE_GFLOPS[name]) <= 0.005 + 1e-9, gflops
    if name in README_GFLOPS:
        assert round(round(gflops, 2) + 1e-9, 1) == README_GFLOPS[name], gflops


# ------------------------------------------------------------------------------------------
# BatchNorm: training vs evaluation, shared q/k/v statistics, global statistics under sharding.
# ------------------------------------------------------------------------------------------

def _batch_stats(model):
    return {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model, nnx.BatchStat))}


def test_batchnorm_updates_in_training_and_is_frozen_in_evaluation():
    model = G.GroupMixFormer(num_classes=5, **TINY, rngs=nnx.Rngs(0))
    fwd = nnx.jit(lambda m, x, train: m(x, train=train), static_argnums=2)
    x = RNG.normal(size=(4, 32, 32, 3)).astype(np.float32)
    other = x.copy()
    other[1:] = RNG.normal(size=(3, 32, 32, 3)) * 3 + 1          # same sample 0, different batch mates
    before = _batch_stats(model)
    out_eval = np.asarray(fwd(model, jnp.asarray(x), False))
    assert all(np.array_equal(before[k], v) for k, v in _batch_stats(model).items())     # frozen
    # Evaluation is per-sample: sample 0 does not depend on its batch mates.
    np.testing.assert_allclose(fwd(model, jnp.asarray(other), False)[0], out_eval[0], rtol=1e-5, atol=1e-6)

    # Training: the stem's first BatchNorm moves to 0.9 * old + 0.1 * batch statistics, the variance
    # unbiased (ddof=1 over the 4 * 16 * 16 values per channel), as PyTorch's.
    conv1 = np.asarray(model.conv_stem.proj1(jnp.asarray(x)), np.float64)
    out_train = np.asarray(fwd(model, jnp.asarray(x), True))
    after = _batch_stats(model)
    np.testing.assert_allclose(after[('conv_stem', 'norm1', 'mean')], 0.1 * conv1.mean((0, 1, 2)), rtol=1e-4,
                               atol=1e-7)
    np.testing.assert_allclose(after[('conv_stem', 'norm1', 'var')], 0.9 + 0.1 * conv1.var((0, 1, 2), ddof=1),
                               rtol=1e-5)
    assert all(not np.array_equal(before[k], after[k]) for k in before if k[-1] == 'mean')   # every BN moved
    assert np.abs(out_train - out_eval).max() > 1e-3            # batch statistics, not running ones
    # ... and in training sample 0 depends on its batch mates.
    assert np.abs(np.asarray(fwd(model, jnp.asarray(other), True))[0] - out_train[0]).max() > 1e-4


def test_aggregator_statistics_are_shared_by_q_k_v():
    att = G.EfficientAtt(40, rngs=nnx.Rngs(4))
    x = RNG.normal(size=(2, 4, 4, 40)).astype(np.float32)
    qkv = np.asarray(att.qkv(jnp.asarray(x)), np.float64)
    att(jnp.asarray(x), train=True)
    seg0 = np.concatenate([qkv[..., t * 40:t * 40 + 8] for t in range(3)], 0)      # q0, k0, v0 stacked
    np.testing.assert_allclose(att.aggregator.norm0.mean[...], 0.1 * seg0.mean((0, 1, 2)), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(att.aggregator.norm0.var[...], 0.9 + 0.1 * seg0.var((0, 1, 2), ddof=1), rtol=1e-5)


def test_batchnorm_statistics_are_global_over_1_and_8_devices():
    """A jitted training forward with the batch sharded over the 'data' axis (one image per
    device on 8 devices) gives the statistics of the whole batch: equal to 1 device, i.e.
    SyncBatchNorm, not per-device BatchNorm."""
    model = G.GroupMixFormer(num_classes=5, **TINY, rngs=nnx.Rngs(0))
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    x = RNG.normal(size=(8, 32, 32, 3)).astype(np.float32) * np.linspace(0.5, 2, 8)[:, None, None, None]

    def fwd(params, stats, x):
        m = nnx.merge(graphdef, params, stats)
        logits = m(x, train=True)
        return logits, nnx.state(m, nnx.BatchStat)

    results = {}
    for n in (1, 8):
        mesh = jax.make_mesh((n,), ('data',), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices('cpu')[:n])
        shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
        rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        xs = jax.device_put(x, shard)
        assert len(xs.addressable_shards) == n
        out, new = jax.jit(fwd, in_shardings=(rep, rep, shard))(params, stats, xs)
        results[n] = (np.asarray(out), {k: np.asarray(v) for k, v in nnx.to_flat_state(new)})
    (o1, s1), (o8, s8) = results[1], results[8]
    assert s1.keys() == s8.keys() and len(s1) == 2 * (2 + 4 + 4 * 4 + 1)   # mean/var of every BN
    for k in s1:
        np.testing.assert_allclose(s8[k], s1[k], rtol=1e-5, atol=1e-6, err_msg=str(k))
    np.testing.assert_allclose(o8, o1, rtol=1e-4, atol=1e-5)
    # Per-device statistics would differ: the images' scales range from 0.5 to 2.
    local = np.asarray(model.conv_stem.proj1(jnp.asarray(x[:1]))).mean((0, 1, 2))
    assert np.abs(0.1 * local - s8[('conv_stem', 'norm1', 'mean')]).max() > 1e-3


# ------------------------------------------------------------------------------------------
# Masked pre-training encoder, hooks.
# ------------------------------------------------------------------------------------------

def test_masked_encoder_hides_masked_pixels():
    enc = G.GroupMixFormerForSimMIM(**TINY, rngs=nnx.Rngs(0))
    perturb_bn(enc)
    mask = np.zeros((2, 8, 8), np.int32)
    mask[:, 2:6, 2:6] = 1
    mask[1, 0, 7] = 1
    x = RNG.normal(size=(2, 32, 32, 3)).astype(np.float32)
    y = x.copy()
    pix = np.repeat(np.repeat(mask, 4, 1), 4, 2).astype(bool)
    y[pix] = RNG.normal(size=(pix.sum(), 3)) * 5                 # change only masked pixels
    fwd = nnx.jit(lambda m, x, k: m(x, k))
    a = np.asarray(fwd(enc, jnp.asarray(x), jnp.asarray(mask)))
    b = np.asarray(fwd(enc, jnp.asarray(y), jnp.asarray(mask)))
    assert a.shape == (2, 1, 1, 30)
    np.testing.assert_array_equal(a, b)                          # no leak through the stem
    z = x.copy()
    z[~pix] += RNG.normal(size=((~pix).sum(), 3))               # visible pixels do matter (at random
    assert np.abs(np.asarray(fwd(enc, jnp.asarray(z), jnp.asarray(mask))) - a).max() > 1e-6   # init, weakly)
    with pytest.raises(ValueError, match='mask must have shape'):
        enc(jnp.asarray(x), jnp.zeros((2, 4, 4)))


def test_hooks_and_validation():
    m = nnx.eval_shape(lambda: G.GroupMixFormer(num_classes=3, **{**TINY, 'depths': (2, 4, 3, 1)},
                                                rngs=nnx.Rngs(0)))                              # L = 10
    assert m.num_layer_ids == 12
    assert m.layer_id('conv_stem.proj1.kernel') == 0 and m.layer_id('patch_embed_layers.0.norm.scale') == 0
    assert m.layer_id('groupmixformer_backbone.0.gma_stage.1.att.qkv.kernel') == 2
    assert m.layer_id('patch_embed_layers.2.proj.conv1.kernel') == 6        # last block of stage 2 (2 + 4)
    assert m.layer_id('groupmixformer_backbone.2.gma_stage.0.cpe.proj.kernel') == 7
    assert m.layer_id('norm4.scale') == 11 and m.layer_id('head.kernel') == 11
    names = ['.'.join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(m, nnx.Param))]
    assert sorted({m.layer_id(n) for n in names}) == list(range(12))         # every id is used
    assert m.no_weight_decay() == ('mask_token',)
    from jaxmim.registry import model_data_defaults
    data = model_data_defaults('groupmixformer_small')
    assert data['image_size'] == 224 and data['eval_crop_ratio'] == pytest.approx(224 / 256)
    with pytest.raises(ValueError, match='multiple of 32'):
        G.GroupMixFormer(img_size=48, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match='num_heads must be 8'):
        G.GroupMixFormer(num_heads=4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match='multiple of 5'):
        G.EfficientAtt(44, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match='expected images'):
        m(jnp.zeros((1, 28, 28, 3)))


# ------------------------------------------------------------------------------------------
# Through the real loops.
# ------------------------------------------------------------------------------------------

def _tiny_run(cfg, data_dir, steps):
    cfg.data.data_dir = data_dir
    cfg.data.cache = False
    cfg.data.shuffle_buffer = 500
    cfg.progress_bar = False
    cfg.log_every = 1
    cfg.batch_size = 16
    cfg.total_steps = steps
    cfg.checkpoint_every = steps
    cfg.optim.warmup_steps = 1
    cfg.model.overrides.update(dict(embed_dims=(10, 20, 20, 30), depths=(1, 1, 1, 1), mlp_ratios=(2, 2, 2, 2)))
    return cfg


def test_tiny_supervised_run_lowers_the_loss_and_compiles_once(data_dir, tmp_path):
    from jaxmim import config as config_lib, train
    cfg = _tiny_run(config_lib.load_config_file(os.path.join(ROOT, 'configs/demo/groupmixformer_fmnist.py')),
                    data_dir, 12)
    cfg.eval_every = 12
    cfg.eval_batch_size = 400
    cfg.data.eval_split = 'test[:400]'
    cfg.optim.update(dict(base_lr=5e-3, warmup_lr=5e-3, min_lr=5e-3, lr_scale_batch=0))   # constant lr
    state, summary = train.finetune(cfg, str(tmp_path))
    losses = [h['loss'] for h in summary['history']]
    assert summary['compilations'] == 1 and len(losses) == 12
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.05, losses
    stats = jax.device_get(state['model_state'])
    assert np.abs(stats['conv_stem']['norm1']['mean']).max() > 0   # BatchNorm statistics in the state


def test_tiny_masked_pretraining_run_lowers_the_loss_and_compiles_once(data_dir, tmp_path):
    from jaxmim import config as config_lib, train
    cfg = _tiny_run(config_lib.load_config_file(os.path.join(ROOT, 'configs/demo/simmim_groupmixformer_fmnist.py')),
                    data_dir, 12)
    cfg.optim.update(dict(base_lr=5e-3, warmup_lr=5e-3, min_lr=5e-3, lr_scale_batch=0))   # constant lr
    state, summary = train.pretrain(cfg, str(tmp_path))
    losses = [h['loss'] for h in summary['history']]
    assert summary['compilations'] == 1 and len(losses) == 12
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.02, losses
    stats = jax.device_get(state['model_state'])
    assert np.abs(stats['encoder']['norm4']['mean']).max() > 0


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('size,drop_path', [('mini', 0.1), ('tiny', 0.1), ('small', 0.2), ('base', 0.5),
                                            ('large', 0.1)])
def test_supervised_configs_are_the_official_recipe(size, drop_path):
    """configs/supervised/groupmixformer.py:<size>: the yaml's drop path, lr 5e-4 x batch / 512,
    300 epochs with 20 of warm-up at batch 512, clip 5, the timm recipe (official ``config.py``,
    ``train.py:432-445``, ``optimizer.py:4-42``, ``lr_scheduler.py:7-23``)."""
    import os
    from jaxmim.config import check_config, load_config_file
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    c = load_config_file(os.path.join(root, 'configs/supervised/groupmixformer.py') + f':{size}')
    check_config(c)
    iters = 1_281_167 // 512
    assert c.model.name == f'groupmixformer_{size}' and c.model.overrides.drop_path_rate == drop_path
    assert c.batch_size == 512 and c.total_steps == 300 * iters and c.optim.warmup_steps == 20 * iters
    assert c.batch_size * c.optim.base_lr / c.optim.lr_scale_batch == pytest.approx(5e-4)
    assert c.optim.clip_grad == 5.0 and c.data.auto_augment == 'rand-m9-mstd0.5-inc1'
    assert c.mixup.mixup_alpha == 0.8 and c.mixup.cutmix_alpha == 1.0 and c.data.reprob == 0.25
    assert c.data.eval_crop_ratio == pytest.approx(224 / 256)
