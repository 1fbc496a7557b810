"""Mixed precision (``config.compute_dtype='bfloat16'``): bf16 compute, float32 master weights.

A tiny SimMIM Swin and a tiny ViT classifier train 12 steps on a fixed batch in float32 and in
bfloat16 from the same initialisation: the weights and optimizer state stay float32, the step's
matrix products run in bf16, and every step's loss stays within 1 % of the float32 run (bf16
keeps 8 bits of mantissa, ~0.4 % relative error per product; measured here the 12-step
trajectories differ by at most 0.07 %).

Per family (issue 26): the demo config of every family (``FAMILIES``) trains 50 steps on the first
8 Fashion-MNIST training images, in float32 and in bfloat16 from the same initialisation and the
same per-step masks, at the config's own learning rate for batch 8 (its linear scaling rule), and
every step's loss, the 50th included, stays within 0.5 % of float32. Measured (2-core CPU, jax
0.10.2; the README's table): largest gap over the 50 steps 0.02 % (SimMIM Swin), 0.18 % (MAE ViT),
0.11 % (UM-MAE PVT), 0.11 % (GreenMIM Swin), 0.04 % (MAE HiViT), 0.02 % (SimMIM GroupMixFormer), 0.38 % (supervised GroupMixFormer).
The images reach the model in float32 (its first layer casts them, ``jaxmim.layers.images_to``), so
the reconstruction targets are made from float32 images. At the demo's batch-128 learning rate on 8
images the trajectories turn chaotic after ~35 steps: float32 against float32 on the same images
rounded to bf16 already differs by up to 6 %, so that regime cannot tell a precision defect from
chance.

GroupMixFormer keeps bf16 through its BatchNorms (statistics in float32, output in the input's
dtype; ``tests/test_bf16_groupmixformer.py``).
"""

import functools
import glob
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax.extend import core as jex_core

import families
from jaxmim import rundir, steps
from jaxmim import mesh as mesh_lib
from jaxmim.config import load_config_file
from jaxmim.data.fashion_mnist import DEFAULT_MANUAL_DIR, read_idx_images
from jaxmim.methods import create_mim_model
from jaxmim.registry import create_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12
FAST_COMPILE = {'xla_backend_optimization_level': 0}
"""Compiler options of every step compiled here: LLVM without optimisation halves XLA:CPU's compile time
(Swin SimMIM 34 -> 14 s of CPU for both steps; GroupMixFormer 75 -> 41 s) and doubles the steps' run
time (3.7 -> 7.4 s for 2 x 50 steps). The HLO passes, and so the precision of every operation, are the
training step's; the losses differ from the default build by ~1e-7 relative."""


def _run(model_fn, loss_fn, cfg, batch):
    mesh = mesh_lib.make_mesh(jax.devices()[:1])
    trainer, state = steps.make_trainer(model_fn(), loss_fn, cfg, mesh)
    batch = mesh_lib.global_batch(batch, mesh_lib.batch_sharding(mesh))
    lowered = trainer.train_step.lower(state, batch)
    text, step = lowered.as_text(), lowered.compile(compiler_options=FAST_COMPILE)
    losses = []
    for _ in range(STEPS):
        state, metrics = step(state, batch)
        losses.append(float(metrics['loss']))
    dtypes = {x.dtype for x in jax.tree.leaves(state['params']) + jax.tree.leaves(state['opt_state'])
              if hasattr(x, 'dtype') and jnp.issubdtype(x.dtype, jnp.floating)}
    return np.array(losses), dtypes, text


def _compare(model_fn, loss_fn, cfg, batch):
    cfg.compute_dtype = 'float32'
    ref, ref_dtypes, ref_text = _run(model_fn, loss_fn, cfg, batch)
    cfg.compute_dtype = 'bfloat16'
    low, dtypes, text = _run(model_fn, loss_fn, cfg, batch)
    assert ref_dtypes == dtypes == {jnp.dtype(jnp.float32)}           # master weights and AdamW moments
    assert 'bf16' in text and 'bf16' not in ref_text                   # the compute really is bf16
    assert ref[-1] < 0.9 * ref[0]                                      # both runs learn
    np.testing.assert_allclose(low, ref, rtol=0.01)
    return ref, low


