"""Export pruned Keras models to SavedModel / TFLite and measure on-device latency.

The TFLite route is ``model.export(..., format="tf_saved_model")`` into a
temporary directory followed by ``tf.lite.TFLiteConverter.from_saved_model``.
This is the same route Keras 3 itself uses for ``format="litert"`` and works for
Functional, Sequential and (called) subclassed models; BatchNormalization is
exported in inference mode and folded into the preceding convolution by the
converter.

Models are run with ``ai_edge_litert.interpreter.Interpreter`` (the
``tf.lite.Interpreter`` is deprecated). ai-edge-litert is an optional extra
(``pip install 'tf_filterprune[export]'``), imported only by the helpers that
parse or run a flatbuffer (:func:`tflite_ops`, :func:`predict_tflite`,
:func:`measure_latency`...); without it they raise ImportError naming the
extra, and conversion (:func:`to_saved_model`, :func:`to_tflite`) still works.

Example:
    >>> import keras, numpy as np
    >>> from tf_filterprune import export
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> flat = export.to_tflite(model)
    >>> export.tflite_ops(flat)
    ['FULLY_CONNECTED']
    >>> export.predict_tflite(flat, np.zeros((2, 8), "float32")).shape
    (2, 4)
"""

from __future__ import annotations

import functools
import importlib
import os
import statistics
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
import tensorflow as tf

if TYPE_CHECKING:
    from ai_edge_litert.interpreter import Interpreter

__all__ = [
    "QUANTIZATIONS",
    "LatencyResult",
    "compare_latency",
    "evaluate_tflite",
    "measure_latency",
    "paired_ratio",
    "predict_tflite",
    "tflite_op_counts",
    "tflite_ops",
    "to_saved_model",
    "to_tflite",
]

#: Supported values of ``to_tflite(..., quantization=...)``.
QUANTIZATIONS = ("float", "float16", "dynamic", "int8")

TFLiteSource = bytes | bytearray | str | os.PathLike

#: How to install the optional LiteRT dependency (named in the ImportError).
EXPORT_EXTRA = "pip install 'tf_filterprune[export]'"


def _litert(module: str) -> ModuleType:
    """``ai_edge_litert.<module>``, imported on first use (ai-edge-litert is an extra).

    Raises:
        ImportError: ai-edge-litert is not installed; the message names the extra.
    """
    try:
        return importlib.import_module(f"ai_edge_litert.{module}")
    except ImportError as err:
        raise ImportError(
            "This tf_filterprune.export helper parses or runs TFLite models with "
            "ai-edge-litert (the LiteRT interpreter), an optional dependency that is not "
            f"installed: {EXPORT_EXTRA} (or pip install ai-edge-litert)."
        ) from err


def _schema() -> ModuleType:
    return _litert("schema_py_generated")


@functools.cache
def _builtin_op_names() -> dict[int, str]:
    return {
        code: name
        for name, code in vars(_schema().BuiltinOperator).items()
        if not name.startswith("_") and isinstance(code, int)
    }


# --------------------------------------------------------------------------- #
# SavedModel / TFLite conversion
# --------------------------------------------------------------------------- #


def _model_input_structure(model: keras.Model) -> Any:
    """Return the (possibly nested) structure of symbolic model inputs, or None."""
    try:
        return model.input
    except (AttributeError, ValueError):
        pass
    inputs = getattr(model, "inputs", None)
    if inputs:
        return inputs[0] if len(inputs) == 1 else list(inputs)
    return None


def _input_signature(model: keras.Model, batch_size: int | None) -> list[Any] | None:
    """Build a one-argument export signature with a fixed (or dynamic) batch dim.

    Returns None when the model has no symbolic inputs (subclassed models), in
    which case Keras infers the signature itself (dynamic batch).
    """
    structure = _model_input_structure(model)
    if structure is None:
        return None

    def to_spec(tensor: Any) -> tf.TensorSpec:
        shape = (batch_size, *tuple(tensor.shape)[1:])
        return tf.TensorSpec(shape, dtype=tensor.dtype, name=tensor.name)

    return [keras.tree.map_structure(to_spec, structure)]


