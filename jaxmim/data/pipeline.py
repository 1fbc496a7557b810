"""tf.data input pipeline for TFDS image-classification datasets.

Works for any TFDS dataset with an image feature (``tfds.features.Image``) and
an integer label feature, e.g. ``fashion_mnist_local`` (see
:mod:`jaxmim.data.fashion_mnist`), ``cifar10`` or ``imagenet2012``. The
dataset, splits and augmentation come from an ``ml_collections.ConfigDict``
(fields documented in :func:`create_split`).

Output batches are numpy dicts in NHWC layout, sized per process: each JAX
process (host) reads a disjoint, contiguous, near-equal slice of the split
(``tfds.split_for_jax_process``, https://www.tensorflow.org/datasets/splits).

Transforms follow SimMIM (github.com/microsoft/SimMIM): pre-training uses
``data/data_simmim.py`` (RandomResizedCrop with scale (0.67, 1), ratio
(3/4, 4/3), random horizontal flip, ImageNet mean/std normalisation);
fine-tuning uses ``data/build.py`` (timm ``create_transform``: random resized
crop with scale (0.08, 1); evaluation resizes the shorter side to
``image_size / crop_pct`` and centre-crops). The timm colour stage (RandAugment or colour
jitter) and random erasing come from :mod:`jaxmim.data.augment` when the config turns them on;
mixup / cutmix run on device in the train step (:mod:`jaxmim.mixup`).

TensorFlow is only used on the host CPU: importing this module hides every GPU
and TPU from TensorFlow (:func:`hide_accelerators_from_tf`) so it does not
grab accelerator memory that JAX needs.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from typing import Any, Iterator, Optional

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from jaxmim import config as config_lib
from jaxmim.config import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401  (re-exported by jaxmim.data)
from jaxmim.data import augment
from jaxmim.data import fashion_mnist
from jaxmim.data import image_folder
from jaxmim.data import resume

INTERPOLATIONS = {
    'bicubic': tf.image.ResizeMethod.BICUBIC,
    'bilinear': tf.image.ResizeMethod.BILINEAR,
}
"""Accepted values of the data config field ``interpolation``."""

IMAGE_FEATURE = 'image'
"""Name of the TFDS image feature the pipeline reads (``tfds.features.Image``)."""
LABEL_FEATURE = 'label'
"""Name of the TFDS integer label feature the pipeline reads."""


def hide_accelerators_from_tf() -> None:
    """Makes TensorFlow see no GPU/TPU so that only JAX uses the accelerators.

    Safe to call repeatedly and on CPU-only TensorFlow builds. Must run before
    TensorFlow initialises its devices (i.e. before the first TF op); called
    when this module is imported. When it is too late, logs a warning instead of
    raising.
    """
    for kind in ('GPU', 'TPU'):
        try:
            tf.config.set_visible_devices([], kind)
        except (RuntimeError, ValueError) as e:  # Already initialised / unknown.
            logging.warning('Could not hide %s devices from TensorFlow: %s', kind, e)


hide_accelerators_from_tf()


class DatasetNotFoundError(FileNotFoundError):
    """A TFDS dataset is unknown or has not been prepared in the data dir.

    The message names the dataset, the data dir that was searched and how to
    prepare the dataset (for ``imagenet2012``: the manual download of
    ``ILSVRC2012_img_train.tar`` / ``ILSVRC2012_img_val.tar`` and
    ``tfds build imagenet2012``).
    """


# --------------------------------------------------------------------------
# Configuration.

@dataclasses.dataclass(frozen=True)
class _DataConfig:
    """A complete, checked data config (fields documented in :func:`create_split`)."""

    dataset: str
    image_size: int
    data_dir: Optional[str]
    train_split: str
    eval_split: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_scale: tuple[float, float]
    crop_ratio: tuple[float, float]
    hflip: bool
    eval_crop_ratio: float
    interpolation: str
    shuffle_buffer: int
    cache: bool
    prefetch: int
    aug: augment.AugmentConfig = augment.AugmentConfig()   # the checked fields below, parsed
    on_decode_error: str = 'raise'
    crop_impl: str = 'tf'
    auto_augment: str = ''
    color_jitter: tuple = (0.0, 0.0, 0.0)
    reprob: float = 0.0
    remode: str = 'pixel'
    recount: int = 1
    re_scale: tuple = (0.02, 1.0 / 3.0)
    re_ratio: tuple = (0.3, 1.0 / 0.3)


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _is_number(x) -> bool:
    return (_is_int(x) or isinstance(x, (float, np.floating))) and math.isfinite(x)


def _complete_config(config: Any) -> dict[str, Any]:
    """The caller's data config completed from :func:`jaxmim.config._data_defaults`.

    ``jaxmim.config._data_defaults()`` is the single source of the data defaults; a partial
    config (a mapping or an ``ml_collections.ConfigDict`` holding only some fields) takes
    every missing field from it.

    Raises:
      ValueError: ``config`` is None or not a mapping/ConfigDict, or it holds a field the
        data config does not have (the message names the field and the close valid ones).
    """
    if config is None:
        raise ValueError('The data config is None; expected an ml_collections.ConfigDict.')
    items = getattr(config, 'items', None)
    if not callable(items):
        raise ValueError(
            f'The data config must be an ml_collections.ConfigDict or a mapping, got '
            f'{type(config).__name__}.'
        )
    values = dict(config_lib._data_defaults().items())  # pylint: disable=protected-access
    for name, value in items():
        if name not in values:
            close = difflib.get_close_matches(name, list(values), n=3)
            raise ValueError(
                f'Unknown data config field {name!r}; close valid fields: {close}; '
                f'valid fields: {sorted(values)}.'
            )
        values[name] = value
    return values


def _bad(name: str, value: Any, accepted: str) -> ValueError:
    return ValueError(f'Invalid data config field {name!r} = {value!r}: expected {accepted}.')


def _number_tuple(values: dict[str, Any], name: str, n: int, accepted: str) -> tuple[float, ...]:
    value = values[name]
    if (
        not isinstance(value, (tuple, list))
        or len(value) != n
        or not all(_is_number(v) for v in value)
    ):
        raise _bad(name, value, accepted)
    return tuple(float(v) for v in value)


def _validate_config(config: Any) -> _DataConfig:
    """Completes (see :func:`_complete_config`) and checks the data config; raises ValueError
    naming the field."""
    values = _complete_config(config)
    for name, value in values.items():
        if value is None and name != 'data_dir':
            raise ValueError(
                f'Data config field {name!r} is None: set it, or fill the model-dependent fields '
                '(image size, mean/std, eval crop ratio) from the registered model with '
                'jaxmim.config.resolve_data_config(config) first.'
            )

    dataset = values['dataset']
    if not isinstance(dataset, str) or not dataset:
        raise _bad('dataset', dataset, "a TFDS dataset name such as 'fashion_mnist_local' or 'imagenet2012'")

    image_size = values['image_size']
    if not _is_int(image_size) or image_size < 1:
        raise _bad('image_size', image_size, 'a positive int (output height = width, pixels)')

    data_dir = values['data_dir']
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise _bad('data_dir', data_dir, 'None (TFDS default) or a directory path')

    splits = {}
    for name in ('train_split', 'eval_split'):
        value = values[name]
        if not isinstance(value, str) or not value:
            raise _bad(name, value, "a TFDS split name such as 'train', 'test' or 'validation'")
        splits[name] = value

    unit = 'a 3-tuple of per-channel RGB values in [0, 1] pixel units'
    mean = _number_tuple(values, 'mean', 3, unit + ', e.g. (0.485, 0.456, 0.406)')
    if not all(0.0 <= m <= 1.0 for m in mean):
        raise _bad('mean', mean, unit + ' (not 0-255 units), e.g. (0.485, 0.456, 0.406)')
    std = _number_tuple(values, 'std', 3, unit + ', e.g. (0.229, 0.224, 0.225)')
    if not all(0.0 < s <= 1.0 for s in std):
        raise _bad('std', std, unit + ', each > 0 (not 0-255 units), e.g. (0.229, 0.224, 0.225)')

    scale_msg = '(min, max) area fractions with 0 < min <= max <= 1, e.g. (0.67, 1.0)'
    crop_scale = _number_tuple(values, 'crop_scale', 2, scale_msg)
    if not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
        raise _bad('crop_scale', crop_scale, scale_msg)

    ratio_msg = '(min, max) width/height aspect ratios with 0 < min <= max, e.g. (3/4, 4/3)'
    crop_ratio = _number_tuple(values, 'crop_ratio', 2, ratio_msg)
    if not 0.0 < crop_ratio[0] <= crop_ratio[1]:
        raise _bad('crop_ratio', crop_ratio, ratio_msg)

    hflip = values['hflip']
    if not isinstance(hflip, (bool, np.bool_)):
        raise _bad('hflip', hflip, 'True or False')

    eval_crop_ratio = values['eval_crop_ratio']
    if not _is_number(eval_crop_ratio) or not 0.0 < eval_crop_ratio <= 1.0:
        raise _bad('eval_crop_ratio', eval_crop_ratio, 'a number in (0, 1], e.g. 224/256 or 1.0 (plain resize)')

    interpolation = values['interpolation']
    if interpolation not in INTERPOLATIONS:
        raise _bad('interpolation', interpolation, f'one of {sorted(INTERPOLATIONS)}')

    shuffle_buffer = values['shuffle_buffer']
    if not _is_int(shuffle_buffer) or shuffle_buffer < 0:
        raise _bad('shuffle_buffer', shuffle_buffer, 'an int >= 0 (examples; 0 or 1 disables shuffling)')

    cache = values['cache']
    if not isinstance(cache, (bool, np.bool_)):
        raise _bad('cache', cache, 'True or False')

    prefetch = values['prefetch']
    if not _is_int(prefetch) or prefetch < -1:
        raise _bad('prefetch', prefetch, 'an int >= 0 (batches; 0 disables) or -1 (tf.data.AUTOTUNE)')

    aug = augment.augment_config_from_fields(values, mean, interpolation)
    on_decode_error = values['on_decode_error']
    if on_decode_error not in ('raise', 'skip'):
        raise _bad('on_decode_error', on_decode_error, "'raise' (stop at a corrupt image) or 'skip'")

    return _DataConfig(
        aug=aug,
        on_decode_error=on_decode_error,
        **{k: values[k] for k in ('crop_impl', 'auto_augment', 'color_jitter', 'reprob', 'remode', 'recount',
                                  're_scale', 're_ratio')},
        dataset=dataset,
        image_size=int(image_size),
        data_dir=os.fspath(data_dir) if data_dir is not None else None,
        mean=mean,
        std=std,
        crop_scale=crop_scale,
        crop_ratio=crop_ratio,
        hflip=bool(hflip),
        eval_crop_ratio=float(eval_crop_ratio),
        interpolation=interpolation,
        shuffle_buffer=int(shuffle_buffer),
        cache=bool(cache),
        prefetch=int(prefetch),
        **splits,
    )


# --------------------------------------------------------------------------
# Datasets.


def _how_to_prepare(name: str, builder, data_dir_root: str) -> str:
    base = name.split(':')[0].split('/')[0]
    if base == 'imagenet2012':
        return (
            'ImageNet (ILSVRC 2012) cannot be downloaded automatically. Register at '
            'https://image-net.org/download-images, download '
            'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar into '
            f'{os.path.join(data_dir_root, "downloads", "manual")}, then run '
            f'`tfds build imagenet2012 --data_dir={data_dir_root}` '
            '(takes hours and ~300 GB of disk).'
        )
    text = (
        f'Prepare it with `tfds build {name} --data_dir={data_dir_root}` or '
        f'tfds.builder({name!r}, data_dir={data_dir_root!r}).download_and_prepare().'
    )
    instructions = getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None)
    if instructions:
        text += (
            ' This dataset needs a manual download into '
            f'{os.path.join(data_dir_root, "downloads", "manual")} first:\n'
            + str(instructions).strip()
        )
    return text


def get_dataset_builder(name: str, data_dir: Optional[str] = None,
                        on_decode_error: str = 'raise') -> tfds.core.DatasetBuilder:
    """Returns a prepared TFDS builder for dataset ``name``.

    Follows the TFDS builder API (https://www.tensorflow.org/datasets/api_docs/
    python/tfds/builder). ``fashion_mnist_local`` is prepared automatically from
    the local idx files on first use (:func:`prepare_fashion_mnist`); any other
    dataset must already be prepared in ``data_dir``; nothing is downloaded.

    Args:
      name: TFDS name, optionally with config/version (``'imagenet2012:5.1.0'``).
      data_dir: TFDS data dir; ``None`` means the TFDS default
        (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
        For ``name='image_folder'``: the folder of ``<split>/<class>/<image>``
        (:mod:`jaxmim.data.image_folder`).
      on_decode_error: image folders: 'raise' (a corrupt image stops, named) or 'skip'.

    Returns:
      A ``tfds.core.DatasetBuilder`` whose ``info.splits`` hold the split sizes.

    Raises:
      DatasetNotFoundError: the name is unknown to TFDS, or the dataset is not
        prepared in ``data_dir``; the message names the dataset, the data dir and
        how to prepare it (for ``imagenet2012``: download
        ``ILSVRC2012_img_train.tar`` / ``ILSVRC2012_img_val.tar`` into
        ``<data_dir>/downloads/manual`` and run ``tfds build imagenet2012``).
      FileNotFoundError / ValueError: from :func:`prepare_fashion_mnist` when
        the Fashion-MNIST idx files are missing or corrupt.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f'Dataset name must be a non-empty str, got {name!r}.')
    data_dir = os.fspath(data_dir) if data_dir is not None else None
    if name.split(':')[0] == fashion_mnist.FashionMnistLocal.name:
        return fashion_mnist.prepare_fashion_mnist(data_dir=data_dir)
    if name == image_folder.NAME:   # data_dir/<split>/<class>/<image>; corrupt files: on_decode_error
        return image_folder.ImageFolderBuilder(data_dir, on_decode_error)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DatasetNotFoundError(
            f'Unknown TFDS dataset {name!r} (looked in data_dir '
            f'{data_dir or tfds.core.constants.DATA_DIR!r}): check the spelling; '
            'the names are listed by tfds.list_builders().'
        ) from e
    if not builder.is_prepared():
        root = os.fspath(builder.data_dir_root)
        raise DatasetNotFoundError(
            f'TFDS dataset {name!r} is not prepared in data_dir {root!r} (looked '
            f'for {os.fspath(builder.data_dir)!r}). '
            + _how_to_prepare(name, builder, root)
        )
    return builder


