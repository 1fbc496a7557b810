"""Tests for convert/ummae.py: implus/UM-MAE PVT / Swin / ViT (pre-training, SimMIM baselines and
classifiers) <-> jaxmim, and the PyTorch twins.

References: the pure-PyTorch twins of ``convert.ummae`` (checked bit-for-bit against the official
``implus/UM-MAE@cb7776b`` files through a timm shim when they were written; here their internal
invariants are checked against brute-force loops: the dilated-conv compaction equals the per-block
gather, Secondary Masking counts, the decoder position orders of ``models_mae_pvt.py:358-407`` /
``models_mae_swin.py:499-548`` (official, and corrected), parameter counts of the
issue). Twin weights are perturbed (N(0, 0.05²) on every parameter) so no norm is trivially 1 and
no bias 0. Masks are Uniform-Sampling masks (one visible unit per 2x2 block) from a seeded loop.
Tiny sizes, CPU only.
"""

import functools
import inspect

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from convert import official
from convert import ummae as U
from helpers import assert_close, check_round_trip, perturb

LN6 = functools.partial(torch.nn.LayerNorm, eps=1e-6)

# Tiny official constructor calls (default norm_layer = nn.LayerNorm, eps 1e-5 everywhere).
PVT_MAE = dict(img_size=64, patch_size=4, stride=16, embed_dims=[8, 16, 24, 32], depths=[1, 2, 1, 1],
               num_heads=[1, 2, 3, 4], mlp_ratios=[2, 2, 2, 2], sr_ratios=[4, 2, 1, 1], decoder_embed_dim=16,
               decoder_depth=1, decoder_num_heads=2, norm_pix_loss=True, vis_mask_ratio=0.25)
SWIN_MAE = dict(img_size=64, patch_size=4, stride=16, embed_dim=8, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4],
                window_size=4, posmlp_dim=8, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2,
                norm_pix_loss=True, vis_mask_ratio=0.25)
VIT_MAE = dict(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, decoder_embed_dim=16, decoder_depth=1,
               decoder_num_heads=2, norm_pix_loss=True, vis_mask_ratio=0.25)
PVT_SIMMIM = dict(img_size=64, patch_size=4, stride=16, embed_dims=[8, 16, 24, 32], depths=[1, 2, 1, 1],
                  num_heads=[1, 2, 3, 4], mlp_ratios=[2, 2, 2, 2], sr_ratios=[8, 4, 2, 1])
SWIN_SIMMIM = dict(img_size=64, patch_size=4, stride=16, embed_dim=8, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4],
                   window_size=8, posmlp_dim=8)
PVT_CLS = dict(img_size=64, num_classes=5, embed_dims=[8, 16, 24, 32], depths=[1, 2, 1, 1], num_heads=[1, 2, 3, 4],
               mlp_ratios=[2, 2, 2, 2])
SWIN_CLS = dict(img_size=64, num_classes=5, embed_dim=8, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=8,
                posmlp_dim=8)
VIT_CLS = dict(global_pool=True, img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=5,
               qkv_bias=True)

TWINS = {'ummae_pvt_pretrain': U.MaskedAutoencoderPVT, 'ummae_swin_pretrain': U.MaskedAutoencoderSwin,
         'ummae_vit_pretrain': U.MaskedAutoencoderViT, 'ummae_simmim_pvt': U.SimMIMPVT,
         'ummae_simmim_swin': U.SimMIMSwin, 'ummae_pvt': U.PVT, 'ummae_swin': U.Swin,
         'ummae_vit': U.VisionTransformer}
CASES = {'ummae_pvt_pretrain': PVT_MAE, 'ummae_swin_pretrain': SWIN_MAE, 'ummae_vit_pretrain': VIT_MAE,
         'ummae_simmim_pvt': PVT_SIMMIM, 'ummae_simmim_swin': SWIN_SIMMIM, 'ummae_pvt': PVT_CLS,
         'ummae_swin': SWIN_CLS, 'ummae_vit': VIT_CLS}


