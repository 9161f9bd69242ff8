"""The tfmot-shaped training API: ``prune_filters``, ``prune_scope``, ``custom_objects``.

Example:

>>> import keras, numpy as np, tf_filterprune as tffp
>>> model = tffp.models.fashion_cnn()
>>> wrapped = tffp.prune_filters(model, tffp.DCFF(keep_ratio=0.5), round_to=8)
>>> [layer.out_channels for layer in tffp.methods.base.wrappers_of(wrapped)]
[16, 16, 32, 32, 64]
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
from absl import logging

from tf_filterprune.graph import ChannelGraph, build_graph
from tf_filterprune.graph.dependency import describe_non_keras3
from tf_filterprune.methods.base import (
    FilterPruningWrapper,
    PruningContext,
    PruningMethod,
    owned_groups,
    wrappers_of,
)
from tf_filterprune.pruner import (
    Budget,
    MacsModel,
    allocate,
    check_target,
    kept_count,
    per_layer_ratios,
    refusal_message,
    refusals,
    select_groups,
)
from tf_filterprune.surgery import rebuild

PACKAGE = "tf_filterprune"
"""The Keras serialization package every wrapper, method and schedule registers under."""


def custom_objects() -> dict[str, Any]:
    """The classes needed to load a model saved while wrapped for filter pruning.

    Every class registered with ``keras.saving.register_keras_serializable(
    package="tf_filterprune")`` (wrappers, methods, schedules), found in Keras'
    registry rather than a hand-kept list.

    Example:

    >>> import tf_filterprune as tffp
    >>> sorted(n for n in tffp.custom_objects() if n in ("DCFF", "FilterPruningWrapper"))
    ['DCFF', 'FilterPruningWrapper']
    """
    prefix = PACKAGE + ">"
    return {
        name[len(prefix) :]: obj
        for name, obj in keras.saving.get_custom_objects().items()
        if name.startswith(prefix)
    }


def prune_scope() -> contextlib.AbstractContextManager:
    """A scope in which a saved wrapped model loads again.

    Example:

    >>> import keras, tf_filterprune as tffp
    >>> with tffp.prune_scope():
    ...     pass  # keras.models.load_model("wrapped.keras")
    """
    return keras.saving.custom_object_scope(custom_objects())


def _plain_conv(layer: Any) -> bool:
    return type(layer) is keras.layers.Conv2D and layer.groups == 1


def _wrappable(graph: ChannelGraph, group, method: PruningMethod | None = None) -> bool:
    """A group ``method`` can own: plain Conv2D producers only, one unless it takes coupled ones."""
    producers = [graph.layers[p] for p in group.producers]
    if not producers or not all(_plain_conv(layer) for layer in producers):
        return False
    if group.blocks > 1:  # read by a grouped conv: cut within its groups, by prune_once
        return False
    coupled = method is not None and method.takes_coupled_groups and not method.compact_width
    return len(producers) == 1 or coupled


def wrappable_layers(
    model: keras.Model, method: PruningMethod | None = None, prune_residual: bool = False
) -> list[str]:
    """Names of the Conv2D layers ``prune_filters`` wraps, in graph order.

    For a VGG these are all the convs; for a ResNet, the first conv of each
    residual block (the others are tied by the residual Adds), unless
    ``prune_residual`` and a method that takes coupled groups (DPFPS).
    """
    graph = build_graph(model)
    groups = select_groups(graph, prune_residual=prune_residual)
    return [p for g in groups if _wrappable(graph, g, method) for p in g.producers]


def per_layer_from_rates(model: keras.Model, rates: Sequence[float]) -> dict[str, float]:
    """Turns a paper's per-conv list of prune *rates* into ``per_layer`` keep ratios.

    ``rates[i]`` is the fraction of filters removed from the i-th layer of
    :func:`wrappable_layers` (DCFF's VGG-16 list has 13 entries, its ResNet
    lists one per residual block).

    Example:

    >>> import tf_filterprune as tffp
    >>> rates = [0.5] * 2 + [0.4] * 2 + [0.35] * 3 + [0.85] * 6
    >>> keep = tffp.per_layer_from_rates(tffp.models.vgg16_cifar(), rates)
    >>> keep["conv1"], keep["conv13"]
    (0.5, 0.15000000000000002)
    """
    names = wrappable_layers(model)
    if len(rates) != len(names):
        raise ValueError(
            f"Got {len(rates)} prune rates for model '{model.name}', which has {len(names)} "
            f"layers to prune: {names}."
        )
    out = {}
    for name, rate in zip(names, rates, strict=True):
        if not (0.0 <= rate < 1.0):
            raise ValueError(f"Prune rate of '{name}' must be in [0, 1), got {rate}.")
        out[name] = 1.0 - float(rate)
    return out


def prune_filters(
    to_prune: keras.Model | keras.layers.Layer | Sequence[keras.layers.Layer],
    method: PruningMethod,
    *,
    ignored_layers: Sequence[Any] = (),
    per_layer: Mapping[str, float] | None = None,
    round_to: int | str = 1,
    min_filters: int = 1,
    target_macs_reduction: float | None = None,
    prune_residual: bool = False,
    target_latency_reduction: float | None = None,
    num_threads: int = 1,
    latency_cache_dir: str | None = None,
) -> Any:
    """Wraps the prunable Conv2D layers of a model for filter pruning while training.

    Shaped like tfmot's ``prune_low_magnitude``. The returned model trains with
    ``model.fit(..., callbacks=[tffp.callbacks.UpdateFilterPruning()])`` and
    becomes a plain, physically smaller model with
    :func:`tffp.strip_filter_pruning`. The input model is not modified.

    Which layers are wrapped: every Conv2D that alone creates a group of
    channels. Channels tied across several layers (the residual stream of a
    ResNet) are left whole, as the papers do, unless ``prune_residual`` and the
    method can take tied groups (DPFPS): then all the stream's convs are wrapped
    and pruned together.

    Args:
        to_prune: a Functional or Sequential model, a Conv2D layer, or a list
            of layers (as in a ``keras.models.clone_model`` clone function: a
            compact-width method wraps the layer at ``method.keep_ratio`` of
            its filters, and the clone's next layers build at that width).
        method: a :class:`PruningMethod` such as ``tffp.DCFF(keep_ratio=0.5)``.
        ignored_layers: layers (or names) left unwrapped.
        per_layer: layer name -> keep ratio, overriding ``method.keep_ratio``.
        round_to: kept filter counts are multiples of this, or ``"auto"`` (the
            channel tile measured on this machine, see :func:`tffp.prune_once`).
        min_filters: no layer keeps fewer filters.
        target_macs_reduction: instead of ``method.keep_ratio``, the fraction of
            the model's MACs the stripped model removes (e.g. 0.5); the widths
            are allocated as in :func:`tffp.prune_once`. Methods that allocate
            widths themselves (DPFPS) take it in their own constructor.
        prune_residual: also wrap the convs of residual streams (methods with
            ``takes_coupled_groups`` only).
        target_latency_reduction: instead of ``method.keep_ratio`` or
            ``target_macs_reduction``, the fraction of the TFLite latency the
            stripped model removes; widths allocated by the measured latency
            model, as in :func:`tffp.prune_once`.
        num_threads: interpreter threads of the latency model.
        latency_cache_dir: where latency models are cached (see
            :mod:`tf_filterprune.latency`).

    Returns:
        A new model (or wrapped layer / list of layers).

    Raises:
        ValueError: a bad budget, no layer to wrap, or settings the method
            cannot meet on this model (the message names them).
    """
    if not isinstance(method, PruningMethod):
        raise ValueError(f"`method` must be a PruningMethod, got {type(method).__name__}.")
    latency_budget = None
    if target_latency_reduction is not None or isinstance(round_to, str):
        from tf_filterprune import latency  # layer 5 (DESIGN.md), above this API: lazily

        latency.check_latency_budget(
            target_latency_reduction, target_macs_reduction=target_macs_reduction
        )
        round_to = latency.resolve_round_to(round_to, num_threads, latency_cache_dir)
        if target_latency_reduction is not None:
            latency_budget = {
                "target_latency_reduction": target_latency_reduction,
                "num_threads": num_threads,
                "cache_dir": latency_cache_dir,
            }
    if method.allocates_widths and latency_budget is not None:
        raise ValueError(
            f"{type(method).__name__} allocates the widths itself: it takes no "
            "target_latency_reduction."
        )
    if int(round_to) < 1 or int(min_filters) < 1:
        raise ValueError("`round_to` and `min_filters` must be positive integers.")
    if method.allocates_widths and (target_macs_reduction is not None or per_layer):
        raise ValueError(
            f"{type(method).__name__} allocates the widths itself: give its budget to "
            f"tffp.{type(method).__name__}(...), not target_macs_reduction / per_layer to "
            "prune_filters."
        )
    if isinstance(to_prune, keras.Model):
        settings = (ignored_layers, per_layer, round_to, min_filters, target_macs_reduction)
        return _prune_model(
            to_prune, method, *settings, prune_residual, latency_budget=latency_budget
        )
    if isinstance(to_prune, list | tuple):
        return [prune_filters(layer, method) for layer in to_prune]
    if isinstance(to_prune, keras.layers.Layer):
        if not _plain_conv(to_prune):
            return to_prune
        count = kept_count(to_prune.filters, method.keep_ratio, int(round_to), int(min_filters))
        return FilterPruningWrapper(
            to_prune, method, kept_channels=count, round_to=round_to, min_filters=min_filters
        )
    raise ValueError(
        f"prune_filters expects a keras Model, a layer or a list of layers, got "
        f"{describe_non_keras3(to_prune)}."
    )


def _check_fixed_sizes(model: keras.Model) -> None:
    """Refuses inputs of unknown spatial size: the callback and the strip count MACs."""
    for tensor in model.inputs:
        shape = tuple(tensor.shape)
        if any(d is None for d in shape[1:]):
            raise ValueError(
                f"prune_filters needs fixed input sizes, but the input '{tensor.name}' of "
                f"'{model.name}' has shape {shape}: the pruning callback and "
                "strip_filter_pruning count MACs per layer. Build the model on an input of "
                "the training size, e.g. keras.Input((32, 32, 3))."
            )


def _prune_model(
    model,
    method,
    ignored_layers,
    per_layer,
    round_to,
    min_filters,
    target,
    prune_residual,
    *,
    latency_budget: dict[str, Any] | None = None,
):
    _check_fixed_sizes(model)
    graph = build_graph(model)
    budget = Budget(
        method.keep_ratio, per_layer_ratios(graph, per_layer), int(round_to), int(min_filters)
    )
    groups = [
        g
        for g in select_groups(graph, ignored_layers, prune_residual)
        if _wrappable(graph, g, method)
    ]
    if not groups:
        raise ValueError(
            nothing_to_wrap(graph, method, ignored_layers, prune_residual, int(min_filters))
        )
    if latency_budget is not None:
        from tf_filterprune import latency  # lazily, as in prune_filters

        counts = latency.allocate_for_target(model, graph, groups, budget, **latency_budget)
    elif target is None:
        counts = {g.id: budget.count(g) for g in groups}
    else:
        check_target(target)
        macs = MacsModel(model, graph)
        counts = allocate(macs, groups, budget, macs.total * (1.0 - target))
    keep, wrap = {}, {}
    for group in groups:
        count = counts[group.id]
        if method.compact_width:
            keep[group.id] = np.arange(count)  # consumers are built at the kept width
        for path in group.producers:
            wrap[id(graph.layers[path])] = _wrap_function(method, count, budget)
    wrapped = rebuild(model, graph, keep, wrap, fold_constants=False)
    if type(method).validate is not PruningMethod.validate:  # graph + MACs only if needed
        method.validate(method_contexts(wrapped, with_macs=True)[0])
    return wrapped


def nothing_to_wrap(
    graph: ChannelGraph,
    method: PruningMethod,
    ignored_layers: Sequence[Any] = (),
    prune_residual: bool = False,
    min_filters: int = 1,
) -> str:
    """The error message for a model with no layer ``prune_filters`` can wrap, per group."""
    lines = refusals(graph, ignored_layers, prune_residual, min_filters)
    for group in select_groups(graph, ignored_layers, prune_residual):
        if not _wrappable(graph, group, method):
            names = ", ".join(f"'{p}'" for p in group.producers)
            lines.append(f"- {names} ({group.size} channels): {_why_not_wrapped(graph, group)}")
    why = (
        f"wrapped for filter pruning: {type(method).__name__} wraps plain Conv2D layers "
        "(groups=1) that alone make a group of channels (tffp.prune_once cuts the other "
        "prunable layers once)"
    )
    return refusal_message(graph, why, lines)


def _why_not_wrapped(graph: ChannelGraph, group) -> str:
    if group.blocks > 1:
        convs = ", ".join(f"'{p}'" for p in group.blocked_by)
        return (
            f"its channels are made or read by the grouped conv(s) {convs}, which "
            "tffp.prune_once cuts within their groups"
        )
    others = [p for p in group.producers if not _plain_conv(graph.layers[p])]
    if others:
        layer = graph.layers[others[0]]
        kind = f"a {type(layer).__name__}"
        if getattr(layer, "groups", 1) > 1:
            kind = f"a grouped {type(layer).__name__} (groups={layer.groups})"
        return f"'{others[0]}' is {kind}, not a plain Conv2D"
    return (
        "its channels are tied across several convs (a residual stream), which this "
        "method does not take"
    )


def _wrap_function(method: PruningMethod, count: int, budget: Budget):
    def wrap(layer: keras.layers.Layer) -> FilterPruningWrapper:
        return FilterPruningWrapper(
            layer,
            method,
            kept_channels=count,
            round_to=budget.round_to,
            min_filters=budget.min_filters,
        )

    return wrap


def method_contexts(model: keras.Model, *, with_macs: bool = False) -> list[PruningContext]:
    """One :class:`PruningContext` per method of a wrapped model (wrappers, groups, MACs).

    Wrappers loaded from a file each hold their own copy of the method; copies
    with equal configs are one method here, and the first copy runs its hooks.

    Raises:
        ValueError: the model has no filter-pruning wrapper.
    """
    wrappers = wrappers_of(model)
    if not wrappers:
        raise ValueError(
            f"Model '{model.name}' has no filter-pruning wrapper; wrap it with "
            "tffp.prune_filters(model, method) first."
        )
    graph = build_graph(model)
    groups, skipped = owned_groups(graph)
    for reason in skipped:
        logging.warning("tf_filterprune: left whole: %s.", reason)
    macs = MacsModel(model, graph) if with_macs else None
    contexts: dict[tuple, PruningContext] = {}
    for wrapper in wrappers:
        key = wrapper.method.kind()
        if key not in contexts:
            contexts[key] = PruningContext(model, [], [], macs=macs)
        contexts[key].wrappers.append(wrapper)
    for group in groups:
        contexts[group.leader.method.kind()].groups.append(group)
    return list(contexts.values())
