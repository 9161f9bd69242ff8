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
"""

from __future__ import annotations

import csv
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

import tf_filterprune as tffp  # noqa: E402

DCFF_STEP_UPDATES = 10
"""``updates_per_epoch`` of the ``dcff_steps`` row."""

PAPER_EPOCHS = 300
"""Length of the DCFF paper's CIFAR runs, the pace of the ``dcff_paced`` temperature."""

DCFF_VARIANTS: dict[str, Callable[[int], tffp.DCFF]] = {
    "dcff": lambda epochs: tffp.DCFF(),
    "dcff_steps": lambda epochs: tffp.DCFF(updates_per_epoch=DCFF_STEP_UPDATES),
    "dcff_paced": lambda epochs: tffp.DCFF.paced(epochs, reference_epochs=PAPER_EPOCHS),
}
"""The DCFF rows: row name -> a fresh method for a run of that many epochs."""

ROWS: tuple[str, ...] = ("unpruned", "l1_finetune", "scratch", "tfmot", *DCFF_VARIANTS)
"""Every row of the comparison, in table order."""


RECORDED_SETTINGS: tuple[str, ...] = (
    "epochs",
    "pretrain_epochs",
    "macs_reduction",
    "round_to",
    "lr",
    "batch_size",
    "bn_steps",
    "train_limit",
    "test_limit",
    "tfmot_schedule",
)
"""Settings stored with every result; a rerun reuses only results with the same ones.

``ignored_layers`` is stored too, when it is not empty (so older records still match)."""

TFMOT_SCRIPT = Path(__file__).resolve().with_name("tfmot_baseline.py")

FLAGS = flags.FLAGS
flags.DEFINE_float("macs_reduction", 0.5, "Fraction of the dense model's MACs to remove.")
flags.DEFINE_integer("round_to", 8, "Keep channel counts multiples of this.")
flags.DEFINE_list("ignored_layers", [], "Conv layers kept whole by every compact row, e.g. conv1.")
flags.DEFINE_integer("epochs", 5, "Total training epochs of every row.")
flags.DEFINE_integer("pretrain_epochs", 3, "Epochs before the cut (l1_finetune).")
flags.DEFINE_float("lr", 2e-3, "Peak learning rate (Adam, cosine decay to 1% over each phase).")
flags.DEFINE_integer("batch_size", 128, "Training batch size.")
flags.DEFINE_integer("bn_steps", 50, "Fixed training batches used to re-estimate BN statistics.")
flags.DEFINE_string("seeds", "0,1,2", "Comma-separated seeds.")
flags.DEFINE_string("rows", ",".join(ROWS), f"Comma-separated rows, of {', '.join(ROWS)}.")
flags.DEFINE_integer("train_limit", None, "Use only the first N training examples.")
flags.DEFINE_integer("test_limit", None, "Use only the first N test examples (quick runs).")
flags.DEFINE_string("output_dir", "benchmarks/results/fashion", "Where the results go.")
flags.DEFINE_bool("overwrite", False, "Rerun the requested (row, seed) pairs already done.")
flags.DEFINE_integer("latency_rounds", 20, "Interleaved TFLite latency rounds.")
flags.DEFINE_integer("timing_steps", 100, "Timed steps of the plain model (step-time ratio).")
flags.DEFINE_integer("timing_skip", 10, "Untimed first steps of every timed fit.")
flags.DEFINE_enum("tfmot_schedule", "polynomial", ["polynomial", "constant"], "tfmot schedule.")
flags.DEFINE_integer(
    "step_time_rounds",
    0,
    "Only measure the DCFF train-step ratio: this many interleaved rounds of one epoch "
    "wrapped (every DCFF row) and plain; writes step_time.json.",
)
flags.DEFINE_integer("verbose", None, "Keras fit verbosity (default: 1 on a terminal, else 2).")


