"""The tf_keras side of :mod:`tf_filterprune.qat` (run by path, in its own process).

Imports neither Keras 3 nor ``tf_filterprune``: tfmot needs ``tf_keras`` process-wide.
Reads ``model.json``, ``weights.npz``, ``data.npz``, ``reference.npy`` and
``settings.json`` from the folder given as its only argument, rebuilds the network
in tf_keras, checks it against the Keras 3 outputs, runs
``tfmot.quantization.keras.quantize_model`` + ``fit``, converts the result to an
int8 TFLite model (``model.tflite``) and writes ``report.json``. Importing it does
nothing (TensorFlow, tf_keras and tfmot are imported when it runs as a script).
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np


def rebuild(spec: dict, weights: dict) -> Any:
    """The tf_keras twin of the described Keras 3 model, with its weights."""
    import tf_keras

    tensors = {}
    built = []
    inputs = None
    for entry in spec["layers"]:
        name = entry["name"]
        if entry["class_name"] == "InputLayer":
            inputs = tf_keras.Input(shape=tuple(entry["shape"]), name=name)
            tensors[name] = inputs
            continue
        layer = getattr(tf_keras.layers, entry["class_name"]).from_config(entry["config"])
        args = [tensors[n] for n in entry["inbound"]]
        tensors[name] = layer(args if len(args) > 1 else args[0])
        built.append(layer)
    model = tf_keras.Model(inputs, tensors[spec["output"]], name=spec["name"])
    for layer in built:
        count = len(layer.get_weights())
        if count:
            layer.set_weights([weights[f"{layer.name}/{i}"] for i in range(count)])
    return model


def int8_ops(tflite: bytes) -> dict[str, int]:
    """Ops of the TFLite model with an int8 input tensor, by op name."""
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_content=tflite)
    dtypes = {t["index"]: t["dtype"] for t in interpreter.get_tensor_details()}
    counts = Counter()
    for op in interpreter._get_ops_details():
        if any(dtypes.get(i) == np.int8 for i in op["inputs"] if i >= 0):
            counts[op["op_name"]] += 1
    return dict(counts)


def main(folder: Path) -> None:
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras

    spec = json.loads((folder / "model.json").read_text())
    settings = json.loads((folder / "settings.json").read_text())
    weights = dict(np.load(folder / "weights.npz"))
    data = np.load(folder / "data.npz")
    x, y = data["x"], data["y"]
    model = rebuild(spec, weights)
    reference = np.load(folder / "reference.npy")
    diff = float(np.max(np.abs(model(x[: len(reference)], training=False).numpy() - reference)))
    if diff > 1e-3:
        raise SystemExit(f"the tf_keras rebuild differs from the Keras 3 model by {diff:.3g}")
    qat = tfmot.quantization.keras.quantize_model(model)
    qat.compile(
        tf_keras.optimizers.Adam(settings["learning_rate"]),
        tf_keras.losses.SparseCategoricalCrossentropy(from_logits=settings["from_logits"]),
        metrics=["accuracy"],
    )
    history = qat.fit(
        x,
        y,
        epochs=settings["epochs"],
        steps_per_epoch=settings["steps_per_epoch"],
        batch_size=settings["batch_size"],
        verbose=0,
    )
    converter = tf.lite.TFLiteConverter.from_keras_model(qat)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    tflite = converter.convert()
    (folder / "model.tflite").write_bytes(tflite)
    report = {
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
        "int8_ops": int8_ops(tflite),
        "rebuild_max_abs_diff": diff,
    }
    (folder / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before TensorFlow loads (tfmot needs tf_keras)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main(Path(sys.argv[1]))