def us_mask(batch, m, seed=0):
    """Uniform Sampling by a loop: one visible unit per 2x2 block, (B, m*m) bool, True = masked."""
    g = np.random.RandomState(seed)
    out = np.ones((batch, m, m), bool)
    for b in range(batch):
        for u in range(m // 2):
            for v in range(m // 2):
                k = g.randint(4)
                out[b, 2 * u + k // 2, 2 * v + k % 2] = False
    return out.reshape(batch, -1)


def images(cfg, batch=2, seed=1):
    s = cfg['img_size']
    return np.random.RandomState(seed).randn(batch, 3, s, s).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Twin invariants against brute force
# ------------------------------------------------------------------------------------------------

def test_compaction_equals_per_block_gather():
    mask = torch.from_numpy(us_mask(3, 4))
    idx = U.compact_unit_index(mask).numpy()
    for b in range(3):
        for u in range(2):
            for v in range(2):
                vis = [(2 * u + a) * 4 + 2 * v + c for a in range(2) for c in range(2) if not mask[b, (2 * u + a) * 4 + 2 * v + c]]
                assert idx[b, u * 2 + v] == vis[0] and len(vis) == 1
    # the dilated all-ones conv on masked features = the visible unit's K x K tokens, per block
    # (implus/UM-MAE@cb7776b models_mae_pvt.py:324-342)
    k = 3
    x = torch.randn(3, 5, 4 * k, 4 * k)
    up = mask.reshape(3, 4, 4).repeat_interleave(k, 1).repeat_interleave(k, 2).unsqueeze(1)
    y = U._compact(x * ~up, k)
    want = torch.zeros(3, 5, 2 * k, 2 * k)
    for b in range(3):
        for c in range(4):
            r, s = divmod(int(idx[b, c]), 4)
            u, v = divmod(c, 2)
            want[b, :, u * k:(u + 1) * k, v * k:(v + 1) * k] = x[b, :, r * k:(r + 1) * k, s * k:(s + 1) * k]
    assert torch.equal(y, want)
    with pytest.raises(ValueError, match='one visible'):
        U.compact_unit_index(torch.zeros(1, 16, dtype=torch.bool))


def test_secondary_masking_counts():
    mask = torch.from_numpy(us_mask(4, 16))
    noise = torch.rand(4, 256)
    new = U.secondary_mask(mask, noise, 0.25)
    assert bool((new >= mask).all())                                  # primary-masked stay masked
    assert ((new & ~mask).sum(1) == 16).all()                         # 64 visible -> 48 kept
    for b in range(4):                                                # the kept ones: 48 smallest noise
        vis = np.flatnonzero(~mask[b].numpy())
        keep = vis[np.argsort(noise[b].numpy()[vis])[:48]]
        assert set(np.flatnonzero(~new[b].numpy())) == set(keep)


def test_decoder_position_orders():
    """Official mode adds the pos-embeds of the visible units in raster order; corrected mode the
    block's own unit. When every block keeps its top-left unit both orders coincide, so the two
    modes give the same output; otherwise they differ."""
    tm = perturb(U.MaskedAutoencoderPVT(**PVT_MAE))
    x = torch.from_numpy(images(PVT_MAE))
    noise = torch.rand(2, 16)
    top_left = np.ones((2, 4, 4), bool)
    top_left[:, ::2, ::2] = False
    mixed = us_mask(2, 4, seed=3)
    assert not np.array_equal(U.compact_unit_index(torch.from_numpy(mixed)).numpy(),
                              np.sort(U.compact_unit_index(torch.from_numpy(mixed)).numpy(), 1))
    outs = {}
    for official_pos in (True, False):
        tm.official_decoder_pos = official_pos
        with torch.no_grad():
            outs[official_pos, 'tl'] = tm(x, mask=torch.from_numpy(top_left.reshape(2, 16)), noise=noise)
            outs[official_pos, 'mx'] = tm(x, mask=torch.from_numpy(mixed), noise=noise)
    assert torch.equal(outs[True, 'tl']['pred'], outs[False, 'tl']['pred'])
    assert not torch.allclose(outs[True, 'mx']['pred'], outs[False, 'mx']['pred'])


def test_twin_loss_is_on_primary_masked_units_only():
    """MSE over the primary-masked units against their norm-pix targets, written out."""
    tm = perturb(U.MaskedAutoencoderSwin(**SWIN_MAE))
    x = images(SWIN_MAE)
    mask = us_mask(2, 4)
    with torch.no_grad():
        out = tm(torch.from_numpy(x), mask=torch.from_numpy(mask), noise=torch.rand(2, 16))
    pred = out['pred'].numpy().astype(np.float64)
    total, n = 0.0, 0
    for b in range(2):
        for unit in np.flatnonzero(mask[b]):
            r, c = divmod(unit, 4)
            t = x[b, :, r * 16:(r + 1) * 16, c * 16:(c + 1) * 16].transpose(1, 2, 0).reshape(-1).astype(np.float64)
            t = (t - t.mean()) / np.sqrt(t.var(ddof=1) + 1e-6)
            total += ((pred[b, unit] - t) ** 2).mean()
            n += 1
    np.testing.assert_allclose(out['loss'].item(), total / n, rtol=1e-5)
    assert out['secondary_mask'].sum(1).tolist() == [1, 1]           # int(4 * 0.25) of 4 visible -> 1


def test_twin_parameter_counts_of_the_default_sizes():
    """Issue 6: PVT-S classifier 21,546,728; Swin-T-256 classifier 28,268,050; mae_pvt_small_256
    28,915,776 including the fixed tables (meta device: no memory, no init cost)."""
    with torch.device('meta'):
        pvt = U.PVT(img_size=256, norm_layer=LN6)
        swin = U.Swin(img_size=256, norm_layer=LN6)
        mae = U.MaskedAutoencoderPVT(img_size=256, norm_layer=LN6, vis_mask_ratio=0.25)
    count = lambda m: sum(v.numel() for v in m.state_dict().values())   # noqa: E731
    assert count(pvt) == 21_546_728
    assert count(swin) == 28_268_050
    assert count(mae) == 28_915_776


def test_twin_block_norms_use_the_default_eps():
    """The official constructors never pass norm_layer to the pyramid blocks (eps 1e-5 there)."""
    pvt = U.MaskedAutoencoderPVT(**dict(PVT_MAE, norm_layer=LN6))
    swin = U.MaskedAutoencoderSwin(**dict(SWIN_MAE, norm_layer=LN6))
    assert pvt.blocks[0].norm1.eps == 1e-5 and pvt.blocks[0].attn.norm.eps == 1e-5 and pvt.norm.eps == 1e-6
    assert swin.blocks[0].norm1.eps == 1e-5 and swin.blocks[2].downsample.norm.eps == 1e-6
    assert swin.patch_embed.norm.eps == 1e-6 and swin.decoder_blocks[0].norm1.eps == 1e-6


# ------------------------------------------------------------------------------------------------
# Parity with the JAX models
# ------------------------------------------------------------------------------------------------

def _nhwc(x):
    return jnp.asarray(x.transpose(0, 2, 3, 1))


@nnx.jit
def _fwd_mae(m, x, mask, noise):
    return m(x, mask=mask, noise=noise, train=False)


@nnx.jit
def _fwd_simmim(m, x, mask):
    return m(x, mask=mask, train=False)


@nnx.jit
def _fwd_cls(m, x):
    return m(x, train=False)


def _loaded(source, cfg, **extra):
    tm = perturb(TWINS[source](**cfg, **extra))
    jm = official.build(source, **cfg, **extra)
    official.load_state_dict(jm, source, tm.state_dict())
    return tm, jm


@pytest.mark.parametrize('official_pos', [True, False])
@pytest.mark.parametrize('source', ['ummae_pvt_pretrain', 'ummae_swin_pretrain'])
def test_pyramid_mae_parity(source, official_pos):
    cfg = CASES[source]
    tm, jm = _loaded(source, cfg, official_decoder_pos=official_pos)
    x, mask = images(cfg), us_mask(2, 4, seed=3)
    noise = np.random.RandomState(4).rand(2, 16).astype(np.float32)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x), mask=torch.from_numpy(mask), noise=torch.from_numpy(noise))
    out = _fwd_mae(jm, _nhwc(x), jnp.asarray(mask), jnp.asarray(noise))
    assert_close(out['loss'], ref['loss'].numpy())
    assert_close(out['pred'], ref['pred'].numpy())
    np.testing.assert_array_equal(np.asarray(out['mask']) > 0.5, mask)
    np.testing.assert_array_equal(np.asarray(out['secondary_mask']) > 0.5, ref['secondary_mask'].numpy())


def test_vit_mae_parity():
    tm, jm = _loaded('ummae_vit_pretrain', VIT_MAE)
    x, mask = images(VIT_MAE), us_mask(2, 4, seed=5)
    noise = np.random.RandomState(6).rand(2, 4).astype(np.float32)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x), mask=torch.from_numpy(mask), noise=torch.from_numpy(noise))
    out = _fwd_mae(jm, _nhwc(x), jnp.asarray(mask), jnp.asarray(noise))
    assert_close(out['loss'], ref['loss'].numpy())
    assert_close(out['pred'], ref['pred'].numpy())
    np.testing.assert_array_equal(np.asarray(out['secondary_mask']) > 0.5, ref['secondary_mask'].numpy())


