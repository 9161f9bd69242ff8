"""Prune, then quantization-aware training: tfmot's ``quantize_model`` on a compact model.

tfmot 0.8.1 works on the legacy ``tf_keras`` only (it raises on Keras 3 models and
switches the whole process to ``tf_keras``), so the bridge runs it in its own
process: :func:`describe` writes the compact Keras 3 model's architecture as plain
JSON (layer classes, their configs without serialized objects, the connections)
and its weights as arrays; ``_qat_worker.py`` (run by path, so it imports neither
Keras 3 nor ``tf_filterprune``) rebuilds the same network in ``tf_keras``, copies
the weights, checks that it computes what the Keras 3 model computes, wraps it
with ``tfmot.quantization.keras.quantize_model``, trains it, and converts it to an
int8 TFLite model. The model this is for is really small: the compact one.

Example (not run here: it starts a TensorFlow process):

>>> import tf_filterprune as tffp                                   # doctest: +SKIP
>>> compact = tffp.prune_once(tffp.models.fashion_cnn(), "l1")        # doctest: +SKIP
>>> result = tffp.qat.quantization_aware_training(compact, x, y, epochs=1)  # doctest: +SKIP
>>> result.int8_ops["CONV_2D"], len(result.tflite)                    # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

WORKER = Path(__file__).resolve().parent / "_qat_worker.py"

#: Layers the bridge rebuilds in tf_keras (what tfmot's default 8-bit scheme quantizes
#: or passes through); anything else is refused with the layer's name.
SUPPORTED = (
    "InputLayer",
    "Conv2D",
    "DepthwiseConv2D",
    "SeparableConv2D",
    "Dense",
    "BatchNormalization",
    "ReLU",
    "Activation",
    "MaxPooling2D",
    "AveragePooling2D",
    "GlobalAveragePooling2D",
    "GlobalMaxPooling2D",
    "Flatten",
    "Dropout",
    "Add",
    "Concatenate",
    "ZeroPadding2D",
    "Reshape",
)
#: Config keys of Keras 3 that tf_keras does not take (or takes differently).
_DROPPED_KEYS = ("dtype", "synchronized", "lora_rank", "lora_alpha", "quantization_config")


@dataclass
class QatResult:
    """What the QAT process returns.

    Attributes:
        tflite: the int8 (quantization-aware) TFLite model's bytes.
        history: the tf_keras training history (``loss`` per epoch, ...).
        int8_ops: count of the TFLite ops with int8 inputs, by op name.
        rebuild_max_abs_diff: max |Keras 3 - tf_keras| on the first training
            examples before QAT (the bridge's check that it rebuilt the same network).
    """

    tflite: bytes
    history: dict[str, list[float]] = field(default_factory=dict)
    int8_ops: dict[str, int] = field(default_factory=dict)
    rebuild_max_abs_diff: float = 0.0


def _clean_config(layer: keras.Layer) -> dict[str, Any]:
    config = dict(layer.get_config())
    for key in _DROPPED_KEYS:
        config.pop(key, None)
    # serialized Keras 3 objects (initializers, regularizers, constraints) carry
    # Keras 3 module paths; the weights are copied anyway, so tf_keras's defaults do
    return {k: v for k, v in config.items() if not (isinstance(v, dict) and "class_name" in v)}


def _inbound(model: keras.Model, layer: keras.Layer) -> list[str]:
    node = layer._inbound_nodes[0]
    return [t._keras_history.operation.name for t in node.input_tensors]


def describe(model: keras.Model) -> dict[str, Any]:
    """The architecture of a Functional / Sequential Keras 3 model as plain JSON data.

    Raises:
        ValueError: a layer the bridge does not rebuild (see ``SUPPORTED``), a
            nested model, a layer called more than once, or several inputs/outputs.
    """
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(
            f"The QAT bridge takes models with one input and one output; '{model.name}' has "
            f"{len(model.inputs)} and {len(model.outputs)}."
        )
    layers = []
    for layer in model.layers:
        name = type(layer).__name__
        if name not in SUPPORTED:
            raise ValueError(
                f"The QAT bridge cannot rebuild layer '{layer.name}' ({name}) in tf_keras; it "
                f"takes {', '.join(SUPPORTED)}."
            )
        if len(layer._inbound_nodes) != 1:
            raise ValueError(f"Layer '{layer.name}' is called more than once: not supported.")
        entry = {"name": layer.name, "class_name": name, "config": _clean_config(layer)}
        if name == "InputLayer":
            entry["shape"] = list(model.inputs[0].shape[1:])
        else:
            entry["inbound"] = _inbound(model, layer)
        layers.append(entry)
    output = model.outputs[0]._keras_history.operation.name
    spec = {"name": model.name, "layers": layers, "output": output}
    return json.loads(json.dumps(spec))  # tuples as lists: what the worker reads


def _weights(model: keras.Model) -> dict[str, np.ndarray]:
    return {
        f"{layer.name}/{i}": np.asarray(w)
        for layer in model.layers
        for i, w in enumerate(layer.get_weights())
    }


def quantization_aware_training(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int = 1,
    steps_per_epoch: int | None = None,
    batch_size: int = 32,
    learning_rate: float = 1e-4,
    from_logits: bool = True,
    output_tflite: str | os.PathLike | None = None,
    timeout: float = 900.0,
) -> QatResult:
    """Quantization-aware training of ``model`` with tfmot, in a tf_keras subprocess.

    Args:
        model: a compact (stripped) Keras 3 model of ``SUPPORTED`` layers.
        x, y: training examples and integer labels (a few hundred are plenty
            for a short QAT run; they are also the converter's representative data).
        epochs, steps_per_epoch, batch_size, learning_rate: the QAT fit (Adam).
        from_logits: whether the model outputs logits (sparse categorical loss).
        output_tflite: also write the int8 TFLite model there.
        timeout: seconds before the subprocess is stopped.

    Returns:
        A :class:`QatResult`.

    Raises:
        ValueError: the model has a layer the bridge does not rebuild.
        RuntimeError: the subprocess failed (its last lines are in the message).
    """
    spec = describe(model)
    with tempfile.TemporaryDirectory(prefix="tffp_qat_") as tmp:
        folder = Path(tmp)
        (folder / "model.json").write_text(json.dumps(spec))
        np.savez(folder / "weights.npz", **_weights(model))
        np.savez(folder / "data.npz", x=np.asarray(x, "float32"), y=np.asarray(y))
        reference = np.asarray(model(np.asarray(x[:8], "float32"), training=False))
        np.save(folder / "reference.npy", reference)
        settings = {
            "epochs": int(epochs),
            "steps_per_epoch": steps_per_epoch,
            "batch_size": int(batch_size),
            "learning_rate": float(learning_rate),
            "from_logits": bool(from_logits),
        }
        (folder / "settings.json").write_text(json.dumps(settings))
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
        done = subprocess.run(
            [sys.executable, str(WORKER), str(folder)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-15:])
            raise RuntimeError(f"The QAT subprocess failed (exit {done.returncode}):\n{tail}")
        report: Mapping[str, Any] = json.loads((folder / "report.json").read_text())
        tflite = (folder / "model.tflite").read_bytes()
    if output_tflite is not None:
        Path(output_tflite).write_bytes(tflite)
    return QatResult(
        tflite=tflite,
        history=dict(report["history"]),
        int8_ops=dict(report["int8_ops"]),
        rebuild_max_abs_diff=float(report["rebuild_max_abs_diff"]),
    )
