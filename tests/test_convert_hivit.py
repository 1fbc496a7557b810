"""Tests for convert/hivit.py: official HiViT layouts <-> jaxmim, against the pure-PyTorch twins.

Sources: ``hivit`` (supervised copy), ``hivit_ssl`` (self-supervised fine-tuning copy),
``hivit_mae`` (``HiViTMaskedAutoencoder``) and ``mmpretrain_hivit`` (mmpretrain backbone). Twin
weights are perturbed (N(0, 0.05^2) on every parameter) so no norm is 1, no bias or RPE table 0;
twin key lists are checked against tables of the official state_dicts
(``zhangxiaosong18/hivit@2718339`` ``supervised/models/hivit.py``,
``self_supervised/models/models_hivit.py``, ``models_hivit_mae.py``; mmpretrain@ee7f2e8
``backbones/hivit.py``) written out here.
CPU only, tiny configurations; the official base sizes through shapes only (``nnx.eval_shape``
and meta-device twins).
"""

import functools

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from convert import hivit as HV
from convert import official
from helpers import assert_close, check_round_trip, perturb, variables_of
from jaxmim.registry import create_model

LN6 = functools.partial(torch.nn.LayerNorm, eps=1e-6)
SMALL = dict(img_size=32, patch_size=8, embed_dim=32, depths=[1, 1, 2], num_heads=2)

CASES = {
    'sup': ('hivit', dict(SMALL, num_classes=5, norm_layer=LN6)),
    # default LayerNorm (1e-5), no APE / RPE, no head, no qkv bias, odd ratios, one channel
    'sup_odd': ('hivit', dict(SMALL, in_chans=1, num_classes=0, ape=False, rpe=False, qkv_bias=False,
                              stem_mlp_ratio=2.5, mlp_ratio=1.5, num_heads=4)),
    'ssl': ('hivit_ssl', dict(SMALL, num_classes=5, norm_layer=LN6)),
    'mae': ('hivit_mae', dict(SMALL, decoder_embed_dim=16, decoder_depth=2, decoder_num_heads=2, hifeat=True,
                              rpe=False, norm_layer=LN6)),
    # RPE gathered per sample under masking, no hifeat (unused norm), default LayerNorm
    'mae_rpe': ('hivit_mae', dict(SMALL, decoder_embed_dim=12, decoder_depth=1, decoder_num_heads=3, hifeat=False,
                                  rpe=True)),
    'mmp': ('mmpretrain_hivit', dict(arch=dict(embed_dims=32, depths=[1, 1, 2], num_heads=2), img_size=32,
                                     patch_size=8, rpe=True)),
}


def torch_twin(source, cfg):
    if source == 'hivit':
        return HV.HiViT(**{k: v for k, v in cfg.items()}, copy='sup')
    if source == 'hivit_ssl':
        return HV.HiViT(**cfg, copy='ssl')
    if source == 'hivit_mae':
        return HV.HiViTMaskedAutoencoder(**cfg)
    return HV.MMPHiViT(**cfg)


class _Cases(dict):
    """Lazily built ``name -> (source, cfg, perturbed twin, jax model loaded from it)``."""

    def __missing__(self, name):
        source, cfg = CASES[name]
        tm = perturb(torch_twin(source, cfg))
        jm = official.load_state_dict(official.build(source, **cfg), source, tm.state_dict())
        self[name] = (source, cfg, tm, jm)
        return self[name]


_cases = _Cases()

_cls = nnx.jit(lambda m, x: m(x))
_feat = nnx.jit(lambda m, x: m.forward_features(x))
_mae = nnx.jit(lambda m, x, noise: m(x, noise=noise))


def _images(c=3, seed=1, b=2):
    return np.random.RandomState(seed).randn(b, c, 32, 32).astype(np.float32)


def _nhwc(x):
    return jnp.asarray(x.transpose(0, 2, 3, 1))


# ------------------------------------------------------------------------------------------------
# Layouts against the official state_dict tables
# ------------------------------------------------------------------------------------------------

def _ln(key, d):
    return [(key + '.weight', (d,)), (key + '.bias', (d,))]


def _lin(key, dout, din, bias=True):
    return [(key + '.weight', (dout, din))] + ([(key + '.bias', (dout,))] if bias else [])


