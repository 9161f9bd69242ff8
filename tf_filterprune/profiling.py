"""Parameter and MAC counts of a Keras model, layer by layer.

:func:`profile` walks the layer graph of a built Functional or Sequential model
(recursing into nested models) and returns a :class:`ModelProfile`.

MAC convention
--------------
A MAC is one multiply-accumulate for a single example (batch size 1). Counted:

* ``Conv1D/2D/3D``: ``kernel_size product x C_in / groups`` per output element.
* ``DepthwiseConv1D/2D``: ``kernel_size product`` per output element, i.e.
  ``kh*kw*C*depth_multiplier`` per output position.
* ``SeparableConv1D/2D``: the depthwise part (``kh*kw*C_in*depth_multiplier``
  per output position) plus the pointwise part
  (``C_in*depth_multiplier*C_out`` per output position).
* ``Conv1D/2D/3DTranspose``: ``kernel_size product x C_in x C_out`` per *input*
  position.
* ``Dense`` on an input of any rank: ``prod(leading non-batch dims) x in x units``.
* A bias add (``use_bias=True`` on any of the layers above): one MAC per
  output element.
* ``BatchNormalization``: one MAC per element (the inference-time affine
  ``x * scale + shift``).

Every other layer (activations, pooling, ``Add``, reshapes, ...) counts 0.

Layers called several times count MACs for every call (each call's own
shapes) but their parameters once. A nested model counts the MACs of its inner
graph for every call of the nested model, with the shapes of the nested model's
own graph. Parameter counts include non-trainable weights (BatchNormalization
moving statistics), as ``layer.count_params()`` does.

Example:
    >>> import keras
    >>> x = keras.Input((8, 8, 3))
    >>> y = keras.layers.Conv2D(4, 3, padding="same", name="conv")(x)
    >>> prof = profile(keras.Model(x, y))
    >>> prof.by_name("conv").macs  # 8*8*4 outputs x (3*3*3 + 1 bias)
    7168
    >>> prof.total_params
    112
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import keras

from tf_filterprune.graph.dependency import functional_of

Shape = tuple[int | None, ...]

_CONV = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
_CONV_TRANSPOSE = (
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
)
_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
_SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
_COUNTED = (
    *_CONV,
    *_CONV_TRANSPOSE,
    *_DEPTHWISE,
    *_SEPARABLE,
    keras.layers.Dense,
    keras.layers.BatchNormalization,
)


@dataclass
class LayerProfile:
    """Counts of one layer.

    Attributes:
        name: the layer name; ``"outer/inner"`` for a layer of a nested model.
        class_name: the layer's class name.
        input_shape: input shape of the first call (a list of shapes when the
            layer takes several inputs).
        output_shape: output shape of the first call (a list when several).
        params: number of weight scalars, trainable or not.
        macs: multiply-accumulates summed over all calls (see module docstring).
        width: the last dimension of the output (channels out), or None.
        calls: how many times the layer is called in the model.
    """

    name: str
    class_name: str
    input_shape: Shape | list[Shape]
    output_shape: Shape | list[Shape]
    params: int
    macs: int
    width: int | None
    calls: int = 1


@dataclass
class ModelProfile:
    """Per-layer and total counts of a model (see :func:`profile`).

    Attributes:
        layers: one :class:`LayerProfile` per layer, in graph order.
        total_params: sum of the layers' parameters (equals ``model.count_params()``).
        total_macs: sum of the layers' MACs.
        trainable_params: parameters of trainable weights only (the count the
            papers quote: BatchNorm moving statistics excluded).
    """

    layers: list[LayerProfile] = field(default_factory=list)
    total_params: int = 0
    total_macs: int = 0
    trainable_params: int = 0

    def by_name(self, name: str) -> LayerProfile:
        """The profile of the layer called ``name`` (``"outer/inner"`` when nested).

        Example:
            >>> import keras
            >>> x = keras.Input((4,))
            >>> prof = profile(keras.Model(x, keras.layers.Dense(2, name="fc")(x)))
            >>> prof.by_name("fc").params
            10
        """
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"No layer named '{name}' in the profile.")

    def to_dict(self) -> dict[str, Any]:
        """A plain-dict (JSON-friendly) version of the profile.

        Example:
            >>> import keras
            >>> x = keras.Input((4,))
            >>> d = profile(keras.Model(x, keras.layers.Dense(2)(x))).to_dict()
            >>> d["total_macs"], d["total_params"]
            (10, 10)
        """
        return {
            "layers": [asdict(layer) for layer in self.layers],
            "total_params": self.total_params,
            "total_macs": self.total_macs,
            "trainable_params": self.trainable_params,
        }

    def __str__(self) -> str:
        header = ("Layer", "Class", "Output shape", "Width", "Params", "MACs")
        rows = [header] + [_table_row(layer) for layer in self.layers]
        rows.append(("Total", "", "", "", f"{self.total_params:,}", f"{self.total_macs:,}"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = [_format_row(row, widths) for row in rows]
        rule = "-" * len(lines[0])
        return "\n".join([lines[0], rule, *lines[1:-1], rule, lines[-1]])


def profile(model: keras.Model) -> ModelProfile:
    """Counts the parameters and MACs of every layer of ``model``.

    Args:
        model: a built Functional or Sequential model; nested models are
            profiled layer by layer.

    Returns:
        A :class:`ModelProfile`; ``print()`` it for a table.

    Raises:
        ValueError: for a subclassed or unbuilt model, or when a counted layer
            has unknown (None) non-batch dimensions.

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(5)])
        >>> prof = profile(model)
        >>> prof.total_macs, prof.total_params == model.count_params()
        (55, True)
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"Expected a keras.Model, got {type(model).__name__}.")
    rows: dict[int, LayerProfile] = {}
    for layer, path, in_shapes, out_shapes in _calls(model, prefix=""):
        macs = layer_macs(layer, in_shapes, out_shapes, path)
        row = rows.get(id(layer))
        if row is None:
            rows[id(layer)] = _new_row(layer, path, in_shapes, out_shapes, macs)
        else:
            row.macs += macs
            row.calls += 1
    layers = list(rows.values())
    return ModelProfile(
        layers=layers,
        total_params=sum(row.params for row in layers),
        total_macs=sum(row.macs for row in layers),
        trainable_params=sum(math.prod(w.shape) for w in model.trainable_weights),
    )


