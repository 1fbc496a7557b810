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
* linear probing: :func:`linprobe` (MAE's ``main_linprobe.py``: LARS, frozen encoder) and its
  Fashion-MNIST demo :func:`demo_linprobe`;
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
           'DEMO_VARIANTS', 'linprobe', 'demo_linprobe', 'IMAGENET_TRAIN_IMAGES']

IMAGENET_TRAIN_IMAGES = 1_281_167
"""Images in ImageNet-1K's train split (the epoch of the ImageNet recipes)."""

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
# Linear probing.


def linprobe(c: ml_collections.ConfigDict, *, blr: float = 0.1, epochs: int = 90, warmup_epochs: int = 10,
             batch_size: int = 16384, accum_steps: int = 1, train_images: int = IMAGENET_TRAIN_IMAGES,
             crop_scale: Sequence[float] = (0.08, 1.0), hflip: bool = True) -> ml_collections.ConfigDict:
    """Turns a fine-tuning config ``c`` into MAE's linear probing (in place; returns it).

    * ``probe='linear'`` (:mod:`jaxmim.probe`): the classifier frozen, in evaluation mode; a
      ``BatchNorm1d(affine=False, eps=1e-6)`` + linear head (``trunc_normal(0.01)``, bias 0) trained
      on its pooled features;
    * LARS (``optim.name='lars'``: momentum 0.9, trust coefficient 1e-3, weight decay 0, 1-D
      tensors excluded from both), no gradient clipping, no layer decay; lr ``blr * batch / 256``
      (``lr_scale_batch=256``, ``base_lr`` only), per-iteration linear warm-up from 0 over
      ``warmup_epochs``, then the half-cycle cosine to 0 (``'mae_cosine'``);
    * ``batch_size`` images per update in ``accum_steps`` micro-batches (MAE: 16384 = 512 x 32
      GPUs, ``--accum_iter`` for fewer), ``epochs`` of ``train_images // batch_size`` iterations
      (``drop_last=True``); an evaluation and a checkpoint every epoch, as ``main_linprobe.py``;
    * data: random-resized crop with area ``crop_scale`` and aspect (3/4, 4/3), bicubic, flips
      when ``hflip``; no RandAugment, colour jitter, random erasing, mixup / cutmix, label
      smoothing or EMA (cross entropy on the labels).

    ``crop_impl`` stays the caller's: MAE's ``util/crop.py`` samples one window (area, log-aspect),
    clamped to the image (BYOL's TF sampler); jaxmim's ``'tf'`` draws up to 10 windows that fit and
    falls back to a centre crop, ``'timm'`` is torchvision's. The model, its overrides (ViT:
    ``global_pool=False``, the class token as in ``main_linprobe.py``'s default ``--cls_token``), the
    data set, size and evaluation crop are the caller's.

    Source: facebookresearch/mae@6a2ba40 ``main_linprobe.py:42-76`` (defaults: blr 0.1, 90 epochs,
    10 warm-up, weight decay 0, min lr 0), ``:131-143`` (transforms), ``:217-227`` (head, freezing),
    ``:237-252`` (lr, LARS), ``util/lars.py``, ``util/lr_sched.py``; FINETUNE.md "Linear Probing"
    (batch 512 x 32 GPUs = 16384); MAE paper (He et al., 2022), Appendix A, "Linear probing".

    Raises:
      ValueError: ``c`` is not a fine-tuning config, or a batch larger than ``train_images``.
    """
    if c.get('mode') != 'finetune':
        raise ValueError(f"linprobe needs a fine-tuning config (mode='finetune'), got mode={c.get('mode')!r}")
    iters = train_images // batch_size
    if iters < 1:
        raise ValueError(f'linprobe: batch_size={batch_size} is larger than the {train_images} training images')
    c.probe = 'linear'
    c.batch_size, c.accum_steps = batch_size, accum_steps
    c.total_steps = epochs * iters
    o = c.optim
    o.name, o.momentum, o.trust_coefficient, o.weight_decay = 'lars', 0.9, 1e-3, 0.0
    o.schedule, o.schedule_unit = 'mae_cosine', 'step'
    o.base_lr, o.warmup_lr, o.min_lr = blr, 0.0, 0.0
    o.lr_scale_batch, o.lr_scale_fields = 256, ('base_lr',)
    o.warmup_steps = warmup_epochs * iters
    o.clip_grad, o.layer_decay = 0.0, 1.0
    d = c.data
    d.crop_scale, d.crop_ratio, d.interpolation, d.hflip = tuple(crop_scale), (3.0 / 4.0, 4.0 / 3.0), 'bicubic', hflip
    d.auto_augment, d.color_jitter, d.reprob = '', (0.0, 0.0, 0.0), 0.0
    c.mixup.mixup_alpha, c.mixup.cutmix_alpha = 0.0, 0.0
    c.label_smoothing, c.ema_decay = 0.0, 0.0
    c.eval_every = c.checkpoint_every = iters
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


def demo_linprobe(c: ml_collections.ConfigDict, *, blr: float, total_steps: int = 1170,
                  crop_scale: Sequence[float] = (0.85, 1.0), eval_every: int = 585,
                  checkpoint_every: int = 585) -> ml_collections.ConfigDict:
    """The demos' linear probe on a ``finetune_defaults`` config ``c`` (in place; returns it):
    :func:`linprobe` (frozen encoder, BatchNorm + linear head, LARS, warm-up + half-cycle cosine,
    no regularisation) on Fashion-MNIST at 32 px, batch 256 without accumulation,
    ``total_steps`` iterations (default 1170 = 5 epochs), the first ``total_steps // 9`` of them
    warm-up (MAE's 10 of 90 epochs; a reference to ``config.total_steps``, so
    ``--config.total_steps=N`` rescales it), crop area ``crop_scale`` and flips; evaluation
    (batch 500) every ``eval_every`` steps and at the end, a checkpoint every ``checkpoint_every``,
    a log line every 50; ``pretrained.required`` (a run without ``pretrained.workdir`` stops).
    ``blr`` is per 256 images, i.e. the lr at batch 256.

    jaxmim's own scaled-down recipe. Why ``blr`` is larger than MAE's 0.1: LARS moves each kernel
    by about ``lr * 1e-3`` of its norm per step (the trust ratio), so MAE's lr of 6.4 at batch
    16384 moves it about 0.5 of its norm per epoch (78 steps); at batch 256 an epoch is 234 steps,
    and blr 0.1 would move it 0.02 per epoch. The model name stays the caller's.
    """
    linprobe(c, blr=blr, epochs=1, warmup_epochs=0, batch_size=256, train_images=60_000, crop_scale=crop_scale)
    fashion_mnist_data(c.data, crop_scale=tuple(crop_scale))
    c.total_steps = total_steps
    c.optim.warmup_steps = c.get_ref('total_steps') // 9
    c.log_every = 50
    c.eval_every, c.checkpoint_every = eval_every, checkpoint_every
    c.eval_batch_size = 500
    c.pretrained.required = True
    return c
