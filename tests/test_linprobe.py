"""Linear probing (``config.probe='linear'``, :mod:`jaxmim.probe`) and MAE's LARS (``optim.name='lars'``).

* frozen means frozen: a probe step leaves every variable of the encoder (weights, BatchNorm
  statistics of the GroupMixFormer, buffers) bit-identical, trains the head, moves the head's
  BatchNorm statistics, and the optimizer holds state for the head only;
* the compiled probe step holds no backward pass of the encoder: its FLOPs are the encoder's
  forward FLOPs, about a third of a fine-tuning step's;
* LARS against the update of MAE's ``util/lars.py`` written out in NumPy;
* a probe run through the real loop loads the pre-trained encoder, keeps it bit-identical, and
  resumes after an interruption to the uninterrupted run's losses and accuracy;
* config errors name the field.
"""

import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxmim import mesh as mesh_lib
from jaxmim import optim, probe, recipes, rundir, steps, train, tree_util
from jaxmim.config import check_config, finetune_defaults, load_config_file, pretrain_defaults

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, 'configs/demo/linprobe_fmnist.py')


def _demo(variant, **overrides):
    """The demo probe config of ``variant`` (model overrides applied), batch 16, no scaling of the lr."""
    c = load_config_file(f'{DEMO}:{variant}')
    for k, v in overrides.items():
        c.model.overrides[k] = v
    c.batch_size = 16
    c.optim.warmup_steps = 1
    return c


def _trainer(c, devices=1):
    """The probe's trainer as :func:`jaxmim.train.finetune` builds it from random initialisation."""
    mesh = mesh_lib.make_mesh(jax.devices('cpu')[:devices])
    build, abstract = probe.prepare(c, functools.partial(rundir.build_model, c),
                                    nnx.eval_shape(lambda: rundir.build_model(c)))
    loss_fn = functools.partial(steps.classification_loss, label_smoothing=0.0, num_classes=10)
    trainer, state = steps.make_trainer(build, loss_fn, c, mesh, abstract_model=abstract)
    return mesh, trainer, state


