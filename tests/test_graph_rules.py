"""One test per graph rule: the surgery contract holds on a small model using it."""

import keras
import numpy as np
import pytest
from helpers import assert_surgery_contract, input_batch
from keras import layers as L

from tf_filterprune.graph import build_graph
from tf_filterprune.surgery import prune_channels


def conv(n, name=None, k=3, **kw):
    return L.Conv2D(n, k, padding="same", name=name, **kw)


def functional(build, shape=(8, 8, 3)):
    inp = keras.Input(shape)
    return keras.Model(inp, build(inp))


def test_conv_bn_relu_sequential():
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            conv(8, "c1"),
            L.BatchNormalization(name="bn1"),
            L.ReLU(),
            conv(6, "c2"),
            L.BatchNormalization(),
            L.Activation("relu"),
            L.GlobalAveragePooling2D(),
            L.Dense(4, name="head"),
        ]
    )
    compact = assert_surgery_contract(model)
    assert compact.get_layer("c1").filters == 5
    assert compact.get_layer("bn1").gamma.shape == (5,)
    assert compact.get_layer("head").units == 4  # the output is never cut
    assert isinstance(compact, keras.Sequential)


def test_dense_chain():
    model = keras.Sequential([keras.Input((10,)), L.Dense(12), L.ReLU(), L.Dense(7), L.Dense(3)])
    assert_surgery_contract(model)


def test_conv_transpose():
    model = functional(
        lambda x: L.Conv2D(3, 1)(L.Conv2DTranspose(8, 3, strides=2, padding="same")(conv(6)(x)))
    )
    assert_surgery_contract(model)


