"""Model surgery: rebuild a model with fewer channels, every coupled layer cut to match.

The surgery knows nothing of importance: it takes, per channel group, the
indices to keep (and optionally a consumer map), rebuilds the model with
``keras.models.clone_model`` (each changed layer re-created from its config at
its new width) and copies the sliced weights. ``keras.ops`` operation nodes
are re-created too, with the cut arguments their rules give (a split's section
sizes, a reshape's target, a per-channel constant). Which axis of which weight
follows which channels comes from the registry
(:mod:`tf_filterprune.graph.registry`).

The contract (checked by the tests on every model): the compact model equals
:func:`zeroed_copy`, the same-shape model in which only the removed channels'
producer kernel slices are zero. A removed channel then outputs a constant,
which :func:`rebuild` folds into its consumers' biases
(:mod:`tf_filterprune.surgery.constants`).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from absl import logging

from tf_filterprune.graph import ChannelGraph, LayerCall, Layout, build_graph, registry
from tf_filterprune.surgery.constants import FoldMode, analyze_folds, check_mode, fold_notes
from tf_filterprune.surgery.plan import (
    SurgeryPlan,
    indices_of,
    is_consumer,
    make_plan,
    mixing_axis,
    remap_axis,
)


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
    """The layer's weights with the cut (plain selection) applied on every channel axis."""
    sliced = []
    groups = registry.kernel_groups(layer)
    for name, value, axes in registry.weights_with_axes(layer):
        if axes is None:
            raise ValueError(_unknown_weight(layer, name))
        grouped = name == "kernel" and groups > 1
        value = ungroup_kernel(value, groups) if grouped else value
        for axis, side in axes.items():
            idx = cut.side(side)
            if idx is not None:
                value = np.take(value, idx, axis=axis)
        sliced.append(regroup_kernel(value, groups, layer.name) if grouped else value)
    return sliced


def ungroup_kernel(kernel: np.ndarray, groups: int) -> np.ndarray:
    """A grouped conv's ``(..., in/groups, filters)`` kernel as the block-diagonal ``(..., in, filters)``.

    Output group ``g`` (filters ``g*F/G ...``) reads input group ``g`` only; the
    other entries are zero, so the kernel is cut like a plain conv's.

    >>> k = np.arange(4.0).reshape(1, 1, 1, 4)  # in=2, groups=2, filters=4
    >>> ungroup_kernel(k, 2)[0, 0].tolist()
    [[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 3.0]]
    """
    per_group, filters = kernel.shape[-2], kernel.shape[-1]
    out_per_group = filters // groups
    full = np.zeros((*kernel.shape[:-2], per_group * groups, filters), dtype=kernel.dtype)
    for g in range(groups):
        rows = slice(g * per_group, (g + 1) * per_group)
        cols = slice(g * out_per_group, (g + 1) * out_per_group)
        full[..., rows, cols] = kernel[..., :, cols]
    return full


def regroup_kernel(full: np.ndarray, groups: int, name: str = "?") -> np.ndarray:
    """The inverse of :func:`ungroup_kernel`, for the (cut) block-diagonal kernel.

    Raises:
        ValueError: the cut left unequal widths per group, or mixed channels
            across groups (entries off the diagonal blocks).
    """
    channels, filters = full.shape[-2], full.shape[-1]
    if channels % groups or filters % groups:
        raise ValueError(
            f"The cut of grouped conv '{name}' (groups={groups}) leaves {channels} input and "
            f"{filters} output channels, not a multiple of its groups; keep the same number "
            "of channels in each group."
        )
    per_group, out_per_group = channels // groups, filters // groups
    packed, outside = [], full.copy()
    for g in range(groups):
        rows = slice(g * per_group, (g + 1) * per_group)
        cols = slice(g * out_per_group, (g + 1) * out_per_group)
        packed.append(full[..., rows, cols])
        outside[..., rows, cols] = 0
    if np.any(outside):
        raise ValueError(
            f"The cut of grouped conv '{name}' (groups={groups}) mixes channels across its "
            "groups (a consumer map, or kept channels unequal per group); use plain "
            "selection with the same number of channels kept in each group."
        )
    return np.concatenate(packed, axis=-1)