def layer_macs(
    layer: Any, in_shapes: list[Shape], out_shapes: list[Shape], name: str | None = None
) -> int:
    """MACs of one call of ``layer`` with the given (batched) shapes.

    Args:
        layer: a Keras layer (or operation).
        in_shapes: the shapes of the call's inputs, batch dimension first.
        out_shapes: the shapes of the call's outputs.
        name: the name used in error messages (default: ``layer.name``).

    Returns:
        The MACs for one example, following the module's convention.

    Raises:
        ValueError: when a counted layer has an unknown non-batch dimension.

    Example:
        >>> import keras
        >>> layer = keras.layers.Dense(3)
        >>> layer_macs(layer, [(None, 5, 4)], [(None, 5, 3)])  # 5*4*3 + 5*3 bias
        75
    """
    if isinstance(layer, keras.layers.Wrapper):  # a pruning wrapper: its conv at its width
        layer = layer.layer
    if not isinstance(layer, _COUNTED):
        return 0
    _check_known(layer, in_shapes + out_shapes, name)
    in_shape, out_shape = in_shapes[0], out_shapes[0]
    out_elems = _elements(out_shape)
    if isinstance(layer, keras.layers.BatchNormalization):
        return out_elems
    bias = out_elems if layer.use_bias else 0
    return _product_macs(layer, in_shape, out_shape) + bias


