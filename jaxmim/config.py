"""Config schema: defaults for pre-training and fine-tuning runs, and key validation.

Every config file in ``configs/`` starts from :func:`pretrain_defaults` or
:func:`finetune_defaults` and changes values only. The returned ConfigDict is locked, so a
misspelt key in a config file or on the command line fails at once with the close valid
names instead of being silently ignored.
"""

from __future__ import annotations

import difflib

import ml_collections

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""ImageNet per-channel RGB mean, in [0, 1] pixel units."""
IMAGENET_STD = (0.229, 0.224, 0.225)
"""ImageNet per-channel RGB standard deviation, in [0, 1] pixel units."""


def _data_defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        dataset='imagenet2012',        # any tfds image-classification dataset name
        data_dir=ml_collections.FieldReference(None, field_type=str),
        train_split='train',
        eval_split='validation',
        image_size=224,                # pixels, square
        mean=IMAGENET_MEAN,            # in [0, 1] pixel units
        std=IMAGENET_STD,
        crop_scale=(0.08, 1.0),        # random-resized-crop area range
        crop_ratio=(3.0 / 4.0, 4.0 / 3.0),
        hflip=True,
        interpolation='bicubic',
        eval_crop_ratio=224 / 256,     # eval: resize to image_size / ratio, centre crop
        shuffle_buffer=16_384,
        cache=False,
        prefetch=2,
    ))


def _optim_defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        base_lr=5e-4,                  # per 512 images; scaled by batch_size / 512 (lr_scale_batch)
        warmup_lr=5e-7,
        min_lr=5e-6,
        lr_scale_batch=512,            # 0 disables the linear scaling rule
        weight_decay=0.05,
        warmup_steps=0,
        schedule='cosine',             # 'cosine' | 'multistep'
        milestones=(),
        gamma=0.1,
        clip_grad=5.0,
        betas=(0.9, 0.999),
        eps=1e-8,
        layer_decay=1.0,
    ))


def _common_defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        seed=0,
        batch_size=128,                # global batch over all processes and devices
        total_steps=1000,
        log_every=50,
        checkpoint_every=500,
        keep_checkpoints=3,
        async_checkpointing=True,
        progress_bar=True,
        data=_data_defaults(),
        optim=_optim_defaults(),
        model=ml_collections.ConfigDict(dict(name='', overrides=ml_collections.ConfigDict())),
    ))


def pretrain_defaults() -> ml_collections.ConfigDict:
    """Defaults of a masked pre-training run (``mode='pretrain'``); the method block holds
    the MIM method name and its arguments (SimMIM: encoder_stride, mask_patch_size, mask_ratio)."""
    c = _common_defaults()
    c.mode = 'pretrain'
    c.method = ml_collections.ConfigDict(dict(
        name='simmim', encoder_stride=32, mask_patch_size=32, mask_ratio=0.6))
    c.data.crop_scale = (0.67, 1.0)
    return _lock(c)


def finetune_defaults() -> ml_collections.ConfigDict:
    """Defaults of a supervised fine-tuning run (``mode='finetune'``)."""
    c = _common_defaults()
    c.mode = 'finetune'
    c.label_smoothing = 0.1
    c.eval_every = 500
    c.eval_batch_size = 256
    c.pretrained = ml_collections.ConfigDict(dict(
        workdir='',                    # a pre-training workdir; '' trains from scratch
        step=-1,                       # -1: latest checkpoint
    ))
    return _lock(c)


def _lock(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Locks every field except ``model.overrides`` (free-form constructor arguments, which
    ``create_model`` checks against the model's signature)."""
    c.lock()
    c.model.overrides.unlock()
    return c


def fashion_mnist_data(data: ml_collections.ConfigDict, crop_scale: tuple[float, float]) -> None:
    """Sets ``data`` to the local Fashion-MNIST (Debian's idx files, 28x28 grey) read at 32x32
    RGB: random-resized crop with area range ``crop_scale`` and flips for training, a plain
    resize for evaluation, the whole 60k-image split shuffled and cached in memory."""
    data.update(dict(dataset='fashion_mnist_local', train_split='train', eval_split='test',
                     image_size=32, crop_scale=crop_scale, hflip=True, eval_crop_ratio=1.0,
                     shuffle_buffer=60_000, cache=True))


def check_config(config: ml_collections.ConfigDict) -> None:
    """Checks that ``config`` has exactly the keys of its mode's defaults.

    Raises:
      ValueError: for an unknown ``mode`` or an unknown key; the message names the key and
        lists the close valid keys.
    """
    mode = config.get('mode')
    if mode not in ('pretrain', 'finetune'):
        raise ValueError(f"config.mode must be 'pretrain' or 'finetune', got {mode!r}")
    ref = pretrain_defaults() if mode == 'pretrain' else finetune_defaults()
    _check_keys(config, ref, 'config')


def _check_keys(cfg, ref, prefix: str) -> None:
    for key in cfg.keys():
        name = f'{prefix}.{key}'
        if key not in ref:
            close = difflib.get_close_matches(key, list(ref.keys()), n=3)
            raise ValueError(f'unknown config key {name!r}; close valid keys: '
                             f'{[f"{prefix}.{k}" for k in close]}; valid keys here: {sorted(ref.keys())}')
        if isinstance(ref[key], ml_collections.ConfigDict) and key != 'overrides':
            if not isinstance(cfg[key], ml_collections.ConfigDict):
                raise ValueError(f'config key {name!r} must be a ConfigDict, got {type(cfg[key]).__name__}')
            _check_keys(cfg[key], ref[key], name)
