"""Host-side augmentation ops (jaxmim.data.augment) against Pillow, hand computations and timm's
documented semantics; their wiring into the tf.data pipeline and the config checks."""

import math

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from jaxmim import augment_config as AC
from jaxmim.data import augment as A

FILL = (124, 116, 104)


def _seed(i, j=0):
    return tf.constant([i, j], tf.int64)


@pytest.fixture(scope='module')
def img():
    """A smooth-ish uint8 RGB test image (24 x 20), not square, with every op non-trivial."""
    rng = np.random.default_rng(0)
    return (np.cumsum(rng.integers(0, 30, (24, 20, 3)), axis=1) % 256).astype(np.uint8)


def _same(ours, ref, tol=0):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= tol, np.abs(ours - ref).max()


# ------------------------------------------------------------------ pixel ops = Pillow's


def test_lut_ops_equal_pillow(img):
    t, pil = tf.constant(img, tf.float32), Image.fromarray(img)
    _same(A.auto_contrast(t), ImageOps.autocontrast(pil))
    _same(A.equalize(t), ImageOps.equalize(pil))
    for bits in (1, 2, 4):
        _same(A.posterize(t, bits), ImageOps.posterize(pil, bits))
    _same(A.posterize(t, 0), np.zeros_like(img))                  # keeps no bit
    for thr in (0, 100, 256):
        _same(A.solarize(t, thr), ImageOps.solarize(pil, thr))
    _same(255.0 - t, ImageOps.invert(pil))
    # solarize_add written out: pixels below 128 get +add, capped at 255.
    x = img.astype(np.int64)
    _same(A.solarize_add(t, 99), np.where(x < 128, np.minimum(255, x + 99), x))


@pytest.mark.parametrize('factor', [0.1, 0.55, 1.0, 1.9])
def test_enhance_ops_equal_pillow(img, factor):
    t, pil = tf.constant(img, tf.float32), Image.fromarray(img)
    _same(A.color(t, factor), ImageEnhance.Color(pil).enhance(factor))
    _same(A.contrast(t, factor), ImageEnhance.Contrast(pil).enhance(factor))
    _same(A.brightness(t, factor), ImageEnhance.Brightness(pil).enhance(factor))
    _same(A.sharpness(t, factor), ImageEnhance.Sharpness(pil).enhance(factor))


@pytest.mark.parametrize('interp,resample,tol', [('nearest', Image.NEAREST, 0), ('bilinear', Image.BILINEAR, 1),
                                                 ('bicubic', Image.BICUBIC, 0)])
def test_geometric_ops_equal_pillow(img, interp, resample, tol):
    t, pil = tf.constant(img, tf.float32), Image.fromarray(img)
    _same(A.rotate(t, 27.0, FILL, interp), pil.rotate(27.0, resample=resample, fillcolor=FILL), tol)
    _same(A.rotate(t, -13.5, FILL, interp), pil.rotate(-13.5, resample=resample, fillcolor=FILL), tol)
    for m in [(1, 0.21, 0, 0, 1, 0), (1, 0, 0, -0.17, 1, 0), (1, 0, -5.4, 0, 1, 3.3)]:
        _same(A.affine_transform(t, list(m), FILL, interp),
              pil.transform(pil.size, Image.AFFINE, m, resample=resample, fillcolor=FILL), tol)


