"""Keras callbacks that drive filter pruning during ``model.fit``.

Example:

>>> import tf_filterprune as tffp
>>> callbacks = [tffp.callbacks.UpdateFilterPruning()]
"""

from __future__ import annotations

import keras
import numpy as np

from tf_filterprune.methods.base import TrainingProgress, wrappers_of


class UpdateFilterPruning(keras.callbacks.Callback):
    """Runs each wrapped layer's per-epoch and per-step updates.

    Required when fitting a model returned by ``tffp.prune_filters``: without
    it, the first training step raises (as tfmot's ``UpdatePruningStep``).
    """

    def on_train_begin(self, logs=None):
        self._wrappers = wrappers_of(self.model)
        self._stepped = [w for w in self._wrappers if w.method.has_step_updates()]
        self._epoch = 0
        if not self._wrappers:
            raise ValueError(
                "UpdateFilterPruning: the model has no filter-pruning wrapper; "
                "wrap it with tffp.prune_filters(model, method) first."
            )

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        total = self.params.get("epochs") if self.params else None
        for wrapper in self._wrappers:
            wrapper.method.on_epoch_begin(wrapper, epoch, total)
            wrapper.epoch.assign(epoch)

    def on_train_batch_end(self, batch, logs=None):
        if not self._stepped:
            return
        params = self.params or {}
        progress = TrainingProgress(
            epoch=self._epoch,
            batch=int(batch),
            steps_per_epoch=params.get("steps"),
            total_epochs=params.get("epochs"),
        )
        for wrapper in self._stepped:  # the wrapper counts its steps itself, in the graph
            wrapper.method.on_step_end(wrapper, progress)


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
