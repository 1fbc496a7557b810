"""Input data for jaxmim: TFDS datasets and the tf.data pipeline.

Public API:
  * :func:`create_split` — per-process iterator of numpy batches
    ``{'image': float32 (B, H, W, 3) NHWC normalised, 'label': int32 (B,)}``
    (+ ``'mask'`` float32 (B,) in evaluation) for any TFDS image dataset.
  * :func:`get_dataset_builder`, :func:`num_examples`,
    :class:`DatasetNotFoundError`.
  * :class:`FashionMnistLocal` (TFDS name ``fashion_mnist_local``) and
    :func:`prepare_fashion_mnist`: Fashion-MNIST built from local idx files.

Importing this package hides GPUs/TPUs from TensorFlow (JAX owns them) and
registers ``fashion_mnist_local`` with TFDS.

Modules: :mod:`~jaxmim.data.pipeline` (the tf.data pipeline, :func:`create_split`),
:mod:`~jaxmim.data.data_config` (the data config's completion and checks),
:mod:`~jaxmim.data.datasets` (TFDS builders and split sizes), :mod:`~jaxmim.data.preprocess`
(per-example decode / crop / resize), :mod:`~jaxmim.data.augment` (timm colour ops and random
erasing), :mod:`~jaxmim.data.resume` (the resumable training order),
:mod:`~jaxmim.data.fashion_mnist` and :mod:`~jaxmim.data.image_folder` (local datasets).
"""

# pipeline first: it hides the accelerators from TensorFlow before anything
# else can initialise TF devices.
from jaxmim.data.pipeline import create_split, hide_accelerators_from_tf  # noqa: F401
from jaxmim.constants import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401
from jaxmim.data.datasets import DatasetNotFoundError, get_dataset_builder, num_examples  # noqa: F401
from jaxmim.data.fashion_mnist import (  # noqa: F401
    CLASS_NAMES as FASHION_MNIST_CLASS_NAMES,
    DEFAULT_MANUAL_DIR as FASHION_MNIST_DIR,
    FashionMnistLocal,
    prepare_fashion_mnist,
    read_idx_images,
    read_idx_labels,
)

__all__ = [
    'DatasetNotFoundError',
    'FASHION_MNIST_CLASS_NAMES',
    'FASHION_MNIST_DIR',
    'FashionMnistLocal',
    'IMAGENET_MEAN',
    'IMAGENET_STD',
    'create_split',
    'get_dataset_builder',
    'hide_accelerators_from_tf',
    'num_examples',
    'prepare_fashion_mnist',
    'read_idx_images',
    'read_idx_labels',
]
