"""Per-example preprocessing in TensorFlow graph code: decode, crop, resize, flip, colour.

The training transform is the random resized crop of torchvision / timm (area fraction in
``crop_scale``, aspect ratio in ``crop_ratio``), resize to ``image_size``, optional horizontal
flip and the timm colour stage (:mod:`jaxmim.data.augment`), as microsoft/SimMIM@d3e29bc
``data/data_simmim.py:48-76`` (pre-training) and ``data/data_finetune.py:81-90``
(fine-tuning) build it; the evaluation transform resizes the shorter side to
``image_size / eval_crop_ratio`` and centre-crops (``data/data_finetune.py:97-114``). Both map one
TFDS example (``{'image': encoded bytes, ...}``) to a float32 ``(S, S, 3)`` RGB image in [0, 1];
normalisation, random erasing and batching are :func:`jaxmim.data.pipeline.create_split`'s.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from jaxmim.data import augment
from jaxmim.data.data_config import INTERPOLATIONS, DataConfig

__all__ = ['sample_crop_window', 'make_train_fn', 'make_eval_fn']


def _to_rgb_float(image: tf.Tensor) -> tf.Tensor:
    """(H, W, 1|3) integer image -> float32 (H, W, 3) in [0, 1]."""
    if image.shape[-1] == 1:
        image = tf.image.grayscale_to_rgb(image)
    return tf.image.convert_image_dtype(image, tf.float32)


def _make_decoder(feature: tfds.features.Image):
    """Returns encoded bytes -> uint8/uint16 (H, W, 1|3) image."""
    channels = feature.shape[-1] if feature.shape else None
    if channels in (1, 3):
        return feature.decode_example
    # Unknown or 4 channels: let the codec convert to RGB.
    return lambda encoded: tf.io.decode_image(encoded, channels=3, expand_animations=False)


def sample_crop_window(height, width, rng, cfg: DataConfig):
    """Random-resized-crop window ``(y, x, h, w)`` (int32 scalar tensors) for an image of
    ``(height, width)`` (int32 scalar tensors), drawn from the stateless seed ``rng`` (a
    ``(2,)`` int tensor).

    With ``crop_impl='timm'``: :func:`jaxmim.data.augment.sample_crop_window_timm` (timm's
    ``RandomResizedCropAndInterpolation.get_params`` exactly). With ``'tf'`` (the default):

    Like torchvision ``RandomResizedCrop`` (used by SimMIM data_simmim.py): area
    fraction in ``crop_scale``, aspect ratio (w/h) in ``crop_ratio`` sampled by
    ``tf.image.stateless_sample_distorted_bounding_box`` (10 attempts); when no
    window fits it falls back to a centre crop with the aspect ratio clamped
    into ``crop_ratio``.

    Source: torchvision ``transforms.RandomResizedCrop.get_params`` as used by
    microsoft/SimMIM@d3e29bc ``data/data_simmim.py:48-76``.
    """
    if cfg.aug.crop_impl == 'timm':
        return augment.sample_crop_window_timm(height, width, rng, cfg.crop_scale, cfg.crop_ratio)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        image_size=tf.stack([height, width, 1]),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]], tf.float32),
        seed=rng,
        min_object_covered=0.0,
        aspect_ratio_range=cfg.crop_ratio,
        area_range=cfg.crop_scale,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    y, x = begin[0], begin[1]
    h, w = size[0], size[1]
    # TF returns the whole image when no window was found.
    failed = tf.logical_and(tf.equal(h, height), tf.equal(w, width))
    hf = tf.cast(height, tf.float32)
    wf = tf.cast(width, tf.float32)
    ratio = wf / hf
    lo, hi = cfg.crop_ratio
    fb_w = tf.where(ratio > hi, tf.round(hf * hi), wf)
    fb_h = tf.where(ratio < lo, tf.round(wf / lo), hf)
    fb_h = tf.clip_by_value(tf.cast(fb_h, tf.int32), 1, height)
    fb_w = tf.clip_by_value(tf.cast(fb_w, tf.int32), 1, width)
    fb_y = (height - fb_h) // 2
    fb_x = (width - fb_w) // 2
    pick = lambda a, b: tf.where(failed, a, b)  # noqa: E731
    return pick(fb_y, y), pick(fb_x, x), pick(fb_h, h), pick(fb_w, w)


def make_train_fn(cfg: DataConfig, feature: tfds.features.Image) -> Callable:
    """The training transform of one example.

    Args:
      cfg: the checked data config (``image_size``, ``crop_scale``, ``crop_ratio``,
        ``interpolation``, ``hflip``, ``aug``).
      feature: the dataset's image feature; JPEG-encoded uint8 images take the fast path that
        decodes only the crop window (``tf.image.decode_and_crop_jpeg``).

    Returns:
      ``train_fn(example, rng)``: ``example['image']`` encoded bytes and ``rng`` a ``(2,)``
      stateless seed -> float32 ``(image_size, image_size, 3)`` RGB in [0, 1], not normalised.
      The crop and the flip draw from two keys split off ``rng``; the colour stage from
      ``fold_in(rng, 1001)``.
    """
    decode = _make_decoder(feature)
    size = [cfg.image_size, cfg.image_size]
    method = INTERPOLATIONS[cfg.interpolation]
    jpeg_fast_path = feature.encoding_format == 'jpeg' and feature.np_dtype == np.uint8

    def crop_generic(encoded, rng):
        image = decode(encoded)
        shape = tf.shape(image)
        y, x, h, w = sample_crop_window(shape[0], shape[1], rng, cfg)
        return _to_rgb_float(image[y : y + h, x : x + w])

    def crop_jpeg(encoded, rng):
        # Decodes only the window: much faster for large JPEGs (ImageNet).
        shape = tf.image.extract_jpeg_shape(encoded)
        y, x, h, w = sample_crop_window(shape[0], shape[1], rng, cfg)
        image = tf.image.decode_and_crop_jpeg(encoded, tf.stack([y, x, h, w]), channels=3)
        return tf.image.convert_image_dtype(image, tf.float32)

    def train_fn(example, rng):
        crop_rng, flip_rng = tf.unstack(tf.random.experimental.stateless_split(rng, 2))
        encoded = example['image']
        if jpeg_fast_path:
            image = tf.cond(
                tf.io.is_jpeg(encoded),
                lambda: crop_jpeg(encoded, crop_rng),
                lambda: crop_generic(encoded, crop_rng),
            )
        else:
            image = crop_generic(encoded, crop_rng)
        image = tf.image.resize(image, size, method=method, antialias=True)
        image = tf.clip_by_value(image, 0.0, 1.0)
        if cfg.hflip:
            flip = tf.random.stateless_uniform([], seed=flip_rng) < 0.5
            image = tf.where(flip, tf.reverse(image, axis=[1]), image)
        if cfg.aug.any_color:   # RandAugment, else colour jitter (timm); own key: crop/flip keys unchanged
            image = augment.color_ops(image, tf.random.experimental.stateless_fold_in(rng, 1001), cfg.aug)
        return image

    return train_fn


def make_eval_fn(cfg: DataConfig, feature: tfds.features.Image) -> Callable:
    """The evaluation transform of one example (deterministic).

    Args:
      cfg: the checked data config (``image_size``, ``eval_crop_ratio``, ``interpolation``).
      feature: the dataset's image feature (its channel count picks the decoder).

    Returns:
      ``eval_fn(example)``: ``example['image']`` encoded bytes -> float32
      ``(image_size, image_size, 3)`` RGB in [0, 1], not normalised: the shorter side resized
      to ``floor(image_size / eval_crop_ratio)`` (the longer one scaled and truncated, as
      torchvision) and the centre ``image_size`` crop; ``eval_crop_ratio == 1`` resizes straight
      to ``image_size x image_size``.
    """
    decode = _make_decoder(feature)
    s = cfg.image_size
    method = INTERPOLATIONS[cfg.interpolation]
    # Guard against 224 / (224/256) = 255.99999...
    resize_to = int(math.floor(s / cfg.eval_crop_ratio + 1e-6))

    def eval_fn(example):
        image = _to_rgb_float(decode(example['image']))
        if cfg.eval_crop_ratio == 1.0:
            image = tf.image.resize(image, [s, s], method=method, antialias=True)
        else:
            shape = tf.shape(image)
            h, w = shape[0], shape[1]
            short = tf.minimum(h, w)
            # Shorter side -> resize_to, longer side scaled (truncated) like torchvision.
            new_h = tf.where(h == short, resize_to, (resize_to * h) // short)
            new_w = tf.where(w == short, resize_to, (resize_to * w) // short)
            image = tf.image.resize(image, tf.stack([new_h, new_w]), method=method, antialias=True)
            top = (new_h - s) // 2
            left = (new_w - s) // 2
            image = image[top : top + s, left : left + s]
        image = tf.ensure_shape(image, [s, s, 3])
        return tf.clip_by_value(image, 0.0, 1.0)

    return eval_fn
