"""Any folder of class sub-folders of images as a dataset (``data.dataset='image_folder'``).

Layout (the torchvision ``ImageFolder`` / ``tfds.folder_dataset.ImageFolder`` one)::

    <data.data_dir>/<split>/<class name>/<image file>

e.g. ``root/train/n01440764/x.JPEG`` and ``root/val/n01440764/y.JPEG`` with
``data.train_split='train'``, ``data.eval_split='val'``. Classes are the sorted sub-folder
names of the split (label ``k`` = ``k``-th name; every split must list the same classes), files
are sorted by (class, name), so example order is deterministic. Sub-splits work as for TFDS
(``'train[:10%]'``, ``'val[:500]'``, and ``tfds.even_splits`` per process).

Why not ``tfds.folder_dataset.ImageFolder``: it supports no sub-split (so no per-process
slicing), shuffles the file list itself, and a corrupt file stops ``tf.data`` with a decode
error that does not name the file. :class:`ImageFolderBuilder` instead checks every image once
(full decode with ``tf.io.decode_image`` on a thread pool) when a split is first opened and
either raises naming the corrupt file (``on_decode_error='raise'``) or drops it and logs the
names and the count (``'skip'``); the list of good files is cached beside the images
(``<root>/.<split>.jaxmim_index.json``, keyed by the files' sizes and mtimes; not written when
the folder is read-only). It exposes what :func:`jaxmim.data.pipeline.create_split` uses of a
TFDS builder: ``info.features`` / ``info.splits`` / ``info.full_name`` and ``as_dataset``
yielding ``{'image': encoded bytes, 'label': int64}``.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
from typing import Optional

from absl import logging
import tensorflow as tf
import tensorflow_datasets as tfds

NAME = 'image_folder'
"""The ``data.dataset`` value that selects this reader."""

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp')
"""File endings (case-insensitive) taken as images; other files are ignored."""

DECODE_ERROR_MODES = ('raise', 'skip')
"""Accepted ``data.on_decode_error`` values."""


class CorruptImageError(ValueError):
    """An image of an image-folder split does not decode; the message names the file."""


def _list_dir(path):
    return sorted(e for e in tf.io.gfile.listdir(path) if not e.startswith('.'))


def _check_image(path: str) -> Optional[str]:
    """None when ``path`` decodes as an image, else the decoder's error message."""
    try:
        data = tf.io.read_file(path)
        tf.io.decode_image(data, channels=3, expand_animations=False)
        return None
    except (tf.errors.InvalidArgumentError, tf.errors.OpError) as e:
        return str(e.message if hasattr(e, 'message') else e).strip().splitlines()[0]


