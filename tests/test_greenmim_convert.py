"""convert/greenmim.py: official GreenMIM (Swin) key tables, round trip, and the PyTorch twin.

The twin attends per window with a Python loop over the visible tokens of every (shifted)
window and merges on a zero-filled canvas, independently of the JAX grouping."""

import functools

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from convert import official
from helpers import assert_close, check_round_trip, perturb

LN6 = functools.partial(torch.nn.LayerNorm, eps=1e-6)
# 32 px, patch 2, 3 stages -> 8-px units (4x4), window 4: stage 1 grouped, stages 2-3 masked
TINY = dict(encoder=dict(img_size=32, patch_size=2, embed_dim=16, depths=[2, 2, 2], num_heads=[1, 2, 4],
                         window_size=4, norm_layer=LN6),
            embed_dim=64, patch_size=8, decoder_num_patches=16, decoder_embed_dim=32, decoder_depth=1,
            decoder_num_heads=4, norm_layer=LN6, norm_pix_loss=True, mask_ratio=0.75)

_fwd = nnx.jit(lambda m, x, noise: m(x, noise=noise, train=False))


def test_official_key_table_swin_base():
    """Key names and shapes of green_mim_swin_base_patch4_dec512b1 (LayneH/GreenMIM@b981012
    ``modeling/base_green_models.py:60-92``, ``modeling/green_swin_models.py:313-318``)."""
    cfg = dict(encoder=dict(img_size=224, patch_size=4, embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32],
                            window_size=7, norm_layer=LN6),
               embed_dim=1024, patch_size=32, decoder_num_patches=49, decoder_embed_dim=512, decoder_depth=1,
               decoder_num_heads=16, norm_layer=LN6)
    model = nnx.eval_shape(lambda: official.build('greenmim_swin', **cfg))
    entries = official.get_source('greenmim_swin').entries(model)
    keys = [e.key for e in entries]
    assert keys[:4] == ['mask_token', 'decoder_pos_embed', 'encoder.patch_embed.proj.weight',
                        'encoder.patch_embed.proj.bias']
    assert 'encoder.layers.3.blocks.1.attn.relative_position_index' in keys
    assert 'encoder.layers.2.downsample.reduction.weight' in keys and not any('attn_mask' in k for k in keys)
    assert keys[-2:] == ['decoder_pred.weight', 'decoder_pred.bias']
    assert not any(k.startswith('encoder.head') for k in keys)
    idx = [e for e in entries if e.key == 'encoder.layers.3.blocks.0.attn.relative_position_index'][0]
    assert np.asarray(idx.value).shape == (49, 49)


def test_round_trip_bit_exact():
    src = official.get_source('greenmim_swin')
    twin = src.twin_fn(official.build('greenmim_swin', **TINY))
    check_round_trip('greenmim_swin', TINY, twin)


@pytest.mark.parametrize('placement,merge_order', [('raster', 'swin'), ('official', 'v1')])
def test_twin_matches_jax(placement, merge_order):
    cfg = dict(TINY, decoder_placement=placement, merge_order=merge_order)
    jm = official.build('greenmim_swin', **cfg)
    tm = perturb(official.get_source('greenmim_swin').twin_fn(jm), seed=1)
    official.load_state_dict(jm, 'greenmim_swin', tm.state_dict())
    rng = np.random.RandomState(0)
    x = rng.randn(2, 3, 32, 32).astype(np.float32)
    for trial in range(2):
        noise = rng.rand(1, 16).astype(np.float32)
        with torch.no_grad():
            ref = tm(torch.from_numpy(x), noise=torch.from_numpy(noise))
        out = _fwd(jm, jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(noise))
        np.testing.assert_array_equal(np.asarray(out['mask']), ref['mask'].numpy())
        assert_close(out['pred'], ref['pred'].numpy(), rel=1e-5)
        assert_close(out['loss'], ref['loss'].numpy(), rel=1e-5)


def test_import_official_checkpoint_as_a_pretraining_run(tmp_path):
    """An official ``{'model': state_dict}`` checkpoint (here the twin's, v1 merge order) imports
    as a jaxmim GreenMIM pre-training run whose variables equal the checkpoint's."""
    import importlib

    from helpers import variables_of
    from jaxmim import rundir
    from jaxmim.registry import create_model

    import_cli = importlib.import_module('convert.import')
    overrides = {'embed_dim': 16, 'num_heads': [1, 2, 4], 'merge_order': 'v1'}
    ref = create_model('green_mim_swin_demo_patch2_32_dec64b1', **overrides)
    twin = perturb(official.get_source('greenmim_swin').twin_fn(ref), seed=3)
    torch.save({'model': twin.state_dict(), 'epoch': 799}, tmp_path / 'green.pth')
    report = import_cli.import_checkpoint(str(tmp_path / 'green.pth'), 'greenmim_swin', str(tmp_path / 'imp'),
                                          'green_mim_swin_demo_patch2_32_dec64b1', overrides,
                                          {'norm_pix_loss': True}, verbose=False)
    assert report['mode'] == 'pretrain'
    config = rundir.load_run_config(str(tmp_path / 'imp'))
    assert config.method.name == 'greenmim' and config.model.overrides.merge_order == 'v1'
    # a released checkpoint runs its decoder as trained: the source's import default is the
    # official placement, the user's override wins
    assert config.model.overrides.decoder_placement == 'official'
    assert import_cli.run_config('greenmim_swin', 'green_mim_swin_demo_patch2_32_dec64b1',
                                 {'decoder_placement': 'raster'}).model.overrides.decoder_placement == 'raster'
    fresh = rundir.build_model(config)
    rundir.restore_model(fresh, str(tmp_path / 'imp'))
    official.load_state_dict(ref, 'greenmim_swin', twin.state_dict())
    a, b = variables_of(ref), variables_of(fresh)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k


def test_v1_checkpoint_permuted_to_swin_order_is_layer_exact():
    """A v1-order (row-first merging) checkpoint run with merge_order='v1' equals the permuted
    checkpoint run with Swin's order."""
    from convert.greenmim import v1_to_swin_merge_order
    jv1 = official.build('greenmim_swin', **dict(TINY, merge_order='v1'))
    jsw = official.build('greenmim_swin', **TINY)
    tm = perturb(official.get_source('greenmim_swin').twin_fn(jv1), seed=2)
    sd = tm.state_dict()
    official.load_state_dict(jv1, 'greenmim_swin', sd)
    permuted = v1_to_swin_merge_order(sd)
    assert not torch.equal(permuted['encoder.layers.0.downsample.norm.weight'], sd['encoder.layers.0.downsample.norm.weight'])
    assert all(torch.equal(a, b) for a, b in zip(v1_to_swin_merge_order(permuted).values(), sd.values()))
    official.load_state_dict(jsw, 'greenmim_swin', permuted)
    x = jnp.asarray(np.random.RandomState(1).randn(2, 32, 32, 3).astype(np.float32))
    noise = jnp.asarray(np.random.RandomState(2).rand(1, 16).astype(np.float32))
    assert_close(_fwd(jsw, x, noise)['pred'], np.asarray(_fwd(jv1, x, noise)['pred']), rel=1e-5)
