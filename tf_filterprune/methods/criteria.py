"""One-shot importance criteria: L1/L2 norm, BN gamma, Taylor, FPGM, random.

A criterion scores the channels of one channel group (a higher score means
more important). A group can hold several producers (the convs tied by a
residual ``Add``): each member's scores are divided by their mean, so layers of
different scales weigh alike, then averaged. Criteria know nothing of surgery.

Example:

>>> import keras
>>> from tf_filterprune.graph import build_graph
>>> from tf_filterprune.methods.criteria import score_group
>>> inp = keras.Input((8, 8, 3))
>>> out = keras.layers.Conv2D(2, 1)(keras.layers.Conv2D(4, 3, name="c")(inp))
>>> model = keras.Model(inp, out)
>>> graph = build_graph(model)
>>> score_group(graph, graph.group_of_layer("c"), "l1").shape
(4,)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tf_filterprune.graph import ChannelGraph, ChannelGroup, registry

CRITERIA = ("l1", "l2", "bn_gamma", "taylor", "fpgm", "random")


def filter_matrix(layer: keras.Layer, values: list[np.ndarray] | None = None) -> np.ndarray:
    """The producer's filters as rows: shape (output channels, weights per filter).

    Uses every kernel weight with an output-channel axis (``kernel``,
    ``pointwise_kernel``); ``values`` replaces the layer's weights (e.g. gradients).
    """
    rows = []
    for name, value, axes in registry.weights_with_axes(layer, values):
        out_axes = [a for a, side in (axes or {}).items() if side == registry.OUT]
        if out_axes and name.endswith("kernel"):
            moved = np.moveaxis(np.asarray(value), out_axes[0], 0)
            rows.append(moved.reshape(moved.shape[0], -1))
    if not rows:
        raise ValueError(f"Layer '{layer.name}' has no kernel with an output-channel axis.")
    return np.concatenate(rows, axis=1)


def l1_scores(filters: np.ndarray) -> np.ndarray:
    return np.abs(filters).sum(axis=1)


def l2_scores(filters: np.ndarray) -> np.ndarray:
    return np.sqrt((filters**2).sum(axis=1))


def fpgm_scores(filters: np.ndarray) -> np.ndarray:
    """Sum of distances to the other filters: small = close to the geometric median."""
    sq = (filters**2).sum(axis=1)
    dist2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * filters @ filters.T, 0.0)
    return np.sqrt(dist2).sum(axis=1)


def _normalized_mean(parts: list[np.ndarray]) -> np.ndarray:
    scaled = [p / (np.mean(p) if np.mean(p) > 0 else 1.0) for p in parts]
    return np.mean(scaled, axis=0)


def _producer_scores(
    graph: ChannelGraph, group: ChannelGroup, fn: Callable[[keras.Layer], np.ndarray]
) -> np.ndarray:
    return _normalized_mean([fn(graph.layers[path]) for path in group.producers])


def bn_gamma_scores(graph: ChannelGraph, group: ChannelGroup) -> np.ndarray | None:
    """|gamma| of the BatchNormalization layers applied to the group, or None."""
    parts = []
    for path in group.norms:
        layer = graph.layers[path]
        if isinstance(layer, keras.layers.BatchNormalization) and layer.scale:
            parts.append(np.abs(keras.ops.convert_to_numpy(layer.gamma)))
    return _normalized_mean(parts) if parts else None


def taylor_gradients(
    model: keras.Model,
    layers: list[keras.Layer],
    data: Iterable,
    steps: int,
    loss: Any = None,
) -> dict[int, list[np.ndarray]]:
    """Mean gradients of the loss with respect to ``layers``' weights over ``steps`` batches."""
    loss_fn = resolve_loss(model, loss)
    variables = [v for layer in layers for v in layer.weights]
    sums = [np.zeros(v.shape, dtype=np.float32) for v in variables]
    batches = 0
    for batch in data:
        if batches >= steps:
            break
        x, y = _split_batch(batch)
        with tf.GradientTape() as tape:
            tape.watch([v.value for v in variables])
            value = loss_fn(y, model(x, training=False))
        grads = tape.gradient(value, [v.value for v in variables])
        for i, g in enumerate(grads):
            if g is not None:
                sums[i] += keras.ops.convert_to_numpy(g)
        batches += 1
    if batches == 0:
        raise ValueError("The Taylor criterion needs `data` with at least one (x, y) batch.")
    out, i = {}, 0
    for layer in layers:
        n = len(layer.weights)
        out[id(layer)] = [s / batches for s in sums[i : i + n]]
        i += n
    return out


def _split_batch(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, tuple | list) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError("The Taylor criterion needs (x, y) batches to compute a loss.")


def resolve_loss(model: keras.Model, loss: Any = None) -> Callable:
    """The loss for gradient criteria: given, compiled, or sparse cross-entropy."""
    if loss is not None:
        return keras.losses.get(loss) if isinstance(loss, str) else loss
    compiled = getattr(model, "loss", None)
    if compiled is not None and not isinstance(compiled, dict | list):
        return keras.losses.get(compiled) if isinstance(compiled, str) else compiled
    last = model.layers[-1]
    from_logits = getattr(getattr(last, "activation", None), "__name__", "") != "softmax"
    return keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)


def score_group(
    graph: ChannelGraph,
    group: ChannelGroup,
    criterion: str,
    *,
    gradients: dict[int, list[np.ndarray]] | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Importance of each channel of ``group`` under ``criterion`` (higher = keep).

    Args:
        graph: the model's channel graph.
        group: a group of the graph.
        criterion: one of ``CRITERIA``.
        gradients: for "taylor", mean gradients by layer id (see
            :func:`taylor_gradients`).
        rng: for "random".
    """
    if criterion == "l1":
        return _producer_scores(graph, group, lambda layer: l1_scores(filter_matrix(layer)))
    if criterion == "l2":
        return _producer_scores(graph, group, lambda layer: l2_scores(filter_matrix(layer)))
    if criterion == "fpgm":
        return _producer_scores(graph, group, lambda layer: fpgm_scores(filter_matrix(layer)))
    if criterion == "random":
        return (rng or np.random.default_rng(0)).random(group.size)
    if criterion == "bn_gamma":
        scores = bn_gamma_scores(graph, group)
        if scores is None:
            logging.warning(
                "bn_gamma: no BatchNormalization follows %s; scoring it by L1 norm instead.",
                group.producers,
            )
            return score_group(graph, group, "l1")
        return scores
    if criterion == "taylor":
        if gradients is None:
            raise ValueError("The Taylor criterion needs gradients (pass `data` to prune_once).")

        def taylor(layer):
            product = filter_matrix(layer) * filter_matrix(layer, gradients[id(layer)])
            return np.abs(product.sum(axis=1))

        return _producer_scores(graph, group, taylor)
    raise ValueError(f"Unknown criterion {criterion!r}; choose one of {CRITERIA}.")
