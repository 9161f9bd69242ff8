r"""tffp-export: a ``.keras`` model to a TensorFlow SavedModel and / or a TFLite file.

Usage:

    tffp-export --input compact.keras --saved_model compact_saved_model \
        --tflite compact.tflite                                   # float
    tffp-export --input compact.keras --tflite compact_dynamic.tflite --quantization dynamic
    tffp-export --input compact.keras --tflite compact_int8.tflite --quantization int8 \
        --representative_dataset fashion_mnist --num_examples 200
    python tools/export.py --input compact.keras --tflite compact.tflite   # from a clone

Quantization (``--quantization``, TFLite only; ``tffp.export.to_tflite``):

- ``float``: no quantization.
- ``float16``: float16 weights.
- ``dynamic``: dynamic-range: int8 weights, float activations.
- ``int8``: full integer: int8 ops and int8 input / output tensors. Needs
  representative data for calibration: the first ``--num_examples`` examples of
  ``--representative_split`` of ``--representative_dataset`` (``fashion_mnist``, read
  from the local IDX files, or a tensorflow-datasets name), preprocessed as for
  evaluation (``tffp-evaluate`` feeds the same images).

The TFLite model has a fixed batch of ``--batch_size`` (1 suits on-device latency; 0
keeps it dynamic); the SavedModel's batch is always dynamic (its ``serve`` endpoint).
The input must be a plain model: strip a wrapped one first (``tffp-strip``). Printed:
each file written, its size and (with ai-edge-litert installed) its TFLite op counts.
Bad flags or inputs (a wrong quantization name, int8 without representative data...)
end the tool with one line on stderr and a non-zero status.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from absl import flags

import tf_filterprune as tffp
from tf_filterprune.cli.common import CliError, UsageError
from tf_filterprune.cli.evaluate import (
    DATASET_HELP,
    check_dataset_flags,
    check_model_input,
    is_wrapped,
    launch,
    load_dataset,
    load_model,
    no_arguments,
)

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """The flags of tffp-export."""
    flags.DEFINE_string(
        "input", None, "The model to export: a plain .keras file.", flag_values=flag_values
    )
    flags.DEFINE_string(
        "saved_model",
        "",
        "Write a TensorFlow SavedModel to this folder (dynamic batch).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "tflite", "", "Write a TFLite flatbuffer to this .tflite file.", flag_values=flag_values
    )
    flags.DEFINE_enum(
        "quantization",
        "float",
        list(tffp.export.QUANTIZATIONS),
        "TFLite quantization: float (none), float16 (fp16 weights), dynamic (int8 weights, "
        "float activations) or int8 (full integer, needs --representative_dataset).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "batch_size",
        1,
        "Fixed batch dimension of the TFLite model (0: dynamic).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "representative_dataset",
        "",
        f"int8 calibration data: {DATASET_HELP}.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "representative_split",
        "train",
        "The split of --representative_dataset whose first examples calibrate int8.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "num_examples",
        100,
        "Examples of --representative_split used for the int8 calibration.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "data_dir",
        "",
        "Folder with the Fashion-MNIST IDX files, or the tensorflow-datasets data folder.",
        flag_values=flag_values,
    )


def _check_flags() -> None:
    if not (FLAGS.saved_model or FLAGS.tflite):
        raise UsageError("give --saved_model and/or --tflite: nothing to write")
    if FLAGS.tflite and not FLAGS.tflite.endswith(".tflite"):
        raise UsageError(f"--tflite must end in .tflite, got {FLAGS.tflite}")
    if FLAGS.batch_size < 0:
        raise UsageError(f"--batch_size must be >= 0 (0: dynamic), got {FLAGS.batch_size}")
    if FLAGS.quantization != "float" and not FLAGS.tflite:
        raise UsageError(f"--quantization {FLAGS.quantization} applies to --tflite; none given")
    if FLAGS.quantization == "int8":
        if not FLAGS.representative_dataset:
            raise UsageError(
                "--quantization int8 needs calibration data: --representative_dataset "
                "fashion_mnist or a tfds name (and --representative_split, --num_examples)"
            )
        check_dataset_flags("representative_dataset", FLAGS.representative_dataset, 1)
        if FLAGS.num_examples < 1:
            raise UsageError(f"--num_examples must be a positive integer, got {FLAGS.num_examples}")


def _representative_data(model):
    """The int8 calibration batches, and how many converter steps they make."""
    name, split = FLAGS.representative_dataset, FLAGS.representative_split
    dataset = load_dataset(
        name,
        split,
        batch_size=min(FLAGS.num_examples, 256),
        limit=FLAGS.num_examples,
        data_dir=FLAGS.data_dir,
        flag="representative_dataset",
    )
    check_model_input(model, "input", dataset, f"{name} {split}")
    steps = math.ceil(FLAGS.num_examples / max(FLAGS.batch_size, 1))
    return dataset, steps


def _describe(path: str) -> str:
    try:
        counts = tffp.export.tflite_op_counts(path)
    except ImportError:
        return "(ops: install ai-edge-litert to list them)"
    return "ops " + ", ".join(f"{name} x{n}" for name, n in sorted(counts.items()))


def main(argv: Sequence[str]) -> int:
    """Exports ``--input`` (see the module docstring)."""
    no_arguments(argv)
    _check_flags()
    model = load_model("input", FLAGS.input)
    if is_wrapped(model):
        raise CliError(
            f"--input {FLAGS.input} is still wrapped for filter pruning: strip it first "
            f"(tffp-strip --input {FLAGS.input} --output compact.keras)"
        )
    if FLAGS.representative_dataset and FLAGS.quantization != "int8":
        print("note: --representative_dataset is used by --quantization int8 only; ignored")
    if FLAGS.saved_model:
        tffp.export.to_saved_model(model, FLAGS.saved_model)
        print(f"wrote {FLAGS.saved_model} (SavedModel, endpoint serve, dynamic batch)")
    if FLAGS.tflite:
        representative, steps = (None, 100)
        if FLAGS.quantization == "int8":
            representative, steps = _representative_data(model)
        folder = os.path.dirname(FLAGS.tflite)
        if folder:
            os.makedirs(folder, exist_ok=True)
        flatbuffer = tffp.export.to_tflite(
            model,
            FLAGS.tflite,
            quantization=FLAGS.quantization,
            representative_data=representative,
            num_calibration_steps=steps,
            batch_size=FLAGS.batch_size or None,
        )
        batch = FLAGS.batch_size or "dynamic"
        print(
            f"wrote {FLAGS.tflite} ({len(flatbuffer):,} bytes, {FLAGS.quantization}, "
            f"batch {batch}): {_describe(FLAGS.tflite)}"
        )
    return 0


def run() -> None:
    """Console-script entry point (``tffp-export``)."""
    launch(define_flags, main, __doc__)


if __name__ == "__main__":
    run()
