"""The backbone / method protocol: a backbone and a method defined here, registered by decorator,
train through the real loops with no edit elsewhere; every variable collection (BatchNorm
statistics, EMA) is carried, saved, resumed and agrees across device counts.
"""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from helpers import run_interrupted
from jaxmim import train
from jaxmim import rundir, steps
from jaxmim import mesh as mesh_lib
from jaxmim.config import finetune_defaults, pretrain_defaults
from jaxmim.recipes import fashion_mnist_data
from jaxmim.methods import register_method
from jaxmim.registry import Backbone, create_model, register_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------------
# A backbone with BatchNorm and a masked-denoising method, both unknown to the library.
# ------------------------------------------------------------------------------------------

@register_model('test_bn_net_32', width=8, num_classes=10, data_defaults=dict(image_size=32, eval_crop_ratio=1.0))
class BNNet(nnx.Module, Backbone):
    """conv 4x4/4 -> BatchNorm -> ReLU -> conv 1x1 -> mean pool -> head. (B, 32, 32, 3) -> (B, classes)."""

    def __init__(self, width: int = 8, num_classes: int = 10, in_chans: int = 3, *, rngs: nnx.Rngs):
        self.in_chans, self.num_classes, self.img_size = in_chans, num_classes, 32
        # No conv bias before BatchNorm: its gradient is exactly 0 in theory, float noise in practice, and
        # Adam would amplify that noise into device-count-dependent updates.
        self.stem = nnx.Conv(in_chans, width, (4, 4), strides=4, padding='VALID', use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(width, momentum=0.9, epsilon=1e-5, rngs=rngs)
        self.mix = nnx.Conv(width, width, (1, 1), rngs=rngs)
        self.token = nnx.Param(jnp.ones((width,)) * 0.1)
        self.head = nnx.Linear(width, num_classes, rngs=rngs) if num_classes else None

    def features(self, x, train):
        h = jax.nn.relu(self.bn(self.stem(x), use_running_average=not train))
        return self.mix(h) + self.token[...]

    def __call__(self, x, *, train=False, rng=None):
        return self.head(self.features(x, train).mean(axis=(1, 2)))

    def no_weight_decay(self):
        return ('token',)

    def layer_id(self, name):
        return {'stem': 0, 'bn': 0, 'mix': 1}.get(name.split('.')[0], 2)

    @property
    def num_layer_ids(self):
        return 3


@register_method('test_masked_denoise')
class MaskedDenoise(nnx.Module, Backbone):
    """Zeroes the masked 4x4 patches and regresses their pixels from the BNNet features."""

    input_keys = ('mask',)

    @classmethod
    def config_defaults(cls):
        return {'mask_ratio': 0.5}

    @classmethod
    def build(cls, model_name, *, overrides, seed, mask_ratio):
        return cls(create_model(model_name, seed=seed, num_classes=0, **overrides), mask_ratio,
                   rngs=nnx.Rngs(seed + 1))

    def __init__(self, encoder, mask_ratio, *, rngs):
        self.encoder, self.mask_ratio = encoder, mask_ratio
        self.decoder = nnx.Linear(encoder.mix.out_features, 4 * 4 * 3, rngs=rngs)

    def sample_inputs(self, key, batch_size):
        noise = jax.random.uniform(key, (batch_size, 64))
        return {'mask': (jnp.argsort(jnp.argsort(noise, 1), 1) < 32).astype(jnp.int32).reshape(-1, 8, 8)}

    def host_inputs(self, rng, batch_size):
        out = np.zeros((batch_size, 64), np.int32)
        for b in range(batch_size):
            out[b, rng.permutation(64)[:32]] = 1
        return {'mask': out.reshape(-1, 8, 8)}

    def __call__(self, images, *, train=False, rng=None, mask):
        m = jnp.repeat(jnp.repeat(mask, 4, 1), 4, 2)[..., None].astype(images.dtype)
        pred = self.decoder(self.encoder.features(images * (1 - m), train))        # (B, 8, 8, 48)
        target = images.reshape(-1, 8, 4, 8, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(-1, 8, 8, 48)
        w = mask.astype(jnp.float32)[..., None]
        loss = (((pred - target) ** 2) * w).sum() / (w.sum() * 48)
        return {'loss': loss, 'pred': pred.reshape(-1, 64, 48), 'mask': mask.reshape(-1, 64)}

    def no_weight_decay(self):
        return tuple(f'encoder.{p}' for p in self.encoder.no_weight_decay())


def _data(cfg, data_dir):
    fashion_mnist_data(cfg.data, crop_scale=(0.8, 1.0))
    cfg.data.data_dir = data_dir
    cfg.data.cache = False
    cfg.data.shuffle_buffer = 500
    cfg.progress_bar = False
    cfg.log_every = 1
    return cfg


def finetune_cfg(data_dir, steps=4):
    cfg = _data(finetune_defaults(), data_dir)
    cfg.model.name = 'test_bn_net_32'
    cfg.batch_size = 16
    cfg.total_steps = steps
    cfg.checkpoint_every = 2
    cfg.eval_every = steps
    cfg.eval_batch_size = 400
    cfg.data.eval_split = 'test[:1000]'
    cfg.optim.update(dict(base_lr=1e-2, warmup_lr=1e-3, min_lr=1e-4, warmup_steps=1, lr_scale_batch=0,
                          layer_decay=0.5))
    return cfg


def pretrain_cfg(data_dir, steps=4, inputs_from='step'):
    cfg = _data(pretrain_defaults('test_masked_denoise'), data_dir)
    cfg.model.name = 'test_bn_net_32'
    cfg.method.inputs_from = inputs_from
    cfg.batch_size = 16
    cfg.total_steps = steps
    cfg.checkpoint_every = 2
    cfg.optim.update(dict(base_lr=1e-2, warmup_lr=1e-3, min_lr=1e-4, warmup_steps=1, lr_scale_batch=0))
    return cfg


# ------------------------------------------------------------------------------------------
# Tests.
# ------------------------------------------------------------------------------------------

def test_config_blocks_come_from_the_method():
    cfg = pretrain_defaults('test_masked_denoise')
    assert cfg.method.to_dict() == {'name': 'test_masked_denoise', 'inputs_from': 'step', 'mask_ratio': 0.5}
    with pytest.raises(AttributeError):
        cfg.method.mask_ratoi = 0.3                          # locked: a misspelt key stops at once
    loose = ml_collections.ConfigDict(cfg.to_dict())
    loose.method.encoder_stride = 32                         # a SimMIM key under another method
    from jaxmim.config import check_config
    with pytest.raises(ValueError, match=r"config.method.encoder_stride.*mask_ratio"):
        check_config(loose)
    with pytest.raises(KeyError, match='accepted'):
        pretrain_defaults('simmmim')


def test_data_defaults_come_from_the_model():
    from jaxmim.config import resolve_data_config
    cfg = finetune_defaults()
    cfg.model.name = 'test_bn_net_32'
    data = resolve_data_config(cfg)
    assert (data.image_size, data.eval_crop_ratio) == (32, 1.0)
    assert tuple(data.mean) == (0.485, 0.456, 0.406)
    cfg.data.image_size = 64                                  # an explicit value wins
    assert resolve_data_config(cfg).image_size == 64


def test_batch_norm_model_trains_resumes_and_agrees_across_devices(data_dir, tmp_path, monkeypatch):
    init = rundir.build_model(finetune_cfg(data_dir))
    init_mean = np.asarray(init.bn.mean[...])
    results = {}
    real_make_mesh = mesh_lib.make_mesh
    for n in (1, 8):
        monkeypatch.setattr(mesh_lib, 'make_mesh', lambda devices=None, mesh_config=None, n=n, f=real_make_mesh:
                            f(jax.devices('cpu')[:n], mesh_config))
        state, summary = train.finetune(finetune_cfg(data_dir), str(tmp_path / f'dev{n}'))
        results[n] = (jax.device_get(state), summary)
    (s1, sum1), (s8, sum8) = results[1], results[8]
    mean1 = s1['model_state']['bn']['mean']
    assert np.abs(mean1 - init_mean).max() > 1e-3                       # statistics were updated
    np.testing.assert_allclose(mean1, s8['model_state']['bn']['mean'], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(s1['model_state']['bn']['var'], s8['model_state']['bn']['var'], rtol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), s1['params'], s8['params'])
    assert sum1['final_eval']['top1'] == pytest.approx(sum8['final_eval']['top1'], abs=1e-6)

    # Saved and restored: the statistics of the checkpoint are the final state's.
    model = rundir.build_model(finetune_cfg(data_dir))
    assert rundir.restore_model(model, str(tmp_path / 'dev8')) == 4
    np.testing.assert_array_equal(np.asarray(model.bn.mean[...]), s8['model_state']['bn']['mean'])

    # Interrupted after step 2 (its data iterator raises), then resumed: identical to the full run.
    monkeypatch.undo()
    run_interrupted(monkeypatch, train,
                    lambda: train.finetune(finetune_cfg(data_dir), str(tmp_path / 'resumed')), 2)
    state, summary = train.finetune(finetune_cfg(data_dir), str(tmp_path / 'resumed'))
    assert summary['start_step'] == 2
    state = jax.device_get(state)
    np.testing.assert_allclose(state['model_state']['bn']['mean'], s8['model_state']['bn']['mean'], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), state['params'], s8['params'])


def test_eval_uses_running_statistics(data_dir):
    model = rundir.build_model(finetune_cfg(data_dir))
    model.bn.mean[...] = jnp.full_like(model.bn.mean[...], 3.0)    # running statistics far from any batch's
    graphdef, params, model_state = rundir.split_variables(model)
    mesh = mesh_lib.make_mesh()
    step = steps.make_eval_step(graphdef, mesh)
    x = np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype(np.float32)
    batch = {'image': x, 'label': np.zeros(8, np.int32), 'mask': np.ones(8, np.float32)}
    out = step({'params': params, 'model_state': model_state}, mesh_lib.global_batch(batch, mesh_lib.batch_sharding(mesh)))
    # Expected: the same network written out in NumPy with the running mean 3 and var 1.
    k = np.asarray(model.stem.kernel[...]).reshape(48, -1)
    patches = x.reshape(8, 8, 4, 8, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(8, 8, 8, 48)
    h = patches @ k
    h = (h - 3.0) / np.sqrt(1.0 + 1e-5) * np.asarray(model.bn.scale[...]) + np.asarray(model.bn.bias[...])
    h = np.maximum(h, 0) @ np.asarray(model.mix.kernel[...]).reshape(8, 8) + np.asarray(model.mix.bias[...])
    h = (h + np.asarray(model.token[...])).mean(axis=(1, 2))
    logits = h @ np.asarray(model.head.kernel[...]) + np.asarray(model.head.bias[...])
    ce = -(logits[:, 0] - np.log(np.exp(logits).sum(-1)))
    np.testing.assert_allclose(float(out['loss']), ce.sum(), rtol=1e-4)


def test_masking_inputs_from_batch_or_step():
    model = rundir.build_model(ml_collections.ConfigDict(dict(
        mode='pretrain', seed=0, model=dict(name='test_bn_net_32', overrides={}),
        method=dict(name='test_masked_denoise', inputs_from='step', mask_ratio=0.5))))
    key = jax.random.key(3)
    images = jnp.zeros((4, 32, 32, 3))
    drawn = steps.masking_inputs(model, {'image': images}, key)
    np.testing.assert_array_equal(drawn['mask'], model.sample_inputs(key, 4)['mask'])
    given = model.host_inputs(np.random.default_rng(0), 4)
    taken = steps.masking_inputs(model, {'image': images, **given}, key)
    np.testing.assert_array_equal(taken['mask'], given['mask'])
    assert taken['mask'].sum() == 4 * 32 and drawn['mask'].sum() == 4 * 32
    with pytest.raises(ValueError, match='mask'):
        steps.masking_inputs(type('M', (), {'input_keys': ('mask', 'ids')})(), {'image': images, **given}, key)


@pytest.mark.parametrize('inputs_from', ['step', 'pipeline'])
def test_method_pretrains_through_the_real_loop(data_dir, tmp_path, inputs_from, monkeypatch):
    seen = []
    real_step = steps.make_trainer

    def recording(*a, **k):                 # record the batches the jitted step receives
        trainer, state = real_step(*a, **k)
        step = trainer.train_step

        def wrapped(state, batch):
            seen.append({k: np.asarray(v) for k, v in batch.items()})
            return step(state, batch)
        trainer.train_step = wrapped
        return trainer, state

    monkeypatch.setattr(steps, 'make_trainer', recording)
    state, summary = train.pretrain(pretrain_cfg(data_dir, 4, inputs_from), str(tmp_path))
    assert summary['compilations'] == 1 and len(summary['history']) == 4
    assert all(np.isfinite(h['loss']) for h in summary['history'])
    assert np.abs(np.asarray(state['model_state']['encoder']['bn']['mean'])).max() > 0
    if inputs_from == 'pipeline':
        model = rundir.build_model(pretrain_cfg(data_dir))
        for step, batch in enumerate(seen, start=1):
            want = model.host_inputs(np.random.default_rng((0, 0, step - 1)), 16)['mask']
            np.testing.assert_array_equal(batch['mask'], want)
    else:
        assert all('mask' not in b for b in seen)


def test_ema_and_weight_decay_patterns_follow_the_hooks():
    cfg = finetune_defaults()
    cfg.model.name = 'test_bn_net_32'
    cfg.batch_size = 8
    cfg.total_steps = 10
    cfg.ema_decay = 0.5
    cfg.optim.update(dict(base_lr=0.1, warmup_lr=0.1, min_lr=0.1, warmup_steps=0, lr_scale_batch=0,
                          weight_decay=0.5, clip_grad=0.0))
    model = rundir.build_model(cfg)
    trainer, state = steps.make_trainer(model, lambda m, b, r: (jnp.float32(0.0), {}), cfg, mesh_lib.make_mesh())
    history = [jax.device_get(state['params'])]
    ema = jax.device_get(state['ema']['params'])
    for _ in range(3):
        state, _ = trainer.train_step(state, mesh_lib.global_batch({'image': np.zeros((8, 32, 32, 3), np.float32)},
                                                                mesh_lib.batch_sharding(trainer.mesh)))
        history.append(jax.device_get(state['params']))
        ema = jax.tree.map(lambda e, p: 0.5 * e + 0.5 * p, ema, history[-1])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), jax.device_get(state['ema']['params']), ema)
    # Zero loss: only weight decay moves parameters. 'token' (hook) and 1-D / bias leaves stay put.
    np.testing.assert_array_equal(history[-1]['token'], history[0]['token'])
    np.testing.assert_array_equal(history[-1]['head']['bias'], history[0]['head']['bias'])
    np.testing.assert_allclose(history[-1]['head']['kernel'], history[0]['head']['kernel'] * (1 - 0.1 * 0.5) ** 3,
                               rtol=1e-5)