@dataclass(frozen=True)
class BenchmarkConfig:
    """Settings of one benchmark run.

    The fields named in :data:`RECORDED_SETTINGS` are stored with every result
    and decide which earlier results a rerun may reuse.
    """

    output_dir: Path
    rows: tuple[str, ...] = ROWS
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 5
    pretrain_epochs: int = 3
    macs_reduction: float = 0.5
    round_to: int = 8
    ignored_layers: tuple[str, ...] = ()
    lr: float = 2e-3
    batch_size: int = 128
    bn_steps: int = 50
    train_limit: int | None = None
    test_limit: int | None = None
    tfmot_schedule: str = "polynomial"
    overwrite: bool = False
    latency_rounds: int = 20
    timing_steps: int = 100
    timing_skip: int = 10
    verbose: int = 2
    save_models: bool = True

    def __post_init__(self) -> None:
        unknown = sorted(set(self.rows) - set(ROWS))
        if unknown:
            raise ValueError(f"unknown rows {unknown}; expected some of {list(ROWS)}")
        if not 0 <= self.pretrain_epochs <= self.epochs:
            raise ValueError(
                f"pretrain_epochs must be in [0, epochs={self.epochs}], got {self.pretrain_epochs}"
            )
        if not 0.0 < self.macs_reduction < 1.0:
            raise ValueError(f"macs_reduction must be in (0, 1), got {self.macs_reduction}")

    def recorded(self) -> dict[str, Any]:
        """The settings stored with every result."""
        settings = {name: getattr(self, name) for name in RECORDED_SETTINGS}
        if self.ignored_layers:
            settings["ignored_layers"] = list(self.ignored_layers)
        return settings

    @property
    def runs_path(self) -> Path:
        return self.output_dir / "runs.jsonl"


@dataclass
class Data:
    """The input pipelines shared by all rows: fixed BN batches and the test set."""

    bn_batches: list[tf.Tensor]
    test: tf.data.Dataset
    config: BenchmarkConfig

    def train(self, seed: int) -> tf.data.Dataset:
        """The shuffled training pipeline of ``seed``."""
        return tffp.data.fashion_mnist_dataset(
            "train", self.config.batch_size, shuffle=True, limit=self.config.train_limit, seed=seed
        )


@dataclass
class RowResult:
    """What a row function returns: the final model (or its TFLite file) and metrics."""

    metrics: dict[str, Any]
    model: keras.Model | None = None
    tflite_path: Path | None = None
    model_path: Path | None = None


class StepTimer(keras.callbacks.Callback):
    """Records the seconds of every training step after the first ``skip`` ones.

    Put it last in the callback list so the other callbacks' per-step work is timed too.
    """

    def __init__(self, skip: int = 10):
        super().__init__()
        self.skip = skip
        self.seconds: list[float] = []
        self._seen = 0
        self._start = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._seen += 1
        if self._seen > self.skip:
            self.seconds.append(time.perf_counter() - self._start)

    def mean(self) -> float | None:
        """Mean step time in seconds, or None when no step was timed."""
        return statistics.fmean(self.seconds) if self.seconds else None


# --------------------------------------------------------------------------- #
# Data, training and evaluation
# --------------------------------------------------------------------------- #


def load_data(config: BenchmarkConfig) -> Data:
    """Fixed (unshuffled) BN batches of the training subset and the test pipeline."""
    bn = tffp.data.fashion_mnist_dataset(
        "train", config.batch_size, shuffle=False, limit=config.train_limit
    )
    test = tffp.data.fashion_mnist_dataset("test", 256, shuffle=False, limit=config.test_limit)
    return Data(bn_batches=[x for x, _ in bn.take(config.bn_steps)], test=test, config=config)


def compile_model(model: keras.Model, total_steps: int, lr: float) -> None:
    """Adam with a cosine decay over ``total_steps`` down to 1% of ``lr``."""
    schedule = keras.optimizers.schedules.CosineDecay(lr, max(total_steps, 1), alpha=0.01)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def train(
    model: keras.Model,
    dataset: tf.data.Dataset,
    epochs: int,
    config: BenchmarkConfig,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> None:
    """One training phase: a fresh optimizer whose cosine decay spans ``epochs``."""
    if epochs <= 0:
        return
    compile_model(model, epochs * int(dataset.cardinality()), config.lr)
    model.fit(  # the dataset shuffles itself each epoch
        dataset, epochs=epochs, verbose=config.verbose, callbacks=list(callbacks), shuffle=False
    )


def evaluate(model: keras.Model, data: Data) -> float:
    """Test accuracy after re-estimating the BN statistics on the fixed training batches."""
    tffp.recalibrate_batchnorm(model, data.bn_batches, steps=data.config.bn_steps)
    if not model.compiled:
        compile_model(model, 1, data.config.lr)
    return float(model.evaluate(data.test, verbose=0, return_dict=True)["accuracy"])


def conv_widths(model: keras.Model) -> dict[str, int]:
    """Filters of every Conv2D, by layer name."""
    return {
        layer.name: int(layer.filters)
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D)
    }


