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

from helpers import assert_close

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
X = np.random.RandomState(0).randn(2, 32, 32, 3).astype(np.float32)


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
])
def test_pretraining_twin_computes_the_jax_loss_on_the_same_masks(method, name, block):
    model = create_mim_model(dict(method_config_defaults(method), name=method, **block), name)
    twin, _ = official.torch_twin(model)
    inputs = model.host_inputs(np.random.default_rng(1), 2)
    loss = float(model(jnp.asarray(X), train=False, rng=None, **inputs)['loss'])
    with torch.no_grad():
        out = twin.eval()(torch.from_numpy(X.transpose(0, 3, 1, 2)), **{k: torch.from_numpy(v) for k, v in inputs.items()})
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