def rebuild(
    model: keras.Model,
    graph: ChannelGraph,
    keep: Mapping[int, np.ndarray],
    wrap: Mapping[int, Callable[[keras.Layer], keras.layers.Wrapper]] | None = None,
    *,
    consumer_maps: Mapping[int, Any] | None = None,
    fold_constants: FoldMode = True,
    notes: list[str] | None = None,
) -> keras.Model:
    """Builds the compact model: same names, inputs and outputs, weights sliced.

    The contract: the compact model equals the model in which only the removed
    channels' producer kernel slices are zeroed (:func:`zeroed_copy`). Such a
    channel outputs a constant (the producer's bias through BatchNormalization,
    activations, pooling...), which is folded into the bias of every consumer
    (a layer mixing channels: Conv, Dense, Conv transpose, SeparableConv). A
    consumer without a bias gets one. Groups whose cut is not output-exact
    (``ChannelGroup.inexact``: a LayerNormalization over their channels) are
    cut structurally; a warning says so, and so do the ``notes``.

    Args:
        model: the original model (not modified).
        graph: its channel graph.
        keep: group id -> sorted kept channel indices; groups not listed keep all.
        wrap: layer id -> function that wraps the (full-width) clone of that
            layer; the wrapper's output follows ``keep``, its inner layer keeps
            all its output channels (its inputs are still cut). The removed
            channels of a wrapped producer's group are not folded (the wrapper
            forms those channels itself).
        consumer_maps: group id -> ``(m, C)`` matrix for a group keeping ``m``
            of its ``C`` channels: every mixing consumer's new input slice
            ``i`` is ``sum_c M[i, c] * W[..., c, :]`` (selection for rows of the
            identity at ``keep``; sums of members to merge a cluster onto its
            representative). Per-channel layers in between are sliced by
            ``keep``. Only channels not kept whose column of ``M`` is all zero
            count as removed for folding.
        fold_constants: True folds every removed channel's constant (the
            interior value where a consumer does not see it evenly, e.g. a
            'same'-padded 3x3 conv or a path through ZeroPadding); ``"exact"``
            folds only where a bias represents it exactly and drops it
            elsewhere; False drops every removed channel (no fold).
        notes: if given, receives one human-readable string per consumer whose
            fold was inexact or skipped, and one per cut group that is not
            output-exact (a normalization over its channels).

    Example:

    >>> import keras, numpy as np
    >>> from tf_filterprune.graph import build_graph
    >>> inp = keras.Input((8, 8, 3))
    >>> x = keras.layers.Conv2D(4, 3, padding="same", bias_initializer="ones", name="c")(inp)
    >>> x = keras.layers.BatchNormalization()(x)
    >>> model = keras.Model(inp, keras.layers.Conv2D(2, 3, padding="same", name="d")(x))
    >>> graph = build_graph(model)
    >>> notes = []
    >>> compact = rebuild(model, graph, {graph.group_of_layer("c").id: np.array([0, 1])},
    ...                   notes=notes)
    >>> compact.get_layer("c").filters, len(notes)  # the 'same' 3x3 conv 'd' is noted
    (2, 1)
    """
    mode = check_mode(fold_constants)
    check_blocks(graph, keep)
    wrap = wrap or {}
    plan = make_plan(graph, keep, consumer_maps, _wrapped_groups(graph, keep, wrap))
    folds = analyze_folds(graph, plan) if mode is not False else {}
    inexact = inexact_notes(graph, keep)
    if notes is not None:
        notes.extend(fold_notes(folds, plan, mode))
        notes.extend(inexact)
    deltas = {
        lid: fold.delta for lid, fold in folds.items() if fold.applies(mode) and fold.delta.any()
    }
    _warn_inexact(inexact)
    keep_of = graph.keep_function(dict(keep))
    cuts = plan_cuts(graph, keep)
    pairs: list[tuple[Any, Any]] = []
    originals: dict[int, Any] = {}
    initializers: dict[int, tuple[Any, dict[str, Any]]] = {}

    def clone_layer(layer):
        config = own_config(layer)
        if id(layer) in deltas and not config.get("use_bias", True):
            config = dict(config, use_bias=True)
        inner = layer_from_config(
            layer, config if id(layer) in wrap else _cut_config(layer, config, graph, keep_of)
        )
        if layer.weights:  # its weights are all set below: build without random draws
            initializers[id(inner)] = (inner, zero_initializers(inner))
        twin = wrap[id(layer)](inner) if id(layer) in wrap else inner
        pairs.append((layer, twin))
        originals[id(twin)] = layer
        return twin

    def clone_operation(op):
        twin = copy_operation(op, lambda config: _cut_config(op, config, graph, keep_of))
        originals[id(twin)] = op
        return twin

    def call_cut(twin, *args, **kwargs):
        original = originals.get(id(twin))
        call = graph.first_call(original) if original is not None else None
        rule = registry.rule_for(original) if call is not None and keep else None
        if rule is not None:
            args, kwargs = rule.cut_arguments(original, args, kwargs, call, keep_of)
        return twin(*args, **kwargs)

    compact = clone(
        model,
        clone_layer,
        clone_operation=clone_operation,
        call_function=call_cut,
        substitutes=graph.traced,
    )
    for original, twin in pairs:
        if not original.weights:
            continue
        cut = cuts.get(id(original))
        if id(original) in wrap:
            twin = twin.layer
            cut = None if cut is None else dataclasses.replace(cut, outputs=None)
        call = graph.first_call(original)
        delta = deltas.get(id(original))
        if call is None or (cut is None and delta is None and not _mapped_input(call, plan)):
            twin.set_weights(original.get_weights())
            continue
        values = compact_weights(original, call, cut, plan, delta)
        twin.set_weights(_in_order(values, twin))
    for layer, saved in initializers.values():
        for attribute, initializer in saved.items():
            setattr(layer, attribute, initializer)
    return compact