def _batches(n, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return [{'image': rng.normal(size=(size, 32, 32, 3)).astype(np.float32),
             'label': rng.integers(0, 10, size).astype(np.int32)} for _ in range(n)]


def _flat(tree):
    return dict(tree_util.flatten_names(jax.device_get(tree)))


# ------------------------------------------------------------------------------------------
# (1) frozen means frozen.


def test_probe_steps_leave_the_encoder_bit_identical():
    c = _demo('groupmixformer')          # BatchNorm in every block: running statistics to keep
    mesh, trainer, state = _trainer(c)
    assert set(state['params']) == {'head'}                  # the only trained variables
    before = {'ms': _flat(state['model_state']), 'params': _flat(state['params'])}
    enc_stats = [k for k in before['ms'] if k.startswith('encoder.') and k.rsplit('.', 1)[-1] in ('mean', 'var')]
    enc_weights = [k for k in before['ms'] if k.startswith('encoder.') and k.endswith('.kernel')]
    assert len(enc_stats) >= 20 and len(enc_weights) >= 20   # the GroupMixFormer's BatchNorms and layers
    # the optimizer state: one LARS momentum per head leaf, nothing for the encoder
    opt_leaves = jax.tree_util.tree_leaves_with_path(state['opt_state'])
    shaped = sorted(tuple(x.shape) for _, x in opt_leaves if np.ndim(x) > 0)
    assert shaped == sorted(tuple(x.shape) for x in before['params'].values())
    assert not any('encoder' in jax.tree_util.keystr(p) for p, _ in opt_leaves)

    for batch in _batches(3):
        state, metrics = trainer.train_step(state, mesh_lib.global_batch(batch, mesh_lib.batch_sharding(mesh)))
    assert np.isfinite(float(metrics['loss']))
    after = {'ms': _flat(state['model_state']), 'params': _flat(state['params'])}
    for k, v in before['ms'].items():
        if k.startswith('encoder.'):
            assert after['ms'][k].dtype == v.dtype and after['ms'][k].tobytes() == v.tobytes(), k
    for k in ('head.kernel', 'head.bias'):
        assert not np.array_equal(after['params'][k], before['params'][k]), k
    for k in ('head_norm.mean', 'head_norm.var'):
        assert not np.array_equal(after['ms'][k], before['ms'][k]), k


def test_bf16_probe_runs_the_encoder_in_bf16_on_float32_weights():
    """``compute_dtype='bfloat16'``: the frozen encoder computes on bf16 copies of its weights (its
    matrix products are bf16, as a bf16 fine-tuning step's), the state keeps them float32 and
    bit-identical, and the loss tracks the float32 step's."""
    import re
    batch = _batches(1)[0]
    out = {}
    for dtype in ('float32', 'bfloat16'):
        c = _demo('vit')
        c.compute_dtype = dtype
        _, trainer, state = _trainer(c)
        before = _flat(state['model_state'])
        text = trainer.train_step.lower(state, batch).as_text()
        state, metrics = trainer.train_step(state, batch)
        after = _flat(state['model_state'])
        for k, v in before.items():
            assert after[k].dtype == np.float32 and (not k.startswith('encoder.') or after[k].tobytes() == v.tobytes()), k
        dots = re.findall(r'stablehlo\.dot_general.*', text)
        out[dtype] = (float(metrics['loss']), sum('bf16' in d for d in dots), len(dots))
    assert out['float32'][1] == 0
    assert out['bfloat16'][1] >= 0.9 * out['bfloat16'][2] > 0          # the encoder's products in bf16
    assert out['bfloat16'][0] == pytest.approx(out['float32'][0], rel=1e-2)


def test_probe_head_norm_is_torch_batchnorm1d():
    """``head_norm`` against ``BatchNorm1d(affine=False, eps=1e-6, momentum=0.1)`` written out:
    batch statistics normalise (biased variance), the running variance takes the unbiased one."""
    norm = probe.FeatureBatchNorm(5)
    x = np.random.default_rng(1).normal(2.0, 3.0, size=(7, 5)).astype(np.float32)
    y = np.asarray(norm(jnp.asarray(x), train=True))
    x64 = x.astype(np.float64)
    mu, var = x64.mean(0), x64.var(0)
    np.testing.assert_allclose(y, (x64 - mu) / np.sqrt(var + 1e-6), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(norm.mean[...]), 0.1 * mu, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(norm.var[...]), 0.9 + 0.1 * x64.var(0, ddof=1), rtol=1e-5)
    z = np.asarray(norm(jnp.asarray(x), train=False))
    np.testing.assert_allclose(z, (x64 - 0.1 * mu) / np.sqrt(0.9 + 0.1 * x64.var(0, ddof=1) + 1e-6), rtol=1e-5)


# ------------------------------------------------------------------------------------------
# (2) no encoder backward in the compiled step.


def _step_flops(c, batch):
    _, trainer, state = _trainer(c)
    ca = trainer.train_step.lower(state, batch).compile().cost_analysis()
    return float((ca[0] if isinstance(ca, list) else ca)['flops']), trainer, state


def test_probe_step_costs_one_encoder_forward():
    """A training step costs about 3 forward passes (the backward pass of a matrix product is two
    products of the forward's size: input and weight gradients), so a fine-tuning step of the demo
    ViT counts about 3x the forward FLOPs. The probe step runs the encoder forward only (its
    weights are not differentiated and its features are under stop_gradient) plus a 128x10 head:
    its FLOPs equal the classifier's evaluation forward pass within a few percent, and are about 1/3
    of the fine-tuning step's (measured 0.33 on CPU)."""
    B = 16
    batch = {'image': jnp.zeros((B, 32, 32, 3)), 'label': jnp.zeros((B,), jnp.int32)}
    c = _demo('vit')
    probe_flops, _, _ = _step_flops(c, batch)
    ft = _demo('vit')
    ft.probe = ''
    ft.optim.name = 'adamw'
    ft_flops, trainer, state = _step_flops(ft, batch)
    eval_step = steps.make_eval_step(trainer.graphdef, trainer.mesh)
    variables = {'params': state['params'], 'model_state': state['model_state']}
    ca = eval_step.lower(variables, {**batch, 'mask': jnp.ones((B,))}).compile().cost_analysis()
    forward = float((ca[0] if isinstance(ca, list) else ca)['flops'])
    print(f'probe step {probe_flops:.4g} FLOPs, fine-tuning step {ft_flops:.4g}, forward {forward:.4g}: '
          f'probe / fine-tune {probe_flops / ft_flops:.3f}, probe / forward {probe_flops / forward:.3f}')
    assert 0.95 < probe_flops / forward < 1.1
    assert 0.2 < probe_flops / ft_flops < 0.45
    # The MFU numerator of a probe run (logged by the train loop, jaxmim.benchmark_steps) is the
    # probe's step, not the fine-tuning step of its classifier.
    from jaxmim import benchmark_steps
    mesh = mesh_lib.make_mesh(jax.devices('cpu')[:1])
    counted, _ = benchmark_steps.model_flops_per_image('finetune', c, mesh)
    assert 0.9 < counted * B / probe_flops < 1.1, (counted * B, probe_flops)
    with pytest.raises(ValueError, match='probe'):
        benchmark_steps.build_step('finetune', c, mesh, with_twin=True)


# ------------------------------------------------------------------------------------------
# (3) LARS.


def _lars_config(base_lr, warmup, total, weight_decay=0.05):
    return dict(name='lars', base_lr=base_lr, warmup_lr=0.0, min_lr=0.0, weight_decay=weight_decay,
                warmup_steps=warmup, schedule='mae_cosine', clip_grad=0.0, momentum=0.9, trust_coefficient=1e-3)


def _tree(seed):
    rng = np.random.default_rng(seed)
    return {'w': rng.normal(size=(4, 3)).astype(np.float32), 'b': rng.normal(size=(3,)).astype(np.float32),
            'conv': {'kernel': rng.normal(size=(2, 2, 3, 4)).astype(np.float32)},
            'zero': np.zeros((3, 3), np.float32)}


def test_lars_matches_mae_update_in_numpy():
    """facebookresearch/mae ``util/lars.py`` written out: for p.ndim > 1, dp = g + wd p, q =
    tc ||p|| / ||dp|| (1 if a norm is 0), dp *= q; mu = m mu + dp; p -= lr mu; 1-D leaves take
    the plain momentum step. The lr is MAE's warm-up + half cosine, written out too."""
    T, Tw, base, wd, m, tc = 6, 2, 0.5, 0.05, 0.9, 1e-3
    params = _tree(0)
    tx, _ = optim.build_optimizer(_lars_config(base, Tw, T, wd), params, T)
    state = tx.init(params)
    p_jax = jax.tree.map(jnp.asarray, params)
    p_np = jax.tree.map(lambda x: x.astype(np.float64), params)
    mu = jax.tree.map(np.zeros_like, p_np)
    for t in range(T):
        g = _tree(100 + t)
        g['w'] = g['w'] * (t != 3)           # a zero gradient at step 3: the decay term alone
        g['zero'] = g['conv']['kernel'][0, 0, :, :3]   # a zero parameter at step 0: trust ratio 1
        lr = base * t / Tw if t < Tw else 0.5 * base * (1 + math.cos(math.pi * (t - Tw) / (T - Tw)))
        updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, p_jax)
        p_jax = optax.apply_updates(p_jax, updates)

        def step(p, grad, mom):
            dp = grad.astype(np.float64)
            if p.ndim > 1:
                dp = dp + wd * p
                pn, un = np.linalg.norm(p), np.linalg.norm(dp)
                dp = dp * (tc * pn / un if pn > 0 and un > 0 else 1.0)
            mom[...] = m * mom + dp
            return p - lr * mom
        p_np = {k: (step(p_np[k], g[k], mu[k]) if k != 'conv'
                    else {'kernel': step(p_np[k]['kernel'], g[k]['kernel'], mu[k]['kernel'])}) for k in p_np}
        jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), b, rtol=2e-5, atol=1e-7), p_jax, p_np)
    assert not np.array_equal(np.asarray(p_jax['zero']), params['zero'])   # moved by its plain (q = 1) step
    assert optim.lars_mask(params) == {'w': True, 'b': False, 'conv': {'kernel': True}, 'zero': True}