def _input_names(model: keras.Model) -> list[str] | None:
    """Flattened names of the model inputs (= SavedModel signature input names)."""
    structure = _model_input_structure(model)
    if structure is None:
        return None
    return [tensor.name for tensor in keras.tree.flatten(structure)]


def to_saved_model(
    model: keras.Model, path: str | os.PathLike, *, batch_size: int | None = None
) -> str:
    """Export the inference forward pass of ``model`` as a TensorFlow SavedModel.

    Uses Keras 3 ``model.export(path, format="tf_saved_model")``; the endpoint is
    ``serve`` (also the ``serving_default`` signature).

    Args:
        model: A built Keras model.
        path: Output directory.
        batch_size: Fixed batch dimension of the signature, or None for dynamic.

    Returns:
        ``path`` as a string.

    Example:
        >>> import tempfile, keras, numpy as np, tensorflow as tf
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> path = to_saved_model(model, tempfile.mkdtemp())
        >>> loaded = tf.saved_model.load(path)  # keep a reference while calling
        >>> tuple(loaded.serve(np.ones((5, 3), "float32")).shape)
        (5, 2)
    """
    path = os.fspath(path)
    signature = _input_signature(model, batch_size)
    model.export(path, format="tf_saved_model", input_signature=signature, verbose=False)
    return path


def _first_input(element: Any) -> Any:
    """Strip labels from a dataset element: tuples follow Keras' (x, y[, w])."""
    if isinstance(element, tuple):
        return element[0]
    return element


def _iter_examples(representative_data: Iterable[Any]) -> Iterator[list[np.ndarray]]:
    """Yield single examples (flat lists of float32 arrays without batch dim)."""
    for element in representative_data:
        leaves = [np.asarray(leaf) for leaf in keras.tree.flatten(_first_input(element))]
        for i in range(len(leaves[0])):
            yield [leaf[i].astype(np.float32) for leaf in leaves]


def _representative_dataset(
    representative_data: Iterable[Any],
    num_steps: int,
    batch_size: int | None,
    input_names: list[str] | None,
) -> Callable[[], Iterator[list[np.ndarray] | dict[str, np.ndarray]]]:
    """Make a converter ``representative_dataset`` yielding ``num_steps`` batches.

    Multi-input models get dicts keyed by signature input name, because the
    converter's positional input order need not follow the Keras input order.
    """
    group = batch_size or 1

    def generator() -> Iterator[list[np.ndarray] | dict[str, np.ndarray]]:
        examples = _iter_examples(representative_data)
        produced = 0
        while produced < num_steps:
            chunk = [ex for _, ex in zip(range(group), examples, strict=False)]
            if len(chunk) < group:
                break
            batch = [np.stack(parts) for parts in zip(*chunk, strict=True)]
            if input_names and len(input_names) == len(batch) > 1:
                yield dict(zip(input_names, batch, strict=True))
            else:
                yield batch
            produced += 1
        if produced == 0:
            raise ValueError("representative_data yielded no examples for int8 calibration")

    return generator


def _validate_quantization(quantization: str, representative_data: Iterable[Any] | None) -> None:
    """Raise ValueError for unknown modes or int8 without calibration data."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"Unknown quantization {quantization!r}; expected one of {QUANTIZATIONS}")
    if quantization == "int8" and representative_data is None:
        raise ValueError(
            "quantization='int8' needs representative_data (an iterable or tf.data.Dataset "
            "of input batches or (x, y) batches) for calibration"
        )


def _configure_converter(
    converter: tf.lite.TFLiteConverter,
    quantization: str,
    representative_data: Iterable[Any] | None,
    num_calibration_steps: int,
    batch_size: int | None,
    input_names: list[str] | None,
) -> None:
    """Set optimisation/quantisation options on ``converter`` in place."""
    if quantization == "float":
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        converter.representative_dataset = _representative_dataset(
            representative_data, num_calibration_steps, batch_size, input_names
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8


def _convert(converter: tf.lite.TFLiteConverter) -> bytes:
    """Run the converter, silencing the deprecation warning of TF's own calibrator.

    TF's int8 calibrator builds a ``tf.lite.Interpreter`` internally when the
    representative dataset yields dicts (multi-input models); that warning is
    about TF internals, not about this code.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=r"\s*Warning: tf\.lite\.Interpreter is deprecated",
            category=UserWarning,
        )
        return bytes(converter.convert())


