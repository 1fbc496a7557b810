"""Backbone hooks on real parameter names: layer ids for layer decay, weight-decay patterns,
pre-trained adaptation. Expectations are the official rules written out (SimMIM
``optimizer.py:get_swin_layer``, MAE ``util/lr_decay.py``), not the code under test."""

import jax
import numpy as np
import pytest
from flax import nnx

from jaxmim import optim
from jaxmim.registry import create_model
from jaxmim.tree_util import flatten_names


def _abstract(name, **kw):
    """The model without allocating its weights (shapes only); hooks read its attributes."""
    return nnx.eval_shape(lambda: create_model(name, **kw))


def _names(model):
    return list(flatten_names(nnx.to_pure_dict(nnx.state(model, nnx.Param))))


def test_swin_b_layer_ids_on_every_parameter():
    model = _abstract('swin_base_patch4_window7_224')
    assert model.num_layer_ids == 26
    ids = {n: model.layer_id(n) for n in _names(model)}
    assert ids['patch_embed.proj.kernel'] == ids['patch_embed.norm.scale'] == 0
    # official: stage 1 blocks 1-2 (merge 2), stage 2 blocks 3-4 (merge 4), stage 3 blocks 5-22
    # (merge 22), stage 4 blocks 23-24, norm/head 25
    assert [ids[f'layers.0.blocks.{b}.attn.qkv.kernel'] for b in range(2)] == [1, 2]
    assert ids['layers.0.downsample.reduction.kernel'] == 2
    assert [ids[f'layers.2.blocks.{b}.mlp.fc1.kernel'] for b in range(18)] == list(range(5, 23))
    assert ids['layers.2.downsample.norm.bias'] == 22
    assert [ids[f'layers.3.blocks.{b}.attn.relative_position_bias_table'] for b in range(2)] == [23, 24]
    assert ids['norm.scale'] == ids['head.kernel'] == 25
    assert sorted(set(ids.values())) == list(range(26))


def test_simmim_wrapper_delegates_hooks_to_its_encoder():
    from jaxmim.methods import create_mim_model
    model = nnx.eval_shape(lambda: create_mim_model(
        {'name': 'simmim', 'encoder_stride': 32, 'mask_patch_size': 32, 'mask_ratio': 0.6},
        'simmim_swin_base_patch4_window6_192'))
    assert model.layer_id('encoder.mask_token') == 0
    assert model.layer_id('encoder.layers.1.blocks.0.norm1.scale') == 3
    names = _names(model)
    mask = flatten_names(optim.weight_decay_mask(nnx.to_pure_dict(nnx.state(model, nnx.Param)),
                                                 model.no_weight_decay()))
    no_decay = {n for n in names if not mask[n]}
    # official SimMIM groups: no decay for 1-D, '.bias', encoder.mask_token, rel-pos tables
    want = {n for n in names if n.endswith(('.bias', '.scale')) or n == 'encoder.mask_token'
            or n.endswith('relative_position_bias_table')}
    assert no_decay == want
    assert mask['decoder.kernel'] and mask['encoder.layers.2.blocks.3.attn.qkv.kernel']


def test_swin_adapts_relative_tables_and_rejects_other_shapes():
    model = _abstract('swin_demo_patch4_window4_32')
    table = np.random.default_rng(0).normal(size=(25, 2)).astype(np.float32)   # window 3
    out = model.adapt_pretrained('layers.0.blocks.0.attn.relative_position_bias_table', table, (49, 2))
    assert out.shape == (49, 2)
    np.testing.assert_allclose(out[24], table[12], rtol=1e-5)       # offset (0, 0) keeps its value
    with pytest.raises(ValueError, match=r'head.kernel.*\(64, 5\).*\(256, 10\)'):
        model.adapt_pretrained('head.kernel', np.zeros((64, 5)), (256, 10))
