"""Re-estimating BatchNormalization statistics after pruning or surgery.

Pruning changes the distribution of every activation downstream of a cut,
so the moving mean/variance learned before are stale; recomputing them on a
few training batches (as PyTorch users do with ``reset_running_stats`` and
``momentum=None``) recovers most of the lost accuracy without training.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import tensorflow as tf

NUMPY_BATCH_SIZE = 128
"""Batch size used when ``data`` is a single array of inputs."""

_STAT_NAMES = ("moving_mean", "moving_variance", "moving_stddev")
"""Variables recalibrated; every other BN variable is restored afterwards."""


def recalibrate_batchnorm(
    model: keras.Model,
    data: tf.data.Dataset | Iterable[Any] | np.ndarray,
    steps: int | None = 50,
    *,
    reset: bool = True,
    verbose: bool | int = False,
) -> keras.Model:
    """Re-estimates the moving statistics of every BatchNormalization layer, in place.

    The model runs eagerly in training mode (``model(x, training=True)``,
    so Dropout and other training-only behaviour are active, exactly as
    PyTorch's recalibration with ``model.train()``) on up to ``steps``
    batches. Every ``keras.layers.BatchNormalization`` (also inside nested
    models and custom layers) then sees the same inputs as in a training
    step and normalizes with the batch statistics.

    With ``reset`` (default), each BN's ``moving_mean`` / ``moving_variance``
    become the exact average over the batches of the per-batch mean / (biased)
    variance of its input: the old statistics, even NaN ones, are discarded.
    With ``reset=False`` they are instead updated as during training, by an
    exponential moving average with each layer's own ``momentum``.

    BN layers with ``trainable=False`` (which Keras 3 runs in inference mode
    even under ``training=True``) are unfrozen for the passes. Afterwards
    ``momentum`` and ``trainable`` are restored and every weight other than
    the BN moving statistics is unchanged. On error the model is restored.

    Args:
        model: a Keras model (Sequential, Functional or subclassed). It is
            modified in place and returned.
        data: a ``tf.data.Dataset`` or iterable of batches ``x``, ``(x, y)``
            or ``(x, y, sample_weight)`` (tuples are unpacked like
            ``Model.fit``: ``x`` is the first element), or one NumPy array /
            tensor of inputs, cut into batches of 128.
        steps: maximum number of batches; None uses all of ``data`` (which
            must then be finite). Fewer batches are used if ``data`` ends.
        reset: exact average over the batches (True) or exponential update
            of the current statistics (False).
        verbose: show a ``keras.utils.Progbar``.

    Returns:
        ``model`` itself, with recalibrated statistics. A model without
        BatchNormalization layers is returned unchanged, with a warning.

    Raises:
        ValueError: ``steps`` < 1 or ``data`` yields no batch.

    Example:
        >>> import keras, numpy as np
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization()])
        >>> x = np.arange(12, dtype="float32").reshape(4, 3)
        >>> model = recalibrate_batchnorm(model, x, steps=1)
        >>> model.layers[0].moving_mean.numpy().tolist()
        [4.5, 5.5, 6.5]
    """
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be a positive integer or None, got {steps}")
    layers = batchnorm_layers(model)
    if not layers:
        warnings.warn(
            f"recalibrate_batchnorm: model {model.name!r} has no BatchNormalization "
            "layer; it is returned unchanged.",
            stacklevel=2,
        )
        return model
    states = [_LayerState.capture(layer) for layer in layers]
    succeeded = False
    try:
        _prepare(layers, reset)
        averages = _run_batches(model, layers, _input_batches(data, steps), steps, reset, verbose)
        if averages is not None:
            _assign_averages(layers, averages)
        succeeded = True
    finally:
        for state in states:
            state.restore(keep_statistics=succeeded)
    return model


def batchnorm_layers(model: keras.Layer) -> list[keras.layers.BatchNormalization]:
    """All BatchNormalization layers of ``model``, nested ones included, each once.

    Example:
        >>> import keras
        >>> inner = keras.Sequential([keras.Input((2,)), keras.layers.BatchNormalization()])
        >>> outer = keras.Sequential([keras.Input((2,)), inner, keras.layers.BatchNormalization()])
        >>> len(batchnorm_layers(outer))
        2
    """
    found: dict[int, keras.layers.BatchNormalization] = {}
    for layer in _all_sublayers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            found.setdefault(id(layer), layer)
    return list(found.values())


def _all_sublayers(layer: keras.Layer) -> Iterator[keras.Layer]:
    """Every layer below ``layer``, recursively (custom layers' attributes too)."""
    flatten = getattr(layer, "_flatten_layers", None)
    if flatten is not None:
        yield from flatten(include_self=False, recursive=True)
        return
    for sub in getattr(layer, "layers", []):
        yield sub
        yield from _all_sublayers(sub)


@dataclass
class _LayerState:
    """What recalibration changes on one BN layer, to be put back afterwards."""

    layer: keras.layers.BatchNormalization
    momentum: float
    trainable: bool
    values: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def capture(cls, layer: keras.layers.BatchNormalization) -> _LayerState:
        values = {_variable_key(v): np.array(v.numpy()) for v in layer.weights}
        return cls(layer, layer.momentum, layer.trainable, values)

    def restore(self, keep_statistics: bool) -> None:
        """Restores momentum, trainable and variables (except the statistics if kept)."""
        self.layer.momentum = self.momentum
        if self.layer.trainable != self.trainable:
            self.layer.trainable = self.trainable
        for variable in self.layer.weights:
            key = _variable_key(variable)
            if keep_statistics and key in _STAT_NAMES:
                continue
            variable.assign(self.values[key])


def _variable_key(variable: keras.Variable) -> str:
    """The variable's name inside its layer (``moving_mean``, ``gamma``, ...)."""
    return variable.path.rsplit("/", 1)[-1]


def _prepare(layers: list[keras.layers.BatchNormalization], reset: bool) -> None:
    """Unfreezes the layers; with ``reset``, makes each pass store its batch statistics."""
    for layer in layers:
        if not layer.trainable:
            layer.trainable = True
        if reset:
            layer.momentum = 0.0
            layer.moving_mean.assign(np.zeros(layer.moving_mean.shape, "float32"))
            layer.moving_variance.assign(np.ones(layer.moving_variance.shape, "float32"))
            if getattr(layer, "renorm", False):
                layer.moving_stddev.assign(np.ones(layer.moving_stddev.shape, "float32"))


def _run_batches(
    model: keras.Model,
    layers: list[keras.layers.BatchNormalization],
    batches: Iterator[Any],
    steps: int | None,
    reset: bool,
    verbose: bool | int,
) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Training-mode passes; with ``reset``, returns each layer's averaged (mean, var)."""
    sums = [
        (np.zeros(layer.moving_mean.shape), np.zeros(layer.moving_variance.shape))
        for layer in layers
    ]
    progbar = keras.utils.Progbar(steps, unit_name="batch") if verbose else None
    count = 0
    for x in batches:
        model(x, training=True)
        count += 1
        if reset:
            for (mean_sum, var_sum), layer in zip(sums, layers, strict=True):
                mean_sum += layer.moving_mean.numpy()
                var_sum += layer.moving_variance.numpy()
        if progbar is not None:
            progbar.update(count)
    if count == 0:
        raise ValueError("recalibrate_batchnorm: data yielded no batch")
    if not reset:
        return None
    return [(mean_sum / count, var_sum / count) for mean_sum, var_sum in sums]


def _assign_averages(
    layers: list[keras.layers.BatchNormalization],
    averages: list[tuple[np.ndarray, np.ndarray]],
) -> None:
    """Stores the averaged statistics (and the matching stddev for renorm layers)."""
    for layer, (mean, variance) in zip(layers, averages, strict=True):
        layer.moving_mean.assign(mean.astype("float32"))
        layer.moving_variance.assign(variance.astype("float32"))
        if getattr(layer, "renorm", False):
            layer.moving_stddev.assign(np.sqrt(variance + layer.epsilon).astype("float32"))


def _input_batches(data: Any, steps: int | None) -> Iterator[Any]:
    """Yields at most ``steps`` input batches ``x`` of ``data``."""
    if isinstance(data, np.ndarray | tf.Tensor):
        source: Iterable[Any] = _array_batches(data, NUMPY_BATCH_SIZE)
    else:
        source = data
    for batch in itertools.islice(source, steps):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(batch)
        yield x


def _array_batches(array: np.ndarray | tf.Tensor, batch_size: int) -> Iterator[Any]:
    """Consecutive slices of ``batch_size`` rows."""
    for start in range(0, int(array.shape[0]), batch_size):
        yield array[start : start + batch_size]