def test_rotate_by_hand():
    # 90 degrees about the centre of a square image is np.rot90 (counter-clockwise, as PIL).
    x = np.random.default_rng(1).integers(0, 256, (16, 16, 3)).astype(np.float32)
    _same(A.rotate(tf.constant(x), 90.0, FILL, 'bicubic'), np.rot90(x, 1, axes=(0, 1)))
    # Fixed magnitude 10 (30 degrees), sign +1, through the RandAugment op: a single bright pixel
    # at (row 4, col 10) of a 21 x 21 image goes to the hand-rotated position, and the corners,
    # whose sources lie outside the image, take the fill colour.
    x = np.zeros((21, 21, 3), np.float32)
    x[4, 10] = 255.0
    out = A._apply_op('Rotate', tf.constant(x), tf.constant(10.0), tf.constant(1.0), FILL, 'nearest').numpy()
    # centre (10.5, 10.5); pixel centre (10.5, 4.5) is 6 px above it. Rotating the image 30 degrees
    # counter-clockwise moves it to (10.5 - 6 sin 30, 10.5 - 6 cos 30) = (7.5, 5.30) -> col 7, row 5.
    ang = math.radians(30.0)
    col, row = int(10.5 - 6 * math.sin(ang)), int(10.5 - 6 * math.cos(ang))
    assert (col, row) == (7, 5)
    assert out[row, col, 0] == 255.0
    assert (out[..., 0] == 255.0).sum() == 1
    np.testing.assert_array_equal(out[0, 0], FILL)
    np.testing.assert_array_equal(out[-1, -1], FILL)


def test_increasing_level_args():
    # timm *_level_to_arg at magnitude 9: posterize keeps 4 - int(3.6) = 1 bit, solarize threshold
    # 256 - int(230.4) = 26, solarize_add adds int(99.0) = 99, enhance factor 1 + 0.81.
    x = tf.constant(np.arange(256, dtype=np.float32).reshape(16, 16, 1) * np.ones(3, np.float32))
    m, s = tf.constant(9.0), tf.constant(1.0)
    ref = x.numpy()
    _same(A._apply_op('PosterizeIncreasing', x, m, s, FILL, 'bicubic'), np.bitwise_and(ref.astype(int), 0x80))
    _same(A._apply_op('SolarizeIncreasing', x, m, s, FILL, 'bicubic'), np.where(ref >= 26, 255 - ref, ref))
    _same(A._apply_op('SolarizeAdd', x, m, s, FILL, 'bicubic'), np.where(ref < 128, np.minimum(255, ref + 99), ref))
    _same(A._apply_op('BrightnessIncreasing', x, m, s, FILL, 'bicubic'), np.minimum(255, np.floor(ref * 1.81 + 1e-9)))
    _same(A._apply_op('BrightnessIncreasing', x, m, -s, FILL, 'bicubic'), np.floor(ref * 0.19 + 1e-6))
    # Translate 0.45 * 9/10 of the width: PIL's AFFINE with c = 0.405 * W samples x + c.
    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (12, 20, 3)).astype(np.uint8))
    out = A._apply_op('TranslateXRel', tf.constant(np.asarray(img), tf.float32), m, s, FILL, 'bicubic')
    ref = np.asarray(img.transform(img.size, Image.AFFINE, (1, 0, 0.405 * 20, 0, 1, 0), resample=Image.BICUBIC,
                                   fillcolor=FILL), np.float64)
    _same(out, ref, tol=1)                                  # float32 vs Pillow's double arithmetic
    assert np.mean(np.abs(out.numpy() - ref) > 0) < 0.05


# ------------------------------------------------------------------ RandAugment


def test_parse_rand_augment():
    c = AC.parse_rand_augment('rand-m9-mstd0.5-inc1')
    assert (c.magnitude, c.num_layers, c.magnitude_std, c.magnitude_max, c.increasing, c.prob) == \
        (9.0, 2, 0.5, 10.0, True, 0.5)
    assert c.ops == AC.RAND_INCREASING_TRANSFORMS and len(c.ops) == 15
    c = AC.parse_rand_augment('rand-n3-m7-p1.0')
    assert (c.magnitude, c.num_layers, c.prob, c.increasing) == (7.0, 3, 1.0, False)
    assert c.ops == AC.RAND_TRANSFORMS
    for bad in ('original-mstd0.5', 'rand-x9', 'rand-m9-w0'):
        with pytest.raises(ValueError, match='auto_augment'):
            AC.parse_rand_augment(bad)


