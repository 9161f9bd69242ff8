"""The tfmot-shaped training API: ``prune_filters``, ``prune_scope``, ``custom_objects``.

Example:

>>> import keras, numpy as np, tf_filterprune as tffp
>>> model = tffp.models.fashion_cnn()
>>> wrapped = tffp.prune_filters(model, tffp.DCFF(keep_ratio=0.5), round_to=8)
>>> [layer.out_channels for layer in wrapped.layers if hasattr(layer, "out_channels")]
[16, 16, 32, 32, 64]
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np

from tf_filterprune.graph import build_graph
from tf_filterprune.methods.base import FilterPruningWrapper, PruningMethod
from tf_filterprune.methods.dcff import DCFF
from tf_filterprune.pruner import (
    Budget,
    MacsModel,
    allocate,
    check_target,
    per_layer_ratios,
    select_groups,
)
from tf_filterprune.schedules import SigmoidTemperature
from tf_filterprune.surgery import rebuild


def custom_objects() -> dict[str, Any]:
    """The classes needed to load a model saved while wrapped for filter pruning."""
    return {
        "FilterPruningWrapper": FilterPruningWrapper,
        "DCFF": DCFF,
        "SigmoidTemperature": SigmoidTemperature,
    }


def prune_scope() -> contextlib.AbstractContextManager:
    """A scope in which a saved wrapped model loads again.

    Example:

    >>> import keras, tf_filterprune as tffp
    >>> with tffp.prune_scope():
    ...     pass  # keras.models.load_model("wrapped.keras")
    """
    return keras.saving.custom_object_scope(custom_objects())


def _wrappable(graph, group) -> bool:
    """A group DCFF-style methods can own: one plain Conv2D creates all its channels."""
    if len(group.producers) != 1:
        return False
    layer = graph.layers[group.producers[0]]
    return type(layer) is keras.layers.Conv2D and layer.groups == 1


def wrappable_layers(model: keras.Model) -> list[str]:
    """Names of the Conv2D layers ``prune_filters`` wraps, in graph order.

    For a VGG these are all the convs; for a ResNet, the first conv of each
    residual block (the others are tied by the residual Adds).
    """
    graph = build_graph(model)
    return [g.producers[0] for g in select_groups(graph) if _wrappable(graph, g)]


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
    round_to: int = 1,
    min_filters: int = 1,
    target_macs_reduction: float | None = None,
) -> Any:
    """Wraps the prunable Conv2D layers of a model for filter pruning while training.

    Shaped like tfmot's ``prune_low_magnitude``. The returned model trains with
    ``model.fit(..., callbacks=[tffp.callbacks.UpdateFilterPruning()])`` and
    becomes a plain, physically smaller model with
    :func:`tffp.strip_filter_pruning`. The input model is not modified.

    Which layers are wrapped: every Conv2D that alone creates a group of
    channels. Channels tied across several layers (the residual stream of a
    ResNet, a squeeze-excite gate) are left whole: the DCFF paper prunes only
    the first conv of each residual block.

    Args:
        to_prune: a Functional or Sequential model, a Conv2D layer, or a list
            of layers (as in a ``keras.models.clone_model`` clone function; a
            layer is wrapped at full width).
        method: a :class:`PruningMethod` such as ``tffp.DCFF(keep_ratio=0.5)``.
        ignored_layers: layers (or names) left unwrapped.
        per_layer: layer name -> keep ratio, overriding ``method.keep_ratio``.
        round_to: kept filter counts are multiples of this.
        min_filters: no layer keeps fewer filters.
        target_macs_reduction: instead of ``method.keep_ratio``, the fraction of
            the model's MACs the stripped model removes (e.g. 0.5); the widths
            are allocated as in :func:`tffp.prune_once`.

    Returns:
        A new model (or wrapped layer / list of layers).
    """
    if not isinstance(method, PruningMethod):
        raise ValueError(f"`method` must be a PruningMethod, got {type(method).__name__}.")
    if isinstance(to_prune, keras.Model):
        return _prune_model(
            to_prune,
            method,
            ignored_layers,
            per_layer,
            round_to,
            min_filters,
            target_macs_reduction,
        )
    if isinstance(to_prune, list | tuple):
        return [prune_filters(layer, method) for layer in to_prune]
    if isinstance(to_prune, keras.layers.Layer):
        if type(to_prune) is keras.layers.Conv2D and to_prune.groups == 1:
            return FilterPruningWrapper(to_prune, method)
        return to_prune
    raise ValueError(
        f"prune_filters expects a keras Model, a layer or a list of layers, got "
        f"{type(to_prune).__name__}."
    )


def _prune_model(model, method, ignored_layers, per_layer, round_to, min_filters, target):
    graph = build_graph(model)
    budget = Budget(
        method.keep_ratio, per_layer_ratios(graph, per_layer), int(round_to), int(min_filters)
    )
    groups = [g for g in select_groups(graph, ignored_layers) if _wrappable(graph, g)]
    if not groups:
        raise ValueError(
            f"No Conv2D layer of model '{model.name}' can be wrapped for filter pruning "
            "(each must alone create its output channels)."
        )
    if target is None:
        counts = {g.id: budget.count(g) for g in groups}
    else:
        check_target(target)
        macs = MacsModel(model, graph)
        counts = allocate(macs, groups, budget, macs.total * (1.0 - target))
    keep, wrap = {}, {}
    for group in groups:
        count = counts[group.id]
        producer = graph.layers[group.producers[0]]
        keep[group.id] = np.arange(count)
        wrap[id(producer)] = _wrap_function(method, count)
    return rebuild(model, graph, keep, wrap)


def _wrap_function(method: PruningMethod, count: int):
    def wrap(layer: keras.layers.Layer) -> FilterPruningWrapper:
        return FilterPruningWrapper(layer, method, out_channels=count)

    return wrap