def test_lars_equals_optax_lars_only_at_a_constant_lr():
    """``optax.lars`` scales by the lr before the momentum trace; MAE after it. Equal updates at a
    constant lr, different ones under the warm-up + cosine schedule (why jaxmim builds its own chain)."""
    params = _tree(1)
    mask = optim.lars_mask(params)

    def run(tx):
        p, s = jax.tree.map(jnp.asarray, params), tx.init(params)
        for t in range(5):
            u, s = tx.update(jax.tree.map(jnp.asarray, _tree(200 + t)), s, p)
            p = optax.apply_updates(p, u)
        return p

    const, _ = optim.build_optimizer(_lars_config(0.3, 0, 5) | dict(min_lr=0.3), params, 5)
    ref = optax.lars(0.3, weight_decay=0.05, weight_decay_mask=mask, trust_coefficient=1e-3,
                     trust_ratio_mask=mask, momentum=0.9)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8), run(const), run(ref))
    sched_tx, lr_fn = optim.build_optimizer(_lars_config(0.3, 2, 5), params, 5)
    other = run(optax.lars(lr_fn, weight_decay=0.05, weight_decay_mask=mask, trust_coefficient=1e-3,
                           trust_ratio_mask=mask, momentum=0.9))
    assert not np.allclose(run(sched_tx)['w'], other['w'], rtol=1e-4)


