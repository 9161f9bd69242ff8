r"""Demo: prune -> train -> strip -> export -> report, on real Fashion-MNIST.

Trains the reference Fashion-MNIST CNN (the "original" row), then a compact
one with at least 2x fewer MACs. By default its widths are multiples of 16 and the
first conv is kept whole (``--round_to 16 --ignored_layers conv1``): XNNPACK
computes 16 output channels at a time on AVX-512, so 24 channels cost as 32, and
the first conv is cheap in MACs and sensitive. The compact model comes from one of:

* ``--method dcff`` (default): DCFF wraps the convs with ``tffp.prune_filters``
  and trains the compact network from scratch for the same number of epochs,
  with the ``UpdateFilterPruning`` callback; ``tffp.strip_filter_pruning``
  then gives the plain compact model (checked equal to the wrapped one).
  By default it runs at the pace of the paper's 300-epoch run
  (``tffp.DCFF.paced``: the paper's 300 selection updates and temperatures
  spread over ``--epochs``); ``--dcff_reference_epochs 0`` uses the paper's
  temperature formula over ``--epochs`` with ``--dcff_updates_per_epoch``.
* ``--method l1`` (or l2, bn_gamma, fpgm, random, taylor):
  ``tffp.prune_once`` on the trained original, then fine-tuning for
  ``--finetune_epochs``.

BatchNorm statistics are re-estimated before every evaluation. Both models are
exported to TFLite and timed interleaved; the compact one is written as
``.keras``, SavedModel and ``.tflite`` with a JSON report.

Usage:

    .venv/bin/python tools/demo.py                      # DCFF, about 7 minutes on 2 cores
    .venv/bin/python tools/demo.py --method l1          # L1 prune_once + fine-tuning
    .venv/bin/python tools/demo.py --epochs 1 --train_limit 5000   # a quick look
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from absl import app, flags, logging  # noqa: E402

import tf_filterprune as tffp  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "method", "dcff", "A one-shot criterion (l1, l2, bn_gamma, fpgm, random, taylor) or dcff."
)
flags.DEFINE_integer(
    "dcff_reference_epochs",
    300,
    "DCFF: run at the pace of the paper's run of this many epochs (tffp.DCFF.paced: its "
    "updates and temperatures spread over --epochs); 0 for the paper's schedule over "
    "--epochs with --dcff_updates_per_epoch.",
)
flags.DEFINE_integer(
    "dcff_updates_per_epoch",
    1,
    "DCFF with --dcff_reference_epochs 0: selection updates per epoch (1: the paper's).",
)
flags.DEFINE_integer("epochs", 3, "Epochs of training (original model; DCFF's compact model).")
flags.DEFINE_integer("finetune_epochs", 2, "One-shot methods: fine-tuning epochs after the cut.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_float("lr", 2e-3, "Peak learning rate (Adam, cosine decay to 1% of it).")
flags.DEFINE_float("target_macs_reduction", 0.5, "Fraction of MACs to remove.")
flags.DEFINE_string(
    "criterion", "l1", "One-shot criterion (l1, l2, bn_gamma, fpgm, random, taylor)."
)
flags.DEFINE_integer("round_to", 16, "Keep channel counts multiples of this.")
flags.DEFINE_list("ignored_layers", ["conv1"], "Conv layers kept whole (none: --ignored_layers=).")
flags.DEFINE_integer("train_limit", None, "Use only the first N training examples.")
flags.DEFINE_integer("bn_steps", 50, "Batches used to re-estimate BatchNorm statistics.")
flags.DEFINE_integer("latency_rounds", 20, "Interleaved TFLite latency rounds.")
flags.DEFINE_string("output_dir", "artifacts/demo", "Where the models and the report go.")
flags.DEFINE_integer("seed", 0, "Random seed.")


def compile_for(model: keras.Model, epochs: int, steps_per_epoch: int, lr: float) -> None:
    schedule = keras.optimizers.schedules.CosineDecay(lr, epochs * steps_per_epoch, alpha=0.01)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def train(model, train_ds, epochs: int, lr: float, label: str, callbacks=()) -> None:
    steps = int(train_ds.cardinality())
    compile_for(model, epochs, steps, lr)
    print(f"\n== {label}: {epochs} epoch(s) of {steps} steps")
    verbose = 1 if sys.stdout.isatty() else 2
    # The dataset shuffles itself each epoch; shuffle=False only silences Keras's warning.
    model.fit(train_ds, epochs=epochs, verbose=verbose, callbacks=list(callbacks), shuffle=False)


def accuracy(model, train_ds, test_ds) -> float:
    """Test accuracy after re-estimating BN statistics on fixed training batches."""
    tffp.recalibrate_batchnorm(model, train_ds, steps=FLAGS.bn_steps)
    if not model.compiled:
        compile_for(model, 1, 1, FLAGS.lr)
    return float(model.evaluate(test_ds, verbose=0, return_dict=True)["accuracy"])


def dcff_method() -> tffp.DCFF:
    """DCFF as the flags say: paced to the paper's run, or its schedule over --epochs."""
    if FLAGS.dcff_reference_epochs > 0:
        return tffp.DCFF.paced(FLAGS.epochs, reference_epochs=FLAGS.dcff_reference_epochs)
    return tffp.DCFF(updates_per_epoch=FLAGS.dcff_updates_per_epoch)