@pytest.mark.parametrize('source', ['ummae_simmim_pvt', 'ummae_simmim_swin'])
def test_simmim_parity(source):
    cfg = CASES[source]
    tm, jm = _loaded(source, cfg)
    x = images(cfg)
    mask = np.zeros((2, 16), bool)
    mask[0, np.random.RandomState(7).permutation(16)[:12]] = True
    mask[1, np.random.RandomState(8).permutation(16)[:12]] = True
    with torch.no_grad():
        ref = tm(torch.from_numpy(x), mask=torch.from_numpy(mask))
    out = _fwd_simmim(jm, _nhwc(x), jnp.asarray(mask))
    assert_close(out['loss'], ref['loss'].numpy())
    assert_close(out['pred'], ref['pred'].numpy())


@pytest.mark.parametrize('source', ['ummae_pvt', 'ummae_swin', 'ummae_vit'])
def test_classifier_parity(source):
    cfg = CASES[source]
    tm, jm = _loaded(source, cfg)
    x = images(cfg)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    assert_close(_fwd_cls(jm, _nhwc(x)), ref)


def test_factory_norm_layer_parity_needs_block_eps_1e5():
    """With the factories' norm_layer (eps 1e-6) the official blocks still use 1e-5
    (``models_simmim_swin.py:60-77`` never passes ``norm_layer`` to ``SwinBlock``): the jaxmim model
    built by the converter (``block_norm_eps=1e-5``, ``norm_eps=1e-6``) matches the twin."""
    from jaxmim.methods.ummae.swin import SimMIMSwin
    assert inspect.signature(SimMIMSwin.__init__).parameters['block_norm_eps'].default == 1e-5
    cfg = dict(SWIN_SIMMIM, norm_layer=LN6)
    tm, jm = _loaded('ummae_simmim_swin', cfg)
    x = images(cfg)
    mask = np.zeros((2, 16), bool)
    mask[:, ::3] = True
    with torch.no_grad():
        ref = tm(torch.from_numpy(x), mask=torch.from_numpy(mask))
    assert_close(_fwd_simmim(jm, _nhwc(x), jnp.asarray(mask))['pred'], ref['pred'].numpy())


