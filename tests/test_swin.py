"""Swin Transformer (Flax NNX): stage shapes, window constants, patch merging, registry."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxmim
from jaxmim.models import swin

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
    np.testing.assert_array_equal(swin.shifted_window_mask(h, w, ws, s), _brute_force_mask(h, w, ws, s))


@pytest.mark.parametrize('ws', [2, 4, 7])
def test_relative_position_index_definition(ws):
    idx = swin.relative_position_index(ws)
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
    win = swin.window_partition(x, 4)
    assert win.shape == (8, 4, 4, 1)
    # window 1 of image 0 is the top-right 4x4 block
    np.testing.assert_array_equal(win[1, :, :, 0], x[0, 0:4, 4:8, 0])
    np.testing.assert_array_equal(swin.window_reverse(win, 4, 8, 8), x)


def test_layer_norm_eps_and_exact_gelu():
    model = swin.SwinTransformer(**TINY, rngs=nnx.Rngs(0))
    assert model.norm.epsilon == 1e-5
    blk = model.layers[0].blocks[0]
    x = jnp.linspace(-3, 3, 16).reshape(1, 16)
    fc1 = blk.mlp.fc1(x)
    from scipy.special import erf
    expected = 0.5 * np.asarray(fc1) * (1 + erf(np.asarray(fc1) / np.sqrt(2)))
    got = jax.nn.gelu(fc1, approximate=False)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


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
    # parameter counts from the official shapes (spec simmim_swin.md 1.10), without materialising
    abstract = nnx.eval_shape(lambda: jaxmim.create_model('swin_base_patch4_window7_224'))
    n = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert n == 87_768_224
    abstract = nnx.eval_shape(lambda: jaxmim.create_model('swin_large_patch4_window14_224'))
    n = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert n == 196_794_556


def test_resize_rel_pos_table_geometric_scheme():
    # spec simmim_swin.md 5: 11x11 -> 13x13 uses q ~ 1.091281, outer source offset ~ 6.000008.
    rng = np.random.default_rng(0)
    # a smooth function of the offsets is reproduced at the integer target offsets
    # (up to the stretch of the source grid), and the centre is kept exactly.
    table = rng.normal(size=(121, 3)).astype(np.float32)
    out = swin.resize_rel_pos_table(table, 169)
    assert out.shape == (169, 3)
    np.testing.assert_allclose(out.reshape(13, 13, 3)[6, 6], table.reshape(11, 11, 3)[5, 5], atol=1e-5)
    # corners: target offset +-6 vs source offset +-6.000008: nearly the source corner values
    np.testing.assert_allclose(out.reshape(13, 13, 3)[0, 0], table.reshape(11, 11, 3)[0, 0], atol=1e-3)
    # A function linear in the stretched source coordinate is reproduced exactly by a cubic
    # spline, so the output must be the integer target offsets. The source grid uses the ratio
    # the spec quotes, q = 1.091281 (offsets 1, 1+q, 1+q+q^2, ...; outermost ~6.000008).
    q = 1.091281
    d = np.cumsum([q ** i for i in range(5)])
    coords = np.concatenate([-d[::-1], [0.0], d])
    rows = np.repeat(coords, 11)          # row offset of entry (r, c), row-major
    cols = np.tile(coords, 11)
    table = np.stack([rows, cols, 2 * rows - cols], axis=1).astype(np.float32)
    out = swin.resize_rel_pos_table(table, 169)
    t = np.arange(-6, 7, dtype=np.float64)
    expect = np.stack([np.repeat(t, 13), np.tile(t, 13), 2 * np.repeat(t, 13) - np.tile(t, 13)], axis=1)
    np.testing.assert_allclose(out, expect, atol=5e-4)
    np.testing.assert_array_equal(swin.resize_rel_pos_table(table, 121), table)
    with pytest.raises(ValueError, match='must be'):
        swin.resize_rel_pos_table(table, 150)