def zero_initializers(layer: keras.Layer) -> dict[str, Any]:
    """Sets ``layer``'s initializer attributes to zeros; returns the originals.

    A twin whose every weight is copied from the original need not draw random
    values (a third of the rebuild of ResNet-50); the originals are put back
    once the weights are set, so the compact model's ``get_config`` is the
    original's.
    """
    saved = {
        name: value
        for name, value in vars(layer).items()
        if name.endswith("_initializer") and isinstance(value, keras.initializers.Initializer)
    }
    for name in saved:
        setattr(layer, name, keras.initializers.Zeros())
    return saved


def _in_order(values: dict[str, np.ndarray], twin: keras.Layer) -> list[np.ndarray]:
    """``values`` in the order of ``twin.weights``: by name, else in the original's order.

    Weights created without a name get a process-wide counter (``variable_7``),
    so a twin's names can differ from the original's; its weights are then in
    the same order (same class and config).
    """
    names = [v.name for v in twin.weights]
    if all(n in values for n in names):
        return [values[n] for n in names]
    return list(values.values())


def compact_weights(
    layer: keras.Layer,
    call: LayerCall,
    cut: LayerCut | None,
    plan: SurgeryPlan,
    delta: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Weight name -> the compact layer's value: sliced, mapped and bias-folded.

    A mixing weight's input axis takes the groups' consumer ops (selection or
    consumer map); every other channel axis is sliced by ``cut``. ``delta`` (full
    output width) is added to the bias before the output axis is sliced.
    """
    values = {}
    for name, value, axes in registry.weights_with_axes(layer):
        if axes is None:
            raise ValueError(_unknown_weight(layer, name))
        values[name] = value
    if delta is not None:
        bias = values.get("bias", np.zeros(delta.shape, dtype=np.float32))
        values["bias"] = (bias + delta).astype(bias.dtype)
    rule = registry.rule_for(layer)
    axes_by_name = dict(rule.axes_for(layer))
    axes_by_name.setdefault("bias", {0: registry.OUT})
    groups = registry.kernel_groups(layer)
    out = {}
    for name, value in values.items():
        if name == "kernel" and groups > 1:
            full = _compact_weight(
                ungroup_kernel(value, groups), axes_by_name[name], layer, call, cut, plan
            )
            out[name] = regroup_kernel(full, groups, layer.name)
        else:
            out[name] = _compact_weight(value, axes_by_name[name], layer, call, cut, plan)
    return out


def _compact_weight(value, axes, layer, call, cut, plan) -> np.ndarray:
    mixing = mixing_axis(axes)
    for axis, side in axes.items():
        if mixing is not None and axis == mixing[0]:
            value = remap_axis(value, axis, _input_layout(layer, call, side), plan.consumer_op)
            continue
        idx = None if cut is None else cut.side(side)
        if idx is not None:
            value = np.take(value, idx, axis=axis)
    return value


def _cut_config(layer: Any, config: dict, graph: ChannelGraph, keep_of) -> dict:
    """The layer's (or operation's) config after the cut, from its rule."""
    call = graph.first_call(layer)
    rule = registry.rule_for(layer)
    if call is None or rule is None:
        return config
    return rule.cut_config(layer, config, call, keep_of)


def inexact_notes(graph: ChannelGraph, keep: Mapping[int, np.ndarray]) -> list[str]:
    """One line per cut group whose cut changes the kept channels too (LayerNormalization)."""
    notes = []
    for group in graph.groups():
        if group.id in keep and group.inexact:
            names = ", ".join(f"'{p}'" for p in group.producers) or f"group {group.id}"
            notes.append(f"the channels of {names}: {group.inexact[0]}")
    return notes


def _warn_inexact(lines: list[str]) -> None:
    """Logs (absl, warning) which cut groups are not output-exact (:func:`inexact_notes`)."""
    if lines:
        logging.warning(
            "%d cut channel group(s) pass a normalization over the channels, so the compact "
            "model differs from the original on the kept channels too, e.g. %s",
            len(lines),
            lines[0],
        )


def _input_layout(layer: keras.Layer, call: LayerCall, side: str) -> Layout:
    layout = call.in_layouts[0]
    if side == registry.IN_EXPANDED:
        return layout.expanded(registry.rule_for(layer).expansion(layer))
    return layout


def _mapped_input(call: LayerCall, plan: SurgeryPlan) -> bool:
    """True when the call's input carries a group with a (non-selection) consumer map."""
    if not call.in_layouts or not is_consumer(call.layer):
        return False
    return any(
        (group := plan.group_of_space(s)) is not None and group.matrix is not None
        for s in call.in_layouts[0].spaces
    )


