"""Fashion-MNIST as a TFDS dataset built from local idx files (no network).

The Fashion-MNIST images ship as four gzip-compressed idx files (the format of
the original MNIST distribution, http://yann.lecun.com/exdb/mnist/). Debian
and Ubuntu package them as ``dataset-fashion-mnist``, which installs them under
``/usr/share/datasets/fashion-mnist``. This module turns those files into an
ordinary TFDS dataset named ``fashion_mnist_local`` following the TFDS
"manual download" pattern
(https://www.tensorflow.org/datasets/add_dataset#manual_download_and_extraction):
the files are read from ``dl_manager.manual_dir`` and nothing is downloaded.

After :func:`prepare_fashion_mnist` has run once for a ``data_dir``,
``tfds.load('fashion_mnist_local', data_dir=data_dir)`` works like for any
other TFDS dataset. Importing this module registers the builder with TFDS.

The examples are stored in the order of the idx files (``disable_shuffling``),
so example ``i`` of split ``train`` is image/label ``i`` of
``train-images-idx3-ubyte.gz`` / ``train-labels-idx1-ubyte.gz``.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from typing import Optional

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

DEFAULT_MANUAL_DIR = '/usr/share/datasets/fashion-mnist'
"""Where the Debian/Ubuntu package ``dataset-fashion-mnist`` installs the files."""

CLASS_NAMES = (
    'T-shirt/top',
    'Trouser',
    'Pullover',
    'Dress',
    'Coat',
    'Sandal',
    'Shirt',
    'Sneaker',
    'Bag',
    'Ankle boot',
)
"""The 10 Fashion-MNIST class names; label ``k`` is ``CLASS_NAMES[k]``."""

# split -> (images file, labels file, number of examples)
SPLIT_FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz', 60000),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz', 10000),
}
"""Split name -> (image file name, label file name, expected example count)."""

IMAGE_SHAPE = (28, 28)

_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte data, 3 dimensions.
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned byte data, 1 dimension.

_INSTRUCTIONS = f"""\
Fashion-MNIST is read from four local idx files:
  {', '.join(f for split in SPLIT_FILES.values() for f in split[:2])}
Get them in one of two ways:
  * Debian/Ubuntu: `sudo apt-get install dataset-fashion-mnist`, which installs
    them under {DEFAULT_MANUAL_DIR} (the default location).
  * Download the four files (from
    https://github.com/zalandoresearch/fashion-mnist, directory data/fashion)
    into a directory of your choice and pass it as `manual_dir`
    (jaxmim.data.prepare_fashion_mnist(manual_dir=...), or
    tfds.download.DownloadConfig(manual_dir=...)).
"""


class _ClassProperty:
    """Read-only property evaluated on the class (like ``tfds`` ``classproperty``)."""

    def __init__(self, fget):
        self._fget = fget

    def __get__(self, obj, objtype=None):
        return self._fget(objtype if objtype is not None else type(obj))


def _read_gzip(path: str) -> bytes:
    try:
        with gzip.open(path, 'rb') as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError.
        raise ValueError(
            f'Corrupt or truncated gzip file {path!r}: {e}. Re-install or '
            're-download it.\n' + _INSTRUCTIONS
        ) from e


def _parse_idx(path: str, magic: int, ndim: int) -> np.ndarray:
    """Parses an unsigned-byte idx file into a uint8 array of its dimensions."""
    raw = _read_gzip(path)
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise ValueError(
            f'Truncated idx file {path!r}: {len(raw)} bytes, shorter than the '
            f'{header_len}-byte header.'
        )
    header = np.frombuffer(raw, dtype='>u4', count=1 + ndim)
    if int(header[0]) != magic:
        raise ValueError(
            f'Bad idx magic number {int(header[0])} in {path!r}: expected {magic} '
            f'(unsigned bytes, {ndim} dimension(s)). Is this the right file?'
        )
    dims = tuple(int(d) for d in header[1:])
    expected = int(np.prod(dims, dtype=np.int64))
    payload = len(raw) - header_len
    if payload != expected:
        raise ValueError(
            f'Corrupt or truncated idx file {path!r}: header says dims {dims} '
            f'({expected} data bytes) but the file holds {payload} data bytes.'
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims)


def read_idx_images(path: str) -> np.ndarray:
    """Reads a gzip-compressed idx3 image file (e.g. train-images-idx3-ubyte.gz).

    Args:
      path: path of the ``.gz`` file.

    Returns:
      uint8 array of shape (N, 28, 28) (rows, columns), pixel values in [0, 255]
      (0 is background).

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      ValueError: naming the file if it is not gzip, is truncated, has a magic
        number other than 2051, image dims other than 28x28, or a data size that
        does not match its header.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'Fashion-MNIST file {path!r} not found.\n' + _INSTRUCTIONS)
    images = _parse_idx(path, _IDX_IMAGES_MAGIC, 3)
    if images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(
            f'Unexpected image dims {images.shape[1:]} in {path!r}: expected '
            f'{IMAGE_SHAPE}.'
        )
    return images