def to_tflite(
    model: keras.Model,
    path: str | os.PathLike | None = None,
    *,
    quantization: str = "float",
    representative_data: Iterable[Any] | None = None,
    num_calibration_steps: int = 100,
    batch_size: int | None = 1,
) -> bytes:
    """Convert a Keras model to a TFLite flatbuffer.

    Args:
        model: A built Keras model (Functional, Sequential or called subclass).
        path: If given, the flatbuffer is also written to this file.
        quantization: ``"float"`` (no quantization), ``"float16"`` (fp16
            weights), ``"dynamic"`` (dynamic-range: int8 weights, float
            activations) or ``"int8"`` (full integer: int8 ops and int8
            input/output tensors; needs ``representative_data``).
        representative_data: Calibration data for ``"int8"``: an iterable or
            ``tf.data.Dataset`` of input batches or ``(x, y)`` batches.
            Examples are fed one at a time (``batch_size`` at a time) as float32.
        num_calibration_steps: Maximum number of calibration batches.
        batch_size: Fixed batch dimension of the exported model (1 suits
            latency measurement); None keeps it dynamic. Subclassed models
            without symbolic inputs always get a dynamic batch.

    Returns:
        The serialized TFLite model.

    Raises:
        ValueError: Unknown ``quantization`` or ``"int8"`` without data.

    Example:
        >>> import keras, numpy as np
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> data = [np.random.rand(8, 4).astype("float32")]
        >>> flat = to_tflite(model, quantization="int8", representative_data=data)
        >>> from ai_edge_litert.interpreter import Interpreter
        >>> Interpreter(model_content=flat).get_input_details()[0]["dtype"].__name__
        'int8'
    """
    _validate_quantization(quantization, representative_data)
    with tempfile.TemporaryDirectory(prefix="tffp_export_") as tmp:
        saved_model_dir = to_saved_model(
            model, os.path.join(tmp, "saved_model"), batch_size=batch_size
        )
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
        _configure_converter(
            converter,
            quantization,
            representative_data,
            num_calibration_steps,
            batch_size,
            _input_names(model),
        )
        flatbuffer = _convert(converter)
    if path is not None:
        with open(path, "wb") as f:
            f.write(flatbuffer)
    return flatbuffer


# --------------------------------------------------------------------------- #
# Flatbuffer inspection
# --------------------------------------------------------------------------- #


def _as_bytes(tflite_model: TFLiteSource) -> bytes:
    """Return flatbuffer bytes from bytes or a file path."""
    if isinstance(tflite_model, bytes | bytearray):
        return bytes(tflite_model)
    with open(tflite_model, "rb") as f:
        return f.read()


def _opcode_name(opcode: Any) -> str:
    """Name of an OperatorCode table entry (builtin name or custom code)."""
    code = max(opcode.BuiltinCode(), opcode.DeprecatedBuiltinCode())
    if code == _schema().BuiltinOperator.CUSTOM:
        custom = opcode.CustomCode()
        return custom.decode() if isinstance(custom, bytes) else str(custom)
    return _builtin_op_names().get(code, f"BUILTIN_{code}")


def tflite_ops(tflite_model: TFLiteSource) -> list[str]:
    """List operator names of a TFLite model in graph (execution) order.

    Ops of all subgraphs are listed, main subgraph first. Custom ops appear
    under their custom code. The flatbuffer is parsed directly, so delegate
    rewriting (e.g. XNNPACK) does not affect the result.

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> tflite_ops(to_tflite(model))
        ['FULLY_CONNECTED']
    """
    buf = _as_bytes(tflite_model)
    fb_model = _schema().Model.GetRootAs(buf, 0)
    names = [_opcode_name(fb_model.OperatorCodes(i)) for i in range(fb_model.OperatorCodesLength())]
    ops = []
    for s in range(fb_model.SubgraphsLength()):
        subgraph = fb_model.Subgraphs(s)
        ops.extend(
            names[subgraph.Operators(i).OpcodeIndex()] for i in range(subgraph.OperatorsLength())
        )
    return ops


