"""Model surgery: rebuild a model with fewer channels, every coupled layer cut to match.

The surgery knows nothing of importance: it takes, per channel group, the
indices to keep, rebuilds the model with ``keras.models.clone_model`` (each
changed layer re-created from its config at its new width) and copies the
sliced weights. Which axis of which weight follows which channels comes from
the registry (:mod:`tf_filterprune.graph.registry`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from tf_filterprune.graph import ChannelGraph, build_graph, registry


@dataclass
class LayerCut:
    """Indices kept on each side of one layer (None: that side is unchanged)."""

    inputs: np.ndarray | None
    inputs_expanded: np.ndarray | None
    outputs: np.ndarray | None
    out_width: int

    @property
    def changed(self) -> bool:
        return any(x is not None for x in (self.inputs, self.inputs_expanded, self.outputs))

    def side(self, name: str) -> np.ndarray | None:
        return {
            registry.IN: self.inputs,
            registry.IN_EXPANDED: self.inputs_expanded,
            registry.OUT: self.outputs,
        }[name]


def _kept_or_none(layout, keep_of) -> np.ndarray | None:
    idx = layout.kept_indices(keep_of)
    return None if len(idx) == layout.width else idx


def plan_cuts(graph: ChannelGraph, keep: Mapping[int, np.ndarray]) -> dict[int, LayerCut]:
    """Computes the cut of every layer touched by ``keep`` (group id -> kept indices)."""
    keep_of = graph.keep_function(dict(keep))
    cuts: dict[int, LayerCut] = {}
    for layer_id, calls in graph.calls.items():
        call = calls[0]
        rule = registry.rule_for(call.layer)
        if rule is None or not call.in_layouts or not call.out_layouts:
            continue
        in_layout, out_layout = call.in_layouts[0], call.out_layouts[0]
        outputs = _kept_or_none(out_layout, keep_of)
        cut = LayerCut(
            inputs=_kept_or_none(in_layout, keep_of),
            inputs_expanded=_kept_or_none(in_layout.expanded(rule.expansion(call.layer)), keep_of),
            outputs=outputs,
            out_width=out_layout.width if outputs is None else len(outputs),
        )
        if cut.changed:
            cuts[layer_id] = cut
    return cuts


def slice_weights(layer: keras.Layer, cut: LayerCut) -> list[np.ndarray]:
    """The layer's weights with the cut applied on every channel axis."""
    sliced = []
    for name, value, axes in registry.weights_with_axes(layer):
        if axes is None:
            raise ValueError(
                f"Layer '{layer.name}' ({type(layer).__name__}) has a weight '{name}' that the "
                "channel registry does not know how to cut; register a rule for this layer "
                "class with tf_filterprune.graph.register_layer."
            )
        for axis, side in axes.items():
            idx = cut.side(side)
            if idx is not None:
                value = np.take(value, idx, axis=axis)
        sliced.append(value)
    return sliced


def rebuild(
    model: keras.Model,
    graph: ChannelGraph,
    keep: Mapping[int, np.ndarray],
    wrap: Mapping[int, Callable[[keras.Layer], keras.layers.Wrapper]] | None = None,
) -> keras.Model:
    """Builds the compact model: same names, inputs and outputs, weights sliced.

    Args:
        model: the original model (not modified).
        graph: its channel graph.
        keep: group id -> sorted kept channel indices; groups not listed keep all.
        wrap: layer id -> function that wraps the (full-width) clone of that
            layer; the wrapper's output follows ``keep``, its inner layer keeps
            all its output channels (its inputs are still cut).
    """
    cuts = plan_cuts(graph, keep)
    wrap = wrap or {}
    pairs: list[tuple[Any, Any]] = []

    def clone_layer(layer):
        config = layer.get_config()
        cut = cuts.get(id(layer))
        if id(layer) in wrap:
            twin = wrap[id(layer)](layer.__class__.from_config(config))
            pairs.append((layer, twin))
            return twin
        if cut is not None and cut.outputs is not None:
            out_shape = graph.first_call(layer).out_shapes[0]
            config = registry.rule_for(layer).resize_config(config, cut.out_width, out_shape)
        twin = layer.__class__.from_config(config)
        pairs.append((layer, twin))
        return twin

    compact = clone(model, clone_layer)
    for original, twin in pairs:
        if not original.weights:
            continue
        cut = cuts.get(id(original))
        if isinstance(twin, keras.layers.Wrapper):
            twin = twin.layer
            cut = None if cut is None else dataclasses.replace(cut, outputs=None)
        values = original.get_weights() if cut is None else slice_weights(original, cut)
        twin.set_weights(values)
    return compact


def clone(model: keras.Model, clone_function: Callable[[Any], Any]) -> keras.Model:
    """``keras.models.clone_model`` (recursive), keeping the input layers' names."""
    if isinstance(model, keras.Sequential):
        return keras.models.clone_model(model, clone_function=clone_function, recursive=True)
    inputs = keras.tree.map_structure(
        lambda t: keras.Input(
            batch_shape=t.shape, dtype=t.dtype, name=t._keras_history.operation.name
        ),
        model.input,
    )
    return keras.models.clone_model(
        model, input_tensors=inputs, clone_function=clone_function, recursive=True
    )


