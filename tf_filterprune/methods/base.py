"""The method protocol: a pruning method, the Keras wrapper it runs in, and its view of groups.

The math of a method lives apart from the Keras plumbing (as tfmot splits
``pruning_impl`` from ``pruning_wrapper``):

- :class:`PruningMethod` holds hyper-parameters only. It says how a wrapped conv
  computes its output while training (:meth:`PruningMethod.call`, by default a
  conv with :meth:`PruningMethod.effective_weights`), what state it keeps
  (:meth:`PruningMethod.create_state`), what runs at train / epoch / step
  boundaries (model-level hooks that get a :class:`PruningContext`, or
  per-layer hooks), and, at strip time, which channels of each
  :class:`PrunedGroup` stay (:meth:`PruningMethod.plan`, a :class:`ChannelPlan`).
- :class:`FilterPruningWrapper` is the Keras layer. All method state lives in its
  variables (non-trainable, or trainable for gates), so it is saved with the
  model, restored on load and mirrored by ``tf.distribute``.
- A :class:`PrunedGroup` is a channel group of the dependency graph owned by a
  method: its producer wrappers, and every weight slice that follows its channels
  (BatchNormalization, per-channel layers, each consumer's input slice).

Two width modes: *compact from the start* (``compact_width = True``, DCFF: the
wrapper outputs the kept width and its consumers are built narrow) and *full
width, decided at strip* (FCF, DPFPS, clustering). No method slices a weight:
the strip hands the plans to the surgery.

Example (a method that keeps the filters with the largest kernel norms):

>>> import keras, numpy as np, tf_filterprune as tffp
>>> class KeepLargest(tffp.PruningMethod):
...     def plan(self, group, context):
...         norms = group.channel_norms()
...         return tffp.ChannelPlan(np.sort(np.argsort(-norms)[: group.target]))
>>> wrapped = tffp.prune_filters(tffp.models.fashion_cnn(), KeepLargest(0.5))
>>> tffp.strip_filter_pruning(wrapped).get_layer("conv3").filters
32
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tf_filterprune.graph import ChannelGraph, Layout, registry

PRODUCER, NORM, CONSUMER = "producer", "norm", "consumer"
"""Roles of a :class:`GroupMember`: the group's producer filters, a normalization
layer on the channels, any other layer whose weights follow the channels."""


@dataclass(frozen=True)
class TrainingProgress:
    """Where training is when a hook runs (given by the callback).

    The wrapper's own step counter is ``wrapper.step`` (a variable, read only
    by the methods that need it, so the callback does no device read per step).

    Attributes:
        epoch: the current epoch (0-based, as in ``model.fit``).
        batch: the batch just finished within the epoch (0-based), or None at an
            epoch boundary.
        steps_per_epoch: steps in an epoch, or None when ``fit`` does not know it.
        total_epochs: the ``epochs`` of the ``fit`` call.
        steps_run: training steps since the previous step hook (more than 1 with
            ``steps_per_execution > 1``).
    """

    epoch: int
    batch: int | None
    steps_per_epoch: int | None
    total_epochs: int | None
    steps_run: int = 1

    @property
    def epoch_fraction(self) -> float | None:
        """``epoch + (batch + 1) / steps_per_epoch`` (``epoch`` at a boundary); None
        inside an epoch of unknown length."""
        if self.batch is None:
            return float(self.epoch)
        if not self.steps_per_epoch:
            return None
        return self.epoch + (self.batch + 1) / self.steps_per_epoch

    @property
    def run_fraction(self) -> float | None:
        """How far the ``fit`` call is, in [0, 1]; None when it cannot be told."""
        fraction = self.epoch_fraction
        if fraction is None or not self.total_epochs:
            return None
        return min(1.0, fraction / self.total_epochs)


@dataclass
class ChannelPlan:
    """What a method decides for one group at strip time; the surgery applies it.

    Attributes:
        keep: sorted indices of the group's channels that stay.
        consumer_map: optionally an ``(len(keep), size)`` matrix applied to every
            consumer's input slice instead of plain selection (rows of the
            identity select; sums of cluster members merge).
        note: what the method reports about this cut (e.g. removed channels
            that were not zero), or None.
    """

    keep: np.ndarray
    consumer_map: np.ndarray | None = None
    note: str | None = None

    def __post_init__(self):
        self.keep = np.sort(np.asarray(self.keep, dtype=np.int64).reshape(-1))


@dataclass
class GroupMember:
    """One weight whose slices along ``axis`` follow a group's channels.

    Attributes:
        path: the layer's path in the model graph.
        name: the weight's name (``kernel``, ``gamma``, ...).
        variable: the Keras variable (the wrapped layer's own, for a wrapper).
        axis: the axis of ``variable`` that follows the channels.
        positions: ``(size, r)`` indices along ``axis`` of each channel (r > 1 for
            a Flatten -> Dense, a depth multiplier, or a channel seen twice).
        role: :data:`PRODUCER`, :data:`NORM` or :data:`CONSUMER`.
    """

    path: str
    name: str
    variable: Any
    axis: int
    positions: np.ndarray
    role: str


@dataclass
class PrunedGroup:
    """A channel group owned by a method: its producer wrappers and every weight slice.

    Attributes:
        id: the group id in the wrapped model's channel graph.
        size: channels of the group (the wrappers' output width).
        wrappers: the producer wrappers (several for a residual stream).
        members: every weight that follows the channels.
        residual: the group is a residual stream (joined by an ``Add``).
        paths: the producers' paths in the model graph (the layers keep them when
            unwrapped).
    """

    id: int
    size: int
    wrappers: list[FilterPruningWrapper]
    members: list[GroupMember] = field(default_factory=list)
    residual: bool = False
    paths: list[str] = field(default_factory=list)

    @property
    def leader(self) -> FilterPruningWrapper:
        """The first producer wrapper; where group-wide state is read."""
        return self.wrappers[0]

    @property
    def target(self) -> int:
        """Channels the group keeps at strip (the budget given at wrap time)."""
        return int(self.leader.kept_channels)

    @property
    def name(self) -> str:
        return "+".join(w.name for w in self.wrappers)

    def trainable_members(self) -> list[GroupMember]:
        """Members that training changes (not BN moving statistics)."""
        return [m for m in self.members if m.variable.trainable]

    def channel_norms(self, members: Sequence[GroupMember] | None = None) -> np.ndarray:
        """L2 norm of each channel over ``members`` (default: the trainable ones)."""
        total = np.zeros(self.size)
        for member in self.trainable_members() if members is None else members:
            value = np.asarray(keras.ops.convert_to_numpy(member.variable), dtype=np.float64)
            total += per_channel_square_sums(value, member.axis, member.positions)
        return np.sqrt(total)


def per_channel_square_sums(value: np.ndarray, axis: int, positions: np.ndarray) -> np.ndarray:
    """Sum of squares of ``value`` at each channel's ``positions`` along ``axis``.

    >>> per_channel_square_sums(np.ones((3, 4)), 1, np.array([[0, 1], [2, 3]]))
    array([6., 6.])
    """
    axis = axis % value.ndim
    other = tuple(i for i in range(value.ndim) if i != axis)
    along = np.sum(np.square(value), axis=other) if other else np.square(value)
    return along[positions].sum(axis=1)


@dataclass
class PruningContext:
    """What a model-level hook sees (built by the callback and the strip).

    Attributes:
        model: the wrapped model.
        wrappers: the wrappers of this method, in graph order.
        groups: the groups the method owns.
        macs: the engine's exact MACs model of the wrapped model: ``macs.total``
            and ``macs.estimate({group_id: kept_count})`` (None if not built).
        progress: where training is (None outside ``fit``).
        optimizer: the model's optimizer (None outside ``fit``).
        steps_per_execution: the compiled ``steps_per_execution``.
        cache: scratch space a method may use for the length of one ``fit``
            (compiled step functions); never saved.
    """

    model: keras.Model
    wrappers: list[FilterPruningWrapper]
    groups: list[PrunedGroup]
    macs: Any = None
    progress: TrainingProgress | None = None
    optimizer: Any = None
    steps_per_execution: int = 1
    cache: dict[str, Any] = field(default_factory=dict)

    def learning_rate(self) -> float:
        """The optimizer's current learning rate (schedules evaluated at this step)."""
        if self.optimizer is None:
            raise ValueError("The learning rate is only known while training (model.fit).")
        return float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))

    def gradients(self, wrapper: FilterPruningWrapper) -> dict[str, Any]:
        """The last step's gradients of ``wrapper``'s kernel (and bias), summed over replicas.

        Only for methods with ``needs_gradients = True``.
        """
        if not wrapper.method.needs_gradients:
            raise ValueError(
                f"{type(wrapper.method).__name__} does not capture gradients "
                "(set needs_gradients = True on the method class)."
            )
        out = {"kernel": wrapper.kernel_gradient.value}
        if wrapper.bias_gradient is not None:
            out["bias"] = wrapper.bias_gradient.value
        return out


