"""Tests for convert/groupmixformer.py: the official GroupMixFormer state_dict <-> jaxmim, and the
PyTorch twin.

References: the official key table (the state_dict of ``AILab-CVC/GroupMixFormer@3d3f40977c6a
models/groupmixformer.py``: 1149 keys for S, shapes written out) and the parameter counts of the
official classes for the twin; the twin itself (perturbed weights: every parameter + N(0, 0.05²),
running means N(0, 0.3²), running variances U(0.5, 2)) for the JAX model, in evaluation and in
training mode (batch statistics; the running variance compared after PyTorch's unbiased n/(n-1)
correction). Small configurations, CPU only; S is built on the meta device.
"""

import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convert import groupmixformer as GM  # noqa: E402
from convert import official  # noqa: E402
from helpers import assert_close, check_round_trip, perturb  # noqa: E402

# Widths not all equal, depth 2 in one stage, MLP ratios 2-3, a 64 px input (maps 16, 8, 4, 2).
CFG = dict(embedding_dims=[20, 40, 60, 80], serial_depths=[1, 2, 1, 1], mlp_ratios=[2, 3, 2, 4], num_classes=7,
           drop_path_rate=0.0)
JAX_CFG = CFG          # official arguments only: the built model takes any multiple of 32 (here 64)