def _removed(kept: np.ndarray | None, width: int) -> np.ndarray | None:
    if kept is None:
        return None
    return np.setdiff1d(np.arange(width), kept)


def zeroed_copy(
    model: keras.Model, graph: ChannelGraph, keep: Mapping[int, np.ndarray]
) -> keras.Model:
    """A same-shape copy of ``model`` whose removed channels are exactly zero.

    Zeroes, for every removed channel, the producing filters and biases and the
    gamma and beta of every normalization layer the channel passes through. For
    such a model the compact model built by :func:`rebuild` gives the same
    outputs (this is the surgery's contract, checked by the tests).
    """
    cuts = plan_cuts(graph, keep)
    copy = clone(model, lambda layer: layer.__class__.from_config(layer.get_config()))
    copy.set_weights(model.get_weights())
    for layer_id, cut in cuts.items():
        call = graph.calls[layer_id][0]
        layer = _find_clone(copy, call.path)
        is_norm = isinstance(registry.rule_for(layer), registry.NormalizationRule)
        values = []
        for name, value, axes in registry.weights_with_axes(layer):
            for axis, side in (axes or {}).items():
                zero_side = side == registry.OUT or (is_norm and name in ("gamma", "beta"))
                width = value.shape[axis]
                removed = _removed(cut.side(side), width) if zero_side else None
                if removed is not None and removed.size:
                    value = value.copy()
                    index = [slice(None)] * value.ndim
                    index[axis] = removed
                    value[tuple(index)] = 0.0
            values.append(value)
        layer.set_weights(values)
    return copy


def _find_clone(model: keras.Model, path: str) -> keras.Layer:
    layer: Any = model
    for part in path.split("/"):
        layer = layer.get_layer(part)
    return layer


def _validate_indices(path: str, indices: Sequence[int], size: int) -> np.ndarray:
    try:
        idx = np.asarray(list(indices), dtype=np.int64)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"Indices to keep for '{path}' must be integers, got {indices!r}."
        ) from err
    if idx.ndim != 1:
        raise ValueError(f"Indices to keep for '{path}' must be a flat list of integers.")
    if idx.size == 0:
        raise ValueError(
            f"Keeping no channel of '{path}' would remove the layer; keep at least one index."
        )
    if idx.min() < 0 or idx.max() >= size:
        raise ValueError(
            f"Indices to keep for '{path}' must be in [0, {size}), got {idx.tolist()}."
        )
    if len(np.unique(idx)) != idx.size:
        raise ValueError(f"Indices to keep for '{path}' contain duplicates: {idx.tolist()}.")
    return np.sort(idx)


def resolve_keep(graph: ChannelGraph, keep: Mapping[str, Sequence[int]]) -> dict[int, np.ndarray]:
    """Validates a per-layer keep map and turns it into a per-group one.

    Raises:
        ValueError: unknown layer, bad indices, an unprunable group, or two
            coupled layers given different indices.
    """
    if not isinstance(keep, Mapping):
        raise ValueError(f"`keep` must map layer names to index lists, got {type(keep).__name__}.")
    by_group: dict[int, np.ndarray] = {}
    named: dict[int, str] = {}
    for name, indices in keep.items():
        path = graph.resolve(name)
        group = graph.group_of_layer(path)
        if group.reasons:
            raise ValueError(
                f"The channels of '{path}' cannot be pruned: " + "; ".join(group.reasons[:3])
            )
        if group.size <= 1:
            raise ValueError(f"Layer '{path}' has a single filter; there is nothing to prune.")
        idx = _validate_indices(path, indices, group.size)
        if group.id in by_group and not np.array_equal(by_group[group.id], idx):
            members = ", ".join(f"'{p}'" for p in group.producers)
            raise ValueError(
                f"'{path}' and '{named[group.id]}' are coupled (their channels are tied by "
                f"{members}) but were given different indices to keep; give one of them only."
            )
        by_group[group.id] = idx
        named[group.id] = path
    return by_group


def prune_channels(model: keras.Model, keep: Mapping[str, Sequence[int]]) -> keras.Model:
    """Returns a compact copy of ``model`` keeping only the given output channels.

    Every layer coupled to a named layer (BatchNormalization, the next conv's
    input slice, the other branches of a residual ``Add``, a Concatenate's
    consumer, a Flatten -> Dense's rows) is cut to match. The input model is
    not modified.

    Args:
        model: a built Functional or Sequential Keras model.
        keep: layer name -> indices of its output channels to keep.

    Returns:
        A new model with the same layer names, inputs and outputs.

    Example:

    >>> import keras, tf_filterprune as tffp
    >>> inp = keras.Input((8, 8, 3))
    >>> x = keras.layers.Conv2D(8, 3, name="conv")(inp)
    >>> out = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    >>> compact = tffp.prune_channels(keras.Model(inp, out), {"conv": [0, 2, 5]})
    >>> compact.get_layer("conv").filters
    3
    """
    graph = build_graph(model)
    return rebuild(model, graph, resolve_keep(graph, keep))