@pytest.mark.parametrize(
    "layer",
    [
        L.LeakyReLU(0.1),
        L.ELU(),
        L.Activation("tanh"),
        L.Dropout(0.5),
        L.SpatialDropout2D(0.3),
        L.GaussianNoise(0.1),
        L.MaxPooling2D(),
        L.AveragePooling2D(2),
        L.ZeroPadding2D(1),
        L.Cropping2D(1),
        L.UpSampling2D(),
        L.Identity(),
        L.PReLU(),
        L.PReLU(shared_axes=[1, 2]),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_pass_through(layer):
    model = functional(lambda x: L.Conv2D(4, 1)(layer(L.BatchNormalization()(conv(8, "c")(x)))))
    compact = assert_surgery_contract(model)
    assert compact.get_layer("c").filters == 5


def test_layer_normalization_over_channels_is_cut():
    # LayerNorm renormalizes over the remaining channels: structural cut, not exact.
    model = functional(lambda x: L.Conv2D(4, 1)(L.LayerNormalization(name="ln")(conv(8, "c")(x))))
    compact = prune_channels(model, {"c": [0, 1, 4, 6, 7]})
    np.testing.assert_array_equal(
        compact.get_layer("ln").gamma.numpy(), model.get_layer("ln").gamma.numpy()[[0, 1, 4, 6, 7]]
    )
    assert compact(input_batch(model)[0]).shape == (2, 8, 8, 4)


def test_layer_normalization_over_space_refuses():
    model = functional(
        lambda x: L.Conv2D(4, 1)(L.LayerNormalization(axis=[1, 2, 3])(conv(8, "c")(x)))
    )
    with pytest.raises(ValueError, match="normalizes over axis"):
        prune_channels(model, {"c": [0, 1]})


@pytest.mark.parametrize("merge", [L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum])
def test_merge_ties_inputs(merge):
    def build(x):
        a = L.BatchNormalization()(conv(8, "a")(x))
        b = L.BatchNormalization()(conv(8, "b")(x))
        return L.Conv2D(3, 1)(L.ReLU()(merge()([a, b])))

    model = functional(build)
    graph = build_graph(model)
    assert graph.group_of_layer("a").id == graph.group_of_layer("b").id
    compact = assert_surgery_contract(model)
    assert compact.get_layer("a").filters == compact.get_layer("b").filters == 5


def test_residual_blocks():
    def build(x):
        x = L.ReLU()(L.BatchNormalization()(conv(8, "stem")(x)))
        for i in range(2):
            y = L.ReLU()(L.BatchNormalization()(conv(6, f"b{i}_c1")(x)))
            y = L.BatchNormalization()(conv(8, f"b{i}_c2")(y))
            x = L.ReLU()(L.Add()([x, y]))
        return L.Dense(3)(L.GlobalAveragePooling2D()(x))

    model = functional(build)
    graph = build_graph(model)
    tied = graph.group_of_layer("stem")
    assert sorted(tied.producers) == ["b0_c2", "b1_c2", "stem"]
    assert_surgery_contract(model)
    with pytest.raises(ValueError, match="coupled"):
        prune_channels(model, {"stem": [0, 1, 2], "b1_c2": [0, 1, 3]})
    compact = prune_channels(model, {"stem": [0, 1, 2], "b1_c2": [0, 1, 2]})
    assert compact.get_layer("b0_c2").filters == 3


def test_concatenate_channel_axis_maps_by_offsets():
    def build(x):
        a = L.ReLU()(L.BatchNormalization()(conv(4, "a")(x)))
        b = L.ReLU()(L.BatchNormalization()(conv(6, "b")(a)))
        cat = L.Concatenate(name="cat")([a, b])
        y = L.ReLU()(L.BatchNormalization(name="bn_cat")(cat))
        return L.Conv2D(3, 1, name="out")(y)

    model = functional(build)
    compact = prune_channels(model, {"a": [1, 3], "b": [0, 2, 5]})
    kernel = model.get_layer("out").kernel.numpy()
    rows = [1, 3, 4 + 0, 4 + 2, 4 + 5]
    np.testing.assert_array_equal(compact.get_layer("out").kernel.numpy(), kernel[:, :, rows, :])
    assert compact.get_layer("bn_cat").gamma.shape == (5,)
    assert_surgery_contract(model)


def test_concatenate_other_axis_ties():
    def build(x):
        a, b = conv(4, "a")(x), conv(4, "b")(x)
        return L.Conv2D(3, 1)(L.Concatenate(axis=1)([a, b]))

    graph = build_graph(functional(build))
    assert graph.group_of_layer("a").id == graph.group_of_layer("b").id


@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise(multiplier):
    def build(x):
        x = L.ReLU()(L.BatchNormalization()(conv(8, "expand", k=1)(x)))
        x = L.DepthwiseConv2D(3, padding="same", depth_multiplier=multiplier, name="dw")(x)
        x = L.ReLU()(L.BatchNormalization()(x))
        return L.Conv2D(4, 1)(x)

    model = functional(build)
    compact = assert_surgery_contract(model)
    assert compact.get_layer("dw").kernel.shape == (3, 3, 5, multiplier)


def test_separable_conv():
    def build(x):
        x = L.ReLU()(L.BatchNormalization()(conv(8, "c")(x)))
        x = L.SeparableConv2D(6, 3, padding="same", depth_multiplier=2, name="sep")(x)
        return L.Conv2D(3, 1)(L.ReLU()(L.BatchNormalization()(x)))

    model = functional(build)
    compact = assert_surgery_contract(model)
    assert compact.get_layer("sep").pointwise_kernel.shape[2:] == (10, 4)


def test_grouped_conv_is_cut_within_its_groups():
    # tests/test_grouped_conv.py has the rest; here: the rule's per-group constraint
    def build(x):
        x = conv(8, "c")(x)
        x = L.Conv2D(8, 3, padding="same", groups=2, name="grouped")(x)
        y = conv(6, "free")(x)
        return L.Conv2D(3, 1)(y)

    model = functional(build)
    with pytest.raises(ValueError, match="same number in each of their 2 groups"):
        prune_channels(model, {"c": [0, 1, 2, 3]})
    compact = assert_surgery_contract(model)
    assert compact.get_layer("free").filters == 4
    assert compact.get_layer("grouped").filters == 4
    assert compact.get_layer("grouped").groups == 2


@pytest.mark.parametrize("style", ["conv", "dense_reshape"])
def test_squeeze_excite(style):
    def build(x):
        x = L.ReLU()(L.BatchNormalization()(conv(8, "c")(x)))
        if style == "conv":
            s = L.GlobalAveragePooling2D(keepdims=True)(x)
            s = L.Conv2D(4, 1, activation="relu", name="se_reduce")(s)
            s = L.Conv2D(8, 1, activation="sigmoid", name="se_expand")(s)
        else:
            s = L.GlobalAveragePooling2D()(x)
            s = L.Dense(4, activation="relu", name="se_reduce")(s)
            s = L.Dense(8, activation="sigmoid", name="se_expand")(s)
            s = L.Reshape((1, 1, 8), name="se_reshape")(s)
        x = L.Multiply()([x, s])
        return L.Conv2D(3, 1)(x)

    model = functional(build)
    graph = build_graph(model)
    assert graph.group_of_layer("c").id == graph.group_of_layer("se_expand").id
    compact = assert_surgery_contract(model)
    assert (
        compact.get_layer("se_expand").get_config()["filters" if style == "conv" else "units"]
        == compact.get_layer("c").filters
    )


def test_global_pooling_to_dense():
    model = functional(lambda x: L.Dense(3, name="fc")(L.GlobalMaxPooling2D()(conv(8, "c")(x))))
    compact = prune_channels(model, {"c": [2, 5, 7]})
    np.testing.assert_array_equal(
        compact.get_layer("fc").kernel.numpy(), model.get_layer("fc").kernel.numpy()[[2, 5, 7]]
    )
    assert_surgery_contract(model)


def test_flatten_to_dense_uses_nhwc_strided_rows():
    model = functional(lambda x: L.Dense(3, name="fc")(L.Flatten()(conv(4, "c")(x))), (2, 3, 3))
    compact = prune_channels(model, {"c": [1, 3]})
    rows = [p * 4 + c for p in range(6) for c in (1, 3)]
    np.testing.assert_array_equal(
        compact.get_layer("fc").kernel.numpy(), model.get_layer("fc").kernel.numpy()[rows]
    )
    assert_surgery_contract(model)


def test_reshape_channels_last_and_flatten_like():
    def build(x):
        x = conv(4, "c")(x)
        x = L.Reshape((4, 4, 4), name="keep_last")(x)
        return L.Dense(3)(L.Reshape((-1,), name="flat")(x))

    model = functional(build, (4, 4, 3))
    compact = assert_surgery_contract(model)
    assert compact.get_layer("keep_last").target_shape[-1] == compact.get_layer("c").filters


def test_channel_mixing_reshape_refuses():
    model = functional(lambda x: L.Dense(3)(L.Reshape((8, 2, 4))(conv(8, "c", k=1)(x))), (8, 1, 3))
    with pytest.raises(ValueError, match="reshapes"):
        prune_channels(model, {"c": [0, 1]})


def test_nested_functional_backbone():
    inner_in = keras.Input((8, 8, 3))
    y = L.ReLU()(L.BatchNormalization(name="bbn")(conv(8, "bconv")(inner_in)))
    y = L.ReLU()(L.BatchNormalization()(conv(6, "bconv2")(y)))
    backbone = keras.Model(inner_in, y, name="backbone")
    inp = keras.Input((8, 8, 3))
    out = L.Dense(3, name="head")(L.GlobalAveragePooling2D()(backbone(inp)))
    model = keras.Model(inp, out)
    graph = build_graph(model)
    assert "backbone/bconv" in graph.layers
    compact = assert_surgery_contract(model)
    assert compact.get_layer("backbone").get_layer("bconv2").filters == 4
    compact = prune_channels(model, {"backbone/bconv2": [0, 1]})
    assert compact.get_layer("head").kernel.shape == (2, 3)


def test_nested_sequential():
    block = keras.Sequential([keras.Input((8, 8, 3)), conv(8, "sconv"), L.ReLU()], name="block")
    inp = keras.Input((8, 8, 3))
    model = keras.Model(inp, L.Conv2D(3, 1)(block(inp)))
    compact = assert_surgery_contract(model)
    assert compact.get_layer("block").get_layer("sconv").filters == 5


class Scale(L.Layer):
    def call(self, x):
        return x * 2.0


def test_unknown_layer_makes_group_unprunable():
    model = functional(lambda x: L.Conv2D(3, 1)(Scale(name="mystery")(conv(8, "c")(x))))
    graph = build_graph(model)
    group = graph.group_of_layer("c")
    assert not group.prunable
    assert "registry does not know" in group.reasons[0] and "mystery" in group.reasons[0]
    with pytest.raises(ValueError, match="mystery"):
        prune_channels(model, {"c": [0]})


def test_shared_layer_called_twice():
    shared = L.Conv2D(4, 1, name="shared")

    def build(x):
        a = conv(8, "a")(x)
        b = conv(8, "b")(x)
        return L.Add()([shared(a), shared(b)])

    model = functional(build)
    graph = build_graph(model)
    assert graph.group_of_layer("a").id == graph.group_of_layer("b").id
    compact = prune_channels(model, {"a": [0, 2, 4]})
    assert compact.get_layer("shared").kernel.shape == (1, 1, 3, 4)


def test_conv1d():
    model = keras.Sequential([keras.Input((10, 3)), L.Conv1D(8, 3), L.ReLU(), L.Conv1D(2, 3)])
    assert_surgery_contract(model)
