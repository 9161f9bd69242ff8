"""``strip_filter_pruning``: a wrapped model becomes a plain, physically smaller model."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from tf_filterprune.methods.base import FilterPruningWrapper
from tf_filterprune.surgery.cut import clone


def strip_filter_pruning(model: keras.Model, verify_data: Any = None):
    """Replaces every filter-pruning wrapper by a plain Conv2D of its compact width.

    The result has no wrapper classes, loads without ``custom_objects``, and
    gives the wrapped model's inference-mode outputs. The wrapped model is not
    modified.

    Args:
        model: a model returned by :func:`tffp.prune_filters` (trained or not).
        verify_data: optional input batch; when given, the maximum absolute
            difference between the wrapped model and the compact one (both in
            inference mode) is measured and returned too.

    Returns:
        The compact model, or ``(compact, max_abs_diff)`` with ``verify_data``.

    Example:

    >>> import tf_filterprune as tffp
    >>> wrapped = tffp.prune_filters(tffp.models.fashion_cnn(), tffp.DCFF(keep_ratio=0.25))
    >>> tffp.strip_filter_pruning(wrapped).get_layer("conv5").filters
    32
    """
    pairs: list[tuple[Any, Any]] = []

    def clone_layer(layer):
        if isinstance(layer, FilterPruningWrapper):
            config = dict(layer.layer.get_config(), filters=layer.out_channels)
            twin = layer.layer.__class__.from_config(config)
        else:
            twin = layer.__class__.from_config(layer.get_config())
        pairs.append((layer, twin))
        return twin

    compact = clone(model, clone_layer)
    for original, twin in pairs:
        if isinstance(original, FilterPruningWrapper):
            twin.set_weights(original.stripped_weights())
        elif original.weights:
            twin.set_weights(original.get_weights())
    if verify_data is None:
        return compact
    expected = keras.ops.convert_to_numpy(model(verify_data, training=False))
    got = keras.ops.convert_to_numpy(compact(verify_data, training=False))
    return compact, float(np.max(np.abs(expected - got)))
