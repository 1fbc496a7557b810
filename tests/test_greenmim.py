"""GreenMIM pre-training model: masking, decoder placement, loss, per-sample mode, hooks, sizes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxmim import layers as L
from jaxmim.methods import create_mim_model, method_config_defaults
from jaxmim.registry import classifier_for, create_model, model_data_defaults

DEMO = 'green_mim_swin_demo_patch2_32_dec64b1'
TINY = dict(embed_dim=16, num_heads=(1, 2, 4))


def _make(**kw):
    """Builds the model inside one jit (eager init compiles op by op: slow on a shared CPU)."""
    return nnx.jit(lambda: create_model(DEMO, **TINY, norm_pix_loss=True, **kw))()


def _fwd(model):
    """Jitted ``model(images, **inputs)`` (shapes static; the mask mode is part of the graph)."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def f(state, images, inputs):
        return nnx.merge(graphdef, state)(images, **inputs)

    return lambda images, **inputs: f(state, images, inputs)


@pytest.fixture(scope='module')
def demo():
    return _make()


@pytest.fixture(scope='module')
def demo_fwd(demo):
    return _fwd(demo)


def _images(b=4, seed=0):
    return jax.random.normal(jax.random.key(seed), (b, 32, 32, 3))


def test_parameter_counts_and_registry():
    abstract = nnx.eval_shape(lambda: create_model('green_mim_swin_base_patch4_dec512b1'))
    params = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    buffers = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, L.Buffer)))
    assert params + buffers == 92_022_968                # the figure incl. the fixed tables
    assert buffers == 49 * 512                           # decoder_pos_embed
    assert abstract.len_keep == 12 and abstract.num_patches == 49 and abstract.patch_size == 32
    assert classifier_for('green_mim_swin_base_patch4_dec512b1') == 'swin_base_patch4_window7_224'
    assert classifier_for('green_mim_swin_large_patch4_win14_dec512b1') == 'swin_large_patch4_window14_224'
    assert model_data_defaults(DEMO)['image_size'] == 32
    assert method_config_defaults('greenmim') == {'name': 'greenmim', 'inputs_from': 'step', 'mask_ratio': 0.75,
                                                  'norm_pix_loss': False, 'mask_mode': 'batch', 'planner_workers': 0}


def test_masking_follows_official_rule_and_is_shared(demo, demo_fwd):
    rng = np.random.default_rng(0)
    noise = rng.random((1, 16), dtype=np.float32)
    fwd = demo_fwd
    out = fwd(_images(), noise=jnp.asarray(noise))
    kept = np.argsort(noise[0], kind='stable')[:4]          # ids_shuffle[:len_keep]
    expect = np.ones(16, np.float32)
    expect[kept] = 0
    np.testing.assert_array_equal(np.asarray(out['mask']), np.tile(expect, (4, 1)))
    # the same noise keeps the same units; (1, L) noise == the repeated (B, L) noise + plan
    inputs = demo.host_inputs(np.random.default_rng(0), 4)
    np.testing.assert_array_equal(inputs['noise'], np.repeat(noise, 4, axis=0))
    out2 = fwd(_images(), **{k: jnp.asarray(v) for k, v in inputs.items()})
    np.testing.assert_allclose(np.asarray(out2['loss']), np.asarray(out['loss']), rtol=1e-6)
    # batch mode reads row 0 only (of noise and plan)
    other = np.concatenate([noise, rng.random((3, 16)).astype(np.float32)])
    plan = np.concatenate([inputs['plan'][:1], demo.planner.plans(other[1:], per_sample=True)])
    out3 = fwd(_images(), noise=jnp.asarray(other), plan=jnp.asarray(plan))
    np.testing.assert_array_equal(np.asarray(out3['mask']), np.asarray(out['mask']))


def test_sample_inputs_plan_matches_host_planner(demo):
    inputs = jax.jit(lambda k: demo.sample_inputs(k, 4))(jax.random.key(3))
    assert inputs['noise'].shape == (1, 16) and inputs['plan'].shape == (1, demo.planner.plan_length)
    expect = demo.planner.plan(demo.planner.keep_from_noise(np.asarray(inputs['noise'][0])))
    np.testing.assert_array_equal(np.asarray(inputs['plan'][0]), expect)


def test_loss_formula_and_only_masked_units(demo_fwd):
    noise = jnp.asarray(np.random.default_rng(1).random((1, 16)), jnp.float32)
    images = _images()
    out = demo_fwd(images, noise=noise)
    x = np.asarray(images, np.float64)
    t = x.reshape(4, 4, 8, 4, 8, 3).transpose(0, 1, 3, 2, 4, 5).reshape(4, 16, 192)     # (p, q, c) units
    t = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, ddof=1, keepdims=True) + 1e-6)
    per_unit = ((np.asarray(out['pred'], np.float64) - t) ** 2).mean(-1)
    m = np.asarray(out['mask'], np.float64)
    np.testing.assert_allclose(float(out['loss']), (per_unit * m).sum() / m.sum(), rtol=1e-5)
    assert out['pred'].shape == (4, 16, 192) and out['latent'].shape == (4, 4, 64)