def tflite_op_counts(tflite_model: TFLiteSource) -> dict[str, int]:
    """Count operators by name (see :func:`tflite_ops`).

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> tflite_op_counts(to_tflite(model))
        {'FULLY_CONNECTED': 1}
    """
    return dict(Counter(tflite_ops(tflite_model)))


# --------------------------------------------------------------------------- #
# Inference
# --------------------------------------------------------------------------- #


def _make_interpreter(
    tflite_model: TFLiteSource, num_threads: int = 1, use_xnnpack: bool = True
) -> Interpreter:
    """Create and allocate a LiteRT interpreter."""
    litert = _litert("interpreter")
    resolvers = litert.OpResolverType
    resolver = resolvers.AUTO if use_xnnpack else resolvers.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = litert.Interpreter(
        model_content=_as_bytes(tflite_model),
        num_threads=num_threads,
        experimental_op_resolver_type=resolver,
    )
    interpreter.allocate_tensors()
    return interpreter


def _quantize(x: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
    """Convert float input to the tensor's dtype using its scale/zero point."""
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail["quantization"]
    if not np.issubdtype(dtype, np.integer) or scale == 0:
        return x.astype(dtype)
    info = np.iinfo(dtype)
    q = np.round(x / scale + zero_point)
    return np.clip(q, info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
    """Convert a (possibly quantized) output tensor to float32."""
    scale, zero_point = detail["quantization"]
    if np.issubdtype(y.dtype, np.integer) and scale != 0:
        return (y.astype(np.float32) - zero_point) * scale
    return y.astype(np.float32)


def _natural_key(name: str) -> tuple[str, int]:
    """Sort key putting ``output_2`` before ``output_10``."""
    stem, _, digits = name.rpartition("_")
    return (stem, int(digits)) if digits.isdigit() else (name, -1)


def _io_details(interpreter: Interpreter) -> tuple[dict[str, dict], list[dict]]:
    """Inputs keyed by signature name and outputs in signature order.

    Falls back to the interpreter's tensor order for models without signatures.
    """
    signatures = interpreter.get_signature_list()
    if not signatures:
        inputs = {d["name"]: d for d in interpreter.get_input_details()}
        return inputs, interpreter.get_output_details()
    runner = interpreter.get_signature_runner(next(iter(signatures)))
    outputs = runner.get_output_details()
    return runner.get_input_details(), [outputs[k] for k in sorted(outputs, key=_natural_key)]


def _named_inputs(x: Any, input_details: Mapping[str, dict]) -> dict[str, np.ndarray]:
    """Match user inputs to TFLite inputs: a dict by name, else a single array."""
    if isinstance(x, Mapping):
        missing = set(input_details) - set(x)
        if missing:
            raise ValueError(f"missing TFLite inputs {sorted(missing)}")
        return {name: np.asarray(x[name], np.float32) for name in input_details}
    leaves = keras.tree.flatten(x)
    if len(leaves) != 1 or len(input_details) != 1:
        raise ValueError(
            f"model has inputs {sorted(input_details)}: pass a dict keyed by input name "
            "(TFLite input order need not follow the Keras input order)"
        )
    return {next(iter(input_details)): np.asarray(leaves[0], np.float32)}


def _run_batch(
    interpreter: Interpreter,
    inputs: Mapping[str, np.ndarray],
    input_details: Mapping[str, dict],
    output_details: list[dict],
) -> list[np.ndarray]:
    """Run one invoke with float inputs; returns dequantized float outputs."""
    for name, x in inputs.items():
        detail = input_details[name]
        interpreter.set_tensor(detail["index"], _quantize(x, detail))
    interpreter.invoke()
    return [_dequantize(interpreter.get_tensor(d["index"]), d) for d in output_details]


def _pad_batch(x: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad the leading dimension of ``x`` up to ``size``."""
    if len(x) == size:
        return x
    return np.concatenate([x, np.zeros((size - len(x), *x.shape[1:]), x.dtype)])


def predict_tflite(tflite_model: TFLiteSource, x: Any) -> np.ndarray | list[np.ndarray]:
    """Run a TFLite model on a batch of float inputs, in model-batch-sized chunks.

    Int8 inputs/outputs are (de)quantized with the tensors' scale/zero point,
    so the result is always float32. A model with a fixed batch of 1 is invoked
    once per example; a trailing partial chunk is zero-padded and trimmed.
    ``x`` is an array, or for multi-input models a dict keyed by input name
    (the Keras ``Input`` names).

    Returns:
        One array, or a list of arrays (in signature order) for multi-output models.

    Example:
        >>> import keras, numpy as np
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> predict_tflite(to_tflite(model), np.ones((5, 4), "float32")).shape
        (5, 3)
    """
    interpreter = _make_interpreter(tflite_model)
    input_details, output_details = _io_details(interpreter)
    inputs = _named_inputs(x, input_details)
    n = len(next(iter(inputs.values())))
    batch = max(int(next(iter(input_details.values()))["shape"][0]), 1)
    chunks: list[list[np.ndarray]] = []
    for start in range(0, n, batch):
        parts = {k: v[start : start + batch] for k, v in inputs.items()}
        valid = len(next(iter(parts.values())))
        parts = {k: _pad_batch(v, batch) for k, v in parts.items()}
        outputs = _run_batch(interpreter, parts, input_details, output_details)
        chunks.append([y[:valid] for y in outputs])
    outputs = [np.concatenate(ys) for ys in zip(*chunks, strict=True)]
    return outputs[0] if len(outputs) == 1 else outputs


def evaluate_tflite(tflite_model: TFLiteSource, dataset: Iterable[Any]) -> float:
    """Top-1 accuracy of a classifier TFLite model over ``(x, y)`` batches.

    Labels may be integer class ids or one-hot vectors. Quantized inputs are
    handled via the input tensor's scale/zero point.

    Example:
        >>> import keras, numpy as np
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> x = np.random.rand(6, 4).astype("float32")
        >>> y = model.predict(x, verbose=0).argmax(-1)
        >>> evaluate_tflite(to_tflite(model), [(x, y)])
        1.0
    """
    correct = total = 0
    for x, y, *_ in dataset:
        logits = predict_tflite(tflite_model, x)
        labels = np.asarray(y)
        if labels.ndim > 1 and labels.shape[-1] > 1:
            labels = labels.argmax(-1)
        labels = labels.reshape(-1)
        correct += int(np.sum(np.asarray(logits).argmax(-1) == labels))
        total += len(labels)
    if total == 0:
        raise ValueError("dataset is empty")
    return correct / total


# --------------------------------------------------------------------------- #
# Latency
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class LatencyResult:
    """Summary of per-invoke latency samples in milliseconds.

    Example:
        >>> LatencyResult.from_samples([1.0, 2.0, 3.0], num_threads=1).median_ms
        2.0
    """

    median_ms: float
    mean_ms: float
    min_ms: float
    p90_ms: float
    repeats: int
    num_threads: int
    samples_ms: tuple[float, ...] = field(default=(), repr=False)

    @classmethod
    def from_samples(cls, samples_ms: Iterable[float], num_threads: int) -> LatencyResult:
        """Summarise raw samples (milliseconds)."""
        samples = tuple(float(s) for s in samples_ms)
        if not samples:
            raise ValueError("no latency samples")
        return cls(
            median_ms=statistics.median(samples),
            mean_ms=statistics.fmean(samples),
            min_ms=min(samples),
            p90_ms=float(np.percentile(samples, 90)),
            repeats=len(samples),
            num_threads=num_threads,
            samples_ms=samples,
        )


def _random_value(detail: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
    """Random input matching a tensor's shape and dtype."""
    dtype = np.dtype(detail["dtype"])
    shape = tuple(int(d) for d in detail["shape"])
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -128), min(info.max, 127) + 1, size=shape, dtype=dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    return rng.standard_normal(shape).astype(dtype)


def _prepared_interpreter(
    tflite_model: TFLiteSource, num_threads: int, seed: int, use_xnnpack: bool
) -> Interpreter:
    """Interpreter with random inputs already set, ready to invoke."""
    interpreter = _make_interpreter(tflite_model, num_threads, use_xnnpack)
    rng = np.random.default_rng(seed)
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], _random_value(detail, rng))
    return interpreter