class PruningMethod:
    """Base class of the filter-pruning methods (DCFF, DPFPS, ...).

    Class attributes a method sets:
        compact_width: True when the wrapper outputs only the kept channels while
            training (DCFF); False for full width until strip.
        takes_coupled_groups: the method can own a group with several producers
            (a residual stream), shrinking or gating it as a whole.
        needs_gradients: the wrapper captures each step's kernel/bias gradients
            for :meth:`PruningContext.gradients`.
        allocates_widths: the method allocates the widths itself (from its own
            budget argument); ``prune_filters`` then takes no budget.
        needs_every_step: the step hook must run after every optimizer step
            (``steps_per_execution > 1`` is refused).

    Hooks (all optional): model level, ``on_train_begin / on_epoch_begin /
    on_epoch_end / on_step_end / on_train_end(context)``; per layer (called by the
    default model-level hooks), ``layer_epoch_begin / layer_step_end(wrapper,
    progress)``. Hooks run eagerly from the callback, after the optimizer step.

    Args:
        keep_ratio: default fraction of filters kept in (0, 1].
    """

    compact_width: bool = False
    takes_coupled_groups: bool = False
    needs_gradients: bool = False
    allocates_widths: bool = False
    needs_every_step: bool = False

    def __init__(self, keep_ratio: float = 0.5):
        if not isinstance(keep_ratio, int | float) or not (0.0 < keep_ratio <= 1.0):
            raise ValueError(
                f"{type(self).__name__}: keep_ratio must be in (0, 1], got {keep_ratio!r}."
            )
        self.keep_ratio = float(keep_ratio)

    # ------------------------------------------------------------ per layer
    def create_state(self, wrapper: FilterPruningWrapper) -> None:
        """Adds the method's variables to ``wrapper`` (called from ``build``)."""

    def effective_weights(
        self, wrapper: FilterPruningWrapper, kernel: Any, bias: Any | None
    ) -> tuple[Any, Any | None]:
        """The kernel (and bias) the wrapped conv uses in its forward pass."""
        return kernel, bias

    def call(self, wrapper: FilterPruningWrapper, inputs: Any, training: bool | None) -> Any:
        """The wrapper's output; override to add a branch or gate the outputs."""
        kernel, bias = wrapper.raw_weights(training)
        kernel, bias = self.effective_weights(wrapper, kernel, bias)
        return wrapper.convolve(inputs, kernel, bias)

    def producer_weights(self, wrapper: FilterPruningWrapper) -> list[np.ndarray]:
        """Weights of the plain layer computing what the wrapper computes in inference.

        Default: the effective kernel and bias. Its width is the wrapper's output
        width; the surgery then cuts it by the group's :class:`ChannelPlan`.
        """
        conv = wrapper.layer
        kernel, bias = self.effective_weights(
            wrapper, conv.kernel.value, conv.bias.value if conv.use_bias else None
        )
        values = [keras.ops.convert_to_numpy(kernel)]
        if bias is not None:
            values.append(keras.ops.convert_to_numpy(bias))
        return values

    def layer_epoch_begin(self, wrapper: FilterPruningWrapper, progress: TrainingProgress) -> None:
        """Per-layer update at the start of an epoch."""

    def layer_step_end(self, wrapper: FilterPruningWrapper, progress: TrainingProgress) -> None:
        """Per-layer update after a training step (only when :meth:`has_step_updates`)."""

    # ---------------------------------------------------------- model level
    def validate(self, context: PruningContext) -> None:
        """Raises ValueError when the wrapped model cannot meet the method's settings."""

    def on_train_begin(self, context: PruningContext) -> None:
        """Once at the start of ``fit``."""

    def on_epoch_begin(self, context: PruningContext) -> None:
        """At the start of every epoch (default: :meth:`layer_epoch_begin` per wrapper)."""
        for wrapper in context.wrappers:
            self.layer_epoch_begin(wrapper, context.progress)

    def on_epoch_end(self, context: PruningContext) -> None:
        """At the end of every epoch."""

    def on_step_end(self, context: PruningContext) -> None:
        """After every training step (default: :meth:`layer_step_end` per wrapper)."""
        for wrapper in context.wrappers:
            self.layer_step_end(wrapper, context.progress)

    def on_train_end(self, context: PruningContext) -> None:
        """Once at the end of ``fit``."""

    def has_step_updates(self) -> bool:
        """Whether the callback calls :meth:`on_step_end` (default: when a step hook is overridden)."""
        cls = type(self)
        return (
            cls.on_step_end is not PruningMethod.on_step_end
            or cls.layer_step_end is not PruningMethod.layer_step_end
        )

    def plan(self, group: PrunedGroup, context: PruningContext) -> ChannelPlan:
        """Which channels of ``group`` stay at strip (default: all of a compact layer)."""
        if self.compact_width:
            return ChannelPlan(np.arange(group.size))
        raise NotImplementedError(f"{type(self).__name__} must implement plan(group, context).")

    def summaries(self, wrapper: FilterPruningWrapper) -> dict[str, Any]:
        """Scalars / arrays for TensorBoard."""
        return {"kept_width": wrapper.kept_channels}

    # --------------------------------------------------------- serialization
    def get_config(self) -> dict:
        return {"keep_ratio": self.keep_ratio}

    @classmethod
    def from_config(cls, config: dict) -> PruningMethod:
        return cls(**config)

    def kind(self) -> tuple[str, str]:
        """Identifies equal methods (wrappers loaded from a file each hold a copy)."""
        return type(self).__name__, repr(sorted(self.get_config().items()))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@keras.saving.register_keras_serializable(package="tf_filterprune")
