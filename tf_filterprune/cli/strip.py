r"""tffp-strip: a model saved while wrapped for filter pruning becomes a compact ``.keras``.

Usage:

    tffp-strip --input wrapped.keras --output compact.keras
    tffp-strip --input wrapped.keras --output compact.keras \
        --dataset fashion_mnist --split train --calibration_steps 50
    python tools/strip.py --input wrapped.keras --output compact.keras   # from a clone

``--input`` is a ``.keras`` file saved from a ``tffp.prune_filters`` model (any method,
mid-training or after); it is loaded in ``tffp.prune_scope()``. The tool runs
``tffp.strip_filter_pruning``: every wrapper becomes the plain Conv2D it computes,
the channels the methods drop are cut, and the result is a plain Keras model that
loads without tf_filterprune.

Equivalence check: the wrapped and the compact model are run in inference mode on
``--verify_examples`` inputs (the first ones of ``--split`` of ``--dataset`` when a
dataset is given, else seeded standard-normal inputs of the model's input shape),
before any BN re-estimation. When ``max |wrapped - compact|`` is above
``--tolerance`` nothing is written and the tool fails, saying by how much (a full
width method whose removed channels have not reached zero, e.g. a short DPFPS run).

With ``--dataset``, the compact model's BatchNormalization statistics are then
re-estimated on the first ``--calibration_steps`` batches of ``--split``
(unshuffled; ``tffp.recalibrate_batchnorm``), which a briefly trained model needs
before it is evaluated.

Printed: the kept widths per wrapped conv, the measured difference, the strip's
notes, params and MACs before and after. Bad flags or inputs end the tool with one
line on stderr and a non-zero status.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import keras
import numpy as np
from absl import flags

import tf_filterprune as tffp
from tf_filterprune.batchnorm import batchnorm_layers
from tf_filterprune.cli.common import CliError, UsageError
from tf_filterprune.cli.evaluate import (
    DATASET_HELP,
    check_dataset_flags,
    check_model_input,
    first_batch,
    input_shape,
    launch,
    load_dataset,
    load_model,
    no_arguments,
)
from tf_filterprune.cli.reports import layer_widths
from tf_filterprune.methods.base import wrappers_of

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """The flags of tffp-strip."""
    flags.DEFINE_string(
        "input",
        None,
        "The wrapped model: a .keras file saved from a tffp.prune_filters model.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "output", None, "Where the compact model goes (a .keras file).", flag_values=flag_values
    )
    flags.DEFINE_float(
        "tolerance",
        1e-4,
        "Largest max |wrapped - compact| accepted on the check batch (inference mode, "
        "before BN re-estimation); above it nothing is written and the tool fails.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "verify_examples",
        16,
        "Examples in the equivalence check batch (0 skips the check).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "seed", 0, "Seed of the random check inputs (without --dataset).", flag_values=flag_values
    )
    flags.DEFINE_string(
        "dataset",
        "",
        f"Optional dataset for BN re-estimation and the check batch: {DATASET_HELP}. "
        "Empty: keep the wrapped model's BN statistics, check on random inputs.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "split",
        "train",
        "The --dataset split (BN re-estimation and check).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "calibration_steps",
        50,
        "Batches of --split that re-estimate the BN statistics (with --dataset).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "batch_size", 128, "Examples per BN re-estimation batch.", flag_values=flag_values
    )
    flags.DEFINE_string(
        "data_dir",
        "",
        "Folder with the Fashion-MNIST IDX files, or the tensorflow-datasets data folder.",
        flag_values=flag_values,
    )


def _check_flags() -> None:
    if not FLAGS.output:
        raise UsageError("--output is required: where the compact .keras model goes")
    if not FLAGS.output.endswith(".keras"):
        raise UsageError(f"--output must end in .keras, got {FLAGS.output}")
    if not FLAGS.tolerance >= 0:
        raise UsageError(f"--tolerance must be >= 0, got {FLAGS.tolerance:g}")
    if FLAGS.verify_examples < 0:
        raise UsageError(f"--verify_examples must be >= 0, got {FLAGS.verify_examples}")
    if FLAGS.dataset:
        check_dataset_flags("dataset", FLAGS.dataset, FLAGS.batch_size, steps=None)
        if FLAGS.calibration_steps < 1:
            raise UsageError(
                f"--calibration_steps must be a positive integer, got {FLAGS.calibration_steps}"
            )


def _check_batch(model: keras.Model, what: str, dataset) -> np.ndarray | None:
    """The equivalence check inputs: from ``dataset`` when given, else seeded noise."""
    if FLAGS.verify_examples == 0:
        return None
    if dataset is not None:
        x, _ = first_batch(dataset.unbatch().batch(FLAGS.verify_examples), what)
        return x
    shape = input_shape(model, "input")[1:]
    if any(d is None for d in shape):
        raise CliError(
            f"--input: the model's input shape {shape} has unknown sizes; give --dataset "
            "to check on real inputs (or --verify_examples 0)"
        )
    rng = np.random.default_rng(FLAGS.seed)
    return rng.standard_normal((FLAGS.verify_examples, *shape)).astype("float32")


def main(argv: Sequence[str]) -> int:
    """Strips ``--input`` into ``--output`` (see the module docstring)."""
    no_arguments(argv)
    _check_flags()
    wrapped = load_model("input", FLAGS.input)
    wrappers = wrappers_of(wrapped)
    if not wrappers:
        raise CliError(
            f"--input {FLAGS.input} has no filter-pruning wrappers: it is a plain model "
            "already (tffp.prune_filters wraps one for training-time pruning)"
        )
    dataset = what = None
    if FLAGS.dataset:
        what = f"{FLAGS.dataset} {FLAGS.split}"
        dataset = load_dataset(
            FLAGS.dataset, FLAGS.split, batch_size=FLAGS.batch_size, data_dir=FLAGS.data_dir
        )
        check_model_input(wrapped, "input", dataset, what)
    check = _check_batch(wrapped, what or "", dataset)
    notes: list[str] = []
    with warnings.catch_warnings():  # the BN advice: said below in the tool's terms
        warnings.filterwarnings("ignore", message="strip_filter_pruning: the compact model's")
        warnings.filterwarnings("ignore", message="recalibrate_batchnorm: model .* has no")
        result = tffp.strip_filter_pruning(
            wrapped,
            verify_data=check,
            calibration_data=dataset,
            calibration_steps=FLAGS.calibration_steps,
            notes=notes,
        )
    compact, diff = result if check is not None else (result, None)
    methods = sorted({type(w.method).__name__ for w in wrappers})
    print(f"{FLAGS.input}: {len(wrappers)} wrapped conv(s), method {', '.join(methods)}")
    _print_widths(wrapped, compact)
    for note in notes:
        print(f"note: {note}")
    if diff is not None:
        source = f"{what}" if dataset is not None else f"random inputs (seed {FLAGS.seed})"
        print(
            f"max |wrapped - compact| = {diff:.3g} on {len(check)} examples of {source} "
            f"(--tolerance {FLAGS.tolerance:g})"
        )
        if not diff <= FLAGS.tolerance:
            raise CliError(
                f"max |wrapped - compact| = {diff:.3g} is above --tolerance "
                f"{FLAGS.tolerance:g}: the removed channels still carry signal (see the notes "
                f"above); {FLAGS.output} not written"
            )
    if dataset is not None:
        print(
            f"BatchNormalization statistics re-estimated on {FLAGS.calibration_steps} "
            f"batches of {what}"
        )
    elif batchnorm_layers(compact):
        print(
            "BatchNormalization statistics kept from the wrapped model; after a short run "
            "re-estimate them (--dataset here, or tffp-evaluate --calibration_steps)"
        )
    before, after = tffp.profile(wrapped), tffp.profile(compact)
    print(
        f"params {before.total_params:,} -> {after.total_params:,}, "
        f"MACs {before.total_macs:,} -> {after.total_macs:,} (wrapped at the widths it computes)"
    )
    folder = os.path.dirname(FLAGS.output)
    if folder:
        os.makedirs(folder, exist_ok=True)
    compact.save(FLAGS.output)
    print(f"wrote {FLAGS.output}")
    return 0


def _print_widths(wrapped: keras.Model, compact: keras.Model) -> None:
    full = layer_widths(wrapped)
    kept = layer_widths(compact)
    for wrapper in wrappers_of(wrapped):
        name = next((n for n in full if n.rsplit("/", 1)[-1] == wrapper.name), wrapper.name)
        width = kept.get(name, (None, None))[1]
        print(f"  {name}: {wrapper.layer.filters} -> {width} filters")


def run() -> None:
    """Console-script entry point (``tffp-strip``)."""
    launch(define_flags, main, __doc__)


if __name__ == "__main__":
    run()