def _timed_invokes(interpreter: Interpreter, count: int) -> list[float]:
    """Invoke ``count`` times, returning each duration in milliseconds."""
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        interpreter.invoke()
        samples.append((time.perf_counter() - start) * 1e3)
    return samples


def measure_latency(
    tflite_model: TFLiteSource,
    *,
    num_threads: int = 1,
    warmup: int = 10,
    repeats: int = 50,
    seed: int = 0,
    use_xnnpack: bool = True,
) -> LatencyResult:
    """Time ``Interpreter.invoke()`` on random inputs of the right shape/dtype.

    Args:
        tflite_model: Flatbuffer bytes or a ``.tflite`` path.
        num_threads: Interpreter CPU threads.
        warmup: Untimed invokes before measuring.
        repeats: Timed invokes.
        seed: Seed for the random input.
        use_xnnpack: Apply the default XNNPACK delegate (as on device).

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> measure_latency(to_tflite(model), repeats=5).repeats
        5
    """
    interpreter = _prepared_interpreter(tflite_model, num_threads, seed, use_xnnpack)
    _timed_invokes(interpreter, warmup)
    return LatencyResult.from_samples(_timed_invokes(interpreter, repeats), num_threads)


def compare_latency(
    models: Mapping[str, TFLiteSource],
    *,
    num_threads: int = 1,
    rounds: int = 20,
    runs_per_round: int = 5,
    warmup: int = 10,
    seed: int = 0,
    shuffle: bool = True,
    use_xnnpack: bool = True,
) -> dict[str, LatencyResult]:
    """Measure several models interleaved, so machine noise affects all alike.

    Every round runs each model ``runs_per_round`` times (model order is
    shuffled per round when ``shuffle``), so each model gets
    ``rounds * runs_per_round`` samples spread over the whole measurement.
    Use the medians' ratio for speed-up numbers.

    Example:
        >>> import keras
        >>> small = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> big = keras.Sequential([keras.Input((4,)), keras.layers.Dense(512)])
        >>> res = compare_latency({"small": to_tflite(small), "big": to_tflite(big)}, rounds=3)
        >>> sorted(res), res["big"].repeats
        (['big', 'small'], 15)
    """
    if not models:
        raise ValueError("models is empty")
    names = list(models)
    interpreters = {
        name: _prepared_interpreter(models[name], num_threads, seed, use_xnnpack) for name in names
    }
    for interpreter in interpreters.values():
        _timed_invokes(interpreter, warmup)
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        order = [names[i] for i in rng.permutation(len(names))] if shuffle else names
        for name in order:
            samples[name].extend(_timed_invokes(interpreters[name], runs_per_round))
    return {name: LatencyResult.from_samples(samples[name], num_threads) for name in names}


