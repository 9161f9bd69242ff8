"""The comparison protocol: data, training phases, evaluation, the compact architecture.

See ``ALGORITHMS.md`` ("How we compare"): the reference CNN
``tffp.models.fashion_cnn()``, Adam with a cosine-decay learning rate ending at 1%
of ``lr`` over each training phase, BatchNorm statistics re-estimated on fixed
training batches before every evaluation, and step timing of the wrapped and plain
training steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

import tf_filterprune as tffp
from bench.config import IMAGE_PAD, BenchmarkConfig
from bench.timing import StepTimerMixin, ratio

__all__ = [
    "Data",
    "RowResult",
    "StepTimer",
    "compact_architecture",
    "compile_model",
    "conv_widths",
    "evaluate",
    "l1_cut",
    "load_data",
    "plain_step_time",
    "reference_model",
    "ratio",
    "timed_epoch",
    "train",
]


def reference_model(config: BenchmarkConfig) -> keras.Model:
    """A fresh, randomly initialized reference model of ``config.model``."""
    if config.model == "resnet20":
        size = 28 + 2 * IMAGE_PAD[config.model]
        return tffp.models.resnet20(input_shape=(size, size, 1))
    return tffp.models.fashion_cnn()


def fashion_pipeline(config: BenchmarkConfig, split: str, batch_size: int, **kwargs):
    """``tffp.data.fashion_mnist_dataset``, zero-padded by ``IMAGE_PAD[config.model]``."""
    dataset = tffp.data.fashion_mnist_dataset(split, batch_size, **kwargs)
    pad = IMAGE_PAD[config.model]
    if not pad:
        return dataset
    paddings = [[0, 0], [pad, pad], [pad, pad], [0, 0]]
    return dataset.map(lambda x, y: (tf.pad(x, paddings), y))


@dataclass
class Data:
    """The input pipelines shared by all rows: fixed BN batches and the test set."""

    bn_batches: list[tf.Tensor]
    test: tf.data.Dataset
    config: BenchmarkConfig

    def train(self, seed: int) -> tf.data.Dataset:
        """The shuffled training pipeline of ``seed``."""
        config = self.config
        return fashion_pipeline(
            config, "train", config.batch_size, shuffle=True, limit=config.train_limit, seed=seed
        )


@dataclass
class RowResult:
    """What a row returns: the final model (or its TFLite file) and metrics."""

    metrics: dict[str, Any]
    model: keras.Model | None = None
    tflite_path: Path | None = None
    model_path: Path | None = None


class StepTimer(StepTimerMixin, keras.callbacks.Callback):
    """Records the seconds of every training step after the first ``skip`` ones.

    Put it last in the callback list so the other callbacks' per-step work is timed too.
    """


def load_data(config: BenchmarkConfig) -> Data:
    """Fixed (unshuffled) BN batches of the training subset and the test pipeline."""
    bn = fashion_pipeline(
        config, "train", config.batch_size, shuffle=False, limit=config.train_limit
    )
    test = fashion_pipeline(config, "test", 256, shuffle=False, limit=config.test_limit)
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
    """The one-shot L1 cut every compact row is compared at.

    Residual-coupled channels are left whole (``prune_residual=False``), as the
    methods' ``prune_filters`` does by default: the papers' block-internal pruning.
    """
    return tffp.prune_once(
        model,
        "l1",
        prune_residual=False,
        target_macs_reduction=config.macs_reduction,
        round_to=config.round_to,
        ignored_layers=config.ignored_layers,
    )


def compact_architecture(config: BenchmarkConfig) -> keras.Model:
    """The compact model of the L1 cut (widths only depend on the budget, not on weights)."""
    return l1_cut(reference_model(config), config)


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


def timed_epoch(
    model: keras.Model, dataset: tf.data.Dataset, config: BenchmarkConfig, callbacks=()
) -> list[float]:
    """Per-step seconds of one epoch of ``model`` (its first ``timing_skip`` steps untimed)."""
    timer = StepTimer(config.timing_skip)
    model.fit(dataset, epochs=1, verbose=0, callbacks=[*callbacks, timer], shuffle=False)
    return timer.seconds
