"""A small CNN for Fashion-MNIST (28x28 grayscale)."""

from __future__ import annotations

import keras

from tf_filterprune.models.blocks import plain_stack

FASHION_CONFIG: tuple[int | str, ...] = (32, 32, "M", 64, 64, "M", 128)
"""Conv widths of :func:`fashion_cnn`; ``"M"`` is a 2x2 max pooling."""


def fashion_cnn(
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = (28, 28, 1),
    name: str = "fashion_cnn",
) -> keras.Model:
    """A five-conv CNN for Fashion-MNIST that outputs logits.

    ``Conv32-BN-ReLU, Conv32-BN-ReLU, MaxPool2, Conv64-BN-ReLU, Conv64-BN-ReLU,
    MaxPool2, Conv128-BN-ReLU, GlobalAveragePooling2D, Dense(num_classes)``;
    convs are 3x3 'same' with bias. Layers are named ``conv1..conv5``,
    ``bn1..bn5``, ``relu1..relu5``, ``pool1``, ``pool2``, ``avgpool`` and ``fc``.

    Args:
        num_classes: number of output logits (no softmax).
        input_shape: input shape (height, width, channels).
        name: model name.

    Returns:
        A Functional model (about 141k parameters, 22.1M MACs).

    Example:
        >>> model = fashion_cnn()
        >>> model.output_shape
        (None, 10)
    """
    inputs = keras.Input(shape=input_shape, name="input")
    x = plain_stack(inputs, FASHION_CONFIG)
    x = keras.layers.GlobalAveragePooling2D(name="avgpool")(x)
    outputs = keras.layers.Dense(num_classes, name="fc")(x)
    return keras.Model(inputs, outputs, name=name)