def l1_cut(model: keras.Model, config: BenchmarkConfig) -> keras.Model:
    """The one-shot L1 cut every compact row is compared at."""
    return tffp.prune_once(
        model,
        "l1",
        target_macs_reduction=config.macs_reduction,
        round_to=config.round_to,
        ignored_layers=config.ignored_layers,
    )


def compact_architecture(config: BenchmarkConfig) -> keras.Model:
    """The compact CNN of the L1 cut (widths only depend on the budget, not on weights)."""
    return l1_cut(tffp.models.fashion_cnn(), config)


def plain_step_time(model: keras.Model, data: Data, seed: int) -> float | None:
    """Mean training-step time of a fresh copy of ``model`` (the unwrapped reference)."""
    config = data.config
    twin = keras.models.clone_model(model)
    steps = config.timing_skip + config.timing_steps
    compile_model(twin, steps, config.lr)
    timer = StepTimer(config.timing_skip)
    twin.fit(
        data.train(seed).repeat(), steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[timer]
    )
    return timer.mean()


# --------------------------------------------------------------------------- #
# Rows
# --------------------------------------------------------------------------- #


def run_unpruned(data: Data, seed: int) -> RowResult:
    """The dense CNN trained for all epochs."""
    model = tffp.models.fashion_cnn()
    train(model, data.train(seed), data.config.epochs, data.config)
    return RowResult({"accuracy": evaluate(model, data)}, model=model)


def run_l1_finetune(data: Data, seed: int) -> RowResult:
    """Pretrain, cut once by L1 norm, fine-tune the remaining epochs."""
    config = data.config
    dataset = data.train(seed)
    model = tffp.models.fashion_cnn()
    train(model, dataset, config.pretrain_epochs, config)
    compact = l1_cut(model, config)
    after_cut = evaluate(compact, data)
    train(compact, dataset, config.epochs - config.pretrain_epochs, config)
    return RowResult(
        {"accuracy": evaluate(compact, data), "accuracy_after_cut": after_cut}, model=compact
    )


def run_scratch(data: Data, seed: int) -> RowResult:
    """The L1 cut's compact architecture, re-initialized and trained for all epochs."""
    model = keras.models.clone_model(compact_architecture(data.config))  # fresh initializers
    train(model, data.train(seed), data.config.epochs, data.config)
    return RowResult({"accuracy": evaluate(model, data)}, model=model)


def dcff_wrap(config: BenchmarkConfig, variant: str = "dcff") -> keras.Model:
    """A fresh CNN wrapped for DCFF at the MACs target (widths allocated as prune_once's)."""
    return tffp.prune_filters(
        tffp.models.fashion_cnn(),
        DCFF_VARIANTS[variant](config.epochs),
        target_macs_reduction=config.macs_reduction,
        round_to=config.round_to,
        ignored_layers=config.ignored_layers,
    )


def run_dcff(data: Data, seed: int, variant: str = "dcff") -> RowResult:
    """DCFF trains the compact network from scratch for all epochs."""
    config = data.config
    keras.utils.set_random_seed(seed)
    wrapped = dcff_wrap(config, variant)
    timer = StepTimer(config.timing_skip)
    callbacks = [tffp.callbacks.UpdateFilterPruning(), timer]
    train(wrapped, data.train(seed), config.epochs, config, callbacks=callbacks)
    compact = tffp.strip_filter_pruning(wrapped)
    accuracy = evaluate(compact, data)
    wrapped_step, plain_step = timer.mean(), plain_step_time(compact, data, seed)
    return RowResult(
        {
            "accuracy": accuracy,
            "widths": conv_widths(compact),
            "step_time_wrapped_s": wrapped_step,
            "step_time_plain_s": plain_step,
            "step_time_ratio": ratio(wrapped_step, plain_step),
        },
        model=compact,
    )