def _wrapped_groups(graph: ChannelGraph, keep: Mapping[int, np.ndarray], wrap: Mapping) -> set:
    """Groups (in ``keep``) with a producer that ``wrap`` replaces."""
    if not wrap:
        return set()
    return {
        g.id
        for g in graph.groups()
        if g.id in keep and any(id(graph.layers[p]) in wrap for p in g.producers)
    }


def _unknown_weight(layer: keras.Layer, name: str) -> str:
    return (
        f"Layer '{layer.name}' ({type(layer).__name__}) has a weight '{name}' that the "
        "channel registry does not know how to cut; register a rule for this layer "
        "class with tf_filterprune.graph.register_layer."
    )


def clone(
    model: keras.Model,
    clone_function: Callable[[Any], Any],
    *,
    clone_operation: Callable[[Any], Any] | None = None,
    call_function: Callable[..., Any] | None = None,
    like: Any = None,
    substitutes: Mapping[int, keras.Model] | None = None,
) -> keras.Model:
    """``keras.models.clone_model`` (recursive), keeping the input layers' names.

    ``clone_function`` sees layers only. ``Lambda`` layers bypass it: they are
    re-created around the same Python function (see :func:`copy_lambda`),
    because their config does not round trip (Keras refuses to deserialize a
    Python lambda); the channel registry never cuts a Lambda. ``keras.ops``
    operation nodes go to ``clone_operation`` (default :func:`copy_operation`).
    ``call_function(twin, *args, **kwargs)`` makes each call of a Functional
    model's clone (default: ``twin(*args, **kwargs)``).

    A model nested in a Functional or Sequential model is cloned where it is
    first called, with inputs shaped like the tensors it receives there (its
    input channels may have been cut); ``like`` gives those tensors (structured as
    ``model.input``) for this model's own inputs.

    ``substitutes`` maps a layer id to a Functional model that stands for it
    (a custom layer traced into its sublayers, ``ChannelGraph.traced``): the
    clone holds a clone of that model, named as the layer, in its place, called
    with the layer's first argument (and ``training``).
    """
    clone_operation = clone_operation or copy_operation
    substitutes = substitutes or {}
    deferred: dict[int, Any] = {}

    def nested(inner, like_tensors):
        return clone(
            inner,
            clone_function,
            clone_operation=clone_operation,
            call_function=call_function,
            like=like_tensors,
            substitutes=substitutes,
        )

    def clone_plain(layer):
        if type(layer) is keras.layers.Lambda:
            return copy_lambda(layer)
        if not isinstance(layer, keras.Layer):
            return clone_operation(layer)
        return clone_function(layer)

    def clone_layer(layer):
        if (isinstance(layer, keras.Model) and _has_graph(layer)) or id(layer) in substitutes:
            deferred[id(layer)] = None  # cloned by call_layer, at the widths it is called with
            return layer
        return clone_plain(layer)

    def call_layer(twin, *args, **kwargs):
        if id(twin) not in deferred:
            return call_function(twin, *args, **kwargs) if call_function else twin(*args, **kwargs)
        substitute = substitutes.get(id(twin))
        if substitute is not None:  # a traced custom layer: its model takes the first argument
            kwargs = {k: v for k, v in kwargs.items() if k == "training"}
            args = args[:1]
        if deferred[id(twin)] is None:
            deferred[id(twin)] = nested(
                twin if substitute is None else substitute,
                args[0] if args else kwargs.get("inputs"),
            )
        return deferred[id(twin)](*args, **kwargs)

    if isinstance(model, keras.Sequential):
        first = None if like is None else keras.tree.flatten(like)[0]
        running = [_input_like(model.inputs[0], model.inputs[0] if first is None else first)]

        def clone_in_sequence(layer):
            # Layers are cloned in order; the running tensor carries the cut widths, so a
            # nested model is cloned with inputs shaped like what it receives here.
            if isinstance(layer, keras.Model) and _has_graph(layer):
                twin = nested(layer, running[0])
            elif id(layer) in substitutes:
                twin = nested(substitutes[id(layer)], running[0])
            else:
                twin = clone_plain(layer)
            running[0] = twin(running[0])
            return twin

        return keras.models.clone_model(
            model,
            input_tensors=None if first is None else _input_like(model.inputs[0], first),
            clone_function=clone_in_sequence,
            recursive=False,
        )
    inputs = keras.tree.map_structure(lambda t: _input_like(t, t), model.input)
    if like is not None:
        inputs = _inputs_like(model.input, like, inputs)
    return keras.models.clone_model(
        model,
        input_tensors=inputs,
        clone_function=clone_layer,
        call_function=call_layer,
        recursive=False,
    )