def _builder_kwargs(cfg: _DataConfig) -> dict[str, Any]:
    """Extra :func:`get_dataset_builder` arguments of a config (image folders only)."""
    return {'on_decode_error': cfg.on_decode_error} if cfg.dataset == image_folder.NAME else {}


def _split_size(builder, split, field: Optional[str] = None) -> int:
    try:
        return int(builder.info.splits[split].num_examples)
    except Exception as e:  # pylint: disable=broad-except
        available = sorted(builder.info.splits.keys())
        where = f'data config field {field!r} = {split!r}' if field else f'split {split!r}'
        raise ValueError(
            f'Invalid {where} for dataset {builder.info.full_name!r}: expected one of '
            f'{available} or a TFDS sub-split such as "{available[0] if available else "train"}[:10%]" ({e}).'
        ) from e


def num_examples(config: Any, split: str) -> int:
    """Number of examples of ``split`` of the configured dataset (all processes).

    Args:
      config: data config (see :func:`create_split`); ``dataset`` and
        ``data_dir`` are used.
      split: a TFDS split name (``'train'``, ``'test'``, ``'validation'``) or
        sub-split expression (``'train[:10%]'``).

    Returns:
      int, the number of examples in the whole split, over all processes.

    Raises:
      ValueError: bad config field or unknown split (names the accepted splits).
      DatasetNotFoundError: as :func:`get_dataset_builder`.
    """
    cfg = _validate_config(config)
    builder = get_dataset_builder(cfg.dataset, cfg.data_dir, **_builder_kwargs(cfg))
    return _split_size(builder, split)