# ------------------------------------------------------------------------------------------
# (4) the real loop: pre-trained encoder loaded, kept, resumed.


TINY_VIT = dict(depth=2, embed_dim=64, num_heads=2)


def _loop_config(data_dir):
    c = _demo('vit', **TINY_VIT)
    c.data.data_dir = data_dir
    c.data.cache = False
    c.data.shuffle_buffer = 1000
    c.data.eval_split = 'test[:400]'
    c.eval_batch_size = 400                            # a multiple of the 8 test devices
    c.total_steps, c.checkpoint_every, c.eval_every, c.log_every = 6, 3, 6, 1
    c.optim.warmup_steps = 2
    c.progress_bar = False
    return c


def test_probe_run_keeps_pretrained_encoder_and_resumes(data_dir, tmp_path, monkeypatch):
    from helpers import run_interrupted
    from jaxmim.registry import create_model
    c = _loop_config(data_dir)
    # a "pre-trained" run: the classifier of another seed saved as convert.import would
    model = create_model(c.model.name, seed=7, **c.model.overrides.to_dict())
    pre_dir = str(tmp_path / 'pre')
    rundir.save_model_checkpoint(model, pre_dir, c)
    c.pretrained.workdir = pre_dir
    check_config(c)

    full = train.finetune(c, str(tmp_path / 'full'))[1]
    run_interrupted(monkeypatch, train, lambda: train.finetune(_with_pre(data_dir, pre_dir), str(tmp_path / 'res')), 4)
    resumed = train.finetune(_with_pre(data_dir, pre_dir), str(tmp_path / 'res'))[1]
    assert resumed['start_step'] == 3 and full['compilations'] == 1
    got = {h['step']: h['loss'] for h in resumed['history']}
    want = {h['step']: h['loss'] for h in full['history']}
    assert sorted(got) == list(range(1, 7))
    for s in got:
        np.testing.assert_allclose(got[s], want[s], rtol=1e-6)
    assert resumed['final_eval']['top1'] == pytest.approx(full['final_eval']['top1'], abs=1e-6)
    assert resumed['final_eval']['count'] == 400

    # the encoder in the final checkpoint is the pre-trained model, bit for bit
    from jaxmim import checkpoint
    ms = dict(tree_util.flatten_names(checkpoint.restore_params(
        os.path.join(tmp_path / 'full', 'checkpoints'), 6, key_path=('model_state',))))
    src = dict(tree_util.flatten_names(nnx.to_pure_dict(nnx.state(model))))
    assert {k[len('encoder.'):] for k in ms if k.startswith('encoder.')} == set(src)
    for k, v in src.items():
        assert np.asarray(ms['encoder.' + k]).tobytes() == np.asarray(v).tobytes(), k
    params = dict(tree_util.flatten_names(checkpoint.restore_params(
        os.path.join(tmp_path / 'full', 'checkpoints'), 6, key_path=('params',))))
    assert set(params) == {'head.kernel', 'head.bias'}


def _with_pre(data_dir, pre_dir):
    c = _loop_config(data_dir)
    c.pretrained.workdir = pre_dir
    return c


# ------------------------------------------------------------------------------------------
# (5) config errors and recipes.


def test_config_errors_name_the_field():
    c = finetune_defaults()
    c.model.name = 'vit_demo_patch4_32'
    c.probe = 'lin'
    with pytest.raises(ValueError, match=r"config\.probe='lin'.*'linear'"):
        check_config(c)
    c.probe = 'linear'
    c.optim.layer_decay = 0.75
    with pytest.raises(ValueError, match=r'config\.optim\.layer_decay=0\.75.*must be 1\.0'):
        check_config(c)
    c.optim.layer_decay = 1.0
    check_config(c)
    c.optim.name = 'lasr'
    with pytest.raises(ValueError, match=r"config\.optim\.name='lasr'.*'adamw', 'lars'.*did you mean 'lars'"):
        check_config(c)
    p = pretrain_defaults('mae')
    p.optim.name = 'sgd'
    with pytest.raises(ValueError, match=r'config\.optim\.name'):
        check_config(p)
    params = _tree(0)
    with pytest.raises(ValueError, match=r"optim\.name must be one of \('adamw', 'lars'\), got 'sgd'"):
        optim.build_optimizer(dict(_lars_config(0.1, 0, 5), name='sgd'), params, 5)
    with pytest.raises(ValueError, match=r'config\.optim\.momentum must be in \[0, 1\)'):
        optim.build_optimizer(dict(_lars_config(0.1, 0, 5), momentum=1.0), params, 5)
    with pytest.raises(ValueError, match=r'config\.optim\.trust_coefficient must be > 0'):
        optim.build_optimizer(dict(_lars_config(0.1, 0, 5), trust_coefficient=0.0), params, 5)
    with pytest.raises(ValueError, match=r"linprobe needs a fine-tuning config"):
        recipes.linprobe(pretrain_defaults('mae'))
    with pytest.raises(ValueError, match=r"variant must be one of"):
        load_config_file(f'{DEMO}:resnet')