def _has_graph(model: keras.Model) -> bool:
    return isinstance(model, keras.Sequential) or hasattr(model, "_nodes_by_depth")


def _input_like(original: Any, like: Any) -> Any:
    """A new ``keras.Input`` named as the ``original`` input, shaped as the ``like`` tensor."""
    name = original._keras_history.operation.name
    return keras.Input(batch_shape=tuple(like.shape), dtype=original.dtype, name=name)


def _inputs_like(structure: Any, like: Any, default: Any) -> Any:
    """New inputs for ``structure`` shaped as ``like`` (``default`` if they do not match)."""
    try:
        return keras.tree.map_structure(_input_like, structure, like)
    except (TypeError, ValueError):
        return default


def layer_from_config(layer: keras.Layer, config: dict | None = None) -> keras.Layer:
    """A new layer of ``layer``'s class from ``config`` (default: its own config).

    Serialized callables that ``config`` keeps from ``layer.get_config()`` (a
    Python-lambda or unregistered activation, a custom initializer...) are
    replaced by ``layer``'s live objects (see :func:`live_config`), so they
    survive without a deserialization round trip (which Keras refuses for
    lambdas in safe mode and cannot do for unregistered functions). Nothing is
    shared with ``layer`` but those stateless callables: the new layer has its
    own variables.

    Raises:
        ValueError: the config still does not load; the message names the layer.

    Example:

    >>> import keras
    >>> dense = keras.layers.Dense(3, activation=lambda t: t * 2.0, name="d")
    >>> twin = layer_from_config(dense, dict(dense.get_config(), units=2))
    >>> twin.units, twin.activation is dense.activation, twin is dense
    (2, True, False)
    """
    own = own_config(layer)
    config = live_config(layer, own if config is None else config, own)
    try:
        return type(layer).from_config(config)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"Layer '{layer.name}' ({type(layer).__name__}) cannot be re-created from its "
            f"config, which the pruned copy needs: {err}. Make its get_config() hold every "
            "constructor argument, and register custom functions or classes it takes with "
            "keras.saving.register_keras_serializable()."
        ) from err