def tfmot_sparsity(config: BenchmarkConfig) -> float:
    """1 - trainable params(compact) / trainable params(dense)."""
    dense = tffp.profile(tffp.models.fashion_cnn()).trainable_params
    compact = tffp.profile(compact_architecture(config)).trainable_params
    return 1.0 - compact / dense


def write_npz(path: Path, config: BenchmarkConfig) -> None:
    """The (limited) training and test arrays for the tfmot subprocess."""
    x_train, y_train = tffp.data.load_fashion_mnist("train")
    x_test, y_test = tffp.data.load_fashion_mnist("test")
    train_slice, test_slice = slice(config.train_limit), slice(config.test_limit)
    np.savez(
        path,
        x_train=x_train[train_slice],
        y_train=y_train[train_slice],
        x_test=x_test[test_slice],
        y_test=y_test[test_slice],
    )


def tfmot_command(
    config: BenchmarkConfig, seed: int, npz: Path, out_json: Path, sparsity: float
) -> list[str]:
    """The command line of ``tools/tfmot_baseline.py`` for one seed."""
    command = [
        sys.executable,
        str(TFMOT_SCRIPT),
        f"--data={npz}",
        f"--sparsity={sparsity}",
        f"--output_json={out_json}",
        f"--output_tflite={tflite_path(config, 'tfmot', seed)}",
        f"--schedule={config.tfmot_schedule}",
        f"--epochs={config.epochs}",
        f"--batch_size={config.batch_size}",
        f"--lr={config.lr}",
        f"--bn_steps={config.bn_steps}",
        f"--timing_steps={config.timing_steps}",
        f"--timing_skip={config.timing_skip}",
        f"--seed={seed}",
        f"--verbose={config.verbose}",
    ]
    if config.save_models and seed == 0:
        command.append(f"--output_model={model_path(config, 'tfmot')}")
    return command


def run_tfmot(data: Data, seed: int) -> RowResult:
    """tfmot magnitude pruning at the compact model's parameter sparsity, in a subprocess."""
    config = data.config
    sparsity = tfmot_sparsity(config)
    with tempfile.TemporaryDirectory(prefix="tfmot_baseline_") as tmp:
        npz, out_json = Path(tmp) / "data.npz", Path(tmp) / "result.json"
        write_npz(npz, config)
        env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
        command = tfmot_command(config, seed, npz, out_json, sparsity)
        completed = subprocess.run(command, env=env, check=False)
        if completed.returncode != 0:
            raise RuntimeError(f"tfmot baseline failed (exit {completed.returncode}): {command}")
        result = json.loads(out_json.read_text())
    dense = tffp.profile(tffp.models.fashion_cnn())  # same architecture, zeros kept
    metrics = {
        key: result[key]
        for key in (
            "accuracy",
            "target_sparsity",
            "kernel_sparsity",
            "param_sparsity",
            "nonzero_params",
            "step_time_wrapped_s",
            "step_time_plain_s",
            "step_time_ratio",
        )
    }
    metrics.update(params=dense.total_params, trainable_params=dense.trainable_params)
    metrics.update(macs=dense.total_macs, widths=conv_widths(tffp.models.fashion_cnn()))
    return RowResult(
        metrics,
        tflite_path=Path(result["tflite_path"]),
        model_path=Path(result["model_path"]) if result.get("model_path") else None,
    )


ROW_FUNCTIONS: dict[str, Callable[[Data, int], RowResult]] = {
    "unpruned": run_unpruned,
    "l1_finetune": run_l1_finetune,
    "scratch": run_scratch,
    "tfmot": run_tfmot,
    **{variant: functools.partial(run_dcff, variant=variant) for variant in DCFF_VARIANTS},
}


# --------------------------------------------------------------------------- #
# Records
# --------------------------------------------------------------------------- #


def output_relative(config: BenchmarkConfig, path: Path | None) -> str | None:
    """``path`` relative to the output folder (records stay valid if the folder moves)."""
    return None if path is None else os.path.relpath(path, config.output_dir)


def tflite_path(config: BenchmarkConfig, row: str, seed: int) -> Path:
    return config.output_dir / "tflite" / f"{row}_seed{seed}.tflite"