def test_loop_scales_lr_by_batch():
    # (scaled fields, reference batch) -> (base, warmup, min) lrs at batch 64, written out.
    cases = {(('base_lr', 'warmup_lr', 'min_lr'), 512): (1e-3 / 8, 1e-4 / 8, 1e-4 / 8),   # SimMIM
             (('base_lr',), 256): (1e-3 / 4, 1e-4, 1e-4)}                                # MAE
    for (fields, ref), (base, warm, low) in cases.items():
        cfg = finetune_defaults()
        cfg.model.name = 'test_bn_net_32'
        cfg.batch_size = 64
        cfg.total_steps = 100
        cfg.optim.update(dict(base_lr=1e-3, warmup_lr=1e-4, min_lr=1e-4, warmup_steps=10,
                              lr_scale_batch=ref, lr_scale_fields=fields, schedule='cosine'))
        trainer, _ = steps.make_trainer(rundir.build_model(cfg), lambda m, b, r: (0.0, {}), cfg, mesh_lib.make_mesh())
        # SimMIM's lagged schedule: step 0 runs at warmup_lr; step 11 at the cosine of t = 10.
        np.testing.assert_allclose(float(trainer.lr_fn(0)), warm, rtol=1e-6)
        np.testing.assert_allclose(float(trainer.lr_fn(11)),
                                   low + 0.5 * (base - low) * (1 + np.cos(np.pi * 10 / 100)), rtol=1e-5)