def test_default_adamw_is_unchanged_by_the_optimizer_name():
    """``optim.name='adamw'`` (the default) builds the same chain as a config without the field."""
    params = _tree(2)
    base = dict(base_lr=1e-3, warmup_lr=0.0, min_lr=0.0, weight_decay=0.05, warmup_steps=1, schedule='cosine')
    a, _ = optim.build_optimizer(base, params, 4)
    b, _ = optim.build_optimizer(dict(base, name='adamw'), params, 4)
    pa = pb = jax.tree.map(jnp.asarray, params)
    sa, sb = a.init(params), b.init(params)
    for t in range(3):
        g = jax.tree.map(jnp.asarray, _tree(300 + t))
        ua, sa = a.update(g, sa, pa)
        ub, sb = b.update(g, sb, pb)
        pa, pb = optax.apply_updates(pa, ua), optax.apply_updates(pb, ub)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), pa, pb)


def test_demo_variants_probe_the_demo_classifiers():
    """Each family's demo probe reads the classifier of that family's demo fine-tuning config, and
    its probe holds a (num_features, 10) head as its only parameters; the warm-up follows
    ``--config.total_steps`` (a ninth of it, MAE's 10 of 90 epochs)."""
    finetune = {'vit': 'finetune_vit_fmnist.py', 'swin': 'finetune_swin_fmnist.py', 'pvt': 'finetune_pvt_fmnist.py',
                'hivit': 'finetune_hivit_fmnist.py', 'greenmim_swin': 'finetune_greenmim_fmnist.py',
                'groupmixformer': 'groupmixformer_fmnist.py'}
    for variant, path in finetune.items():
        c = load_config_file(f'{DEMO}:{variant}')
        check_config(c)
        assert c.model.name == load_config_file(os.path.join(ROOT, 'configs/demo', path)).model.name
        assert (c.probe, c.optim.name, c.batch_size, c.accum_steps, c.pretrained.required) == ('linear', 'lars', 256, 1, True)
        c.total_steps = 300
        assert c.optim.warmup_steps == 33 and c.to_dict()['optim']['warmup_steps'] == 33
        _, abstract = probe.prepare(c, functools.partial(rundir.build_model, c), None)
        params = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
        assert list(params) == ['head'], variant
        assert params['head']['kernel'].shape == (abstract.encoder.num_features, 10)


def test_imagenet_linprobe_configs_follow_mae():
    """MAE's recipe in every ImageNet probe config: blr 0.1 x 16384 / 256 = lr 6.4, 90 epochs of
    1,281,167 // 16384 = 78 iterations, 10 warm-up epochs, LARS without weight decay."""
    specs = [('configs/linprobe/mae_vit_base.py', 'vit_base_patch16_224'),
             ('configs/linprobe/mae_hivit_base.py', 'hivit_base'),
             ('configs/linprobe/ummae.py:pvt_small_256', 'pvt_small_256'),
             ('configs/linprobe/ummae.py:swin_tiny_256', 'swin_tiny_256')]
    for spec, model in specs:
        c = load_config_file(os.path.join(ROOT, spec))
        check_config(c)
        assert c.model.name == model and c.probe == 'linear'
        assert (c.batch_size, c.total_steps, c.optim.warmup_steps) == (16384, 90 * 78, 10 * 78)
        assert c.batch_size % c.accum_steps == 0
        ocfg = optim.scaled_optim_config(c.optim.to_dict(), c.batch_size)
        assert ocfg['base_lr'] == pytest.approx(6.4) and ocfg['min_lr'] == 0.0
        assert (c.optim.name, c.optim.weight_decay, c.optim.momentum, c.optim.clip_grad) == ('lars', 0.0, 0.9, 0.0)
        assert (c.label_smoothing, c.mixup.mixup_alpha, c.mixup.cutmix_alpha, c.data.reprob) == (0.0, 0.0, 0.0, 0.0)
        assert c.data.auto_augment == '' and c.data.crop_scale == (0.08, 1.0) and c.data.hflip
    assert load_config_file(os.path.join(ROOT, specs[0][0])).model.overrides.global_pool is False