def test_rand_augment_shapes_seeds_and_grid(img):
    cfg = AC.parse_rand_augment('rand-m9-mstd0.5-inc1')
    x = tf.constant(img, tf.float32) / 255.0
    outs = [A.rand_augment(x, _seed(i), cfg).numpy() for i in range(6)]
    for o in outs:
        assert o.shape == img.shape and o.dtype == np.float32
        assert o.min() >= 0.0 and o.max() <= 1.0
        np.testing.assert_allclose(o * 255.0, np.round(o * 255.0), atol=1e-3)   # uint8 grid
    assert len({o.tobytes() for o in outs}) >= 4                                 # seeds differ
    np.testing.assert_array_equal(A.rand_augment(x, _seed(3), cfg).numpy(), outs[3])   # same seed, same output
    # p = 0: no op fires; the image only snaps to the 0..255 grid.
    c0 = AC.parse_rand_augment('rand-m9-mstd0.5-inc1-p0')
    np.testing.assert_allclose(A.rand_augment(x, _seed(0), c0).numpy() * 255, img, atol=1e-3)


def test_rand_augment_single_op_is_that_op(img):
    # n1, p1, mstd0: the only randomness left is which op and its sign; every output must equal one
    # of the 15 ops (either sign) applied by hand at magnitude 9.
    cfg = AC.parse_rand_augment('rand-m9-n1-p1.0-inc1')
    x = tf.constant(img, tf.float32)
    cands = [A._apply_op(n, x, tf.constant(9.0), tf.constant(s), FILL, 'bicubic').numpy()
             for n in AC.RAND_INCREASING_TRANSFORMS for s in (1.0, -1.0)]
    for i in range(8):
        out = A.rand_augment(x / 255.0, _seed(i, 7), cfg, FILL).numpy() * 255.0
        assert min(np.abs(out - c).max() for c in cands) < 1e-3


# ------------------------------------------------------------------ crops, jitter, erasing


