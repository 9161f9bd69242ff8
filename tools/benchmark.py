r"""Method comparison on real Fashion-MNIST: accuracy vs MACs, params, TFLite size and latency.

Protocol (see ``ALGORITHMS.md``, "How we compare"): the reference CNN
``tffp.models.fashion_cnn()``, the same total epochs for every row, Adam with a
cosine-decay learning rate ending at 1% of ``--lr`` over each training phase,
batch 128, BatchNorm statistics re-estimated on fixed training batches before
every evaluation, several seeds. Rows:

- ``unpruned``: the dense CNN trained ``--epochs``.
- ``l1_finetune``: ``--pretrain_epochs`` of training, one L1 cut to
  ``--macs_reduction`` fewer MACs (``round_to``), the rest fine-tuning; the
  accuracy right after the cut is recorded too.
- ``scratch``: the same compact architecture, freshly initialized, trained ``--epochs``.
- ``tfmot``: tfmot's unstructured ``prune_low_magnitude`` at the compact model's
  parameter sparsity, in a tf_keras subprocess (``tools/tfmot_baseline.py``).
- ``dcff``: DCFF (``tffp.DCFF`` through ``tffp.prune_filters`` with the same
  ``target_macs_reduction`` and ``round_to``, so the same widths as the L1 cut)
  trains the compact network from scratch for ``--epochs``, updating the
  selection and fusion once per epoch as the paper does.
- ``dcff_steps``: the same with 10 updates per epoch
  (``tffp.DCFF(updates_per_epoch=10)``, temperature at the fractional epoch).
- ``dcff_paced``: ``tffp.DCFF.paced(epochs)``: the paper's 300 updates at its 300
  temperatures, spread over the run (60 updates per epoch for 5 epochs), so the
  low-temperature phase takes the same share of training as in the paper (1/300)
  instead of the whole first epoch.

Rows outside the default ``--rows`` (run them by name): ``dpfps`` (``tffp.DPFPS``,
pending), and experiments measured but not adopted: ``dcff_glorot`` (``dcff_steps``
with the wrapped kernels scaled to the compact conv's Glorot range), ``dcff_t100``
(``dcff_steps`` with the temperature starting at 100), ``dcff_paced_u10`` (the paced
temperature with 10 updates per epoch), ``tfmot_50`` / ``tfmot_75`` (tfmot at 50% /
75% sparsity).

The rows are entries of the registry in ``tools/bench/rows.py``; a training-time
method is one entry there, e.g.
``register(MethodRow("dcff_steps", lambda config: tffp.DCFF(updates_per_epoch=10)))``
(see ``tools/bench/__init__.py`` for the modules).

``--model resnet20`` runs the same rows on ``tffp.models.resnet20`` (one input
channel, the 28x28 images zero-padded to 32x32), pruned inside the residual
blocks only (each block's first conv; the residual stream and the stem whole, the
papers' setting): use ``--round_to 8`` (16 cannot halve the 16-wide stage) and
leave ``tfmot`` out of ``--rows`` (its tf_keras child rebuilds the CNN only).

Every compact row keeps the ``--ignored_layers`` whole (``--ignored_layers conv1``
keeps the first conv, cheap in MACs and sensitive, as many pruning papers do).

Every (row, seed) pair appends one JSON line to ``runs.jsonl`` in
``--output_dir``; a rerun skips the pairs already there (same settings) unless
``--overwrite``. At the end all the rows' float TFLite models are timed
interleaved (batch 1, one thread), the latencies are written into
``runs.jsonl``, and ``summary.csv``, ``summary.md`` and ``accuracy_vs_macs.png``
are (re)written. Seed-0 models are saved under ``models/``.

Usage:

    .venv/bin/python tools/benchmark.py                    # the full benchmark
    .venv/bin/python tools/benchmark.py --round_to 16 --ignored_layers conv1 \
        --output_dir benchmarks/results/fashion_round16_conv1   # the README's headline table
    .venv/bin/python tools/benchmark.py --train_limit 1024 --test_limit 1000 \
        --epochs 1 --pretrain_epochs 0 --seeds 0 --rows unpruned,l1_finetune,scratch
    .venv/bin/python tools/benchmark.py --step_time_rounds 1   # quiet train-step ratio
    .venv/bin/python tools/benchmark.py --model resnet20 --round_to 8 --train_limit 8000 \
        --epochs 4 --pretrain_epochs 2 --seeds 0 --output_dir benchmarks/results/resnet20 \
        --rows unpruned,l1_finetune,scratch,dcff_paced,dpfps,fcf,clustering   # per seed
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
TOOLS = Path(__file__).resolve().parent
if str(TOOLS) not in sys.path:  # the ``bench`` package next to this file
    sys.path.insert(0, str(TOOLS))

from absl import app, flags, logging  # noqa: E402

import tf_filterprune as tffp  # noqa: E402
from bench import records, rows  # noqa: E402
from bench.config import MODELS, RECORDED_SETTINGS, BenchmarkConfig  # noqa: E402
from bench.protocol import (  # noqa: E402
    Data,
    RowResult,
    StepTimer,
    compact_architecture,
    conv_widths,
    load_data,
    reference_model,
)
from bench.records import pending_pairs, same_settings, write_records  # noqa: E402
from bench.report import (  # noqa: E402
    markdown_table,
    mean_std,
    settings_text,
    summarize,
    write_outputs,
)
from bench.row_types import MethodRow, run_pair  # noqa: E402
from bench.step_time import measure_step_time_ratios  # noqa: E402
from bench.timing import ratio  # noqa: E402

__all__ = [
    "RECORDED_SETTINGS",
    "BenchmarkConfig",
    "Data",
    "MethodRow",
    "RowResult",
    "StepTimer",
    "compact_architecture",
    "config_from_flags",
    "conv_widths",
    "markdown_table",
    "mean_std",
    "measure_step_time_ratios",
    "pending_pairs",
    "ratio",
    "rows",
    "run_benchmark",
    "same_settings",
    "settings_text",
    "summarize",
    "write_records",
]

DEFAULT_ROWS = rows.default_names()
OTHER_ROWS = tuple(name for name in rows.names() if name not in DEFAULT_ROWS)

FLAGS = flags.FLAGS
flags.DEFINE_enum(
    "model",
    "fashion_cnn",
    list(MODELS),
    "Reference model: fashion_cnn (28x28) or resnet20 (images zero-padded to 32x32; "
    "block-internal pruning, the residual channels kept whole).",
)
flags.DEFINE_float("macs_reduction", 0.5, "Fraction of the dense model's MACs to remove.")
flags.DEFINE_integer("round_to", 8, "Keep channel counts multiples of this.")
flags.DEFINE_list("ignored_layers", [], "Conv layers kept whole by every compact row, e.g. conv1.")
flags.DEFINE_integer("epochs", 5, "Total training epochs of every row.")
flags.DEFINE_integer("pretrain_epochs", 3, "Epochs before the cut (l1_finetune).")
flags.DEFINE_float("lr", 2e-3, "Peak learning rate (Adam, cosine decay to 1% over each phase).")
flags.DEFINE_integer("batch_size", 128, "Training batch size.")
flags.DEFINE_integer("bn_steps", 50, "Fixed training batches used to re-estimate BN statistics.")
flags.DEFINE_string("seeds", "0,1,2", "Comma-separated seeds.")
flags.DEFINE_string(
    "rows",
    ",".join(DEFAULT_ROWS),
    f"Comma-separated rows, of {', '.join(DEFAULT_ROWS)} "
    f"(and, by name only, {', '.join(OTHER_ROWS)}).",
)
flags.DEFINE_integer("train_limit", None, "Use only the first N training examples.")
flags.DEFINE_integer("test_limit", None, "Use only the first N test examples (quick runs).")
flags.DEFINE_string("output_dir", "benchmarks/results/fashion", "Where the results go.")
flags.DEFINE_bool("overwrite", False, "Rerun the requested (row, seed) pairs already done.")
flags.DEFINE_integer("latency_rounds", 20, "Interleaved TFLite latency rounds.")
flags.DEFINE_bool(
    "int8", True, "Also convert each compact model to full-int8 TFLite: accuracy, bytes, latency."
)
flags.DEFINE_integer("timing_steps", 100, "Timed steps of the plain model (step-time ratio).")
flags.DEFINE_integer("timing_skip", 10, "Untimed first steps of every timed fit.")
flags.DEFINE_enum("tfmot_schedule", "polynomial", ["polynomial", "constant"], "tfmot schedule.")
flags.DEFINE_integer(
    "step_time_rounds",
    0,
    "Only measure the train-step ratio of the method rows of --rows: this many interleaved "
    "rounds of one epoch wrapped (every method row) and plain; writes step_time.json.",
)
flags.DEFINE_integer("verbose", None, "Keras fit verbosity (default: 1 on a terminal, else 2).")


def quiet_warnings() -> None:
    """Hides Keras' note that ``fit(shuffle=True)`` is ignored for a tf.data pipeline."""
    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")