# ------------------------------------------------------------------------------------------------
# Key tables: order, round trip, strictness
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('source', list(CASES))
def test_export_order_and_round_trip(source):
    cfg = CASES[source]
    twin = TWINS[source](**cfg)
    jm = official.build(source, **cfg)
    assert list(official.state_dict(jm, source)) == list(twin.state_dict())
    check_round_trip(source, cfg, twin)


def test_strict_load_names_missing_and_unexpected_keys():
    tm = U.MaskedAutoencoderPVT(**PVT_MAE)
    jm = official.build('ummae_pvt_pretrain', **PVT_MAE)
    sd = dict(tm.state_dict())
    del sd['vis_mask_token']
    sd['blocks.0.attn.extra'] = torch.zeros(3)
    with pytest.raises(ValueError) as err:
        official.load_state_dict(jm, 'ummae_pvt_pretrain', sd)
    assert 'missing keys (1)' in str(err.value) and 'vis_mask_token' in str(err.value)
    assert 'unexpected keys (1)' in str(err.value) and 'blocks.0.attn.extra' in str(err.value)
    # a checkpoint without Secondary Masking does not load into a model with it, and vice versa
    no_sm = U.MaskedAutoencoderPVT(**dict(PVT_MAE, vis_mask_ratio=0.0)).state_dict()
    with pytest.raises(ValueError, match='vis_mask_token'):
        official.load_state_dict(jm, 'ummae_pvt_pretrain', no_sm)
    # the wrong family is a TypeError
    with pytest.raises(TypeError):
        official.state_dict(jm, 'ummae_swin_pretrain')
