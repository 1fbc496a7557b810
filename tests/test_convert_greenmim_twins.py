"""convert/greenmim.py source ``greenmim_twins`` (official key table, round trip, PyTorch twin) and
the ``extract_backbone`` command (convert/extract_backbone.py).

The twin computes sparse convs as dense convs of the zero-filled canvas read at the active output
sites (spconv's regular-conv rule), LSA with a Python loop over windows, GSA through the sparse
reduction, and the PEG on the canvas: independently of the JAX plan / block indices."""

import functools
import importlib

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from convert import official
from helpers import assert_close, check_round_trip, perturb

LN6 = functools.partial(torch.nn.LayerNorm, eps=1e-6)
# 32 px, patch 2, 3 stages -> 8-px units (4x4, 4 visible), window 4: stage 1 grouped, stages 2-3 masked
TINY = dict(encoder=dict(img_size=32, patch_size=2, embed_dims=[16, 32, 64], num_heads=[1, 2, 4], mlp_ratios=[4, 4, 4],
                         depths=[2, 2, 2], wss=[4, 4, 4], sr_ratios=[4, 2, 1], qkv_bias=True, norm_layer=LN6),
            embed_dim=64, patch_size=8, decoder_num_patches=16, decoder_embed_dim=32, decoder_depth=1,
            decoder_num_heads=4, norm_layer=LN6, norm_pix_loss=True, mask_ratio=0.75)
TWINS_L = dict(encoder=dict(img_size=224, patch_size=4, in_chans=3, embed_dims=[128, 256, 512, 1024],
                            num_heads=[4, 8, 16, 32], mlp_ratios=[4, 4, 4, 4], depths=[2, 2, 18, 2], wss=[7, 7, 7, 7],
                            sr_ratios=[8, 4, 2, 1], qkv_bias=True, qk_scale=None, drop_rate=0.0, drop_path_rate=0.0,
                            norm_layer=LN6),
               embed_dim=1024, patch_size=32, in_chans=3, mlp_ratio=4, qkv_bias=True, norm_layer=LN6,
               decoder_num_patches=49, decoder_embed_dim=512, decoder_depth=1, decoder_num_heads=16)

_fwd = nnx.jit(lambda m, x, noise: m(x, noise=noise, train=False))


def test_official_key_table_twins_large():
    """green_mim_twins_large_patch4_dec512b1 (``model_factory.py:142-175``) key names and shapes
    (``green_twins_models.py:386-389``; spconv 2.x weights (C_out, kh, kw, C_in))."""
    model = nnx.eval_shape(lambda: official.build('greenmim_twins', **TWINS_L))
    sd = {e.key: e for e in official.get_source('greenmim_twins').entries(model)}
    keys = list(sd)
    shapes = {r[0]: tuple(r[2]) for r in official.describe(model, 'greenmim_twins')}   # official shapes
    assert keys[:4] == ['mask_token', 'decoder_pos_embed', 'encoder.patch_embeds.0.proj.weight',
                        'encoder.patch_embeds.0.proj.bias']
    assert shapes['encoder.patch_embeds.0.proj.weight'] == (128, 3, 4, 4)
    assert shapes['encoder.patch_embeds.1.proj.weight'] == (256, 2, 2, 128)
    assert shapes['encoder.patch_embeds.3.proj.weight'] == (1024, 2, 2, 512)
    assert shapes['encoder.pos_block.2.proj.0.weight'] == (512, 1, 3, 3)
    assert shapes['encoder.blocks.0.0.attn.qkv.weight'] == (384, 128)
    assert shapes['encoder.blocks.0.1.attn.sr.weight'] == (128, 8, 8, 128)
    assert shapes['encoder.blocks.2.17.attn.sr.weight'] == (512, 2, 2, 512)
    assert shapes['encoder.blocks.2.17.attn.kv.weight'] == (1024, 512)
    assert 'encoder.blocks.3.1.attn.q.weight' in sd and not any(k.startswith('encoder.blocks.3.1.attn.sr') for k in sd)
    assert not any('pos_embeds' in k or k.startswith('encoder.head') or 'relative_position' in k for k in keys)
    assert keys.index('encoder.norm.weight') < keys.index('encoder.pos_block.0.proj.0.weight') < keys.index(
        'encoder.blocks.0.0.norm1.weight')
    assert keys[-2:] == ['decoder_pred.weight', 'decoder_pred.bias']


def test_twin_state_dict_order_is_the_official_order():
    jm = official.build('greenmim_twins', **TINY)
    twin = official.get_source('greenmim_twins').twin_fn(jm)
    assert list(twin.state_dict()) == list(official.state_dict(jm, 'greenmim_twins'))


def test_round_trip_bit_exact():
    src = official.get_source('greenmim_twins')
    check_round_trip('greenmim_twins', TINY, src.twin_fn(official.build('greenmim_twins', **TINY)))


