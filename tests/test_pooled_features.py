"""``Backbone.pooled_features``: the head's input of every classifier family, i.e. ``model(x) ==
head(pooled_features(x))`` written out with the head's own kernel and bias, and the width the
family documents."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmim  # noqa: F401  (registers the models)
from jaxmim import registry

CLASSIFIERS = ('vit_demo_patch4_32', 'swin_demo_patch4_window4_32', 'pvt_demo_32', 'hivit_demo_patch4_32',
               'groupmixformer_demo_32')   # one registered demo classifier per family


@pytest.mark.parametrize('name', sorted(CLASSIFIERS))
def test_pooled_features_are_the_head_input(name):
    model = registry.create_model(name, seed=0)
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3), jnp.float32)
    feats = model.pooled_features(x)
    kernel, bias = np.asarray(model.head.kernel[...]), np.asarray(model.head.bias[...])
    assert feats.shape == (2, kernel.shape[0])
    expected = np.asarray(feats, np.float64) @ kernel.astype(np.float64) + bias
    np.testing.assert_allclose(np.asarray(model(x)), expected, rtol=1e-5, atol=1e-5)


def test_vit_class_token_pooling_is_norm_of_token0():
    """Without ``global_pool`` the ViT pools the class token after ``norm`` (MAE
    ``main_linprobe.py`` with ``global_pool=False``): LayerNorm written out on token 0."""
    model = registry.create_model('vit_demo_patch4_32', seed=0, global_pool=False)
    x = jax.random.normal(jax.random.key(2), (2, 32, 32, 3), jnp.float32)
    tokens = {}
    norm = model.norm
    orig = type(norm).__call__

    def spy(self, y):
        tokens['in'] = np.asarray(y)
        return orig(self, y)

    type(norm).__call__ = spy
    try:
        feats = np.asarray(model.pooled_features(x))
    finally:
        type(norm).__call__ = orig
    t = tokens['in'][:, 0].astype(np.float64)
    mu, var = t.mean(-1, keepdims=True), t.var(-1, keepdims=True)
    eps = norm.epsilon
    expected = (t - mu) / np.sqrt(var + eps) * np.asarray(norm.scale[...]) + np.asarray(norm.bias[...])
    np.testing.assert_allclose(feats, expected, rtol=1e-4, atol=1e-5)
