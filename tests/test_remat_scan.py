"""Rematerialisation policies of every family, and the blocks of ViT / MAE / Swin under ``jax.lax.scan``.

* Every family takes ``remat`` (:data:`jaxmim.layers.REMAT_POLICIES`) and hands it to each of its
  blocks: the traced step holds one ``jax.checkpoint`` (primitive ``remat2``) per block, the count
  written out from the family's depths (encoder and decoder). The loss and every gradient equal
  those of ``remat='none'`` with drop path active, for every policy on ViT and for one policy on each
  family whose blocks take something else than ``(x, train, rng)`` or update variables: HiViT (an
  index table), PVT, UM-MAE Swin (a coordinate grid in and out), GroupMixFormer (BatchNorm
  statistics, compared too); the MIM models run the same block classes.
* The policies keep what they name: on the accelerators' (portable) forms the residuals the forward
  pass keeps for the backward pass shrink from ``none`` to ``dots_saveable`` to
  ``dots_with_no_batch_dims_saveable`` to ``block``, and the dense layers' saved outputs are at
  least the qkv and fc1 products every block's backward pass reads.
* ``scan_blocks=True`` runs ViT, MAE, Swin, HiViT (main stage; MAE-HiViT's decoder too) and GreenMIM
  Swin blocks as one ``jax.lax.scan`` (Swin, GreenMIM: by pairs where a stage shifts, an odd block
  left over) with the same parameter tree and checkpoint keys, the same loss and gradients
  (float32, 1e-6 of the largest gradient), with and without remat, in training and evaluation.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxmim import layers as L
from jaxmim.methods import create_mim_model, method_config_defaults
from jaxmim.models.stacking import run_blocks
from jaxmim.ops import platform_scope
from jaxmim.registry import create_model

from helpers import TINY_UM_SWIN, assert_close

X = np.random.RandomState(0).randn(2, 32, 32, 3).astype(np.float32)
X64 = np.random.RandomState(1).randn(2, 64, 64, 3).astype(np.float32)
KEY = jax.random.key(1)
FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}
"""XLA:CPU options that halve the compile time of these small steps (both sides of a comparison)."""


def _classify(images):
    def call(m):
        logits = m(jnp.asarray(images), train=True, rng=KEY)
        return -jnp.mean(jax.nn.log_softmax(logits.astype(jnp.float32))[jnp.arange(2), jnp.arange(2)])
    return call


def _pretrain(images):
    def call(m):
        inputs = m.sample_inputs(jax.random.key(2), images.shape[0])
        return m(jnp.asarray(images), train=True, rng=KEY, **inputs)['loss']
    return call


def _mim(method, name, block=None, **overrides):
    block = {**method_config_defaults(method), **(block or {})}
    return lambda remat: create_mim_model(block, name, overrides={**overrides, 'remat': remat})


# (builder(remat) -> model, loss(model), blocks the family runs: written out from its depths)
FAMILIES = {
    'vit': (lambda r: create_model('vit_demo_patch4_32', drop_path_rate=0.2, remat=r), _classify(X), 6),
    'swin': (lambda r: create_model('swin_demo_patch4_window4_32', drop_path_rate=0.2, remat=r), _classify(X),
             2 + 2 + 2),
    'hivit': (lambda r: create_model('hivit_demo_patch4_32', drop_path_rate=0.2, remat=r), _classify(X), None),
    'pvt': (lambda r: create_model('pvt_demo_32', drop_path_rate=0.2, remat=r), _classify(X), 2 + 2 + 2),
    'ummae_swin': (lambda r: create_model('swin_tiny_256', num_classes=10, drop_path_rate=0.2, remat=r,
                                          **TINY_UM_SWIN), _classify(X64), 2 + 1 + 1),
    'groupmixformer': (lambda r: create_model('groupmixformer_demo_32', drop_path_rate=0.2, remat=r), _classify(X),
                       1 + 1 + 3 + 1),
    'mae_vit': (_mim('mae', 'mae_vit_demo_patch4_32_dec128d2b'), _pretrain(X), 6 + 2),
    'simmim_swin': (_mim('simmim', 'simmim_swin_demo_patch4_window4_32', dict(encoder_stride=16, mask_patch_size=8),
                         drop_path_rate=0.2), _pretrain(X), 6),
    'mae_hivit': (_mim('mae', 'mae_hivit_demo_patch4_32_dec128d2b', drop_path_rate=0.2), _pretrain(X), None),
    'ummae_pvt': (_mim('ummae', 'mae_pvt_demo_32'), _pretrain(X), 2 + 2 + 2 + 2),
    'ummae_simmim_pvt': (_mim('ummae_simmim', 'simmim_pvt_demo_32'), _pretrain(X), 2 + 2 + 2),
    'ummae_vit': (_mim('ummae', 'mae_vit_demo_patch4_32_dec128d2b_um'), _pretrain(X), None),
    'ummae_swin_mae': (_mim('ummae', 'mae_swin_tiny_256', stride=8, decoder_embed_dim=16, decoder_depth=1,
                            decoder_num_heads=2, **TINY_UM_SWIN), _pretrain(X64), 2 + 1 + 1 + 1),
    'greenmim_swin': (_mim('greenmim', 'green_mim_swin_demo_patch2_32_dec64b1', drop_path_rate=0.2), _pretrain(X),
                      2 + 2 + 2 + 1),
    'greenmim_twins': (_mim('greenmim', 'green_mim_twins_demo_patch2_32_dec64b1', drop_path_rate=0.2), _pretrain(X),
                       None),
    'simmim_groupmixformer': (_mim('simmim', 'simmim_groupmixformer_demo_32', dict(mask_patch_size=8),
                                   drop_path_rate=0.2), _pretrain(X), 1 + 1 + 3 + 1),
}
POLICIES = ('block', 'dots_saveable', 'dots_with_no_batch_dims_saveable')


def _expected_blocks(family, model):
    """The families whose demo depths are not spelled out above: HiViT builds ``2 * depths[s]`` MLP
    blocks per early stage and ``depths[-1]`` attention blocks (``models_hivit.py:187-206``);
    MAE-HiViT adds its decoder; UM-MAE ViT and GreenMIM Twins run ``depth`` / ``sum(depths)``
    blocks plus the decoder."""
    if family in ('hivit', 'mae_hivit'):
        n = 2 * sum(model.depths[:-1]) + model.depths[-1]
        return n + (len(model.decoder_blocks) if family == 'mae_hivit' else 0)
    if family == 'ummae_vit':
        return model.depth + len(model.decoder_blocks)
    return sum(model.encoder.depths) + len(model.decoder_blocks)          # greenmim_twins


def _count(jaxpr, name):
    """Equations of primitive ``name`` in a jaxpr and every jaxpr nested in it (not inside one)."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == name:
            total += 1
            continue
        for v in eqn.params.values():
            for sub in (v if isinstance(v, (tuple, list)) else (v,)):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    total += _count(sub.jaxpr, name)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    total += _count(sub, name)
    return total