def perturbed_twin(seed=0):
    tm = perturb(GM.GroupMixFormer(**CFG), seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, buf in tm.named_buffers():
            if name.endswith('running_mean'):
                buf.copy_(0.3 * torch.randn(buf.shape, generator=g))
            elif name.endswith('running_var'):
                buf.copy_(0.5 + 1.5 * torch.rand(buf.shape, generator=g))
    return tm


@pytest.fixture(scope='module')
def pair():
    tm = perturbed_twin()
    jm = official.load_state_dict(official.build('groupmixformer', **JAX_CFG), 'groupmixformer', tm.state_dict())
    return tm, jm


def test_twin_key_table_matches_the_official_layout():
    with torch.device('meta'):
        twin = GM.GroupMixFormer()                                   # S, the official defaults
    sd = twin.state_dict()
    assert len(sd) == 1149
    assert sum(p.numel() for p in twin.parameters()) == 22_421_320
    p = 'groupmixformer_backbone.2.gma_stage.11.'
    want = {'conv_stem.proj1.weight': (40, 3, 3, 3), 'conv_stem.proj1.bias': (40,),
            'conv_stem.norm1.running_var': (40,), 'conv_stem.norm1.num_batches_tracked': (),
            'conv_stem.proj2.weight': (80, 40, 3, 3),
            'patch_embed_layers.0.proj.conv1.weight': (80, 1, 3, 3),
            'patch_embed_layers.0.proj.pointwise_conv.weight': (80, 80, 1, 1),
            'patch_embed_layers.2.proj.conv1.weight': (160, 1, 3, 3),
            'patch_embed_layers.2.proj.pointwise_conv.weight': (320, 160, 1, 1),
            p + 'cpe.proj.weight': (320, 1, 3, 3), p + 'cpe.proj.bias': (320,),
            p + 'att.qkv.weight': (960, 320), p + 'att.proj.weight': (320, 320),
            p + 'att.aggregator.norm0.running_mean': (64,),
            p + 'att.aggregator.agg1.conv1.weight': (64, 1, 3, 3),
            p + 'att.aggregator.agg2.conv1.weight': (64, 1, 5, 5),
            p + 'att.aggregator.agg3.conv1.weight': (64, 1, 7, 7),
            p + 'att.aggregator.agg3.pointwise_conv.weight': (64, 64, 1, 1),
            p + 'att.aggregator.agg0.conv.conv1.weight': (192, 1, 3, 3),
            p + 'att.aggregator.agg0.conv.pointwise_conv.weight': (64, 192, 1, 1),
            p + 'att.aggregator.agg0.norm.weight': (64,),
            p + 'att.crpe.conv_list.0.weight': (64, 1, 3, 3), p + 'att.crpe.conv_list.1.weight': (96, 1, 5, 5),
            p + 'att.crpe.conv_list.2.weight': (96, 1, 7, 7), p + 'att.crpe.conv_list.2.bias': (96,),
            p + 'mlp.fc1.weight': (1280, 320), 'norm4.running_mean': (320,), 'head.weight': (1000, 320)}
    for k, shape in want.items():
        assert tuple(sd[k].shape) == shape, k
    keys = list(sd)
    assert keys[:2] == ['conv_stem.proj1.weight', 'conv_stem.proj1.bias'] and keys[-2:] == ['head.weight', 'head.bias']
    # No biases on separable convolutions.
    assert not any(k.endswith('conv1.bias') or k.endswith('pointwise_conv.bias') for k in keys)


def test_jax_key_table_equals_the_twin_state_dict(pair):
    tm, jm = pair
    ours = official.state_dict(jm, 'groupmixformer')
    theirs = tm.state_dict()
    assert list(ours) == list(theirs)
    for k, v in theirs.items():
        assert ours[k].shape == tuple(v.shape), k
        if k.endswith('num_batches_tracked'):
            assert ours[k].dtype == np.int64
        else:
            np.testing.assert_array_equal(ours[k], v.numpy(), err_msg=k)     # loaded, then exported exactly


def test_eval_parity_with_the_twin(pair):
    tm, jm = pair
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        ref = tm.eval()(torch.from_numpy(x)).numpy()
    out = nnx.jit(lambda m, x: m(x, train=False))(jm, jnp.asarray(x.transpose(0, 2, 3, 1)))
    assert_close(out, ref, 1e-5)


def test_train_mode_batchnorm_parity_with_the_twin(pair):
    tm, jm = pair                          # runs after the eval-mode tests: it moves the running statistics
    before = {k: v.clone() for k, v in tm.state_dict().items()}
    x = np.random.default_rng(1).normal(size=(4, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        ref = tm.train()(torch.from_numpy(x)).numpy()
    tm.eval()
    out = nnx.jit(lambda m, x: m(x, train=True))(jm, jnp.asarray(x.transpose(0, 2, 3, 1)))
    assert_close(out, ref, 1e-5)
    ours, theirs = official.state_dict(jm, 'groupmixformer'), tm.state_dict()

    checked = 0
    for k in theirs:
        if k.endswith('running_mean'):
            assert_close(ours[k], theirs[k].numpy(), 1e-4)
        elif k.endswith('running_var'):
            # the batch variance each BatchNorm took (unbiased, as PyTorch's: n / (n - 1) alone is 2 % at
            # the 48 values per channel of norm4); 1e-3: the last stages' variances sit at the end of the
            # whole float32 network (the logits agree to 1e-5 above)
            old = before[k].numpy().astype(np.float64)
            assert_close((ours[k] - 0.9 * old) / 0.1, (theirs[k].numpy() - 0.9 * old) / 0.1, 1e-3)
            checked += 1
    assert checked == 2 + 4 + 4 * 5 + 1


def test_round_trip_is_bit_exact():
    check_round_trip('groupmixformer', JAX_CFG, GM.GroupMixFormer(**CFG))


def test_strict_loading_reports_every_problem(pair):
    tm, jm = pair
    sd = dict(tm.state_dict())
    del sd['norm4.running_var']
    sd['conv_stem.proj1.weight'] = torch.zeros(40, 3, 3, 3)
    sd['extra.weight'] = torch.zeros(1)
    sd.pop('head.bias')
    with pytest.raises(ValueError) as err:
        official.load_state_dict(jm, 'groupmixformer', {'model': sd})
    msg = str(err.value)
    for piece in ('norm4.running_var', 'head.bias', 'extra.weight', 'conv_stem.proj1.weight: checkpoint (40, 3, 3, 3)'):
        assert piece in msg
    # num_batches_tracked may be absent (bookkeeping only).
    sd = {k: v for k, v in tm.state_dict().items() if not k.endswith('num_batches_tracked')}
    official.load_state_dict(jm, 'groupmixformer', sd)


def test_build_rejects_what_jaxmim_cannot_represent():
    with pytest.raises(ValueError, match='num_stages'):
        official.build('groupmixformer', num_stages=3)
    from jaxmim.models.groupmixformer import GroupMixFormer
    headless = nnx.eval_shape(lambda: GroupMixFormer(num_classes=0, img_size=64, embed_dims=(20, 40, 60, 80),
                                                     depths=(1, 1, 1, 1), rngs=nnx.Rngs(0)))
    with pytest.raises(TypeError, match='classifier with a head'):
        official.state_dict(headless, 'groupmixformer')


def test_architecture_is_read_from_a_state_dict():
    """``arch_from_state_dict`` recovers the constructor arguments from an official state_dict
    (the way to load the released L, whose shapes the yaml does not give): a twin with unusual
    depths, widths, MLP ratios and classes is rebuilt in JAX from its keys alone and loads
    strictly; a non-GroupMixFormer dict names the missing key."""
    arch = dict(embedding_dims=[40, 80, 160, 160], serial_depths=[2, 1, 3, 1], mlp_ratios=[4, 2, 4, 3],
                num_classes=7, qkv_bias=False)
    twin = GM.GroupMixFormer(**arch, drop_path_rate=0.0)
    sd = {k: v for k, v in twin.state_dict().items()}
    got = GM.arch_from_state_dict(sd)
    assert got == {**arch, 'num_stages': 4}
    model = official.build('groupmixformer', rngs=nnx.Rngs(0), **got)
    official.load_state_dict(model, 'groupmixformer', sd)
    x = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
    twin.eval()
    with torch.no_grad():
        want = twin(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    assert_close(np.asarray(model(jnp.asarray(x), train=False)), want, rel=1e-5)
    with pytest.raises(ValueError, match="no 'patch_embed_layers"):
        GM.arch_from_state_dict({'head.weight': np.zeros((3, 4))})
