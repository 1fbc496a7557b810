"""tf.data input pipeline for TFDS image-classification datasets.

Works for any TFDS dataset with an image feature (``tfds.features.Image``) and
an integer label feature, e.g. ``fashion_mnist_local`` (see
:mod:`jaxmim.data.fashion_mnist`), ``cifar10`` or ``imagenet2012``. The
dataset, splits and augmentation come from an ``ml_collections.ConfigDict``
(fields documented in :func:`create_split`).

Output batches are numpy dicts in NHWC layout, sized per process: each JAX
process (host) reads a disjoint, contiguous, near-equal slice of the split
(``tfds.split_for_jax_process``, https://www.tensorflow.org/datasets/splits).

Transforms follow microsoft/SimMIM@d3e29bc: pre-training uses
``data/data_simmim.py:48-76`` (RandomResizedCrop with scale (0.67, 1), ratio
(3/4, 4/3), random horizontal flip, ImageNet mean/std normalisation);
fine-tuning uses ``data/data_finetune.py:81-114`` (timm ``create_transform``: random
resized crop with scale (0.08, 1); evaluation resizes the shorter side to
``image_size / crop_pct`` and centre-crops). The timm colour stage (RandAugment or colour
jitter) and random erasing come from :mod:`jaxmim.data.augment` when the config turns them on;
mixup / cutmix run on device in the train step (:mod:`jaxmim.mixup`).

TensorFlow is only used on the host CPU: importing this module hides every GPU
and TPU from TensorFlow (:func:`hide_accelerators_from_tf`) so it does not
grab accelerator memory that JAX needs.

This module assembles the tf.data pipeline; its parts live beside it:
:mod:`jaxmim.data.data_config` (the config's completion and checks),
:mod:`jaxmim.data.datasets` (the TFDS builder of a name, split sizes),
:mod:`jaxmim.data.preprocess` (per-example decode / crop / resize) and
:mod:`jaxmim.data.resume` (the resumable training order). The package :mod:`jaxmim.data`
exports the names callers use.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from jaxmim.data import augment
from jaxmim.data import image_folder
from jaxmim.data import resume
from jaxmim.data.data_config import is_int, validate_config
from jaxmim.data.datasets import builder_kwargs, get_dataset_builder, split_size
from jaxmim.data.preprocess import make_eval_fn, make_train_fn

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
    (``data/data_simmim.py`` for pre-training crops, ``data/data_finetune.py`` for
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
    takes its value from ``jaxmim.config.data_defaults()``, the single source of
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
      process_index: this process's part in ``[0, process_count)`` [``jax.process_index()``];
        a run passes :func:`jaxmim.mesh.data_shards` of its mesh (replica processes of a
        ``model`` axis across processes share a part).
      process_count: number of distinct parts [``jax.process_count()``].
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
    cfg = validate_config(config)
    if process_index is None or process_count is None:
        import jax  # pylint: disable=g-import-not-at-top

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not is_int(process_count) or process_count < 1:
        raise ValueError(f'process_count must be an int >= 1, got {process_count!r}.')
    if not is_int(process_index) or not 0 <= process_index < process_count:
        raise ValueError(f'process_index must be an int in [0, {process_count}), got {process_index!r}.')
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(f'batch_size must be a positive int (global batch), got {batch_size!r}.')
    if batch_size % process_count:
        raise ValueError(
            f'Global batch_size {batch_size} is not divisible by process_count '
            f'{process_count}; use a multiple of {process_count}.'
        )
    if not is_int(seed):
        raise ValueError(f'seed must be an int, got {seed!r}.')
    local_batch = batch_size // process_count

    builder = get_dataset_builder(cfg.dataset, cfg.data_dir, **builder_kwargs(cfg))
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
    total = split_size(builder, split, split_field)
    host_splits = tfds.even_splits(split, n=process_count)
    host_sizes = [split_size(builder, s, split_field) for s in host_splits]
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
        train_fn = make_train_fn(cfg, image_feature)

        def preprocess_train(index, example):
            rng = tf.random.experimental.stateless_fold_in(base, index)
            image = (train_fn(example, rng) - mean) / std
            if cfg.aug.reprob > 0:   # random erasing works on the normalised image (timm)
                image = augment.erase(image, tf.random.experimental.stateless_fold_in(rng, 1002), cfg.aug)
            return {'image': image, 'label': example['label']}

        ds = ds.map(preprocess_train, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(local_batch, drop_remainder=True)
    else:
        eval_fn = make_eval_fn(cfg, image_feature)

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
