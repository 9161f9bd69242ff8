"""Convs inside custom layers: traced into Functional sub-graphs, pruned inside.

A custom layer (a ``keras.Layer`` subclass calling Conv2D / BatchNormalization
sublayers and ``keras.ops``) is traced on symbolic inputs into a Functional
sub-model of the same sublayers; the graph walks it, the surgery cuts inside it
and the compact model holds a plain Functional sub-model, named as the custom
layer, in its place. The surgery contract holds inside (the compact model
equals the kernel-zeroed reference). Where tracing fails (Python control flow
on tensor values, weights created in the custom layer itself, a call that
depends on Python state), the layer's channels stay whole with a reason naming
the layer: never a crash, never a wrong cut. The user's model is never mutated.
"""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import assert_surgery_contract, input_batch, predict
from keras import layers as L
from keras import ops

import tf_filterprune as tffp
from tf_filterprune.graph import build_graph
from tf_filterprune.pruner import MacsModel

# ------------------------------------------------------------------ custom layers


class ConvBlock(keras.layers.Layer):
    """Conv2D -> BN -> relu (keras.ops) -> Conv2D -> BN -> x * sigmoid(x) (keras.ops)."""

    def __init__(self, width, out_width, **kwargs):
        super().__init__(**kwargs)
        self.conv1 = L.Conv2D(width, 3, padding="same", name=f"{self.name}_conv1")
        self.bn1 = L.BatchNormalization(name=f"{self.name}_bn1")
        self.conv2 = L.Conv2D(out_width, 1, use_bias=False, name=f"{self.name}_conv2")
        self.bn2 = L.BatchNormalization(name=f"{self.name}_bn2")

    def call(self, inputs, training=None):
        x = ops.relu(self.bn1(self.conv1(inputs), training=training))
        x = self.bn2(self.conv2(x), training=training)
        return x * ops.sigmoid(x)


class ResidualBlock(keras.layers.Layer):
    """A bottleneck with a residual add inside (a layer made in call and a keras.ops add)."""

    def __init__(self, width, mid, **kwargs):
        super().__init__(**kwargs)
        self.reduce = L.Conv2D(mid, 1, name=f"{self.name}_reduce")
        self.bn = L.BatchNormalization(name=f"{self.name}_bn")
        self.spatial = L.Conv2D(mid, 3, padding="same", activation="relu", name=f"{self.name}_3x3")
        self.expand = L.Conv2D(width, 1, name=f"{self.name}_expand")

    def call(self, inputs):
        x = ops.relu(self.bn(self.reduce(inputs)))
        x = self.expand(self.spatial(x))
        x = L.Add(name=f"{self.name}_add")([x, inputs])
        return ops.relu(x) + 0.0 * inputs  # a keras.ops join on the same stream


class Stage(keras.layers.Layer):
    """Custom layers inside a custom layer (a list of blocks), ``training`` passed down."""

    def __init__(self, width, depth, **kwargs):
        super().__init__(**kwargs)
        self.blocks = [
            ResidualBlock(width, width // 2, name=f"{self.name}_b{i}") for i in range(depth)
        ]

    def call(self, x, training=None):
        for block in self.blocks:
            x = block(x, training=training)
        return x


class Fuse(keras.layers.Layer):
    """Takes a list of two tensors: concatenates them and mixes with a 1x1 conv."""

    def __init__(self, width, **kwargs):
        super().__init__(**kwargs)
        self.mix = L.Conv2D(width, 1, name=f"{self.name}_mix")

    def call(self, inputs):
        return self.mix(ops.concatenate(inputs, axis=-1))


class DataDependent(keras.layers.Layer):
    """Python control flow on a tensor value (its output shape is declared): cannot be traced."""

    def __init__(self, width, **kwargs):
        super().__init__(**kwargs)
        self.conv = L.Conv2D(width, 1, name=f"{self.name}_conv")
        self.width = width

    def build(self, input_shape):
        self.conv.build(input_shape)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.width)

    def call(self, x):
        if ops.convert_to_numpy(ops.mean(x)) > 0:
            return self.conv(x)
        return self.conv(-x)


class TensorFlowOps(keras.layers.Layer):
    """TensorFlow functions applied in call: they do not take symbolic Keras tensors."""

    def __init__(self, width, **kwargs):
        super().__init__(**kwargs)
        self.conv = L.Conv2D(width, 1, name=f"{self.name}_conv")

    def call(self, x):
        return tf.nn.relu(self.conv(x))


class OwnWeights(keras.layers.Layer):
    """A sublayer and a per-channel scale created with add_weight in the layer itself."""

    def __init__(self, width, **kwargs):
        super().__init__(**kwargs)
        self.conv = L.Conv2D(width, 1, name=f"{self.name}_conv")
        self.width = width

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.scale = self.add_weight(shape=(self.width,), initializer="ones", name="scale")

    def call(self, x):
        return self.conv(x) * self.scale


