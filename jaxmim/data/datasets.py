"""Finding a dataset: the TFDS builder of a name, its split sizes, and what to do when it is missing.

:func:`get_dataset_builder` resolves a dataset name to a prepared ``tfds.core.DatasetBuilder``
(``fashion_mnist_local`` is prepared on first use, ``image_folder`` reads a class-per-folder
tree, any other name must already be prepared in the TFDS data dir: nothing is downloaded);
:func:`num_examples` reads a split's size from its metadata. A missing or unprepared dataset
raises :class:`DatasetNotFoundError` saying how to prepare it.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import tensorflow_datasets as tfds

from jaxmim.data import fashion_mnist
from jaxmim.data import image_folder
from jaxmim.data.data_config import DataConfig, validate_config

__all__ = [
    'DatasetNotFoundError',
    'get_dataset_builder',
    'builder_kwargs',
    'split_size',
    'num_examples',
]


class DatasetNotFoundError(FileNotFoundError):
    """A TFDS dataset is unknown or has not been prepared in the data dir.

    The message names the dataset, the data dir that was searched and how to
    prepare the dataset (for ``imagenet2012``: the manual download of
    ``ILSVRC2012_img_train.tar`` / ``ILSVRC2012_img_val.tar`` and
    ``tfds build imagenet2012``).
    """


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
    the local idx files on first use
    (:func:`jaxmim.data.fashion_mnist.prepare_fashion_mnist`); any other
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
      FileNotFoundError / ValueError: from
        :func:`jaxmim.data.fashion_mnist.prepare_fashion_mnist` when
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


def builder_kwargs(cfg: DataConfig) -> dict[str, Any]:
    """Extra :func:`get_dataset_builder` arguments of a checked data config.

    Args:
      cfg: the :class:`jaxmim.data.data_config.DataConfig`.

    Returns:
      ``{'on_decode_error': ...}`` for an image folder (``dataset='image_folder'``), else ``{}``.
    """
    return {'on_decode_error': cfg.on_decode_error} if cfg.dataset == image_folder.NAME else {}


def split_size(builder, split, field: Optional[str] = None) -> int:
    """Number of examples of ``split`` (a split name or TFDS sub-split) of a prepared builder.

    Args:
      builder: a builder from :func:`get_dataset_builder`.
      split: e.g. ``'train'``, ``'validation'``, ``'train[:10%]'``, ``'test[:1000]'``.
      field: the data config field that named the split, quoted in the error (optional).

    Returns:
      The split's size from the dataset's metadata (``builder.info.splits``), an ``int``.

    Raises:
      ValueError: the split is unknown or malformed; the message names the dataset, the field
        and the available splits.
    """
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
      config: data config (see :func:`jaxmim.data.pipeline.create_split`); ``dataset`` and
        ``data_dir`` are used.
      split: a TFDS split name (``'train'``, ``'test'``, ``'validation'``) or
        sub-split expression (``'train[:10%]'``).

    Returns:
      int, the number of examples in the whole split, over all processes.

    Raises:
      ValueError: bad config field or unknown split (names the accepted splits).
      DatasetNotFoundError: as :func:`get_dataset_builder`.
    """
    cfg = validate_config(config)
    builder = get_dataset_builder(cfg.dataset, cfg.data_dir, **builder_kwargs(cfg))
    return split_size(builder, split)