def train_dcff(train_ds, bn_ds, test_ds):
    """DCFF: the compact network trained from scratch, then stripped."""
    fresh = tffp.models.fashion_cnn()
    wrapped = tffp.prune_filters(
        fresh,
        dcff_method(),
        target_macs_reduction=FLAGS.target_macs_reduction,
        round_to=FLAGS.round_to,
        ignored_layers=FLAGS.ignored_layers,
    )
    train(
        wrapped,
        train_ds,
        FLAGS.epochs,
        FLAGS.lr,
        "training the compact CNN with DCFF (filter fusion, temperature 1 -> 1e4)",
        callbacks=[tffp.callbacks.UpdateFilterPruning()],
    )
    x = next(iter(test_ds))[0]
    compact, diff = tffp.strip_filter_pruning(wrapped, verify_data=x)
    print(f"stripped: max |wrapped - compact| = {diff:.2e} on a test batch")
    return compact, None


def prune_and_finetune(model, train_ds, bn_ds, test_ds):
    """One-shot pruning of the trained model, then fine-tuning."""
    print(f"\n== pruning once ({FLAGS.method}) to {FLAGS.target_macs_reduction:.0%} fewer MACs")
    compact = tffp.prune_once(
        model,
        FLAGS.method,
        target_macs_reduction=FLAGS.target_macs_reduction,
        round_to=FLAGS.round_to,
        ignored_layers=FLAGS.ignored_layers,
        data=train_ds if FLAGS.method == "taylor" else None,
    )
    pruned_acc = accuracy(compact, bn_ds, test_ds)
    train(compact, train_ds, FLAGS.finetune_epochs, FLAGS.lr / 2, "fine-tuning the compact CNN")
    return compact, pruned_acc


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    keras.utils.set_random_seed(FLAGS.seed)
    out_dir = Path(FLAGS.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    train_ds = tffp.data.fashion_mnist_dataset(
        "train", FLAGS.batch_size, limit=FLAGS.train_limit, seed=FLAGS.seed
    )
    bn_ds = tffp.data.fashion_mnist_dataset("train", FLAGS.batch_size, shuffle=False)
    test_ds = tffp.data.fashion_mnist_dataset("test", 256, shuffle=False)

    model = tffp.models.fashion_cnn()
    train(model, train_ds, FLAGS.epochs, FLAGS.lr, "training the reference CNN")
    dense_acc = accuracy(model, bn_ds, test_ds)

    if FLAGS.method == "dcff":
        compact, pruned_acc = train_dcff(train_ds, bn_ds, test_ds)
    else:
        compact, pruned_acc = prune_and_finetune(model, train_ds, bn_ds, test_ds)
    final_acc = accuracy(compact, bn_ds, test_ds)

    print("\n== exporting")
    compact.save(out_dir / "compact.keras")
    tffp.export.to_saved_model(compact, str(out_dir / "compact_saved_model"))
    blobs = {
        "original": tffp.export.to_tflite(model, str(out_dir / "original.tflite")),
        "compact": tffp.export.to_tflite(compact, str(out_dir / "compact.tflite")),
    }
    latency = tffp.export.compare_latency(blobs, num_threads=1, rounds=FLAGS.latency_rounds)
    report = {"seconds": None, "rows": {}}
    for name, net, acc in (("original", model, dense_acc), ("compact", compact, final_acc)):
        prof = tffp.profile(net)
        report["rows"][name] = {
            "accuracy": acc,
            "params": prof.total_params,
            "macs": prof.total_macs,
            "tflite_bytes": len(blobs[name]),
            "latency_ms": latency[name].median_ms,
        }
    report["method"] = FLAGS.method
    if pruned_acc is not None:
        report["rows"]["compact"]["accuracy_right_after_pruning"] = pruned_acc
    report["widths"] = {
        layer.name: layer.filters
        for layer in compact.layers
        if isinstance(layer, keras.layers.Conv2D)
    }
    report["seconds"] = round(time.time() - started, 1)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    print_report(report)
    print(f"\nwrote {out_dir}/compact.keras, compact_saved_model/, compact.tflite, report.json")


def print_report(report: dict) -> None:
    orig, comp = report["rows"]["original"], report["rows"]["compact"]
    print(f"\n{'':22}{'original':>12}{'compact':>12}{'ratio':>8}")
    for key, fmt in (
        ("accuracy", "{:.4f}"),
        ("params", "{:,}"),
        ("macs", "{:,}"),
        ("tflite_bytes", "{:,}"),
        ("latency_ms", "{:.3f}"),
    ):
        ratio = comp[key] / orig[key] if orig[key] else float("nan")
        print(f"{key:22}{fmt.format(orig[key]):>12}{fmt.format(comp[key]):>12}{ratio:>8.3f}")
    if "accuracy_right_after_pruning" in comp:
        after = comp["accuracy_right_after_pruning"]
        print(f"{'accuracy after cut':22}{'':>12}{after:>12.4f}")
    print(f"method {report['method']}; compact conv widths: {report['widths']}")
    print(f"({report['seconds']} s in all)")


if __name__ == "__main__":
    app.run(main)