def _mlp_block(key, d, hidden):
    return _ln(key + 'norm2', d) + _lin(key + 'mlp.fc1', hidden, d) + _lin(key + 'mlp.fc2', d, hidden)


def _attn_block(key, d, heads, grid, table, index):
    out = _ln(key + 'norm1', d)
    if table:
        out.append((key + 'attn.relative_position_bias_table', ((2 * grid - 1) ** 2, heads)))
    if index:
        out.append((key + 'attn.relative_position_index', (grid * grid, grid * grid)))
    return out + _lin(key + 'attn.qkv', 3 * d, d) + _lin(key + 'attn.proj', d, d) + _mlp_block(key, d, 4 * d)


def expected_encoder(c, heads, grid, rpe, per_attention_index):
    """Depths [1, 1, 2] with 8-px units (4x4 inner tokens of 2x2 px: conv 2x2): blocks 0-1 (MLP,
    c/4; 2 x depths[0]), 2 (merge), 3-4 (MLP, c/2), 5 (merge), 6-7 (attention, c)."""
    q = c // 4
    out = [('patch_embed.proj.weight', (q, 3, 2, 2)), ('patch_embed.proj.bias', (q,))] + _ln('patch_embed.norm', q)
    out += _mlp_block('blocks.0.', q, 3 * q) + _mlp_block('blocks.1.', q, 3 * q)
    out += _ln('blocks.2.norm', 4 * q) + _lin('blocks.2.reduction', 2 * q, 4 * q, False)
    h = 2 * q
    out += _mlp_block('blocks.3.', h, 3 * h) + _mlp_block('blocks.4.', h, 3 * h)
    out += _ln('blocks.5.norm', 4 * h) + _lin('blocks.5.reduction', 2 * h, 4 * h, False)
    for i in (6, 7):
        out += _attn_block(f'blocks.{i}.', c, heads, grid, rpe, rpe and per_attention_index)
    return out


def _layout(module):
    return [(k, tuple(v.shape)) for k, v in module.state_dict().items()]


def test_twin_layouts_match_the_spec_tables():
    n = 16
    sup = [('absolute_pos_embed', (1, n, 32))] + expected_encoder(32, 2, 4, True, True)
    sup += _ln('fc_norm', 32) + _lin('head', 5, 32)
    assert _layout(torch_twin(*CASES['sup'])) == sup
    ssl = [('absolute_pos_embed', (1, n, 32)), ('relative_position_index', (n, n))]
    ssl += expected_encoder(32, 2, 4, True, False) + _ln('fc_norm', 32) + _lin('head', 5, 32)
    assert _layout(torch_twin(*CASES['ssl'])) == ssl
    mae = [('absolute_pos_embed', (1, n, 32)), ('mask_token', (1, 1, 16)), ('decoder_pos_embed', (1, n, 16))]
    mae += expected_encoder(32, 2, 4, False, False) + _ln('norm', 7 * 32) + _lin('decoder_embed', 16, 7 * 32)
    for k in range(2):
        mae += _attn_block(f'decoder_blocks.{k}.', 16, 2, 4, False, False)
    mae += _ln('decoder_norm', 16) + _lin('decoder_pred', 8 * 8 * 3, 16)
    assert _layout(torch_twin(*CASES['mae'])) == mae
    mmp = [('pos_embed', (1, n, 32)), ('relative_position_index', (n, n))] + expected_encoder(32, 2, 4, True, True)
    assert _layout(torch_twin(*CASES['mmp'])) == mmp


def test_relative_position_index_buffers_are_exported_as_official_int64():
    for name in ('sup', 'ssl', 'mmp'):
        source, _, tm, jm = _cases[name]
        sd = official.state_dict(jm, source)
        for k, v in tm.state_dict().items():
            if k.endswith('relative_position_index'):
                assert sd[k].dtype == np.int64 and np.array_equal(sd[k], v.numpy()), (name, k)


# ------------------------------------------------------------------------------------------------
# Numerical parity (1e-5 relative, perturbed weights)
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', ['sup', 'sup_odd', 'ssl'])
def test_classifier_parity_with_torch(name):
    source, cfg, tm, jm = _cases[name]
    x = _images(cfg.get('in_chans', 3), seed=2)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    out = _cls(jm, _nhwc(x))
    assert out.shape == ref.shape
    assert_close(out, ref)


