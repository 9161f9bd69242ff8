"""Tests for tf_filterprune.export: SavedModel/TFLite conversion, op listing, latency."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from tf_filterprune import export

INPUT_SHAPE = (16, 16, 3)


def _functional_model() -> keras.Model:
    """Conv2D+BN+ReLU -> GAP -> Dense, with non-trivial BN statistics."""
    inputs = keras.Input(INPUT_SHAPE)
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(5)(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.1, n).astype("float32"))
            layer.moving_mean.assign(rng.normal(0, 0.1, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
    return model


def _sequential_model() -> keras.Model:
    """Sequential conv net with a Dense layer big enough for weight quantization."""
    return keras.Sequential(
        [
            keras.Input(INPUT_SHAPE),
            keras.layers.Conv2D(8, 3, padding="same"),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )


def _inputs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, *INPUT_SHAPE)).astype("float32")


@pytest.fixture(scope="module")
def functional_float():
    """(model, float tflite bytes), built once for the module."""
    keras.utils.set_random_seed(0)
    model = _functional_model()
    return model, export.to_tflite(model)


def test_saved_model_roundtrip(tmp_path):
    model = _functional_model()
    path = export.to_saved_model(model, tmp_path / "sm")
    assert path == str(tmp_path / "sm")
    loaded = tf.saved_model.load(path)
    x = _inputs(4)
    np.testing.assert_allclose(loaded.serve(x).numpy(), model(x).numpy(), atol=1e-4)


def test_float_tflite_matches_keras(functional_float, tmp_path):
    model, flat = functional_float
    x = _inputs(6)
    np.testing.assert_allclose(export.predict_tflite(flat, x), model(x).numpy(), atol=1e-4)

    interpreter = Interpreter(model_content=flat)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert tuple(inp["shape"]) == (1, *INPUT_SHAPE)
    interpreter.set_tensor(inp["index"], x[:1])
    interpreter.invoke()
    np.testing.assert_allclose(interpreter.get_tensor(out["index"]), model(x[:1]), atol=1e-4)


def test_sequential_float_and_file_output(tmp_path):
    model = _sequential_model()
    path = tmp_path / "seq.tflite"
    flat = export.to_tflite(model, path, batch_size=None)
    assert path.read_bytes() == flat
    x = _inputs(3)
    np.testing.assert_allclose(export.predict_tflite(str(path), x), model(x), atol=1e-4)


def test_dynamic_range_is_smaller():
    model = _sequential_model()
    float_flat = export.to_tflite(model)
    dynamic_flat = export.to_tflite(model, quantization="dynamic")
    assert len(dynamic_flat) < 0.6 * len(float_flat)
    x = _inputs(4)
    np.testing.assert_allclose(export.predict_tflite(dynamic_flat, x), model(x), atol=0.1)


def test_int8_full_integer(functional_float):
    model, _ = functional_float
    calib = tf.data.Dataset.from_tensor_slices((_inputs(64, seed=5), np.zeros(64))).batch(16)
    flat = export.to_tflite(
        model, quantization="int8", representative_data=calib, num_calibration_steps=64
    )
    interpreter = Interpreter(model_content=flat)
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    x = _inputs(16, seed=7)
    agree = np.mean(export.predict_tflite(flat, x).argmax(-1) == model(x).numpy().argmax(-1))
    assert agree >= 0.75
    assert export.evaluate_tflite(flat, [(x, model(x).numpy().argmax(-1))]) == agree


def test_tflite_ops(functional_float, tmp_path):
    _, flat = functional_float
    ops = export.tflite_ops(flat)
    assert ops[0] == "CONV_2D" and ops[-1] == "FULLY_CONNECTED"
    assert "MEAN" in ops and "BATCH_NORMALIZATION" not in ops
    path = tmp_path / "m.tflite"
    path.write_bytes(flat)
    assert export.tflite_op_counts(path) == {"CONV_2D": 2, "MEAN": 1, "FULLY_CONNECTED": 1}


def test_measure_latency(functional_float):
    _, flat = functional_float
    result = export.measure_latency(flat, warmup=2, repeats=10)
    assert result.repeats == 10 and result.num_threads == 1
    assert 0 < result.min_ms <= result.median_ms <= result.p90_ms
    assert result.mean_ms > 0


def test_compare_latency(functional_float):
    _, flat = functional_float
    seq_flat = export.to_tflite(_sequential_model())
    results = export.compare_latency(
        {"functional": flat, "sequential": seq_flat}, rounds=3, runs_per_round=2, warmup=1
    )
    assert set(results) == {"functional", "sequential"}
    for result in results.values():
        assert result.repeats == 6 and result.median_ms > 0


def test_bad_quantization_raises():
    model = _sequential_model()
    with pytest.raises(ValueError, match="Unknown quantization"):
        export.to_tflite(model, quantization="int4")
    with pytest.raises(ValueError, match="representative_data"):
        export.to_tflite(model, quantization="int8")


def test_multi_input_by_name():
    """TFLite input order differs from Keras order; inputs are matched by name."""
    a, b = keras.Input((4,), name="zeta"), keras.Input((6,), name="alpha")
    model = keras.Model([a, b], keras.layers.Dense(3)(keras.layers.Concatenate()([a, b])))
    rng = np.random.default_rng(0)
    xa, xb = rng.random((8, 4), "float32"), rng.random((8, 6), "float32")
    expected = model([xa, xb]).numpy()
    flat = export.to_tflite(model)
    out = export.predict_tflite(flat, {"zeta": xa, "alpha": xb})
    np.testing.assert_allclose(out, expected, atol=1e-4)
    quant = export.to_tflite(model, quantization="int8", representative_data=[([xa, xb], None)])
    np.testing.assert_allclose(
        export.predict_tflite(quant, {"zeta": xa, "alpha": xb}), expected, atol=0.05
    )
    with pytest.raises(ValueError, match="dict keyed by input name"):
        export.predict_tflite(flat, [xa, xb])


def test_paired_ratio_cancels_slow_rounds_and_checks_lengths():
    from tf_filterprune.export import LatencyResult, paired_ratio

    # round 2 is 10x slower for both models: the per-round ratio stays 0.5
    fast = LatencyResult.from_samples([1, 1, 10, 10, 1, 1], num_threads=1)
    slow = LatencyResult.from_samples([2, 2, 20, 20, 2, 2], num_threads=1)
    assert paired_ratio(fast, slow, runs_per_round=2) == 0.5
    with pytest.raises(ValueError, match="runs_per_round=4"):
        paired_ratio(fast, slow, runs_per_round=4)
