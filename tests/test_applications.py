"""keras.applications networks nobody here wrote: prune_once at keep_ratio 0.6.

Each pruned model must run, have >= 30% fewer MACs, save and load as .keras,
and convert to TFLite. The surgery contract (zeroed channels -> same outputs)
is also checked on each network.
"""

import keras
import numpy as np
import pytest
from helpers import assert_surgery_contract

import tf_filterprune as tffp

APPS = {
    "ResNet50": keras.applications.ResNet50,
    "MobileNetV2": keras.applications.MobileNetV2,
    "DenseNet121": keras.applications.DenseNet121,
    "EfficientNetB0": keras.applications.EfficientNetB0,
}


@pytest.mark.parametrize("name", list(APPS))
def test_prune_once_on_application(name, tmp_path):
    model = APPS[name](weights=None, input_shape=(64, 64, 3), classes=10)
    compact = tffp.prune_once(model, "l1", keep_ratio=0.6)
    full, small = tffp.profile(model).total_macs, tffp.profile(compact).total_macs
    assert small <= 0.7 * full, (name, small / full)
    x = np.random.default_rng(0).uniform(0, 255, size=(2, 64, 64, 3)).astype("float32")
    y = keras.ops.convert_to_numpy(compact(x, training=False))
    assert y.shape == (2, 10) and np.isfinite(y).all()

    path = tmp_path / f"{name}.keras"
    compact.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x, training=False)), y, atol=1e-5, rtol=0
    )

    tflite = tffp.export.to_tflite(compact)
    assert len(tflite) > 0
    assert "CONV_2D" in tffp.export.tflite_ops(tflite)


@pytest.mark.parametrize("name", list(APPS))
def test_surgery_contract_on_application(name):
    model = APPS[name](weights=None, input_shape=(32, 32, 3), classes=10)
    assert_surgery_contract(model, ratio=0.5, atol=1e-4)


def test_backbone_nested_in_functional_model():
    backbone = keras.applications.MobileNetV2(
        weights=None, include_top=False, input_shape=(64, 64, 3)
    )
    inp = keras.Input((64, 64, 3))
    x = keras.layers.GlobalAveragePooling2D()(backbone(inp))
    model = keras.Model(inp, keras.layers.Dense(10, name="head")(x))
    compact = tffp.prune_once(model, keep_ratio=0.6, round_to=8)
    assert tffp.profile(compact).total_macs <= 0.7 * tffp.profile(model).total_macs
    widths = [
        layer.filters
        for layer in compact.get_layer(backbone.name).layers
        if isinstance(layer, keras.layers.Conv2D) and not layer.name == "Conv_1"
    ]
    assert all(w % 8 == 0 for w in widths)
    assert compact(np.zeros((1, 64, 64, 3), "float32")).shape == (1, 10)


@pytest.mark.parametrize("name", list(APPS))
def test_macs_model_is_exact(name):
    from helpers import random_keep

    from tf_filterprune.graph import build_graph
    from tf_filterprune.pruner import MacsModel
    from tf_filterprune.surgery import rebuild

    model = APPS[name](weights=None, input_shape=(32, 32, 3), classes=10)
    graph = build_graph(model)
    keep = random_keep(graph, ratio=0.55, seed=3)
    estimate = MacsModel(model, graph).estimate({g: len(k) for g, k in keep.items()})
    assert estimate == tffp.profile(rebuild(model, graph, keep)).total_macs
