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


def test_official_finetuning_path_resizes_windows_and_names_what_cannot_load(tmp_path):
    """SimMIM pre-trains at window 6 and fine-tunes at window 7; here the same path at demo size:
    a SimMIM checkpoint at 48 px, window 3 loads into a window-6 classifier (stages 12x12, 6x6,
    3x3), tables resized on load."""
    import ml_collections

    from jaxmim import rundir
    from jaxmim.models.pos_embed import resize_rel_pos_table

    pre_cfg = ml_collections.ConfigDict(dict(
        mode='pretrain', seed=0, model=dict(name='simmim_swin_demo_patch4_window4_32', overrides=dict(img_size=48, window_size=3)),
        method=dict(name='simmim', inputs_from='step', encoder_stride=16, mask_patch_size=8, mask_ratio=0.6)))
    pre = rundir.build_model(pre_cfg)
    rundir.save_model_checkpoint(pre, str(tmp_path / 'pre'), pre_cfg)
    clf = create_model('swin_demo_patch4_window4_32', img_size=48, window_size=6)
    report = rundir.load_pretrained(clf, str(tmp_path / 'pre'))
    src = np.asarray(pre.encoder.layers[0].blocks[1].attn.relative_position_bias_table[...])
    got = np.asarray(clf.layers[0].blocks[1].attn.relative_position_bias_table[...])
    assert src.shape == (25, 2) and got.shape == (121, 2)
    np.testing.assert_allclose(got, resize_rel_pos_table(src, 121), rtol=1e-6)
    np.testing.assert_allclose(got[60], src[12], rtol=1e-5)         # offset (0, 0) keeps its value
    # Stage 3 (3x3 tokens) clamps both windows to 3: nothing to resize there.
    assert sorted(report['resized']) == sorted(f'layers.{i}.blocks.{j}.attn.relative_position_bias_table'
                                               for i in range(2) for j in range(2))
    assert report['fresh'] == ['head.bias', 'head.kernel'] and report['unused'] == ['mask_token']
    np.testing.assert_array_equal(np.asarray(clf.patch_embed.proj.kernel[...]),
                                  np.asarray(pre.encoder.patch_embed.proj.kernel[...]))
    # A classifier of another width cannot take the checkpoint: every misfit is named at once.
    wide = create_model('swin_demo_patch4_window4_32', img_size=48, window_size=6, embed_dim=32,
                        num_heads=(1, 2, 4))
    with pytest.raises(ValueError, match=r'patch_embed.proj.kernel.*\(4, 4, 3, 64\).*\(4, 4, 3, 32\)'):
        rundir.load_pretrained(wide, str(tmp_path / 'pre'))