@pytest.mark.parametrize('name,ratio', [('mae', 0.75), ('mae_rpe', 0.75), ('mae', 0.5)])
def test_mae_parity_with_torch(name, ratio):
    source, cfg, tm, jm = _cases[name]
    if ratio != 0.75:
        jm = official.load_state_dict(official.build(source, **cfg, mask_ratio=ratio), source, tm.state_dict())
    x = _images(seed=3)
    noise = np.random.RandomState(4).rand(2, 16).astype(np.float32)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x), ratio, noise=torch.from_numpy(noise), train=False)
    out = _mae(jm, _nhwc(x), jnp.asarray(noise))
    np.testing.assert_array_equal(np.asarray(out['mask']), ref['mask'].numpy())
    assert float(np.asarray(out['mask']).sum()) == 2 * (16 - int(16 * (1 - ratio)))
    assert out['pred'].shape == (2, 16, 8 * 8 * 3)
    assert_close(out['pred'], ref['pred'].numpy())
    assert_close(out['loss'], ref['loss'].numpy())


def test_mmpretrain_backbone_feature_map_parity():
    """The built model's call is mmpretrain's forward: the tuple of maps (here the last main
    block's; NHWC against the twin's NCHW). ``depths[-1] - 1`` must reach past the 6 early blocks,
    else mmpretrain's loop breaks (the 'mmp' layout case [1, 1, 2] is such a configuration)."""
    cfg = dict(CASES['mmp'][1], arch=dict(embed_dims=32, depths=[1, 1, 7], num_heads=2))
    tm = perturb(torch_twin('mmpretrain_hivit', cfg))
    jm = official.load_state_dict(official.build('mmpretrain_hivit', **cfg), 'mmpretrain_hivit', tm.state_dict())
    x = _images(seed=5)
    with torch.no_grad():
        (ref,) = tm(torch.from_numpy(x))                   # (B, C, Hp, Wp)
    (out,) = _cls(jm, _nhwc(x))                            # (B, Hp, Wp, C)
    assert_close(np.asarray(out).transpose(0, 3, 1, 2), ref.numpy())
    tokens = np.asarray(_feat(jm, _nhwc(x)))               # (B, N, C), units row-major
    assert_close(tokens.reshape(2, 4, 4, 32).transpose(0, 3, 1, 2), ref.numpy())
    eps = {n.epsilon for _, n in nnx.iter_graph(jm) if isinstance(n, nnx.LayerNorm)}
    assert eps == {1e-5}


def test_perturbation_leaves_no_trivial_tables_norms_or_biases():
    _, _, tm, _ = _cases['ssl']
    for name, p in tm.named_parameters():
        if name.endswith(('.bias', 'relative_position_bias_table')):
            assert (p != 0).all(), name
        if 'norm' in name and name.endswith('.weight'):
            assert (p != 1).all(), name


# ------------------------------------------------------------------------------------------------
# Export order, round trip, strictness
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', list(CASES))
def test_export_matches_twin_keys_order_and_values(name):
    source, _, tm, jm = _cases[name]
    sd = official.state_dict(jm, source)
    ref = tm.state_dict()
    assert list(sd) == list(ref)
    for k, v in ref.items():
        assert sd[k].shape == tuple(v.shape) and sd[k].tobytes() == v.numpy().tobytes(), k


@pytest.mark.parametrize('name', list(CASES))
def test_round_trip_jax_torch_jax_is_bit_exact(name):
    source, cfg = CASES[name]
    check_round_trip(source, cfg, torch_twin(source, cfg))


