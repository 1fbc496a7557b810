"""Pre-flight and read-error checks of a run's dataset: splits exist and are not empty,
tfrecord shards are not truncated, and a read error names the damaged file.

Source: the TFRecord framing (``uint64 length, uint32 masked crc32c(length), data, uint32
masked crc32c(data)``) is TensorFlow's ``tensorflow/core/lib/io/record_writer.cc``.
"""

from __future__ import annotations

import os

from jaxmim import config as config_lib
from jaxmim.data import datasets

__all__ = ['check_data', 'check_tfrecord_sizes', 'find_corrupt_tfrecords', 'data_error']


def check_data(config) -> None:
    """The dataset is known and prepared, the split names exist and the data fields are valid;
    the split's tfrecord files have the sizes the dataset info records (a truncated file is
    named here, before anything runs).

    Raises:
      ValueError: naming the ``config.data`` field (dataset, data_dir, train_split, ...) or file.
    """
    data_cfg = config_lib.resolve_data_config(config)
    splits = [('train_split', data_cfg.train_split)]
    if config.mode == 'finetune':
        splits.append(('eval_split', data_cfg.eval_split))
    try:
        for field, split in splits:
            try:
                n = datasets.num_examples(data_cfg, split)
            except ValueError as e:
                raise ValueError(f'config.data.{field}={split!r}: {e}') from None
            if n == 0:
                raise ValueError(f'config.data.{field}={split!r} of {data_cfg.dataset!r} is empty')
    except datasets.DatasetNotFoundError as e:
        raise ValueError(f'config.data.dataset={data_cfg.dataset!r} (data_dir '
                         f'{data_cfg.data_dir!r}): {e}') from None
    check_tfrecord_sizes(data_cfg)


def _split_files(data_cfg, split: str) -> list[str]:
    builder = datasets.get_dataset_builder(data_cfg.dataset, data_cfg.data_dir)
    base = split.split('[')[0]
    info = builder.info.splits[base]
    return [os.fspath(f) for f in info.filepaths]


def check_tfrecord_sizes(data_cfg) -> None:
    """Cheap truncation check: each tfrecord shard of the train split holds at least as many
    well-framed records as the dataset info says (reads only the 12-byte record headers).

    Raises:
      ValueError: naming the damaged file and ``config.data.data_dir``.
    """
    try:
        files = _split_files(data_cfg, data_cfg.train_split)
    except Exception:  # pylint: disable=broad-except  (non-tfrecord formats: nothing to check)
        return
    for path in files:
        if '://' in path:   # remote storage (gs://...): checked when read
            continue
        if path.endswith('.tfrecord') or '.tfrecord-' in os.path.basename(path):
            problem = _tfrecord_framing_problem(path)
            if problem:
                raise ValueError(f'corrupt tfrecord {path} ({problem}) in config.data.data_dir='
                                 f'{data_cfg.data_dir!r}; re-prepare the dataset')


def _tfrecord_framing_problem(path: str) -> str | None:
    """Walks the record headers of a TFRecord file (``uint64 length, uint32 crc, data, uint32
    crc``); returns what is wrong, or None. Reads 12 bytes per record, seeks over the data."""
    try:
        size = os.path.getsize(path)
        with open(path, 'rb') as f:
            pos = 0
            while pos < size:
                head = f.read(12)
                if len(head) < 12:
                    return f'truncated record header at byte {pos}'
                length = int.from_bytes(head[:8], 'little')
                pos += 12 + length + 4
                if pos > size:
                    return f'truncated: a record ends at byte {pos}, past the end of the {size}-byte file'
                f.seek(pos)
    except OSError as e:
        return str(e)
    return None


def find_corrupt_tfrecords(data_cfg, split: str) -> list[str]:
    """The tfrecord files of ``split`` that TensorFlow cannot read to the end (CRC or framing);
    reads the whole split once (called only after a read error)."""
    import tensorflow as tf
    bad = []
    try:
        files = _split_files(data_cfg, split)
    except Exception:  # pylint: disable=broad-except
        return bad
    for path in files:
        try:
            for _ in tf.data.TFRecordDataset(path):
                pass
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError):
            bad.append(path)
    return bad


def data_error(err: Exception, config) -> Exception:
    """The error to raise for an exception from the training input stream: a TensorFlow data-loss
    error becomes a ValueError naming the damaged tfrecord file(s); others are returned as is."""
    try:
        import tensorflow as tf
    except ImportError:
        return err
    if not isinstance(err, (tf.errors.DataLossError, tf.errors.InvalidArgumentError)):
        return err
    data_cfg = config_lib.resolve_data_config(config)
    bad = find_corrupt_tfrecords(data_cfg, data_cfg.train_split)
    where = ', '.join(bad) if bad else 'a file of the split (none failed a re-read)'
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ValueError(f'corrupt tfrecord {where} of config.data.dataset={data_cfg.dataset!r} '
                      f'(config.data.data_dir={data_cfg.data_dir!r}): {first}; re-prepare the dataset')