class Stateful(keras.layers.Layer):
    """A call that depends on Python state: tracing runs but computes other values."""

    def __init__(self, width, **kwargs):
        super().__init__(**kwargs)
        self.conv = L.Conv2D(width, 1, name=f"{self.name}_conv")
        self.calls = 0

    def call(self, x):
        self.calls += 1
        return self.conv(x) * float(self.calls)


class KeywordInput(keras.layers.Layer):
    """A tensor passed by keyword: the traced sub-model takes tensors in its first argument."""

    def __init__(self, width, **kwargs):
        super().__init__(**kwargs)
        self.conv = L.Conv2D(width, 1, name=f"{self.name}_conv")

    def call(self, x, gate=None):
        return self.conv(x) * gate


# ------------------------------------------------------------------ models and helpers


def stem(inp, width=8, name="stem"):
    x = L.Conv2D(width, 3, padding="same", name=name)(inp)
    return L.ReLU(name=f"{name}_relu")(L.BatchNormalization(name=f"{name}_bn")(x))


def classifier(x, name="head"):
    return L.Dense(3, name=name)(L.GlobalAveragePooling2D(name="gap")(x))


def block_model():
    inp = keras.Input((8, 8, 3), name="image")
    x = ConvBlock(12, 10, name="block")(stem(inp))
    x = L.Conv2D(6, 1, name="after")(x)
    return keras.Model(inp, classifier(x), name="block_model")


def residual_model():
    inp = keras.Input((8, 8, 3), name="image")
    x = Stage(8, 2, name="stage")(stem(inp))
    return keras.Model(inp, classifier(x), name="residual_model")


def randomize_all(model, seed=0):
    """Random BN statistics and biases in every layer, sublayers of custom layers included."""
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, L.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape).astype("float32"),
                    rng.normal(0, 0.2, beta.shape).astype("float32"),
                    rng.normal(0, 0.2, mean.shape).astype("float32"),
                    rng.uniform(0.5, 1.5, var.shape).astype("float32"),
                ]
            )
        elif isinstance(layer, L.Conv2D | L.Dense) and layer.use_bias:
            layer.bias.assign(rng.normal(0, 0.3, layer.bias.shape).astype("float32"))


def contract(model, seed=0):
    randomize_all(model, seed)
    return assert_surgery_contract(model, ratio=0.6, seed=seed, atol=1e-4)


def node_counts(model):
    return {
        id(layer): (len(layer._inbound_nodes), len(layer._outbound_nodes))
        for layer in model._flatten_layers(include_self=False)
    }


def refused_reasons(graph):
    return [r for g in graph.groups() for r in g.reasons]


# ------------------------------------------------------------------ tracing and the contract


def test_custom_layer_with_conv_bn_and_ops_is_pruned_inside():
    model = block_model()
    graph = build_graph(model)
    prunable = {p for g in graph.groups() if g.prunable for p in g.producers}
    assert {"stem", "block/block_conv1", "block/block_conv2", "after"} <= prunable
    compact = contract(model)
    sub = compact.get_layer("block")
    assert isinstance(sub, keras.Model) and not isinstance(sub, ConvBlock)
    assert sub.get_layer("block_conv1").filters < 12
    assert sub.get_layer("block_conv2").filters < 10


def test_residual_add_inside_a_custom_layer_ties_the_stream():
    model = residual_model()
    graph = build_graph(model)
    stream = graph.group_of_layer("stem")
    assert stream.residual and stream.prunable
    assert {"stage/stage_b0/stage_b0_expand", "stage/stage_b1/stage_b1_expand"} <= set(
        stream.producers
    )
    compact = contract(model)
    inner = compact.get_layer("stage").get_layer("stage_b1")
    assert isinstance(inner, keras.Model)
    assert inner.get_layer("stage_b1_reduce").filters < 4
    assert compact.get_layer("stem").filters == inner.get_layer("stage_b1_expand").filters


def test_custom_layer_taking_a_list_of_tensors():
    inp = keras.Input((8, 8, 3), name="image")
    a = L.Conv2D(6, 1, name="a")(inp)
    b = L.Conv2D(4, 3, padding="same", name="b")(inp)
    x = Fuse(8, name="fuse")([a, b])
    model = keras.Model(inp, classifier(x))
    graph = build_graph(model)
    assert all(graph.group_of_layer(graph.resolve(n)).prunable for n in ("a", "b", "fuse_mix"))
    compact = contract(model)
    assert compact.get_layer("fuse").get_layer("fuse_mix").filters < 8