def test_strict_load_names_every_problem():
    source, cfg, tm, _ = _cases['ssl']
    jm = official.build(source, **cfg)
    sd = {k: v.numpy().copy() for k, v in tm.state_dict().items()}
    del sd['blocks.6.attn.relative_position_bias_table']
    sd['blocks.7.attn.relative_position_index'] = np.zeros((16, 16), np.int64)   # supervised-copy key
    sd['absolute_pos_embed'] = np.zeros((1, 49, 32), np.float32)
    before = variables_of(jm)
    with pytest.raises(ValueError) as err:
        official.load_state_dict(jm, source, sd)
    msg = str(err.value)
    assert 'blocks.6.attn.relative_position_bias_table' in msg and 'blocks.7.attn.relative_position_index' in msg
    assert 'absolute_pos_embed: checkpoint (1, 49, 32) vs expected (1, 16, 32)' in msg
    after = variables_of(jm)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    bad = {k: v.numpy().copy() for k, v in tm.state_dict().items()}
    bad['relative_position_index'] = bad['relative_position_index'][::-1].copy()     # wrong derived buffer
    with pytest.raises(ValueError, match='relative_position_index'):
        official.load_state_dict(jm, source, bad)


def test_wrong_model_type_and_bad_arguments():
    jm = official.build('hivit_ssl', **CASES['ssl'][1])
    with pytest.raises(TypeError, match='HiViTMaskedAutoencoder'):
        official.state_dict(jm, 'hivit_mae')
    with pytest.raises(TypeError, match='HiViT classifier'):
        official.state_dict(official.build('hivit_mae', **CASES['mae'][1]), 'hivit')
    with pytest.raises(TypeError, match='backbone'):
        official.state_dict(jm, 'mmpretrain_hivit')
    with pytest.raises(ValueError, match='4-stage'):
        official.build('hivit', **dict(SMALL, depths=[1, 1, 1, 1]))
    with pytest.raises(ValueError, match='kernel_size'):
        official.build('hivit', **SMALL, kernel_size=3)
    with pytest.raises(ValueError, match='layer_scale'):
        official.build('mmpretrain_hivit', **CASES['mmp'][1], layer_scale_init_value=0.1)
    with pytest.raises(ValueError, match='arch'):
        official.build('mmpretrain_hivit', arch='huge')
    with pytest.raises(ValueError, match='ape'):
        official.build('hivit_mae', **SMALL, ape=False)


# ------------------------------------------------------------------------------------------------
# Official sizes by shape: the registered variants are the official constructor calls
# ------------------------------------------------------------------------------------------------

def _shape_layout(source, model):
    return [(key, shape) for key, _, shape, _ in official.describe(model, source)]


@pytest.mark.parametrize('registry_name,source,cfg', [
    ('hivit_base', 'hivit', dict(embed_dim=512, depths=[2, 2, 20], num_heads=8, drop_path_rate=0.5, norm_layer=LN6)),
    ('hivit_tiny', 'hivit', dict(embed_dim=384, depths=[1, 1, 10], num_heads=6, norm_layer=LN6)),
    ('mae_hivit_base_dec512d6b', 'hivit_mae', dict(embed_dim=512, depths=[2, 2, 20], num_heads=8,
                                                   decoder_embed_dim=512, decoder_depth=6, decoder_num_heads=16,
                                                   hifeat=True, rpe=False, norm_layer=LN6)),
    ('hivit_base_mmpretrain', 'mmpretrain_hivit', dict(arch='base', rpe=True)),
])
def test_registered_variants_have_the_official_layout(registry_name, source, cfg):
    overrides = dict(num_classes=0) if source == 'mmpretrain_hivit' else {}
    jm = nnx.eval_shape(lambda: create_model(registry_name, **overrides))
    with torch.device('meta'):
        tm = torch_twin(source, cfg)
    assert _shape_layout(source, jm) == _layout(tm)
    eps = {n.epsilon for _, n in nnx.iter_graph(jm) if isinstance(n, nnx.LayerNorm)}
    assert eps == ({1e-5} if source == 'mmpretrain_hivit' else {1e-6})
    if registry_name == 'hivit_base':   # official: 0-3 MLP, 4 merge, 5-8 MLP, 9 merge, 10-29 attention
        keys = [k for k, _ in _layout(tm)]
        assert 'blocks.4.reduction.weight' in keys and 'blocks.9.reduction.weight' in keys
        assert 'blocks.10.attn.qkv.weight' in keys and 'blocks.29.attn.relative_position_index' in keys
        assert 'blocks.8.attn.qkv.weight' not in keys and 'blocks.30.norm2.weight' not in keys