class FilterPruningWrapper(keras.layers.Wrapper):
    """Wraps a Conv2D whose filters a :class:`PruningMethod` prunes while training.

    The wrapper outputs ``out_channels`` channels: the kept width for methods
    with ``compact_width`` (the next layers are built to match), else all of
    them. ``kept_channels`` is the width the group keeps at strip.

    Args:
        layer: the Conv2D to wrap (full width).
        method: the pruning method.
        out_channels: channels the wrapper outputs (default: all filters, or
            ``kept_channels`` for a compact-width method).
        kept_channels: channels kept at strip (default: ``out_channels``, or the
            method's ``keep_ratio`` of the filters).
        round_to: kept counts are multiples of this (for methods that allocate).
        min_filters: the fewest channels a method may keep.
    """

    def __init__(
        self,
        layer: keras.layers.Layer,
        method: PruningMethod,
        out_channels: int | None = None,
        kept_channels: int | None = None,
        round_to: int = 1,
        min_filters: int = 1,
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
        filters = int(layer.filters)
        default_kept = max(int(min_filters), int(round(filters * method.keep_ratio)))
        kept = int(kept_channels or out_channels or min(filters, default_kept))
        if method.compact_width:
            out_channels = out_channels or kept
        self.out_channels = int(out_channels or filters)
        self.kept_channels = kept
        self.round_to, self.min_filters = int(round_to), int(min_filters)
        for arg, value, top in (
            ("out_channels", self.out_channels, filters),
            ("kept_channels", self.kept_channels, self.out_channels),
        ):
            if not (1 <= value <= top):
                raise ValueError(f"{arg} of '{layer.name}' must be in [1, {top}], got {value}.")

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
        self.kernel_gradient = self.bias_gradient = None
        if self.method.needs_gradients:
            self.kernel_gradient = _gradient_buffer(self.layer.kernel, "kernel_gradient")
            if self.layer.use_bias:
                self.bias_gradient = _gradient_buffer(self.layer.bias, "bias_gradient")
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
        return self.method.call(self, inputs, training)

    def raw_weights(self, training: bool | None = None) -> tuple[Any, Any | None]:
        """The wrapped conv's kernel and bias as tensors (gradients captured when training)."""
        conv = self.layer
        kernel = keras.ops.convert_to_tensor(conv.kernel)
        bias = keras.ops.convert_to_tensor(conv.bias) if conv.use_bias else None
        if training and self.kernel_gradient is not None:
            kernel = _capture_gradient(kernel, self.kernel_gradient)
            if bias is not None:
                bias = _capture_gradient(bias, self.bias_gradient)
        return kernel, bias

    def convolve(self, inputs: Any, kernel: Any, bias: Any | None) -> Any:
        """The wrapped conv's op with the given kernel and bias, then its activation."""
        conv = self.layer
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
        """The weights of the plain Conv2D that computes what this wrapper computes."""
        return self.method.producer_weights(self)

    def get_config(self):
        config = super().get_config()
        config["method"] = keras.saving.serialize_keras_object(self.method)
        config.update(
            out_channels=self.out_channels,
            kept_channels=self.kept_channels,
            round_to=self.round_to,
            min_filters=self.min_filters,
        )
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


def _gradient_buffer(variable: Any, name: str) -> keras.Variable:
    """A per-replica buffer for a step's gradient; reading it sums the replicas."""
    return keras.Variable(
        np.zeros(tuple(variable.shape), dtype="float32"),
        trainable=False,
        dtype="float32",
        name=name,
        synchronization="on_read",
        aggregation="sum",
    )


def _capture_gradient(tensor: Any, buffer: keras.Variable) -> Any:
    """Identity whose backward pass writes the incoming gradient into ``buffer``."""

    @tf.custom_gradient
    def capture(value):
        def grad(upstream):
            with tf.control_dependencies([buffer.assign(tf.cast(upstream, "float32"))]):
                return tf.identity(upstream)

        return tf.identity(value), grad

    # A variable (the kernel itself) is read here, outside the custom gradient: eagerly
    # (run_eagerly=True), tf.custom_gradient refuses a function that reads variables
    # unless its grad_fn takes them.
    return capture(tf.convert_to_tensor(tensor))


class WrapperRule(registry.ProducerRule):
    """Channel rule of a wrapper: a producer of its ``out_channels`` (see the registry)."""

    def check(self, layer, node):
        inner = registry.rule_for(layer.layer)
        return inner.check(layer.layer, node) if inner is not None else None

    def axes_for(self, layer):
        return registry.rule_for(layer.layer).axes_for(layer.layer)


registry.register_layer(FilterPruningWrapper, WrapperRule())


def wrappers_of(model: keras.Model) -> list[FilterPruningWrapper]:
    """All filter-pruning wrappers of ``model``, nested models included."""
    found = []
    for layer in model.layers:
        if isinstance(layer, FilterPruningWrapper):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found.extend(wrappers_of(layer))
    return found


# --------------------------------------------------------------------------- #
# Groups of a wrapped model
# --------------------------------------------------------------------------- #


def owned_groups(graph: ChannelGraph) -> tuple[list[PrunedGroup], list[str]]:
    """The groups of a wrapped model's graph whose producers are all wrappers of one method.

    Returns:
        ``(groups, skipped)``: the groups, in graph order, and a reason for every
        group with a wrapped producer that no method can own (left whole).
    """
    groups, skipped = [], []
    for group in graph.groups():
        producers = [graph.layers[p] for p in group.producers]
        wrapped = [p for p in producers if isinstance(p, FilterPruningWrapper)]
        if not wrapped:
            continue
        reason = _ownership_problem(group, producers, wrapped)
        if reason:
            skipped.append(reason)
            continue
        paths = list(group.producers)  # all wrapped (checked above)
        pruned = PrunedGroup(group.id, group.size, wrapped, residual=group.residual, paths=paths)
        pruned.members = _members(graph, group.id, set(group.spaces), wrapped)
        groups.append(pruned)
    return groups, skipped


def _ownership_problem(group, producers, wrapped) -> str | None:
    names = ", ".join(f"'{p.name}'" for p in producers)
    if group.reasons:
        return f"channels of {names} cannot be pruned: " + "; ".join(group.reasons[:2])
    if len(wrapped) != len(producers):
        return f"the channels of {names} are tied, but only some of them are wrapped"
    if len({w.method.kind() for w in wrapped}) > 1:
        return f"the tied layers {names} are wrapped with different methods"
    method = wrapped[0].method
    if len(wrapped) > 1 and not (method.takes_coupled_groups and not method.compact_width):
        return (
            f"{type(method).__name__} prunes layers one by one and cannot take the tied "
            f"layers {names} (a residual stream); leave them unwrapped"
        )
    return None


def _members(graph, root: int, spaces: set[int], wrapped) -> list[GroupMember]:
    producer_ids = {id(w) for w in wrapped}
    members = []
    for calls in graph.calls.values():
        call = calls[0]  # a shared layer's calls all keep the same channels
        rule = registry.rule_for(call.layer)
        if rule is None or not call.in_layouts or not call.out_layouts:
            continue
        layer = call.layer.layer if isinstance(call.layer, FilterPruningWrapper) else call.layer
        axes_by_name = rule.axes_for(call.layer)
        layouts = {
            registry.OUT: call.out_layouts[0],
            registry.IN: call.in_layouts[0],
            registry.IN_EXPANDED: call.in_layouts[0].expanded(rule.expansion(call.layer)),
        }
        for variable in getattr(layer, "weights", ()):  # keras.ops nodes have none
            name = registry.weight_name(layer, variable, axes_by_name)
            for axis, side in (axes_by_name.get(name) or {}).items():
                positions = channel_positions(layouts[side], graph, root)
                if positions is None:
                    continue
                role = _role(call, side, producer_ids, rule)
                members.append(GroupMember(call.path, name, variable, axis, positions, role))
    return members


def _role(call, side, producer_ids, rule) -> str:
    if side == registry.OUT and id(call.layer) in producer_ids:
        return PRODUCER
    if isinstance(rule, registry.NormalizationRule):
        return NORM
    return CONSUMER


def channel_positions(layout: Layout, graph: ChannelGraph, root: int) -> np.ndarray | None:
    """``(size, r)`` indices of a tensor's last axis holding each channel of group ``root``.

    None when the layout holds none of the group's channels.
    """
    columns = []
    offset = 0
    for seg in layout.segments:
        if graph.find(seg.space) == root:
            base = np.arange(seg.size)[:, None] * seg.inner + np.arange(seg.inner)[None, :]
            columns.append(base + offset)
        offset += seg.width
    if not columns:
        return None
    one = np.concatenate(columns, axis=1)  # (size, per-repeat positions)
    reps = np.arange(layout.repeat)[None, :, None] * layout.channels
    return (one[:, None, :] + reps).reshape(one.shape[0], -1)