def run_benchmark(config: BenchmarkConfig) -> dict[str, Any]:
    """Runs the pending (row, seed) pairs, then latency and summaries.

    Returns:
        ``{"ran": [(row, seed), ...],
        "summary": [...], "seconds": float}``.
    """
    started = time.time()
    quiet_warnings()
    config.output_dir.mkdir(parents=True, exist_ok=True)
    pending = pending_pairs(config)
    print(f"{len(pending)} (row, seed) pair(s) to run: {pending}")
    dense = tffp.profile(reference_model(config))
    data = load_data(config) if pending else None
    ran = []
    for index, (row, seed) in enumerate(pending, start=1):
        print(f"\n== [{index}/{len(pending)}] {row}, seed {seed} ({time.time() - started:.0f} s)")
        record = run_pair(data, rows.get(row), seed, dense)
        records.append_record(config.runs_path, record)
        ran.append((row, seed))
        print(
            f"   accuracy {record['accuracy']:.4f}, MACs ratio {record['macs_ratio']:.3f}, "
            f"{record['seconds']:.0f} s"
        )
    summary = write_outputs(config)
    return {"ran": ran, "summary": summary, "seconds": time.time() - started}


def parse_seeds(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.split(",") if s.strip())


def parse_rows(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def config_from_flags() -> BenchmarkConfig:
    verbose = FLAGS.verbose if FLAGS.verbose is not None else (1 if sys.stdout.isatty() else 2)
    return BenchmarkConfig(
        output_dir=Path(FLAGS.output_dir),
        model=FLAGS.model,
        rows=parse_rows(FLAGS.rows),
        seeds=parse_seeds(FLAGS.seeds),
        epochs=FLAGS.epochs,
        pretrain_epochs=FLAGS.pretrain_epochs,
        macs_reduction=FLAGS.macs_reduction,
        round_to=FLAGS.round_to,
        ignored_layers=tuple(FLAGS.ignored_layers),
        lr=FLAGS.lr,
        batch_size=FLAGS.batch_size,
        bn_steps=FLAGS.bn_steps,
        train_limit=FLAGS.train_limit,
        test_limit=FLAGS.test_limit,
        tfmot_schedule=FLAGS.tfmot_schedule,
        overwrite=FLAGS.overwrite,
        latency_rounds=FLAGS.latency_rounds,
        int8=FLAGS.int8,
        timing_steps=FLAGS.timing_steps,
        timing_skip=FLAGS.timing_skip,
        verbose=verbose,
    )


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    try:
        config = config_from_flags()
        if FLAGS.step_time_rounds and not rows.method_rows(config.rows):
            raise ValueError(f"--step_time_rounds: no training-time method row in {config.rows}")
    except ValueError as error:
        raise app.UsageError(str(error)) from error
    if FLAGS.step_time_rounds:
        measure_step_time_ratios(config, FLAGS.step_time_rounds)
        return
    outcome = run_benchmark(config)
    print(f"\n{settings_text(config)}\n")
    print(markdown_table(outcome["summary"]))
    minutes = outcome["seconds"] / 60
    print(f"ran {len(outcome['ran'])} pair(s) in {minutes:.1f} min; results in {config.output_dir}")


if __name__ == "__main__":
    app.run(main)
