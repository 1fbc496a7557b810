"""Host-side (tf.data) augmentation ops of the timm / DeiT fine-tuning recipe.

Every op here is TensorFlow graph code on ONE example, driven by a stateless seed (a
``tf.int64`` tensor of shape ``(2,)``), so the same seed gives the same output and the pipeline
stays deterministic and resumable. TensorFlow runs on the host CPU only (``jaxmim.data``
hides the accelerators from it).

Ops (timm names; source: timm 0.4.12 ``timm/data/transforms.py``, ``auto_augment.py``,
``random_erasing.py``, ``transforms_factory.py``, the train transform the recipes build with
``create_transform``: ``microsoft/SimMIM@d3e29bc data/data_finetune.py:81-90``,
``AILab-CVC/GroupMixFormer@3d3f40977c6a data/build.py:149-167``,
``zhangxiaosong18/hivit@2718339 self_supervised/util/datasets.py:31-49``). The config fields are
parsed and checked, without TensorFlow, by :mod:`jaxmim.augment_config` (:class:`AugmentConfig`,
:func:`~jaxmim.augment_config.augment_config_from_fields`,
:func:`~jaxmim.augment_config.parse_rand_augment`):

* :func:`sample_crop_window_timm` — ``RandomResizedCropAndInterpolation.get_params``: 10
  attempts of area ~ U(scale)·H·W and log-uniform aspect ratio, then the centre-crop fallback.
  Written by hand: ``tf.image.sample_distorted_bounding_box`` samples differently (uniform
  aspect, its own rejection rule, whole image as fallback).
* :func:`rand_augment` — ``RandAugment`` from a ``'rand-m9-mstd0.5-inc1'`` string
  (:func:`~jaxmim.augment_config.parse_rand_augment`). Written by hand: no maintained TF library implements timm's
  op set, its magnitude noise and its PIL pixel semantics (``tensorflow_addons`` is
  unmaintained and its image ops differ: no bicubic fill-aware warps, no ``*Increasing`` ops);
  every op works on the 0..255 grid and reproduces Pillow's uint8 result (checked against
  Pillow 13 in ``tests/test_augment.py``: the look-up-table ops, the ``ImageEnhance`` blends and
  nearest / bilinear / bicubic affine warps agree exactly, bilinear up to one grey level on <1 %
  of pixels from float vs double arithmetic). Geometric ops follow Pillow's affine rule (output
  pixel centres mapped to the input, a source point outside ``[0, size)`` takes the fill colour,
  taps clamped to the image) with Pillow's transform kernels (bicubic: the a = -1 cubic).
* :func:`color_jitter` — torchvision ``ColorJitter`` (brightness, contrast, saturation, hue in a
  random order); used by timm only when no auto-augment policy is set. Built from TF image
  ops (``tf.image.adjust_hue``) and hand blends (torchvision's blend semantics).
* :func:`random_erasing` — ``RandomErasing`` (probability, mode 'pixel' | 'rand' | 'const',
  count, area and log-ratio ranges), on the NORMALISED image. Written by hand (no TF op).

Images are float32 ``(H, W, 3)`` RGB: in [0, 1] for the crop / colour ops, normalised
``(x - mean) / std`` for :func:`random_erasing`.
"""

from __future__ import annotations

import math
from typing import Sequence

import tensorflow as tf

from jaxmim.augment_config import ERASE_MODES, LEVEL_DENOM, AugmentConfig, RandAugmentConfig


# ------------------------------------------------------------------------------------------
# Random-resized crop (timm get_params).


def _uniform(seed, lo, hi, shape=()):
    return tf.random.stateless_uniform(shape, seed=seed, minval=lo, maxval=hi, dtype=tf.float32)


def _randint(seed, lo, hi):
    """Uniform int in [lo, hi] inclusive (python ``random.randint``); lo, hi int32 scalars."""
    u = tf.random.stateless_uniform([], seed=seed, minval=0.0, maxval=1.0)
    n = tf.cast(hi - lo + 1, tf.float32)
    return lo + tf.minimum(tf.cast(tf.floor(u * n), tf.int32), hi - lo)


