"""The training-time API's two halves: a method (strategy) and the Keras wrapper.

A :class:`PruningMethod` holds hyper-parameters only and says how a wrapped
conv's effective kernel is formed, what state it keeps, what runs per epoch
and per step, and what the layer becomes when stripped. All state lives in
non-trainable variables of the :class:`FilterPruningWrapper`, so it is saved
with the model, restored on load and mirrored by ``tf.distribute``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf


@dataclass(frozen=True)
class TrainingProgress:
    """Where training is when a per-step hook runs (given by the callback).

    The wrapper's own step counter is ``wrapper.step`` (a variable, read only
    by the methods that need it, so the callback does no device read per step).

    Attributes:
        epoch: the current epoch (0-based, as in ``model.fit``).
        batch: the batch just finished within the epoch (0-based).
        steps_per_epoch: steps in an epoch, or None when ``fit`` does not know it.
        total_epochs: the ``epochs`` of the ``fit`` call.
    """

    epoch: int
    batch: int
    steps_per_epoch: int | None
    total_epochs: int | None

    @property
    def epoch_fraction(self) -> float | None:
        """``epoch + (batch + 1) / steps_per_epoch``; None without ``steps_per_epoch``."""
        if not self.steps_per_epoch:
            return None
        return self.epoch + (self.batch + 1) / self.steps_per_epoch


class PruningMethod:
    """Base class of the filter-pruning methods (DCFF, ...).

    Subclasses implement :meth:`create_state`, :meth:`effective_weights`,
    :meth:`on_epoch_begin` (and optionally :meth:`on_step_end`) and
    :meth:`get_config`.

    Args:
        keep_ratio: default fraction of filters kept in (0, 1].
    """

    def __init__(self, keep_ratio: float = 0.5):
        if not isinstance(keep_ratio, int | float) or not (0.0 < keep_ratio <= 1.0):
            raise ValueError(
                f"{type(self).__name__}: keep_ratio must be in (0, 1], got {keep_ratio!r}."
            )
        self.keep_ratio = float(keep_ratio)

    # ------------------------------------------------------------ per layer
    def create_state(self, wrapper: FilterPruningWrapper) -> None:
        """Adds the method's non-trainable variables to ``wrapper``."""

    def effective_weights(
        self, wrapper: FilterPruningWrapper, kernel: Any, bias: Any | None
    ) -> tuple[Any, Any | None]:
        """The kernel (and bias) the wrapped conv uses in its forward pass."""
        raise NotImplementedError

    def on_epoch_begin(self, wrapper: FilterPruningWrapper, epoch: int, total_epochs: int) -> None:
        """Per-epoch update (runs eagerly, from the callback)."""

    def on_step_end(self, wrapper: FilterPruningWrapper, progress: TrainingProgress) -> None:
        """Per-step update (runs eagerly, from the callback, when :meth:`has_step_updates`)."""

    def has_step_updates(self) -> bool:
        """Whether the callback calls :meth:`on_step_end` (default: when it is overridden)."""
        return type(self).on_step_end is not PruningMethod.on_step_end

    def summaries(self, wrapper: FilterPruningWrapper) -> dict[str, Any]:
        """Scalars / arrays for TensorBoard."""
        return {"kept_width": wrapper.out_channels}

    # --------------------------------------------------------- serialization
    def get_config(self) -> dict:
        return {"keep_ratio": self.keep_ratio}

    @classmethod
    def from_config(cls, config: dict) -> PruningMethod:
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class FilterPruningWrapper(keras.layers.Wrapper):
    """Wraps a Conv2D whose filters a :class:`PruningMethod` prunes while training.

    The wrapper outputs ``out_channels`` channels (DCFF's compact width) or all
    of them (methods that gate filters); the next layers are built to match.

    Args:
        layer: the Conv2D to wrap (full width).
        method: the pruning method.
        out_channels: channels the wrapper outputs (default: all filters).
    """

    def __init__(
        self,
        layer: keras.layers.Layer,
        method: PruningMethod,
        out_channels: int | None = None,
        **kwargs,
    ):
        if not isinstance(layer, keras.layers.Conv2D) or getattr(layer, "groups", 1) != 1:
            raise ValueError(
                f"FilterPruningWrapper wraps Conv2D layers (groups=1); got "
                f"'{layer.name}' ({type(layer).__name__}). Leave it out of the pruned layers "
                "(ignored_layers) or prune it with prune_once."
            )
        if not isinstance(method, PruningMethod):
            raise ValueError(f"`method` must be a PruningMethod, got {type(method).__name__}.")
        kwargs.setdefault("name", layer.name)
        super().__init__(layer, **kwargs)
        self.method = method
        self.out_channels = int(out_channels or layer.filters)
        if not (1 <= self.out_channels <= layer.filters):
            raise ValueError(
                f"out_channels of '{layer.name}' must be in [1, {layer.filters}], "
                f"got {out_channels}."
            )

    def build(self, input_shape):
        super().build(input_shape)
        self.epoch = self.add_weight(
            name="epoch", shape=(), dtype="int32", initializer="zeros", trainable=False
        )
        self.epoch.assign(-1)
        self.step = self.add_weight(
            name="step",
            shape=(),
            dtype="int64",
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
        )
        self.method.create_state(self)

    def call(self, inputs, training=None):
        if training:
            tf.debugging.assert_non_negative(
                self.epoch,
                message=(
                    f"'{self.name}' is wrapped for filter pruning: train it with "
                    "model.fit(..., callbacks=[tffp.callbacks.UpdateFilterPruning()])."
                ),
            )
            self.step.assign_add(1)  # in the graph: no per-step eager work in the callback
        conv = self.layer
        kernel, bias = self.method.effective_weights(
            self, conv.kernel, conv.bias if conv.use_bias else None
        )
        outputs = conv.convolution_op(inputs, kernel)
        if bias is not None:
            outputs = keras.ops.add(outputs, bias)
        if conv.activation is not None:
            outputs = conv.activation(outputs)
        return outputs

    def compute_output_shape(self, input_shape):
        shape = list(self.layer.compute_output_shape(input_shape))
        shape[-1] = self.out_channels
        return tuple(shape)

    def stripped_weights(self) -> list[np.ndarray]:
        """The weights of the plain Conv2D that replaces this wrapper."""
        conv = self.layer
        kernel, bias = self.method.effective_weights(
            self, conv.kernel, conv.bias if conv.use_bias else None
        )
        values = [keras.ops.convert_to_numpy(kernel)]
        if bias is not None:
            values.append(keras.ops.convert_to_numpy(bias))
        return values

    def get_config(self):
        config = super().get_config()
        config["method"] = keras.saving.serialize_keras_object(self.method)
        config["out_channels"] = self.out_channels
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["layer"] = keras.saving.deserialize_keras_object(
            config["layer"], custom_objects=custom_objects
        )
        config["method"] = keras.saving.deserialize_keras_object(
            config["method"], custom_objects=custom_objects
        )
        return cls(**config)


def wrappers_of(model: keras.Model) -> list[FilterPruningWrapper]:
    """All filter-pruning wrappers of ``model``, nested models included."""
    found = []
    for layer in model.layers:
        if isinstance(layer, FilterPruningWrapper):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found.extend(wrappers_of(layer))
    return found
