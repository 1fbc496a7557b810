"""``jaxmim.summary``: multiply-add counts against written-out formulas and published tables."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxmim.registry import create_model
from jaxmim.summary import count_macs, summarize


def test_matmul_and_conv_macs_follow_their_formulas():
    a = jax.ShapeDtypeStruct((3, 5, 7), jnp.float32)
    b = jax.ShapeDtypeStruct((7, 11), jnp.float32)
    assert count_macs(lambda x, y: x @ y, a, b) == 3 * 5 * 11 * 7
    # batched attention-style einsum: (B, H, N, D) x (B, H, M, D) -> (B, H, N, M)
    q = jax.ShapeDtypeStruct((2, 4, 9, 8), jnp.float32)
    k = jax.ShapeDtypeStruct((2, 4, 6, 8), jnp.float32)
    assert count_macs(lambda x, y: jnp.einsum('bhnd,bhmd->bhnm', x, y), q, k) == 2 * 4 * 9 * 6 * 8
    # NHWC conv, 3x3, stride 2, padding 1, 6 -> 10 channels, 2 groups
    x = jax.ShapeDtypeStruct((2, 16, 16, 6), jnp.float32)
    w = jax.ShapeDtypeStruct((3, 3, 3, 10), jnp.float32)  # HWIO with I = 6 / groups

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                            feature_group_count=2)
    assert count_macs(conv, x, w) == 2 * 8 * 8 * 10 * (3 * 3 * 3)
    # element-wise work is not counted; scan multiplies by its length; jit nests
    assert count_macs(lambda x: jnp.exp(x) * 2 + 1, a) == 0

    def scanned(x, y):
        return jax.lax.scan(lambda c, _: (jax.jit(lambda u: u @ y)(c), None), x, None, length=4)[0]
    sq = jax.ShapeDtypeStruct((5, 5), jnp.float32)
    assert count_macs(scanned, sq, sq) == 4 * 5 * 5 * 5


@pytest.mark.parametrize('name,params,gmacs', [
    # Liu et al. 2021, Table 1 (Swin-T 28M / 4.5G) and timm's exact count; Dosovitskiy et al. /
    # DeiT Table 1 (ViT-B/16 86.6M, 17.6G multiply-adds at 224 px).
    ('swin_tiny_patch4_window7_224', 28_288_354, 4.5),
    ('vit_base_patch16_224', 86_567_656, 17.6),
])
def test_published_sizes(name, params, gmacs):
    model = nnx.eval_shape(lambda: create_model(name))
    s = summarize(model, 224)
    assert s['params'] == params
    assert s['macs'] / 1e9 == pytest.approx(gmacs, rel=0.01)
    # rows are disjoint and add up to the total
    assert sum(r['macs'] for r in s['rows']) == s['macs']
    assert sum(r['params'] for r in s['rows']) == s['params']


def test_stage_rows_follow_call_order_and_shapes():
    model = nnx.eval_shape(lambda: create_model('swin_demo_patch4_window4_32', num_classes=10))
    s = summarize(model, 32, batch_size=2)
    names = [r['name'] for r in s['rows']]
    assert names[:2] == ['patch_embed', 'layers.0'] and names[-1] == 'head'
    assert s['rows'][0]['output'] == '(2, 8, 8, 64)'
    # the head is one (B, width) x (width, 10) product
    head = s['rows'][-1]
    width = model.head.kernel.shape[0]
    assert head['macs'] == 2 * width * 10


@pytest.mark.parametrize('name', [n for n in __import__('jaxmim').list_models()
                                  if __import__('jaxmim').registry.model_data_defaults(n)['image_size'] <= 64])
def test_every_small_registered_model_is_summarised(name):
    """Every demo-size variant of every family (classifiers, masked-input encoders, pre-training
    models) traces; its rows add up to its total."""
    from jaxmim.registry import model_data_defaults
    model = nnx.eval_shape(lambda: create_model(name))
    s = summarize(model, int(model_data_defaults(name)['image_size']))
    assert s['macs'] > 0 and sum(r['macs'] for r in s['rows']) == s['macs']
    assert sum(r['params'] for r in s['rows']) == s['params'] > 0


def test_cli_prints_a_table_for_a_pretraining_model():
    out = subprocess.run([sys.executable, '-m', 'jaxmim.summary', 'simmim_swin_demo_patch4_window4_32'],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert 'layers.0' in out.stdout and 'total' in out.stdout
    bad = subprocess.run([sys.executable, '-m', 'jaxmim.summary', 'swin_tiny'], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode != 0 and "unknown model 'swin_tiny'; close names" in bad.stderr
