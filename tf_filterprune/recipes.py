"""Whole pruning runs as one call: the two-stage recipe of methods that start pretrained.

CNN-FCF (and the one-shot criteria) start from a trained model: train it with the
method at full width, strip, then fine-tune the compact model with a fresh
optimizer. :func:`prune_and_finetune` is that recipe, on plain ``model.fit``.

Example:

>>> import keras, numpy as np, tensorflow as tf, tf_filterprune as tffp
>>> x = np.random.default_rng(0).normal(size=(32, 28, 28, 1)).astype("float32")
>>> y = np.arange(32) % 10
>>> data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
>>> def compile_fn(model, steps):
...     model.compile(keras.optimizers.Adam(1e-3),
...                   keras.losses.SparseCategoricalCrossentropy(from_logits=True))
>>> result = tffp.prune_and_finetune(
...     tffp.models.fashion_cnn(), tffp.FCF.paced(epochs=1), data,
...     method_epochs=1, finetune_epochs=1, compile_fn=compile_fn, verbose=0)
>>> result.model.get_layer("conv3").filters
32
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import tensorflow as tf

from tf_filterprune.api import prune_filters
from tf_filterprune.callbacks import UpdateFilterPruning
from tf_filterprune.methods.base import PruningMethod
from tf_filterprune.strip import strip_filter_pruning

CompileFn = Callable[[keras.Model, int], None]
"""``compile_fn(model, steps)``: compiles ``model`` for a training phase of ``steps`` steps
(a fresh optimizer each call, so a learning-rate schedule can span the phase)."""


@dataclass
class PruneResult:
    """What :func:`prune_and_finetune` returns.

    Attributes:
        model: the compact model after fine-tuning.
        wrapped: the wrapped model after the method's training (for inspection).
        strip_difference: the measured max |wrapped - stripped| on ``verify_data``
            (inference mode, before recalibration and fine-tuning), or None.
        after_strip: what ``after_strip(compact)`` returned (e.g. the accuracy
            right after the cut), or None.
        notes: the strip's notes (inexact constant folds, unconverged methods).
        histories: the ``History`` of each phase, ``"method"`` and ``"finetune"``.
    """

    model: keras.Model
    wrapped: keras.Model
    strip_difference: float | None = None
    after_strip: Any = None
    notes: list[str] = field(default_factory=list)
    histories: dict[str, keras.callbacks.History] = field(default_factory=dict)


def prune_and_finetune(
    model: keras.Model,
    method: PruningMethod,
    train_data: Any,
    *,
    method_epochs: int,
    finetune_epochs: int,
    compile_fn: CompileFn,
    steps_per_epoch: int | None = None,
    calibration_data: Any = None,
    calibration_steps: int | None = 50,
    verify_data: Any = None,
    after_strip: Callable[[keras.Model], Any] | None = None,
    method_callbacks: Sequence[keras.callbacks.Callback] = (),
    finetune_callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: Any = "auto",
    **prune_filters_kwargs: Any,
) -> PruneResult:
    """Wraps a (pretrained) model, trains it with ``method``, strips it, fine-tunes.

    The two-stage recipe of CNN-FCF: ``method_epochs`` of training at full width
    with the method (e.g. ``tffp.FCF.paced(method_epochs)``: gates binary by the
    end), :func:`tffp.strip_filter_pruning`, then ``finetune_epochs`` of the
    compact model with a fresh optimizer. ``model`` is not modified.

    Args:
        model: the model to prune, usually trained already.
        method: a :class:`tffp.PruningMethod`.
        train_data: a ``tf.data.Dataset`` of ``(x, y)`` batches (shuffle it
            yourself), used by both phases.
        method_epochs: epochs with the method, >= 1.
        finetune_epochs: epochs of the compact model, >= 0.
        compile_fn: ``compile_fn(model, steps)`` compiles a model for a phase of
            ``steps`` optimizer steps; called once per phase.
        steps_per_epoch: needed when ``train_data`` has no known length.
        calibration_data: batches on which the compact model's BN statistics are
            re-estimated after the strip (recommended with BatchNormalization).
        calibration_steps: batches of ``calibration_data`` used.
        verify_data: an input batch on which the strip's difference is measured.
        after_strip: called with the compact model before fine-tuning (e.g. to
            evaluate the cut); its result is ``PruneResult.after_strip``.
        method_callbacks, finetune_callbacks: extra callbacks of each phase
            (``UpdateFilterPruning`` is added to the method phase).
        verbose: ``model.fit``'s verbosity.
        **prune_filters_kwargs: passed to :func:`tffp.prune_filters`
            (``target_macs_reduction``, ``round_to``, ``ignored_layers``, ...).

    Returns:
        A :class:`PruneResult` (``.model`` is the compact fine-tuned model).

    Raises:
        ValueError: bad epochs or a dataset of unknown length without
            ``steps_per_epoch`` (and whatever ``prune_filters`` refuses).
    """
    _check_epochs(method_epochs, finetune_epochs)
    steps = _steps_per_epoch(train_data, steps_per_epoch)
    wrapped = prune_filters(model, method, **prune_filters_kwargs)
    fit = _Phases(train_data, steps, steps_per_epoch, compile_fn, verbose)
    histories = {"method": fit(wrapped, method_epochs, [UpdateFilterPruning(), *method_callbacks])}
    notes: list[str] = []
    stripped = strip_filter_pruning(
        wrapped,
        verify_data,
        calibration_data=calibration_data,
        calibration_steps=calibration_steps,
        notes=notes,
    )
    compact, difference = stripped if verify_data is not None else (stripped, None)
    evaluated = after_strip(compact) if after_strip is not None else None
    if finetune_epochs:
        histories["finetune"] = fit(compact, finetune_epochs, finetune_callbacks)
    return PruneResult(compact, wrapped, difference, evaluated, notes, histories)


def _check_epochs(method_epochs: Any, finetune_epochs: Any) -> None:
    for name, value, low in (
        ("method_epochs", method_epochs, 1),
        ("finetune_epochs", finetune_epochs, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"prune_and_finetune: {name} must be an int >= {low}, got {value!r}.")


def _steps_per_epoch(data: Any, steps_per_epoch: int | None) -> int:
    if steps_per_epoch is not None:
        if int(steps_per_epoch) < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch!r}.")
        return int(steps_per_epoch)
    if not isinstance(data, tf.data.Dataset):
        raise ValueError(
            "prune_and_finetune: train_data must be a tf.data.Dataset of (x, y) batches; got "
            f"{type(data).__name__}."
        )
    cardinality = int(data.cardinality())
    if cardinality < 1:
        raise ValueError(
            "prune_and_finetune: train_data has no known length (cardinality "
            f"{cardinality}); pass steps_per_epoch."
        )
    return cardinality


@dataclass(frozen=True)
class _Phases:
    """Fits one phase: compiles for its number of steps, then ``model.fit``."""

    data: Any
    steps: int
    steps_per_epoch: int | None  # as the user gave it (None: the dataset's own end)
    compile_fn: CompileFn
    verbose: Any

    def __call__(self, model: keras.Model, epochs: int, callbacks) -> keras.callbacks.History:
        self.compile_fn(model, epochs * self.steps)
        return model.fit(
            self.data,
            epochs=epochs,
            steps_per_epoch=self.steps_per_epoch,
            callbacks=list(callbacks),
            verbose=self.verbose,
            shuffle=False,  # a dataset shuffles itself
        )
