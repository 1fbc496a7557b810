"""Tests for convert/official.py (generic machinery) and the Swin family of convert/swin.py.

The Swin reference is the pure-PyTorch twin in ``convert.swin`` (official state_dict layout, tested
against independent expectations in test_torch_swin.py); the generic machinery (variable
collections, BatchNorm statistics, bookkeeping constants, coverage checks, family discovery) is
tested with a tiny family defined here (Conv + BatchNorm + Linear) and its PyTorch twin. Twin
weights are perturbed before every comparison so that no LayerNorm weight is 1 and no bias 0 (a
missed or swapped tensor shows up). CPU only, tiny configurations; the Swin-B size check runs
under ``nnx.eval_shape``.
"""

import ast
import functools
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convert import _entries as E  # noqa: E402
from convert import official  # noqa: E402
from helpers import assert_close, check_round_trip, perturb  # noqa: E402
from convert import swin as T  # noqa: E402

# img 32 / patch 2: stages 16, 8, 4 with window 4 -> every stage windowed, odd blocks shifted.
TINY = dict(img_size=32, patch_size=2, embed_dim=16, depths=(2, 2, 2), num_heads=(1, 2, 4), window_size=4,
            num_classes=10)
# img 32 / patch 4: stages 8, 4, 2 with window 4 -> stage 1 clamped to one unshifted 4x4 window,
# stage 2 to 2x2; also no qkv bias and no patch norm (keys absent from the state_dict).
CLAMP = dict(img_size=32, patch_size=4, embed_dim=16, depths=(2, 2, 2), num_heads=(1, 2, 4), window_size=4,
             num_classes=7, qkv_bias=False, patch_norm=False)
# SimMIM pre-training: absolute position embedding and LayerNorm eps 1e-6; final map 4x4, stride 8.
PRETRAIN = dict(encoder=dict(img_size=32, patch_size=2, embed_dim=16, depths=(2, 2, 2), num_heads=(1, 2, 4),
                             window_size=4, num_classes=0, ape=True,
                             norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6)),
                encoder_stride=8)
CASES = {'tiny': ('simmim_swin', TINY), 'clamp': ('simmim_swin', CLAMP),
         'pretrain': ('simmim_swin_pretrain', PRETRAIN)}


def torch_twin(source, cfg):
    if source == 'simmim_swin':
        return T.SwinTransformer(**cfg)
    return T.SimMIM(T.SwinTransformerForSimMIM(**cfg['encoder']), cfg['encoder_stride'])


def perturbed_twin(source, cfg, seed=0):
    """Torch twin in eval mode with N(0, 0.05²) noise added to every parameter."""
    return perturb(torch_twin(source, cfg), seed)