@pytest.mark.parametrize('placement,peg_residual', [('raster', False), ('official', True)])
def test_twin_matches_jax(placement, peg_residual):
    cfg = dict(TINY, decoder_placement=placement, peg_residual=peg_residual)
    jm = official.build('greenmim_twins', **cfg)
    tm = perturb(official.get_source('greenmim_twins').twin_fn(jm), seed=1)
    official.load_state_dict(jm, 'greenmim_twins', tm.state_dict())
    rng = np.random.RandomState(0)
    x = rng.randn(2, 3, 32, 32).astype(np.float32)
    for _ in range(2):
        noise = rng.rand(1, 16).astype(np.float32)
        with torch.no_grad():
            ref = tm(torch.from_numpy(x), noise=torch.from_numpy(noise))
        out = _fwd(jm, jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(noise))
        np.testing.assert_array_equal(np.asarray(out['mask']), ref['mask'].numpy())
        assert_close(out['pred'], ref['pred'].numpy(), rel=1e-5)
        assert_close(out['loss'], ref['loss'].numpy(), rel=1e-5)


def test_swin_source_refuses_a_twins_model():
    jm = nnx.eval_shape(lambda: official.build('greenmim_twins', **TINY))
    with pytest.raises(TypeError, match='Swin encoder'):
        official.get_source('greenmim_swin').entries(jm)
    assert official.sources_for(jm) == ['greenmim_twins']


# ------------------------------------------------------------------------------------------------
# extract_backbone
# ------------------------------------------------------------------------------------------------

SWIN_DEMO = 'green_mim_swin_demo_patch2_32_dec64b1'
SWIN_OVR = {'embed_dim': 16, 'num_heads': [1, 2, 4]}


def _official_swin_checkpoint(tmp_path):
    from jaxmim.registry import create_model
    twin = perturb(official.get_source('greenmim_swin').twin_fn(create_model(SWIN_DEMO, **SWIN_OVR)), seed=3)
    sd = twin.state_dict()
    torch.save({'model': sd, 'epoch': 799}, tmp_path / 'green.pth')
    return sd


def test_extract_backbone_file_follows_the_official_script(tmp_path):
    """Official checkpoint -> flat backbone .pth: ``encoder.`` keys only, prefix stripped,
    ``relative_position_index`` gone, values unchanged, no ``'model'`` wrapper
    (``util/extract_backbone.py:8-53``)."""
    from convert.extract_backbone import extract_backbone
    sd = _official_swin_checkpoint(tmp_path)
    extract_backbone(str(tmp_path / 'green.pth'), str(tmp_path / 'bb.pth'), verbose=False)
    out = torch.load(tmp_path / 'bb.pth', weights_only=True)
    expected = [k[len('encoder.'):] for k in sd if k.startswith('encoder.') and 'relative_position_index' not in k]
    assert list(out) == expected
    assert 'patch_embed.proj.weight' in out and 'layers.0.blocks.1.attn.relative_position_bias_table' in out
    assert not any(k.startswith(('decoder', 'mask_token')) for k in out)
    for k in expected:
        assert torch.equal(out[k], sd['encoder.' + k]), k


def test_extract_backbone_run_is_loaded_by_the_swin_classifier(tmp_path):
    """Official GreenMIM-Swin checkpoint -> backbone-only jaxmim run: the registered classifier
    loads every variable but its head from it, equal to the checkpoint's encoder tensors."""
    from convert.extract_backbone import extract_backbone
    from jaxmim import rundir
    from jaxmim.registry import classifier_for, create_model
    sd = _official_swin_checkpoint(tmp_path)
    res = extract_backbone(str(tmp_path / 'green.pth'), str(tmp_path / 'bb'), model=SWIN_DEMO,
                           model_overrides=SWIN_OVR, verbose=False)
    assert res['kind'] == 'run'
    clf = create_model(classifier_for(SWIN_DEMO), embed_dim=16, num_heads=(1, 2, 4))
    report = rundir.load_pretrained(clf, str(tmp_path / 'bb'))
    assert sorted(report['fresh']) == ['head.bias', 'head.kernel'] and not report['resized']
    assert not report['unused']
    w = np.asarray(clf.layers[1].blocks[0].attn.qkv.kernel[...])
    np.testing.assert_array_equal(w, sd['encoder.layers.1.blocks.0.attn.qkv.weight'].numpy().T)


def test_extract_backbone_from_a_twins_run_writes_the_official_encoder(tmp_path):
    """A jaxmim GreenMIM-Twins run (imported from the twin's checkpoint) -> flat official
    backbone: the twin's encoder state without the prefix, bit-exact; the source is inferred."""
    from convert.extract_backbone import extract_backbone
    from jaxmim.registry import create_model
    name, ovr = 'green_mim_twins_demo_patch2_32_dec64b1', {'embed_dims': [16, 32, 64], 'num_heads': [1, 2, 4]}
    twin = perturb(official.get_source('greenmim_twins').twin_fn(create_model(name, **ovr)), seed=4)
    sd = twin.state_dict()
    torch.save({'model': sd}, tmp_path / 'twins.pth')
    importlib.import_module('convert.import').import_checkpoint(str(tmp_path / 'twins.pth'), 'greenmim_twins',
                                                                str(tmp_path / 'run'), name, ovr, verbose=False)
    extract_backbone(str(tmp_path / 'run'), str(tmp_path / 'bb.safetensors'), verbose=False)
    from safetensors.numpy import load_file
    out = load_file(str(tmp_path / 'bb.safetensors'))
    enc = {k[len('encoder.'):]: v for k, v in sd.items() if k.startswith('encoder.')}
    assert sorted(out) == sorted(enc)
    for k, v in enc.items():
        assert out[k].tobytes() == v.numpy().tobytes(), k
