"""profile(): exact MACs per layer kind, params, nesting, sharing, table."""

from __future__ import annotations

import json

import keras
import pytest

from tf_filterprune.models import fashion_cnn, resnet56, vgg16_cifar
from tf_filterprune.profiling import LayerProfile, ModelProfile, profile


def _single(input_shape: tuple[int, ...], layer: keras.layers.Layer) -> keras.Model:
    inputs = keras.Input(input_shape)
    return keras.Model(inputs, layer(inputs))


@pytest.fixture(scope="module")
def mobilenet() -> keras.Model:
    return keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3))


@pytest.fixture(scope="module")
def backbone() -> keras.Model:
    return keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3), include_top=False)


@pytest.fixture(scope="module")
def nested(backbone) -> keras.Model:
    inputs = keras.Input((96, 96, 3))
    x = backbone(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(5, name="head")(x)
    return keras.Model(inputs, outputs, name="wrapper")


# ------------------------------------------------------------- exact counts
@pytest.mark.parametrize(
    ("input_shape", "layer", "macs"),
    [
        # 8*8*4 outputs x 3*3*3 + 256 bias
        ((8, 8, 3), keras.layers.Conv2D(4, 3, padding="same"), 6912 + 256),
        # groups=2: (4,4,6) outputs x 3*3*(4/2) + 96 bias
        ((6, 6, 4), keras.layers.Conv2D(6, 3, groups=2), 96 * 18 + 96),
        # depth_multiplier=2: (5,5,6) outputs x 3*3, no bias
        (
            (5, 5, 3),
            keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, use_bias=False),
            150 * 9,
        ),
        # with bias: + 150
        (
            (5, 5, 3),
            keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2),
            150 * 9 + 150,
        ),
        # 16 positions x (3*3*3*2 depthwise + 3*2*8 pointwise) + 16*8 bias
        (
            (6, 6, 3),
            keras.layers.SeparableConv2D(8, 3, depth_multiplier=2),
            16 * 54 + 16 * 48 + 128,
        ),
        # 16 input positions x 3*3*2*5 + (8,8,5) bias
        ((4, 4, 2), keras.layers.Conv2DTranspose(5, 3, strides=2, padding="same"), 16 * 90 + 320),
        # 10*4 outputs x 3*3 + 40 bias
        ((10, 3), keras.layers.Conv1D(4, 3, padding="same"), 360 + 40),
        ((7,), keras.layers.Dense(3), 21 + 3),
        ((7,), keras.layers.Dense(3, use_bias=False), 21),
        # Dense on 4D input: 2*3 positions x 4*5 + 30 bias
        ((2, 3, 4), keras.layers.Dense(5), 120 + 30),
        ((4, 4, 3), keras.layers.BatchNormalization(), 48),
        ((4, 4, 3), keras.layers.ReLU(), 0),
        ((4, 4, 3), keras.layers.MaxPooling2D(2), 0),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, keras.layers.Layer) else None,
)
def test_exact_macs_per_layer_kind(input_shape, layer, macs):
    model = _single(input_shape, layer)
    prof = profile(model)
    assert prof.by_name(layer.name).macs == macs
    assert prof.total_macs == macs
    assert prof.total_params == model.count_params() == layer.count_params()


def test_conv_transpose_output_shape_and_width():
    layer = keras.layers.Conv2DTranspose(5, 3, strides=2, padding="same", name="up")
    row = profile(_single((4, 4, 2), layer)).by_name("up")
    assert row.input_shape == (None, 4, 4, 2)
    assert row.output_shape == (None, 8, 8, 5)
    assert row.width == 5
    assert row.class_name == "Conv2DTranspose"


def test_shared_layer_counts_macs_per_call_params_once():
    inputs = keras.Input((4,))
    shared = keras.layers.Dense(4, name="shared")
    outputs = shared(keras.layers.ReLU(name="act")(shared(inputs)))
    model = keras.Model(inputs, outputs)
    prof = profile(model)
    row = prof.by_name("shared")
    assert row.calls == 2
    assert row.macs == 2 * (16 + 4)
    assert row.params == 20
    assert prof.total_params == model.count_params() == 20
    assert "shared (x2)" in str(prof)


def test_shared_layer_with_different_shapes():
    a, b = keras.Input((3, 4)), keras.Input((5, 4))
    shared = keras.layers.Dense(2, name="shared")
    model = keras.Model([a, b], [shared(a), shared(b)])
    assert profile(model).by_name("shared").macs == (3 + 5) * (4 * 2 + 2)


def test_multi_input_layer_shapes():
    a, b = keras.Input((3,)), keras.Input((3,))
    model = keras.Model([a, b], keras.layers.Add(name="add")([a, b]))
    row = profile(model).by_name("add")
    assert row.input_shape == [(None, 3), (None, 3)]
    assert row.macs == 0