def params_of(model):
    """{path: np.ndarray} of every nnx.Param."""
    return {tuple(p): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def torch_np_state(tm):
    return {k: v.detach().numpy() for k, v in tm.state_dict().items()}


@pytest.fixture(scope='module', params=list(CASES))
def case(request):
    """(name, source, cfg, perturbed torch twin, jax model loaded from it)."""
    source, cfg = CASES[request.param]
    tm = perturbed_twin(source, cfg)
    jm = official.build(source, **cfg)
    official.load_state_dict(jm, source, tm.state_dict())
    return request.param, source, cfg, tm, jm


# ------------------------------------------------------------------------------------------------
# Numerical parity with the PyTorch twin
# ------------------------------------------------------------------------------------------------

def test_perturbation_leaves_no_trivial_norms_or_biases():
    tm = perturbed_twin(*CASES['tiny'])
    for name, p in tm.named_parameters():
        if name.endswith('.bias'):
            assert (p != 0).all(), name
        if 'norm' in name and name.endswith('.weight'):
            assert (p != 1).all(), name


def test_forward_parity_with_torch(case):
    name, source, cfg, tm, jm = case
    rs = np.random.RandomState(1)
    images = rs.randn(2, 3, 32, 32).astype(np.float32)
    x_jax = jnp.asarray(images.transpose(0, 2, 3, 1))   # NCHW -> NHWC
    if source == 'simmim_swin':
        with torch.no_grad():
            ref = tm(torch.from_numpy(images)).numpy()
        out = nnx.jit(lambda m, x: m(x, train=False))(jm, x_jax)
        assert out.shape == (2, cfg['num_classes'])
        assert_close(out, ref)
    else:
        grid = 32 // cfg['encoder']['patch_size']
        mask = (rs.rand(2, grid, grid) < 0.6).astype(np.int64)
        with torch.no_grad():
            ref = tm.forward_with_outputs(torch.from_numpy(images), torch.from_numpy(mask))
        out = nnx.jit(lambda m, x, k: m(x, mask=k, train=False))(jm, x_jax, jnp.asarray(mask, jnp.int32))
        assert_close(out['loss'], ref['loss'].numpy())
        assert_close(out['x_rec'], ref['x_rec'].numpy().transpose(0, 2, 3, 1))
        assert_close(out['pred'], ref['pred'].numpy())


def test_norm_eps_follows_norm_layer():
    jm = official.build('simmim_swin_pretrain', **PRETRAIN)
    norms = [m for _, m in nnx.iter_graph(jm) if isinstance(m, nnx.LayerNorm)]
    assert len(norms) == 1 + 6 * 2 + 2 + 1   # patch norm, 2 per block, 2 merges, final norm
    assert all(n.epsilon == 1e-6 for n in norms)
    jm = official.build('simmim_swin', **TINY, norm_layer=torch.nn.LayerNorm)
    assert all(m.epsilon == 1e-5 for _, m in nnx.iter_graph(jm) if isinstance(m, nnx.LayerNorm))


# ------------------------------------------------------------------------------------------------
# Layout: keys, order, shapes, buffers, round trip
# ------------------------------------------------------------------------------------------------

def test_export_keys_order_shapes_and_buffers_match_torch(case):
    _, source, _, tm, jm = case
    sd = official.state_dict(jm, source)
    ref = tm.state_dict()
    assert list(sd) == list(ref)
    for k, v in ref.items():
        assert isinstance(sd[k], np.ndarray)
        assert sd[k].shape == tuple(v.shape), k
    buffers = dict(tm.named_buffers())
    assert buffers and any(k.endswith('attn_mask') for k in buffers)
    for k, v in buffers.items():
        assert sd[k].dtype == v.numpy().dtype, k
        np.testing.assert_array_equal(sd[k], v.numpy(), err_msg=k)
    for k, v in ref.items():   # the loaded parameters come back unchanged
        if k not in buffers:
            assert sd[k].dtype == np.float32
            np.testing.assert_array_equal(sd[k], v.numpy(), err_msg=k)


def test_clamped_config_has_no_masks_in_clamped_stages():
    sd = official.state_dict(official.build('simmim_swin', **CLAMP), 'simmim_swin')
    masks = sorted(k for k in sd if k.endswith('attn_mask'))
    assert masks == ['layers.0.blocks.1.attn_mask']
    assert sd['layers.1.blocks.0.attn.relative_position_bias_table'].shape == (49, 2)
    assert sd['layers.2.blocks.1.attn.relative_position_bias_table'].shape == (9, 4)
    assert sd['layers.2.blocks.1.attn.relative_position_index'].shape == (4, 4)
    assert not any(k.endswith('qkv.bias') or k.startswith('patch_embed.norm') for k in sd)


def test_round_trip_jax_torch_jax_is_bit_exact(case):
    _, source, cfg, _, _ = case
    check_round_trip(source, cfg, torch_twin(source, cfg))


def test_detection_norms_are_omitted_from_the_classifier_layout():
    """A Swin built with the detection backbone's output norms (``out_indices=``) exports the
    classifier layout unchanged (same keys and values as the model without them) and keeps its
    norms on import: the official classifier has no ``norm{i}``."""
    from jaxmim.registry import create_model
    plain = create_model('swin_demo_patch4_window4_32', rngs=nnx.Rngs(0))
    det = create_model('swin_demo_patch4_window4_32', out_indices=(0, 1, 2), rngs=nnx.Rngs(0))
    sd_plain, sd_det = official.state_dict(plain, 'simmim_swin'), official.state_dict(det, 'simmim_swin')
    assert list(sd_plain) == list(sd_det) and not any(k.startswith('norm0') for k in sd_det)
    for k in sd_plain:
        assert sd_plain[k].tobytes() == sd_det[k].tobytes(), k
    before = np.asarray(det.norm1.scale[...]).copy()
    official.load_state_dict(det, 'simmim_swin', {**sd_det, 'norm.weight': np.full_like(sd_det['norm.weight'], 0.5)})
    assert np.all(np.asarray(det.norm.scale[...]) == 0.5) and np.array_equal(np.asarray(det.norm1.scale[...]), before)


def test_accepts_numpy_container_and_module_prefix():
    source, cfg = CASES['tiny']
    tm = perturbed_twin(source, cfg, seed=5)
    wrapped = {'model': {'module.' + k: v for k, v in torch_np_state(tm).items()}, 'epoch': 3}
    jm = official.load_state_dict(official.build(source, **cfg), source, wrapped)
    sd = official.state_dict(jm, source)
    for k, v in tm.state_dict().items():
        np.testing.assert_array_equal(sd[k], v.numpy())


# ------------------------------------------------------------------------------------------------
# Strictness
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def tiny():
    source, cfg = CASES['tiny']
    jm = official.build(source, **cfg)
    return jm, official.state_dict(jm, source)


def _load_error(jm, sd, **kw):
    before = params_of(jm)
    with pytest.raises(ValueError) as err:
        official.load_state_dict(jm, 'simmim_swin', sd, **kw)
    after = params_of(jm)
    assert all(np.array_equal(before[k], after[k]) for k in before)   # nothing written
    return str(err.value)


def test_missing_key_is_named(tiny):
    jm, sd = tiny
    sd = dict(sd)
    del sd['layers.1.blocks.0.attn.qkv.weight']
    msg = _load_error(jm, sd)
    assert 'missing' in msg and 'layers.1.blocks.0.attn.qkv.weight' in msg


def test_unexpected_key_is_named(tiny):
    jm, sd = tiny
    msg = _load_error(jm, {**sd, 'encoder.mask_token': np.zeros((1, 1, 16), np.float32)})
    assert 'unexpected' in msg and 'encoder.mask_token' in msg


def test_misshaped_key_is_named_with_official_shapes(tiny):
    jm, sd = tiny
    sd = dict(sd)
    sd['layers.0.blocks.0.mlp.fc1.weight'] = sd['layers.0.blocks.0.mlp.fc1.weight'].T.copy()
    msg = _load_error(jm, sd)
    assert 'mis-shaped' in msg and 'layers.0.blocks.0.mlp.fc1.weight' in msg
    assert '(16, 64)' in msg and '(64, 16)' in msg


def test_all_problems_reported_at_once(tiny):
    jm, sd = tiny
    sd = dict(sd)
    del sd['norm.bias']
    sd['head.weight'] = np.zeros((3, 64), np.float32)
    sd['extra.weight'] = np.zeros(2, np.float32)
    msg = _load_error(jm, sd)
    assert all(k in msg for k in ('norm.bias', 'head.weight', 'extra.weight'))


@pytest.mark.parametrize('key', ['layers.0.blocks.1.attn_mask', 'layers.1.blocks.0.attn.relative_position_index'])
def test_corrupted_buffer_is_rejected(tiny, key):
    jm, sd = tiny
    sd = dict(sd)
    bad = sd[key].copy()
    bad.flat[1] = -100 if bad.flat[1] == 0 else 0
    sd[key] = bad
    msg = _load_error(jm, sd)
    assert key in msg and 'window' in msg


def test_buffers_required_unless_disabled(tiny):
    jm, sd = tiny
    params_only = {k: v for k, v in sd.items() if not k.endswith(('attn_mask', 'relative_position_index'))}
    msg = _load_error(jm, params_only)
    assert 'layers.0.blocks.1.attn_mask' in msg and 'layers.2.blocks.0.attn.relative_position_index' in msg
    official.load_state_dict(jm, 'simmim_swin', params_only, require_buffers=False)


def test_non_floating_parameter_rejected(tiny):
    jm, sd = tiny
    msg = _load_error(jm, {**sd, 'norm.weight': np.ones(64, np.int64)})
    assert 'norm.weight' in msg


def test_wrong_model_or_source():
    jm = official.build('simmim_swin', **TINY)
    with pytest.raises(TypeError):
        official.state_dict(jm, 'simmim_swin_pretrain')
    with pytest.raises(KeyError, match='simmim_swin'):
        official.build('no_such_source')


# ------------------------------------------------------------------------------------------------
# build(): official constructor arguments
# ------------------------------------------------------------------------------------------------

SWIN_B_224 = dict(img_size=224, patch_size=4, in_chans=3, num_classes=1000, embed_dim=128, depths=[2, 2, 18, 2],
                  num_heads=[4, 8, 16, 32], window_size=7, mlp_ratio=4., qkv_bias=True, qk_scale=None,
                  drop_rate=0.0, drop_path_rate=0.5, ape=False, patch_norm=True, use_checkpoint=False)


def test_swin_b_224_parameter_count_and_layout():
    model = nnx.eval_shape(lambda: official.build('simmim_swin', **SWIN_B_224))
    n = sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert n == 87_768_224
    entries = official.get_source('simmim_swin').entries(model)
    assert len(entries) == 364   # 329 parameters + 24 indices + 11 masks (persistent buffers of
    # microsoft/SimMIM@d3e29bc models/swin_transformer.py, :94-104 and :209-232)
    with torch.device('meta'):
        tm = T.SwinTransformer(**SWIN_B_224)
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    layout = []
    for e in entries:
        if isinstance(e, official.VariableEntry):
            leaf = functools.reduce(lambda t, p: t[p], e.path, pure)
            layout.append((e.key, e.layout.official_shape(leaf.shape)))
        else:
            layout.append((e.key, e.value.shape))
    assert layout == [(k, tuple(v.shape)) for k, v in tm.state_dict().items()]


def test_build_argument_handling():
    with pytest.raises(ValueError, match='norm_layer'):
        official.build('simmim_swin', **TINY, norm_layer=torch.nn.BatchNorm1d)
    with pytest.raises(ValueError, match='norm_layer'):
        official.build('simmim_swin', **TINY,
                       norm_layer=functools.partial(torch.nn.LayerNorm, elementwise_affine=False))
    with pytest.warns(UserWarning, match='not_an_arg'):
        official.build('simmim_swin', **TINY, not_an_arg=1)
    with pytest.raises(ValueError, match='num_classes'):
        official.build('simmim_swin_pretrain', encoder={**PRETRAIN['encoder'], 'num_classes': 10},
                       encoder_stride=8)
    with pytest.raises(ValueError, match='encoder_stride'):
        official.build('simmim_swin_pretrain', encoder=PRETRAIN['encoder'], encoder_stride=16)
    m = official.build('simmim_swin_pretrain', **PRETRAIN, mask_patch_size=16, mask_ratio=0.5)
    assert m.mask_generator.mask_patch_size == 16 and m.mask_generator.mask_ratio == 0.5
    # ape=True: a learned (1, L, C) table over the 16x16 patch grid; eps from the partial LayerNorm.
    assert m.encoder.absolute_pos_embed[...].shape == (1, 16 * 16, 16) and m.encoder_stride == 8
    assert m.encoder.norm.epsilon == 1e-6


# ================================================================================================
# Generic machinery on a tiny family defined here: Conv + BatchNorm + Buffer + Linear
# ================================================================================================

from jaxmim.layers import Buffer  # noqa: E402


class TinyNet(nnx.Module):
    """conv 3x3 (pad 1) -> BatchNorm -> + offset (a fixed Buffer, per channel) -> ReLU -> mean over
    H, W -> fc. Images (B, 8, 8, 3) NHWC -> logits (B, 5)."""

    def __init__(self, rngs):
        self.conv = nnx.Conv(3, 4, (3, 3), padding=1, rngs=rngs)
        self.bn = nnx.BatchNorm(4, momentum=0.9, epsilon=1e-5, rngs=rngs)
        self.offset = Buffer(jnp.zeros((4,), jnp.float32))
        self.fc = nnx.Linear(4, 5, rngs=rngs)

    def __call__(self, x, train=False):
        x = self.bn(self.conv(x), use_running_average=not train) + self.offset[...]
        return self.fc(jax.nn.relu(x).mean(axis=(1, 2)))


class TorchTinyNet(torch.nn.Module):
    """The PyTorch twin: keys conv.{weight,bias}, bn.{weight,bias,running_mean,running_var,
    num_batches_tracked}, offset (persistent buffer, registered after bn), fc.{weight,bias}."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4, momentum=0.1, eps=1e-5)
        self.register_buffer('offset', torch.zeros(4))
        self.fc = torch.nn.Linear(4, 5)

    def forward(self, x):
        x = self.bn(self.conv(x)) + self.offset[:, None, None]
        return self.fc(torch.relu(x).mean(dim=(2, 3)))


def _tiny_entries(model):
    if not isinstance(model, TinyNet):
        raise TypeError(f'expected TinyNet, got {type(model).__name__}')
    # torch order: own buffers (offset) before children
    return ([official.VariableEntry('offset', ('offset',))]
            + E.conv_entries('conv', ('conv',), model.conv)
            + E.batch_norm_entries('bn', ('bn',), model.bn)
            + E.linear_entries('fc', ('fc',), model.fc))


TINY_SOURCE = official.Source(name='test_tiny_bn', reference='tests/test_convert.py TorchTinyNet',
                              build_fn=lambda rngs: TinyNet(rngs), entries_fn=_tiny_entries)


@pytest.fixture(scope='module')
def tiny_source():
    official.list_sources()   # discovery first, so the test source sits beside the real ones
    if 'test_tiny_bn' not in official.SOURCES:
        official.register_source(TINY_SOURCE)
    yield official.get_source('test_tiny_bn')
    official.SOURCES.pop('test_tiny_bn', None)


def perturbed_tiny_twin(seed=0):
    """Twin with noisy weights, running stats far from 0/1, a non-zero offset and a step count."""
    torch.manual_seed(seed)
    tm = TorchTinyNet().eval()
    with torch.no_grad():
        for p in tm.parameters():
            p.add_(0.1 * torch.randn_like(p))
        tm.bn.running_mean.copy_(0.3 * torch.randn(4))
        tm.bn.running_var.copy_(0.5 + torch.rand(4))
        tm.bn.num_batches_tracked.fill_(123)
        tm.offset.copy_(torch.randn(4))
    return tm


def all_variables(model):
    """{path: (collection name, np.ndarray)} of every variable."""
    return {tuple(p): (type(v).__name__, np.asarray(v[...])) for p, v in nnx.to_flat_state(nnx.state(model))}


def test_tiny_family_key_order_and_collections(tiny_source):
    jm = official.build(tiny_source)
    assert {p: c for p, (c, _) in all_variables(jm).items()} == {
        ('conv', 'kernel'): 'Param', ('conv', 'bias'): 'Param', ('bn', 'scale'): 'Param', ('bn', 'bias'): 'Param',
        ('bn', 'mean'): 'BatchStat', ('bn', 'var'): 'BatchStat', ('offset',): 'Buffer',
        ('fc', 'kernel'): 'Param', ('fc', 'bias'): 'Param'}
    sd = official.state_dict(jm, tiny_source)
    ref = TorchTinyNet().state_dict()
    assert list(sd) == list(ref)
    assert [sd[k].shape for k in sd] == [tuple(v.shape) for v in ref.values()]
    assert sd['bn.num_batches_tracked'].dtype == np.int64 and sd['bn.num_batches_tracked'].shape == ()
    assert sd['bn.num_batches_tracked'] == 0
    np.testing.assert_array_equal(sd['bn.running_var'], np.ones(4, np.float32))   # Flax init = torch init


def test_tiny_family_forward_parity_uses_running_stats(tiny_source):
    tm = perturbed_tiny_twin()
    jm = official.load_state_dict(official.build(tiny_source), tiny_source, tm.state_dict())
    x = np.random.RandomState(0).randn(3, 3, 8, 8).astype(np.float32)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    out = jm(jnp.asarray(x.transpose(0, 2, 3, 1)))
    assert_close(out, ref)
    # the running statistics matter: with them reset the outputs differ
    with torch.no_grad():
        tm.bn.reset_running_stats()
        other = tm(torch.from_numpy(x)).numpy()
    assert np.abs(other - ref).max() > 1e-3


def test_tiny_family_round_trip_bit_exact_with_running_stats(tiny_source):
    tm = perturbed_tiny_twin(seed=1)
    jm = official.load_state_dict(official.build(tiny_source, rngs=nnx.Rngs(7)), tiny_source, tm.state_dict())
    got = all_variables(jm)
    np.testing.assert_array_equal(got[('bn', 'mean')][1], tm.bn.running_mean.numpy())
    np.testing.assert_array_equal(got[('bn', 'var')][1], tm.bn.running_var.numpy())
    np.testing.assert_array_equal(got[('offset',)][1], tm.offset.numpy())
    sd = official.state_dict(jm, tiny_source)
    for k, v in tm.state_dict().items():
        if k != 'bn.num_batches_tracked':
            assert sd[k].tobytes() == v.numpy().tobytes(), k
    # JAX -> torch -> JAX: bit-exact for every collection
    tb = TorchTinyNet()
    tb.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    jb = official.load_state_dict(official.build(tiny_source, rngs=nnx.Rngs(8)), tiny_source, tb.state_dict())
    again = all_variables(jb)
    assert again.keys() == got.keys()
    for p in got:
        assert again[p][0] == got[p][0] and again[p][1].dtype == np.float32
        assert again[p][1].tobytes() == got[p][1].tobytes(), p


def test_tiny_family_train_step_updates_batch_stats_like_torch(tiny_source):
    """One training-mode forward updates the running statistics as torch does (momentum 0.1 =
    Flax 0.9); torch stores the unbiased batch variance, Flax the biased one, so only the mean is
    compared exactly and the variance through the n/(n-1) factor."""
    tm = perturbed_tiny_twin(seed=2)
    jm = official.load_state_dict(official.build(tiny_source), tiny_source, tm.state_dict())
    x = np.random.RandomState(3).randn(4, 3, 8, 8).astype(np.float32)
    old_var = tm.bn.running_var.clone()
    tm.train()
    with torch.no_grad():
        tm(torch.from_numpy(x))
    jm(jnp.asarray(x.transpose(0, 2, 3, 1)), train=True)
    sd = official.state_dict(jm, tiny_source)
    np.testing.assert_allclose(sd['bn.running_mean'], tm.bn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    n = 4 * 8 * 8
    torch_batch_var = (tm.bn.running_var - 0.9 * old_var) / 0.1
    flax_batch_var = (sd['bn.running_var'] - 0.9 * old_var.numpy()) / 0.1
    np.testing.assert_allclose(flax_batch_var * n / (n - 1), torch_batch_var.numpy(), rtol=1e-4)


def test_constant_entries_are_ignored_on_load(tiny_source):
    tm = perturbed_tiny_twin(seed=4)
    sd = {k: v for k, v in tm.state_dict().items() if k != 'bn.num_batches_tracked'}
    jm = official.load_state_dict(official.build(tiny_source), tiny_source, sd)   # absent: fine
    official.load_state_dict(jm, tiny_source, {**sd, 'bn.num_batches_tracked': torch.tensor([5, 6])})   # any value
    np.testing.assert_array_equal(official.state_dict(jm, tiny_source)['bn.running_mean'],
                                  tm.bn.running_mean.numpy())


def test_strict_errors_name_batch_stats_and_buffers(tiny_source):
    jm = official.build(tiny_source)
    before = all_variables(jm)
    sd = dict(perturbed_tiny_twin().state_dict())
    del sd['bn.running_var']
    sd['offset'] = torch.zeros(5)
    sd['bn.running_mean'] = torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError) as err:
        official.load_state_dict(jm, tiny_source, sd)
    msg = str(err.value)
    assert 'missing keys (1)' in msg and 'bn.running_var' in msg
    assert 'offset: checkpoint (5,) vs expected (4,)' in msg
    assert 'bn.running_mean' in msg and 'int64' in msg
    after = all_variables(jm)
    assert all(np.array_equal(before[p][1], after[p][1]) for p in before)


def test_coverage_check_covers_every_collection(tiny_source):
    jm = official.build(tiny_source)

    def drop(kind):
        def entries(model):
            return [e for e in _tiny_entries(model) if not (isinstance(e, official.VariableEntry) and e.path == kind)]
        return official.Source(name='broken', reference='', build_fn=None, entries_fn=entries)

    for path, name in ((('bn', 'var'), 'bn.var (BatchStat)'), (('offset',), 'offset (Buffer)'),
                       (('fc', 'bias'), 'fc.bias (Param)')):
        with pytest.raises(RuntimeError, match=re.escape(name)):
            drop(path).entries(jm)
    twice = official.Source(name='twice', reference='', build_fn=None,
                            entries_fn=lambda m: _tiny_entries(m) + [official.VariableEntry('x', ('offset',))])
    with pytest.raises(RuntimeError, match='mapped twice'):
        twice.entries(jm)
    ghost = official.Source(name='ghost', reference='', build_fn=None,
                            entries_fn=lambda m: _tiny_entries(m) + [official.VariableEntry('x', ('nope',))])
    with pytest.raises(RuntimeError, match='nope'):
        ghost.entries(jm)


# ------------------------------------------------------------------------------------------------
# Family discovery
# ------------------------------------------------------------------------------------------------

def test_core_imports_no_family_until_a_source_is_looked_up():
    code = ('import sys; from convert import official; '
            'assert not any(m.startswith("convert.") and m not in ("convert.official", "convert._layout") for m in sys.modules), sys.modules; '
            'names = official.list_sources(); '
            'assert {"simmim_swin", "simmim_swin_pretrain", "mae_vit", "mae_vit_cls"} <= set(names), names; '
            'assert "convert.swin" in sys.modules and "convert.vit" in sys.modules; '
            'assert "convert.export" not in sys.modules and "convert._cli" not in sys.modules; print("ok")')
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, '-c', code], cwd=root, capture_output=True, text=True, timeout=120,
                         env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
    assert out.returncode == 0 and out.stdout.strip() == 'ok', out.stderr[-2000:]


def test_core_code_names_no_model():
    """The core's code (docstrings, which cite examples, and comments removed) names no model family."""
    tree = ast.parse(Path(official.__file__).read_text())
    for node in ast.walk(tree):
        body = getattr(node, 'body', None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            body[0] = ast.Pass()
    code = ast.unparse(tree).lower()
    # attribute docstrings (a string expression after an assignment) are documentation too
    code = re.sub(r"^\s*(['\"]).*\1\s*$", '', code, flags=re.M)
    for word in ('swin', 'simmim', 'vit', 'mae', 'groupmix', 'hivit', 'beit', 'twins', 'pvt'):
        assert word not in code, word


def test_a_new_family_file_is_discovered(tmp_path, monkeypatch):
    import convert
    (tmp_path / 'fam_tmp_test.py').write_text(
        'from convert import official\n'
        'official.register_source(official.Source("tmp_family_source", "tmp", lambda rngs: None, lambda m: []))\n')
    (tmp_path / '_private_tmp.py').write_text('raise RuntimeError("private modules must not be imported")\n')
    (tmp_path / 'export.py').write_text('raise RuntimeError("core modules must not be imported")\n')
    monkeypatch.setattr(convert, '__path__', list(convert.__path__) + [str(tmp_path)])
    monkeypatch.setattr(official, '_discovered', False)
    try:
        assert 'tmp_family_source' in official.list_sources()
        assert 'simmim_swin' in official.list_sources()
    finally:
        official.SOURCES.pop('tmp_family_source', None)
        sys.modules.pop('convert.fam_tmp_test', None)