def test_custom_layer_in_a_sequential_model():
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            L.Conv2D(8, 3, padding="same", name="c0"),
            ConvBlock(8, 6, name="block"),
            L.GlobalAveragePooling2D(),
            L.Dense(3, name="head"),
        ]
    )
    compact = contract(model)
    assert isinstance(compact.get_layer("block"), keras.Model)


def test_custom_layer_called_twice_keeps_one_cut():
    shared = ConvBlock(6, 8, name="shared")
    inp = keras.Input((8, 8, 3), name="image")
    x = stem(inp)
    y = shared(x)
    z = shared(L.ReLU(name="between")(y))
    model = keras.Model(inp, classifier(L.Add(name="join")([y, z])))
    compact = contract(model)
    assert isinstance(compact.get_layer("shared"), keras.Model)


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    "layer_class, match",
    [
        (DataDependent, "its call does not run on symbolic tensors"),
        (TensorFlowOps, "its call does not run on symbolic tensors"),
        (OwnWeights, r"holds weights of its own \(scale\)"),
        (Stateful, "computes other values than the layer"),
    ],
)
def test_untraceable_custom_layer_is_refused_with_the_reason(layer_class, match):
    inp = keras.Input((8, 8, 3), name="image")
    x = stem(inp)
    x = layer_class(8, name="custom")(x)
    x = L.Conv2D(6, 3, padding="same", name="after")(x)
    model = keras.Model(inp, classifier(x))
    graph = build_graph(model)
    stem_group = graph.group_of_layer("stem")
    assert not stem_group.prunable
    reason = " ".join(stem_group.reasons)
    assert "'custom'" in reason and layer_class.__name__ in reason
    assert "cannot be traced into a sub-graph" in reason
    assert re.search(match, reason), reason
    assert graph.traced == {}
    # never a crash, never a wrong cut: what is prunable elsewhere still obeys the contract
    compact = contract(model)
    assert type(compact.get_layer("custom")) is layer_class
    assert compact.get_layer("stem").filters == 8
    assert compact.get_layer("after").filters < 6


def test_tensor_passed_by_keyword_is_refused():
    inp = keras.Input((8, 8, 3), name="image")
    x = stem(inp)
    gate = L.Conv2D(8, 1, activation="sigmoid", name="gate")(x)
    x = KeywordInput(8, name="custom")(x, gate=gate)
    x = L.Conv2D(6, 1, name="after")(x)
    model = keras.Model(inp, classifier(x))
    graph = build_graph(model)
    reasons = " ".join(refused_reasons(graph))
    assert "not all in its first argument" in reasons
    compact = tffp.prune_once(model, "l1", keep_ratio=0.5)
    assert compact.output_shape == model.output_shape


def test_only_untraceable_custom_layers_raises_a_clear_error():
    inp = keras.Input((8, 8, 3), name="image")
    x = DataDependent(8, name="custom")(inp)
    model = keras.Model(inp, L.GlobalAveragePooling2D()(x))
    with pytest.raises(ValueError, match="(?s)Nothing in model .* 'custom' is a DataDependent"):
        tffp.prune_once(model, "l1", keep_ratio=0.5)


# ------------------------------------------------------------------ the user's model, prune_once


def test_user_model_is_never_mutated():
    model = residual_model()
    randomize_all(model)
    x = input_batch(model)
    before_out = predict(model, x)
    before_weights = [w.copy() for w in model.get_weights()]
    before_nodes = node_counts(model)
    before_layers = [id(layer) for layer in model.layers]
    compact = tffp.prune_once(model, "l1", keep_ratio=0.6)
    tffp.prune_once(model, "l2", keep_ratio=0.5)
    assert node_counts(model) == before_nodes
    assert [id(layer) for layer in model.layers] == before_layers
    assert isinstance(model.get_layer("stage"), Stage)
    for old, new in zip(before_weights, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    np.testing.assert_array_equal(predict(model, x), before_out)
    originals = {id(v) for v in model.weights}
    assert not originals & {id(v) for v in compact.weights}


def test_prune_once_counts_and_cuts_the_macs_inside():
    model = residual_model()
    graph = build_graph(model)
    full = MacsModel(model, graph).total
    assert full > tffp.profile(model).total_macs  # the profile sees one opaque layer
    compact = tffp.prune_once(model, "l1", keep_ratio=0.5)
    assert compact.output_shape == model.output_shape
    assert tffp.profile(compact).total_macs <= 0.6 * full
    target = tffp.prune_once(model, "l1", target_macs_reduction=0.4)
    assert tffp.profile(target).total_macs <= 0.6 * full


def test_compact_model_with_traced_layers_converts_to_tflite(tmp_path):
    compact = tffp.prune_once(block_model(), "l1", keep_ratio=0.6)
    assert len(tffp.export.to_tflite(compact, str(tmp_path / "m.tflite"))) > 0