class ImageFolderBuilder:
    """A TFDS-like builder over ``root/<split>/<class>/<image>`` (see the module docstring).

    Args:
      root: the folder holding one sub-folder per split.
      on_decode_error: 'raise' or 'skip' (see the module docstring).
      num_threads: decode-check threads.

    Attributes:
      skipped: ``{split: [paths of corrupt files dropped]}`` (``'skip'`` mode).

    Raises:
      FileNotFoundError: ``root`` does not exist or holds no split folder.
      ValueError: bad ``on_decode_error``; splits with different class lists.
    """

    def __init__(self, root: str, on_decode_error: str = 'raise', num_threads: int = 16):
        if on_decode_error not in DECODE_ERROR_MODES:
            raise ValueError(f'data.on_decode_error must be one of {DECODE_ERROR_MODES}, got {on_decode_error!r}')
        if not root or not tf.io.gfile.isdir(root):
            raise FileNotFoundError(f"data.dataset='image_folder' needs data.data_dir = a folder of "
                                    f'<split>/<class>/<image> files; {root!r} is not a folder')
        self.root = os.fspath(root)
        self.on_decode_error = on_decode_error
        self.num_threads = num_threads
        splits = [s for s in _list_dir(self.root) if tf.io.gfile.isdir(os.path.join(self.root, s))]
        if not splits:
            raise FileNotFoundError(f'{self.root!r} holds no split folder (expected <split>/<class>/<image>)')
        classes = None
        for s in splits:
            names = [c for c in _list_dir(os.path.join(self.root, s))
                     if tf.io.gfile.isdir(os.path.join(self.root, s, c))]
            if classes is None:
                classes = names
            elif names != classes:
                raise ValueError(f'image folder {self.root!r}: split {s!r} has classes {names[:5]}... '
                                 f'but another split has {classes[:5]}...; every split needs the same class folders')
        self.class_names = classes
        self._split_names = splits
        self._files: dict[str, list[tuple[str, int]]] = {}
        self.skipped: dict[str, list[str]] = {}
        self._info = None

    # -- the TFDS builder surface used by the pipeline -------------------------------------------

    @property
    def info(self):
        """A ``tfds.core.DatasetInfo``: features ``image`` (encoded, 3 channels) and ``label``
        (``ClassLabel`` of the class folder names); splits sized by their good images (the first
        access checks every split, see :meth:`files`)."""
        if self._info is None:
            features = tfds.features.FeaturesDict({
                'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
                'label': tfds.features.ClassLabel(names=self.class_names),
            })
            info = tfds.core.DatasetInfo(builder=_InfoStub(self.root), features=features)
            infos = [tfds.core.SplitInfo(name=s, shard_lengths=[len(self.files(s))], num_bytes=0)
                     for s in self._split_names]
            info.set_splits(tfds.core.SplitDict(infos))
            self._info = info
        return self._info

    def is_prepared(self) -> bool:
        """Always True: nothing to prepare beyond the check done on first access."""
        return True

    def files(self, split: str) -> list[tuple[str, int]]:
        """``[(path, label)]`` of the split's good images, sorted; checked once (module docstring).

        Raises:
          ValueError: unknown split. CorruptImageError: a corrupt image in 'raise' mode.
        """
        if split not in self._split_names:
            raise ValueError(f'image folder {self.root!r} has splits {self._split_names}, not {split!r}')
        if split not in self._files:
            self._files[split] = self._scan(split)
        return self._files[split]

    def as_dataset(self, split, shuffle_files=False, read_config=None, decoders=None, **unused):
        """``tf.data.Dataset`` of ``{'image': encoded bytes (tf.string), 'label': int64}`` for a
        split or sub-split, in file order (the pipeline shuffles). ``decoders`` must skip image
        decoding (the pipeline decodes); ``shuffle_files`` is ignored.

        Raises:
          ValueError: ``decoders`` given without ``tfds.decode.SkipDecoding`` for ``'image'``, or a split the
            folder does not have.
        """
        del shuffle_files, unused
        if decoders is not None and not isinstance(decoders.get('image'), tfds.decode.SkipDecoding):
            raise ValueError('ImageFolderBuilder.as_dataset yields encoded images only (SkipDecoding)')
        instr = tfds.core.ReadInstruction.from_spec(split) if isinstance(split, str) else split
        abs_instr = instr.to_absolute(self.info.splits)     # str, ReadInstruction or tfds.even_splits part
        paths, labels = [], []
        for ri in abs_instr:
            files = self.files(ri.splitname)
            chosen = files[ri.from_:ri.to]
            paths += [p for p, _ in chosen]
            labels += [l for _, l in chosen]
        ds = tf.data.Dataset.from_tensor_slices((tf.constant(paths, tf.string), tf.constant(labels, tf.int64)))
        ds = ds.map(lambda p, l: {'image': tf.io.read_file(p), 'label': l}, num_parallel_calls=tf.data.AUTOTUNE)
        if read_config is not None and getattr(read_config, 'options', None) is not None:
            ds = ds.with_options(read_config.options)
        return ds

    # -- the one-time check ------------------------------------------------------------------------

    def _scan(self, split: str) -> list[tuple[str, int]]:
        listing = []
        for label, c in enumerate(self.class_names):
            d = os.path.join(self.root, split, c)
            for f in _list_dir(d):
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    listing.append((os.path.join(d, f), label))
        key = hashlib.sha1()
        for p, _ in listing:
            st = tf.io.gfile.stat(p)
            key.update(f'{p}\0{st.length}\0{st.mtime_nsec}\n'.encode())
        key = key.hexdigest()
        cache = os.path.join(self.root, f'.{split}.jaxmim_index.json')
        bad = None
        if tf.io.gfile.exists(cache):
            try:
                with tf.io.gfile.GFile(cache) as f:
                    saved = json.load(f)
                if saved.get('key') == key:
                    bad = {p: m for p, m in saved['corrupt']}
            except (ValueError, KeyError, tf.errors.OpError):
                bad = None
        if bad is None:
            with concurrent.futures.ThreadPoolExecutor(self.num_threads) as pool:
                errors = list(pool.map(_check_image, [p for p, _ in listing]))
            bad = {p: e for (p, _), e in zip(listing, errors) if e is not None}
            try:
                with tf.io.gfile.GFile(cache, 'w') as f:
                    json.dump({'key': key, 'corrupt': sorted(bad.items())}, f)
            except (tf.errors.OpError, OSError) as e:   # read-only folder: check again next time
                logging.info('image folder: cannot write the index %s (%s)', cache, e)
        if bad and self.on_decode_error == 'raise':
            first = sorted(bad)[0]
            raise CorruptImageError(
                f'{len(bad)} corrupt image(s) in split {split!r} of {self.root!r}; first: {first} ({bad[first]}). '
                "Set config.data.on_decode_error='skip' to drop them (they are counted and logged).")
        if bad:
            self.skipped[split] = sorted(bad)
            logging.warning('image folder %s split %r: skipped %d corrupt image(s): %s', self.root, split,
                            len(bad), ', '.join(sorted(bad)[:20]) + (' ...' if len(bad) > 20 else ''))
        return [(p, l) for p, l in listing if p not in bad]


class _InfoStub:
    """The few builder attributes ``tfds.core.DatasetInfo`` reads."""

    def __init__(self, root):
        self.name = NAME
        self.version = tfds.core.Version('1.0.0')
        self.release_notes = {}
        self.data_dir = root
        self.builder_config = None
        self.__module__ = __name__

    def get_metadata(self):
        """No extra metadata."""
        return {}
