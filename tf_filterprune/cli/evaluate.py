r"""tffp-evaluate: top-1 accuracy of ``.keras`` / ``.tflite`` classifiers on a dataset.

Usage:

    tffp-evaluate --model compact.keras                     # Fashion-MNIST test split
    tffp-evaluate --model original.keras,compact.keras,compact_int8.tflite \
        --limit 2000 --calibration_steps 50 --output_json accuracy.json
    tffp-evaluate --model resnet56.keras --dataset cifar10 --split test
    python tools/evaluate.py --helpfull                      # from a clone

``--dataset fashion_mnist`` reads the local IDX files (Debian's
``dataset-fashion-mnist`` package, or the folder named by ``$FASHION_MNIST_DIR`` or
``--data_dir``): no download. Any other name is a tensorflow-datasets name
(``cifar10``, ``cifar100``, ``mnist``, ``imagenet2012``, ``name:version``...) read
with ``tffp.data.tfds_pipeline``'s evaluation preprocessing; tfds prepares (downloads)
it on first use. All models get the same batches, in order.

With ``--calibration_steps N`` (N > 0), the BatchNormalization statistics of every
``.keras`` model are re-estimated first (``tffp.recalibrate_batchnorm``) on the first N
batches of ``--calibration_split`` of the same dataset, without shuffling. A model
still wrapped for filter pruning is evaluated as saved (strip it with ``tffp-strip``
to re-estimate its statistics); ``.tflite`` files are evaluated as they are.

One line per model is printed; ``--output_json`` also writes them. Bad flags, missing
files, unknown datasets or shapes that do not fit end the tool with one line on
stderr and a non-zero status.

The functions here that read models and datasets (:func:`load_model`,
:func:`load_dataset`, :func:`check_model_input`) and set a tool's flags up
(:func:`launch`) are shared by the other ``tffp-*`` tools.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
import zipfile
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import flags, logging

import tf_filterprune as tffp
from tf_filterprune.cli.common import CliError, UsageError, check_file, run_tool
from tf_filterprune.methods.base import wrappers_of

FLAGS = flags.FLAGS

LOCAL_FASHION_MNIST = "fashion_mnist"
"""The ``--dataset`` name read from the local IDX files rather than through tfds."""

DATASET_HELP = (
    "'fashion_mnist' (the local IDX files: Debian's dataset-fashion-mnist, "
    "$FASHION_MNIST_DIR or --data_dir; splits train and test) or a tensorflow-datasets "
    "name such as cifar10, cifar100, mnist or imagenet2012 (tfds splits such as test or "
    "validation[:10%])"
)


# --------------------------------------------------------------------------- #
# Shared by the tools: flags and --help, models, datasets
# --------------------------------------------------------------------------- #


def prepare_tool(
    define: Callable[[flags.FlagValues], None],
    doc: str | None,
    flag_values: flags.FlagValues = FLAGS,
) -> None:
    """Defines a tool's flags (once) so that ``--help`` lists and explains all of them.

    The tools define their flags when they run, not when they are imported, so their
    modules import together (``--input`` is a flag of several tools). absl's
    ``--help`` lists the key flags of the running script (``sys.argv[0]``): the
    flags defined here become its key flags, and ``doc`` (the tool module's
    docstring) becomes the usage text above them.
    """
    before = set(flag_values)
    try:
        define(flag_values)
    except flags.DuplicateFlagError:  # already defined: run() called twice in a process
        return
    for name in sorted(set(flag_values) - before):
        flag_values.register_key_flag_for_module(sys.argv[0], flag_values[name])
    main_module = sys.modules.get("__main__")
    if doc and main_module is not None:
        main_module.__doc__ = doc


def launch(
    define: Callable[[flags.FlagValues], None],
    main: Callable[[Sequence[str]], int | None],
    doc: str | None,
) -> None:
    """A tool's ``run()``: :func:`prepare_tool`, then ``run_tool(main)``; ``--help`` exits 0.

    TensorFlow's INFO logs (SavedModel assets written...) are silenced while ``main``
    runs, unless ``--verbosity`` is given.
    """
    prepare_tool(define, doc)

    def quiet_main(argv: Sequence[str]) -> int | None:
        if not FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)
        return main(argv)

    run_tool(quiet_main)  # --help exits 0 there


def no_arguments(argv: Sequence[str]) -> None:
    """:class:`UsageError` for positional arguments (every input is a flag)."""
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {' '.join(argv[1:])} (every input is a flag)")


def load_model(flag: str, path: str | None) -> keras.Model:
    """The ``.keras`` model at ``path`` (named by ``--flag``), loaded in ``tffp.prune_scope()``.

    Wrapped models (saved while pruning with ``tffp.prune_filters``) load too.

    Raises:
        UsageError: no path, a missing file, or a name not ending in ``.keras``.
        CliError: the file is not a Keras model Keras can load.
    """
    check_file(flag, path)
    if not str(path).endswith(".keras"):
        raise UsageError(f"--{flag}: expected a .keras file, got {path}")
    try:
        with tffp.prune_scope():
            return keras.models.load_model(path, compile=False)
    except (ValueError, TypeError, OSError, zipfile.BadZipFile) as error:
        text = str(error).strip().splitlines()
        reason = text[0] if text else type(error).__name__
        raise CliError(f"--{flag}: cannot load {path} as a Keras model: {reason}") from error


def is_wrapped(model: keras.Model) -> bool:
    """Whether ``model`` still holds filter-pruning wrappers (``tffp.prune_filters``)."""
    return bool(wrappers_of(model))


def check_dataset_flags(
    flag: str, name: str, batch_size: int, limit: int | None = None, steps: int | None = None
) -> None:
    """:class:`UsageError` for an empty dataset name or non-positive sizes."""
    if not name or not name.strip():
        raise UsageError(f"--{flag} must name a dataset: {DATASET_HELP}")
    for label, value in (("batch_size", batch_size), ("limit", limit), ("steps", steps)):
        if value is not None and value < 1:
            raise UsageError(f"--{label} must be a positive integer, got {value}")


def load_dataset(
    name: str,
    split: str,
    *,
    batch_size: int,
    limit: int | None = None,
    data_dir: str | None = None,
    flag: str = "dataset",
) -> tf.data.Dataset:
    """``(images, labels)`` batches of ``split`` of ``name``, in a fixed order, unaugmented.

    Args:
        name: ``fashion_mnist`` (local IDX files) or a tensorflow-datasets name.
        split: the split (``train`` / ``test`` for Fashion-MNIST, any tfds split).
        batch_size: examples per batch (the last one may be smaller).
        limit: only the first ``limit`` examples.
        data_dir: the IDX folder (Fashion-MNIST) or the tfds data folder.
        flag: the flag named in error messages.

    Raises:
        UsageError: bad sizes or an empty name.
        ValueError / FileNotFoundError: an unknown dataset or split, missing files
            (reported on one line by the tools).
    """
    check_dataset_flags(flag, name, batch_size, limit)
    data_dir = data_dir or None
    if name.strip().lower() == LOCAL_FASHION_MNIST:
        return tffp.data.fashion_mnist_dataset(
            split, batch_size, shuffle=False, limit=limit, data_dir=data_dir
        )
    try:
        dataset = tffp.data.tfds_pipeline(name, split, batch_size, train=False, data_dir=data_dir)
    except (KeyError, AssertionError) as error:  # tfds' unknown splits and configs
        raise CliError(f"--{flag} {name}: {str(error).strip() or type(error).__name__}") from error
    except ImportError as error:  # tfds preparing a dataset needs a module not installed
        raise CliError(
            f"--{flag} {name}: tensorflow-datasets cannot prepare it here: {error} (install "
            "the missing module, or use --dataset fashion_mnist)"
        ) from error
    if limit is not None:
        dataset = dataset.unbatch().take(limit).batch(batch_size)
    return dataset


def first_batch(dataset: tf.data.Dataset, what: str) -> tuple[np.ndarray, np.ndarray]:
    """The first ``(x, y)`` batch of ``dataset`` as numpy; :class:`CliError` when empty."""
    for x, y in dataset.take(1):
        return np.asarray(x), np.asarray(y)
    raise CliError(f"{what} has no examples")


def input_shape(model: keras.Model, flag: str) -> tuple[int | None, ...]:
    """The shape of the model's single input, batch dimension first."""
    inputs = getattr(model, "inputs", None) or []
    if len(inputs) != 1:
        raise CliError(
            f"--{flag}: the model has {len(inputs)} inputs; the tools feed one image tensor"
        )
    return tuple(inputs[0].shape)


