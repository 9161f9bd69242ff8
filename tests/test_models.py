"""Reference models: structure, sizes, and .keras round trips."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tf_filterprune.models import (
    fashion_cnn,
    resnet20,
    resnet56,
    resnet110,
    resnet_cifar,
    vgg16_cifar,
)
from tf_filterprune.profiling import profile

# Published figures (MACs; parameters in the papers' PyTorch convention, i.e.
# trainable parameters only) and the exact count_params() of our definitions,
# which also include the BatchNormalization moving statistics.
REFERENCE = {
    "vgg16_cifar": {"macs": 313.7e6, "params": 14.98e6, "count_params": 15_001_418},
    "resnet56": {"macs": 125.5e6, "params": 0.85e6, "count_params": 860_026},
    "fashion_cnn": {"macs": 22.19e6, "params": 140e3, "count_params": 141_418},
}


@pytest.fixture(scope="module")
def models() -> dict[str, keras.Model]:
    return {"vgg16_cifar": vgg16_cifar(), "resnet56": resnet56(), "fashion_cnn": fashion_cnn()}


def _trainable_params(model: keras.Model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _close(value: float, reference: float, rel: float = 0.01) -> bool:
    return abs(value - reference) <= rel * reference


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_reference_macs_within_one_percent(models, name):
    macs = profile(models[name]).total_macs
    assert _close(macs, REFERENCE[name]["macs"]), macs


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_reference_params(models, name):
    model = models[name]
    prof = profile(model)
    assert prof.total_params == model.count_params() == REFERENCE[name]["count_params"]
    assert prof.trainable_params == _trainable_params(model)
    assert _close(prof.trainable_params, REFERENCE[name]["params"])


def test_vgg16_count_params_within_one_percent(models):
    assert _close(models["vgg16_cifar"].count_params(), 14.98e6)


def test_vgg16_structure(models):
    model = models["vgg16_cifar"]
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.name for c in convs] == [f"conv{i}" for i in range(1, 14)]
    assert [c.filters for c in convs] == [64, 64, 128, 128, 256, 256, 256] + [512] * 6
    assert all(c.use_bias and c.kernel_size == (3, 3) and c.padding == "same" for c in convs)
    assert model.get_layer("avgpool").output.shape == (None, 1, 1, 512)
    assert [model.get_layer(n).units for n in ("fc1", "fc2")] == [512, 10]
    assert isinstance(model.get_layer("fc1_bn"), keras.layers.BatchNormalization)
    assert model.output_shape == (None, 10)


def test_resnet56_structure(models):
    model = models["resnet56"]
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 1 + 54 + 2  # stem, 27 blocks x 2, two projections
    assert not any(c.use_bias for c in convs)
    assert [layer.name for layer in convs if "shortcut" in layer.name] == [
        "block2_1_shortcut_conv",
        "block3_1_shortcut_conv",
    ]
    assert model.get_layer("block2_1_shortcut_conv").strides == (2, 2)
    assert model.get_layer("block3_9_add").output.shape == (None, 8, 8, 64)
    adds = [layer for layer in model.layers if isinstance(layer, keras.layers.Add)]
    assert len(adds) == 27
    assert model.output_shape == (None, 10)


def test_fashion_structure(models):
    model = models["fashion_cnn"]
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [32, 32, 64, 64, 128]
    assert model.get_layer("fc").activation is keras.activations.linear
    assert model.output_shape == (None, 10)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_only_builtin_layers_and_he_normal(models, name):
    for layer in models[name].layers:
        assert type(layer).__module__.startswith("keras."), layer
        assert not isinstance(layer, keras.layers.Lambda)
        if isinstance(layer, keras.layers.Conv2D):
            init = layer.kernel_initializer
            assert isinstance(init, keras.initializers.HeNormal), layer.name


@pytest.mark.parametrize(
    ("builder", "depth"), [(resnet20, 20), (resnet110, 110), (lambda: resnet_cifar(32), 32)]
)
def test_resnet_depths(builder, depth):
    model = builder()
    weighted = [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D | keras.layers.Dense)
        and "shortcut" not in layer.name
    ]
    assert len(weighted) == depth
    assert model.name == f"resnet{depth}"


def test_resnet_options():
    model = resnet_cifar(20, num_classes=100, input_shape=(16, 16, 3), name="small")
    assert model.name == "small"
    assert model.input_shape == (None, 16, 16, 3)
    assert model.output_shape == (None, 100)


@pytest.mark.parametrize("depth", [0, 2, 8.0, 21, 57, -4, "56"])
def test_resnet_rejects_bad_depth(depth):
    with pytest.raises(ValueError, match="6n \\+ 2"):
        resnet_cifar(depth)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_keras_round_trip(models, name, tmp_path):
    model = models[name]
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = np.random.default_rng(0).normal(size=(2, *model.input_shape[1:])).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x, training=False)),
        keras.ops.convert_to_numpy(model(x, training=False)),
        atol=1e-5,
    )
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]
