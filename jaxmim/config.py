"""Config schema: defaults for pre-training and fine-tuning runs, and key validation.

Every config file in ``configs/`` starts from :func:`pretrain_defaults` (with the MIM method's
name: its ``config.method`` block comes from the method's own ``config_defaults``) or
:func:`finetune_defaults` and changes values only. The returned ConfigDict is locked, so a
misspelt key in a config file or on the command line fails at once with the close valid
names instead of being silently ignored. Data settings left at ``None`` (image size, mean/std,
evaluation crop ratio) take the registered model's defaults (:func:`resolve_data_config`).
The recipe blocks config files share (data sets, optimizers, the timm fine-tuning recipe, the
demos) are in :mod:`jaxmim.recipes`. :func:`check_config` imports no TensorFlow.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from typing import Any, Sequence

import ml_collections

from jaxmim.augment_config import augment_config_from_fields
from jaxmim.constants import IMAGENET_MEAN


def data_defaults() -> ml_collections.ConfigDict:
    """The ``config.data`` block of every run: the single source of the data defaults (the input
    pipeline completes a partial data config from it, :mod:`jaxmim.data.data_config`)."""
    return ml_collections.ConfigDict(dict(
        dataset='imagenet2012',        # any tfds image-classification dataset name
        data_dir=ml_collections.FieldReference(None, field_type=str),
        train_split='train',
        eval_split='validation',
        image_size=ml_collections.FieldReference(None, field_type=int),   # pixels, square; None: model's
        mean=ml_collections.FieldReference(None, field_type=tuple),       # [0, 1] pixel units; None: model's
        std=ml_collections.FieldReference(None, field_type=tuple),
        crop_scale=(0.08, 1.0),        # random-resized-crop area range
        crop_ratio=(3.0 / 4.0, 4.0 / 3.0),
        hflip=True,
        interpolation='bicubic',
        # eval: resize to image_size / ratio, centre crop; None: the model's (224/256 for ImageNet models)
        eval_crop_ratio=ml_collections.FieldReference(None, field_type=float),
        shuffle_buffer=16_384,
        cache=False,
        prefetch=2,
        # timm / DeiT augmentation (jaxmim.data.augment); every op is off by default.
        crop_impl='tf',                # crop window sampler: 'tf' (tf.image) | 'timm' (timm get_params exactly)
        auto_augment='',               # '' | timm RandAugment string, e.g. 'rand-m9-mstd0.5-inc1'
        color_jitter=(0.0, 0.0, 0.0),  # (brightness, contrast, saturation[, hue]); only without auto_augment
        reprob=0.0,                    # random-erasing probability (after normalisation)
        remode='pixel',                # 'pixel' | 'rand' | 'const'
        recount=1,                     # erased boxes per image
        re_scale=(0.02, 1.0 / 3.0),    # erased area fraction range
        re_ratio=(0.3, 1.0 / 0.3),     # erased aspect range (log-uniform)
        on_decode_error='raise',       # image_folder: corrupt image -> 'raise' (stop) | 'skip' (count, log)
    ))


def _optim_defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        base_lr=5e-4,                  # per lr_scale_batch images; scaled by batch_size / lr_scale_batch
        warmup_lr=5e-7,
        min_lr=5e-6,
        lr_scale_batch=512,            # 0 disables the linear scaling rule (SimMIM 512, MAE 256)
        lr_scale_fields=('base_lr', 'warmup_lr', 'min_lr'),   # SimMIM scales all three; MAE base_lr only
        weight_decay=0.05,
        warmup_steps=0,
        schedule='cosine',             # 'cosine' (SimMIM, lagged) | 'multistep' | 'mae_cosine'
        schedule_unit='step',          # 'step': per iteration; 'epoch': held constant within an epoch
        steps_per_epoch=0,             # needed by schedule_unit='epoch'
        milestones=(),
        gamma=0.1,
        clip_grad=5.0,
        betas=(0.9, 0.999),
        eps=1e-8,
        layer_decay=1.0,
        # 'adamw' (torch AdamW: betas, eps) | 'lars' (MAE / MoCo v3 LARS: momentum, trust_coefficient;
        # linear probing); jaxmim.optim.build_optimizer
        name='adamw',
        momentum=0.9,                  # LARS only
        trust_coefficient=1e-3,        # LARS only
    ))


COMPUTE_DTYPES = ('float32', 'bfloat16')
"""Accepted ``config.compute_dtype`` values (see :func:`jaxmim.steps.accumulate_gradients`)."""

PROBES = ('', 'linear')
"""Accepted ``config.probe`` values of a fine-tuning run: ``''`` trains the whole classifier,
``'linear'`` freezes it and trains a BatchNorm + linear head on its pooled features
(:mod:`jaxmim.probe`)."""


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
        # MFU in the train logs (mfu, tflops_per_device): model FLOPs per image counted once at
        # start-up (jaxmim.model_flops) over this peak TFLOP/s of ONE device. 0: the bf16 dense peak
        # of a known accelerator kind (jaxmim.model_flops.PEAK_BF16_TFLOPS), nothing on a CPU;
        # < 0: off (no count).
        peak_tflops=0.0,
        # JAX profiler trace of steps profile_from .. profile_from + profile_steps - 1 (process 0)
        # into WORKDIR/tensorboard/plugins/profile (TensorBoard's profile tab); 0: no trace.
        profile_from=0,
        profile_steps=5,
        ema_decay=0.0,                 # > 0 keeps an EMA of the weights, evaluated beside them
        # Gradient accumulation: batch_size stays the images per optimizer update; the jitted step
        # scans over accum_steps micro-batches of batch_size / accum_steps and applies one update.
        accum_steps=1,
        nonfinite='stop',              # non-finite loss/grad norm: 'stop' (exit 3, nothing saved) | 'skip' (count)
        # 'bfloat16': the forward / backward run on bf16 copies of the float32 master weights and
        # images; the loss and the gradients reaching the optimizer stay float32. float32 here and in
        # the CPU demos (bf16 is emulated on CPU); the accelerator (ImageNet) configs under
        # configs/{pretrain,finetune,supervised} set 'bfloat16' (tests/test_bf16.py).
        compute_dtype='float32',
        # The device mesh ('data', 'fsdp', 'model') and the layout of the train state
        # (jaxmim.mesh, jaxmim.sharding). -1: the devices the other axes leave.
        mesh=ml_collections.ConfigDict(dict(
            data=-1,
            fsdp=1,
            model=1,
            dcn_data=1,                # > 1: multi-slice / multi-host hybrid mesh, data = dcn_data x ICI data
            layout='dp',               # 'dp' (replicated state) | 'fsdp' | 'fsdp_tp' (jaxmim.sharding.PRESETS)
            rules=(),                  # ((logical name, mesh axis | None), ...) tried before the layout's rules
            min_shard_bytes=2 ** 20,   # warn at start-up for larger parameters left replicated
        )),
        data=data_defaults(),
        optim=_optim_defaults(),
        model=ml_collections.ConfigDict(dict(name='', overrides=ml_collections.ConfigDict())),
    ))


def pretrain_defaults(method: str = 'simmim') -> ml_collections.ConfigDict:
    """Defaults of a masked pre-training run (``mode='pretrain'``).

    Args:
      method: a registered MIM method (``jaxmim.methods.list_methods()``); ``config.method`` is
        its block: ``name``, ``inputs_from`` ('step': masks drawn in the jitted step;
        'pipeline': made by the input pipeline) and the method's own keys (SimMIM:
        encoder_stride, mask_patch_size, mask_ratio; MAE: mask_ratio, norm_pix_loss).

    Raises:
      KeyError: unknown method (accepted names listed).
    """
    from jaxmim.methods import method_config_defaults
    c = _common_defaults()
    c.mode = 'pretrain'
    c.method = ml_collections.ConfigDict(method_config_defaults(method))
    c.data.crop_scale = (0.67, 1.0)
    c.visualize_every = 0              # > 0: reconstruction grid to TensorBoard every N steps (jaxmim.visualize)
    c.knn_every = 0                    # > 0: k-NN top-1 / top-5 of the encoder every N steps (jaxmim.knn); 0 = off
    c.knn = knn_defaults()
    return _lock(c)


def knn_defaults() -> ml_collections.ConfigDict:
    """The ``config.knn`` block of a pre-training run (:mod:`jaxmim.knn`, DINO's weighted k-NN):
    ``k`` neighbours, vote ``temperature``, ``train_examples`` (the first N of the train split as
    the neighbour bank; 0 = the whole split), ``batch_size`` (global images per feature batch;
    0 = ``config.batch_size``)."""
    return ml_collections.ConfigDict(dict(k=20, temperature=0.07, train_examples=0, batch_size=0))


def check_knn(knn, every=0, prefix: str = 'config.knn.') -> None:
    """``config.knn_every`` and the ``config.knn`` block (:func:`knn_defaults`): integers of the
    right sign, a positive temperature, ``k <= train_examples`` when that is set. ``prefix``
    names the fields in the messages (``'--'`` for command-line flags).

    Raises:
      ValueError: naming the field and what it accepts.
    """
    def integer(name, value, low):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f'{name}={value!r}: must be an integer >= {low}')

    integer('config.knn_every', every, 0)
    integer(f'{prefix}k', knn.k, 1)
    integer(f'{prefix}train_examples', knn.train_examples, 0)
    integer(f'{prefix}batch_size', knn.batch_size, 0)
    t = knn.temperature
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
        raise ValueError(f'{prefix}temperature={t!r}: must be a number > 0 (the votes are exp(similarity / T))')
    if knn.train_examples and knn.k > knn.train_examples:
        raise ValueError(f'{prefix}k={knn.k} is larger than {prefix}train_examples={knn.train_examples} '
                         '(the neighbours are taken among those train images); lower k or raise train_examples')


def finetune_defaults() -> ml_collections.ConfigDict:
    """Defaults of a supervised fine-tuning run (``mode='finetune'``).

    Recipe fields (all off by default, so a config that does not set them trains as before;
    :func:`jaxmim.recipes.timm_recipe` sets the papers' values):

    * host side, ``config.data``: ``crop_impl`` ('tf' | 'timm' random-resized-crop window),
      ``auto_augment`` ('' | timm RandAugment string 'rand-m9-mstd0.5-inc1'), ``color_jitter``
      ((b, c, s[, hue]), used only without auto_augment), ``reprob`` / ``remode`` / ``recount`` /
      ``re_scale`` / ``re_ratio`` (random erasing after normalisation), ``on_decode_error``
      ('raise' | 'skip', image-folder datasets); checked by :mod:`jaxmim.augment_config`, applied
      by :mod:`jaxmim.data.augment`.
    * on device, ``config.mixup``: ``mixup_alpha``, ``cutmix_alpha``, ``prob``, ``switch_prob``,
      ``mode`` ('batch'), ``correct_lam`` (:mod:`jaxmim.mixup`); ``label_smoothing`` goes into
      the soft targets; the loss is the soft-target cross entropy.
    * ``accum_steps`` (both modes): micro-batches per optimizer update; ``batch_size`` is the
      images per update. ``ema_decay``: weight EMA evaluated beside the raw weights.
    * ``probe`` (one of :data:`PROBES`): ``'linear'`` is linear probing (:mod:`jaxmim.probe`,
      :func:`jaxmim.recipes.linprobe`): the classifier frozen, a BatchNorm + linear head trained
      on its pooled features; ``optim.layer_decay`` must then be 1.
    """
    c = _common_defaults()
    c.mode = 'finetune'
    c.label_smoothing = 0.1
    # timm Mixup / CutMix, on device in the train step (jaxmim.mixup); off while both alphas are 0.
    c.mixup = ml_collections.ConfigDict(dict(
        mixup_alpha=0.0,               # Beta(a, a) mixup; recipes 0.8
        cutmix_alpha=0.0,              # Beta(a, a) cutmix; recipes 1.0
        prob=1.0,                      # probability a batch is mixed
        switch_prob=0.5,               # cutmix instead of mixup when both are on
        mode='batch',                  # one lam / box per batch (the only mode)
        correct_lam=True,              # cutmix lam from the clipped box area
    ))
    c.eval_every = 500
    c.eval_batch_size = 256
    c.pretrained = ml_collections.ConfigDict(dict(
        workdir='',                    # a pre-training workdir; '' trains from scratch
        step=-1,                       # -1: latest checkpoint
        required=False,                # True (':pretrained' variants): an empty workdir is an error
    ))
    # '' (default): fine-tune the whole classifier; 'linear': linear probing (jaxmim.probe): the
    # classifier frozen, BatchNorm + linear head trained on its pooled features
    c.probe = ''
    return _lock(c)


def _lock(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Locks every field except ``model.overrides`` (free-form constructor arguments, which
    ``create_model`` checks against the model's signature)."""
    c.lock()
    c.model.overrides.unlock()
    return c


def check_config(config: ml_collections.ConfigDict) -> None:
    """Checks that ``config`` has exactly the keys of its mode's defaults.

    Raises:
      ValueError: for an unknown ``mode`` or an unknown key; the message names the key and
        lists the close valid keys.
    """
    mode = config.get('mode')
    if mode not in ('pretrain', 'finetune'):
        raise ValueError(f"config.mode must be 'pretrain' or 'finetune', got {mode!r}")
    if mode == 'pretrain':
        from jaxmim.methods import list_methods
        name = config.get('method', {}).get('name')
        if name not in list_methods():
            close = difflib.get_close_matches(str(name), list_methods(), n=3)
            raise ValueError(f'config.method.name {name!r} is not a registered method; accepted: '
                             f'{list_methods()}; close: {close}')
        ref = pretrain_defaults(name)
    else:
        ref = finetune_defaults()
    _check_keys(config, ref, 'config')
    accum = config.get('accum_steps', 1)
    if not isinstance(accum, int) or isinstance(accum, bool) or accum < 1:
        raise ValueError(f'config.accum_steps must be an int >= 1 (micro-batches per optimizer update), got {accum!r}')
    if config.batch_size % accum:
        raise ValueError(f'config.batch_size={config.batch_size} (images per optimizer update) must be a multiple '
                         f'of config.accum_steps={accum}')
    if mode == 'finetune':
        from jaxmim.mixup import MixupConfig
        MixupConfig(**config.mixup.to_dict(), label_smoothing=float(config.label_smoothing)).check()
        check_probe(config)
    from jaxmim.optim.build import OPTIMIZERS
    name = config.optim.get('name', 'adamw')
    if name not in OPTIMIZERS:
        close = difflib.get_close_matches(str(name), OPTIMIZERS, n=1)
        raise ValueError(f'config.optim.name={name!r} is not an optimizer; accepted: {list(OPTIMIZERS)}'
                         + (f"; did you mean {close[0]!r}?" if close else ''))
    # the host-side augmentation fields, named on error (pure Python: no TensorFlow import)
    augment_config_from_fields(config.data.to_dict(), config.data.mean or IMAGENET_MEAN, config.data.interpolation)
    if not 0.0 <= float(config.ema_decay) < 1.0:
        raise ValueError(f'config.ema_decay must be in [0, 1) (0 disables the EMA), got {config.ema_decay}')
    if config.get('compute_dtype', 'float32') not in COMPUTE_DTYPES:
        raise ValueError(f'config.compute_dtype must be one of {list(COMPUTE_DTYPES)}, got {config.compute_dtype!r}')
    if mode == 'pretrain' and config.get('knn') is not None:
        check_knn(config.knn, config.get('knn_every', 0))
    if config.get('mesh') is not None:
        from jaxmim.sharding import rules_for
        rules_for(config.mesh)   # layout and rules named on error (sizes are checked against the devices)
    _check_values(config)


def check_probe(config: ml_collections.ConfigDict) -> None:
    """``config.probe`` of a fine-tuning run is one of :data:`PROBES`, and a probe trains no
    encoder layer, so it takes no layer-wise lr decay (``config.optim.layer_decay == 1``).

    Raises:
      ValueError: naming the field and the accepted values.
    """
    probe = config.get('probe', '')
    if probe not in PROBES:
        raise ValueError(f'config.probe={probe!r} is not a probe; accepted: {list(PROBES)} '
                         "('' fine-tunes the whole classifier, 'linear' trains a linear head on the frozen encoder)")
    if probe and float(config.optim.layer_decay) != 1.0:
        raise ValueError(f'config.optim.layer_decay={config.optim.layer_decay} with config.probe={probe!r}: '
                         'a probe trains only its head (the encoder is frozen), so layer decay must be 1.0')


def _check_values(config: ml_collections.ConfigDict) -> None:
    """The loop's own fields: positive step counts, keep-N, the non-finite policy."""
    positive = ['batch_size', 'total_steps', 'log_every', 'checkpoint_every']
    if config.mode == 'finetune':
        positive += ['eval_every', 'eval_batch_size']
    for field in positive:
        value = config.get(field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f'config.{field}={value!r}: must be an integer >= 1')
    keep = config.get('keep_checkpoints')
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ValueError(f'config.keep_checkpoints={keep!r}: must be an integer >= 1, or None to keep all')
    for field, low in (('profile_from', 0), ('profile_steps', 1)):
        value = config.get(field, low)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f'config.{field}={value!r}: must be an integer >= {low}'
                             + (' (0: no profiler trace)' if low == 0 else ''))
    peak = config.get('peak_tflops', 0.0)
    if isinstance(peak, bool) or not isinstance(peak, (int, float)) or peak != peak:
        raise ValueError(f'config.peak_tflops={peak!r}: must be a number (TFLOP/s of one device; 0: the '
                         'known peak of the device kind; < 0: no MFU)')
    if config.get('nonfinite', 'stop') not in ('stop', 'skip'):
        raise ValueError(f"config.nonfinite={config.nonfinite!r}: accepted 'stop' (stop the run, exit 3) "
                         "or 'skip' (skip non-finite updates and count them)")


def resolve_data_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of ``config.data`` whose ``None`` fields (image_size, mean, std, eval_crop_ratio)
    are filled from the registered model's data defaults (``register_model(data_defaults=...)``).

    Raises:
      KeyError: ``config.model.name`` is not registered.
    """
    from jaxmim.registry import model_data_defaults
    data = ml_collections.ConfigDict(config.data.to_dict())
    defaults = model_data_defaults(config.model.name)
    for key, value in defaults.items():
        if data.get(key) is None:
            data[key] = tuple(value) if isinstance(value, (list, tuple)) else value
    return data


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """Loads ``path[:variant]`` as ``--config`` does: the file's ``get_config(variant)`` (or
    ``get_config()`` without a variant).

    Raises:
      FileNotFoundError: the file does not exist.
    """
    path, _, arg = spec.partition(':')
    if not os.path.exists(path):
        raise FileNotFoundError(f'config file {path!r} does not exist')
    name = 'jaxmim_config_' + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


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


def with_compute_dtypes(names: Sequence[str], configs: Sequence[Any], dtypes: Sequence[str],
                        field: str = 'compute_dtypes') -> tuple[list[str], list[Any]]:
    """Each config at each of ``dtypes`` (``config.compute_dtype``), in that order, as
    ``(names, configs)`` with names ``'<name> [<dtype>]'``; the configs are copies (used by
    ``jaxmim.benchmark --compute_dtypes=float32,bfloat16``).

    Raises:
      ValueError: a dtype not in :data:`COMPUTE_DTYPES` (the message names ``field``).
    """
    bad = [d for d in dtypes if d not in COMPUTE_DTYPES]
    if bad:
        raise ValueError(f'{field}: {bad} not accepted; use {list(COMPUTE_DTYPES)}')
    out_names, out_configs = [], []
    for name, config in zip(names, configs):
        for dtype in dtypes:
            variant = config.copy_and_resolve_references()
            variant.compute_dtype = dtype
            out_names.append(f'{name} [{dtype}]')
            out_configs.append(variant)
    return out_names, out_configs
