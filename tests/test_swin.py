"""Swin Transformer (Flax NNX): stage shapes, window constants, patch merging, registry."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxmim
from jaxmim import layers
from jaxmim.models import pos_embed as PE
from jaxmim.models import swin
from jaxmim.models import windows as W

TINY = dict(img_size=32, patch_size=2, in_chans=3, num_classes=7, embed_dim=16, depths=(2, 2, 2),
            num_heads=(1, 2, 4), window_size=4)


def test_stage_shapes():
    model = swin.SwinTransformer(**TINY, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    t = model.embed(x)
    assert t.shape == (2, 16, 16, 16)
    shapes = []
    for layer in model.layers:
        for blk in layer.blocks:
            t = blk(t)
            shapes.append(t.shape)
        if layer.downsample is not None:
            t = layer.downsample(t)
            shapes.append(('merge', t.shape))
    assert shapes == [(2, 16, 16, 16), (2, 16, 16, 16), ('merge', (2, 8, 8, 32)),
                      (2, 8, 8, 32), (2, 8, 8, 32), ('merge', (2, 4, 4, 64)),
                      (2, 4, 4, 64), (2, 4, 4, 64)]
    assert model.forward_features(x).shape == (2, 64)
    assert model(x).shape == (2, 7)


def test_window_clamp_and_shift_assignment():
    model = swin.SwinTransformer(**TINY, rngs=nnx.Rngs(0))
    got = [(b.window_size, b.shift_size) for layer in model.layers for b in layer.blocks]
    # stage 1 16x16 and stage 2 8x8 > window 4: (4, 0), (4, 2); stage 3 4x4 <= 4: one unshifted window.
    assert got == [(4, 0), (4, 2), (4, 0), (4, 2), (4, 0), (4, 0)]
    b7 = swin.SwinTransformer(img_size=224, depths=(2, 2, 2, 2), num_heads=(1, 1, 1, 1), embed_dim=8,
                              window_size=7, rngs=nnx.Rngs(0))
    assert [(b.window_size, b.shift_size) for b in b7.layers[3].blocks] == [(7, 0), (7, 0)]


def _brute_force_mask(h, w, ws, s):
    """Region of every pixel of the shifted map by explicit comparisons, then pairwise per window."""
    def region(i, n):
        return 0 if i < n - ws else (1 if i < n - s else 2)
    nw = (h // ws) * (w // ws)
    out = np.zeros((nw, ws * ws, ws * ws), np.float32)
    for wi, (wr, wc) in enumerate(itertools.product(range(h // ws), range(w // ws))):
        pix = [(wr * ws + r, wc * ws + c) for r in range(ws) for c in range(ws)]
        for a, (ra, ca) in enumerate(pix):
            for b, (rb, cb) in enumerate(pix):
                same = region(ra, h) == region(rb, h) and region(ca, w) == region(cb, w)
                out[wi, a, b] = 0.0 if same else -100.0
    return out


@pytest.mark.parametrize('h,w,ws,s', [(8, 8, 4, 2), (12, 8, 4, 2), (14, 14, 7, 3)])
def test_shift_mask_matches_brute_force(h, w, ws, s):
    np.testing.assert_array_equal(W.shifted_window_mask(h, w, ws, s), _brute_force_mask(h, w, ws, s))


@pytest.mark.parametrize('ws', [2, 4, 7])
def test_relative_position_index_definition(ws):
    idx = W.relative_position_index(ws)
    tokens = [(r, c) for r in range(ws) for c in range(ws)]
    for i, (hi, wi) in enumerate(tokens):
        for j, (hj, wj) in enumerate(tokens):
            assert idx[i, j] == (hi - hj + ws - 1) * (2 * ws - 1) + (wi - wj + ws - 1)
    assert idx.min() == 0 and idx.max() == (2 * ws - 1) ** 2 - 1


def test_patch_merging_channel_order():
    merge = swin.PatchMerging(1, rngs=nnx.Rngs(0))
    # Identity-like reduction with no norm effect: inspect the concatenation directly.
    x = jnp.arange(16, dtype=jnp.float32).reshape(1, 4, 4, 1)   # value = 4 * row + col
    captured = {}

    def fake_norm(v):
        captured['cat'] = v
        return v

    merge.norm = fake_norm
    merge(x)
    cat = np.asarray(captured['cat'])[0, 0, 0]   # output pixel (0, 0): rows 0-1, cols 0-1
    # official order: (0,0), (1,0), (0,1), (1,1) -> values 0, 4, 1, 5
    np.testing.assert_array_equal(cat, [0.0, 4.0, 1.0, 5.0])


def test_window_partition_roundtrip_and_order():
    x = np.arange(2 * 8 * 8 * 1).reshape(2, 8, 8, 1)
    win = W.window_partition(x, 4)
    assert win.shape == (8, 4, 4, 1)
    # window 1 of image 0 is the top-right 4x4 block
    np.testing.assert_array_equal(win[1, :, :, 0], x[0, 0:4, 4:8, 0])
    np.testing.assert_array_equal(W.window_reverse(win, 4, 8, 8), x)


def _erf_gelu(x):
    """Exact GELU written out: 0.5 x (1 + erf(x / sqrt(2)))."""
    return np.array([0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))) for v in np.asarray(x, np.float64).ravel()]
                    ).reshape(np.shape(x))


def _tanh_gelu(x):
    x = np.asarray(x, np.float64)
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def test_layer_norm_eps_and_exact_gelu():
    model = swin.SwinTransformer(**TINY, rngs=nnx.Rngs(0))
    assert model.norm.epsilon == 1e-5
    assert all(isinstance(b.mlp, layers.Mlp) for layer in model.layers for b in layer.blocks)

    # An Mlp with hand-set weights: fc1 = identity + bias b, fc2 = 2 * identity + bias c,
    # so Mlp(x) = 2 * GELU(x + b) + c element-wise.
    n = 9
    mlp = layers.Mlp(n, n, rngs=nnx.Rngs(0))
    bias1 = np.linspace(-0.5, 0.5, n).astype(np.float32)
    bias2 = np.full(n, 0.25, np.float32)
    mlp.fc1.kernel[...] = jnp.eye(n, dtype=jnp.float32)
    mlp.fc1.bias[...] = jnp.asarray(bias1)
    mlp.fc2.kernel[...] = 2.0 * jnp.eye(n, dtype=jnp.float32)
    mlp.fc2.bias[...] = jnp.asarray(bias2)
    # Rows of inputs; -2.698 - b[0] puts fc1's first unit where erf and tanh GELU differ most.
    x = np.stack([np.linspace(-4.0, 4.0, n), np.full(n, -2.698) - bias1, np.linspace(-1.0, 1.0, n)])
    x = x.astype(np.float32)
    got = np.asarray(mlp(jnp.asarray(x)), np.float64)
    h = x.astype(np.float64) + bias1
    expected = 2.0 * _erf_gelu(h) + bias2
    tol = 2e-6
    np.testing.assert_allclose(got, expected, rtol=0, atol=tol)
    # The tanh approximation misses the exact values by far more than the tolerance
    # (up to 4.7e-4 at |x| ~ 2.7), so an approximate GELU in Mlp would fail the check above.
    approx = 2.0 * _tanh_gelu(h) + bias2
    assert np.abs(approx - expected).max() > 100 * tol


def test_drop_path_is_stochastic_only_in_training():
    model = swin.SwinTransformer(**{**TINY, 'drop_path_rate': 0.5}, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    np.testing.assert_array_equal(model(x), model(x, train=False, rng=jax.random.key(3)))
    a = model(x, train=True, rng=jax.random.key(1))
    b = model(x, train=True, rng=jax.random.key(2))
    assert not np.allclose(a, b)
    with pytest.raises(ValueError, match='PRNG key'):
        model(x, train=True)


def test_bad_sizes_raise_clear_errors():
    with pytest.raises(ValueError, match='window_size 3 does not divide'):
        swin.SwinTransformer(**{**TINY, 'window_size': 3}, rngs=nnx.Rngs(0))
    model = swin.SwinTransformer(**TINY, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r'expected images \(B, 32, 32, C\)'):
        model(jnp.zeros((1, 3, 32, 32)))


def test_registry():
    names = jaxmim.list_models()
    for n in ['swin_tiny_patch4_window7_224', 'swin_small_patch4_window7_224', 'swin_base_patch4_window7_224',
              'swin_base_patch4_window14_224', 'swin_large_patch4_window14_224', 'swin_demo_patch4_window4_32']:
        assert n in names
    with pytest.raises(KeyError, match='close matches'):
        jaxmim.create_model('swin_tiny_patch4_window7')
    with pytest.raises(TypeError, match="did you mean \\['window_size'"):
        jaxmim.create_model('swin_demo_patch4_window4_32', window_sise=4)
    # parameter counts from the official shapes (microsoft/SimMIM@d3e29bc models/swin_transformer.py
    # state_dict, buffers excluded), without materialising
    abstract = nnx.eval_shape(lambda: jaxmim.create_model('swin_base_patch4_window7_224'))
    n = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert n == 87_768_224
    abstract = nnx.eval_shape(lambda: jaxmim.create_model('swin_large_patch4_window14_224'))
    n = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert n == 196_794_556


def _spec_source_axis(src: int, dst: int) -> np.ndarray:
    """Source offsets of ``remap_pretrained_keys_swin`` (``microsoft/SimMIM@d3e29bc
    utils.py:148-169``): q by bisection on [1.01, 1.5]
    until the bracket is <= 1e-6 wide (the last midpoint), d_k = sum_{j<=k} q^j, axis
    (-d_{n-1}, ..., -d_0, 0, d_0, ..., d_{n-1})."""
    n, m = src // 2, dst // 2
    left, right = 1.01, 1.5
    while right - left > 1e-6:
        q = (left + right) / 2.0
        total = sum(q ** j for j in range(n))
        if total > m:
            right = q
        else:
            left = q
    d = [sum(q ** j for j in range(k + 1)) for k in range(n)]
    return np.array([-v for v in reversed(d)] + [0.0] + d), q


def test_resize_rel_pos_table_identity_and_bad_lengths():
    table = np.random.default_rng(0).normal(size=(121, 4)).astype(np.float32)
    np.testing.assert_array_equal(PE.resize_rel_pos_table(table, 121), table)
    for bad_src, bad_dst in ((121, 150), (120, 169), (144, 169), (121, 196)):   # 144, 196: even sides
        with pytest.raises(ValueError) as e:
            PE.resize_rel_pos_table(np.zeros((bad_src, 2), np.float32), bad_dst)
        assert str(bad_src) in str(e.value) and str(bad_dst) in str(e.value), str(e.value)


@pytest.mark.parametrize('src,dst,q_spec,outer_spec', [(11, 13, 1.091281, 6.000008), (23, 27, 1.032893, 12.99994)])
def test_resize_rel_pos_table_linear_function_goes_to_target_offsets(src, dst, q_spec, outer_spec):
    # Window 6 -> 7 (11x11 -> 13x13; Swin-B 192 -> 224) and 12 -> 14 (23x23 -> 27x27; Swin-L).
    axis, q = _spec_source_axis(src, dst)
    # reference values of the official bisection (microsoft/SimMIM@d3e29bc utils.py:148-169), rerun
    assert abs(q - q_spec) < 1e-6 and abs(axis[-1] - outer_spec) < 1e-5
    # Head h holds a_h * dy + b_h * dx + c_h at the source's geometric offsets (rows = dy,
    # columns = dx, row-major). A bicubic interpolating spline reproduces a linear function
    # exactly, so the result is the same function at the target's integer offsets (FITPACK
    # clamps the Swin-L target +-13 to the outermost source offset 12.99994).
    coef = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [2.0, -1.0, 0.5], [-0.3, 0.7, 3.0]])
    dy, dx = np.meshgrid(axis, axis, indexing='ij')
    table = np.stack([a * dy.ravel() + b * dx.ravel() + c for a, b, c in coef], axis=1).astype(np.float32)
    out = PE.resize_rel_pos_table(table, dst * dst)
    assert out.shape == (dst * dst, 4) and out.dtype == np.float32
    t = np.clip(np.arange(-(dst // 2), dst // 2 + 1, dtype=np.float64), axis[0], axis[-1])
    ty, tx = np.meshgrid(t, t, indexing='ij')
    expected = np.stack([a * ty.ravel() + b * tx.ravel() + c for a, b, c in coef], axis=1)
    np.testing.assert_allclose(out, expected, atol=5e-5)


def test_resize_rel_pos_table_random_matches_tensor_product_spline():
    # Independent twin of the FITPACK fit: the interpolating cubic spline with s=0 is the
    # not-a-knot spline, and the bivariate one is its tensor product (rows, then columns).
    from scipy.interpolate import CubicSpline

    axis, _ = _spec_source_axis(11, 13)
    table = np.random.default_rng(1).normal(size=(121, 3)).astype(np.float32)
    out = PE.resize_rel_pos_table(table, 169)
    t = np.arange(-6.0, 7.0)
    for h in range(3):
        z = table[:, h].reshape(11, 11).astype(np.float64)
        rows = CubicSpline(axis, z, axis=0, bc_type='not-a-knot')(t)              # (13, 11)
        full = CubicSpline(axis, rows, axis=1, bc_type='not-a-knot')(t)          # (13, 13)
        np.testing.assert_allclose(out[:, h], full.ravel(), atol=1e-5)
    # Offset 0 is a knot of the source and of the target: the centre entry is kept.
    np.testing.assert_allclose(out.reshape(13, 13, 3)[6, 6], table.reshape(11, 11, 3)[5, 5], atol=1e-6)
