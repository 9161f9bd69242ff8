"""Datasets and input pipelines: local Fashion-MNIST and tensorflow-datasets.

Example:

>>> from tf_filterprune import data
>>> images, labels = data.load_fashion_mnist("test")
>>> images.shape, labels.shape
((10000, 28, 28), (10000,))
"""

from tf_filterprune.data.fashion_mnist import (
    DEFAULT_FASHION_MNIST_DIR,
    FASHION_MNIST_CLASSES,
    fashion_mnist_dataset,
    load_fashion_mnist,
)
from tf_filterprune.data.idx import parse_idx, read_idx
from tf_filterprune.data.tfds_pipelines import (
    CIFAR10_MEAN_STD,
    CIFAR100_MEAN_STD,
    IMAGENET_MEAN_STD,
    tfds_pipeline,
)

__all__ = [
    "CIFAR100_MEAN_STD",
    "CIFAR10_MEAN_STD",
    "DEFAULT_FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "IMAGENET_MEAN_STD",
    "fashion_mnist_dataset",
    "load_fashion_mnist",
    "parse_idx",
    "read_idx",
    "tfds_pipeline",
]
