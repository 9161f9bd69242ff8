"""The per-layer channel registry, keyed by layer (or operation) class.

Each entry is a :class:`LayerRule`: how the layer maps the channel layouts of
its inputs to those of its outputs (used by the dependency graph), which axes of
which weights follow the input or the output channels (used by the surgery),
and how its config and call arguments change when its width changes. Supporting
a new layer type is one :func:`register_layer` call, used by the graph and the
surgery alike.

``keras.ops`` calls in a Functional model (``x + 3.0``, ``keras.ops.relu6(x)``,
``keras.ops.split(x, 2, axis=-1)``) are ``Operation`` nodes that are not
layers; their classes (``keras.src.ops.numpy.Add``...) have entries in the same
registry. Whatever has no entry makes the channel groups it touches unprunable,
with the reason recorded.

Example:

>>> import keras
>>> from tf_filterprune.graph import registry
>>> registry.rule_for(keras.layers.Conv2D(8, 3)).width_key
'filters'
>>> type(registry.rule_for(keras.src.ops.numpy.Add())).__name__
'ElementwiseRule'
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from tf_filterprune.graph.layout import Layout, Segment

if TYPE_CHECKING:
    from tf_filterprune.graph.dependency import GraphBuilder, LayerCall

# Sides a weight axis can follow: the layer's (first) input channels, the input
# channels expanded by a depth multiplier, or the layer's output channels.
IN, IN_EXPANDED, OUT = "in", "in_expanded", "out"

WeightAxes = dict[str, dict[int, str]]
KeepOf = Callable[[int], "np.ndarray | None"]  # space id -> kept channels (None: all)


class LayerRule:
    """Base rule: channels pass through unchanged (one input, one output).

    Attributes:
        weight_axes: weight name -> {axis: side}; sides are ``"in"``,
            ``"in_expanded"`` and ``"out"``.
        width_key: config key holding the output width (``"filters"``), if any.
    """

    weight_axes: WeightAxes = {}
    width_key: str | None = None

    def __init__(self, weight_axes: WeightAxes | None = None, width_key: str | None = None):
        if weight_axes is not None:
            self.weight_axes = weight_axes
        if width_key is not None:
            self.width_key = width_key

    def check(self, layer: keras.Layer, node: Any) -> str | None:
        """Returns a reason the layer (in this call) cannot follow channel cuts, or None."""
        data_format = getattr(layer, "data_format", "channels_last")
        if (data_format or keras.config.image_data_format()) == "channels_first":
            return "uses data_format='channels_first' (only channels_last is supported)"
        return None

    def propagate(
        self, layer: keras.Layer, in_layouts: list[Layout], node: Any, ctx: GraphBuilder
    ) -> list[Layout]:
        """Maps the input layouts of one call to its output layouts."""
        return [in_layouts[0]]

    def axes_for(self, layer: keras.Layer) -> WeightAxes:
        """Weight name -> {axis: side} for this layer instance."""
        return self.weight_axes

    def expansion(self, layer: keras.Layer) -> int:
        """Depth multiplier applied to the input channels (``in_expanded`` side)."""
        return 1

    def resize_config(self, config: dict, out_width: int, out_shape: tuple) -> dict:
        """Returns the config of the layer rebuilt with ``out_width`` output channels."""
        if self.width_key is not None:
            config = dict(config, **{self.width_key: int(out_width)})
        return config

    def cut_config(self, layer: Any, config: dict, call: LayerCall, keep_of: KeepOf) -> dict:
        """The config of the layer (or operation) in the compact model.

        ``keep_of(space)`` gives the kept channels of a channel space (None: all
        kept). The default resizes the first output with :meth:`resize_config`
        when its width changes; a rule whose config depends on more (the
        section sizes of a split) overrides this.
        """
        if not call.out_layouts:
            return config
        layout = call.out_layouts[0]
        width = layout.cut_width(keep_of)
        if width == layout.width:
            return config
        return self.resize_config(config, width, call.out_shapes[0])

    def cut_arguments(
        self, layer: Any, args: tuple, kwargs: dict, call: LayerCall, keep_of: KeepOf
    ) -> tuple[tuple, dict]:
        """The call arguments of the layer (or operation) in the compact model.

        ``args`` and ``kwargs`` are those of the rebuilt call (tensors already
        replaced by the compact model's); the default keeps them. An elementwise
        operation with a per-channel constant (``x * np.array([...])``) cuts it.
        """
        return args, kwargs


class ProducerRule(LayerRule):
    """A layer that creates a new channel space (Conv, Dense, Conv transpose)."""

    def check(self, layer, node):
        reason = super().check(layer, node)
        if reason is None and getattr(layer, "groups", 1) > 1:
            reason = (
                f"is a grouped convolution (groups={layer.groups}); cutting its channels "
                "would break the group structure, so its input and output are left whole"
            )
        return reason

    def propagate(self, layer, in_layouts, node, ctx):
        return [ctx.producer_layout(int(node.outputs[0].shape[-1]), layer)]

    def mixes(self, layer: Any) -> bool:
        """True when the layer mixes its input channels (a consumer), as convs and Dense do."""
        return True


CHANNEL_MIXING_ACTIVATIONS = frozenset({"softmax", "log_softmax"})
"""Activations computed across the channel axis: a producer fused with one cannot
lose output channels without changing the kept ones."""


def channel_mixing_activation(layer: Any) -> str | None:
    """The name of ``layer``'s fused activation if it mixes channels (softmax), else None.

    >>> import keras
    >>> channel_mixing_activation(keras.layers.Dense(3, activation="softmax"))
    'softmax'
    >>> channel_mixing_activation(keras.layers.Dense(3, activation="relu")) is None
    True
    """
    activation = getattr(layer, "activation", None)
    name = getattr(activation, "__name__", None)
    return name if name in CHANNEL_MIXING_ACTIVATIONS else None


def conv_grouping(layer: Any) -> str:
    """How a conv's ``groups`` splits its channels: ``"plain"``, ``"depthwise"`` or ``"grouped"``.

    ``"depthwise"``: ``groups`` equals the input channels (one input channel per
    group, ``filters = channels * multiplier``), as ConvNeXt's depthwise
    ``Conv2D(groups=channels)``; ``"grouped"``: ``1 < groups < channels``.

    >>> import keras
    >>> conv = keras.layers.Conv2D(16, 3, groups=8)
    >>> conv.build((None, 8, 8, 8))
    >>> conv_grouping(conv), tuple(conv.kernel.shape)
    ('depthwise', (3, 3, 1, 16))
    """
    groups = int(getattr(layer, "groups", 1) or 1)
    if groups == 1:
        return "plain"
    kernel = getattr(layer, "kernel", None)
    if kernel is not None and int(kernel.shape[-2]) == 1:
        return "depthwise"
    return "grouped"


def kernel_groups(layer: Any) -> int:
    """``groups`` of a grouped (not depthwise) conv, whose kernel holds ``in/groups`` inputs; else 1.

    The surgery expands such a kernel to a block-diagonal ``(..., in, filters)``
    one, cuts it as a plain conv's, and packs it back.
    """
    if isinstance(rule_for(layer), ConvRule) and conv_grouping(layer) == "grouped":
        return int(layer.groups)
    return 1


class ConvRule(ProducerRule):
    """Conv1D/2D/3D, grouped convolutions (``groups > 1``) included.

    - ``groups == 1``: a producer of new channels, mixing all its inputs.
    - ``groups == in_channels`` (ConvNeXt's depthwise conv): like
      ``DepthwiseConv2D``, output channel ``c*m + k`` comes from input channel
      ``c`` (``m = filters / groups``); in and out are one group and a cut keeps
      ``groups = kept input channels``.
    - otherwise: output group ``g`` reads only input group ``g``. The output
      channels and the input channels are each cut within their groups, the
      same number kept in every group (the channel groups record this as
      ``ChannelGroup.blocks``); ``groups`` is unchanged. Where the input is not
      one layer's channels (a concatenation), the input side is left whole
      with the reason; the output side still prunes.
    """

    def check(self, layer, node):
        return LayerRule.check(self, layer, node)

    def propagate(self, layer, in_layouts, node, ctx):
        grouping = conv_grouping(layer)
        if grouping == "depthwise":
            return [in_layouts[0].expanded(self.expansion(layer))]
        out = ctx.producer_layout(int(node.outputs[0].shape[-1]), layer)
        if grouping == "grouped":
            ctx.require_blocks(in_layouts[0], int(layer.groups), layer, "input")
            ctx.require_blocks(out, int(layer.groups), layer, "output")
        return [out]

    def axes_for(self, layer):
        if conv_grouping(layer) == "depthwise":
            return {"kernel": {-1: OUT}, "bias": {0: OUT}}
        return self.weight_axes

    def expansion(self, layer):
        if conv_grouping(layer) == "depthwise":
            return int(layer.filters) // int(layer.groups)
        return 1

    def mixes(self, layer) -> bool:
        return conv_grouping(layer) != "depthwise"

    def cut_config(self, layer, config, call, keep_of):
        config = super().cut_config(layer, config, call, keep_of)
        if conv_grouping(layer) == "depthwise":
            config = dict(config, groups=int(config["filters"]) // self.expansion(layer))
        return config


class DepthwiseRule(LayerRule):
    """DepthwiseConv: output channel ``c*m + k`` comes from input channel ``c``."""

    weight_axes = {"kernel": {-2: IN}, "bias": {0: OUT}}

    def expansion(self, layer):
        return int(layer.depth_multiplier)

    def propagate(self, layer, in_layouts, node, ctx):
        return [in_layouts[0].expanded(self.expansion(layer))]


class SeparableRule(ProducerRule):
    """SeparableConv: a depthwise step on the input, then a pointwise producer."""

    weight_axes = {
        "depthwise_kernel": {-2: IN},
        "pointwise_kernel": {-2: IN_EXPANDED, -1: OUT},
        "bias": {0: OUT},
    }
    width_key = "filters"

    def expansion(self, layer):
        return int(layer.depth_multiplier)


class NormalizationRule(LayerRule):
    """BatchNormalization over the channel axis: per-channel statistics and affine terms.

    Each channel is normalized with its own statistics, so a cut keeps the
    other channels' outputs exactly (in inference mode).
    """

    def check(self, layer, node):
        if not _only_channel_axis(layer.axis, node):
            return f"normalizes over axis {layer.axis}, not only the channel axis"
        return None


class PerChannelRule(LayerRule):
    """A layer that applies its own weights channel by channel (``y[..., c] = f(x[..., c], w[c])``).

    ConvNeXt's ``LayerScale`` (``x * gamma``), a learned per-channel bias or
    scale: the channels pass through, each weight named in ``weight_axes`` is
    sliced on its channel axis (side ``"in"``), and ``width_key`` names the
    config entry holding the channel count, if any (``"projection_dim"``).
    A weight the rule does not name makes the layer refuse cuts (never a
    silently wrong one).

    Example: a layer ``ChannelScale`` with one weight ``scale`` of shape (C,) and
    a config entry ``channels`` registers as
    ``tffp.register_layer(ChannelScale, PerChannelRule({"scale": {0: "in"}}, "channels"))``.
    """

    def check(self, layer, node):
        reason = super().check(layer, node)
        if reason is not None:
            return reason
        axes = self.axes_for(layer)
        width = node.input_tensors[0].shape[-1] if node.input_tensors else None
        for variable in getattr(layer, "weights", ()):
            name = weight_name(layer, variable, axes)
            if name not in axes:
                return (
                    f"has a weight '{name}' that its per-channel rule does not name, so "
                    "the surgery could not cut it"
                )
            for axis in axes[name]:
                if width is not None and int(variable.shape[axis]) != int(width):
                    return (
                        f"has a weight '{name}' of shape {tuple(variable.shape)} whose axis "
                        f"{axis} is not the {width} input channels"
                    )
        return None


class ChannelNormRule(NormalizationRule):
    """LayerNormalization / RMSNormalization / UnitNormalization over the channel axis.

    The affine weights (gamma, beta, scale) are per channel and are sliced, but
    the statistics are taken over all channels: removing a channel changes the
    normalized value of every kept one. The cut is structurally right but not
    output-exact (as in Torch-Pruning); the group records why in
    ``ChannelGroup.inexact`` and the surgery's ``notes`` say so.
    """

    def propagate(self, layer, in_layouts, node, ctx):
        ctx.mark_inexact(
            in_layouts[0].spaces,
            f"'{ctx.name_of(layer)}' ({type(layer).__name__}) normalizes over the channels: "
            "removing some changes the statistics of the kept ones (the cut is not "
            "output-exact; fine-tune after it)",
        )
        return [in_layouts[0]]


class LastAxisNormRule(ChannelNormRule):
    """A normalization over the last (channel) axis with no ``axis`` argument.

    keras_hub's MobileNetV5 ``RmsNorm2d``: ``x / rms(x over channels) * gamma``.
    Not output-exact, as :class:`ChannelNormRule`; ``channels_first`` is refused.
    """

    def check(self, layer, node):
        return LayerRule.check(self, layer, node)


class GroupNormRule(ChannelNormRule):
    """GroupNormalization: exact per channel when each channel is its own group.

    ``groups == channels`` (instance normalization) is per channel and exact;
    ``groups == 1`` normalizes over all channels (like LayerNormalization, not
    exact); other group counts tie channels in fixed-size groups, so the layer
    refuses cuts.
    """

    def check(self, layer, node):
        if not _only_channel_axis(layer.axis, node):
            return f"normalizes over axis {layer.axis}, not only the channel axis"
        groups, width = int(layer.groups), node.input_tensors[0].shape[-1]
        if groups not in (1, width):
            return (
                f"normalizes {width} channels in {groups} groups; cutting channels would "
                "change the group structure"
            )
        return None

    def propagate(self, layer, in_layouts, node, ctx):
        if int(layer.groups) == 1:
            return super().propagate(layer, in_layouts, node, ctx)
        return [in_layouts[0]]

    def resize_config(self, config, out_width, out_shape):
        if int(config["groups"]) == 1:
            return config
        return dict(config, groups=int(out_width))


class PReLURule(LayerRule):
    """PReLU: a per-channel ``alpha`` follows the input channels."""

    def axes_for(self, layer):
        if int(layer.alpha.shape[-1]) == 1:
            return {}  # one alpha shared by all channels: nothing to slice
        return {"alpha": {-1: IN}}


class SoftmaxOverChannelsRule(LayerRule):
    """Softmax over the channel axis couples all channels: refuse a cut."""

    def check(self, layer, node):
        axis = getattr(layer, "axis", -1)
        axes = axis if isinstance(axis, list | tuple) else [axis]
        rank = len(node.outputs[0].shape)
        if any(a % rank == rank - 1 for a in axes):
            return "is a softmax over the channel axis (every channel depends on all others)"
        return None


class ActivationRule(LayerRule):
    """``Activation``: elementwise, unless it is a softmax over channels."""

    def check(self, layer, node):
        name = getattr(layer.activation, "__name__", str(layer.activation))
        if name in ("softmax", "log_softmax"):
            return f"applies {name} over the channel axis"
        return super().check(layer, node)


class FlattenRule(LayerRule):
    """Flatten: channel ``c`` of an ``H x W x C`` input becomes rows ``p*C + c``."""

    def check(self, layer, node):
        if getattr(layer, "data_format", "channels_last") == "channels_first":
            return "flattens in channels_first order"
        return None

    def propagate(self, layer, in_layouts, node, ctx):
        shape = tuple(node.input_tensors[0].shape)[1:-1]
        if any(d is None for d in shape):
            ctx.forbid(
                in_layouts[0].spaces, f"'{layer.name}' flattens unknown spatial dims {shape}"
            )
            return [ctx.opaque(node.outputs[0], layer, "output of a Flatten of unknown size")]
        positions = 1
        for d in shape:
            positions *= int(d)
        return [in_layouts[0].flattened(positions)]

    def resize_config(self, config, out_width, out_shape):
        return config


def reshaped_layout(layout, node):
    """The layout after a reshape that keeps channels last and whole, or flattens; else None.

    A row-major reshape that keeps the last dimension keeps every channel in
    place; a flatten to one axis puts channel ``c`` of position ``p`` at
    ``p*C + c``. Anything else mixes channels with other axes.
    """
    in_shape = tuple(node.input_tensors[0].shape)[1:]
    out_shape = tuple(node.outputs[0].shape)[1:]
    if in_shape and out_shape and in_shape[-1] == out_shape[-1] and in_shape[-1] is not None:
        return layout
    if len(out_shape) == 1 and in_shape and all(d is not None for d in in_shape):
        return layout.flattened(int(np.prod(in_shape[:-1], dtype=np.int64)))
    return None


def _reshape_text(node) -> str:
    in_shape = tuple(node.input_tensors[0].shape)[1:]
    return f"reshapes {in_shape} to {tuple(node.outputs[0].shape)[1:]}"


class ReshapeRule(LayerRule):
    """Reshape that keeps the channel axis last and whole, or flattens to 1-D."""

    def propagate(self, layer, in_layouts, node, ctx):
        kept = reshaped_layout(in_layouts[0], node)
        if kept is not None:
            return [kept]
        ctx.forbid(in_layouts[0].spaces, f"'{layer.name}' {_reshape_text(node)}")
        return [ctx.opaque(node.outputs[0], layer, "output of a channel-mixing Reshape")]

    def resize_config(self, config, out_width, out_shape):
        target = list(config["target_shape"])
        if target[-1] != -1:
            target[-1] = int(out_width)
        return dict(config, target_shape=tuple(target))


class MergeRule(LayerRule):
    """Add / Subtract / Multiply / Average / Maximum / Minimum: all inputs tie.

    Inputs of width 1 broadcast over the channels and are not tied.
    ``residual`` marks the joins that form a residual stream (not Multiply,
    which gates a feature map in squeeze-excite blocks).
    """

    def __init__(self, residual: bool = True):
        super().__init__()
        self.residual = residual

    def propagate(self, layer, in_layouts, node, ctx):
        full = _last_dim(node.outputs[0])
        if full is None:
            full = max(lay.width for lay in in_layouts)
        tied = [lay for lay in in_layouts if lay.width == full]
        if not tied:  # every channel comes from a constant broadcast over width-1 inputs
            return [ctx.opaque(node.outputs[0], layer, "channels made by broadcasting a constant")]
        joined = ctx.unify(tied, layer)
        if self.residual and len(tied) > 1:
            ctx.mark_residual(joined)
        return [joined]


class ConcatenateRule(LayerRule):
    """Concatenate (layer or ``keras.ops.concatenate``): channel layouts laid end to end."""

    def check(self, layer, node):
        listed = node.arguments.args[0] if node.arguments.args else None
        if isinstance(listed, list | tuple) and len(listed) != len(node.input_tensors):
            return "concatenates constants with tensors (only tensors are supported)"
        return None

    def propagate(self, layer, in_layouts, node, ctx):
        rank = len(node.outputs[0].shape)
        axis = layer.axis if layer.axis >= 0 else rank + layer.axis
        if axis != rank - 1:
            return [ctx.unify(in_layouts, layer)]
        if any(lay.repeat != 1 for lay in in_layouts):
            spaces = [s for lay in in_layouts for s in lay.spaces]
            ctx.forbid(spaces, f"'{layer.name}' concatenates flattened tensors")
            return [ctx.opaque(node.outputs[0], layer, "concatenation of flattened tensors")]
        return [Layout(tuple(seg for lay in in_layouts for seg in lay.segments))]


class LambdaRule(LayerRule):
    """``Lambda``: an arbitrary Python function, so its channels are never cut.

    The layers before and after it stay prunable where no channel group passes
    through it (a ``Lambda(lambda t: t / 255.0)`` right after the input); a
    group whose channels enter or leave a Lambda is left whole, with the reason
    recorded. A user who knows their Lambdas are elementwise can register
    ``LayerRule()`` for ``keras.layers.Lambda`` instead.
    """

    def check(self, layer, node):
        return (
            "is a Lambda layer: its effect on channels is unknown (an arbitrary Python "
            "function), so the channels it reads and writes are left whole"
        )


class ElementwiseRule(MergeRule):
    """An elementwise ``keras.ops`` call on tensors and constants.

    ``add``, ``subtract``, ``multiply``, ``divide``, ``maximum``, ``minimum``,
    ``relu``, ``relu6``, ``sigmoid``, ``hard_sigmoid``, ``silu``, ``gelu``,
    ``clip``, ``cast``... and the Python operators on Keras tensors
    (``x + 3.0``, ``x * 0.5``). Tensor inputs of the output's width tie (as the
    merge layers do); width-1 inputs and scalars broadcast. A constant argument
    with one value per channel (``x * np.array([...])``) is cut with the channels.
    """

    def cut_arguments(self, layer, args, kwargs, call, keep_of):
        layout = call.out_layouts[0]
        kept = layout.kept_indices(keep_of)
        if len(kept) == layout.width or layout.width <= 1:
            return args, kwargs

        def cut(value):
            if isinstance(value, keras.KerasTensor) or not hasattr(value, "shape"):
                return value
            shape = tuple(value.shape)
            if not shape or shape[-1] != layout.width:
                return value
            return np.take(np.asarray(keras.ops.convert_to_numpy(value)), kept, axis=-1)

        return keras.tree.map_structure(cut, args), keras.tree.map_structure(cut, kwargs)


class ReduceRule(LayerRule):
    """``keras.ops.mean / max / min / sum / var / std`` over some axes.

    Over spatial (or batch) axes the channels stay last and pass through, with
    or without ``keepdims``; a reduction over the channel axis mixes every
    channel into its output, so those channels are left whole.
    """

    def check(self, op, node):
        rank = len(node.input_tensors[0].shape)
        axes = _axes_of(getattr(op, "axis", None), rank)
        if rank - 1 in axes:
            return "reduces over the channel axis (each output value depends on every channel)"
        return None


class SoftmaxOpRule(LayerRule):
    """``keras.ops.softmax / log_softmax``: refused over the channel axis."""

    def check(self, op, node):
        rank = len(node.input_tensors[0].shape)
        if rank - 1 in _axes_of(getattr(op, "axis", -1), rank):
            return "is a softmax over the channel axis (every channel depends on all others)"
        return None


class PadRule(LayerRule):
    """``keras.ops.pad``: spatial padding passes through; constant channel padding adds
    channels of its own (unprunable) before and after the input's."""

    def check(self, op, node):
        before, after = _pad_pairs(op, len(node.input_tensors[0].shape))[-1]
        if (before or after) and getattr(op, "mode", "constant") != "constant":
            return f"pads the channel axis in mode '{op.mode}' (channels copied from others)"
        return None

    def propagate(self, op, in_layouts, node, ctx):
        layout = in_layouts[0]
        before, after = (int(v) for v in _pad_pairs(op, len(node.input_tensors[0].shape))[-1])
        if not (before or after):
            return [layout]
        if layout.repeat != 1:
            ctx.forbid(
                layout.spaces, f"'{ctx.name_of(op)}' pads the channels of a flattened tensor"
            )
            return [ctx.opaque(node.outputs[0], op, "channel padding of a flattened tensor")]
        reason = f"'{ctx.name_of(op)}': channels added by padding (constant)"
        pads = [Segment(ctx.new_space(n, None, reason), n) for n in (before, after)]
        segments = (pads[0],) * bool(before) + layout.segments + (pads[1],) * bool(after)
        return [Layout(segments)]


class SplitRule(LayerRule):
    """``keras.ops.split`` on the channel axis: each output takes its range of channels.

    A boundary inside one layer's channels splits that layer's channel space
    in two (each part then prunes on its own, or ties to whatever it meets);
    after a cut the section sizes are rewritten from the kept widths. A split
    on another axis passes the channels through to every output.
    """

    def propagate(self, op, in_layouts, node, ctx):
        layout = in_layouts[0]
        if not self._on_channels(op, node):
            return [layout] * len(node.outputs)
        bounds = []
        start = 0
        for out in node.outputs:
            width = int(out.shape[-1])
            bounds.append((start, start + width))
            start += width
        return ctx.sub_layouts(layout, bounds, op, node.outputs)

    def cut_config(self, op, config, call, keep_of):
        if not _channel_axis(op.axis, len(call.in_shapes[0])):
            return config
        widths = [layout.cut_width(keep_of) for layout in call.out_layouts]
        if widths == [layout.width for layout in call.out_layouts]:
            return config
        return dict(config, indices_or_sections=[int(i) for i in np.cumsum(widths)[:-1]])

    @staticmethod
    def _on_channels(op, node) -> bool:
        return bool(_channel_axis(op.axis, len(node.input_tensors[0].shape)))


class ShapeRule(LayerRule):
    """``keras.ops.reshape / expand_dims / squeeze``: allowed where channels stay last and whole.

    A row-major reshape that keeps the last dimension keeps every channel in
    place; a flatten to one axis (``(N, -1)``) is a Flatten (channel ``c`` goes
    to ``p*C + c``). Anything else (a channel shuffle's ``(N, H, W, g, C/g)``)
    mixes channels with other axes and is refused.
    """

    def propagate(self, op, in_layouts, node, ctx):
        kept = reshaped_layout(in_layouts[0], node)
        if kept is not None:
            return [kept]
        ctx.forbid(in_layouts[0].spaces, f"'{ctx.name_of(op)}' {_reshape_text(node)}")
        return [ctx.opaque(node.outputs[0], op, "output of a channel-mixing reshape")]

    def resize_config(self, config, out_width, out_shape):
        if "newshape" not in config:
            return config
        target = list(config["newshape"])
        if target and target[-1] not in (-1, None):
            target[-1] = int(out_width)
        return dict(config, newshape=tuple(target))


class TransposeRule(LayerRule):
    """``keras.ops.transpose``: allowed when the channel axis stays last."""

    def check(self, op, node):
        rank = len(node.input_tensors[0].shape)
        axes = getattr(op, "axes", None)
        if axes is None or int(axes[-1]) % rank != rank - 1:
            return f"transposes the channel axis away from last (axes={axes})"
        return None


class GetItemRule(LayerRule):
    """Indexing ``x[..., a:b]`` / ``x[:, 1:-1, ::2, :]``: a channel range, or channels whole.

    Any basic indexing of the other axes keeps the channels last; a contiguous
    slice of the channel axis takes that range (like a split output: a layer's
    channels cut inside are divided), and its bounds are rewritten after a cut.
    An integer, stepped or tensor index on the channel axis, or ``None``
    (newaxis), is refused.
    """

    def check(self, op, node):
        items = _index_items(node.arguments.args[1], len(node.input_tensors[0].shape))
        if items is None:
            return "indexes with a key the channel rules do not follow (newaxis, tensors)"
        channel = items[-1]
        if not isinstance(channel, slice) or channel.step not in (None, 1):
            return f"indexes the channel axis with {channel!r} (only a contiguous slice is cut)"
        return None

    def propagate(self, op, in_layouts, node, ctx):
        layout = in_layouts[0]
        rank = len(node.input_tensors[0].shape)
        start, stop = _channel_range(node.arguments.args[1], rank, layout.width)
        if (start, stop) == (0, layout.width):
            return [layout]
        return ctx.sub_layouts(layout, [(start, stop)], op, node.outputs)

    def cut_arguments(self, op, args, kwargs, call, keep_of):
        layout = call.in_layouts[0]
        x, key, *rest = args
        start, stop = _channel_range(key, len(call.in_shapes[0]), layout.width)
        if (start, stop) == (0, layout.width):
            return args, kwargs
        new_start = layout.sub_layout(0, start).cut_width(keep_of) if start else 0
        new_stop = new_start + call.out_layouts[0].cut_width(keep_of)
        items = _index_items(key, len(call.in_shapes[0]))
        items[-1] = slice(new_start, new_stop)
        return (x, tuple(items), *rest), kwargs


def _index_items(key: Any, rank: int) -> list | None:
    """A basic index key as one item per axis (Ellipsis expanded), or None if unsupported."""
    items = list(key) if isinstance(key, tuple | list) else [key]
    if any(k is None or not isinstance(k, int | slice | type(Ellipsis)) for k in items):
        return None
    ellipses = [i for i, k in enumerate(items) if k is Ellipsis]
    if len(ellipses) > 1:
        return None
    if ellipses:
        i = ellipses[0]
        items = items[:i] + [slice(None)] * (rank - len(items) + 1) + items[i + 1 :]
    else:
        items += [slice(None)] * (rank - len(items))
    return items if len(items) == rank else None


def _channel_range(key: Any, rank: int, width: int) -> tuple[int, int]:
    """``[start, stop)`` of the channel axis that a (checked) index key keeps."""
    start, stop, _ = _index_items(key, rank)[-1].indices(width)
    return start, stop


class RescalingRule(LayerRule):
    """``Rescaling``: elementwise; a per-channel ``scale`` / ``offset`` list is cut too."""

    def check(self, layer, node):
        for key in ("scale", "offset"):
            value = getattr(layer, key)
            if np.ndim(value) and not isinstance(value, list | tuple):
                return f"has a {key} array (only scalars or per-channel lists are cut)"
        return None

    def cut_config(self, layer, config, call, keep_of):
        layout = call.in_layouts[0]
        kept = layout.kept_indices(keep_of)
        if len(kept) == layout.width:
            return config
        for key in ("scale", "offset"):
            value = config.get(key)
            if isinstance(value, list | tuple) and len(value) == layout.width:
                config = dict(config, **{key: [value[i] for i in kept]})
        return config


def _last_dim(tensor: Any) -> int | None:
    shape = tuple(tensor.shape)
    if not shape or shape[-1] is None:
        return None if shape else 1
    return int(shape[-1])


def _axes_of(axis: Any, rank: int) -> set[int]:
    """The reduced axes, normalized to ``[0, rank)``; None means every axis."""
    if axis is None:
        return set(range(rank))
    axes = axis if isinstance(axis, list | tuple) else [axis]
    return {int(a) % rank for a in axes}


def _channel_axis(axis: Any, rank: int) -> bool:
    return int(axis) % rank == rank - 1


def _pad_pairs(op: Any, rank: int) -> list[tuple[int, int]]:
    """``keras.ops.pad``'s pad widths, one (before, after) pair per axis."""
    pairs = [tuple(int(v) for v in pair) for pair in op.pad_width]
    return pairs * rank if len(pairs) == 1 else pairs


def op_label(op: Any) -> str:
    """How messages name an operation: ``keras.ops.hard_sigmoid`` for ``HardSigmoid``."""
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", type(op).__name__).lower()
    return f"keras.ops.{snake}"


def weights_with_axes(
    layer: keras.Layer, values: list | None = None
) -> list[tuple[str, Any, dict[int, str] | None]]:
    """``(name, value, {axis: side} or None)`` for every weight of a registered layer.

    ``values`` replaces the layer's own weights (e.g. gradients); the axes are
    None for a weight the layer's rule does not know.
    """
    if not isinstance(layer, keras.Layer):  # a keras.ops operation: no weights
        return []
    axes_by_name = rule_for(layer).axes_for(layer)
    values = layer.get_weights() if values is None else values
    out = []
    for variable, value in zip(layer.weights, values, strict=True):
        name = weight_name(layer, variable, axes_by_name)
        out.append((name, value, axes_by_name.get(name)))
    return out


def weight_name(layer: keras.Layer, variable: Any, names: Any = ()) -> str:
    """The name a rule uses for ``variable``: its own, or the layer attribute holding it.

    A weight created without a name (``add_weight(shape=...)`` gives
    ``variable_3``) is known by the attribute it is stored in
    (``self.gamma = self.add_weight(...)``), when the rule names that attribute.
    """
    name = variable.name.split("/")[-1]
    if name in names:
        return name
    for attribute in names:
        if getattr(layer, attribute, None) is variable:
            return attribute
    return name


def _only_channel_axis(axis: int | list | tuple, node: Any) -> bool:
    """True when ``axis`` names only the last (channel) axis of the call's input."""
    axes = list(axis) if isinstance(axis, list | tuple) else [axis]
    rank = len(node.input_tensors[0].shape)
    return all(a % rank == rank - 1 for a in axes)


_REGISTRY: dict[type, LayerRule] = {}
_BY_NAME: dict[str, LayerRule] = {}


def register_layer(layer_class: type | str, rule: LayerRule) -> None:
    """Registers (or replaces) the channel rule of a layer or ``keras.ops`` operation class.

    The rule tells the dependency graph how the layer maps channels and the
    surgery how to cut it; without one, the groups whose channels reach the
    layer are left whole (the reason names the layer). Pick the rule that
    describes what the layer does to channels:

    - ``LayerRule()``: elementwise, no weights (a custom activation, dropout).
    - ``PerChannelRule({"gamma": {0: "in"}}, width_key="projection_dim")``: one
      weight value per channel (ConvNeXt's LayerScale, a learned per-channel
      scale or bias); name every weight and its channel axis, and the config
      key holding the channel count, if any.
    - ``MergeRule(residual=True)``: several inputs combined elementwise (their
      channels tie), ``residual=False`` for a gate (``x * s``).
    - ``ProducerRule({"kernel": {-2: "in", -1: "out"}, "bias": {0: "out"}},
      "filters")``: a layer that mixes channels into new ones (a conv-like layer).
    - ``ChannelNormRule(...)``: a normalization over the channels (not exact).
    - a subclass of :class:`LayerRule` overriding ``propagate`` / ``cut_config``
      / ``cut_arguments`` for anything else.

    Args:
        layer_class: the exact class (subclasses need their own entry, since
            they may change what the layer computes), or its dotted path
            (``"keras_hub.src.layers.modeling.foo.Foo"``) or Keras registered
            name (``"my_package>Foo"``), so a rule can name a class whose
            package is not imported.
        rule: the :class:`LayerRule`.

    Example:

    >>> import keras
    >>> from tf_filterprune.graph import registry
    >>> class ChannelScale(keras.layers.Layer):
    ...     def build(self, shape):
    ...         self.scale = self.add_weight(shape=(shape[-1],), initializer="ones")
    ...     def call(self, x):
    ...         return x * self.scale
    >>> registry.register_layer(ChannelScale, registry.PerChannelRule({"scale": {0: "in"}}))
    >>> registry.rule_for(ChannelScale()).axes_for(None)
    {'scale': {0: 'in'}}
    """
    if isinstance(layer_class, str):
        _BY_NAME[layer_class] = rule
    else:
        _REGISTRY[layer_class] = rule


def rule_for(layer: Any) -> LayerRule | None:
    """The rule of ``layer``'s exact class (by class, dotted path or registered name), or None."""
    cls = type(layer)
    rule = _REGISTRY.get(cls)
    if rule is None and _BY_NAME:
        rule = _BY_NAME.get(f"{cls.__module__}.{cls.__qualname__}")
        if rule is None:
            rule = _BY_NAME.get(keras.saving.get_registered_name(cls))
    return rule


_CONV_AXES = {"kernel": {-2: IN, -1: OUT}, "bias": {0: OUT}}
_TRANSPOSE_AXES = {"kernel": {-1: IN, -2: OUT}, "bias": {0: OUT}}
_DENSE_AXES = {"kernel": {0: IN, 1: OUT}, "bias": {0: OUT}}
_BN_AXES = {name: {0: IN} for name in ("gamma", "beta", "moving_mean", "moving_variance")}
_LN_AXES = {"gamma": {0: IN}, "beta": {0: IN}}

_PASSTHROUGH_LAYERS = (
    "ReLU LeakyReLU ELU Dropout SpatialDropout1D SpatialDropout2D SpatialDropout3D "
    "GaussianNoise GaussianDropout AlphaDropout ActivityRegularization Identity "
    "MaxPooling1D MaxPooling2D MaxPooling3D AveragePooling1D AveragePooling2D "
    "AveragePooling3D GlobalAveragePooling1D GlobalAveragePooling2D "
    "GlobalAveragePooling3D GlobalMaxPooling1D GlobalMaxPooling2D GlobalMaxPooling3D "
    "ZeroPadding1D ZeroPadding2D ZeroPadding3D Cropping1D Cropping2D Cropping3D "
    "UpSampling1D UpSampling2D UpSampling3D"
)

# keras.ops classes (keras.src.ops.<module>.<Class>), by rule.
_RESIDUAL_OPS = "numpy: Add Subtract Maximum Minimum Fmax Fmin Logaddexp"
_GATE_OPS = "numpy: Multiply Divide TrueDivide DivideNoNan Power"
_UNARY_OPS = (
    "numpy: Abs Absolute Negative Square Sqrt Exp Exp2 Expm1 Log Log1p Log2 Log10 Sign "
    "Tanh Sin Cos Reciprocal Floor Ceil Round Clip Copy NanToNum Where Greater "
    "GreaterEqual Less LessEqual Equal NotEqual LogicalAnd LogicalOr LogicalNot; "
    "nn: Relu Relu6 Sigmoid HardSigmoid Silu HardSilu Gelu Elu Selu Celu LeakyRelu "
    "Softplus Softsign LogSigmoid HardTanh TanhShrink SoftShrink HardShrink Squareplus "
    "SparsePlus SparseSigmoid Threshold; math: Erf Erfc Rsqrt; "
    "core: Cast StopGradient SaturateCast"
)
_REDUCE_OPS = "numpy: Mean Max Min Sum Amax Amin Var Std Prod; math: Logsumexp"
_SHAPE_OPS = "numpy: Reshape ExpandDims Squeeze"
# channels pass through (spatial ops; channels_first is refused by LayerRule.check)
_SPATIAL_OPS = (
    "nn: AveragePool MaxPool AdaptiveAveragePool AdaptiveMaxPool; "
    "image: Resize PadImages CropImages"
)


def _op_classes(spec: str) -> list[type]:
    """The keras.ops classes of a spec like ``"numpy: Add Subtract; nn: Relu"`` that exist."""
    found = []
    for part in spec.split(";"):
        module_name, names = part.split(":")
        module = importlib.import_module(f"keras.src.ops.{module_name.strip()}")
        found.extend(getattr(module, n) for n in names.split() if hasattr(module, n))
    return found


def _register_layers() -> None:
    L = keras.layers
    for cls in (L.Conv1D, L.Conv2D, L.Conv3D):
        register_layer(cls, ConvRule(_CONV_AXES, "filters"))
    for cls in (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose):
        register_layer(cls, ProducerRule(_TRANSPOSE_AXES, "filters"))
    register_layer(L.Dense, ProducerRule(_DENSE_AXES, "units"))
    for cls in (L.SeparableConv1D, L.SeparableConv2D):
        register_layer(cls, SeparableRule())
    for cls in (L.DepthwiseConv1D, L.DepthwiseConv2D):
        register_layer(cls, DepthwiseRule())
    register_layer(L.BatchNormalization, NormalizationRule(_BN_AXES))
    register_layer(L.LayerNormalization, ChannelNormRule(_LN_AXES))
    if hasattr(L, "RMSNormalization"):
        register_layer(L.RMSNormalization, ChannelNormRule({"scale": {0: IN}}))
    register_layer(L.UnitNormalization, ChannelNormRule({}))
    register_layer(L.GroupNormalization, GroupNormRule(_LN_AXES))
    register_layer(L.PReLU, PReLURule())
    register_layer(L.Softmax, SoftmaxOverChannelsRule())
    register_layer(L.Activation, ActivationRule())
    for name in _PASSTHROUGH_LAYERS.split():
        register_layer(getattr(L, name), LayerRule())
    register_layer(L.Flatten, FlattenRule())
    register_layer(L.Reshape, ReshapeRule())
    for name in ("Add", "Subtract", "Average", "Maximum", "Minimum"):
        register_layer(getattr(L, name), MergeRule(residual=True))
    register_layer(L.Multiply, MergeRule(residual=False))
    register_layer(L.Concatenate, ConcatenateRule())
    register_layer(L.Lambda, LambdaRule())
    register_layer(L.Rescaling, RescalingRule())


def _register_application_layers() -> None:
    """Custom layers that keras.applications (and keras_hub, by name) ship."""
    apps = "keras.src.applications"
    register_layer(
        f"{apps}.convnext.LayerScale", PerChannelRule({"gamma": {0: IN}}, "projection_dim")
    )
    register_layer(f"{apps}.convnext.StochasticDepth", LayerRule())  # identity at inference
    # x[0] + x[1] * scale: the residual join of Inception-ResNet blocks
    register_layer(f"{apps}.inception_resnet_v2.CustomScaleLayer", MergeRule(residual=True))
    hub = "keras_hub.src.models"
    for version in ("dinov2", "dinov3"):
        name = f"{hub}.{version}.{version}_layers.{version.upper()}"
        register_layer(f"{name}LayerScale", PerChannelRule({"lambda1": {0: IN}}, "hidden_dim"))
        register_layer(f"{name}DropPath", LayerRule())
    register_layer(
        f"{hub}.mobilenetv5.mobilenetv5_layers.LayerScale2d",
        PerChannelRule({"gamma": {0: IN}}, "dim"),
    )
    register_layer(
        f"{hub}.mobilenetv5.mobilenetv5_layers.RmsNorm2d",
        LastAxisNormRule({"gamma": {0: IN}}, "dim"),
    )
    register_layer(  # one scalar scale and bias
        f"{hub}.hgnetv2.hgnetv2_layers.HGNetV2LearnableAffineBlock",
        PerChannelRule({"scale": {}, "bias": {}}),
    )
    for path in (
        "mobilenetv5.mobilenetv5_layers",
        "swin_transformer.swin_transformer_layers",
        "mit.mit_layers",
    ):
        register_layer(f"{hub}.{path}.DropPath", LayerRule())  # identity at inference


def _register_operations() -> None:
    for cls in _op_classes(_RESIDUAL_OPS):
        register_layer(cls, ElementwiseRule(residual=True))
    for cls in _op_classes(_GATE_OPS) + _op_classes(_UNARY_OPS):
        register_layer(cls, ElementwiseRule(residual=False))
    for cls in _op_classes(_REDUCE_OPS):
        register_layer(cls, ReduceRule())
    for cls in _op_classes(_SHAPE_OPS):
        register_layer(cls, ShapeRule())
    for cls in _op_classes(_SPATIAL_OPS):
        register_layer(cls, LayerRule())
    for cls in _op_classes("nn: Softmax LogSoftmax"):
        register_layer(cls, SoftmaxOpRule())
    special = {
        "Pad": PadRule(),
        "Split": SplitRule(),
        "Concatenate": ConcatenateRule(),
        "Transpose": TransposeRule(),
        "GetItem": GetItemRule(),
    }
    for name, rule in special.items():
        register_layer(getattr(importlib.import_module("keras.src.ops.numpy"), name), rule)


_register_layers()
_register_application_layers()
_register_operations()
