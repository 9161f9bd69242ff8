r"""tffp-train-prune: train a model with a pruning method as an experiment config says, then strip it.

Usage:

    tffp-train-prune --config configs/dcff/resnet56_cifar10.py --workdir runs/dcff_r56
    tffp-train-prune --config configs/fashion/dcff.py --workdir /tmp/fashion_dcff \
        --config.training.epochs=1 --config.steps_per_epoch=20
    python tools/train_prune.py --config configs/dpfps/resnet50_imagenet.py \
        --workdir runs/dpfps_r50 --data_dir ~/tensorflow_datasets      # from a clone

``--config`` is a file of ``configs/`` (see ``tf_filterprune/cli/config_lib.py`` for the
fields); any field can be overridden as ``--config.<field>=<value>`` after it, e.g.
``--config.training.epochs=1``, ``--config.pruning.target_macs_reduction=0.4``. The
tool builds ``config.model``, wraps it with ``config.method`` (``tffp.prune_filters``),
trains it with ``model.fit`` and ``tffp.callbacks.UpdateFilterPruning`` on
``config.dataset`` (``fashion_mnist``: the local IDX files; else tensorflow-datasets,
which prepares, i.e. downloads, the data on first use, except ImageNet: download it
by hand into ``--data_dir``), and writes into ``--workdir``:

* ``config.json``: the config of the run (a rerun must use the same one);
* ``checkpoint/``: the weights, optimizer and method state after the last completed
  epoch, and ``progress.json`` (epochs done). Rerunning the same command after a kill
  continues from there: epoch ``e`` sees the same batches whether or not the run was
  interrupted, so the result is the uninterrupted run's;
* ``tensorboard/``: Keras's loss, accuracy and learning-rate curves (``train`` and
  ``validation``) and the methods' own summaries (``pruning``: kept widths,
  temperatures, gates...): ``tensorboard --logdir <workdir>/tensorboard``;
* at the end ``wrapped.keras`` (load it in ``tffp.prune_scope()``), ``compact.keras``
  (``tffp.strip_filter_pruning``: a plain Keras model with fewer filters; its BN
  statistics re-estimated on ``config.bn_steps`` training batches when > 0) and
  ``result.json`` (accuracy of the compact model on ``eval_steps`` batches of the
  evaluation split, the strip's measured difference, MACs and params before and
  after and their ratios, the kept widths per conv).

Bad flags, configs or data (an unknown method, model or dataset, a ratio out of
range, a missing config file or dataset, an override of a field that does not
exist) end the tool with one line on stderr and a non-zero status.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import keras
import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags

import tf_filterprune as tffp
from tf_filterprune.cli import config_lib, train_data
from tf_filterprune.cli.common import CliError, UsageError
from tf_filterprune.cli.evaluate import keras_accuracy, launch, no_arguments, recalibrate
from tf_filterprune.cli.reports import layer_widths
from tf_filterprune.methods.base import wrappers_of

FLAGS = flags.FLAGS

CHECKPOINT = "checkpoint"
WEIGHTS = "weights.weights.h5"
PROGRESS = "progress.json"


class Interrupted(CliError):
    """``--stop_after_epoch`` stopped the run (as a kill would); rerunning resumes it."""


def define_flags(flag_values: flags.FlagValues = FLAGS, sys_argv: list[str] | None = None) -> None:
    """The flags of tffp-train-prune (``sys_argv``: the arguments the overrides are read from)."""
    config_flags.DEFINE_config_file(
        "config",
        None,
        "The experiment: a Python config file of configs/ (get_config() returns an "
        "ml_collections.ConfigDict). Override any field after it with "
        "--config.<field>=<value>, e.g. --config.training.epochs=1.",
        flag_values=flag_values,
        sys_argv=sys_argv,
    )
    flags.DEFINE_string(
        "workdir",
        None,
        "Folder of the run (required): checkpoint, TensorBoard logs, the wrapped and the "
        "compact .keras models and result.json. Rerun with the same one to resume.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "data_dir",
        "",
        "The tensorflow-datasets data folder (tfds's default when empty), or the folder of "
        "the Fashion-MNIST IDX files for dataset fashion_mnist.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "verbose",
        None,
        "Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per epoch (default: 1 on "
        "a terminal, else 2).",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "run_eagerly",
        False,
        "Train and evaluate eagerly (model.compile(run_eagerly=True)): no graph tracing, "
        "so a run of a few steps of a deep model starts faster; far slower per step.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "stop_after_epoch",
        None,
        "Stop (exit status 1) once this many epochs are done and checkpointed, as a kill "
        "would; rerunning the command resumes. For testing resumption.",
        flag_values=flag_values,
    )


# --------------------------------------------------------------------------- #
# Checkpoints
# --------------------------------------------------------------------------- #


class EpochCheckpoint(keras.callbacks.Callback):
    """After every epoch: the model's and the optimizer's variables, then the epoch count.

    The method's state lives in the wrappers' variables, so it is saved with the
    weights. Files are written next to their final names and renamed, so a kill
    leaves the previous checkpoint whole.
    """

    def __init__(self, folder: Path, stop_after_epoch: int | None = None):
        super().__init__()
        self.folder = folder
        self.stop_after_epoch = stop_after_epoch

    def on_epoch_end(self, epoch, logs=None):
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = self.folder / f"partial.{WEIGHTS}"
        self.model.save_weights(partial)
        os.replace(partial, self.folder / WEIGHTS)
        record = {"epochs_done": epoch + 1, "logs": _floats(logs), "time": time.time()}
        _write_json(self.folder / PROGRESS, record, atomic=True)
        if self.stop_after_epoch is not None and epoch + 1 >= self.stop_after_epoch:
            raise Interrupted(
                f"stopped after epoch {epoch + 1} (--stop_after_epoch); rerun the same command "
                "to resume"
            )


def epochs_done(workdir: Path) -> int:
    """Epochs completed and checkpointed in ``workdir`` (0 for a new run)."""
    path = workdir / CHECKPOINT / PROGRESS
    if not path.is_file():
        return 0
    return int(json.loads(path.read_text())["epochs_done"])


def _floats(logs: dict | None) -> dict[str, float]:
    return {k: float(v) for k, v in (logs or {}).items() if np.ndim(v) == 0}


def _write_json(path: Path, payload: Any, atomic: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    target = path.with_name(f"partial.{path.name}") if atomic else path
    target.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    if atomic:
        os.replace(target, path)


def _check_same_config(workdir: Path, config: ml_collections.ConfigDict) -> None:
    """Saves the run's config; a rerun in the same workdir must have the same one."""
    path = workdir / "config.json"
    current = json.loads(config.to_json(sort_keys=True))
    if path.is_file() and (workdir / CHECKPOINT / PROGRESS).is_file():
        saved = json.loads(path.read_text())
        if saved != current:
            changed = sorted(_diff(saved, current))
            raise UsageError(
                f"--workdir {workdir} holds a run of another config (fields differ: "
                f"{', '.join(changed)}); use a new --workdir, or the same config to resume"
            )
        return
    _write_json(path, current)


