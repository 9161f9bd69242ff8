"""Prune, then quantization-aware training: tfmot's quantize_model through the tf_keras bridge.

The bridge (``tf_filterprune.qat``) describes the compact Keras 3 model as JSON,
rebuilds it in a tf_keras subprocess (checked against the Keras 3 outputs), wraps it
with ``tfmot.quantization.keras.quantize_model``, trains and converts it to TFLite.
"""

import json

import keras
import numpy as np
import pytest
from keras import layers as L

import tf_filterprune as tffp
from tf_filterprune import qat


def small_cnn() -> keras.Model:
    inputs = keras.Input((16, 16, 1), name="image")
    x = inputs
    for i, filters in enumerate((8, 16), start=1):
        x = L.Conv2D(filters, 3, padding="same", name=f"conv{i}")(x)
        x = L.BatchNormalization(name=f"bn{i}")(x)
        x = L.ReLU(name=f"relu{i}")(x)
        x = L.MaxPooling2D(name=f"pool{i}")(x)
    skip = L.Conv2D(16, 1, name="skip")(x)
    x = L.Add(name="add")([x, skip])
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, L.Dense(4, name="head")(x), name="small")


def test_describe_is_plain_json_with_the_connections():
    spec = qat.describe(small_cnn())
    assert json.loads(json.dumps(spec)) == spec
    by_name = {entry["name"]: entry for entry in spec["layers"]}
    assert by_name["add"]["inbound"] == ["pool2", "skip"]
    assert by_name["conv1"]["config"]["filters"] == 8
    assert "kernel_initializer" not in by_name["conv1"]["config"]  # Keras 3 objects dropped
    assert spec["output"] == "head"


def test_a_layer_the_bridge_cannot_rebuild_is_named():
    inputs = keras.Input((8, 8, 3))
    x = L.LayerNormalization(name="norm")(L.Conv2D(4, 3, name="c")(inputs))
    with pytest.raises(ValueError, match="layer 'norm' \\(LayerNormalization\\)"):
        qat.describe(keras.Model(inputs, x))


def test_qat_of_a_compact_model_gives_int8_convs(tmp_path):
    compact = tffp.prune_once(small_cnn(), "l1", keep_ratio=0.5)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (64, 16, 16, 1)).astype("float32")
    y = rng.integers(0, 4, 64)
    path = tmp_path / "qat.tflite"
    result = qat.quantization_aware_training(
        compact, x, y, epochs=1, steps_per_epoch=1, batch_size=32, output_tflite=path
    )
    assert result.rebuild_max_abs_diff <= 1e-4  # the tf_keras twin computes the same
    assert len(result.history["loss"]) == 1 and np.isfinite(result.history["loss"][0])
    assert result.int8_ops.get("CONV_2D") == 3  # every conv runs in int8
    assert result.int8_ops.get("FULLY_CONNECTED") == 1
    assert path.read_bytes() == result.tflite