# --------------------------------------------------------------------------
# Preprocessing (TF graph code, one example at a time).


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


def _sample_crop_window(height, width, rng, cfg: _DataConfig):
    """Random-resized-crop window (y, x, h, w) for an image of (height, width).

    With ``crop_impl='timm'``: :func:`jaxmim.data.augment.sample_crop_window_timm` (timm's
    ``RandomResizedCropAndInterpolation.get_params`` exactly). With ``'tf'`` (the default):

    Like torchvision ``RandomResizedCrop`` (used by SimMIM data_simmim.py): area
    fraction in ``crop_scale``, aspect ratio (w/h) in ``crop_ratio`` sampled by
    ``tf.image.stateless_sample_distorted_bounding_box`` (10 attempts); when no
    window fits it falls back to a centre crop with the aspect ratio clamped
    into ``crop_ratio``.
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


def _make_train_fn(cfg: _DataConfig, feature: tfds.features.Image):
    decode = _make_decoder(feature)
    size = [cfg.image_size, cfg.image_size]
    method = INTERPOLATIONS[cfg.interpolation]
    jpeg_fast_path = feature.encoding_format == 'jpeg' and feature.np_dtype == np.uint8

    def crop_generic(encoded, rng):
        image = decode(encoded)
        shape = tf.shape(image)
        y, x, h, w = _sample_crop_window(shape[0], shape[1], rng, cfg)
        return _to_rgb_float(image[y : y + h, x : x + w])

    def crop_jpeg(encoded, rng):
        # Decodes only the window: much faster for large JPEGs (ImageNet).
        shape = tf.image.extract_jpeg_shape(encoded)
        y, x, h, w = _sample_crop_window(shape[0], shape[1], rng, cfg)
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


def _make_eval_fn(cfg: _DataConfig, feature: tfds.features.Image):
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


# --------------------------------------------------------------------------
# The split iterator.


def create_split(
    config: Any,
    *,
    train: bool,
    batch_size: int,
    seed: int = 0,
    process_index: Optional[int] = None,
    process_count: Optional[int] = None,
    start_step: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """Builds the per-process input iterator for training or evaluation.

    Follows the TFDS/tf.data performance guides
    (https://www.tensorflow.org/datasets/performances) and SimMIM's transforms
    (``data/data_simmim.py`` for pre-training crops, ``data/build.py`` for
    fine-tuning/eval).

    Pipeline: read this process's slice of the split (even, contiguous,
    disjoint across processes, like ``tfds.split_for_jax_process``) -> optional
    cache of the encoded examples (eval) -> [train: endless block/window
    shuffled stream of :mod:`jaxmim.data.resume`, reshuffled per epoch] ->
    decode -> grey to RGB (``tf.image.grayscale_to_rgb``) -> float in [0, 1] ->
    train: random resized crop + resize to ``image_size`` + optional random
    horizontal flip / eval: resize + centre crop -> ``(x - mean) / std`` ->
    batch -> prefetch.

    Config fields (``ml_collections.ConfigDict`` or mapping). A missing field
    takes its value from ``jaxmim.config._data_defaults()``, the single source of
    the data defaults; fields that are None there and here (the model-dependent
    ones, which ``jaxmim.config.resolve_data_config`` fills from the registered
    model) and unknown fields raise ValueError.
      dataset: TFDS name, e.g. ``'fashion_mnist_local'``, ``'imagenet2012'``. The
        dataset must have an image feature ``'image'`` (``tfds.features.Image``)
        and an integer feature ``'label'``.
      data_dir: TFDS data dir (None: TFDS default).
      train_split / eval_split: TFDS split or sub-split (``'train'``, ``'test'``,
        ``'validation'``, ``'test[:1000]'``).
      image_size: output height = width, pixels.
      mean / std: per-channel RGB, [0, 1] pixel units.
      crop_scale: (min, max) crop area fraction (SimMIM pre-training uses
        (0.67, 1.0), fine-tuning (0.08, 1.0)).
      crop_ratio: (min, max) crop aspect ratio w/h.
      hflip: random horizontal flip in training.
      eval_crop_ratio: eval resizes the shorter side to
        ``floor(image_size / eval_crop_ratio)`` then centre-crops ``image_size``;
        1.0 resizes straight to ``image_size x image_size``.
      interpolation: ``'bicubic'`` or ``'bilinear'`` (antialiased).
      shuffle_buffer: training shuffle window, examples (blocks of up to 1024
        records read whole and permuted together); 0/1 disable.
      cache: cache the encoded examples in memory (evaluation only; training
        reads blocks by index, :mod:`jaxmim.data.resume`).
      prefetch: batches to prefetch; 0 disables, -1 autotunes.
      crop_impl: ``'tf'`` (default sampler) or ``'timm'`` (timm's RandomResizedCrop window).
      auto_augment: ``''`` or a timm RandAugment string (``'rand-m9-mstd0.5-inc1'``).
      color_jitter: (brightness, contrast, saturation[, hue]); applied only without
        auto_augment (timm).
      reprob / remode / recount / re_scale / re_ratio: timm random erasing, after
        normalisation (:func:`jaxmim.data.augment.random_erasing`).
      on_decode_error: ``'raise'`` or ``'skip'`` (image-folder datasets).

    Args:
      config: the data config described above.
      train: training (augment, shuffle, repeat forever, drop the last partial
        batch) or evaluation (one deterministic pass, padded last batch + mask).
      batch_size: GLOBAL batch size over all processes.
      seed: seeds file order, shuffling and augmentation; same seed, same
        config and same process layout give the same batches.
      process_index: this process in ``[0, process_count)`` [``jax.process_index()``].
      process_count: number of processes [``jax.process_count()``].
      start_step: training only: start the stream after ``start_step`` batches,
        so a run resumed at step k sees exactly the batches an uninterrupted run
        sees from step k on. The order is a pure function of (seed, process,
        epoch, position) (:mod:`jaxmim.data.resume`): whole epochs and windows
        are skipped arithmetically and only the one window (~``shuffle_buffer``
        records) holding the start is read, so resuming costs the same at any
        step [0].

    Returns:
      An iterator of dicts of numpy arrays, with B = batch_size // process_count:
        ``'image'``: float32 (B, image_size, image_size, 3), NHWC, RGB,
          normalised ``(x - mean) / std`` with x in [0, 1];
        ``'label'``: int32 (B,) class ids;
        eval only ``'mask'``: float32 (B,), 1.0 for real examples, 0.0 for
          padding (padding images are all 0 and labels 0).
      Training iterates forever. Evaluation yields
      ``ceil(ceil(N / process_count) / B)`` batches on EVERY process (N = split
      size), so all processes run the same number of steps, and the masks sum
      to exactly N over all processes.

    Raises:
      ValueError: a bad or unknown config field (names the field and what is
        accepted), unknown split, a dataset without ``'image'`` / ``'label'``
        features, ``batch_size`` not a positive multiple of
        ``process_count``, or ``process_index`` out of range.
      DatasetNotFoundError: the dataset is not prepared (see
        :func:`get_dataset_builder`).
    """
    cfg = _validate_config(config)
    if process_index is None or process_count is None:
        import jax  # pylint: disable=g-import-not-at-top

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not _is_int(process_count) or process_count < 1:
        raise ValueError(f'process_count must be an int >= 1, got {process_count!r}.')
    if not _is_int(process_index) or not 0 <= process_index < process_count:
        raise ValueError(f'process_index must be an int in [0, {process_count}), got {process_index!r}.')
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f'batch_size must be a positive int (global batch), got {batch_size!r}.')
    if batch_size % process_count:
        raise ValueError(
            f'Global batch_size {batch_size} is not divisible by process_count '
            f'{process_count}; use a multiple of {process_count}.'
        )
    if not _is_int(seed):
        raise ValueError(f'seed must be an int, got {seed!r}.')
    local_batch = batch_size // process_count

    builder = get_dataset_builder(cfg.dataset, cfg.data_dir, **_builder_kwargs(cfg))
    features = builder.info.features
    image_feature = features[IMAGE_FEATURE] if IMAGE_FEATURE in features else None
    if not isinstance(image_feature, tfds.features.Image) or LABEL_FEATURE not in features:
        raise ValueError(
            f'Dataset {builder.info.full_name!r} has features {sorted(features.keys())}; '
            f'expected an image feature {IMAGE_FEATURE!r} (tfds.features.Image) and an '
            f'integer label feature {LABEL_FEATURE!r}.'
        )

    split_field = 'train_split' if train else 'eval_split'
    split = getattr(cfg, split_field)
    total = _split_size(builder, split, split_field)
    host_splits = tfds.even_splits(split, n=process_count)
    host_sizes = [_split_size(builder, s, split_field) for s in host_splits]
    host_split, host_size = host_splits[process_index], host_sizes[process_index]
    if train and host_size == 0:
        raise ValueError(
            f'Split {split!r} of {builder.info.full_name!r} has {total} examples, '
            f'fewer than process_count={process_count}: process {process_index} gets none.'
        )

    options = tf.data.Options()
    options.deterministic = True
    options.experimental_optimization.map_parallelization = True
    read_config = tfds.ReadConfig(
        shuffle_seed=seed,
        try_autocache=False,
        skip_prefetch=True,
        options=options,
        # Ordered datasets (disable_shuffling, e.g. fashion_mnist_local) refuse
        # shuffle_files=True unless this guard is off; training shuffles anyway.
        enable_ordering_guard=not train,
    )
    def select(example):
        return {'image': example[IMAGE_FEATURE], 'label': tf.cast(example[LABEL_FEATURE], tf.int32)}

    mean = tf.constant(cfg.mean, tf.float32)
    std = tf.constant(cfg.std, tf.float32)

    if host_size > 0 and not train:   # training reads blocks itself (jaxmim.data.resume)
        ds = builder.as_dataset(
            split=host_split,
            shuffle_files=train,
            read_config=read_config,
            decoders={IMAGE_FEATURE: tfds.decode.SkipDecoding()},
        )
        ds = ds.map(select, num_parallel_calls=tf.data.AUTOTUNE)
        if cfg.cache:
            ds = ds.cache()

    if train:
        # Endless (position, example) stream, a pure function of (seed, process, position): a resumed
        # run starts at start_step * local_batch reading at most one window (jaxmim.data.resume).
        block, per_window = resume.block_size_for(cfg.shuffle_buffer)
        if isinstance(builder, image_folder.ImageFolderBuilder):
            chosen = [f for ri in resume.absolute(builder, host_split) for f in builder.files(ri.splitname)[ri.from_:ri.to]]
            table = resume.folder_blocks(len(chosen), block)
            read_blocks = resume.folder_reader([p for p, _ in chosen], [l for _, l in chosen], table)
        else:
            table = resume.tfrecord_blocks(builder, host_split, block)
            read_blocks = resume.tfrecord_reader(builder, table, select)
        ds = resume.train_stream(read_blocks, table, seed=seed, process_index=process_index,
                                 blocks_per_window=per_window, shuffle=cfg.shuffle_buffer > 1,
                                 start_position=int(start_step) * local_batch, prefetch_window=cfg.prefetch != 0)
        # Per-example augmentation keys: fold (seed, process) then the position.
        base = tf.random.experimental.stateless_fold_in(
            tf.constant([seed, 0], tf.int64), process_index
        )
        train_fn = _make_train_fn(cfg, image_feature)

        def preprocess_train(index, example):
            rng = tf.random.experimental.stateless_fold_in(base, index)
            image = (train_fn(example, rng) - mean) / std
            if cfg.aug.reprob > 0:   # random erasing works on the normalised image (timm)
                image = augment.erase(image, tf.random.experimental.stateless_fold_in(rng, 1002), cfg.aug)
            return {'image': image, 'label': example['label']}

        ds = ds.map(preprocess_train, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(local_batch, drop_remainder=True)
    else:
        eval_fn = _make_eval_fn(cfg, image_feature)

        def preprocess_eval(example):
            image = (eval_fn(example) - mean) / std
            return {'image': image, 'label': example['label'], 'mask': tf.constant(1.0, tf.float32)}

        # Same number of batches on every process: pad up to the largest slice.
        num_batches = -(-max(host_sizes) // local_batch)
        num_padding = num_batches * local_batch - host_size
        padding = tf.data.Dataset.from_tensors({
            'image': tf.zeros([cfg.image_size, cfg.image_size, 3], tf.float32),
            'label': tf.constant(0, tf.int32),
            'mask': tf.constant(0.0, tf.float32),
        }).repeat(num_padding)
        if host_size > 0:
            ds = ds.map(preprocess_eval, num_parallel_calls=tf.data.AUTOTUNE)
            ds = ds.concatenate(padding)
        else:
            ds = padding
        ds = ds.batch(local_batch, drop_remainder=True)

    ds = ds.with_options(options)
    if cfg.prefetch:
        ds = ds.prefetch(tf.data.AUTOTUNE if cfg.prefetch == -1 else cfg.prefetch)
    return ds.as_numpy_iterator()
