"""What a row of the comparison is, and running one (row, seed) into a record.

A row is anything with a ``name``, a ``default`` flag (part of the default
``--rows``), ``check(config)`` (raises ``ValueError`` for settings it cannot run
with) and ``run(data, seed) -> RowResult``. Three kinds:

- :class:`FunctionRow`: a plain function (the unpruned, L1 and scratch baselines).
- :class:`MethodRow`: a training-time method of ``tf_filterprune``, wrapped with
  ``tffp.prune_filters``, trained with ``tffp.callbacks.UpdateFilterPruning()``,
  stripped with ``tffp.strip_filter_pruning`` and evaluated, following a recipe:
  :data:`from_scratch` or :func:`pretrain_then_method`.
- :class:`bench.tfmot_row.TfmotRow`: tfmot in a tf_keras subprocess.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import keras

import tf_filterprune as tffp
from bench import records
from bench.config import BenchmarkConfig
from bench.protocol import (
    Data,
    RowResult,
    StepTimer,
    compile_model,
    conv_widths,
    evaluate,
    plain_step_time,
    ratio,
    reference_model,
    train,
)
from tf_filterprune.methods.base import wrappers_of


class Row(Protocol):
    """The interface of a registry entry."""

    name: str
    default: bool

    def check(self, config: BenchmarkConfig) -> None: ...

    def run(self, data: Data, seed: int) -> RowResult: ...


@dataclass(frozen=True)
class FunctionRow:
    """A row run by ``function(data, seed)``."""

    name: str
    function: Callable[[Data, int], RowResult]
    default: bool = True

    def check(self, config: BenchmarkConfig) -> None:
        del config

    def run(self, data: Data, seed: int) -> RowResult:
        return self.function(data, seed)


# --------------------------------------------------------------------------- #
# Training-time methods
# --------------------------------------------------------------------------- #


class Recipe(Protocol):
    """How a :class:`MethodRow` trains: wraps with ``row.wrap``, returns the result."""

    def check(self, config: BenchmarkConfig) -> None: ...

    def run(self, row: MethodRow, data: Data, seed: int) -> RowResult: ...


def train_with_method(
    wrapped: keras.Model, data: Data, seed: int, epochs: int
) -> tuple[keras.Model, StepTimer, keras.Model]:
    """Trains a wrapped model (with ``UpdateFilterPruning``, timed) and strips it.

    Returns the compact model, the step timer and the plain model of the same
    width as the wrapped one (the step-time reference: the compact model for a
    compact-width method, the unwrapped full-width model otherwise).
    """
    timer = StepTimer(data.config.timing_skip)
    callbacks = [tffp.callbacks.UpdateFilterPruning(), timer]
    train(wrapped, data.train(seed), epochs, data.config, callbacks=callbacks)
    compact = tffp.strip_filter_pruning(wrapped)
    compact_width = wrappers_of(wrapped)[0].method.compact_width
    reference = compact if compact_width else tffp.strip.unwrap(wrapped)
    return compact, timer, reference


def step_time_metrics(reference: keras.Model, timer: StepTimer, data: Data, seed: int) -> dict:
    """The wrapped step time, the plain same-width model's, and their ratio."""
    wrapped_step, plain_step = timer.mean(), plain_step_time(reference, data, seed)
    return {
        "step_time_wrapped_s": wrapped_step,
        "step_time_plain_s": plain_step,
        "step_time_ratio": ratio(wrapped_step, plain_step),
    }


@dataclass(frozen=True)
class FromScratch:
    """Wrap a fresh CNN, train all ``epochs`` with the method, strip, evaluate (DCFF)."""

    def check(self, config: BenchmarkConfig) -> None:
        del config

    def run(self, row: MethodRow, data: Data, seed: int) -> RowResult:
        config = data.config
        keras.utils.set_random_seed(seed)
        wrapped = row.wrap(reference_model(config), config)
        compact, timer, reference = train_with_method(wrapped, data, seed, config.epochs)
        accuracy = evaluate(compact, data)
        metrics = {"accuracy": accuracy, "widths": conv_widths(compact)}
        metrics.update(step_time_metrics(reference, timer, data, seed))
        return RowResult(metrics, model=compact)