def model_path(config: BenchmarkConfig, row: str) -> Path:
    return config.output_dir / "models" / f"{row}.keras"


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing or zero."""
    if not numerator or not denominator:
        return None
    return numerator / denominator


def load_records(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of ``path`` (none if it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Appends one JSON line (written at once, so an interrupted run loses no finished pair)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def write_records(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Replaces ``path`` with ``records`` atomically."""
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(record) + "\n" for record in records))
    os.replace(tmp, path)


def same_settings(record: dict[str, Any], config: BenchmarkConfig) -> bool:
    """Whether ``record`` was produced with this run's recorded settings."""
    return record.get("config") == config.recorded()


def current_records(records: list[dict[str, Any]], config: BenchmarkConfig) -> list[dict]:
    """The latest record of each (row, seed) made with this run's settings."""
    latest: dict[tuple[str, int], dict] = {}
    for record in records:
        if same_settings(record, config):
            latest[(record["row"], record["seed"])] = record
    return list(latest.values())


def pending_pairs(config: BenchmarkConfig) -> list[tuple[str, int]]:
    """The requested (row, seed) pairs still to run; with ``overwrite`` their old records go."""
    records = load_records(config.runs_path)
    requested = [(row, seed) for row in config.rows for seed in config.seeds]
    if config.overwrite:
        kept = [r for r in records if (r["row"], r["seed"]) not in set(requested)]
        if len(kept) != len(records):
            write_records(config.runs_path, kept)
        return requested
    done = {(r["row"], r["seed"]) for r in current_records(records, config)}
    other = {(r["row"], r["seed"]) for r in records if not same_settings(r, config)}
    stale = sorted(set(requested) & (other - done))
    if stale:
        print(f"note: {config.runs_path} has results of {stale} with other settings; rerunning")
    return [pair for pair in requested if pair not in done]


def run_pair(data: Data, row: str, seed: int, dense: tffp.profiling.ModelProfile) -> dict:
    """Runs one (row, seed), exports its TFLite model and returns its record."""
    config = data.config
    keras.utils.set_random_seed(seed)
    started = time.time()
    result = ROW_FUNCTIONS[row](data, seed)
    record = {"row": row, "seed": seed, "accuracy_after_cut": None, "step_time_ratio": None}
    record.update(result.metrics)
    if result.model is not None:
        record.update(model_metrics(result.model, config, row, seed))
    else:
        record["tflite_file"] = output_relative(config, result.tflite_path)
        record["tflite_bytes"] = result.tflite_path.stat().st_size
        record["model_file"] = output_relative(config, result.model_path)
    record["macs_ratio"] = record["macs"] / dense.total_macs
    record["params_ratio"] = record["params"] / dense.total_params
    record.update(seconds=round(time.time() - started, 1), config=config.recorded())
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return record


