"""Random Functional CNNs for the property tests: a model is a list of block specs.

A spec is a plain tuple (hypothesis draws them, shrinks them and prints them), so a
failing example is rebuilt exactly by ``build_model(specs, head)``: paste the
printed specs into a regression test.

Blocks (each maps an NHWC tensor to an NHWC tensor):

- ``("conv", width, kernel, stride, bn)``: Conv2D 'same' [+ BN] + ReLU
- ``("residual", kernel, bn)``: x + conv-[bn]-relu-conv-[bn](x) at x's width, then ReLU
- ``("concat", width_a, width_b)``: Concatenate of a 1x1 and a 3x3 conv of x
- ``("depthwise", multiplier, bn)``: DepthwiseConv2D 3x3 [+ BN] + ReLU
- ``("separable", width)``: SeparableConv2D 3x3 + ReLU
- ``("grouped", groups, width_per_group)``: Conv2D 3x3 with ``groups``
- ``("se", reduction)``: squeeze-excite (GAP -> Dense -> ReLU -> Dense -> sigmoid ->
  Reshape -> Multiply)
- ``("pool",)``: MaxPooling2D 2x2 (only while the map is at least 4 wide)
- ``("nested", inner)``: a Functional sub-model made of the block specs ``inner``
  (a tuple; ``()`` is a conv-BN-ReLU at x's width) called as a layer
- ``("shared", inner)``: one Functional sub-model of the width-preserving block specs
  ``inner`` (``"residual"`` and ``"ops"`` of ``SHARED_OPS_KINDS``; ``()`` is a
  conv-BN-ReLU at x's width)
  called twice in a row (a shared model: both calls keep the same channels)
- ``("ops", kind)``: keras.ops nodes: ``"add_const"`` (x + 3.0), ``"scale"``
  (x * 0.5 + 0.1), ``"relu6"``, ``"add_self"`` (x + relu(x)), ``"gate"``
  (x * sigmoid(1x1 conv of x), a gate tying x to the conv), ``"swish"`` (x * sigmoid(x)),
  ``"split"`` (split in two on channels, relu one half, concatenate), ``"slice"``
  (``x[..., k:]`` and ``x[..., :k]`` swapped by a concatenate; both from 4 channels
  up, so no part has one channel only), ``"pad"``
  (pad H/W by 1 then a 'valid' 3x3 conv of x's width), ``"mean"`` (x * mean over H, W
  keeping dims)

Heads: ``"gap"`` (GlobalAveragePooling2D -> Dense), ``"flatten"`` (Flatten -> Dense) or
``"mean"`` (keras.ops.mean over H, W -> Dense).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

INPUT_SHAPE = (8, 8, 3)
CLASSES = 3


def build_model(specs: Sequence[tuple], head: str = "gap") -> keras.Model:
    """The Functional model of ``specs`` on an 8x8x3 input, with ``head``."""
    inputs = keras.Input(INPUT_SHAPE, name="input")
    x = inputs
    for index, spec in enumerate(specs):
        x = BLOCKS[spec[0]](x, f"b{index}", *spec[1:])
    if head == "flatten":
        x = keras.layers.Flatten(name="flatten")(x)
    elif head == "mean":
        x = keras.ops.mean(x, axis=(1, 2))
    else:
        x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(CLASSES, name="fc")(x)
    return keras.Model(inputs, outputs, name="random_cnn")


def _channels(x: Any) -> int:
    return int(x.shape[-1])


def _bn_relu(x, name: str, bn: bool):
    if bn:
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def conv_block(x, name, width, kernel, stride, bn):
    if stride == 2 and x.shape[1] < 4:
        stride = 1
    x = keras.layers.Conv2D(width, kernel, strides=stride, padding="same", name=name)(x)
    return _bn_relu(x, name, bn)


def residual_block(x, name, kernel, bn):
    width = _channels(x)
    y = keras.layers.Conv2D(width, kernel, padding="same", name=f"{name}_c1")(x)
    y = _bn_relu(y, f"{name}_c1", bn)
    y = keras.layers.Conv2D(width, kernel, padding="same", name=f"{name}_c2")(y)
    if bn:
        y = keras.layers.BatchNormalization(name=f"{name}_c2_bn")(y)
    x = keras.layers.Add(name=f"{name}_add")([x, y])
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def concat_block(x, name, width_a, width_b):
    a = keras.layers.Conv2D(width_a, 1, name=f"{name}_a")(x)
    b = keras.layers.Conv2D(width_b, 3, padding="same", name=f"{name}_b")(x)
    x = keras.layers.Concatenate(name=f"{name}_cat")([a, b])
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def depthwise_block(x, name, multiplier, bn):
    x = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=multiplier, name=name)(x)
    return _bn_relu(x, name, bn)


def separable_block(x, name, width):
    x = keras.layers.SeparableConv2D(width, 3, padding="same", name=name)(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def grouped_block(x, name, groups, width_per_group):
    channels = _channels(x)
    if channels % groups:  # make the input divisible first
        x = keras.layers.Conv2D(groups * 2, 1, name=f"{name}_in")(x)
    x = keras.layers.Conv2D(groups * width_per_group, 3, padding="same", groups=groups, name=name)(
        x
    )
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def se_block(x, name, reduction):
    channels = _channels(x)
    s = keras.layers.GlobalAveragePooling2D(name=f"{name}_gap")(x)
    s = keras.layers.Dense(max(1, channels // reduction), activation="relu", name=f"{name}_d1")(s)
    s = keras.layers.Dense(channels, activation="sigmoid", name=f"{name}_d2")(s)
    s = keras.layers.Reshape((1, 1, channels), name=f"{name}_reshape")(s)
    return keras.layers.Multiply(name=f"{name}_mul")([x, s])


def pool_block(x, name):
    if x.shape[1] < 4:
        return x
    return keras.layers.MaxPooling2D(2, name=name)(x)


def nested_block(x, name, inner=()):
    inner_in = keras.Input(tuple(x.shape[1:]), name=f"{name}_in")
    y = inner_in
    if not inner:
        y = keras.layers.Conv2D(_channels(x), 3, padding="same", name=f"{name}_conv")(y)
        y = _bn_relu(y, name, True)
    for index, spec in enumerate(inner):
        y = BLOCKS[spec[0]](y, f"{name}_{index}", *spec[1:])
    return keras.Model(inner_in, y, name=name)(x)


def shared_block(x, name, inner=()):
    inner_in = keras.Input(tuple(x.shape[1:]), name=f"{name}_in")
    y = nested_block(inner_in, name, inner)
    sub = keras.Model(inner_in, y, name=f"{name}_shared")
    return sub(sub(x))


def ops_block(x, name, kind):
    ops = keras.ops
    if kind == "add_const":
        return x + 3.0
    if kind == "gate":
        g = keras.layers.Conv2D(_channels(x), 1, name=f"{name}_gate")(x)
        return ops.multiply(x, ops.sigmoid(g))
    if kind == "swish":
        return ops.multiply(x, ops.sigmoid(x))
    if kind == "scale":
        return ops.add(ops.multiply(x, 0.5), 0.1)
    if kind == "relu6":
        return ops.relu6(x)
    if kind == "add_self":
        return ops.add(x, ops.relu(x))
    if kind == "split":
        if _channels(x) < 4 or _channels(x) % 2:  # halves of one channel: nothing to prune
            return x
        a, b = ops.split(x, 2, axis=-1)
        return ops.concatenate([ops.relu(a), b], axis=-1)
    if kind == "slice":
        if _channels(x) < 4:
            return x
        k = _channels(x) // 2
        return ops.concatenate([ops.relu(x[..., k:]), x[..., :k]], axis=-1)
    if kind == "pad":
        y = ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
        return keras.layers.Conv2D(_channels(x), 3, padding="valid", name=f"{name}_conv")(y)
    if kind == "mean":
        return ops.multiply(x, ops.mean(x, axis=(1, 2), keepdims=True))
    raise ValueError(f"unknown ops kind {kind!r}")


BLOCKS = {
    "conv": conv_block,
    "residual": residual_block,
    "concat": concat_block,
    "depthwise": depthwise_block,
    "separable": separable_block,
    "grouped": grouped_block,
    "se": se_block,
    "pool": pool_block,
    "nested": nested_block,
    "shared": shared_block,
    "ops": ops_block,
}

OPS_KINDS = (
    "add_const",
    "scale",
    "relu6",
    "add_self",
    "gate",
    "swish",
    "split",
    "slice",
    "pad",
    "mean",
)
SHARED_OPS_KINDS = tuple(kind for kind in OPS_KINDS if kind != "slice")
"""Ops kinds in a shared sub-model: not "slice", whose channel swap, applied twice, ties
channels to their images (at odd widths all of them, leaving nothing to prune)."""