@dataclass(frozen=True)
class PretrainThenMethod:
    """Pretrain dense, wrap, train with the method, strip, fine-tune the compact model.

    ``pretrain_epochs`` dense (default: the config's), ``method_epochs`` wrapped
    (default: all the rest), the rest of ``epochs`` fine-tuning; ``accuracy_after_cut``
    is the stripped model's, before fine-tuning.
    """

    method_epochs: int | None = 1
    pretrain_epochs: int | None = None

    def pretrain(self, config: BenchmarkConfig) -> int:
        """The dense epochs before the method."""
        return config.pretrain_epochs if self.pretrain_epochs is None else self.pretrain_epochs

    def with_method(self, config: BenchmarkConfig) -> int:
        """The epochs with the method."""
        if self.method_epochs is None:
            return config.epochs - self.pretrain(config)
        return self.method_epochs

    def check(self, config: BenchmarkConfig) -> None:
        if (
            self.with_method(config) < 1
            or self.pretrain(config) + self.with_method(config) > config.epochs
        ):
            raise ValueError(
                f"pretrain_then_method needs pretrain_epochs ({self.pretrain(config)}) + "
                f"method_epochs ({self.with_method(config)} >= 1) <= epochs ({config.epochs})"
            )

    def run(self, row: MethodRow, data: Data, seed: int) -> RowResult:
        config = data.config
        keras.utils.set_random_seed(seed)
        model = reference_model(config)
        pretrain = self.pretrain(config)
        train(model, data.train(seed), pretrain, config)
        timer = StepTimer(config.timing_skip)
        result = tffp.prune_and_finetune(
            model,
            row.method(config),
            data.train(seed),
            method_epochs=self.with_method(config),
            finetune_epochs=config.epochs - pretrain - self.with_method(config),
            compile_fn=lambda model, steps: compile_model(model, steps, config.lr),
            verify_data=data.bn_batches[0],
            after_strip=lambda compact: evaluate(compact, data),
            method_callbacks=[timer],
            verbose=config.verbose,
            **row.wrap_kwargs(config),
        )
        compact = result.model
        metrics = {
            "accuracy": evaluate(compact, data),
            "accuracy_after_cut": result.after_strip,
            "widths": conv_widths(compact),
            "strip_difference": result.strip_difference,
            "strip_notes": result.notes,
        }
        reference = tffp.strip.unwrap(result.wrapped)
        metrics.update(step_time_metrics(reference, timer, data, seed))
        return RowResult(metrics, model=compact)


from_scratch = FromScratch()
"""The DCFF recipe: the method trains the compact network from scratch for all epochs."""


def pretrain_then_method(
    method_epochs: int | None = 1, pretrain_epochs: int | None = None
) -> PretrainThenMethod:
    """The recipe of methods applied to a pretrained model (FCF-style), see the class."""
    return PretrainThenMethod(method_epochs, pretrain_epochs)


