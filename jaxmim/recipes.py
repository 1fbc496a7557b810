"""Named recipe blocks that config files apply to a defaults ConfigDict.

A config in ``configs/`` starts from :func:`jaxmim.config.pretrain_defaults` or
:func:`jaxmim.config.finetune_defaults` and changes values only; the blocks several configs
share live here, so a recipe changes in one place:

* data: :func:`imagenet_data` (ImageNet-1K from TFDS), :func:`fashion_mnist_data` (the local
  Fashion-MNIST of the demos);
* optimizer: :func:`simmim_optim` (the Swin code base's AdamW + lagged per-iteration cosine, lrs
  scaled by batch / 512, used by SimMIM, GreenMIM fine-tuning, GroupMixFormer and supervised
  HiViT) and :func:`mae_optim` (MAE's AdamW + per-iteration warm-up and half-cycle cosine, lr
  scaled by batch / 256, used by MAE, UM-MAE, GreenMIM pre-training and MAE HiViT);
* augmentation: :func:`timm_recipe` (the timm / DeiT fine-tuning recipe);
* the small CPU demos on Fashion-MNIST (``make demo``): :func:`demo_simmim_pretrain`,
  :func:`demo_mae_pretrain`, :func:`demo_simmim_finetune`, :func:`demo_mae_finetune`.

Every helper edits the ConfigDict (or its ``data`` / ``optim`` block) in place. The fields must
exist in the locked defaults, so a helper applied to the wrong block fails at once. This module
imports nothing from ``jaxmim`` but :mod:`jaxmim.constants`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import ml_collections

from jaxmim.constants import IMAGENET_MEAN, IMAGENET_STD

__all__ = ['timm_recipe', 'fashion_mnist_data', 'imagenet_data', 'simmim_optim', 'mae_optim',
           'demo_simmim_pretrain', 'demo_mae_pretrain', 'demo_simmim_finetune', 'demo_mae_finetune',
           'DEMO_VARIANTS']

DEMO_VARIANTS = ('pretrained', 'scratch', None)
"""Accepted variants of a demo fine-tuning config (``None``: no ``:variant``, i.e. scratch)."""


# ------------------------------------------------------------------------------------------
# Data.


def fashion_mnist_data(data: ml_collections.ConfigDict, crop_scale: tuple[float, float]) -> None:
    """Sets ``data`` (a ``config.data`` block) to the local Fashion-MNIST (Debian's idx files,
    28x28 grey) read at 32x32 RGB with ImageNet mean/std: random-resized crop with area range
    ``crop_scale`` and flips for training, a plain resize for evaluation (``eval_crop_ratio``
    1.0), the whole 60k-image split shuffled and cached in memory. jaxmim's own demo data.
    """
    data.update(dict(dataset='fashion_mnist_local', train_split='train', eval_split='test',
                     image_size=32, crop_scale=crop_scale, hflip=True, eval_crop_ratio=1.0,
                     shuffle_buffer=60_000, cache=True))
    data.mean, data.std = IMAGENET_MEAN, IMAGENET_STD


def imagenet_data(data: ml_collections.ConfigDict, image_size: int, *,
                  crop_scale: Optional[tuple[float, float]] = None,
                  interpolation: Optional[str] = None) -> None:
    """Sets ``data`` (a ``config.data`` block) to TFDS ``imagenet2012`` (train / validation
    splits) at ``image_size`` px, random-resized crop aspect range (3/4, 4/3) and horizontal
    flips; ``crop_scale`` (area range) and ``interpolation`` ('bicubic' | 'bilinear' | ...) are
    set when given, else left as they are (the mode's defaults or :func:`timm_recipe`'s).
    Source: torchvision ``RandomResizedCrop`` defaults and ``RandomHorizontalFlip`` as every
    recipe's train transform uses them (e.g. ``facebookresearch/mae@be47fef main_pretrain.py``).
    """
    data.dataset = 'imagenet2012'
    data.train_split = 'train'
    data.eval_split = 'validation'
    data.image_size = image_size
    if crop_scale is not None:
        data.crop_scale = crop_scale
    data.crop_ratio = (3.0 / 4.0, 4.0 / 3.0)
    if interpolation is not None:
        data.interpolation = interpolation
    data.hflip = True


# ------------------------------------------------------------------------------------------
# Optimizer and schedule.


def simmim_optim(optim: ml_collections.ConfigDict, *, base_lr: float, warmup_lr: float, min_lr: float,
                 warmup_steps: int, clip_grad: float = 5.0) -> None:
    """Sets ``optim`` (a ``config.optim`` block) to the Swin code base's recipe: AdamW betas
    (0.9, 0.999), eps 1e-8, weight decay 0.05; ``base_lr``, ``warmup_lr`` and ``min_lr`` given
    per 512 images and all three scaled by batch / 512; linear warm-up over ``warmup_steps``
    iterations from ``warmup_lr``, then timm's per-iteration cosine to ``min_lr``, not re-based
    after the warm-up (jaxmim's ``'cosine'``); gradient clipping at global norm ``clip_grad``
    (0 disables it). Layer decay is left to the caller.
    Source: ``microsoft/SimMIM@d3e29bc optimizer.py:39-41``, ``lr_scheduler.py:18-35``,
    ``main_finetune.py:321-334``, ``main_simmim.py:160-169``.
    """
    optim.schedule = 'cosine'
    optim.base_lr, optim.warmup_lr, optim.min_lr = base_lr, warmup_lr, min_lr
    optim.lr_scale_batch = 512
    optim.lr_scale_fields = ('base_lr', 'warmup_lr', 'min_lr')
    optim.warmup_steps = warmup_steps
    optim.betas = (0.9, 0.999)
    optim.eps = 1e-8
    optim.weight_decay = 0.05
    optim.clip_grad = clip_grad


def mae_optim(optim: ml_collections.ConfigDict, *, blr: float, min_lr: float, warmup_steps: int,
              betas: tuple[float, float]) -> None:
    """Sets ``optim`` (a ``config.optim`` block) to MAE's recipe: AdamW with ``betas`` ((0.9,
    0.95) pre-training, (0.9, 0.999) fine-tuning), weight decay 0.05; ``blr`` per 256 images
    (``lr = blr * batch / 256``; ``min_lr`` absolute); linear warm-up from 0 over
    ``warmup_steps`` iterations, then the half-cycle cosine to ``min_lr`` re-based at the end of
    the warm-up (jaxmim's ``'mae_cosine'``); no gradient clipping. Layer decay is left to the
    caller. Source: ``facebookresearch/mae@be47fef util/lr_sched.py:9-21``, ``main_pretrain.py``
    (``args.lr = args.blr * eff_batch_size / 256``, ``AdamW(betas=(0.9, 0.95))``),
    ``main_finetune.py``.
    """
    optim.schedule = 'mae_cosine'
    optim.base_lr = blr
    optim.lr_scale_batch = 256
    optim.lr_scale_fields = ('base_lr',)
    optim.warmup_lr = 0.0
    optim.min_lr = min_lr
    optim.warmup_steps = warmup_steps
    optim.betas = betas
    optim.weight_decay = 0.05
    optim.clip_grad = 0.0


# ------------------------------------------------------------------------------------------
# Augmentation.


def timm_recipe(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Turns on the timm / DeiT fine-tuning recipe of SimMIM, MAE, HiViT and GroupMixFormer on a
    fine-tuning config ``c`` (in place; returns it): timm random-resized crop (scale (0.08, 1),
    ratio (3/4, 4/3), bicubic), flip, RandAugment ``'rand-m9-mstd0.5-inc1'`` (colour jitter 0.4
    configured but, as in timm, unused beside RandAugment), random erasing 0.25 / 'pixel' / 1
    box, mixup 0.8, cutmix 1.0, switch probability 0.5, label smoothing 0.1, evaluation crop
    224/256. Source: timm 0.4.12 ``create_transform`` / ``Mixup`` as called by
    ``microsoft/SimMIM@d3e29bc data/data_finetune.py:51-57, 81-114`` and
    ``AILab-CVC/GroupMixFormer@3d3f40977c6a data/build.py:56-62, 149-186``; MAE's
    ``facebookresearch/mae@be47fef util/datasets.py`` builds the same transform.

    Raises:
      ValueError: ``c`` is not a fine-tuning config.
    """
    if c.get('mode') != 'finetune':
        raise ValueError(f"timm_recipe needs a fine-tuning config (mode='finetune'), got mode={c.get('mode')!r}")
    c.data.crop_impl = 'timm'
    c.data.crop_scale = (0.08, 1.0)
    c.data.crop_ratio = (3.0 / 4.0, 4.0 / 3.0)
    c.data.interpolation = 'bicubic'
    c.data.hflip = True
    c.data.auto_augment = 'rand-m9-mstd0.5-inc1'
    c.data.color_jitter = (0.4, 0.4, 0.4)
    c.data.reprob, c.data.remode, c.data.recount = 0.25, 'pixel', 1
    c.data.eval_crop_ratio = 224 / 256
    c.mixup.mixup_alpha, c.mixup.cutmix_alpha = 0.8, 1.0
    c.mixup.prob, c.mixup.switch_prob, c.mixup.mode = 1.0, 0.5, 'batch'
    c.label_smoothing = 0.1
    return c


# ------------------------------------------------------------------------------------------
# The Fashion-MNIST demos (jaxmim's own recipes, scaled down for 2 CPU cores).


def _demo_loop(c: ml_collections.ConfigDict, total_steps: int, checkpoint_every: int) -> None:
    c.batch_size = 128
    c.total_steps = total_steps
    c.log_every = 50
    c.checkpoint_every = checkpoint_every


def demo_simmim_pretrain(c: ml_collections.ConfigDict, *, total_steps: int = 800) -> ml_collections.ConfigDict:
    """The demos' SimMIM-style pre-training on a ``pretrain_defaults`` config ``c`` (in place;
    returns it): Fashion-MNIST at 32 px with SimMIM's crop area (0.67, 1), batch 128,
    ``total_steps`` iterations, :func:`simmim_optim` at 4e-3 / 1e-5 / 1e-5 per 512 images (1e-3
    at batch 128) with 50 warm-up steps, a log line every 50 steps, a checkpoint every 500.
    The model and method keys stay the caller's. jaxmim's own scaled-down recipe.
    """
    fashion_mnist_data(c.data, crop_scale=(0.67, 1.0))
    _demo_loop(c, total_steps, checkpoint_every=500)
    simmim_optim(c.optim, base_lr=4e-3, warmup_lr=1e-5, min_lr=1e-5, warmup_steps=50)
    return c


def demo_mae_pretrain(c: ml_collections.ConfigDict, *, total_steps: int) -> ml_collections.ConfigDict:
    """The demos' MAE-style pre-training (MAE, UM-MAE, GreenMIM, MAE HiViT) on a
    ``pretrain_defaults`` config ``c`` (in place; returns it): Fashion-MNIST at 32 px with MAE's
    crop area (0.2, 1), batch 128, ``total_steps`` iterations, :func:`mae_optim` at blr 1.5e-3
    per 256 images (7.5e-4 at batch 128), betas (0.9, 0.95), cosine to 0 after 50 warm-up steps,
    a log line every 50 steps, a checkpoint every 500. The model and method keys stay the
    caller's. jaxmim's own scaled-down recipe.
    """
    fashion_mnist_data(c.data, crop_scale=(0.2, 1.0))
    _demo_loop(c, total_steps, checkpoint_every=500)
    mae_optim(c.optim, blr=1.5e-3, min_lr=0.0, warmup_steps=50, betas=(0.9, 0.95))
    return c


def _demo_finetune(c: ml_collections.ConfigDict, variant: Optional[str], *, layer_decay: float,
                   drop_path_rate: float, crop_scale: Sequence[float], total_steps: int, eval_every: int,
                   checkpoint_every: int) -> bool:
    """The loop, data and variant fields both demo fine-tuning recipes share; returns whether
    ``variant`` is ``'pretrained'``."""
    if variant not in DEMO_VARIANTS:
        raise ValueError(f"variant must be 'pretrained' or 'scratch', got {variant!r}")
    pretrained = variant == 'pretrained'
    c.model.overrides.drop_path_rate = drop_path_rate
    fashion_mnist_data(c.data, crop_scale=tuple(crop_scale))
    _demo_loop(c, total_steps, checkpoint_every)
    c.eval_batch_size = 500
    c.eval_every = eval_every
    c.optim.layer_decay = layer_decay if pretrained else 1.0
    c.pretrained.required = pretrained    # ':pretrained' without pretrained.workdir is an error
    c.label_smoothing = 0.1
    return pretrained


def demo_simmim_finetune(c: ml_collections.ConfigDict, variant: Optional[str], *, layer_decay: float = 0.9,
                         drop_path_rate: float = 0.0, total_steps: int = 1000, eval_every: int = 500,
                         checkpoint_every: int = 500) -> ml_collections.ConfigDict:
    """The demos' SimMIM-style fine-tuning (Swin, GreenMIM's Swin, GroupMixFormer) on a
    ``finetune_defaults`` config ``c`` (in place; returns it).

    Fashion-MNIST at 32 px, crop area (0.85, 1) and flips; batch 128 (evaluation 500);
    ``total_steps`` iterations; :func:`simmim_optim` at 8e-3 / 1e-6 / 1e-6 per 512 images (2e-3
    at batch 128) with 50 warm-up steps; label smoothing 0.1; drop path ``drop_path_rate``; a
    log line every 50 steps, evaluation every ``eval_every``, a checkpoint every
    ``checkpoint_every``. ``variant='pretrained'`` sets layer decay ``layer_decay`` and
    ``pretrained.required`` (a run without ``pretrained.workdir`` stops); ``'scratch'`` / ``None``
    trains the same budget from random initialisation without layer decay. The model name stays
    the caller's. jaxmim's own scaled-down recipe.

    Raises:
      ValueError: ``variant`` is not one of :data:`DEMO_VARIANTS`.
    """
    _demo_finetune(c, variant, layer_decay=layer_decay, drop_path_rate=drop_path_rate, crop_scale=(0.85, 1.0),
                   total_steps=total_steps, eval_every=eval_every, checkpoint_every=checkpoint_every)
    simmim_optim(c.optim, base_lr=8e-3, warmup_lr=1e-6, min_lr=1e-6, warmup_steps=50)
    return c


def demo_mae_finetune(c: ml_collections.ConfigDict, variant: Optional[str], *, layer_decay: float,
                      drop_path_rate: float, blr: float = 2e-3, crop_scale: Sequence[float] = (0.85, 1.0),
                      hflip: bool = True, total_steps: int = 1000, eval_every: int = 500,
                      checkpoint_every: int = 500) -> ml_collections.ConfigDict:
    """The demos' MAE-style fine-tuning (ViT, HiViT, PVT) on a ``finetune_defaults`` config
    ``c`` (in place; returns it).

    Fashion-MNIST at 32 px with crop area ``crop_scale`` and flips when ``hflip``; batch 128
    (evaluation 500); ``total_steps`` iterations; :func:`mae_optim` at ``blr`` per 256 images,
    betas (0.9, 0.999), cosine to 1e-6 after 50 warm-up steps; label smoothing 0.1; drop path
    ``drop_path_rate``; a log line every 50 steps, evaluation every ``eval_every``, a checkpoint
    every ``checkpoint_every``. ``variant='pretrained'`` sets layer decay ``layer_decay`` and
    ``pretrained.required``; ``'scratch'`` / ``None`` trains without layer decay. The model name
    stays the caller's. jaxmim's own scaled-down recipe.

    Raises:
      ValueError: ``variant`` is not one of :data:`DEMO_VARIANTS`.
    """
    _demo_finetune(c, variant, layer_decay=layer_decay, drop_path_rate=drop_path_rate, crop_scale=crop_scale,
                   total_steps=total_steps, eval_every=eval_every, checkpoint_every=checkpoint_every)
    c.data.hflip = hflip
    mae_optim(c.optim, blr=blr, min_lr=1e-6, warmup_steps=50, betas=(0.9, 0.999))
    return c
