"""Reference models: CIFAR VGG-16 / ResNets and a Fashion-MNIST CNN."""

from tf_filterprune.models.cifar import (
    resnet20,
    resnet56,
    resnet110,
    resnet_cifar,
    vgg16_cifar,
)
from tf_filterprune.models.fashion import fashion_cnn

__all__ = [
    "fashion_cnn",
    "resnet20",
    "resnet56",
    "resnet110",
    "resnet_cifar",
    "vgg16_cifar",
]