def _diff(a: Any, b: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            yield from _diff(a.get(key), b.get(key), f"{prefix}{key}.")
    elif a != b:
        yield prefix.rstrip(".")


# --------------------------------------------------------------------------- #
# The run
# --------------------------------------------------------------------------- #


def _config(flag_values: flags.FlagValues) -> ml_collections.ConfigDict:
    path = config_flags.get_config_filename(flag_values["config"])
    if not path:
        raise UsageError("--config is required: an experiment config file of configs/")
    if not os.path.isfile(path.split(":", 1)[0]):
        raise UsageError(f"--config: no such config file: {path}")
    try:
        config = flag_values.config
        config.training.epochs  # noqa: B018  (an _ErrorConfig raises here: not loadable)
    except OSError as error:
        raise UsageError(f"--config: cannot load the config file {path}: {error}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise UsageError(f"--config {path}: get_config() must return an ml_collections.ConfigDict")
    config_lib.check_config(config)
    return config


def compile_wrapped(
    wrapped: keras.Model, config: ml_collections.ConfigDict, steps: int, run_eagerly: bool = False
) -> None:
    """Compiles with the config's optimizer, sparse cross-entropy on logits and accuracy."""
    wrapped.compile(
        optimizer=config_lib.make_optimizer(config, steps),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        run_eagerly=run_eagerly,
    )


def train(flag_values: flags.FlagValues = FLAGS) -> dict[str, Any]:
    """The run of the parsed flags (see the module docstring); returns ``result.json``'s dict."""
    config = _config(flag_values)
    if not flag_values.workdir:
        raise UsageError("--workdir is required: the folder of the run")
    if flag_values.stop_after_epoch is not None and flag_values.stop_after_epoch < 1:
        raise UsageError(f"--stop_after_epoch must be >= 1, got {flag_values.stop_after_epoch}")
    workdir = Path(flag_values.workdir)
    data_dir = flag_values.data_dir or None
    epochs = int(config.training.epochs)
    _check_same_config(workdir, config)
    done = min(epochs_done(workdir), epochs)

    keras.utils.set_random_seed(int(config.seed))
    dense = config_lib.build_model(config)
    wrapped = config_lib.wrap(config, dense)
    # a finished run (rerun to rewrite its results) still needs the steps for the schedule
    stream, steps = train_data.training_stream(config, data_dir, min(done, epochs - 1))
    validation = train_data.eval_dataset(config, data_dir)
    compile_wrapped(wrapped, config, steps, flag_values.run_eagerly)
    checkpoint = workdir / CHECKPOINT
    if done:
        wrapped.optimizer.build(wrapped.trainable_variables)
        wrapped.load_weights(checkpoint / WEIGHTS)
        print(f"resuming {workdir} after epoch {done} of {epochs}")
    if done < epochs:
        logs = str(workdir / "tensorboard")
        callbacks = [
            tffp.callbacks.UpdateFilterPruning(),
            EpochCheckpoint(checkpoint, flag_values.stop_after_epoch),
            keras.callbacks.TensorBoard(logs, write_graph=False),
            tffp.callbacks.FilterPruningSummaries(os.path.join(logs, "pruning")),
        ]
        verbose = flag_values.verbose
        if verbose is None:
            verbose = 1 if sys.stdout.isatty() else 2
        wrapped.fit(
            stream,
            epochs=epochs,
            initial_epoch=done,
            steps_per_epoch=steps,
            validation_data=validation,
            callbacks=callbacks,
            verbose=verbose,
            shuffle=False,  # the stream is shuffled per epoch (train_data)
        )
    return finish(wrapped, dense, config, workdir, data_dir, validation)


def finish(
    wrapped: keras.Model,
    dense: keras.Model,
    config: ml_collections.ConfigDict,
    workdir: Path,
    data_dir: str | None,
    evaluation: Any,
) -> dict[str, Any]:
    """Saves the wrapped and the stripped model, evaluates on ``evaluation`` (the
    evaluation batches, :func:`train_data.eval_dataset`), writes ``result.json``."""
    check = next(iter(evaluation))[0][:16]
    notes: list[str] = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="strip_filter_pruning: the compact model's")
        compact, difference = tffp.strip_filter_pruning(
            wrapped, verify_data=check, calibration_data=None, notes=notes
        )
    if config.bn_steps:
        calibration = train_data.eval_dataset(
            config, data_dir, split=config.dataset.train_split, limit=False
        )
        recalibrate(compact, calibration, int(config.bn_steps))
    accuracy, examples = keras_accuracy(compact, evaluation)
    wrapped.save(workdir / "wrapped.keras")
    compact.save(workdir / "compact.keras")
    before, after = tffp.profile(dense), tffp.profile(compact)
    full, kept = layer_widths(dense), layer_widths(compact)
    widths = {
        name: [full[name][1], kept.get(name, (None, None))[1]]
        for w in wrappers_of(wrapped)
        for name in [next((n for n in full if n.rsplit("/", 1)[-1] == w.name), w.name)]
        if name in full
    }
    result = {
        "paper": config.paper,
        "method": config.method.name,
        "model": config.model.name,
        "dataset": config.dataset.name,
        "epochs": int(config.training.epochs),
        "accuracy": accuracy,
        "eval_examples": examples,
        "eval_split": config.dataset.eval_split,
        "bn_recalibration_steps": int(config.bn_steps),
        "strip_max_abs_difference": float(difference),
        "strip_notes": notes,
        "macs": {"original": before.total_macs, "compact": after.total_macs},
        "macs_ratio": after.total_macs / before.total_macs,
        "macs_reduction": 1.0 - after.total_macs / before.total_macs,
        "params": {"original": before.total_params, "compact": after.total_params},
        "params_ratio": after.total_params / before.total_params,
        "widths": widths,
        "config_sha1": hashlib.sha1(config.to_json(sort_keys=True).encode()).hexdigest(),
    }
    _write_json(workdir / "result.json", _json_safe(result))
    print(
        f"accuracy {accuracy:.4f} on {examples} examples of {config.dataset.name} "
        f"{config.dataset.eval_split}; MACs {before.total_macs:,} -> {after.total_macs:,} "
        f"({result['macs_ratio']:.3f}x), params {before.total_params:,} -> "
        f"{after.total_params:,}; max |wrapped - compact| = {difference:.3g}"
    )
    print(f"wrote {workdir}/wrapped.keras, compact.keras, result.json")
    return _json_safe(result)


def _json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as None (strict JSON; a diverged run has them)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def main(argv: Sequence[str]) -> int:
    """Runs the experiment of ``--config`` in ``--workdir`` (see the module docstring)."""
    no_arguments(argv)
    train(FLAGS)
    return 0


def run_in_process(args: Sequence[str]) -> dict[str, Any]:
    """The tool on ``args`` (flags only) with its own flag values: for tests and notebooks.

    Errors raise (:class:`CliError`, ``absl.flags.Error``) instead of exiting.

    Example: ``run_in_process(["--config", "configs/fashion/dcff.py", "--workdir", "/tmp/w",
    "--config.training.epochs=1", "--config.steps_per_epoch=5"])``.
    """
    argv = ["tffp-train-prune", *map(str, args)]
    values = flags.FlagValues()
    define_flags(values, sys_argv=argv)
    with _argv(argv):
        rest = values(argv)
    no_arguments(rest)
    return train(values)


@contextlib.contextmanager
def _argv(argv: list[str]) -> Iterator[None]:
    saved = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved


def run() -> None:
    """Console-script entry point (``tffp-train-prune``)."""
    launch(define_flags, main, __doc__)


if __name__ == "__main__":
    run()