def test_official_decoder_placement_permutes_visible_features(demo):
    """Official placement: the m-th raster-ordered visible feature lands at ids_shuffle[m]."""
    noise = np.random.default_rng(2).random((1, 16)).astype(np.float32)
    latent = jax.random.normal(jax.random.key(5), (2, 4, demo.encoder.num_features))
    ids_shuffle = np.argsort(noise[0], kind='stable')[:4]
    pos = np.sort(ids_shuffle)                                # raster order of the visible units
    # raster placement of latent_perm puts latent[m] at ids_shuffle[m]
    perm = [int(np.flatnonzero(ids_shuffle == p)[0]) for p in pos]
    raster = demo.forward_decoder(latent[:, perm], jnp.asarray(noise), jnp.asarray(pos)[None])
    demo.decoder_placement = 'official'
    try:
        official = demo.forward_decoder(latent, jnp.asarray(noise), jnp.asarray(pos)[None])
    finally:
        demo.decoder_placement = 'raster'
    np.testing.assert_allclose(np.asarray(official), np.asarray(raster), rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(official),
                           np.asarray(demo.forward_decoder(latent, jnp.asarray(noise), jnp.asarray(pos)[None])))


def test_per_sample_mode_equals_batch_mode_row_by_row(demo, demo_fwd):
    per = _make(mask_mode='sample')
    nnx.update(per, nnx.state(demo))
    inputs = per.host_inputs(np.random.default_rng(4), 4)
    assert len({tuple(r) for r in inputs['noise']}) == 4
    images = _images(4)
    out = _fwd(per)(images, **{k: jnp.asarray(v) for k, v in inputs.items()})
    for b in range(4):     # the batch-mode model with sample b's noise shared by the batch
        ref = demo_fwd(images, noise=jnp.asarray(inputs['noise'][b:b + 1]))
        np.testing.assert_allclose(np.asarray(out['pred'][b]), np.asarray(ref['pred'][b]), rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(out['mask'][b]), np.asarray(ref['mask'][b]))
    with pytest.raises(ValueError, match='sample'):
        per(images, noise=jnp.asarray(inputs['noise'][:1]))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match='mask_mode'):
        create_model(DEMO, **TINY, mask_mode='pixel')
    with pytest.raises(ValueError, match='decoder_placement'):
        create_model(DEMO, **TINY, decoder_placement='random')
    with pytest.raises(ValueError, match='mask_unit'):
        create_model(DEMO, **TINY, mask_unit=16)


def test_hooks_and_init(demo):
    names = ['.'.join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(demo, nnx.Param))]
    from jaxmim.registry import match_any
    no_wd = {n for n in names if match_any(n, demo.no_weight_decay())}
    assert 'mask_token' in no_wd and 'encoder.layers.0.blocks.1.attn.relative_position_bias_table' in no_wd
    assert not any('qkv.kernel' in n for n in no_wd)
    assert demo.layer_id('encoder.patch_embed.proj.kernel') == 0
    assert demo.layer_id('encoder.layers.1.blocks.1.attn.qkv.kernel') == 2 + 1 + 1
    assert demo.layer_id('encoder.layers.1.downsample.reduction.kernel') == 4
    assert demo.layer_id('decoder_pred.kernel') == demo.num_layer_ids - 1 == 7
    # every Linear of the whole model is xavier-uniform (official initialize_weights)
    for path, m in nnx.iter_graph(demo):
        if isinstance(m, nnx.Linear):
            fan_in, fan_out = m.kernel.shape
            bound = np.sqrt(6.0 / (fan_in + fan_out))
            k = np.asarray(m.kernel[...])
            assert np.abs(k).max() <= bound and np.abs(k).max() > 0.8 * bound, path
    params = nnx.eval_shape(lambda: create_mim_model({'name': 'greenmim', 'inputs_from': 'pipeline', 'mask_ratio': 0.75,
                               'norm_pix_loss': True, 'mask_mode': 'sample'}, DEMO, overrides=TINY))
    assert params.mask_mode == 'sample' and params.norm_pix_loss


def test_one_compilation_for_any_mask(demo):
    graphdef, state = nnx.split(demo)
    calls = []

    @jax.jit
    def f(state, images, noise, plan):
        calls.append(1)
        return nnx.merge(graphdef, state)(images, noise=noise, plan=plan)['loss']

    losses = [float(f(state, _images(), *[jnp.asarray(v) for v in demo.host_inputs(np.random.default_rng(s), 4).values()]))
              for s in range(4)]
    assert len(calls) == 1 and len(set(losses)) == 4