def own_config(layer: keras.Layer) -> dict:
    """``layer.get_config()``, without Keras' warning about serializing a ``lambda``.

    The surgery reads configs to re-create layers in memory, around the live
    functions (:func:`live_config`); nothing is saved, so the warning would mislead.
    A layer without a ``get_config`` of its own whose automatic config fails
    (keras_hub builds ``Identity(dtype=<a DTypePolicy>)``) gets the base
    config: its name, ``trainable`` and dtype policy (enough for such a layer;
    re-creating one with more constructor arguments then fails with its name).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message="The object being serialized includes a `lambda`",
            category=UserWarning,
        )
        try:
            return layer.get_config()
        except NotImplementedError:
            return {
                "name": layer.name,
                "trainable": layer.trainable,
                "dtype": keras.dtype_policies.serialize(layer.dtype_policy),
            }


def live_config(layer: Any, config: dict, own: dict | None = None) -> dict:
    """``config`` with each serialized callable replaced by ``layer``'s attribute of that name.

    An entry is replaced where it is a serialized object (a dict) or a function
    name, equal to the entry of ``own`` (``layer.get_config()``: an edited
    entry is kept as given), and ``layer`` holds a callable under the same
    name that is neither a layer nor one of its methods (``activation``,
    ``kernel_initializer``, a custom layer's function argument...).
    """
    own = own_config(layer) if own is None else own
    live = dict(config)
    for key, value in config.items():
        if not isinstance(value, dict | str) or key in ("name", "dtype"):
            continue
        if key not in own or own[key] is not value and own[key] != value:
            continue
        attribute = getattr(layer, key, None)
        if _stateless_callable(attribute, layer):
            live[key] = attribute
    return live


def _stateless_callable(attribute: Any, layer: Any) -> bool:
    """A callable argument object (function, initializer...), not a layer or a bound method."""
    if not callable(attribute) or isinstance(attribute, keras.Operation):
        return False
    return getattr(attribute, "__self__", None) is not layer


def copy_operation(op: Any, edit_config: Callable[[dict], dict] | None = None) -> Any:
    """A new ``keras.ops`` operation like ``op`` (its config edited by ``edit_config``).

    An operation whose config does not round trip (built from Python objects)
    is used as is when its config needs no change: operations hold no state.
    """
    try:
        config = op.get_config()
    except NotImplementedError:
        return op
    edited = config if edit_config is None else edit_config(config)
    try:
        return type(op).from_config(edited)
    except (TypeError, ValueError):
        if edited is config:  # nothing to change: the same (stateless) operation serves
            return op
        raise


def copy_lambda(layer: keras.layers.Lambda) -> keras.layers.Lambda:
    """A new ``Lambda`` with the same function, arguments, name and dtype policy.

    Built from the live objects of the in-memory model (trusted), not from the
    config, so Python lambdas and closures survive.
    """
    return keras.layers.Lambda(
        layer.function,
        output_shape=layer._output_shape,
        mask=layer.mask,
        arguments=dict(layer.arguments),
        name=layer.name,
        dtype=layer.dtype_policy,
        trainable=layer.trainable,
    )


def zeroed_copy(
    model: keras.Model,
    graph: ChannelGraph,
    keep: Mapping[int, np.ndarray],
    *,
    consumer_maps: Mapping[int, Any] | None = None,
    fold_constants: FoldMode = True,
) -> keras.Model:
    """The same-shape reference model that ``rebuild(..., fold_constants=...)`` reproduces.

    For every channel the compact model does not keep, the producer's kernel
    slice is zeroed (for a SeparableConv the pointwise kernel's output slice);
    biases, normalization parameters and statistics are kept, so a removed
    channel outputs a constant. Then, at the consumers (layers mixing channels):

    - ``fold_constants=True``: nothing more. The compact model equals this
      reference wherever the fold is exact; where :func:`rebuild` notes an
      inexact fold it matches away from the borders only.
    - ``"exact"``: the consumer input slices of removed channels are zeroed at
      the consumers where the fold is not exact (or the constant cannot be
      determined). ``rebuild(..., fold_constants="exact")`` equals this
      reference exactly, on every model.
    - False: the consumer input slices of every removed channel are zeroed
      (the constant is dropped everywhere, as ``rebuild(..., fold_constants=False)``).

    With ``consumer_maps``, each consumer's kept rows take the map at full
    width, the rows of merged members are zeroed and those of folded channels
    kept (so the constant still flows).

    Example:

    >>> import keras, numpy as np
    >>> from tf_filterprune.graph import build_graph
    >>> inp = keras.Input((8, 8, 3))
    >>> x = keras.layers.Conv2D(4, 1, name="c")(inp)
    >>> model = keras.Model(inp, keras.layers.Conv2D(2, 1, name="d")(x))
    >>> graph = build_graph(model)
    >>> keep = {graph.group_of_layer("c").id: np.array([0, 1])}
    >>> x = np.random.default_rng(0).normal(size=(1, 8, 8, 3)).astype("float32")
    >>> ref, compact = zeroed_copy(model, graph, keep), rebuild(model, graph, keep)
    >>> bool(np.allclose(ref(x), compact(x), atol=1e-5))
    True
    """
    mode = check_mode(fold_constants)
    plan = make_plan(graph, keep, consumer_maps)
    folds = analyze_folds(graph, plan) if mode == "exact" else {}
    copy = clone_with_weights(model, graph)
    for calls in graph.calls.values():
        call = calls[0]
        if not is_consumer(call.layer) or not call.layer.weights:
            continue
        zeroed = _reference_zeroed(call, plan, folds, mode)
        groups = registry.kernel_groups(call.layer)
        values = []
        for name, value, axes in registry.weights_with_axes(call.layer):
            if name == "kernel" and groups > 1:
                full = _reference_weight(ungroup_kernel(value, groups), axes, call, plan, zeroed)
                values.append(regroup_kernel(full, groups, call.path))
            else:
                values.append(_reference_weight(value, axes, call, plan, zeroed))
        _find_clone(copy, call.path).set_weights(values)
    return copy


def clone_with_weights(model: keras.Model, graph: ChannelGraph) -> keras.Model:
    """A copy of ``model`` with the same weights; traced custom layers become sub-models.

    Weights are copied layer by layer (a traced sub-model orders its layers by
    the graph, not as the custom layer tracked them).
    """
    pairs = []

    def copy_layer(layer):
        twin = layer_from_config(layer)
        pairs.append((layer, twin))
        return twin

    copy = clone(model, copy_layer, substitutes=graph.traced)
    for original, twin in pairs:
        if original.weights:
            twin.set_weights(original.get_weights())
    return copy


def _reference_zeroed(call: LayerCall, plan: SurgeryPlan, folds: dict, mode: FoldMode):
    """``space -> channels`` whose consumer input slice the reference zeroes."""
    empty = np.zeros((0,), np.int64)
    if mode is False:
        return plan.folded_of
    if mode is True or id(call.layer) not in folds:
        return lambda space: empty
    by_group = folds[id(call.layer)].zeroed_in_reference(mode)
    return lambda space: by_group.get(plan.graph.find(space), empty)


def _reference_weight(value, axes, call: LayerCall, plan: SurgeryPlan, zeroed) -> np.ndarray:
    """One weight of the reference: removed output slices zero, input rows mapped/zeroed."""
    mixing = mixing_axis(axes)
    if mixing is None:
        return value
    value = value.copy()
    out_axis = next(a for a, s in axes.items() if s == registry.OUT)
    _zero(value, out_axis, indices_of(call.out_layouts[0], lambda s: _not_kept(plan, s)))
    layout = _input_layout(call.layer, call, mixing[1])
    value = remap_axis(value, mixing[0], layout, plan.full_width_op)
    _zero(value, mixing[0], indices_of(layout, zeroed))
    return value


def _not_kept(plan: SurgeryPlan, space: int) -> np.ndarray:
    group = plan.group_of_space(space)
    if group is None:
        return np.zeros((0,), np.int64)
    return np.setdiff1d(np.arange(group.size), group.keep)


def _zero(value: np.ndarray, axis: int, idx: np.ndarray) -> None:
    if idx.size:
        index = [slice(None)] * value.ndim
        index[axis] = idx
        value[tuple(index)] = 0.0


def _find_clone(model: keras.Model, path: str) -> keras.Layer:
    layer: Any = model
    for part in path.split("/"):
        layer = layer.get_layer(part)
    return layer


def check_blocks(graph: ChannelGraph, keep: Mapping[int, np.ndarray]) -> None:
    """Raises ValueError unless every cut group keeps as many channels in each of its blocks.

    A group read or made by a grouped conv (``ChannelGroup.blocks > 1``) must
    keep the same number of channels in each of the conv's groups.
    """
    groups = {g.id: g for g in graph.groups()}
    for gid, kept in keep.items():
        group = groups.get(gid)
        if group is None or group.blocks == 1:
            continue
        counts = group.block_counts(kept)
        if len(set(counts.tolist())) > 1:
            convs = ", ".join(f"'{p}'" for p in group.blocked_by)
            name = ", ".join(f"'{p}'" for p in group.producers) or f"group {gid}"
            raise ValueError(
                f"The channels of {name} pass the grouped conv(s) {convs}: keep the same "
                f"number in each of their {group.blocks} groups of {group.size // group.blocks} "
                f"channels; the kept indices give {counts.tolist()}."
            )


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
    check_blocks(graph, by_group)
    return by_group


def prune_channels(
    model: keras.Model,
    keep: Mapping[str, Sequence[int]],
    *,
    consumer_maps: Mapping[str, Any] | None = None,
    fold_constants: FoldMode = True,
    notes: list[str] | None = None,
) -> keras.Model:
    """Returns a compact copy of ``model`` keeping only the given output channels.

    Every layer coupled to a named layer (BatchNormalization, the next conv's
    input slice, the other branches of a residual ``Add``, a Concatenate's
    consumer, a Flatten -> Dense's rows) is cut to match, and the constant
    output of each removed channel is folded into its consumers' biases (see
    :func:`rebuild`). The input model is not modified.

    Args:
        model: a built Functional or Sequential Keras model.
        keep: layer name -> indices of its output channels to keep.
        consumer_maps: layer name (as in ``keep``) -> ``(len(keep), C)`` consumer map.
        fold_constants: True, ``"exact"`` or False (see :func:`rebuild`).
        notes: if given, receives the notes of inexact or skipped folds.

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
    by_group = resolve_keep(graph, keep)
    maps = {}
    for name, matrix in (consumer_maps or {}).items():
        path = graph.resolve(name)
        gid = graph.group_of_layer(path).id
        if gid not in by_group:
            raise ValueError(f"consumer_maps names '{path}', which `keep` does not prune.")
        maps[gid] = matrix
    return rebuild(
        model, graph, by_group, consumer_maps=maps, fold_constants=fold_constants, notes=notes
    )