def paired_ratio(result: LatencyResult, reference: LatencyResult, runs_per_round: int) -> float:
    """Median over rounds of ``result``'s round median over ``reference``'s.

    Both results must come from one :func:`compare_latency` call (samples in round
    order, ``runs_per_round`` per round). Each round's two models ran within
    milliseconds of each other, so a slow spell of the machine scales both and
    cancels in that round's ratio; the median over rounds drops the rounds where
    it hit only one of them. Steadier than the ratio of the overall medians.

    Example:
        >>> fast = LatencyResult.from_samples([1.0, 1.0, 3.0, 3.0], num_threads=1)
        >>> slow = LatencyResult.from_samples([2.0, 2.0, 6.0, 6.0], num_threads=1)
        >>> paired_ratio(fast, slow, runs_per_round=2)
        0.5
    """
    a, b = result.samples_ms, reference.samples_ms
    if len(a) != len(b) or not a or len(a) % runs_per_round:
        raise ValueError(
            f"paired_ratio needs two results of one compare_latency call with "
            f"runs_per_round={runs_per_round}; got {len(a)} and {len(b)} samples."
        )
    ratios = [
        statistics.median(a[i : i + runs_per_round]) / statistics.median(b[i : i + runs_per_round])
        for i in range(0, len(a), runs_per_round)
    ]
    return statistics.median(ratios)
