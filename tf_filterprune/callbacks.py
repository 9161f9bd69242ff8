"""Keras callbacks that drive filter pruning during ``model.fit``.

Example:

>>> import tf_filterprune as tffp
>>> callbacks = [tffp.callbacks.UpdateFilterPruning()]
"""

from __future__ import annotations

import keras
import numpy as np

from tf_filterprune.api import method_contexts
from tf_filterprune.methods.base import PruningContext, TrainingProgress, wrappers_of


class UpdateFilterPruning(keras.callbacks.Callback):
    """Runs every pruning method's hooks at train, epoch and step boundaries.

    Required when fitting a model returned by ``tffp.prune_filters``: without
    it, the first training step raises (as tfmot's ``UpdatePruningStep``).
    Each method gets a :class:`~tf_filterprune.methods.base.PruningContext`
    (its wrappers and groups, the MACs model, the optimizer and where training
    is); hooks run eagerly after the optimizer step, outside the train step, so
    the user's ``train_step``, optimizer and distribution strategy are untouched.
    """

    def on_train_begin(self, logs=None):
        self._contexts = method_contexts(self.model, with_macs=True)
        self._stepped = [c for c in self._contexts if _method(c).has_step_updates()]
        self._epoch, self._last_batch = 0, -1
        spe = _steps_per_execution(self.model)
        for context in self._contexts:
            context.optimizer = getattr(self.model, "optimizer", None)
            context.steps_per_execution = spe
            context.progress = self._progress(None)
            method = _method(context)
            if spe > 1 and method.needs_every_step:
                raise ValueError(
                    f"{type(method).__name__} updates after every optimizer step; compile "
                    f"the model with steps_per_execution=1 (got {spe})."
                )
            method.on_train_begin(context)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._last_batch = epoch, -1
        for context in self._contexts:
            context.progress = self._progress(None)
            _method(context).on_epoch_begin(context)
            for wrapper in context.wrappers:
                wrapper.epoch.assign(epoch)

    def on_train_batch_end(self, batch, logs=None):
        if not self._stepped:
            return
        progress = self._progress(int(batch), steps_run=int(batch) - self._last_batch)
        self._last_batch = int(batch)
        for context in self._stepped:  # the wrapper counts its steps itself, in the graph
            context.progress = progress
            _method(context).on_step_end(context)

    def on_epoch_end(self, epoch, logs=None):
        for context in self._contexts:
            context.progress = self._progress(None)
            _method(context).on_epoch_end(context)

    def on_train_end(self, logs=None):
        for context in self._contexts:
            _method(context).on_train_end(context)
            context.cache.clear()

    def _progress(self, batch: int | None, steps_run: int = 1) -> TrainingProgress:
        params = self.params or {}
        return TrainingProgress(
            epoch=self._epoch,
            batch=batch,
            steps_per_epoch=params.get("steps"),
            total_epochs=params.get("epochs"),
            steps_run=max(1, steps_run),
        )


def _method(context: PruningContext):
    return context.wrappers[0].method


def _steps_per_execution(model: keras.Model) -> int:
    value = getattr(model, "steps_per_execution", None) or getattr(
        model, "_steps_per_execution", None
    )
    try:
        return int(keras.ops.convert_to_numpy(value)) if value is not None else 1
    except (TypeError, ValueError):
        return 1


class FilterPruningSummaries(keras.callbacks.Callback):
    """Writes TensorBoard scalars and histograms of each wrapped layer per epoch.

    Kept widths, temperature, penalties or gate values: whatever the method's
    ``summaries`` reports.

    Args:
        log_dir: the TensorBoard log directory.
    """

    def __init__(self, log_dir: str):
        super().__init__()
        self.log_dir = log_dir
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default():
            for wrapper in wrappers_of(self.model):
                for key, value in wrapper.method.summaries(wrapper).items():
                    tag = f"{wrapper.name}/{key}"
                    if np.ndim(value) == 0:
                        tf.summary.scalar(tag, float(value), step=epoch)
                    else:
                        tf.summary.histogram(tag, np.asarray(value), step=epoch)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