def test_nan_guard_stops_the_run_and_keeps_checkpoints(data_dir, tmp_path, monkeypatch):
    cfg = finetune_cfg(data_dir, steps=6)
    real = steps.classification_loss

    def poisoned(model, batch, rng, **kw):
        loss, metrics = real(model, batch, rng, **kw)
        return jnp.where(metrics['train_top1'] >= 0, jnp.nan, loss), metrics   # NaN from the start

    monkeypatch.setattr(steps, 'classification_loss', poisoned)
    cfg.log_every = 3
    # the first bad step is named; the guard is read at the step-2 checkpoint boundary, before
    # the save, so no non-finite state reaches the disk
    with pytest.raises(FloatingPointError, match='at step 1;'):
        train.finetune(cfg, str(tmp_path))
    ckpt = tmp_path / 'checkpoints'
    assert not ckpt.exists() or not [s for s in os.listdir(ckpt) if s.isdigit()]


def test_tiny_mae_pretraining_then_finetuning_through_the_cli(data_dir, tmp_path):
    """MAE pre-training then fine-tuning of a tiny ViT as a user runs them: ``python -m jaxmim.main``."""
    import json
    import subprocess
    import sys

    from jaxmim.models.pos_embed import get_2d_sincos_pos_embed

    enc = dict(embed_dim=32, depth=2, num_heads=2)
    common = [f'--config.data.data_dir={data_dir}', '--config.data.cache=False', '--config.data.shuffle_buffer=500',
              '--config.batch_size=16', '--config.total_steps=3', '--config.log_every=1',
              '--config.checkpoint_every=3', '--config.optim.warmup_steps=1']
    over = lambda d: [f'--config.model.overrides.{k}={v}' for k, v in d.items()]   # noqa: E731
    pre, ft = tmp_path / 'pre', tmp_path / 'ft'
    run = lambda args: subprocess.run([sys.executable, '-m', 'jaxmim.main', *args], cwd=ROOT,   # noqa: E731
                                      capture_output=True, text=True, timeout=600)
    proc = run(['--config=configs/demo/mae_vit_fmnist.py', f'--workdir={pre}', *common,
                *over(dict(enc, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2))])
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = json.load(open(pre / 'pretrain_summary.json'))['history']
    assert [h['step'] for h in history] == [1, 2, 3] and all(np.isfinite(h['loss']) for h in history)
    # MAE's per-iteration warm-up starts from lr 0.
    assert history[0]['lr'] == 0.0

    proc = run(['--config=configs/demo/finetune_vit_fmnist.py:pretrained', f'--workdir={ft}',
                f'--config.pretrained.workdir={pre}', '--config.eval_batch_size=400',
                '--config.data.eval_split=test[:800]', '--config.eval_every=3', *common, *over(enc)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'final eval:' in proc.stdout
    summary = json.load(open(ft / 'finetune_summary.json'))
    report = summary['pretrained']
    assert sorted(report['fresh']) == ['fc_norm.bias', 'fc_norm.scale', 'head.bias', 'head.kernel']
    assert {'norm.scale', 'mask_token', 'decoder_pred.kernel', 'decoder_pos_embed'} <= set(report['unused'])
    assert 'pos_embed' in report['loaded'] and summary['evals'][-1]['count'] == 800
    # The classifier started from the fixed sin-cos table of the MAE checkpoint (a buffer there, a
    # parameter here): at step 0 it equals MAE's formula; fine-tuning moved it by at most 3 lr steps.
    model = rundir.build_model(rundir.load_run_config(str(ft)))
    rundir.restore_model(model, str(ft))
    table = get_2d_sincos_pos_embed(32, 8, cls_token=True)[None]
    assert np.abs(np.asarray(model.pos_embed[...]) - table).max() < 0.05


def test_layer_decay_on_a_backbone_without_layer_ids_is_a_config_error():
    class NoIds(nnx.Module, Backbone):
        def __init__(self):
            self.w = nnx.Param(jnp.ones((2, 2)))

    cfg = finetune_defaults()
    cfg.optim.layer_decay = 0.75
    with pytest.raises(ValueError, match=r'config.optim.layer_decay=0.75: NoIds defines no layer ids'):
        steps.make_trainer(NoIds(), lambda m, b, r: (0.0, {}), cfg, mesh_lib.make_mesh())
