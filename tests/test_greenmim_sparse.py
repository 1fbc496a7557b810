"""Dense equivalents of GreenMIM-Twins' sparse convolutions (jaxmim/methods/greenmim/sparse_conv.py) against a dense
convolution on a zero-filled canvas evaluated at the visible sites, and a NumPy neighbour loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmim.methods.greenmim.sparse_conv import block_indices, masked_depthwise_conv, sparse_conv_blocks


def _visible_positions(rng, units, unit_tokens, keep):
    """Raster positions of the tokens of ``keep`` random units (grid of ``units`` x ``units``)."""
    kept = np.zeros(units * units, bool)
    kept[rng.permutation(units * units)[:keep]] = True
    vis = np.kron(kept.reshape(units, units), np.ones((unit_tokens, unit_tokens), bool))
    return np.flatnonzero(vis.reshape(-1)), vis.shape


@pytest.mark.parametrize('k,unit_tokens', [(2, 8), (8, 8), (4, 4), (2, 2)])
def test_sparse_conv_equals_dense_conv_at_visible_sites(k, unit_tokens):
    rng = np.random.default_rng(k * 10 + unit_tokens)
    pos, (h, w) = _visible_positions(rng, 4, unit_tokens, 5)
    idx, out_pos = block_indices(pos, (h, w), k)
    assert idx.shape == (len(pos) // (k * k), k * k) and np.all(np.diff(out_pos) > 0)
    x = jax.random.normal(jax.random.key(0), (2, len(pos), 6))
    kernel = jax.random.normal(jax.random.key(1), (k, k, 6, 5))
    bias = jax.random.normal(jax.random.key(2), (5,))
    out = sparse_conv_blocks(x, jnp.asarray(idx), kernel, bias)
    canvas = jnp.zeros((2, h * w, 6)).at[:, pos].set(x).reshape(2, h, w, 6)
    dense = jax.lax.conv_general_dilated(canvas, kernel, (k, k), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    ref = dense.reshape(2, -1, 5)[:, out_pos] + bias
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_block_indices_rejects_misaligned_units():
    pos, shape = _visible_positions(np.random.default_rng(0), 4, 2, 5)
    with pytest.raises(ValueError, match='partly visible'):
        block_indices(pos, shape, 4)


def test_masked_depthwise_conv_matches_neighbour_loop():
    rng = np.random.default_rng(3)
    pos, (h, w) = _visible_positions(rng, 4, 2, 6)
    c = 3
    x = rng.standard_normal((1, len(pos), c)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 1, c)).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    out = masked_depthwise_conv(jnp.asarray(x), jnp.asarray(pos), (h, w), jnp.asarray(kernel), jnp.asarray(bias))
    lookup = {int(p): i for i, p in enumerate(pos)}
    ref = np.zeros_like(x)
    for i, p in enumerate(pos):
        r, col = divmod(int(p), w)
        acc = bias.astype(np.float64).copy()
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                q = (r + dr) * w + (col + dc)
                if 0 <= r + dr < h and 0 <= col + dc < w and q in lookup:    # masked neighbours: 0
                    acc += kernel[dr + 1, dc + 1, 0] * x[0, lookup[q]]
        ref[0, i] = acc
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)