@dataclass(frozen=True)
class MethodRow:
    """A training-time method row: one entry per method.

    Args:
        name: the row name (``--rows``, ``runs.jsonl``, the tables).
        method: ``config -> a fresh tffp.PruningMethod``; called only when the row
            runs (or is timed), so it may name a class that does not exist yet.
        recipe: :data:`from_scratch` (default) or :func:`pretrain_then_method`.
        allocates_itself: the method takes the MACs target in its own constructor;
            ``prune_filters`` is then called without ``target_macs_reduction``.
        after_wrap: optional ``wrapped_model -> None`` run right after wrapping
            (e.g. an initialization change of an experiment).
        default: part of the default ``--rows`` (the table).

    Example: ``MethodRow("dcff_steps", lambda config: tffp.DCFF(updates_per_epoch=10))``.
    """

    name: str
    method: Callable[[BenchmarkConfig], tffp.PruningMethod]
    recipe: Recipe = from_scratch
    allocates_itself: bool = False
    after_wrap: Callable[[keras.Model], None] | None = None
    default: bool = True

    def wrap_kwargs(self, config: BenchmarkConfig) -> dict[str, Any]:
        """Keyword arguments of ``tffp.prune_filters`` (the L1 cut's widths by default)."""
        kwargs: dict[str, Any] = {
            "round_to": config.round_to,
            "ignored_layers": config.ignored_layers,
        }
        if not self.allocates_itself:
            kwargs["target_macs_reduction"] = config.macs_reduction
        return kwargs

    def wrap(self, model: keras.Model, config: BenchmarkConfig) -> keras.Model:
        """``model`` wrapped with a fresh method for ``config``."""
        wrapped = tffp.prune_filters(model, self.method(config), **self.wrap_kwargs(config))
        if self.after_wrap is not None:
            self.after_wrap(wrapped)
        return wrapped

    def check(self, config: BenchmarkConfig) -> None:
        self.recipe.check(config)

    def run(self, data: Data, seed: int) -> RowResult:
        return self.recipe.run(self, data, seed)


# --------------------------------------------------------------------------- #
# One (row, seed) -> one record
# --------------------------------------------------------------------------- #


def run_pair(data: Data, row: Row, seed: int, dense: tffp.profiling.ModelProfile) -> dict:
    """Runs one (row, seed), exports its TFLite model and returns its record."""
    config = data.config
    keras.utils.set_random_seed(seed)
    started = time.time()
    result = row.run(data, seed)
    record = {"row": row.name, "seed": seed, "accuracy_after_cut": None, "step_time_ratio": None}
    record.update(result.metrics)
    if result.model is not None:
        record.update(model_metrics(result.model, config, row.name, seed))
        if config.int8:
            record.update(int8_metrics(result.model, data, row.name, seed))
    else:
        record["tflite_file"] = records.output_relative(config, result.tflite_path)
        record["tflite_bytes"] = result.tflite_path.stat().st_size
        record["model_file"] = records.output_relative(config, result.model_path)
    record["macs_ratio"] = record["macs"] / dense.total_macs
    record["params_ratio"] = record["params"] / dense.total_params
    record.update(seconds=round(time.time() - started, 1), config=config.recorded())
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return record


INT8_CALIBRATION_BATCHES = 4
"""Fixed BN batches (of ``batch_size`` examples) that calibrate the full-int8 conversion."""


def int8_metrics(model: keras.Model, data: Data, row: str, seed: int) -> dict:
    """The full-int8 TFLite model (int8 ops and I/O, calibrated on fixed training batches):
    its file, bytes and test accuracy (latency is measured with the others at the end)."""
    path = records.int8_tflite_path(data.config, row, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    calibration = data.bn_batches[:INT8_CALIBRATION_BATCHES]
    blob = tffp.export.to_tflite(
        model,
        str(path),
        quantization="int8",
        representative_data=calibration,
        num_calibration_steps=INT8_CALIBRATION_BATCHES * data.config.batch_size,
    )
    return {
        "int8_tflite_file": records.output_relative(data.config, path),
        "int8_tflite_bytes": len(blob),
        "int8_accuracy": tffp.export.evaluate_tflite(blob, data.test),
    }


def model_metrics(model: keras.Model, config: BenchmarkConfig, row: str, seed: int) -> dict:
    """Params, MACs, widths and the TFLite export (and, for seed 0, the saved model)."""
    prof = tffp.profile(model)
    path = records.tflite_path(config, row, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = tffp.export.to_tflite(model, str(path))
    saved = None
    if config.save_models and seed == 0:
        saved = records.model_path(config, row)
        saved.parent.mkdir(parents=True, exist_ok=True)
        model.save(saved)
    return {
        "params": prof.total_params,
        "trainable_params": prof.trainable_params,
        "macs": prof.total_macs,
        "widths": conv_widths(model),
        "tflite_file": records.output_relative(config, path),
        "tflite_bytes": len(blob),
        "model_file": records.output_relative(config, saved),
    }