def _product_macs(layer: Any, in_shape: Shape, out_shape: Shape) -> int:
    """MACs of the weight products (everything but the bias) of a counted layer.

    Widths come from the shapes, not the layer's config, so the MACs of a layer
    at another width (a planned cut) are this function of the cut shapes.
    """
    out_elems = _elements(out_shape)
    out_channels = _channels_out(layer, out_shape)
    if isinstance(layer, keras.layers.Dense):
        return _elements(in_shape) * out_channels
    kernel = math.prod(layer.kernel_size)
    if isinstance(layer, _SEPARABLE):
        c_mult = _channels_in(layer, in_shape) * layer.depth_multiplier
        positions = out_elems // out_channels
        return positions * c_mult * (kernel + out_channels)
    if isinstance(layer, _DEPTHWISE):
        return out_elems * kernel
    if isinstance(layer, _CONV_TRANSPOSE):
        return _elements(in_shape) * kernel * out_channels
    # at least one input per group: a depthwise Conv2D(groups=C) re-priced at fewer channels
    return out_elems * kernel * max(1, _channels_in(layer, in_shape) // layer.groups)


def _channels_out(layer: Any, shape: Shape) -> int:
    return _channels_in(layer, shape)


def _channels_in(layer: Any, shape: Shape) -> int:
    axis = 1 if getattr(layer, "data_format", "channels_last") == "channels_first" else -1
    return int(shape[axis])


def _elements(shape: Shape) -> int:
    return math.prod(int(d) for d in shape[1:])


def _check_known(layer: Any, shapes: list[Shape], name: str | None) -> None:
    for shape in shapes:
        if any(d is None for d in shape[1:]):
            raise ValueError(
                f"Layer '{name or layer.name}' has an unknown shape {shape}: MACs need "
                "fixed sizes. Build the model with a fixed input shape, e.g. "
                "keras.Input(shape=(32, 32, 3))."
            )


def _new_row(
    layer: Any, path: str, in_shapes: list[Shape], out_shapes: list[Shape], macs: int
) -> LayerProfile:
    out = out_shapes[0] if out_shapes else ()
    return LayerProfile(
        name=path,
        class_name=type(layer).__name__,
        input_shape=_one_or_list(in_shapes),
        output_shape=_one_or_list(out_shapes),
        params=_params(layer),
        macs=macs,
        width=int(out[-1]) if len(out) >= 2 and out[-1] is not None else None,
    )


def _params(layer: Any) -> int:
    weights = getattr(layer, "weights", [])
    return sum(math.prod(w.shape) for w in weights)


def _one_or_list(shapes: list[Shape]) -> Shape | list[Shape]:
    return shapes[0] if len(shapes) == 1 else list(shapes)


# ------------------------------------------------------------------ graph walk
def _calls(model: keras.Model, prefix: str) -> Iterator[tuple[Any, str, list[Shape], list[Shape]]]:
    """Yields ``(layer, path, input_shapes, output_shapes)`` for every layer call, in order."""
    graph = functional_of(model)
    by_depth = graph._nodes_by_depth
    for depth in sorted(by_depth, reverse=True):
        for node in by_depth[depth]:
            layer = node.operation
            if layer is None or node.is_input:
                continue
            path = prefix + layer.name
            if isinstance(layer, keras.Model):
                yield from _calls(layer, prefix=path + "/")
                continue
            yield layer, path, _shapes(node.input_tensors), _shapes(node.outputs)


def _shapes(tensors: Any) -> list[Shape]:
    return [tuple(t.shape) for t in tensors]


# ---------------------------------------------------------------------- table
def _table_row(layer: LayerProfile) -> tuple[str, ...]:
    return (
        layer.name + (f" (x{layer.calls})" if layer.calls > 1 else ""),
        layer.class_name,
        _shape_str(layer.output_shape),
        "" if layer.width is None else str(layer.width),
        f"{layer.params:,}",
        f"{layer.macs:,}",
    )


def _shape_str(shape: Shape | list[Shape]) -> str:
    if isinstance(shape, list):
        return ", ".join(_shape_str(s) for s in shape)
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def _format_row(row: tuple[str, ...], widths: list[int]) -> str:
    left = [cell.ljust(w) for cell, w in zip(row[:2], widths[:2], strict=True)]
    shape = row[2].ljust(widths[2])
    right = [cell.rjust(w) for cell, w in zip(row[3:], widths[3:], strict=True)]
    return "  ".join([*left, shape, *right]).rstrip()