def model_metrics(model: keras.Model, config: BenchmarkConfig, row: str, seed: int) -> dict:
    """Params, MACs, widths and the TFLite export (and, for seed 0, the saved model)."""
    prof = tffp.profile(model)
    path = tflite_path(config, row, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = tffp.export.to_tflite(model, str(path))
    saved = None
    if config.save_models and seed == 0:
        saved = model_path(config, row)
        saved.parent.mkdir(parents=True, exist_ok=True)
        model.save(saved)
    return {
        "params": prof.total_params,
        "trainable_params": prof.trainable_params,
        "macs": prof.total_macs,
        "widths": conv_widths(model),
        "tflite_file": output_relative(config, path),
        "tflite_bytes": len(blob),
        "model_file": output_relative(config, saved),
    }


# --------------------------------------------------------------------------- #
# Latency and summaries
# --------------------------------------------------------------------------- #


def measure_latencies(records: list[dict[str, Any]], config: BenchmarkConfig) -> None:
    """Times every record's .tflite interleaved (batch 1, one thread); updates the records.

    ``latency_ratio`` is relative to the mean latency of the unpruned records.
    """
    files = {id(r): config.output_dir / r["tflite_file"] for r in records if r.get("tflite_file")}
    present = [r for r in records if id(r) in files and files[id(r)].exists()]
    if not present:
        return
    blobs = {f"{r['row']}/{r['seed']}": files[id(r)].read_bytes() for r in present}
    results = tffp.export.compare_latency(blobs, num_threads=1, rounds=config.latency_rounds)
    for record in present:
        record["latency_ms"] = results[f"{record['row']}/{record['seed']}"].median_ms
    reference = [r["latency_ms"] for r in present if r["row"] == "unpruned"]
    base = statistics.fmean(reference) if reference else None
    for record in present:
        record["latency_ratio"] = ratio(record["latency_ms"], base)


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (0 for one value) of the non-missing values."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return None, None
    std = statistics.stdev(present) if len(present) > 1 else 0.0
    return statistics.fmean(present), std


SUMMARY_METRICS: tuple[str, ...] = (
    "accuracy",
    "accuracy_after_cut",
    "macs",
    "macs_ratio",
    "params",
    "params_ratio",
    "tflite_bytes",
    "latency_ms",
    "latency_ratio",
    "step_time_ratio",
)


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per method (in table order): seeds and mean / std of every metric."""
    summary = []
    for row in ROWS:
        mine = sorted((r for r in records if r["row"] == row), key=lambda r: r["seed"])
        if not mine:
            continue
        line: dict[str, Any] = {"row": row, "seeds": len(mine)}
        for metric in SUMMARY_METRICS:
            line[f"{metric}_mean"], line[f"{metric}_std"] = mean_std([r.get(metric) for r in mine])
        summary.append(line)
    return summary


def write_summary_csv(summary: list[dict[str, Any]], path: Path) -> None:
    """``summary.csv``: numeric mean / std columns."""
    columns = ["row", "seeds"] + [f"{m}_{s}" for m in SUMMARY_METRICS for s in ("mean", "std")]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(summary)


def _pm(line: dict[str, Any], metric: str, digits: int) -> str:
    """``mean ± std`` of a summary line, or an empty cell."""
    mean, std = line[f"{metric}_mean"], line[f"{metric}_std"]
    if mean is None:
        return ""
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _plain(line: dict[str, Any], metric: str, fmt: str) -> str:
    mean = line[f"{metric}_mean"]
    return "" if mean is None else format(mean, fmt)


def markdown_table(summary: list[dict[str, Any]]) -> str:
    """The README table: accuracy, cost and speed of every method, mean ± std over seeds."""
    header = (
        "| method | test accuracy | right after cut | MACs | MACs ratio | params | "
        "TFLite bytes | latency ratio | train step ratio | seeds |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = [
        f"| {line['row']} | {_pm(line, 'accuracy', 4)} | {_pm(line, 'accuracy_after_cut', 4)} | "
        f"{_plain(line, 'macs', ',.0f')} | {_plain(line, 'macs_ratio', '.3f')} | "
        f"{_plain(line, 'params', ',.0f')} | {_plain(line, 'tflite_bytes', ',.0f')} | "
        f"{_pm(line, 'latency_ratio', 3)} | {_pm(line, 'step_time_ratio', 2)} | {line['seeds']} |"
        for line in summary
    ]
    return header + "\n".join(lines) + "\n"


def settings_text(config: BenchmarkConfig) -> str:
    """One sentence with the run's settings, for the markdown summary."""
    kept = config.ignored_layers
    whole = f", {', '.join(kept)} kept whole" if kept else ""
    limits = f", train_limit={config.train_limit}" if config.train_limit else ""
    limits += f", test_limit={config.test_limit}" if config.test_limit else ""
    return (
        f"Fashion-MNIST, `fashion_cnn`, {config.macs_reduction:.0%} fewer MACs "
        f"(round_to={config.round_to}{whole}), {config.epochs} epochs per row "
        f"(l1_finetune: {config.pretrain_epochs} + {config.epochs - config.pretrain_epochs}), "
        f"Adam lr {config.lr:g} cosine to 1%, batch {config.batch_size}, BN re-estimated on "
        f"{config.bn_steps} batches before every evaluation{limits}. Latency: TFLite float, "
        "batch 1, one thread, interleaved; ratio vs unpruned. Train step ratio: wrapped / "
        "plain step time."
    )


def write_summary_markdown(summary: list[dict], config: BenchmarkConfig, path: Path) -> None:
    path.write_text(f"{settings_text(config)}\n\n{markdown_table(summary)}")


def plot_accuracy_vs_macs(summary: list[dict[str, Any]], path: Path) -> None:
    """``accuracy_vs_macs.png``: accuracy mean ± std against the MACs ratio, a point per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for line in summary:
        x, y = line["macs_ratio_mean"], line["accuracy_mean"]
        ax.errorbar(x, y, yerr=line["accuracy_std"], fmt="o", capsize=4, label=line["row"])
        ax.annotate(line["row"], (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("MACs ratio (vs unpruned)")
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.set_title("Fashion-MNIST CNN: accuracy vs MACs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(config: BenchmarkConfig) -> list[dict[str, Any]]:
    """Measures latency, rewrites runs.jsonl with it and writes the summaries; returns them."""
    records = load_records(config.runs_path)
    current = current_records(records, config)
    if not current:
        return []
    measure_latencies(current, config)
    updated = {(r["row"], r["seed"]): r for r in current}
    merged = [
        updated.get((r["row"], r["seed"]), r) if same_settings(r, config) else r for r in records
    ]
    write_records(config.runs_path, _deduplicated(merged))
    summary = summarize(current)
    write_summary_csv(summary, config.output_dir / "summary.csv")
    write_summary_markdown(summary, config, config.output_dir / "summary.md")
    plot_accuracy_vs_macs(summary, config.output_dir / "accuracy_vs_macs.png")
    return summary


def _deduplicated(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drops exact repeats (the same updated record listed twice) keeping order."""
    seen: set[str] = set()
    unique = []
    for record in records:
        key = json.dumps(record, sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique.append(record)
    return unique


# --------------------------------------------------------------------------- #
# Driver
# --------------------------------------------------------------------------- #


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
    dense = tffp.profile(tffp.models.fashion_cnn())
    data = load_data(config) if pending else None
    ran = []
    for index, (row, seed) in enumerate(pending, start=1):
        print(f"\n== [{index}/{len(pending)}] {row}, seed {seed} ({time.time() - started:.0f} s)")
        record = run_pair(data, row, seed, dense)
        append_record(config.runs_path, record)
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
        timing_steps=FLAGS.timing_steps,
        timing_skip=FLAGS.timing_skip,
        verbose=verbose,
    )


def timed_epoch(
    model: keras.Model, dataset: tf.data.Dataset, config: BenchmarkConfig, callbacks=()
):
    """Per-step seconds of one epoch of ``model`` (its first ``timing_skip`` steps untimed)."""
    timer = StepTimer(config.timing_skip)
    model.fit(dataset, epochs=1, verbose=0, callbacks=[*callbacks, timer], shuffle=False)
    return timer.seconds


def measure_step_time_ratios(config: BenchmarkConfig, rounds: int) -> dict[str, Any]:
    """Train-step time of the DCFF-wrapped CNNs over the plain compact CNN, interleaved.

    Each round trains one epoch of each model in turn, so machine load hits all of
    them alike; the ratio is of the medians of all timed steps.
    """
    dataset = tffp.data.fashion_mnist_dataset(
        "train", config.batch_size, shuffle=True, limit=config.train_limit, seed=0
    )
    steps = int(dataset.cardinality())
    models = {variant: dcff_wrap(config, variant) for variant in DCFF_VARIANTS}
    models["plain"] = keras.models.clone_model(compact_architecture(config))
    for model in models.values():
        compile_model(model, steps * rounds, config.lr)
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for index in range(rounds):
        for name, model in models.items():
            extra = [] if name == "plain" else [tffp.callbacks.UpdateFilterPruning()]
            seconds[name] += timed_epoch(model, dataset, config, extra)
        print(
            f"round {index + 1}/{rounds}: "
            + ", ".join(
                f"{name} {statistics.median(s) * 1e3:.1f} ms" for name, s in seconds.items()
            )
        )
    plain = statistics.median(seconds["plain"])
    result = {
        "rounds": rounds,
        "steps_per_round": steps,
        "median_step_s": {name: statistics.median(s) for name, s in seconds.items()},
        "ratio": {name: statistics.median(seconds[name]) / plain for name in DCFF_VARIANTS},
    }
    path = config.output_dir / "step_time.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"train-step ratio wrapped / plain: {result['ratio']}; wrote {path}")
    return result


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    try:
        config = config_from_flags()
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
