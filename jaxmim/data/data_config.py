"""The data config: completion from the defaults and the field-by-field checks.

A data config (``config.data``: an ``ml_collections.ConfigDict`` or a mapping, fields documented
in :func:`jaxmim.data.pipeline.create_split`) is completed from
:func:`jaxmim.config.data_defaults`, the single source of the data defaults, and checked into a
frozen :class:`DataConfig` before any file is read; every error names the field and what it
accepts. The timm augmentation fields are parsed by
:func:`jaxmim.augment_config.augment_config_from_fields`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from typing import Any, Optional

import numpy as np
import tensorflow as tf

from jaxmim import config as config_lib
from jaxmim.augment_config import AugmentConfig, augment_config_from_fields

__all__ = [
    'INTERPOLATIONS',
    'DataConfig',
    'is_int',
    'is_number',
    'complete_config',
    'validate_config',
]

INTERPOLATIONS = {
    'bicubic': tf.image.ResizeMethod.BICUBIC,
    'bilinear': tf.image.ResizeMethod.BILINEAR,
}
"""Accepted values of the data config field ``interpolation``."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """A complete, checked data config (fields documented in
    :func:`jaxmim.data.pipeline.create_split`; built by :func:`validate_config`).

    Lengths are pixels, ``mean`` / ``std`` per-channel RGB in [0, 1] pixel units, ``crop_scale``
    area fractions, ``crop_ratio`` width / height; ``aug`` holds the timm augmentation fields
    parsed (:class:`jaxmim.augment_config.AugmentConfig`), the raw fields are kept beside it.
    """

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
    aug: AugmentConfig = AugmentConfig()   # the checked fields below, parsed
    on_decode_error: str = 'raise'
    crop_impl: str = 'tf'
    auto_augment: str = ''
    color_jitter: tuple = (0.0, 0.0, 0.0)
    reprob: float = 0.0
    remode: str = 'pixel'
    recount: int = 1
    re_scale: tuple = (0.02, 1.0 / 3.0)
    re_ratio: tuple = (0.3, 1.0 / 0.3)


def is_int(x: Any) -> bool:
    """Whether ``x`` is a Python / NumPy integer (``bool`` excluded)."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def is_number(x: Any) -> bool:
    """Whether ``x`` is a finite Python / NumPy int or float (``bool`` excluded)."""
    return (is_int(x) or isinstance(x, (float, np.floating))) and math.isfinite(x)


def complete_config(config: Any) -> dict[str, Any]:
    """The caller's data config completed from :func:`jaxmim.config.data_defaults`.

    ``jaxmim.config.data_defaults()`` is the single source of the data defaults; a partial
    config (a mapping or an ``ml_collections.ConfigDict`` holding only some fields) takes
    every missing field from it.

    Args:
      config: an ``ml_collections.ConfigDict`` or a mapping of data fields (not modified).

    Returns:
      A new ``dict`` holding every data field, the caller's values unchecked.

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
    values = dict(config_lib.data_defaults().items())
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
        or not all(is_number(v) for v in value)
    ):
        raise _bad(name, value, accepted)
    return tuple(float(v) for v in value)


def validate_config(config: Any) -> DataConfig:
    """Completes (see :func:`complete_config`) and checks the data config.

    Args:
      config: the data config, an ``ml_collections.ConfigDict`` or a mapping holding any subset
        of the data fields.

    Returns:
      The :class:`DataConfig` (numbers as ``int`` / ``float``, tuples as tuples, ``data_dir`` as
      a ``str`` or None).

    Raises:
      ValueError: naming the field and what it accepts, for an unknown field, a field left None
        (the model-dependent ones: resolve them with ``jaxmim.config.resolve_data_config``) or
        an invalid value.

    Source: jaxmim; the accepted ranges follow torchvision ``RandomResizedCrop`` and timm
    ``create_transform`` as called by microsoft/SimMIM@d3e29bc ``data/data_simmim.py:48-76``
    and ``data/data_finetune.py:81-114``.
    """
    values = complete_config(config)
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
    if not is_int(image_size) or image_size < 1:
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
    if not is_number(eval_crop_ratio) or not 0.0 < eval_crop_ratio <= 1.0:
        raise _bad('eval_crop_ratio', eval_crop_ratio, 'a number in (0, 1], e.g. 224/256 or 1.0 (plain resize)')

    interpolation = values['interpolation']
    if interpolation not in INTERPOLATIONS:
        raise _bad('interpolation', interpolation, f'one of {sorted(INTERPOLATIONS)}')

    shuffle_buffer = values['shuffle_buffer']
    if not is_int(shuffle_buffer) or shuffle_buffer < 0:
        raise _bad('shuffle_buffer', shuffle_buffer, 'an int >= 0 (examples; 0 or 1 disables shuffling)')

    cache = values['cache']
    if not isinstance(cache, (bool, np.bool_)):
        raise _bad('cache', cache, 'True or False')

    prefetch = values['prefetch']
    if not is_int(prefetch) or prefetch < -1:
        raise _bad('prefetch', prefetch, 'an int >= 0 (batches; 0 disables) or -1 (tf.data.AUTOTUNE)')

    aug = augment_config_from_fields(values, mean, interpolation)
    on_decode_error = values['on_decode_error']
    if on_decode_error not in ('raise', 'skip'):
        raise _bad('on_decode_error', on_decode_error, "'raise' (stop at a corrupt image) or 'skip'")

    return DataConfig(
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
