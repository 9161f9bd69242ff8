"""CIFAR reference models used by the filter-pruning literature.

* :func:`vgg16_cifar`: the VGG-16 with BatchNormalization of HRank / DCFF.
* :func:`resnet_cifar` (:func:`resnet20`, :func:`resnet56`, :func:`resnet110`):
  the CIFAR ResNets of He et al. (2016), with projection shortcuts (option B).

All models are Functional, use only built-in Keras layers and output logits.
"""

from __future__ import annotations

import keras

from tf_filterprune.models.blocks import plain_stack

VGG16_CONFIG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
)  # fmt: skip
"""Conv widths of :func:`vgg16_cifar`; ``"M"`` is a 2x2 max pooling."""

RESNET_WIDTHS: tuple[int, int, int] = (16, 32, 64)
"""Widths of the three stages of :func:`resnet_cifar`."""


def vgg16_cifar(
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = (32, 32, 3),
    name: str = "vgg16_cifar",
) -> keras.Model:
    """The CIFAR VGG-16 with BatchNormalization (HRank / DCFF variant).

    Thirteen 3x3 convolutions (with bias), each followed by BatchNormalization
    and ReLU, laid out as :data:`VGG16_CONFIG`; then a 2x2 average pooling,
    Flatten, ``Dense(512) -> BatchNormalization -> ReLU -> Dense(num_classes)``.
    Layers are named ``conv1..conv13``, ``bn1..bn13``, ``relu1..relu13``,
    ``pool1..pool4``, ``avgpool``, ``flatten``, ``fc1``, ``fc1_bn``, ``fc1_relu``
    and ``fc2``.

    Args:
        num_classes: number of output logits.
        input_shape: input shape (height, width, channels); 32x32 gives a 2x2
            map before the final pooling.
        name: model name.

    Returns:
        A Functional model (about 15.0M parameters).

    Example:
        >>> model = vgg16_cifar()
        >>> model.output_shape
        (None, 10)
        >>> model.get_layer("conv13").filters
        512
    """
    inputs = keras.Input(shape=input_shape, name="input")
    x = plain_stack(inputs, VGG16_CONFIG)
    x = keras.layers.AveragePooling2D(2, name="avgpool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(512, name="fc1")(x)
    x = keras.layers.BatchNormalization(name="fc1_bn")(x)
    x = keras.layers.ReLU(name="fc1_relu")(x)
    outputs = keras.layers.Dense(num_classes, name="fc2")(x)
    return keras.Model(inputs, outputs, name=name)


def resnet_cifar(
    depth: int,
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = (32, 32, 3),
    name: str | None = None,
) -> keras.Model:
    """A CIFAR ResNet of He et al. (2016) with ``depth = 6n + 2``.

    A 3x3 conv (16 filters), three stages of ``n`` basic blocks with 16, 32 and
    64 filters (the first block of stages 2 and 3 has stride 2 and a projection
    shortcut: 1x1 conv with stride 2 + BatchNormalization), global average
    pooling and a Dense classifier. Convolutions have no bias and are followed
    by BatchNormalization. Block ``b`` of stage ``s`` has layers
    ``block{s}_{b}_conv1``, ``_bn1``, ``_relu1``, ``_conv2``, ``_bn2``,
    ``_add``, ``_relu2`` (and ``_shortcut_conv``, ``_shortcut_bn``).

    Args:
        depth: total depth, ``6n + 2`` (20, 32, 44, 56, 110, ...).
        num_classes: number of output logits.
        input_shape: input shape (height, width, channels).
        name: model name; default ``"resnet{depth}"``.

    Returns:
        A Functional model.

    Raises:
        ValueError: when ``depth`` is not of the form ``6n + 2`` with ``n >= 1``.

    Example:
        >>> model = resnet_cifar(20)
        >>> model.name, model.output_shape
        ('resnet20', (None, 10))
    """
    blocks = _blocks_per_stage(depth)
    inputs = keras.Input(shape=input_shape, name="input")
    x = _conv_bn(inputs, RESNET_WIDTHS[0], 3, 1, "conv1", "bn1")
    x = keras.layers.ReLU(name="relu1")(x)
    for stage, filters in enumerate(RESNET_WIDTHS, start=1):
        for block in range(1, blocks + 1):
            stride = 2 if stage > 1 and block == 1 else 1
            x = _basic_block(x, filters, stride, f"block{stage}_{block}")
    x = keras.layers.GlobalAveragePooling2D(name="avgpool")(x)
    outputs = keras.layers.Dense(num_classes, name="fc")(x)
    return keras.Model(inputs, outputs, name=name or f"resnet{depth}")


def _blocks_per_stage(depth: int) -> int:
    """``n`` for ``depth = 6n + 2``; raises ValueError otherwise."""
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(
            f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110, ...), "
            f"got {depth!r}."
        )
    return (depth - 2) // 6


def _conv_bn(
    x: keras.KerasTensor, filters: int, kernel: int, stride: int, conv: str, bn: str
) -> keras.KerasTensor:
    """Bias-free 'same' conv followed by BatchNormalization."""
    x = keras.layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=conv,
    )(x)
    return keras.layers.BatchNormalization(name=bn)(x)


def _basic_block(x: keras.KerasTensor, filters: int, stride: int, prefix: str) -> keras.KerasTensor:
    """Two 3x3 conv-BN layers plus a shortcut, joined by Add and ReLU."""
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv_bn(
            x, filters, 1, stride, f"{prefix}_shortcut_conv", f"{prefix}_shortcut_bn"
        )
    y = _conv_bn(x, filters, 3, stride, f"{prefix}_conv1", f"{prefix}_bn1")
    y = keras.layers.ReLU(name=f"{prefix}_relu1")(y)
    y = _conv_bn(y, filters, 3, 1, f"{prefix}_conv2", f"{prefix}_bn2")
    y = keras.layers.Add(name=f"{prefix}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{prefix}_relu2")(y)


def resnet20(
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = (32, 32, 3),
    name: str = "resnet20",
) -> keras.Model:
    """ResNet-20 for CIFAR (``resnet_cifar(20)``, about 0.27M parameters).

    Example:
        >>> resnet20().count_params() > 270_000
        True
    """
    return resnet_cifar(20, num_classes, input_shape, name)


def resnet56(
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = (32, 32, 3),
    name: str = "resnet56",
) -> keras.Model:
    """ResNet-56 for CIFAR (``resnet_cifar(56)``, about 0.86M parameters, 126M MACs).

    Example:
        >>> resnet56().get_layer("block3_9_conv2").filters
        64
    """
    return resnet_cifar(56, num_classes, input_shape, name)


def resnet110(
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = (32, 32, 3),
    name: str = "resnet110",
) -> keras.Model:
    """ResNet-110 for CIFAR (``resnet_cifar(110)``, about 1.7M parameters).

    Example:
        >>> resnet110().get_layer("block3_18_conv2").filters
        64
    """
    return resnet_cifar(110, num_classes, input_shape, name)
