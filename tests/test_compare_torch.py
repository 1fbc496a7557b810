"""The JAX-vs-PyTorch comparison: twins built from jaxmim models, and the benchmark's columns.

``convert.official.torch_twin`` builds the family's PyTorch twin from a jaxmim model's own
attributes and loads its weights; the twin must compute what the JAX model computes (so the
benchmark compares the same work). ``jaxmim.benchmark --compare_torch`` then times both in one
loop; its ratio columns are checked against their definition (no timing assertion).
"""

import os

import numpy as np
import pytest
import torch
import jax
import jax.numpy as jnp

from convert import official
from jaxmim import benchmark
from jaxmim.methods import create_mim_model, method_config_defaults
from jaxmim.registry import create_model

from helpers import TINY_UM_SWIN, assert_close

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
X = np.random.RandomState(0).randn(2, 32, 32, 3).astype(np.float32)
X64 = np.random.RandomState(1).randn(2, 64, 64, 3).astype(np.float32)


@pytest.mark.parametrize('name,source', [('swin_demo_patch4_window4_32', 'simmim_swin'),
                                         ('vit_demo_patch4_32', 'mae_vit_cls')])
def test_classifier_twin_computes_the_jax_logits(name, source):
    model = create_model(name, num_classes=7, drop_path_rate=0.3, seed=3)
    twin, src = official.torch_twin(model)
    assert src == source
    # the twin carries the model's configuration, stochastic depth included
    assert max(m.drop_prob for m in twin.modules() if hasattr(m, 'drop_prob')) == pytest.approx(0.3)
    logits = np.asarray(model(jnp.asarray(X), train=False))
    with torch.no_grad():
        ref = twin.eval()(torch.from_numpy(X.transpose(0, 3, 1, 2))).numpy()
    assert logits.shape == ref.shape == (2, 7)
    assert_close(logits, ref, rel=1e-5)


@pytest.mark.parametrize('method,name,block', [
    ('simmim', 'simmim_swin_demo_patch4_window4_32', dict(encoder_stride=16, mask_patch_size=8)),
    ('mae', 'mae_vit_demo_patch4_32_dec128d2b', dict(mask_ratio=0.5, norm_pix_loss=True)),
    ('mae', 'mae_hivit_demo_patch4_32_dec128d2b', dict(mask_ratio=0.75, norm_pix_loss=True)),
    ('ummae', 'mae_swin_tiny_256', dict(norm_pix_loss=True)),
])
def test_pretraining_twin_computes_the_jax_loss_on_the_same_masks(method, name, block):
    # UM-MAE Swin: Swin-T's layout at 64 px (stride 8: an 8 x 8 unit grid), Secondary Masking on
    overrides = dict(TINY_UM_SWIN, stride=8, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2,
                     vis_mask_ratio=0.25, norm_pix_loss=True) if method == 'ummae' else None
    model = create_mim_model(dict(method_config_defaults(method), name=method, **block), name, overrides=overrides)
    x = X64 if method == 'ummae' else X
    twin, _ = official.torch_twin(model)
    inputs = model.host_inputs(np.random.default_rng(1), 2)
    loss = float(model(jnp.asarray(x), train=False, rng=None, **inputs)['loss'])
    with torch.no_grad():
        out = twin.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2)), **{k: torch.from_numpy(v) for k, v in inputs.items()})
    ref = float(out['loss'] if isinstance(out, dict) else out)
    assert loss == pytest.approx(ref, rel=1e-5)


def test_torch_twin_refuses_a_model_without_a_family():
    class NotAModel:
        pass
    with pytest.raises(LookupError, match='no conversion source'):
        official.torch_twin(NotAModel())


def test_benchmark_reports_both_frameworks_and_their_ratio():
    from jaxmim.config import load_config_file
    config = load_config_file(os.path.join(ROOT, 'configs/demo/mae_vit_fmnist.py'))
    previous = jax.config.read('jax_disable_most_optimizations')
    jax.config.update('jax_disable_most_optimizations', True)
    try:
        rows = benchmark.run_benchmark(config, steps=2, warmup=0, batch_size=8, num_classes=10, kinds=['pretrain'],
                                       compare_torch=True, torch_compile=False)
    finally:
        jax.config.update('jax_disable_most_optimizations', previous)
    (row,) = rows
    assert row['torch_source'] == 'mae_vit'
    assert row['torch_eager_img_s'] > 0
    assert row['jax_over_torch_eager'] == pytest.approx(row['img_s'] / row['torch_eager_img_s'])
    assert row['torch_compile_img_s'] is None and row['jax_over_torch_compile'] is None
    table = benchmark.format_table(rows)
    assert 'JAX/eager' in table and f"{row['jax_over_torch_eager']:.2f}x" in table
    assert row['torch_eager_first_step_s'] > 0
    assert row['torch_eager_memory_gib'] is None     # CPU: no CUDA allocator to read


def _demo_config():
    from jaxmim.config import load_config_file
    return load_config_file(os.path.join(ROOT, 'configs/demo/simmim_swin_fmnist.py'))


def _twin_step(compute_dtype):
    from jaxmim.torch_compare import TorchStep
    config = _demo_config()
    config.compute_dtype = compute_dtype
    model = create_mim_model(dict(config.method.to_dict()), config.model.name)
    twin, _ = official.torch_twin(model)
    torch.manual_seed(0)
    inputs = model.host_inputs(np.random.default_rng(1), 2)
    return TorchStep(twin, config, X, np.zeros(2, np.int64), inputs), twin


def test_twin_step_runs_under_autocast_with_float32_master_weights():
    """With ``compute_dtype='bfloat16'`` the twin's step is mixed precision as the official
    ``--amp`` trainers run it: the matrix products in bfloat16 (a linear layer's output is
    bfloat16), the weights, their gradients and AdamW's moments float32, and the first loss within
    2 % of the float32 step's loss on the same weights and masks."""
    step32, _ = _twin_step('float32')
    loss32 = step32()
    step16, twin = _twin_step('bfloat16')
    assert step16.autocast_dtype is torch.bfloat16 and step32.autocast_dtype is None
    seen = []
    linear = next(m for m in twin.modules() if isinstance(m, torch.nn.Linear))
    handle = linear.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    loss16 = step16()
    handle.remove()
    assert seen and set(seen) == {torch.bfloat16}
    params = [p for p in twin.parameters() if p.grad is not None]
    assert params and all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in params)
    moments = [s['exp_avg'] for s in step16.opt.state.values()]
    assert moments and all(m.dtype == torch.float32 for m in moments)
    assert loss16 == pytest.approx(loss32, rel=0.02)
    assert step16.peak_memory_gib() is None
    with pytest.raises(ValueError, match="'cpu' or 'cuda'"):
        from jaxmim.torch_compare import TorchStep
        TorchStep(twin, _demo_config(), X, np.zeros(2), {}, device='tpu')