def check_model_input(model: keras.Model, flag: str, dataset: tf.data.Dataset, what: str) -> None:
    """:class:`CliError` when the dataset's images do not fit the model's input shape."""
    expected = input_shape(model, flag)[1:]
    got = tuple(dataset.element_spec[0].shape)[1:]
    fits = len(expected) == len(got) and all(
        e is None or g is None or e == g for e, g in zip(expected, got, strict=True)
    )
    if not fits:
        raise CliError(
            f"--{flag}: the model takes inputs of shape {_shape(expected)}, but {what} "
            f"gives {_shape(got)}"
        )


def _shape(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def recalibrate(model: keras.Model, dataset: tf.data.Dataset, steps: int) -> None:
    """``tffp.recalibrate_batchnorm`` on ``steps`` batches, without its no-BN warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="recalibrate_batchnorm: model .* has no")
        tffp.recalibrate_batchnorm(model, dataset, steps=steps)


# --------------------------------------------------------------------------- #
# Accuracy
# --------------------------------------------------------------------------- #


def _labels(y: Any) -> np.ndarray:
    labels = np.asarray(y)
    if labels.ndim > 1 and labels.shape[-1] > 1:  # one-hot
        labels = labels.argmax(-1)
    return labels.reshape(-1)


def keras_accuracy(model: keras.Model, dataset: tf.data.Dataset) -> tuple[float, int]:
    """Top-1 accuracy of ``model`` (inference mode) over ``(x, y)`` batches, and the count."""
    correct = total = 0
    for x, y in dataset:
        logits = keras.ops.convert_to_numpy(model(x, training=False))
        labels = _labels(y)
        correct += int(np.sum(logits.reshape(len(labels), -1).argmax(-1) == labels))
        total += len(labels)
    if total == 0:
        raise CliError("the dataset has no examples")
    return correct / total, total


def tflite_accuracy(path: str, dataset: tf.data.Dataset) -> tuple[float, int]:
    """Top-1 accuracy of a ``.tflite`` model (int8 inputs quantized for it), and the count."""
    with open(path, "rb") as f:
        flatbuffer = f.read()
    correct = total = 0
    for x, y in dataset:
        logits = np.asarray(tffp.export.predict_tflite(flatbuffer, np.asarray(x)))
        labels = _labels(y)
        correct += int(np.sum(logits.reshape(len(labels), -1).argmax(-1) == labels))
        total += len(labels)
    if total == 0:
        raise CliError("the dataset has no examples")
    return correct / total, total


def _check_tflite_input(path: str, dataset: tf.data.Dataset, what: str) -> None:
    """:class:`CliError` when the images do not fit the ``.tflite`` model's input."""
    from ai_edge_litert.interpreter import Interpreter  # the export extra, checked by main

    details = Interpreter(model_path=path).get_input_details()
    if len(details) != 1:
        raise CliError(f"--model {path}: {len(details)} inputs; the tools feed one image tensor")
    expected = tuple(int(d) for d in details[0]["shape"][1:])
    got = tuple(dataset.element_spec[0].shape)[1:]
    if expected != got:
        raise CliError(
            f"--model {path}: the model takes inputs of shape {_shape(expected)}, but {what} "
            f"gives {_shape(got)}"
        )


# --------------------------------------------------------------------------- #
# The tool
# --------------------------------------------------------------------------- #


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """The flags of tffp-evaluate."""
    flags.DEFINE_list(
        "model",
        None,
        "Comma-separated .keras and/or .tflite models to evaluate on the same batches "
        "(.keras files may still be wrapped for filter pruning).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "dataset", LOCAL_FASHION_MNIST, f"The dataset: {DATASET_HELP}.", flag_values=flag_values
    )
    flags.DEFINE_string(
        "split",
        "test",
        "The split evaluated: train or test for fashion_mnist, any tfds split (test, "
        "validation[:1000]...) otherwise.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "limit", None, "Evaluate only the first N examples of --split.", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "batch_size",
        256,
        "Examples per batch (evaluation and calibration).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "data_dir",
        "",
        "Folder with the Fashion-MNIST IDX files, or the tensorflow-datasets data folder "
        "(default: $FASHION_MNIST_DIR or Debian's folder; tfds's default).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "calibration_steps",
        0,
        "Re-estimate the BatchNormalization statistics of every plain .keras model on this "
        "many batches of --calibration_split first (0: evaluate the statistics as saved).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "calibration_split",
        "train",
        "The split whose first --calibration_steps batches (unshuffled) re-estimate BN.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "output_json",
        "",
        "Also write the results here as JSON (dataset, split, and per model its accuracy, "
        "example count and whether BN was re-estimated).",
        flag_values=flag_values,
    )


def main(argv: Sequence[str]) -> int:
    """Evaluates every ``--model``; prints one line each (see the module docstring)."""
    no_arguments(argv)
    paths = [p for p in (FLAGS.model or []) if p.strip()]
    if not paths:
        raise UsageError("--model is required: one or more .keras / .tflite files")
    for path in paths:
        check_file("model", path)
        if not path.endswith((".keras", ".tflite")):
            raise UsageError(f"--model: expected .keras or .tflite files, got {path}")
    if FLAGS.calibration_steps < 0:
        raise UsageError(f"--calibration_steps must be >= 0, got {FLAGS.calibration_steps}")
    if any(p.endswith(".tflite") for p in paths):
        try:
            tffp.export._litert("interpreter")
        except ImportError as error:
            raise CliError(f"--model: .tflite files need ai-edge-litert: {error}") from error
    what = f"{FLAGS.dataset} {FLAGS.split}"
    dataset = load_dataset(
        FLAGS.dataset,
        FLAGS.split,
        batch_size=FLAGS.batch_size,
        limit=FLAGS.limit,
        data_dir=FLAGS.data_dir,
    )
    calibration = None
    if FLAGS.calibration_steps:
        calibration = load_dataset(
            FLAGS.dataset,
            FLAGS.calibration_split,
            batch_size=FLAGS.batch_size,
            data_dir=FLAGS.data_dir,
        )
    results = []
    for path in paths:
        results.append(_evaluate_one(path, dataset, what, calibration))
        line = results[-1]
        bn = ", BN re-estimated" if line["bn_recalibrated"] else ""
        print(
            f"{path}: accuracy {line['accuracy']:.4f} on {line['examples']} examples of {what}{bn}"
        )
    if FLAGS.output_json:
        _write_json(FLAGS.output_json, results)
        print(f"wrote {FLAGS.output_json}")
    return 0


def _evaluate_one(
    path: str, dataset: tf.data.Dataset, what: str, calibration: tf.data.Dataset | None
) -> dict[str, Any]:
    recalibrated = False
    if path.endswith(".tflite"):
        _check_tflite_input(path, dataset, what)
        accuracy, count = tflite_accuracy(path, dataset)
    else:
        model = load_model("model", path)
        check_model_input(model, "model", dataset, what)
        if calibration is not None and not is_wrapped(model):
            recalibrate(model, calibration, FLAGS.calibration_steps)
            recalibrated = True
        elif calibration is not None:
            print(
                f"{path}: still wrapped for filter pruning: evaluated with its saved BN "
                "statistics (strip it with tffp-strip --dataset ... to re-estimate them)"
            )
        accuracy, count = keras_accuracy(model, dataset)
    return {"model": path, "accuracy": accuracy, "examples": count, "bn_recalibrated": recalibrated}


def _write_json(path: str, results: list[dict[str, Any]]) -> None:
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    payload = {
        "dataset": FLAGS.dataset,
        "split": FLAGS.split,
        "limit": FLAGS.limit,
        "calibration_steps": FLAGS.calibration_steps,
        "calibration_split": FLAGS.calibration_split if FLAGS.calibration_steps else None,
        "results": results,
    }
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")


def run() -> None:
    """Console-script entry point (``tffp-evaluate``)."""
    launch(define_flags, main, __doc__)


if __name__ == "__main__":
    run()