def _round_half_even(x):
    """python ``round`` (banker's rounding), as timm's ``int(round(...))``."""
    return tf.cast(tf.round(x), tf.int32)  # tf.round rounds half to even, like python


def sample_crop_window_timm(height, width, seed, scale: Sequence[float] = (0.08, 1.0),
                            ratio: Sequence[float] = (3 / 4, 4 / 3), attempts: int = 10):
    """Crop window ``(y, x, h, w)`` (int32 scalars, pixels) for an image of ``(height, width)``.

    timm ``RandomResizedCropAndInterpolation.get_params`` (``timm/data/transforms.py``): up to
    ``attempts`` tries of target area ``U(scale) * H * W`` and aspect ``exp(U(log ratio))``,
    ``w = round(sqrt(area * aspect))``, ``h = round(sqrt(area / aspect))``; the first try with
    ``w <= W`` and ``h <= H`` wins, its corner uniform over the valid positions. Otherwise the
    centre crop of the whole image with its aspect clamped into ``ratio``. Hand-written (see
    the module docstring); the tries are drawn at once (vectorised), the first valid is taken.

    Args:
      height, width: int32 scalar tensors, the image size in pixels.
      seed: stateless seed, int64 ``(2,)``.
      scale: (min, max) area fraction; ratio: (min, max) width / height.

    Returns:
      ``(y, x, h, w)`` int32 scalars with ``0 <= y, y + h <= height`` and the same for x.
    """
    s_area, s_ratio, s_y, s_x = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    hf, wf = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    area = hf * wf
    target = _uniform(s_area, float(scale[0]), float(scale[1]), [attempts]) * area
    log_r = _uniform(s_ratio, math.log(ratio[0]), math.log(ratio[1]), [attempts])
    aspect = tf.exp(log_r)
    w = _round_half_even(tf.sqrt(target * aspect))
    h = _round_half_even(tf.sqrt(target / aspect))
    ok = tf.logical_and(tf.logical_and(w <= width, h <= height), tf.logical_and(w > 0, h > 0))
    any_ok = tf.reduce_any(ok)
    first = tf.argmax(tf.cast(ok, tf.int32), output_type=tf.int32)
    ch, cw = h[first], w[first]
    # Fallback: centre crop.
    in_ratio = wf / hf
    lo, hi = float(min(ratio)), float(max(ratio))
    fb_w = tf.where(in_ratio < lo, width, tf.where(in_ratio > hi, _round_half_even(hf * hi), width))
    fb_h = tf.where(in_ratio < lo, _round_half_even(wf / lo), height)
    fb_w = tf.clip_by_value(fb_w, 1, width)
    fb_h = tf.clip_by_value(fb_h, 1, height)
    h_out = tf.where(any_ok, ch, fb_h)
    w_out = tf.where(any_ok, cw, fb_w)
    y = tf.where(any_ok, _randint(s_y, 0, height - h_out), (height - fb_h) // 2)
    x = tf.where(any_ok, _randint(s_x, 0, width - w_out), (width - fb_w) // 2)
    return y, x, h_out, w_out


# ------------------------------------------------------------------------------------------
# Geometric resampling (PIL affine semantics).


def _cubic_weights(t, a=-0.5):
    """Cubic-convolution weights of the 4 taps at offsets -1, 0, 1, 2 for fraction t (Pillow's
    affine transforms use a = -1; its resize uses a = -0.5)."""
    def k(x):
        x = tf.abs(x)
        return tf.where(x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0,
                        tf.where(x < 2.0, (((x - 5.0) * x + 8.0) * x - 4.0) * a, 0.0))
    return tf.stack([k(t + 1.0), k(t), k(1.0 - t), k(2.0 - t)], axis=-1)


def affine_transform(image, matrix, fill, interpolation: str = 'bicubic'):
    """PIL ``Image.transform(size, AFFINE, matrix, resample, fillcolor)`` on a 0..255 image.

    Each output pixel ``(x, y)`` (centre ``(x + .5, y + .5)``) samples the input at
    ``(a X + b Y + c, d X + e Y + f)`` with ``matrix = (a, b, c, d, e, f)``, in continuous
    coordinates whose pixel ``i`` spans ``[i, i + 1)``. A source point outside ``[0, size)``
    takes ``fill``; otherwise the taps (at ``coord - 0.5``) are clamped to the image (Pillow
    ``libImaging/Geometry.c``; its bicubic is the a = -1 cubic). Hand-written: TF's
    ``ImageProjectiveTransformV3`` has no bicubic mode. The result is truncated and clipped to
    0..255 like Pillow's uint8 output.

    Args:
      image: float32 (H, W, C) in 0..255.
      matrix: 6 float32 scalars (a list or a (6,) tensor).
      fill: C fill values (0..255).
      interpolation: 'bicubic' | 'bilinear' | 'nearest'.

    Returns:
      float32 (H, W, C) in 0..255, integer valued.

    Raises:
      ValueError: unknown interpolation.
    """
    if interpolation not in ('bicubic', 'bilinear', 'nearest'):
        raise ValueError(f"interpolation must be 'bicubic', 'bilinear' or 'nearest', got {interpolation!r}")
    a, b, c, d, e, f = [tf.cast(m, tf.float32) for m in tf.unstack(tf.convert_to_tensor(matrix, tf.float32))]
    shape = tf.shape(image)
    H, W = shape[0], shape[1]
    Hf, Wf = tf.cast(H, tf.float32), tf.cast(W, tf.float32)
    ys = tf.cast(tf.range(H), tf.float32) + 0.5
    xs = tf.cast(tf.range(W), tf.float32) + 0.5
    X, Y = tf.meshgrid(xs, ys)  # (H, W)
    sx = a * X + b * Y + c
    sy = d * X + e * Y + f
    fill = tf.reshape(tf.cast(fill, tf.float32), [1, 1, -1])
    flat = tf.reshape(image, [-1, tf.shape(image)[2]])

    def gather(iy, ix):
        iy = tf.clip_by_value(iy, 0, H - 1)
        ix = tf.clip_by_value(ix, 0, W - 1)
        return tf.gather(flat, iy * W + ix)  # (H, W, C)

    valid = (sx >= 0) & (sx < Wf) & (sy >= 0) & (sy < Hf)
    if interpolation == 'nearest':
        out = gather(tf.cast(tf.floor(sy), tf.int32), tf.cast(tf.floor(sx), tf.int32))
    else:
        u, v = sx - 0.5, sy - 0.5
        x0, y0 = tf.floor(u), tf.floor(v)
        tx, ty = u - x0, v - y0
        x0, y0 = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
        if interpolation == 'bilinear':
            offs = (0, 1)
            wx = tf.stack([1.0 - tx, tx], -1)
            wy = tf.stack([1.0 - ty, ty], -1)
        else:
            offs = (-1, 0, 1, 2)
            wx, wy = _cubic_weights(tx, -1.0), _cubic_weights(ty, -1.0)
        out = 0.0
        for j, oy in enumerate(offs):
            row = 0.0
            for i, ox in enumerate(offs):
                row += wx[..., i:i + 1] * gather(y0 + oy, x0 + ox)
            out += wy[..., j:j + 1] * row
        out = tf.clip_by_value(tf.floor(out), 0.0, 255.0)
    return tf.where(valid[..., None], out, fill + tf.zeros_like(out))


def rotate(image, degrees, fill, interpolation: str = 'bicubic'):
    """PIL ``Image.rotate(degrees, resample, fillcolor=fill)`` (counter-clockwise for positive
    degrees, about the image centre ``(W/2, H/2)``, same size) on a float32 (H, W, C) 0..255
    image; matrix entries rounded to 15 decimals as PIL does. See :func:`affine_transform`."""
    shape = tf.shape(image)
    cx, cy = tf.cast(shape[1], tf.float32) / 2.0, tf.cast(shape[0], tf.float32) / 2.0
    ang = -tf.cast(degrees, tf.float64) * (math.pi / 180.0)
    r15 = lambda v: tf.cast(tf.round(v * 1e15) / 1e15, tf.float32)  # noqa: E731
    a, b = r15(tf.cos(ang)), r15(tf.sin(ang))
    d, e = -b, a
    # PIL: matrix[2], matrix[5] = transform(-cx, -cy); then += cx, cy.
    c = a * -cx + b * -cy + cx
    f = d * -cx + e * -cy + cy
    return affine_transform(image, tf.stack([a, b, c, d, e, f]), fill, interpolation)


# ------------------------------------------------------------------------------------------
# Pixel ops on 0..255 float images (PIL semantics).


def _grey(image):
    """PIL ``convert('L')``: L = R*299/1000 + G*587/1000 + B*114/1000 (rounded), (H, W, 1)."""
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    return tf.floor((r * 19595.0 + g * 38470.0 + b * 7471.0 + 0x8000) / 65536.0)[..., None]


def _blend(degenerate, image, factor):
    """PIL ``ImageEnhance`` blend ``degenerate + factor (image - degenerate)``, truncated, 0..255."""
    return tf.clip_by_value(tf.floor(degenerate + factor * (image - degenerate)), 0.0, 255.0)


def auto_contrast(image):
    """PIL ``ImageOps.autocontrast`` (cutoff 0), per channel: ``lut[i] = int(i*scale + offset)``
    clamped to 0..255 with ``scale = 255 / (hi - lo)``, ``offset = -lo * scale``; a constant
    channel is left unchanged."""
    lo = tf.reduce_min(image, axis=[0, 1], keepdims=True)
    hi = tf.reduce_max(image, axis=[0, 1], keepdims=True)
    scale = 255.0 / tf.maximum(hi - lo, 1.0)
    out = tf.clip_by_value(tf.floor(image * scale - lo * scale + 1e-4), 0.0, 255.0)
    return tf.where(hi > lo, out, image)


def equalize(image):
    """PIL ``ImageOps.equalize``, per channel: with histogram ``h``, ``step = (sum(h) - h[last
    non-zero]) // 255``; identity when step is 0; else ``lut[i] = (step // 2 + sum(h[:i])) // step``."""
    chans = []
    for ch in range(3):
        x = tf.cast(image[..., ch], tf.int32)
        hist = tf.math.bincount(tf.reshape(x, [-1]), minlength=256, maxlength=256)
        nz = tf.boolean_mask(hist, hist > 0)
        last = nz[-1]
        step = (tf.reduce_sum(hist) - last) // 255
        cum = tf.concat([[0], tf.cumsum(hist)[:-1]], 0)
        lut = (step // 2 + cum) // tf.maximum(step, 1)
        lut = tf.clip_by_value(lut, 0, 255)
        eq = tf.cast(tf.gather(lut, x), tf.float32)
        chans.append(tf.where(step > 0, eq, image[..., ch]))
    return tf.stack(chans, -1)


def posterize(image, bits):
    """PIL ``ImageOps.posterize``: keep the ``bits`` high bits (``bits >= 8``: unchanged)."""
    bits = tf.cast(bits, tf.int32)
    mask = tf.bitwise.invert(tf.bitwise.left_shift(1, 8 - tf.minimum(bits, 8)) - 1)
    mask = tf.bitwise.bitwise_and(mask, 255)
    out = tf.cast(tf.bitwise.bitwise_and(tf.cast(image, tf.int32), mask), tf.float32)
    return tf.where(bits >= 8, image, out)


def solarize(image, threshold):
    """PIL ``ImageOps.solarize``: pixels ``>= threshold`` become ``255 - x``."""
    return tf.where(image >= tf.cast(threshold, tf.float32), 255.0 - image, image)


def solarize_add(image, add, threshold=128):
    """timm ``solarize_add``: pixels ``< threshold`` become ``min(255, x + add)``."""
    return tf.where(image < float(threshold), tf.minimum(255.0, image + tf.cast(add, tf.float32)), image)


def color(image, factor):
    """PIL ``ImageEnhance.Color``: blend with the grey image."""
    return _blend(tf.tile(_grey(image), [1, 1, 3]), image, factor)


def contrast(image, factor):
    """PIL ``ImageEnhance.Contrast``: blend with the constant ``int(mean(grey) + 0.5)``."""
    mean = tf.floor(tf.reduce_mean(_grey(image)) + 0.5)
    return _blend(mean, image, factor)


def brightness(image, factor):
    """PIL ``ImageEnhance.Brightness``: blend with black."""
    return _blend(0.0, image, factor)


def sharpness(image, factor):
    """PIL ``ImageEnhance.Sharpness``: blend with the image filtered by ``SMOOTH``
    ([[1,1,1],[1,5,1],[1,1,1]] / 13, rounded), whose one-pixel border keeps the original."""
    k = tf.constant([[1., 1., 1.], [1., 5., 1.], [1., 1., 1.]]) / 13.0
    k = tf.tile(k[:, :, None, None], [1, 1, 3, 1])
    sm = tf.nn.depthwise_conv2d(image[None], k, [1, 1, 1, 1], 'VALID')[0]
    sm = tf.clip_by_value(tf.round(sm), 0.0, 255.0)
    sm = tf.pad(sm, [[1, 1], [1, 1], [0, 0]])
    shape = tf.shape(image)
    inner = tf.pad(tf.ones(shape[:2] - 2, tf.bool), [[1, 1], [1, 1]], constant_values=False)
    degenerate = tf.where(inner[..., None], sm, image)
    return _blend(degenerate, image, factor)


# ------------------------------------------------------------------------------------------
# RandAugment.



def _apply_op(name: str, img, mag, sign, fill, interpolation, translate_pct=0.45):
    """One timm op at magnitude ``mag`` (0..10, float tensor) with ``sign`` (+1 / -1)."""
    f = mag / LEVEL_DENOM
    if name == 'AutoContrast':
        return auto_contrast(img)
    if name == 'Equalize':
        return equalize(img)
    if name == 'Invert':
        return 255.0 - img
    if name == 'Rotate':
        return rotate(img, sign * f * 30.0, fill, interpolation)
    if name == 'PosterizeIncreasing':
        return posterize(img, 4 - tf.cast(f * 4.0, tf.int32))
    if name == 'Posterize':
        return posterize(img, tf.cast(f * 4.0, tf.int32))
    if name == 'SolarizeIncreasing':
        return solarize(img, 256 - tf.cast(f * 256.0, tf.int32))
    if name == 'Solarize':
        return solarize(img, tf.cast(f * 256.0, tf.int32))
    if name == 'SolarizeAdd':
        return solarize_add(img, tf.cast(f * 110.0, tf.int32))
    enh = {'Color': color, 'Contrast': contrast, 'Brightness': brightness, 'Sharpness': sharpness}
    if name.endswith('Increasing') and name[:-len('Increasing')] in enh:
        return enh[name[:-len('Increasing')]](img, tf.maximum(0.1, 1.0 + sign * f * 0.9))
    if name in enh:   # non-increasing: factor = m/10 * 1.8 + 0.1
        return enh[name](img, f * 1.8 + 0.1)
    shape = tf.shape(img)
    if name == 'ShearX':
        return affine_transform(img, tf.stack([1.0, sign * f * 0.3, 0.0, 0.0, 1.0, 0.0]), fill, interpolation)
    if name == 'ShearY':
        return affine_transform(img, tf.stack([1.0, 0.0, 0.0, sign * f * 0.3, 1.0, 0.0]), fill, interpolation)
    if name == 'TranslateXRel':
        px = sign * f * translate_pct * tf.cast(shape[1], tf.float32)
        return affine_transform(img, tf.stack([1.0, 0.0, px, 0.0, 1.0, 0.0]), fill, interpolation)
    if name == 'TranslateYRel':
        px = sign * f * translate_pct * tf.cast(shape[0], tf.float32)
        return affine_transform(img, tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, px]), fill, interpolation)
    raise ValueError(f'unknown RandAugment op {name!r}')


def rand_augment(image, seed, cfg: RandAugmentConfig, fill: Sequence[float] = (124, 116, 104),
                 interpolation: str = 'bicubic'):
    """timm ``RandAugment`` on one float32 (H, W, 3) image in [0, 1].

    The image is quantised to the 0..255 grid (timm runs on uint8 PIL images), then
    ``cfg.num_layers`` ops are drawn uniformly WITH replacement from ``cfg.ops``; each fires with
    probability ``cfg.prob``, with magnitude ``clip(N(m, mstd), 0, mmax)`` drawn per call
    (``mstd = inf``: ``U(0, m)``) and a random sign for the signed ops. Geometric ops fill with
    ``fill`` (timm: the mean pixel ``round(255 * mean)``, (124, 116, 104) for ImageNet) and
    resample with ``interpolation`` (timm: the pipeline's). See the module docstring for what is
    hand-written. Source: ``timm/data/auto_augment.py`` (``RandAugment``, ``AugmentOp``,
    ``_RAND_INCREASING_TRANSFORMS``, the ``*_level_to_arg`` functions).

    Returns:
      float32 (H, W, 3) in [0, 1], values on the k/255 grid.
    """
    img = tf.round(tf.clip_by_value(image, 0.0, 1.0) * 255.0)
    names = cfg.ops
    for layer in range(cfg.num_layers):
        s = tf.random.experimental.stateless_fold_in(seed, layer)
        s_op, s_p, s_m, s_sign = tf.unstack(tf.random.experimental.stateless_split(s, 4))
        op = tf.random.stateless_uniform([], seed=s_op, minval=0, maxval=len(names), dtype=tf.int32)
        fire = tf.random.stateless_uniform([], seed=s_p) < cfg.prob
        if math.isinf(cfg.magnitude_std):
            mag = tf.random.stateless_uniform([], seed=s_m, minval=0.0, maxval=cfg.magnitude)
        elif cfg.magnitude_std > 0:
            mag = cfg.magnitude + cfg.magnitude_std * tf.random.stateless_normal([], seed=s_m)
        else:
            mag = tf.constant(cfg.magnitude, tf.float32)
        mag = tf.clip_by_value(mag, 0.0, cfg.magnitude_max)
        sign = tf.where(tf.random.stateless_uniform([], seed=s_sign) < 0.5, -1.0, 1.0)
        branches = [functools_partial(_apply_op, n, img, mag, sign, fill, interpolation) for n in names]
        branches.append(functools_partial(tf.identity, img))       # the op does not fire
        img = tf.switch_case(tf.where(fire, op, len(names)), branches)
    return img / 255.0


def functools_partial(fn, *args):
    """``lambda: fn(*args)``: a zero-argument closure per branch for ``tf.switch_case``."""
    return lambda: fn(*args)


# ------------------------------------------------------------------------------------------
# Colour jitter (torchvision ColorJitter, used by timm without auto-augment).


def color_jitter(image, seed, brightness_: float, contrast_: float, saturation_: float, hue_: float = 0.0):
    """torchvision ``ColorJitter(brightness, contrast, saturation, hue)`` on a float32 (H, W, 3)
    image in [0, 1]: the enabled ops in a random order, factors ``U(max(0, 1 - v), 1 + v)``
    (hue shift ``U(-h, h)`` of the hue circle); blends as torchvision (brightness: with black;
    contrast: with the mean of the grey image; saturation: with the grey image), clamped to
    [0, 1]. Grey = 0.299 R + 0.587 G + 0.114 B. Hue uses ``tf.image.adjust_hue``.

    Returns:
      float32 (H, W, 3) in [0, 1].
    """
    perm_seed, fb, fc, fs, fh = tf.unstack(tf.random.experimental.stateless_split(seed, 5))
    grey = lambda x: tf.reduce_sum(x * tf.constant([0.299, 0.587, 0.114]), -1, keepdims=True)  # noqa: E731
    blend = lambda a, x, t: tf.clip_by_value(t * x + (1.0 - t) * a, 0.0, 1.0)  # noqa: E731
    ops = []
    if brightness_ > 0:
        t = _uniform(fb, max(0.0, 1 - brightness_), 1 + brightness_)
        ops.append(lambda x, t=t: blend(tf.zeros_like(x), x, t))
    if contrast_ > 0:
        t = _uniform(fc, max(0.0, 1 - contrast_), 1 + contrast_)
        ops.append(lambda x, t=t: blend(tf.reduce_mean(grey(x)), x, t))
    if saturation_ > 0:
        t = _uniform(fs, max(0.0, 1 - saturation_), 1 + saturation_)
        ops.append(lambda x, t=t: blend(grey(x), x, t))
    if hue_ > 0:
        t = _uniform(fh, -hue_, hue_)
        ops.append(lambda x, t=t: tf.image.adjust_hue(x, t))
    if not ops:
        return image
    order = tf.argsort(tf.random.stateless_uniform([len(ops)], seed=perm_seed))
    for k in range(len(ops)):
        image = tf.switch_case(order[k], [functools_partial(op, image) for op in ops])
    return image


# ------------------------------------------------------------------------------------------
# Random erasing (after normalisation).


def random_erasing(image, seed, prob: float = 0.25, mode: str = 'pixel', count: int = 1,
                   scale: Sequence[float] = (0.02, 1 / 3), ratio: Sequence[float] = (0.3, 1 / 0.3),
                   attempts: int = 10):
    """timm ``RandomErasing`` on one NORMALISED float32 (H, W, C) image.

    With probability ``prob`` erase ``count`` boxes; each takes up to ``attempts`` tries of
    area ``U(scale) * H * W / count`` and aspect ``exp(U(log ratio))``, ``h = round(sqrt(area *
    aspect))``, ``w = round(sqrt(area / aspect))``, accepted when ``w < W and h < H``; corner
    uniform (``randint(0, H - h)``); no valid try, no box. The box is filled with N(0, 1) noise
    per pixel and channel (``'pixel'``), per channel (``'rand'``) or zeros (``'const'``).
    Hand-written (no TF op). Source: ``timm/data/random_erasing.py``.

    Raises:
      ValueError: unknown mode.
    """
    if mode not in ERASE_MODES:
        raise ValueError(f'data.remode must be one of {ERASE_MODES}, got {mode!r}')
    shape = tf.shape(image)
    H, W, C = shape[0], shape[1], shape[2]
    s_p, s_boxes = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    apply = tf.random.stateless_uniform([], seed=s_p) < prob
    area = tf.cast(H * W, tf.float32)
    out = image
    rows = tf.range(H)[:, None]
    cols = tf.range(W)[None, :]
    for k in range(count):
        sk = tf.random.experimental.stateless_fold_in(s_boxes, k)
        s_a, s_r, s_y, s_x, s_n = tf.unstack(tf.random.experimental.stateless_split(sk, 5))
        target = _uniform(s_a, float(scale[0]), float(scale[1]), [attempts]) * area / count
        aspect = tf.exp(_uniform(s_r, math.log(ratio[0]), math.log(ratio[1]), [attempts]))
        h = _round_half_even(tf.sqrt(target * aspect))
        w = _round_half_even(tf.sqrt(target / aspect))
        ok = (w < W) & (h < H)
        first = tf.argmax(tf.cast(ok, tf.int32), output_type=tf.int32)
        bh, bw = h[first], w[first]
        found = tf.reduce_any(ok)
        top = _randint(s_y, 0, H - bh)
        left = _randint(s_x, 0, W - bw)
        box = (rows >= top) & (rows < top + bh) & (cols >= left) & (cols < left + bw)
        box = box & found & apply
        if mode == 'pixel':
            fill = tf.random.stateless_normal(shape, seed=s_n, dtype=image.dtype)
        elif mode == 'rand':
            fill = tf.random.stateless_normal([1, 1, C], seed=s_n, dtype=image.dtype) + tf.zeros_like(image)
        else:
            fill = tf.zeros_like(image)
        out = tf.where(box[..., None], fill, out)
    return out


# ------------------------------------------------------------------------------------------
# The per-example train-time chain used by the pipeline.



def color_ops(image, seed, cfg: AugmentConfig):
    """timm's post-crop colour stage on a float32 (H, W, 3) image in [0, 1]: RandAugment when
    set, else colour jitter when set (timm ``transforms_imagenet_train``), else unchanged."""
    if cfg.rand_augment is not None:
        return rand_augment(image, seed, cfg.rand_augment, cfg.fill, cfg.interpolation)
    if any(v > 0 for v in cfg.color_jitter):
        return color_jitter(image, seed, *cfg.color_jitter)
    return image


def erase(image, seed, cfg: AugmentConfig):
    """:func:`random_erasing` with the config's fields (identity when ``reprob == 0``)."""
    if cfg.reprob <= 0:
        return image
    return random_erasing(image, seed, cfg.reprob, cfg.remode, cfg.recount, cfg.re_scale, cfg.re_ratio)
