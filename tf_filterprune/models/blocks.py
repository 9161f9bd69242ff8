"""Building blocks shared by the reference models."""

from __future__ import annotations

from collections.abc import Sequence

import keras


def conv_bn_relu(x: keras.KerasTensor, filters: int, suffix: str | int) -> keras.KerasTensor:
    """3x3 'same' conv with bias, BatchNormalization and ReLU, named ``conv<suffix>``..."""
    x = keras.layers.Conv2D(
        filters, 3, padding="same", kernel_initializer="he_normal", name=f"conv{suffix}"
    )(x)
    x = keras.layers.BatchNormalization(name=f"bn{suffix}")(x)
    return keras.layers.ReLU(name=f"relu{suffix}")(x)


def plain_stack(x: keras.KerasTensor, config: Sequence[int | str]) -> keras.KerasTensor:
    """VGG-style stack: an int is a :func:`conv_bn_relu` of that width, "M" a 2x2 max pool.

    Convs are named ``conv1, conv2, ...`` and pools ``pool1, pool2, ...``.
    """
    conv_index = pool_index = 0
    for item in config:
        if item == "M":
            pool_index += 1
            x = keras.layers.MaxPooling2D(2, name=f"pool{pool_index}")(x)
        else:
            conv_index += 1
            x = conv_bn_relu(x, int(item), conv_index)
    return x
