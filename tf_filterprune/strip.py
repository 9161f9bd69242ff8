"""``strip_filter_pruning``: a wrapped model becomes a plain, physically smaller model.

Strip = unwrap, then cut. Every wrapper becomes the plain Conv2D that computes
what it computes in inference mode (its method's producer weights); every method
gives a :class:`~tf_filterprune.methods.base.ChannelPlan` per group it owns;
the surgery applies the plans (it alone slices weights, merges consumer slices
and folds the constant output of removed channels into consumer biases).
"""

from __future__ import annotations

import warnings
from typing import Any

import keras
import numpy as np

from tf_filterprune.api import method_contexts
from tf_filterprune.batchnorm import batchnorm_layers, recalibrate_batchnorm
from tf_filterprune.graph import build_graph
from tf_filterprune.methods.base import ChannelPlan, FilterPruningWrapper, PrunedGroup
from tf_filterprune.surgery import rebuild
from tf_filterprune.surgery.cut import clone, layer_from_config


def strip_filter_pruning(
    model: keras.Model,
    verify_data: Any = None,
    *,
    calibration_data: Any = None,
    calibration_steps: int | None = 50,
    notes: list[str] | None = None,
):
    """Replaces every filter-pruning wrapper by a plain Conv2D and cuts the channels.

    The result has no wrapper classes, loads without ``custom_objects`` and,
    when the methods' removed channels carry nothing (zeroed groups, binary
    gates, converged clusters), gives the wrapped model's inference-mode outputs.
    The wrapped model is not modified.

    BatchNormalization after a short run: Keras' running statistics (momentum
    0.99) lag the weights, so a wrapped model trained briefly may predict badly
    in inference mode; ``calibration_data`` re-estimates them on the compact
    model (:func:`tffp.recalibrate_batchnorm`). Do it before evaluating.

    Args:
        model: a model returned by :func:`tffp.prune_filters` (trained or not).
        verify_data: optional input batch; when given, the maximum absolute
            difference between the wrapped model and the compact one (both in
            inference mode, before any recalibration) is measured and returned.
        calibration_data: optional training batches (dataset, iterable or array)
            on which the compact model's BN statistics are re-estimated.
        calibration_steps: batches of ``calibration_data`` used.
        notes: optional list that receives the surgery's notes (constants that
            could not be folded exactly) and the methods' notes.

    Returns:
        The compact model, or ``(compact, max_abs_diff)`` with ``verify_data``.

    Example:

    >>> import tf_filterprune as tffp
    >>> wrapped = tffp.prune_filters(tffp.models.fashion_cnn(), tffp.DCFF(keep_ratio=0.25))
    >>> tffp.strip_filter_pruning(wrapped).get_layer("conv5").filters
    32
    """
    contexts = method_contexts(model, with_macs=True)
    plans: list[tuple[PrunedGroup, ChannelPlan]] = []
    for context in contexts:
        method = context.wrappers[0].method
        for group in context.groups:
            plan = method.plan(group, context)
            plans.append((group, plan))
            if plan.note and notes is not None:
                notes.append(plan.note)
    unwrapped = unwrap(model)
    graph = build_graph(unwrapped)
    keep, maps = {}, {}
    for group, plan in plans:
        gid = graph.group_of_layer(group.paths[0]).id
        _check_plan(group, plan)
        if len(plan.keep) < group.size or plan.consumer_map is not None:
            keep[gid] = plan.keep
        if plan.consumer_map is not None:
            maps[gid] = np.asarray(plan.consumer_map, dtype=np.float64)
    compact = rebuild(unwrapped, graph, keep, consumer_maps=maps or None, notes=notes)
    diff = None
    if verify_data is not None:
        expected = keras.ops.convert_to_numpy(model(verify_data, training=False))
        got = keras.ops.convert_to_numpy(compact(verify_data, training=False))
        diff = float(np.max(np.abs(expected - got)))
    if calibration_data is not None:
        recalibrate_batchnorm(compact, calibration_data, steps=calibration_steps)
    elif batchnorm_layers(compact):
        _warn_once_about_batchnorm()
    return compact if verify_data is None else (compact, diff)


_WARNED: list[bool] = []


def _warn_once_about_batchnorm() -> None:
    if _WARNED:
        return
    _WARNED.append(True)
    warnings.warn(
        "strip_filter_pruning: the compact model's BatchNormalization statistics are the "
        "wrapped model's running averages, which lag the weights after a short run or a "
        "cut; re-estimate them before evaluating (calibration_data=train_batches here, or "
        "tffp.recalibrate_batchnorm(compact, train_batches)). This is said once per process.",
        stacklevel=3,
    )


def unwrap(model: keras.Model) -> keras.Model:
    """A copy of ``model`` with every wrapper replaced by the plain layer it computes.

    Full-width wrappers become their full-width conv (with the method's producer
    weights: gates folded, branches folded); compact-width ones a conv of their
    output width. Nothing is cut yet. The wrapped model is not modified.
    """
    pairs: list[tuple[Any, Any]] = []

    def clone_layer(layer):
        if isinstance(layer, FilterPruningWrapper):
            config = dict(layer.layer.get_config(), filters=layer.out_channels)
            twin = layer_from_config(layer.layer, config)
        else:
            twin = layer_from_config(layer)
        pairs.append((layer, twin))
        return twin

    plain = clone(model, clone_layer)
    for original, twin in pairs:
        if isinstance(original, FilterPruningWrapper):
            twin.set_weights(original.stripped_weights())
        elif original.weights:
            twin.set_weights(original.get_weights())
    return plain


def _check_plan(group: PrunedGroup, plan: ChannelPlan) -> None:
    keep = plan.keep
    if keep.size == 0 or keep.min() < 0 or keep.max() >= group.size:
        raise ValueError(
            f"The plan for '{group.name}' keeps {keep.tolist()}; indices must be in "
            f"[0, {group.size}) and at least one."
        )
    if len(np.unique(keep)) != keep.size:
        raise ValueError(f"The plan for '{group.name}' keeps duplicate channels.")
    if plan.consumer_map is not None and np.shape(plan.consumer_map) != (keep.size, group.size):
        raise ValueError(
            f"The consumer map for '{group.name}' must be {(keep.size, group.size)}, "
            f"got {np.shape(plan.consumer_map)}."
        )
