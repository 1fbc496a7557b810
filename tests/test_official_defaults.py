"""Official behaviour by default in every conversion source (issue 24, section 3).

For every source of :mod:`convert.official`: build the jaxmim model with the official
constructor's keyword arguments only (no jaxmim-only argument, every other argument at the
official default), load the state_dict of the pure-PyTorch twin built from the *same* arguments
(perturbed weights: every parameter + N(0, 0.05^2)), and compare the model's call with the twin
called as the official forward is (same images, NHWC vs NCHW; same masks and noise; same output
structure) to 1e-5 relative. Twins are the official classes' independent re-implementations in
``convert/`` (the GreenMIM twin is asked for the official decoder placement explicitly, so the
reference does not depend on any default). Two extra checks make the comparison discriminating:
the corrections of the official bugs (GreenMIM ``decoder_placement='raster'``, UM-MAE
``official_decoder_pos=False``) are explicit flags and change the outputs; mmpretrain's HiViT
configurations whose official forward breaks are refused.

Tiny configurations, CPU only. ``pytest -s`` prints the measured max relative difference of
each source.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from convert import greenmim as G
from convert import groupmixformer as GM
from convert import hivit as HV
from convert import official
from convert import swin as SW
from convert import ummae as U
from convert import vit as V
from helpers import perturb

REL = 1e-5
LN6 = functools.partial(torch.nn.LayerNorm, eps=1e-6)

# ------------------------------------------------------------------------------------------------
# Official constructor calls (tiny)
# ------------------------------------------------------------------------------------------------

GREEN_SWIN = dict(encoder=dict(img_size=32, patch_size=2, embed_dim=16, depths=[2, 2, 2], num_heads=[1, 2, 4],
                               window_size=4, norm_layer=LN6),
                  embed_dim=64, patch_size=8, decoder_num_patches=16, decoder_embed_dim=32, decoder_depth=1,
                  decoder_num_heads=4, norm_layer=LN6, norm_pix_loss=True)
GREEN_TWINS = dict(encoder=dict(img_size=32, patch_size=2, embed_dims=[16, 32, 64], num_heads=[1, 2, 4],
                                mlp_ratios=[4, 4, 4], depths=[2, 2, 2], wss=[4, 4, 4], sr_ratios=[4, 2, 1],
                                qkv_bias=True, norm_layer=LN6),
                   embed_dim=64, patch_size=8, decoder_num_patches=16, decoder_embed_dim=32, decoder_depth=1,
                   decoder_num_heads=4, norm_layer=LN6, norm_pix_loss=True)
GMF = dict(embedding_dims=[20, 40, 60, 60], serial_depths=[1, 1, 1, 1], mlp_ratios=[2, 3, 2, 4], num_classes=7)
GMF_DENSE = dict(embedding_dims=[20, 40, 60, 60], serial_depths=[1, 1, 1, 1], mlp_ratios=[2, 3, 2, 4],
                 return_interm_layers=True)
HIVIT = dict(img_size=32, patch_size=8, embed_dim=32, depths=[1, 1, 2], num_heads=2, num_classes=5)
HIVIT_MAE = dict(img_size=32, patch_size=8, embed_dim=32, depths=[1, 1, 2], num_heads=2, decoder_embed_dim=16,
                 decoder_depth=1, decoder_num_heads=2)
# mmpretrain's forward needs depths[-1] - 1 >= the number of early blocks (here 6)
MMP = dict(arch=dict(embed_dims=32, depths=[1, 1, 7], num_heads=2), img_size=32, patch_size=8)
MAE = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16, decoder_depth=1,
           decoder_num_heads=2)
MAE_CLS = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5)
SWIN = dict(img_size=32, patch_size=2, embed_dim=16, depths=[2, 2, 2], num_heads=[1, 2, 4], window_size=4,
            num_classes=10)
SIMMIM = dict(encoder=dict(img_size=32, patch_size=2, embed_dim=16, depths=[2, 2, 2], num_heads=[1, 2, 4],
                           window_size=4, num_classes=0), encoder_stride=8)
UM_PVT = dict(img_size=64, patch_size=4, stride=16, embed_dims=[8, 16, 24, 32], depths=[1, 2, 1, 1],
              num_heads=[1, 2, 3, 4], mlp_ratios=[2, 2, 2, 2], sr_ratios=[4, 2, 1, 1], decoder_embed_dim=16,
              decoder_depth=1, decoder_num_heads=2, norm_pix_loss=True, vis_mask_ratio=0.25)
UM_SWIN = dict(img_size=64, patch_size=4, stride=16, embed_dim=8, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4],
               window_size=4, posmlp_dim=8, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2,
               norm_pix_loss=True, vis_mask_ratio=0.25)
UM_VIT = dict(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, decoder_embed_dim=16, decoder_depth=1,
              decoder_num_heads=2, norm_pix_loss=True, vis_mask_ratio=0.25)
UM_SIMMIM_PVT = dict(img_size=64, patch_size=4, stride=16, embed_dims=[8, 16, 24, 32], depths=[1, 2, 1, 1],
                     num_heads=[1, 2, 3, 4], mlp_ratios=[2, 2, 2, 2])
UM_SIMMIM_SWIN = dict(img_size=64, patch_size=4, stride=16, embed_dim=8, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4],
                      window_size=8, posmlp_dim=8)
UM_PVT_CLS = dict(img_size=64, num_classes=5, embed_dims=[8, 16, 24, 32], depths=[1, 2, 1, 1],
                  num_heads=[1, 2, 3, 4], mlp_ratios=[2, 2, 2, 2])
UM_SWIN_CLS = dict(img_size=64, num_classes=5, embed_dim=8, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4],
                   window_size=8, posmlp_dim=8)


def _green_swin_twin(cfg, **jaxmim_choice):
    kw = dict(cfg)
    return G.GreenMIMSwinTwin(G.GreenSwinTwin(**kw.pop('encoder')), **kw, **jaxmim_choice)


def _green_twins_twin(cfg, **jaxmim_choice):
    kw = dict(cfg)
    return G.GreenMIMSwinTwin(G.GreenTwinsTwin(**kw.pop('encoder')), **kw, **jaxmim_choice)


# source -> (official kwargs, twin from the same kwargs, call kind, image (H, W))
CASES = {
    'greenmim_swin': (GREEN_SWIN, lambda c: _green_swin_twin(c, decoder_placement='official'), 'noise', (32, 32)),
    'greenmim_twins': (GREEN_TWINS, lambda c: _green_twins_twin(c, decoder_placement='official'), 'noise',
                       (32, 32)),
    'groupmixformer': (GMF, lambda c: GM.GroupMixFormer(**c), 'cls', (64, 96)),
    'groupmixformer[return_interm_layers]': (GMF_DENSE, lambda c: GM.GroupMixFormer(**c), 'maps', (64, 96)),
    'hivit': (HIVIT, lambda c: HV.HiViT(**c, copy='sup'), 'cls', (32, 32)),
    'hivit_ssl': (HIVIT, lambda c: HV.HiViT(**c, copy='ssl'), 'cls', (32, 32)),
    'hivit_mae': (HIVIT_MAE, lambda c: HV.HiViTMaskedAutoencoder(**c), 'noise', (32, 32)),
    'mmpretrain_hivit': (MMP, lambda c: HV.MMPHiViT(**c), 'maps', (32, 32)),
    'mae_vit': (MAE, lambda c: V.MaskedAutoencoderViT(**c), 'noise', (32, 32)),
    'mae_vit_cls': (MAE_CLS, lambda c: V.VisionTransformer(**c), 'cls', (32, 32)),
    'simmim_swin': (SWIN, lambda c: SW.SwinTransformer(**c), 'cls', (32, 32)),
    'simmim_swin_pretrain': (SIMMIM, lambda c: SW.build_torch_simmim_swin(c['encoder'], c['encoder_stride']),
                             'simmim', (32, 32)),
    'ummae_pvt_pretrain': (UM_PVT, lambda c: U.MaskedAutoencoderPVT(**c), 'mask_noise', (64, 64)),
    'ummae_swin_pretrain': (UM_SWIN, lambda c: U.MaskedAutoencoderSwin(**c), 'mask_noise', (64, 64)),
    'ummae_vit_pretrain': (UM_VIT, lambda c: U.MaskedAutoencoderViT(**c), 'mask_noise', (32, 32)),
    'ummae_simmim_pvt': (UM_SIMMIM_PVT, lambda c: U.SimMIMPVT(**c), 'mask', (64, 64)),
    'ummae_simmim_swin': (UM_SIMMIM_SWIN, lambda c: U.SimMIMSwin(**c), 'mask', (64, 64)),
    'ummae_pvt': (UM_PVT_CLS, lambda c: U.PVT(**c), 'cls', (64, 64)),
    'ummae_swin': (UM_SWIN_CLS, lambda c: U.Swin(**c), 'cls', (64, 64)),
    'ummae_vit': (MAE_CLS, lambda c: U.VisionTransformer(**c), 'cls', (32, 32)),
}

_cls = nnx.jit(lambda m, x: m(x, train=False))
_noise = nnx.jit(lambda m, x, noise: m(x, noise=noise, train=False))
_mask = nnx.jit(lambda m, x, mask: m(x, mask=mask, train=False))
_mask_noise = nnx.jit(lambda m, x, mask, noise: m(x, mask=mask, noise=noise, train=False))


def _source(case):
    return case.split('[')[0]


def rel_diff(out, ref) -> float:
    """max |out - ref| / max |ref| (float64)."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    scale = np.abs(ref).max()
    assert scale > 0
    return float(np.abs(out - ref).max() / scale)


