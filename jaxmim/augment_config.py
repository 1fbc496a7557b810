"""The augmentation fields of a data config, parsed and checked without TensorFlow.

:func:`augment_config_from_fields` turns the ``config.data`` fields of the timm / DeiT
fine-tuning recipe (``crop_impl``, ``auto_augment``, ``color_jitter``, ``reprob``, ``remode``,
``recount``, ``re_scale``, ``re_ratio``) into an :class:`AugmentConfig`, naming the bad field on
error. It is pure Python, so :func:`jaxmim.config.check_config` validates a config without
importing TensorFlow; the tf.data ops that consume the result live in
:mod:`jaxmim.data.augment`, which re-exports every name defined here.

Source: timm 0.4.12 (the version ``AILab-CVC/GroupMixFormer@3d3f40977c6a`` pins; SimMIM and HiViT
use the same code of timm <= 0.5) ``timm/data/auto_augment.py`` (``rand_augment_transform``,
``_RAND_TRANSFORMS``, ``_RAND_INCREASING_TRANSFORMS``) and ``timm/data/random_erasing.py``
(``RandomErasing``), as called by ``microsoft/SimMIM@d3e29bc data/data_finetune.py:81-90`` and
``AILab-CVC/GroupMixFormer@3d3f40977c6a data/build.py:149-167``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Optional, Sequence

LEVEL_DENOM = 10.0
"""timm ``_LEVEL_DENOM``: magnitudes are on a 0..10 scale."""

RAND_INCREASING_TRANSFORMS = (
    'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing', 'SolarizeIncreasing',
    'SolarizeAdd', 'ColorIncreasing', 'ContrastIncreasing', 'BrightnessIncreasing',
    'SharpnessIncreasing', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel',
)
"""timm ``_RAND_INCREASING_TRANSFORMS`` (the op set of ``inc1``), in timm's order."""

RAND_TRANSFORMS = (
    'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize', 'SolarizeAdd',
    'Color', 'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY', 'TranslateXRel',
    'TranslateYRel',
)
"""timm ``_RAND_TRANSFORMS`` (the op set without ``inc1``), in timm's order."""

ERASE_MODES = ('pixel', 'rand', 'const')
"""Accepted ``remode`` values of :func:`jaxmim.data.augment.random_erasing` (timm
``RandomErasing.mode``)."""


@dataclasses.dataclass(frozen=True)
class RandAugmentConfig:
    """A parsed timm RandAugment string (``rand-m9-mstd0.5-inc1``).

    Attributes:
      magnitude: ``m``, on the 0..10 scale.
      num_layers: ``n``, ops per image (timm default 2).
      magnitude_std: ``mstd``, std of the per-call Gaussian magnitude noise (``inf``: uniform in
        [0, m]).
      magnitude_max: ``mmax``, upper clip of the magnitude (timm default 10).
      increasing: ``inc1`` selects :data:`RAND_INCREASING_TRANSFORMS`.
      prob: ``p``, probability each chosen op is applied (timm default 0.5).
      ops: the op names drawn from.
    """

    magnitude: float = 10.0
    num_layers: int = 2
    magnitude_std: float = 0.0
    magnitude_max: float = LEVEL_DENOM
    increasing: bool = False
    prob: float = 0.5

    @property
    def ops(self) -> tuple[str, ...]:
        """The op names drawn from (timm's order)."""
        return RAND_INCREASING_TRANSFORMS if self.increasing else RAND_TRANSFORMS