def test_timm_crop_window_bounds_and_fallback():
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    areas = []
    for i in range(200):
        y, x, h, w = [int(v) for v in A.sample_crop_window_timm(tf.constant(60), tf.constant(90), _seed(i), scale, ratio)]
        assert 0 <= y and y + h <= 60 and 0 <= x and x + w <= 90 and h >= 1 and w >= 1
        # w, h are rounded from an area in scale * 5400 and an aspect in ratio
        assert (math.sqrt(0.08 * 5400) - 1) ** 2 <= h * w * (1 + 1e-9) and (w - 1) / (h + 1) <= 4 / 3 + 1e-6
        areas.append(h * w / 5400)
    assert 0.3 < np.mean(areas) < 0.7
    # A 1000 x 10 strip: no try fits (w >= sqrt(800 * 3/4) > 10), so the centre crop of width 10 and
    # height round(10 / (3/4)) = 13 (timm's fallback for an image narrower than the ratio range).
    y, x, h, w = [int(v) for v in A.sample_crop_window_timm(tf.constant(1000), tf.constant(10), _seed(1), scale, ratio)]
    assert (y, x, h, w) == ((1000 - 13) // 2, 0, 13, 10)


def test_color_jitter_brightness_is_a_scale():
    x = tf.random.stateless_uniform([16, 16, 3], seed=[0, 1], maxval=0.6)
    outs = []
    for i in range(5):
        o = A.color_jitter(x, _seed(i), 0.4, 0.0, 0.0).numpy()
        k = o / x.numpy()
        assert np.ptp(k) < 1e-5 and 0.6 - 1e-6 <= k.mean() <= 1.4 + 1e-6      # one factor in [0.6, 1.4]
        outs.append(k.mean())
    assert len(set(np.round(outs, 6))) == 5
    o = A.color_jitter(x, _seed(0), 0.4, 0.4, 0.4, 0.1).numpy()
    assert o.shape == (16, 16, 3) and o.dtype == np.float32 and 0 <= o.min() and o.max() <= 1


def test_random_erasing_box_and_noise():
    H, W = 40, 30
    x = tf.fill([H, W, 3], 7.0)
    sizes = []
    for i in range(60):
        o = A.random_erasing(x, _seed(i), prob=1.0).numpy()
        assert o.shape == (H, W, 3) and o.dtype == np.float32
        box = (o != 7.0).any(-1)
        rows, cols = np.where(box)
        assert box.sum() > 0
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert box.sum() == h * w                                        # one solid rectangle
        assert h < H and w < W
        # area and log-aspect drawn in (0.02, 1/3) and (0.3, 1/0.3), then rounded to pixels
        assert (math.sqrt(0.02 * H * W) - 1) ** 2 <= h * w <= (math.sqrt(H * W / 3) + 1) ** 2
        assert 0.3 * (h - 1) / (w + 1) <= 1.0 and (h + 1) / max(w - 1, 1) >= 0.3
        sizes.append(h * w)
    assert len(set(sizes)) > 10
    big = A.random_erasing(tf.zeros([200, 200, 3]), _seed(5), prob=1.0).numpy()
    vals = big[(big != 0).any(-1)]
    assert vals.size > 3 * 500 and abs(vals.mean()) < 0.1 and abs(vals.std() - 1) < 0.1   # N(0, 1) per pixel
    np.testing.assert_array_equal(A.random_erasing(x, _seed(0), prob=0.0).numpy(), x.numpy())
    hits = [bool((A.random_erasing(x, _seed(i, 9), prob=0.25).numpy() != 7).any()) for i in range(200)]
    assert 0.15 < np.mean(hits) < 0.35
    with pytest.raises(ValueError, match='remode'):
        A.random_erasing(x, _seed(0), mode='noise')


# ------------------------------------------------------------------ config and pipeline


def test_augment_config_fields_are_checked():
    base = dict(crop_impl='tf', auto_augment='', color_jitter=(0.0, 0.0, 0.0), reprob=0.0, remode='pixel',
                recount=1, re_scale=(0.02, 1 / 3), re_ratio=(0.3, 1 / 0.3))
    cfg = AC.augment_config_from_fields(base, (0.485, 0.456, 0.406), 'bicubic')
    assert cfg.fill == (124, 116, 104) and not cfg.any_color and cfg.reprob == 0
    assert AC.augment_config_from_fields(dict(base, color_jitter=0.4), (0.5,) * 3, 'bicubic').color_jitter == \
        (0.4, 0.4, 0.4, 0.0)
    for field, value in [('crop_impl', 'torch'), ('reprob', 1.5), ('remode', 'x'), ('recount', 0),
                         ('color_jitter', 'strong'), ('re_scale', (0.5, 0.1)), ('auto_augment', 'autoaug')]:
        with pytest.raises(ValueError, match=field if field != 'auto_augment' else 'auto_augment'):
            AC.augment_config_from_fields(dict(base, **{field: value}), (0.5,) * 3, 'bicubic')


def test_pipeline_recipe_on_and_off(data_dir):
    from jaxmim import config as C
    from jaxmim.data import pipeline
    from jaxmim.recipes import fashion_mnist_data
    d = data_dir
    c = C.finetune_defaults()
    fashion_mnist_data(c.data, (0.08, 1.0))
    c.data.data_dir, c.data.cache, c.data.shuffle_buffer = d, False, 100
    first = lambda: next(pipeline.create_split(c.data, train=True, batch_size=16, seed=0,  # noqa: E731
                                               process_index=0, process_count=1))
    plain = first()
    c.data.reprob = 1.0                  # erasing only: the crop / flip stream is unchanged
    erased = first()
    changed = (erased['image'] != plain['image']).any(-1)
    assert changed.any(axis=(1, 2)).all()
    np.testing.assert_array_equal(erased['label'], plain['label'])
    np.testing.assert_array_equal(erased['image'][~changed], plain['image'][~changed])
    c.data.reprob = 0.0
    c.data.crop_impl, c.data.auto_augment = 'timm', 'rand-m9-mstd0.5-inc1'
    rec = first()
    assert rec['image'].shape == (16, 32, 32, 3) and rec['image'].dtype == np.float32
    assert not np.array_equal(rec['image'], plain['image'])
    c.data.auto_augment = 'rand-q9'
    with pytest.raises(ValueError, match='auto_augment'):
        first()
