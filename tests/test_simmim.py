"""SimMIM: mask generation, decoder layout, loss restricted to masked pixels, mask token."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxmim.methods.simmim.masking import SimMIMMaskGenerator
from jaxmim.methods import create_mim_model
from jaxmim.methods.simmim import masked_l1_loss, patchify, pixel_shuffle, unpatchify

ENC = dict(embed_dim=16, num_heads=(1, 2, 4), patch_size=2)   # demo layout, img 32, 3 stages


def test_mask_generator_counts_and_layout():
    gen = SimMIMMaskGenerator(192, 32, 4, 0.6)
    assert (gen.rand_size, gen.scale, gen.mask_count) == (6, 8, 22)   # ceil(0.6 * 36) = 22
    m = np.asarray(gen(jax.random.key(0), 16))
    assert m.shape == (16, 48, 48) and m.dtype == np.int32
    unit = m[:, ::8, ::8]
    np.testing.assert_array_equal(unit.sum((1, 2)), 22)
    # constant inside each 8x8 block of model patches
    np.testing.assert_array_equal(np.repeat(np.repeat(unit, 8, 1), 8, 2), m)
    # different images get different subsets; the numpy twin obeys the same count
    assert len({u.tobytes() for u in unit}) > 1
    np.testing.assert_array_equal(gen.numpy(np.random.default_rng(0), 4)[:, ::8, ::8].sum((1, 2)), 22)


def test_mask_generator_is_uniform_over_units():
    gen = SimMIMMaskGenerator(32, 8, 2, 0.6)        # 16 units, 10 masked
    m = np.asarray(gen.unit_mask(jax.random.key(1), 4000)).reshape(4000, 16)
    freq = m.mean(0)
    np.testing.assert_allclose(freq, 10 / 16, atol=0.03)


@pytest.mark.parametrize('kwargs,match', [
    (dict(input_size=32, mask_patch_size=12, model_patch_size=4), 'must divide the input size'),
    (dict(input_size=32, mask_patch_size=8, model_patch_size=3), 'must divide mask_patch_size'),
    (dict(input_size=32, mask_patch_size=8, model_patch_size=4, mask_ratio=1.0), 'mask_ratio'),
])
def test_mask_generator_rejects_bad_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SimMIMMaskGenerator(**kwargs)


def test_pixel_shuffle_matches_torch():
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 3 * 4 * 4)).astype(np.float32)  # NHWC, r=4
    ours = np.asarray(pixel_shuffle(jnp.asarray(x), 4))
    ref = torch.nn.PixelShuffle(4)(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(ours, ref)


def test_patchify_order():
    x = np.random.default_rng(0).normal(size=(2, 8, 12, 3)).astype(np.float32)
    p = np.asarray(patchify(jnp.asarray(x), 4))
    assert p.shape == (2, 6, 48)
    # unit (1, 2) is number 1*3+2 = 5; inside it pixel (p, q) colour c is at (p*4 + q)*3 + c
    for pp, q, c in [(0, 0, 0), (1, 3, 2), (3, 2, 1)]:
        assert p[1, 5, (pp * 4 + q) * 3 + c] == x[1, 4 + pp, 8 + q, c]
    np.testing.assert_array_equal(unpatchify(jnp.asarray(p), 4, 2, 3), x)


def _brute_force_loss(target, x_rec, mask, p):
    """Official SimMIM loss (microsoft/SimMIM@d3e29bc models/simmim.py:114-121), one pixel at a
    time: M = mask repeated p times along H and W (one value per pixel, shared by the C
    channels); loss = sum(|t - x| * M) / (sum(M) + 1e-5) / C."""
    b_, h, w, c = target.shape
    num, den = 0.0, 0.0
    for b in range(b_):
        for i in range(h):
            for j in range(w):
                m = float(mask[b, i // p, j // p])
                den += m
                for k in range(c):
                    num += abs(float(target[b, i, j, k]) - float(x_rec[b, i, j, k])) * m
    return num / (den + 1e-5) / c


def test_loss_matches_brute_force_and_uses_masked_pixels_only():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(3, 8, 12, 3)).astype(np.float32)
    x_rec = rng.normal(size=(3, 8, 12, 3)).astype(np.float32)
    mask = (rng.random((3, 4, 6)) < 0.4).astype(np.int32)
    expected = _brute_force_loss(target, x_rec, mask, 2)
    loss = float(masked_l1_loss(jnp.asarray(target), jnp.asarray(x_rec), jnp.asarray(mask), 2))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    pix = np.repeat(np.repeat(mask, 2, 1), 2, 2).astype(bool)
    changed = target.copy()
    changed[~pix] += 10.0                                   # visible pixels of the target
    assert float(masked_l1_loss(jnp.asarray(changed), jnp.asarray(x_rec), jnp.asarray(mask), 2)) == loss
    # Nothing masked: 0 / (0 + 1e-5) = 0, not NaN.
    assert float(masked_l1_loss(jnp.asarray(target), jnp.asarray(x_rec), jnp.zeros_like(mask), 2)) == 0.0


def test_simmim_model_outputs_and_mask_token():
    model = create_mim_model({'name': 'simmim', 'encoder_stride': 8, 'mask_patch_size': 8},
                             'simmim_swin_demo_patch4_window4_32', overrides=ENC)
    x1 = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    x2 = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    # A random mask at model-patch resolution (32 / 2 = 16 per side), not tied to mask units.
    mask = jnp.asarray(np.random.default_rng(2).random((2, 16, 16)) < 0.6, jnp.int32)
    out = model(x1, mask=mask)
    assert out['pred'].shape == (2, 16, 8 * 8 * 3)
    # x_rec from pred: unit (r, c) of the 4x4 grid of 8x8 units, pixel (i, j), colour k is at
    # pred[:, r * 4 + c, (i * 8 + j) * 3 + k].
    pred = np.asarray(out['pred'])
    x_rec = np.zeros((2, 32, 32, 3), np.float32)
    for r in range(4):
        for c in range(4):
            x_rec[:, 8 * r:8 * r + 8, 8 * c:8 * c + 8] = pred[:, r * 4 + c].reshape(2, 8, 8, 3)
    if 'x_rec' in out:
        np.testing.assert_array_equal(out['x_rec'], x_rec)
    assert out['loss'].shape == () and out['loss'].dtype == jnp.float32
    np.testing.assert_allclose(float(out['loss']), _brute_force_loss(np.asarray(x1), x_rec, np.asarray(mask), 2),
                               rtol=1e-5)
    # Every patch masked: the encoder sees only the mask token, so the output ignores the image.
    full = jnp.ones((2, 16, 16), jnp.int32)
    np.testing.assert_allclose(model.encoder(x1, full), model.encoder(x2, full), atol=1e-5)
    # Nothing masked: the encoder is the plain backbone.
    none = jnp.zeros((2, 16, 16), jnp.int32)
    np.testing.assert_allclose(model.encoder(x1, none),
                               model.encoder.forward_tokens(model.encoder.embed(x1)), atol=1e-6)
    with pytest.raises(ValueError, match='mask must have shape'):
        model.encoder(x1, jnp.ones((2, 8, 8)))