def parse_rand_augment(spec: str) -> RandAugmentConfig:
    """Parses timm's RandAugment string ``rand-mX-nY-mstdZ-mmaxW-incB-pP`` (any order after
    ``rand``), as ``timm.data.auto_augment.rand_augment_transform``.

    Raises:
      ValueError: not a ``rand-...`` string, an unknown or malformed section (named).
    """
    if not isinstance(spec, str) or not spec.startswith('rand'):
        raise ValueError(f"data.auto_augment must be '' or a timm RandAugment string such as "
                         f"'rand-m9-mstd0.5-inc1', got {spec!r} (AutoAugment/AugMix policies are not supported)")
    kw = {}
    for part in spec.split('-')[1:]:
        m = re.match(r'^(mstd|mmax|inc|m|n|p|w)([\d.]+|inf)$', part)
        if not m:
            raise ValueError(f'data.auto_augment={spec!r}: unknown section {part!r}; accepted: '
                             'mX (magnitude), nY (ops), mstdZ (magnitude std), mmaxW, incB (0/1), pP')
        key, val = m.groups()
        try:
            if key == 'mstd':
                kw['magnitude_std'] = float(val)
            elif key == 'mmax':
                kw['magnitude_max'] = float(val)
            elif key == 'inc':
                kw['increasing'] = bool(int(val))
            elif key == 'm':
                kw['magnitude'] = float(val)
            elif key == 'n':
                kw['num_layers'] = int(val)
            elif key == 'p':
                kw['prob'] = float(val)
            else:
                raise ValueError('choice weights (w) are not supported')
        except ValueError as e:
            raise ValueError(f'data.auto_augment={spec!r}: bad section {part!r}: {e}') from e
    cfg = RandAugmentConfig(**kw)
    if cfg.num_layers < 0 or not 0.0 <= cfg.prob <= 1.0 or cfg.magnitude < 0 or cfg.magnitude_std < 0:
        raise ValueError(f'data.auto_augment={spec!r}: need n >= 0, 0 <= p <= 1, m >= 0, mstd >= 0')
    return cfg


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """The checked augmentation fields of a data config (see
    :func:`jaxmim.config.finetune_defaults` and :func:`jaxmim.data.pipeline.create_split`).

    Attributes:
      crop_impl: 'tf' (``tf.image.stateless_sample_distorted_bounding_box``) or 'timm'
        (:func:`jaxmim.data.augment.sample_crop_window_timm`).
      rand_augment: parsed ``auto_augment`` (None: off).
      color_jitter: (brightness, contrast, saturation, hue); used only without auto-augment.
      reprob, remode, recount, re_scale, re_ratio: :func:`jaxmim.data.augment.random_erasing`.
      fill: RandAugment fill colour, ``round(255 * mean)``.
      interpolation: the pipeline's interpolation.
    """

    crop_impl: str = 'tf'
    rand_augment: Optional[RandAugmentConfig] = None
    color_jitter: tuple = (0.0, 0.0, 0.0, 0.0)
    reprob: float = 0.0
    remode: str = 'pixel'
    recount: int = 1
    re_scale: tuple = (0.02, 1 / 3)
    re_ratio: tuple = (0.3, 1 / 0.3)
    fill: tuple = (124, 116, 104)
    interpolation: str = 'bicubic'

    @property
    def any_color(self) -> bool:
        """Whether the colour stage (RandAugment or colour jitter) does anything."""
        return self.rand_augment is not None or any(v > 0 for v in self.color_jitter)


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def augment_config_from_fields(values: dict, mean: Sequence[float], interpolation: str) -> AugmentConfig:
    """Checks the augmentation fields of a completed data config dict (``crop_impl``,
    ``auto_augment``, ``color_jitter``, ``reprob``, ``remode``, ``recount``, ``re_scale``,
    ``re_ratio``) and returns the :class:`AugmentConfig`.

    Args:
      values: ``config.data.to_dict()``; a missing field takes its off value.
      mean: the RGB normalisation mean in [0, 1] pixel units; the RandAugment fill colour is
        ``round(255 * mean)`` (timm's ``img_mean``, ``timm/data/transforms_factory.py``).
      interpolation: the pipeline's resampling name, passed through (not checked here).

    Returns:
      The frozen :class:`AugmentConfig`; ``color_jitter`` widened to 4 floats (hue 0 when given 3).

    Raises:
      ValueError: naming the bad field and what is accepted.
    """
    def bad(name, accepted):
        return ValueError(f'Invalid data config field {name!r} = {values[name]!r}: expected {accepted}.')

    crop_impl = values.get('crop_impl', 'tf')
    if crop_impl not in ('tf', 'timm'):
        raise bad('crop_impl', "'tf' or 'timm'")
    aa = values.get('auto_augment', '') or ''
    if not isinstance(aa, str):
        raise bad('auto_augment', "'' or a timm RandAugment string such as 'rand-m9-mstd0.5-inc1'")
    ra = parse_rand_augment(aa) if aa else None
    cj = values.get('color_jitter', 0.0)
    if _num(cj):
        cj = (float(cj),) * 3 + (0.0,)
    elif isinstance(cj, (tuple, list)) and len(cj) in (3, 4) and all(_num(v) for v in cj):
        cj = tuple(float(v) for v in cj) + ((0.0,) if len(cj) == 3 else ())
    else:
        raise bad('color_jitter', 'a number >= 0 or a (brightness, contrast, saturation[, hue]) tuple')
    if any(v < 0 for v in cj) or cj[3] > 0.5:
        raise bad('color_jitter', 'values >= 0 (hue <= 0.5)')
    reprob = values.get('reprob', 0.0)
    if not _num(reprob) or not 0.0 <= reprob <= 1.0:
        raise bad('reprob', 'a probability in [0, 1]')
    remode = values.get('remode', 'pixel')
    if remode not in ERASE_MODES:
        raise bad('remode', f'one of {ERASE_MODES}')
    recount = values.get('recount', 1)
    if not isinstance(recount, int) or isinstance(recount, bool) or recount < 1:
        raise bad('recount', 'an int >= 1')
    re_scale = values.get('re_scale', (0.02, 1 / 3))
    if not (isinstance(re_scale, (tuple, list)) and len(re_scale) == 2 and all(_num(v) for v in re_scale)
            and 0 < re_scale[0] <= re_scale[1] <= 1):
        raise bad('re_scale', '(min, max) area fractions with 0 < min <= max <= 1')
    re_ratio = values.get('re_ratio', (0.3, 1 / 0.3))
    if not (isinstance(re_ratio, (tuple, list)) and len(re_ratio) == 2 and all(_num(v) for v in re_ratio)
            and 0 < re_ratio[0] <= re_ratio[1]):
        raise bad('re_ratio', '(min, max) aspect ratios with 0 < min <= max')
    fill = tuple(min(255, round(255 * m)) for m in mean)
    return AugmentConfig(crop_impl=crop_impl, rand_augment=ra, color_jitter=cj, reprob=float(reprob),
                         remode=remode, recount=int(recount), re_scale=tuple(float(v) for v in re_scale),
                         re_ratio=tuple(float(v) for v in re_ratio), fill=fill, interpolation=interpolation)