def test_bf16_simmim_pretraining_tracks_float32():
    cfg = load_config_file(os.path.join(ROOT, 'configs/demo/simmim_swin_fmnist.py'))
    cfg.batch_size, cfg.total_steps, cfg.optim.warmup_steps = 8, 100, 1
    cfg.optim.lr_scale_batch, cfg.optim.base_lr = 0, 2e-3     # no batch scaling: learn within 12 steps
    images = np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype(np.float32)
    make = lambda: create_mim_model(cfg.method.to_dict(), cfg.model.name,   # noqa: E731
                                    overrides=dict(embed_dim=16, num_heads=(1, 2, 4)))
    _compare(make, steps.mim_loss, cfg, {'image': images})


def test_bf16_targets_come_from_float32_images():
    """Under bf16 the loss sees the float32 images (the MAE target, the per-patch normalised pixels,
    is made from them, as under official autocast) while the model computes in bf16 from its first
    layer: the bf16 step's target equals the target written out from the float32 images, and differs
    from the one of the images rounded to bf16."""
    from jaxmim import layers as L
    from jaxmim.methods.mae.vit import norm_pix_target
    cfg = load_config_file(os.path.join(ROOT, 'configs/demo/mae_vit_fmnist.py'))
    images = (np.random.default_rng(2).normal(size=(2, 32, 32, 3)) * 3 + 0.1).astype(np.float32)
    model = create_mim_model(cfg.method.to_dict(), cfg.model.name, overrides=dict(embed_dim=16, depth=1, num_heads=2))
    graphdef, params, model_state = rundir.split_variables(model)
    seen = {}

    def loss_fn(m, b, rng):
        seen['image'] = b['image'].dtype
        seen['first_layer'] = m.patch_embed.proj.kernel[...].dtype
        return steps.mim_loss(m, b, rng)

    steps.accumulate_gradients(graphdef, loss_fn, params, model_state, {'image': jnp.asarray(images)},
                               jax.random.key(0), compute_dtype=jnp.bfloat16)
    assert seen == {'image': jnp.dtype(jnp.float32), 'first_layer': jnp.dtype(jnp.bfloat16)}
    # the MAE target (per-patch normalised, unbiased variance, eps 1e-6) from the float32 images
    p = model.patch_size
    patches = images.reshape(2, 32 // p, p, 32 // p, p, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, -1, p * p * 3)
    f64 = patches.astype(np.float64)
    want = (f64 - f64.mean(-1, keepdims=True)) / np.sqrt(f64.var(-1, ddof=1, keepdims=True) + 1e-6)
    got = np.asarray(norm_pix_target(L.patchify(jnp.asarray(images), p)), np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # what the images rounded to bf16 (the step's input before) would have given: off by > 1e-3
    rounded = np.asarray(norm_pix_target(L.patchify(jnp.asarray(images).astype(jnp.bfloat16), p)
                                         .astype(jnp.float32)), np.float64)
    assert np.abs(rounded - want).max() > 1e-3


def test_bf16_classifier_tracks_float32():
    cfg = load_config_file(os.path.join(ROOT, 'configs/demo/finetune_vit_fmnist.py') + ':scratch')
    cfg.batch_size, cfg.total_steps, cfg.optim.warmup_steps = 8, 100, 1
    cfg.label_smoothing = 0.0
    cfg.optim.lr_scale_batch, cfg.optim.base_lr = 0, 1e-3
    rng = np.random.default_rng(1)
    batch = {'image': rng.normal(size=(8, 32, 32, 3)).astype(np.float32),
             'label': np.arange(8, dtype=np.int32) % 10}
    loss_fn = lambda m, b, r: steps.classification_loss(m, b, r, label_smoothing=0.0, num_classes=10)  # noqa: E731
    _compare(lambda: create_model(cfg.model.name, num_classes=10, embed_dim=32, depth=2, num_heads=2,
                                  drop_path_rate=0.0), loss_fn, cfg, batch)


def test_unknown_compute_dtype_is_refused():
    from jaxmim.config import check_config
    cfg = load_config_file(os.path.join(ROOT, 'configs/demo/simmim_swin_fmnist.py'))
    cfg.compute_dtype = 'float16'
    with pytest.raises(ValueError, match="compute_dtype must be one of \\['float32', 'bfloat16'\\]"):
        check_config(cfg)


# ----------------------------------------------------------------------------------------
# Every family's demo config, 50 steps (issue 26: bf16 is the accelerator configs' default).
# ----------------------------------------------------------------------------------------

FAMILIES = dict(families.FAMILY_DEMOS, groupmixformer_simmim='configs/demo/simmim_groupmixformer_fmnist.py')
"""Family -> demo config (32 px, Fashion-MNIST): the six of ``tests/families.py`` plus SimMIM
pre-training of GroupMixFormer."""
FAMILY_STEPS, FAMILY_BATCH, FAMILY_RTOL = 50, 8, 0.005


def _fmnist_images(n: int, mean, std) -> np.ndarray:
    """The first ``n`` Fashion-MNIST training images as the demos feed them: ``(n, 32, 32, 3)``
    float32, bilinear resize from 28 px, grey repeated to RGB, normalised by ``mean`` / ``std``."""
    path = os.path.join(DEFAULT_MANUAL_DIR, 'train-images-idx3-ubyte.gz')
    if not os.path.exists(path):
        pytest.skip(f'{path} missing (make data)')
    raw = read_idx_images(path)[:n].astype(np.float32) / 255.0
    grey = np.asarray(jax.image.resize(raw, (n, 32, 32), 'bilinear'))
    return ((np.repeat(grey[..., None], 3, -1) - np.array(mean)) / np.array(std)).astype(np.float32)


def _matmul_flops_by_dtype(jaxpr, acc: dict | None = None) -> dict:
    """FLOPs of the matrix products (``dot_general``) and convolutions of a jaxpr, sub-jaxprs
    included, keyed by operand dtypes (``'bfloat16'`` when both are bf16, else ``'lhs/rhs'``).
    A product of ``out`` elements costs ``2 * out * contraction`` (a convolution's contraction:
    the kernel's size over its output features)."""
    acc = {} if acc is None else acc
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in ('dot_general', 'conv_general_dilated'):
            lhs, rhs = (v.aval for v in eqn.invars[:2])
            out = math.prod(eqn.outvars[0].aval.shape)
            if name == 'dot_general':
                (contract, _), _ = eqn.params['dimension_numbers']
                flops = 2 * out * math.prod(lhs.shape[i] for i in contract)
            else:
                flops = 2 * out * math.prod(rhs.shape) // rhs.shape[eqn.params['dimension_numbers'].rhs_spec[0]]
            key = 'bfloat16' if lhs.dtype == rhs.dtype == jnp.bfloat16 else f'{lhs.dtype}/{rhs.dtype}'
            acc[key] = acc.get(key, 0) + flops
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(sub, jex_core.ClosedJaxpr):
                    _matmul_flops_by_dtype(sub.jaxpr, acc)
                elif isinstance(sub, jex_core.Jaxpr):
                    _matmul_flops_by_dtype(sub, acc)
    return acc


def _family_run(cfg, batch):
    """50 train steps of ``cfg`` on one CPU device, built as the training loop builds them (compiled
    with ``FAST_COMPILE``); returns the losses, the float dtypes of the weights and optimizer state,
    and the bf16 share of the step's matrix-product FLOPs (:func:`_matmul_flops_by_dtype`)."""
    mesh = mesh_lib.make_mesh(jax.devices('cpu')[:1])
    model = rundir.build_model(cfg)
    if cfg.mode == 'pretrain':
        loss_fn, transform = steps.mim_loss, None
    else:
        loss_fn = functools.partial(steps.classification_loss, label_smoothing=cfg.label_smoothing,
                                    num_classes=model.num_classes)
        transform = steps.make_mixup_transform(cfg, model.num_classes, mesh)
    trainer, state = steps.make_trainer(model, loss_fn, cfg, mesh, batch_transform=transform)
    batch = mesh_lib.global_batch(batch, mesh_lib.batch_sharding(mesh))
    traced = trainer.train_step.trace(state, batch)        # traced once: the jaxpr and the compiled step
    flops = _matmul_flops_by_dtype(traced.jaxpr.jaxpr)
    step = traced.lower().compile(compiler_options=FAST_COMPILE)
    losses = []
    for _ in range(FAMILY_STEPS):
        state, metrics = step(state, batch)
        losses.append(float(metrics['loss']))
    dtypes = {x.dtype for x in jax.tree.leaves(state['params']) + jax.tree.leaves(state['opt_state'])
              if jnp.issubdtype(x.dtype, jnp.floating)}
    return np.array(losses), dtypes, flops.get('bfloat16', 0) / sum(flops.values())


GROUPMIXFORMER_FAMILIES = ('groupmixformer', 'groupmixformer_simmim')
"""Checked in ``tests/test_bf16_groupmixformer.py`` (their compilation is the slowest: a file of
their own lets the two test workers share the load)."""


@pytest.mark.parametrize('family', [f for f in FAMILIES if f not in GROUPMIXFORMER_FAMILIES])
def test_bf16_family_tracks_float32(family):
    """See :func:`check_family_tracks_float32`."""
    check_family_tracks_float32(family)


def check_family_tracks_float32(family):
    """The family's demo config, batch 8, 50 steps in float32 then bfloat16: weights and AdamW
    moments float32 in both; in bf16 >= 90 % of the matrix-product FLOPs have bf16 operands; every step's loss within 0.5 % of float32; the run learns."""
    cfg = load_config_file(os.path.join(ROOT, FAMILIES[family]))
    assert cfg.compute_dtype == 'float32'           # the demos stay float32 (bf16 is emulated on CPU)
    cfg.batch_size = FAMILY_BATCH                   # the config's lr scaling rule gives its batch-8 lr
    images = _fmnist_images(FAMILY_BATCH, cfg.data.mean, cfg.data.std)
    batch = {'image': images} if cfg.mode == 'pretrain' else \
        {'image': images, 'label': np.arange(FAMILY_BATCH, dtype=np.int32) % 10}
    ref, ref_dtypes, ref_share = _family_run(cfg, batch)
    cfg.compute_dtype = 'bfloat16'
    low, dtypes, share = _family_run(cfg, batch)
    gaps = np.abs(low - ref) / ref
    print(f'{family}: float32 {ref[0]:.4f} -> {ref[-1]:.4f}; bf16 gap at step {FAMILY_STEPS} '
          f'{100 * gaps[-1]:.3f} %, largest {100 * gaps.max():.3f} %; bf16 FLOP share {share:.3f}')
    assert ref_dtypes == dtypes == {jnp.dtype(jnp.float32)}
    assert ref_share == 0.0
    assert share >= 0.9, share   # the rest: float32 reductions written as products (gradient norm)
    assert ref[-5:].mean() < 0.99 * ref[:5].mean()     # it trains (SimMIM GroupMixFormer: -2 %)
    np.testing.assert_allclose(low, ref, rtol=FAMILY_RTOL)


def test_accelerator_configs_default_to_bf16():
    """Every ImageNet config (``configs/{pretrain,finetune,supervised}``) computes in bfloat16 by
    default; every Fashion-MNIST demo (CPU, where bf16 is emulated and slower) in float32."""
    for pattern, expected in (('configs/pretrain/*.py', 'bfloat16'), ('configs/finetune/*.py', 'bfloat16'),
                              ('configs/supervised/*.py', 'bfloat16'), ('configs/demo/*.py', 'float32')):
        paths = sorted(glob.glob(os.path.join(ROOT, pattern)))
        assert paths, pattern
        for path in paths:
            assert load_config_file(path).compute_dtype == expected, path


def test_matmul_flops_counts_products_and_convolutions():
    """``_matmul_flops_by_dtype`` against the formulas written out: a batched product (B, M, K) x
    (K, N) costs 2 B M N K; a 3x3 convolution of C -> O channels on an H x W output 2 B H W O 9 C
    (grouped: C / groups per output), also inside a nested jit; keyed by operand dtypes."""
    def f(a, k, x, w, wd):
        y = jnp.einsum('bmk,kn->bmn', a, k)
        dn = ('NHWC', 'HWIO', 'NHWC')
        z = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=dn))(x, w)
        d = jax.lax.conv_general_dilated(x, wd, (1, 1), 'SAME', dimension_numbers=dn, feature_group_count=4)
        return y, z, d

    args = (jnp.zeros((2, 3, 5), jnp.bfloat16), jnp.zeros((5, 7), jnp.bfloat16), jnp.zeros((2, 6, 6, 4)),
            jnp.zeros((3, 3, 4, 8)), jnp.zeros((3, 3, 1, 4)))
    flops = _matmul_flops_by_dtype(jax.make_jaxpr(f)(*args).jaxpr)
    assert flops == {'bfloat16': 2 * 2 * 3 * 7 * 5,
                     'float32/float32': 2 * 2 * 6 * 6 * 8 * 9 * 4 + 2 * 2 * 6 * 6 * 4 * 9 * 1}