def _loss_fn(model, call):
    """``(loss(params, rest) -> (loss, BatchNorm statistics after the step), params, rest)``."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p, r):
        m = nnx.merge(graphdef, p, r)
        return call(m), nnx.to_pure_dict(nnx.state(m, nnx.BatchStat))
    return loss, nnx.to_pure_dict(params), nnx.to_pure_dict(rest)


def _run(model, call):
    loss, params, rest = _loss_fn(model, call)
    step = jax.jit(jax.value_and_grad(loss, has_aux=True)).lower(params, rest).compile(compiler_options=FAST_COMPILE)
    (value, stats), grads = step(params, rest)
    return value, grads, stats


def _assert_same(out, ref, rel):
    """Same loss (to ``rel``), and every gradient and BatchNorm statistic within ``rel`` of its
    largest magnitude, or of 1e-3 x the largest gradient for leaves whose gradient is round-off
    (analytically zero: ~1e-11 either way)."""
    (loss, grads, stats), (ref_loss, ref_grads, ref_stats) = out, ref
    assert float(loss) == pytest.approx(float(ref_loss), rel=rel)
    assert jax.tree.structure(grads) == jax.tree.structure(ref_grads)
    flat = [np.asarray(a, np.float64) for a in jax.tree.leaves(grads) + jax.tree.leaves(stats)]
    flat_ref = [np.asarray(a, np.float64) for a in jax.tree.leaves(ref_grads) + jax.tree.leaves(ref_stats)]
    assert len(flat) > 10
    floor = 1e-3 * max(np.abs(r).max() for r in flat_ref)
    for g, r in zip(flat, flat_ref):
        assert g.shape == r.shape
        np.testing.assert_allclose(g, r, rtol=rel, atol=rel * max(np.abs(r).max(), floor))


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_every_family_rematerialises_each_of_its_blocks(family):
    make, call, n_blocks = FAMILIES[family]
    policy = POLICIES[sorted(FAMILIES).index(family) % len(POLICIES)]     # they take turns
    model = make(policy)
    if n_blocks is None:
        n_blocks = _expected_blocks(family, model)
    loss, params, rest = _loss_fn(model, call)
    assert _count(jax.make_jaxpr(loss)(params, rest).jaxpr, 'remat2') == n_blocks
    assert _count(jax.make_jaxpr(_loss_fn(make('none'), call)[0])(params, rest).jaxpr, 'remat2') == 0


@pytest.mark.parametrize('family,policy', [('hivit', 'dots_saveable'), ('pvt', 'block'),
                                           ('ummae_swin', 'dots_with_no_batch_dims_saveable'),
                                           ('groupmixformer', 'block')])
def test_rematerialised_blocks_give_the_same_numbers(family, policy):
    make, call, _ = FAMILIES[family]
    _assert_same(_run(make(policy), call), _run(make('none'), call), rel=1e-5)


@pytest.mark.parametrize('policy', POLICIES)
def test_each_policy_gives_the_same_vit_loss_and_gradients(policy):
    make, call, _ = FAMILIES['vit']
    _assert_same(_run(make(policy), call), _run(make('none'), call), rel=1e-5)


def _residual_mib(remat, platform):
    """MiB of the residuals the forward pass of the demo ViT (batch 8) keeps for its backward pass:
    the leaves of the ``jax.vjp`` closure, sized by ``eval_shape`` (nothing runs), with the ops
    traced for ``platform`` (``'gpu'``: the portable forms, what an accelerator runs)."""
    x = jnp.zeros((8, 32, 32, 3))
    model = create_model('vit_demo_patch4_32', remat=remat)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    f = lambda p: nnx.merge(graphdef, p, rest)(x).sum()  # noqa: E731
    with platform_scope(platform):
        res = jax.eval_shape(lambda p: jax.vjp(f, p)[1], params)
    return sum(np.prod(a.shape) * a.dtype.itemsize for a in jax.tree.leaves(res)) / 2 ** 20


def test_policies_keep_what_they_name():
    res = {r: _residual_mib(r, 'gpu') for r in L.REMAT_POLICIES}
    assert res['none'] > res['dots_saveable'] > res['dots_with_no_batch_dims_saveable'] > res['block']
    # dense products kept: at least qkv (3D) and fc1 (4D) per token per block (their backward passes
    # read them: the attention's and GELU's), float32; B = 8, N = 65 tokens, D = 128, 6 blocks
    assert res['dots_with_no_batch_dims_saveable'] - res['block'] >= 6 * 8 * 65 * 7 * 128 * 4 / 2 ** 20
    # on CPU the dense layers are a custom_vjp the dots policies cannot see (jaxmim.layers.REMAT_POLICIES)
    assert _residual_mib('dots_with_no_batch_dims_saveable', 'cpu') == pytest.approx(_residual_mib('block', 'cpu'))


def test_unknown_remat_or_scan_value_is_refused_naming_the_config_field():
    with pytest.raises(ValueError, match=r'remat must be one of .*config\.model\.overrides\.remat'):
        create_model('pvt_demo_32', remat='dots')
    with pytest.raises(ValueError, match=r'scan_blocks \(config\.model\.overrides\.scan_blocks\) must be True'):
        create_model('vit_demo_patch4_32', scan_blocks='yes')


def test_array_drop_path_rate_draws_the_same_mask_as_the_number():
    x = jnp.asarray(np.random.RandomState(3).randn(16, 5, 7).astype(np.float32))
    for rate in (float(r) for r in np.float32([0.0, 0.1, 0.35])):     # the models' rates: float32 linspace
        ref = jax.jit(lambda y: L.drop_path(y, rate, True, KEY))(x)              # unrolled blocks
        out = jax.jit(lambda y, r: L.drop_path(y, r, True, KEY))(x, jnp.float32(rate))   # scanned
        assert np.asarray(out).tobytes() == np.asarray(ref).tobytes()
    dropped = np.asarray(L.drop_path(x, jnp.float32(0.5), True, KEY))
    kept = np.abs(dropped).reshape(16, -1).max(axis=1) > 0
    assert 0 < kept.sum() < 16
    np.testing.assert_array_equal(dropped[kept], np.asarray(x)[kept] / np.float32(0.5))


SCANNED = {
    'vit': (lambda **kw: create_model('vit_demo_patch4_32', drop_path_rate=0.2, **kw), _classify(X), 1),
    # depths (5, 2, 2): stage 0 (shifted windows) scans two pairs and runs its fifth block unrolled
    'swin': (lambda **kw: create_model('swin_demo_patch4_window4_32', drop_path_rate=0.3, depths=(5, 2, 2), **kw),
             _classify(X), 1),
    'mae_vit': (lambda **kw: create_mim_model(dict(method_config_defaults('mae')), 'mae_vit_demo_patch4_32_dec128d2b',
                                              overrides=kw), _pretrain(X), 2),
    # the main stage (6 blocks, relative position bias, keys from the whole model's split); MAE: the
    # main stage on the kept units, and the decoder
    'hivit': (lambda **kw: create_model('hivit_demo_patch4_32', drop_path_rate=0.2, **kw), _classify(X), 1),
    'mae_hivit': (lambda **kw: create_mim_model(dict(method_config_defaults('mae')), 'mae_hivit_demo_patch4_32_dec128d2b',
                                                overrides=dict(drop_path_rate=0.2, **kw)), _pretrain(X), 2),
    # depths (5, 2, 2): stage 0 alternates the regular and the shifted partition (two pairs scanned,
    # the fifth block unrolled), stage 1 (one pair) stays unrolled, stage 2 (4 x 4 tokens, window 4:
    # no shift) scans its two blocks one at a time
    'greenmim_swin': (lambda **kw: create_mim_model(dict(method_config_defaults('greenmim')),
                                                    'green_mim_swin_demo_patch2_32_dec64b1',
                                                    overrides=dict(drop_path_rate=0.3, depths=(5, 2, 2), **kw)),
                      _pretrain(X), 2),
}


@pytest.mark.parametrize('family,remat', [('vit', 'none'), ('vit', 'block'), ('swin', 'none'),
                                          ('swin', 'dots_with_no_batch_dims_saveable'), ('mae_vit', 'dots_saveable'),
                                          ('hivit', 'none'), ('mae_hivit', 'block'), ('greenmim_swin', 'none'),
                                          ('greenmim_swin', 'dots_saveable')])
def test_scanned_blocks_give_the_unrolled_numbers_and_keep_the_parameter_layout(family, remat):
    make, call, n_scans = SCANNED[family]
    ref_model, model = make(remat=remat), make(remat=remat, scan_blocks=True)
    ref_paths = [p for p, _ in nnx.to_flat_state(nnx.state(ref_model))]
    assert [p for p, _ in nnx.to_flat_state(nnx.state(model))] == ref_paths
    loss, params, rest = _loss_fn(model, call)
    assert _count(jax.make_jaxpr(loss)(params, rest).jaxpr, 'scan') == n_scans
    _assert_same(_run(model, call), _run(ref_model, call), rel=1e-6)
    if family == 'vit' and remat == 'none':          # evaluation: no drop path, no keys
        x = jnp.asarray(X)
        assert_close(jax.jit(lambda m: m(x))(model), jax.jit(lambda m: m(x))(ref_model), rel=1e-6)
    if family == 'hivit':                            # dense features at another size: resized bias tables
        x = jnp.asarray(X64)
        got, want = (jax.jit(lambda m: m.features(x))(m) for m in (model, ref_model))
        for k in want:
            assert_close(got[k], want[k], rel=1e-6)


def test_scan_refuses_blocks_it_cannot_stack():
    x = jnp.zeros((1, 8, 8, 64))
    swin = create_model('swin_demo_patch4_window4_32', depths=(4, 2, 2))
    with pytest.raises(ValueError, match='block 1 differs from block 0'):   # shift 0 then 2: pairs only
        run_blocks(swin.layers[0].blocks, x, train=False, rng=None, scan=True, period=1)
    assert run_blocks(swin.layers[0].blocks, x, train=False, rng=None, scan=True, period=2).shape == x.shape
    with pytest.raises(ValueError, match='keys must be 4 keys .* got 4 with rng set'):
        run_blocks(swin.layers[0].blocks, x, train=True, rng=KEY, keys=[KEY] * 4, scan=True, period=2)
    with pytest.raises(ValueError, match='keys must be 4 keys .* got 3 with rng None'):
        run_blocks(swin.layers[0].blocks, x, train=True, rng=None, keys=[KEY] * 3, scan=True, period=2)
    gmf = create_model('groupmixformer_demo_32')
    with pytest.raises(ValueError, match='BatchStat'):
        run_blocks(gmf.groupmixformer_backbone[2].gma_stage, jnp.zeros((1, 8, 8, 160)), train=False, rng=None,
                   scan=True)


def test_residuals_cli_sizes_the_training_step_of_a_config():
    """``python -m jaxmim.residuals``'s measure on the MAE demo config: rematerialising every block
    keeps less than half of the residuals (the parameters are among them), scanning keeps as much as
    the unrolled loop, and the dense-layer policy on the accelerator forms keeps at least each
    block's qkv and fc1 outputs more than ``block`` (float32; B = 8, 17 encoder tokens of width 128
    and 65 decoder tokens of width 128 in the demo: 6 + 2 blocks)."""
    from jaxmim.config import load_config_file
    from jaxmim.residuals import step_residual_bytes

    config = load_config_file('configs/demo/mae_vit_fmnist.py')

    def size(remat, scan, platform='cpu'):
        with config.unlocked():
            config.model.overrides.remat, config.model.overrides.scan_blocks = remat, scan
        return step_residual_bytes(config, 8, platform)

    assert size('block', False) < size('none', False) / 2
    for remat in ('none', 'block'):     # the same arrays, stacked (up to a few scalars)
        assert size(remat, True) == pytest.approx(size(remat, False), rel=1e-4)
    dots = size('dots_with_no_batch_dims_saveable', False, 'gpu') - size('block', False, 'gpu')
    assert dots >= 8 * (6 * 17 + 2 * 65) * 7 * 128 * 4
