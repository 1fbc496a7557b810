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
"""

# pipeline first: it hides the accelerators from TensorFlow before anything
# else can initialise TF devices.
from jaxmim.data.pipeline import (  # noqa: F401
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetNotFoundError,
    create_split,
    get_dataset_builder,
    hide_accelerators_from_tf,
    num_examples,
)
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