def unit_mask(batch, m, seed):
    """UM-MAE Uniform Sampling by a loop: one visible unit per 2x2 block; (B, m*m) bool, True = masked."""
    g = np.random.RandomState(seed)
    out = np.ones((batch, m, m), bool)
    for b in range(batch):
        for u in range(m // 2):
            for v in range(m // 2):
                k = g.randint(4)
                out[b, 2 * u + k // 2, 2 * v + k % 2] = False
    return out.reshape(batch, -1)


def run_pair(case, jm, tm, seed=0):
    """The jaxmim call and the twin's official forward on the same inputs -> list of
    ``(name, jaxmim output, twin output)`` in the twin's layout."""
    cfg, _, kind, (h, w) = CASES[case]
    rng = np.random.RandomState(seed)
    x = rng.randn(2, 3, h, w).astype(np.float32)
    xt, xj = torch.from_numpy(x), jnp.asarray(x.transpose(0, 2, 3, 1))
    with torch.no_grad():
        if kind == 'cls':
            return [('logits', _cls(jm, xj), tm(xt))]
        if kind == 'maps':
            out, ref = _cls(jm, xj), tm(xt)
            assert type(out) is type(ref) and len(out) == len(ref)
            return [(f'map{i}', o.transpose(0, 3, 1, 2), r) for i, (o, r) in enumerate(zip(out, ref))]
        if kind == 'noise':
            units = (cfg.get('decoder_num_patches') or (h // cfg['patch_size']) ** 2)
            noise = rng.rand(1 if 'encoder' in cfg else 2, units).astype(np.float32)
            out, ref = _noise(jm, xj, jnp.asarray(noise)), tm(xt, noise=torch.from_numpy(noise))
            return [(k, out[k], ref[k]) for k in ('loss', 'pred', 'mask')]
        if kind == 'simmim':
            grid = h // cfg['encoder']['patch_size']
            mask = (rng.rand(2, grid, grid) < 0.6).astype(np.int64)
            out = _mask(jm, xj, jnp.asarray(mask, jnp.int32))
            loss = tm(xt, torch.from_numpy(mask))                  # the official forward: the loss
            full = tm.forward_with_outputs(xt, torch.from_numpy(mask))
            return [('loss', out['loss'], loss), ('x_rec', out['x_rec'].transpose(0, 3, 1, 2), full['x_rec'])]
        m = h // cfg.get('stride', cfg['patch_size'])
        mask = unit_mask(2, m, seed + 1)
        if kind == 'mask':
            out, ref = _mask(jm, xj, jnp.asarray(mask)), tm(xt, mask=torch.from_numpy(mask))
            return [(k, out[k], ref[k]) for k in ('loss', 'pred')]
        n_noise = int((~mask[0]).sum()) if 'depth' in cfg else m * m      # ViT: per visible patch
        noise = rng.rand(2, n_noise).astype(np.float32)
        out = _mask_noise(jm, xj, jnp.asarray(mask), jnp.asarray(noise))
        ref = tm(xt, mask=torch.from_numpy(mask), noise=torch.from_numpy(noise))
        return [(k, out[k], ref[k]) for k in ('loss', 'pred', 'secondary_mask')]


def _loaded(case, **jaxmim_choice):
    """(jaxmim model, perturbed twin) of ``case``: the model is built abstractly (``nnx.eval_shape``
    of the source's build: the same construction without the eager initialisation, which is the
    slow part on a CPU) and every variable is then set from the twin's state_dict (the source's
    key table covers every variable; checked: no abstract leaf is left)."""
    cfg, make_twin, _, _ = CASES[case]
    tm = perturb(make_twin(cfg))
    jm = nnx.eval_shape(lambda: official.build(_source(case), **cfg, **jaxmim_choice))
    official.load_state_dict(jm, _source(case), tm.state_dict())
    leaves = jax.tree_util.tree_leaves(nnx.state(jm))
    assert leaves and all(isinstance(v, jax.Array) for v in leaves)
    return jm, tm


SEED_FAMILIES = ('convert.greenmim', 'convert.groupmixformer', 'convert.hivit', 'convert.swin', 'convert.ummae',
                 'convert.vit')
"""The modules of the seed systems' own layouts (the timm / transformers layouts are checked against
those libraries in their own tests)."""


def test_every_source_has_a_case():
    seeds = [n for n in official.list_sources() if official.get_source(n).build_fn.__module__ in SEED_FAMILIES]
    assert len(seeds) >= 19
    assert sorted({_source(c) for c in CASES}) == seeds


@pytest.mark.parametrize('case', list(CASES))
def test_default_build_reproduces_the_official_forward(case):
    jm, tm = _loaded(case)
    worst = 0.0
    for name, out, ref in run_pair(case, jm, tm):
        ref = ref.numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
        if name in ('mask', 'secondary_mask'):
            np.testing.assert_array_equal(np.asarray(out) > 0.5, ref > 0.5)
            continue
        d = rel_diff(out, ref)
        assert d <= REL, (case, name, d)
        worst = max(worst, d)
    print(f'{case}: max relative difference {worst:.2e}')


@pytest.mark.parametrize('case,flag', [('greenmim_swin', dict(decoder_placement='raster')),
                                       ('greenmim_twins', dict(decoder_placement='raster')),
                                       ('ummae_pvt_pretrain', dict(official_decoder_pos=False))])
def test_corrections_are_explicit_flags_that_change_the_output(case, flag):
    """The corrected decoder placement is a jaxmim flag, not the default: built with it, the
    model no longer matches the official forward (so the default test above discriminates)."""
    jm, tm = _loaded(case, **flag)
    pred = {name: (out, ref) for name, out, ref in run_pair(case, jm, tm)}['pred']
    assert rel_diff(pred[0], pred[1].numpy()) > 1e-3


def test_green_mim_training_models_keep_the_corrected_placement():
    """Only the converter sources default to the official order; the jaxmim training models
    (registry, configs) keep the correction."""
    from jaxmim.registry import create_model
    built = nnx.eval_shape(lambda: official.build('greenmim_swin', **GREEN_SWIN))
    assert built.decoder_placement == 'official'
    assert nnx.eval_shape(lambda: official.build('greenmim_twins', **GREEN_TWINS)).decoder_placement == 'official'
    demo = nnx.eval_shape(lambda: create_model('green_mim_swin_demo_patch2_32_dec64b1'))
    assert demo.decoder_placement == 'raster'


def test_mmpretrain_out_indices_follow_mmpretrain():
    """The last entry is overwritten with depths[-1] - 1; entries that meet no block are no-ops;
    entries that meet a block before the last are refused, and where the overwritten last index
    meets an early block (depths[-1] - 1 < early blocks) the call is refused as the twin of
    mmpretrain's forward fails."""
    jm, tm = _loaded('mmpretrain_hivit')
    other = nnx.eval_shape(lambda: official.build('mmpretrain_hivit', **MMP, out_indices=[100, 0]))
    assert other.out_indices == (100, 6)
    nnx.update(other, nnx.state(jm))
    x = np.random.RandomState(3).randn(2, 3, 32, 32).astype(np.float32)
    (a,), (b,) = _cls(jm, jnp.asarray(x.transpose(0, 2, 3, 1))), _cls(other, jnp.asarray(x.transpose(0, 2, 3, 1)))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match='out_indices'):
        official.build('mmpretrain_hivit', **MMP, out_indices=[2, 23])       # an early block (and main block 2)
    short = dict(MMP, arch=dict(embed_dims=32, depths=[1, 1, 2], num_heads=2))
    with pytest.raises(Exception):
        perturb(HV.MMPHiViT(**short))(torch.from_numpy(x))
    with pytest.raises(ValueError, match='ill-defined'):
        nnx.eval_shape(lambda: official.build('mmpretrain_hivit', **short))(jnp.zeros((1, 32, 32, 3)))


def test_groupmixformer_needs_no_img_size_and_checks_the_stride():
    jm = nnx.eval_shape(lambda: official.build('groupmixformer', **GMF))
    assert jm.img_size == 224 and jm.stride == 32
    with pytest.raises(ValueError, match='multiples of 32'):
        jm(jnp.zeros((1, 48, 64, 3)))
    with pytest.raises(ValueError, match='embedding_dims'):
        official.build('groupmixformer', num_stages=3, embedding_dims=[20, 40, 60], serial_depths=[1, 1, 1],
                       mlp_ratios=[2, 2, 2])                              # norm4 is BatchNorm(dims[3])
    dense = nnx.eval_shape(lambda: official.build('groupmixformer', **GMF_DENSE))
    keys = [e.key for e in official.get_source('groupmixformer').entries(dense)]
    assert not any(k.startswith(('norm4', 'head')) for k in keys)
    assert keys == list(GM.GroupMixFormer(**GMF_DENSE).state_dict())
