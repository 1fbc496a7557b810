"""The fine-tuning recipe in the train step: gradient accumulation equals one big batch, the EMA
equals its formula, evaluation counts every example once, and a tiny Fashion-MNIST run with the
whole recipe on (timm crop, RandAugment, random erasing, mixup / cutmix, smoothing, accumulation,
EMA) lowers the loss and compiles once."""

import os

import jax
import numpy as np
import pytest
from flax import nnx

from jaxmim import train
from jaxmim import rundir, steps
from jaxmim import mesh as mesh_lib
from jaxmim.config import check_config, load_config_file
from jaxmim.recipes import timm_recipe
from jaxmim.registry import Backbone, register_model


@register_model('test_recipe_net_32', width=8, num_classes=10, data_defaults=dict(image_size=32, eval_crop_ratio=1.0))
class RecipeNet(nnx.Module, Backbone):
    """conv 4x4/4 -> GELU -> conv 1x1 -> mean pool -> head; (B, 32, 32, 3) -> (B, classes). No
    BatchNorm, no randomness: its loss is a mean of per-example terms, so micro-batches can be
    compared with one big batch."""

    def __init__(self, width: int = 8, num_classes: int = 10, *, rngs: nnx.Rngs):
        self.num_classes, self.img_size = num_classes, 32
        self.stem = nnx.Conv(3, width, (4, 4), strides=4, padding='VALID', rngs=rngs)
        self.mix = nnx.Conv(width, width, (1, 1), rngs=rngs)
        self.head = nnx.Linear(width, num_classes, rngs=rngs)

    def __call__(self, x, *, train=False, rng=None):
        return self.head(self.mix(jax.nn.gelu(self.stem(x))).mean(axis=(1, 2)))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_ENC = dict(embed_dim=16, num_heads=(1, 2, 4), drop_path_rate=0.0)   # deterministic forward


def _cfg(data_dir=None, **kw):
    c = load_config_file(os.path.join(ROOT, 'configs/demo/finetune_swin_fmnist.py'))
    c.model.overrides = type(c.model.overrides)(TINY_ENC)
    c.data.data_dir = data_dir
    c.data.cache, c.data.shuffle_buffer = False, 1000
    c.progress_bar = False
    c.optim.lr_scale_batch = 0
    c.optim.warmup_steps = 2
    for k, v in kw.items():
        c[k] = v
    return c


def _batches(n, b=32, seed=0):
    rng = np.random.default_rng(seed)
    return [{'image': rng.normal(size=(b, 32, 32, 3)).astype(np.float32),
             'label': rng.integers(0, 10, b).astype(np.int32)} for _ in range(n)]


def _small(**kw):
    c = _cfg(**kw)
    c.model.name = 'test_recipe_net_32'
    c.model.overrides = type(c.model.overrides)()
    c.optim.layer_decay = 1.0
    return c


def _run_steps(cfg, batches, keep_params=False):
    mesh = mesh_lib.make_mesh(jax.devices('cpu'))   # the 8 fake CPU devices, whatever the default backend
    model = rundir.build_model(cfg)
    loss_fn = lambda m, b, r: steps.classification_loss(m, b, r, cfg.label_smoothing, model.num_classes)  # noqa: E731
    trainer, state = steps.make_trainer(model, loss_fn, cfg, mesh,
                                        batch_transform=steps.make_mixup_transform(cfg, model.num_classes, mesh))
    params, metrics = [jax.device_get(state['params'])], []
    for b in batches:
        state, m = trainer.train_step(state, mesh_lib.global_batch(b, mesh_lib.batch_sharding(mesh)))
        metrics.append(jax.device_get(m))
        if keep_params:
            params.append(jax.device_get(state['params']))
    return trainer, jax.device_get(state), metrics, params


def test_accumulation_equals_one_big_batch():
    assert len(jax.devices('cpu')) == 8
    batches = _batches(2)
    results = []
    for accum in (1, 4):
        cfg = _small(batch_size=32, accum_steps=accum)
        cfg.optim.clip_grad = 0.05             # active: the clip acts on the accumulated gradient
        cfg.mixup.mixup_alpha, cfg.mixup.cutmix_alpha = 0.8, 1.0   # mixed once, before the split
        check_config(cfg)
        trainer, state, metrics, _ = _run_steps(cfg, batches)
        assert trainer.train_step._cache_size() == 1
        results.append((state, metrics))
    (s1, m1), (s4, m4) = results
    assert all(m['grad_norm'] > 0.05 for m in m1)
    for a, b in zip(m1, m4):
        np.testing.assert_allclose(a['loss'], b['loss'], rtol=1e-5)
        np.testing.assert_allclose(a['grad_norm'], b['grad_norm'], rtol=1e-4)
    assert int(s4['step']) == 2                # one step = one optimizer update
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), s1['params'], s4['params'])
    with pytest.raises(ValueError, match='accum_steps'):
        check_config(_small(batch_size=32, accum_steps=3))


def test_ema_equals_its_formula():
    d = 0.9
    cfg = _small(batch_size=16, ema_decay=d)
    _, state, _, params = _run_steps(cfg, _batches(3, b=16), keep_params=True)
    p0, p1, p2, p3 = params
    want = jax.tree.map(lambda a, b, c, e: d ** 3 * a + (1 - d) * (d ** 2 * b + d * c + e), p0, p1, p2, p3)
    jax.tree.map(lambda got, w: np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-7), state['ema']['params'], want)
    assert not np.allclose(jax.tree.leaves(state['ema']['params'])[0], jax.tree.leaves(p3)[0])


def test_eval_counts_every_example_once(data_dir):
    from jaxmim.config import resolve_data_config
    from jaxmim.data import pipeline, read_idx_labels, FASHION_MNIST_DIR
    cfg = _cfg(data_dir)
    cfg.data.eval_split = 'test[:1000]'
    labels = []
    for b in pipeline.create_split(resolve_data_config(cfg), train=False, batch_size=48, seed=0):
        labels.append(b['label'][b['mask'] == 1])
    labels = np.concatenate(labels)
    assert len(labels) == 1000                               # 21 batches of 48 = 1008, 8 padded
    raw = read_idx_labels(os.path.join(FASHION_MNIST_DIR, 't10k-labels-idx1-ubyte.gz'))[:1000]
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.bincount(raw, minlength=10))


def test_tiny_recipe_run_lowers_loss_and_compiles_once(data_dir, tmp_path):
    cfg = _cfg(data_dir, batch_size=32, accum_steps=2, ema_decay=0.9, total_steps=30, log_every=1,
               eval_every=30, checkpoint_every=30, eval_batch_size=48)
    timm_recipe(cfg)
    cfg.data.image_size, cfg.data.eval_crop_ratio = 32, 1.0
    cfg.data.mean, cfg.data.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    cfg.data.eval_split = 'test[:500]'
    cfg.optim.base_lr = 3e-3
    check_config(cfg)
    _, summary = train.finetune(cfg, str(tmp_path))
    losses = [h['loss'] for h in summary['history']]
    assert len(losses) == 30
    # Mixed, smoothed targets keep the training loss noisy and high (over 30 steps its trend is
    # within the noise, and depends on the input order); the clean held-out loss starts at
    # ln 10 = 2.303 (a fresh head's logits are ~0) and must drop: that is the learning check.
    assert np.all(np.isfinite(losses)) and max(losses) < 3.0, losses
    assert summary['compilations'] == 1
    final = summary['final_eval']
    assert final['count'] == 500 and 'ema_top1' in final           # 500 is not a multiple of 48
    assert final['loss'] < np.log(10) - 0.05, final