def read_idx_labels(path: str) -> np.ndarray:
    """Reads a gzip-compressed idx1 label file (e.g. train-labels-idx1-ubyte.gz).

    Args:
      path: path of the ``.gz`` file.

    Returns:
      uint8 array of shape (N,) with class ids in [0, 10).

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      ValueError: naming the file if it is not gzip, is truncated, has a magic
        number other than 2049, a data size that does not match its header, or a
        label outside [0, 10).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'Fashion-MNIST file {path!r} not found.\n' + _INSTRUCTIONS)
    labels = _parse_idx(path, _IDX_LABELS_MAGIC, 1)
    if labels.size and int(labels.max()) >= len(CLASS_NAMES):
        raise ValueError(
            f'Label {int(labels.max())} out of range [0, {len(CLASS_NAMES)}) in '
            f'{path!r}.'
        )
    return labels


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack('>I', len(data))
        + kind
        + data
        + struct.pack('>I', zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _encode_grey_png(image: np.ndarray) -> bytes:
    """Encodes a uint8 (H, W) greyscale image as PNG (PNG spec, ISO/IEC 15948).

    Much faster than the per-example TensorFlow encoder TFDS would otherwise run
    (Fashion-MNIST has 70000 images). Layout: 8-bit greyscale (colour type 0),
    no interlace, every scanline with filter type 0 (None).
    """
    height, width = image.shape
    ihdr = struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0)
    rows = np.concatenate(
        [np.zeros((height, 1), np.uint8), np.ascontiguousarray(image, np.uint8)],
        axis=1,
    )
    return (
        b'\x89PNG\r\n\x1a\n'
        + _png_chunk(b'IHDR', ihdr)
        + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 1))
        + _png_chunk(b'IEND', b'')
    )


def _missing_files(directory: str) -> list[str]:
    names = [f for split in SPLIT_FILES.values() for f in split[:2]]
    return [f for f in names if not os.path.isfile(os.path.join(directory, f))]


def _has_any_file(directory: Optional[os.PathLike]) -> bool:
    return directory is not None and len(_missing_files(os.fspath(directory))) < 4


def check_manual_dir(manual_dir: str) -> None:
    """Checks that ``manual_dir`` holds all four Fashion-MNIST idx files.

    Raises:
      FileNotFoundError: listing the missing files and how to get them
        (``sudo apt-get install dataset-fashion-mnist`` or a manual download).
    """
    missing = _missing_files(os.fspath(manual_dir))
    if missing:
        raise FileNotFoundError(
            f'Fashion-MNIST files missing from {os.fspath(manual_dir)!r}: '
            f'{", ".join(missing)}.\n' + _INSTRUCTIONS
        )


class FashionMnistLocal(tfds.core.GeneratorBasedBuilder):
    """TFDS builder ``fashion_mnist_local`` reading the local Fashion-MNIST idx files.

    Features: ``image``: ``tfds.features.Image(shape=(28, 28, 1))``, decoded as
    uint8 (28, 28, 1) (H, W, C), values in [0, 255]; ``label``:
    ``tfds.features.ClassLabel`` with the 10 names of :data:`CLASS_NAMES`,
    decoded as int64 scalar.
    Splits: ``train`` (60000 examples) and ``test`` (10000), in idx-file order.

    The files are taken from ``dl_manager.manual_dir`` when that directory holds
    any of them (set it with ``tfds.download.DownloadConfig(manual_dir=...)``),
    else from :data:`DEFAULT_MANUAL_DIR`. This follows the TFDS manual-download
    pattern (https://www.tensorflow.org/datasets/add_dataset).

    Raises (from ``download_and_prepare``):
      FileNotFoundError: when the files are missing, with instructions
        (``sudo apt-get install dataset-fashion-mnist`` or download them into
        the manual dir).
      ValueError: naming the file when one is corrupt or truncated.
    """

    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'Initial release, from the local idx files.'}
    MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS

    # TFDS 4.9.10 derives ``code_path`` through ``importlib_resources`` (a
    # backport package that is not installed with Python >= 3.9) for builders
    # defined outside ``tensorflow_datasets``; point it at this file directly.
    code_path = _ClassProperty(lambda cls: epath.Path(__file__))

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description='Fashion-MNIST (Zalando), 28x28 grey images of 10 clothing '
            'classes, built from the local idx files.',
            features=tfds.features.FeaturesDict({
                'image': tfds.features.Image(shape=IMAGE_SHAPE + (1,)),
                'label': tfds.features.ClassLabel(names=list(CLASS_NAMES)),
            }),
            supervised_keys=('image', 'label'),
            disable_shuffling=True,
            homepage='https://github.com/zalandoresearch/fashion-mnist',
            citation='Han Xiao, Kashif Rasul, Roland Vollgraf. Fashion-MNIST: a '
            'Novel Image Dataset for Benchmarking Machine Learning Algorithms. '
            'arXiv:1708.07747, 2017.',
        )

    def _resolve_manual_dir(self, dl_manager) -> str:
        try:
            requested = dl_manager.manual_dir  # Raises when absent or empty.
        except AssertionError:
            requested = None
        if _has_any_file(requested):
            directory = os.fspath(requested)
        else:
            directory = DEFAULT_MANUAL_DIR
        check_manual_dir(directory)
        return directory

    def _split_generators(self, dl_manager):
        directory = self._resolve_manual_dir(dl_manager)
        generators = {}
        for split, (images_file, labels_file, count) in SPLIT_FILES.items():
            images_path = os.path.join(directory, images_file)
            labels_path = os.path.join(directory, labels_file)
            images = read_idx_images(images_path)
            labels = read_idx_labels(labels_path)
            for path, n in ((images_path, len(images)), (labels_path, len(labels))):
                if n != count:
                    raise ValueError(
                        f'{path!r} holds {n} examples; Fashion-MNIST {split!r} has '
                        f'{count}. Is this the right file?'
                    )
            generators[split] = self._generate_examples(images, labels)
        return generators

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray):
        for i in range(len(images)):
            # PNG bytes pass through tfds.features.Image unchanged (its encoding).
            yield i, {'image': _encode_grey_png(images[i]), 'label': int(labels[i])}


def prepare_fashion_mnist(
    data_dir: Optional[str] = None, manual_dir: Optional[str] = None
) -> tfds.core.DatasetBuilder:
    """Prepares ``fashion_mnist_local`` in the TFDS data dir once; idempotent.

    Args:
      data_dir: TFDS data dir; ``None`` means the TFDS default
        (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      manual_dir: directory with the four idx ``.gz`` files; ``None`` means
        :data:`DEFAULT_MANUAL_DIR`. Only read when the dataset is not prepared
        yet.

    Returns:
      The prepared ``FashionMnistLocal`` builder; ``builder.as_dataset(split)``
      or ``tfds.load('fashion_mnist_local', data_dir=data_dir)`` then work.

    Raises:
      FileNotFoundError: the idx files are missing; the message says how to get
        them (``sudo apt-get install dataset-fashion-mnist`` or download them).
      ValueError: naming the file when an idx file is corrupt or truncated.
    """
    builder = FashionMnistLocal(data_dir=data_dir)
    if builder.is_prepared():
        return builder
    manual_dir = os.fspath(manual_dir) if manual_dir is not None else DEFAULT_MANUAL_DIR
    check_manual_dir(manual_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=manual_dir, try_download_gcs=False
        )
    )
    # A fresh builder reads the DatasetInfo (split sizes) written to disk.
    return FashionMnistLocal(data_dir=data_dir)