def test_sequential_model_and_nested_sequential():
    seq = keras.Sequential(
        [keras.Input((6, 6, 2)), keras.layers.Conv2D(3, 3, name="c"), keras.layers.Flatten()],
        name="seq",
    )
    assert profile(seq).by_name("c").macs == 16 * 3 * 18 + 48
    inputs = keras.Input((6, 6, 2))
    outer = keras.Model(inputs, keras.layers.Dense(2, name="fc")(seq(inputs)))
    prof = profile(outer)
    assert prof.by_name("seq/c").macs == 16 * 3 * 18 + 48
    assert prof.by_name("fc").macs == 48 * 2 + 2
    assert prof.total_params == outer.count_params()


def test_sequential_built_without_input():
    seq = keras.Sequential([keras.layers.Dense(3, name="d")])
    seq.build((None, 5))
    assert profile(seq).by_name("d").macs == 18


def test_unbuilt_sequential_raises():
    with pytest.raises(ValueError, match="not built"):
        profile(keras.Sequential([keras.layers.Dense(3)]))


def test_subclassed_model_raises():
    class Tiny(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    model = Tiny()
    model(keras.ops.zeros((1, 3)))
    with pytest.raises(ValueError, match="subclassed"):
        profile(model)


def test_unknown_spatial_shape_raises():
    model = _single((None, None, 3), keras.layers.Conv2D(4, 3, name="conv"))
    with pytest.raises(ValueError, match="fixed input shape"):
        profile(model)


def test_non_keras_model_raises():
    with pytest.raises(ValueError, match="keras.Model"):
        profile(keras.layers.Dense(3))


# ------------------------------------------------------- real-size models
@pytest.mark.parametrize("builder", [vgg16_cifar, resnet56, fashion_cnn])
def test_total_params_equals_count_params(builder):
    model = builder()
    prof = profile(model)
    assert prof.total_params == model.count_params()
    assert prof.total_macs == sum(row.macs for row in prof.layers)
    assert {row.name for row in prof.layers} == {
        layer.name for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)
    }


def test_mobilenet_v2(mobilenet):
    prof = profile(mobilenet)
    assert prof.total_params == mobilenet.count_params()
    row = prof.by_name("block_1_depthwise")
    assert row.class_name == "DepthwiseConv2D"
    # 24x24x96 outputs x 3x3, no bias
    assert row.output_shape == (None, 24, 24, 96)
    assert row.macs == 24 * 24 * 96 * 9
    assert 50e6 < prof.total_macs < 70e6


def test_nested_model(nested, backbone):
    prof = profile(nested)
    inner = profile(backbone)
    assert prof.total_params == nested.count_params()
    assert prof.by_name("head").macs == 1280 * 5 + 5
    assert prof.total_macs == inner.total_macs + prof.by_name("head").macs
    name = f"{backbone.name}/Conv1"
    assert prof.by_name(name).macs == inner.by_name("Conv1").macs
    assert prof.by_name(name).params == inner.by_name("Conv1").params
    assert all(row.name.startswith(backbone.name + "/") for row in prof.layers[:-2])


def test_nested_model_called_twice():
    inner_in = keras.Input((4,))
    inner = keras.Model(inner_in, keras.layers.Dense(3, name="d")(inner_in), name="inner")
    x = keras.Input((4,))
    y = keras.layers.Dense(4, name="mix")(x)
    model = keras.Model(x, [inner(x), inner(y)])
    prof = profile(model)
    assert prof.by_name("inner/d").macs == 2 * (12 + 3)
    assert prof.by_name("inner/d").calls == 2
    assert prof.total_params == model.count_params()


# ------------------------------------------------------------ reporting
def test_table_and_dict():
    model = fashion_cnn()
    prof = profile(model)
    table = str(prof)
    for layer in model.layers[1:]:
        assert layer.name in table
    lines = table.splitlines()
    assert lines[0].split() == ["Layer", "Class", "Output", "shape", "Width", "Params", "MACs"]
    assert lines[-1].startswith("Total")
    assert f"{prof.total_macs:,}" in lines[-1] and f"{prof.total_params:,}" in lines[-1]
    assert len({len(line) for line in lines if line.startswith(("conv", "bn"))}) == 1
    data = prof.to_dict()
    json.dumps(data)
    assert data["total_macs"] == prof.total_macs
    assert data["layers"][0]["name"] == "conv1"
    assert data["layers"][0]["width"] == 32


def test_by_name_unknown_raises():
    with pytest.raises(KeyError):
        ModelProfile(layers=[LayerProfile("a", "Dense", (None, 1), (None, 1), 2, 2, 1)]).by_name(
            "b"
        )
