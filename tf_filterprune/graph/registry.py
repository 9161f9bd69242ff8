"""The per-layer channel registry, keyed by layer class.

Each entry is a :class:`LayerRule`: how the layer maps the channel layouts of
its inputs to those of its outputs (used by the dependency graph), which axes of
which weights follow the input or the output channels (used by the surgery),
and how its config changes when its width changes. Supporting a new layer type
is one :func:`register_layer` call, used by the graph and the surgery alike.

Example:

>>> import keras
>>> from tf_filterprune.graph import registry
>>> registry.rule_for(keras.layers.Conv2D(8, 3)).width_key
'filters'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import keras

from tf_filterprune.graph.layout import Layout, Segment

if TYPE_CHECKING:
    from tf_filterprune.graph.dependency import GraphBuilder

# Sides a weight axis can follow: the layer's (first) input channels, the input
# channels expanded by a depth multiplier, or the layer's output channels.
IN, IN_EXPANDED, OUT = "in", "in_expanded", "out"

WeightAxes = dict[str, dict[int, str]]


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
        if getattr(layer, "data_format", "channels_last") == "channels_first":
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
        width = int(node.outputs[0].shape[-1])
        return [Layout((Segment(ctx.new_space(width, layer), width),))]


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
    """BatchNormalization / LayerNormalization over the channel axis only.

    LayerNormalization normalizes over the channels, so removing a channel
    changes the statistics of the others: the cut is structurally right but not
    output-exact (the same holds in Torch-Pruning).
    """

    def check(self, layer, node):
        if not _only_channel_axis(layer.axis, node):
            return f"normalizes over axis {layer.axis}, not only the channel axis"
        return None


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


class ReshapeRule(LayerRule):
    """Reshape that keeps the channel axis last and whole, or flattens to 1-D."""

    def propagate(self, layer, in_layouts, node, ctx):
        in_shape = tuple(node.input_tensors[0].shape)[1:]
        out_shape = tuple(node.outputs[0].shape)[1:]
        layout = in_layouts[0]
        if in_shape and out_shape and in_shape[-1] == out_shape[-1] and in_shape[-1] is not None:
            return [layout]
        if len(out_shape) == 1 and all(d is not None for d in in_shape):
            positions = 1
            for d in in_shape[:-1]:
                positions *= int(d)
            return [layout.flattened(positions)]
        ctx.forbid(layout.spaces, f"'{layer.name}' reshapes {in_shape} to {out_shape}")
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
        widths = [lay.width for lay in in_layouts]
        full = max(widths)
        tied = [lay for lay in in_layouts if lay.width == full or full == 1]
        joined = ctx.unify(tied, layer)
        if self.residual and len(tied) > 1:
            ctx.mark_residual(joined)
        return [joined]


class ConcatenateRule(LayerRule):
    """Concatenate: on the channel axis the layouts are laid end to end."""

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


def weights_with_axes(
    layer: keras.Layer, values: list | None = None
) -> list[tuple[str, Any, dict[int, str] | None]]:
    """``(name, value, {axis: side} or None)`` for every weight of a registered layer.

    ``values`` replaces the layer's own weights (e.g. gradients); the axes are
    None for a weight the layer's rule does not know.
    """
    axes_by_name = rule_for(layer).axes_for(layer)
    values = layer.get_weights() if values is None else values
    return [
        (variable.name.split("/")[-1], value, axes_by_name.get(variable.name.split("/")[-1]))
        for variable, value in zip(layer.weights, values, strict=True)
    ]


def _only_channel_axis(axis: int | list | tuple, node: Any) -> bool:
    """True when ``axis`` names only the last (channel) axis of the call's input."""
    axes = list(axis) if isinstance(axis, list | tuple) else [axis]
    rank = len(node.input_tensors[0].shape)
    return all(a % rank == rank - 1 for a in axes)


_CONV_AXES = {"kernel": {-2: IN, -1: OUT}, "bias": {0: OUT}}
_TRANSPOSE_AXES = {"kernel": {-1: IN, -2: OUT}, "bias": {0: OUT}}
_DENSE_AXES = {"kernel": {0: IN, 1: OUT}, "bias": {0: OUT}}
_BN_AXES = {name: {0: IN} for name in ("gamma", "beta", "moving_mean", "moving_variance")}
_LN_AXES = {"gamma": {0: IN}, "beta": {0: IN}}

_REGISTRY: dict[type, LayerRule] = {}


def register_layer(layer_class: type, rule: LayerRule) -> None:
    """Registers (or replaces) the channel rule of a layer class.

    Example:

    >>> import keras
    >>> from tf_filterprune.graph import registry
    >>> class MyDropout(keras.layers.Dropout):
    ...     pass
    >>> registry.register_layer(MyDropout, registry.LayerRule())
    """
    _REGISTRY[layer_class] = rule


def rule_for(layer: Any) -> LayerRule | None:
    """The rule of ``layer``'s exact class, or None when the class is unknown."""
    return _REGISTRY.get(type(layer))


def _register_builtins() -> None:
    L = keras.layers
    for cls in (L.Conv1D, L.Conv2D, L.Conv3D):
        register_layer(cls, ProducerRule(_CONV_AXES, "filters"))
    for cls in (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose):
        register_layer(cls, ProducerRule(_TRANSPOSE_AXES, "filters"))
    register_layer(L.Dense, ProducerRule(_DENSE_AXES, "units"))
    for cls in (L.SeparableConv1D, L.SeparableConv2D):
        register_layer(cls, SeparableRule())
    for cls in (L.DepthwiseConv1D, L.DepthwiseConv2D):
        register_layer(cls, DepthwiseRule())
    register_layer(L.BatchNormalization, NormalizationRule(_BN_AXES))
    register_layer(L.LayerNormalization, NormalizationRule(_LN_AXES))
    register_layer(L.PReLU, PReLURule())
    register_layer(L.Softmax, SoftmaxOverChannelsRule())
    register_layer(L.Activation, ActivationRule())
    passthrough = (
        "ReLU LeakyReLU ELU Dropout SpatialDropout1D SpatialDropout2D SpatialDropout3D "
        "GaussianNoise GaussianDropout AlphaDropout ActivityRegularization Identity "
        "MaxPooling1D MaxPooling2D MaxPooling3D AveragePooling1D AveragePooling2D "
        "AveragePooling3D GlobalAveragePooling1D GlobalAveragePooling2D "
        "GlobalAveragePooling3D GlobalMaxPooling1D GlobalMaxPooling2D GlobalMaxPooling3D "
        "ZeroPadding1D ZeroPadding2D ZeroPadding3D Cropping1D Cropping2D Cropping3D "
        "UpSampling1D UpSampling2D UpSampling3D"
    )
    for name in passthrough.split():
        register_layer(getattr(L, name), LayerRule())
    register_layer(L.Flatten, FlattenRule())
    register_layer(L.Reshape, ReshapeRule())
    for name in ("Add", "Subtract", "Average", "Maximum", "Minimum"):
        register_layer(getattr(L, name), MergeRule(residual=True))
    register_layer(L.Multiply, MergeRule(residual=False))
    register_layer(L.Concatenate, ConcatenateRule())
    register_layer(L.Lambda, LambdaRule())


_register_builtins()
