"""Channel plans: what each pruned group keeps, how consumers see it, what is folded.

A :class:`GroupPlan` holds, for one channel group, the kept indices, an
optional *consumer map* (an ``m x C`` matrix applied to every mixing
consumer's input slice instead of plain selection) and the channels whose
constant output is folded into the consumers' biases. :func:`remap_axis` is
the one function that rewrites a weight axis laid out as a
:class:`~tf_filterprune.graph.layout.Layout` (concatenation offsets, depth
multipliers and flattened positions included).

Example:

>>> import numpy as np
>>> from tf_filterprune.graph.layout import Layout, Segment
>>> layout = Layout((Segment(space=0, size=3),))
>>> kernel = np.arange(6.0).reshape(3, 2)
>>> remap_axis(kernel, 0, layout, lambda space: np.array([[1.0, 1.0, 0.0]])).tolist()
[[2.0, 4.0]]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from tf_filterprune.graph import ChannelGraph, Layout, registry

# What a space's channels become on a weight axis: None (unchanged), a 1-D
# array of kept indices, or a 2-D (rows, size) matrix mixing the channels.
AxisOp = np.ndarray | None


@dataclass
class GroupPlan:
    """The plan of one channel group.

    Attributes:
        group_id: the group id.
        size: channels of the group before the cut.
        keep: sorted kept channel indices (``m`` of them).
        matrix: the ``(m, size)`` consumer map, or None for plain selection.
        folded: channels treated as removed constants (folded into the
            consumers' biases): not kept and, with a map, with an all-zero column.
        producers: paths of the group's producer layers (for messages).
    """

    group_id: int
    size: int
    keep: np.ndarray
    matrix: np.ndarray | None = None
    folded: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    producers: list[str] = field(default_factory=list)

    def consumer_op(self) -> np.ndarray:
        """What a mixing consumer's input axis does in the compact model."""
        return self.keep if self.matrix is None else self.matrix

    def full_width_op(self) -> np.ndarray | None:
        """The ``(size, size)`` map of the same-width reference model (None: identity).

        Rows of kept channels take the consumer map, folded channels keep their
        own row (their constant still flows), other channels (merged members)
        are zero.
        """
        if self.matrix is None:
            return None
        op = np.zeros((self.size, self.size), dtype=np.float64)
        op[self.keep] = self.matrix
        op[self.folded, self.folded] = 1.0
        return op

    @property
    def name(self) -> str:
        return ", ".join(f"'{p}'" for p in self.producers) or f"group {self.group_id}"


@dataclass
class SurgeryPlan:
    """Group plans by group id, and the graph they refer to."""

    graph: ChannelGraph
    groups: dict[int, GroupPlan]

    def group_of_space(self, space: int) -> GroupPlan | None:
        return self.groups.get(self.graph.find(space))

    def any_folded(self) -> bool:
        return any(p.folded.size for p in self.groups.values())

    def consumer_op(self, space: int) -> AxisOp:
        plan = self.group_of_space(space)
        return None if plan is None else plan.consumer_op()

    def full_width_op(self, space: int) -> AxisOp:
        plan = self.group_of_space(space)
        return None if plan is None else plan.full_width_op()

    def folded_of(self, space: int) -> np.ndarray:
        plan = self.group_of_space(space)
        return np.zeros((0,), np.int64) if plan is None else plan.folded


def make_plan(
    graph: ChannelGraph,
    keep: Mapping[int, np.ndarray],
    consumer_maps: Mapping[int, Any] | None = None,
    unfolded_groups: set[int] | frozenset[int] = frozenset(),
) -> SurgeryPlan:
    """Validates keep sets and consumer maps and builds the :class:`SurgeryPlan`.

    Args:
        graph: the channel graph.
        keep: group id -> sorted kept channel indices.
        consumer_maps: group id -> ``(len(keep[g]), size)`` matrix. A map equal
            to the identity rows at ``keep`` is plain selection.
        unfolded_groups: groups whose removed channels are never folded (e.g.
            groups whose producer is wrapped for training).

    Raises:
        ValueError: a map for a group without a keep set, a map of the wrong
            shape or with non-finite entries, or a non-selection map whose
            channels reach a per-channel (depthwise) consumer.

    Example:

    >>> import keras, numpy as np
    >>> from tf_filterprune.graph import build_graph
    >>> inp = keras.Input((4, 4, 3))
    >>> x = keras.layers.Conv2D(4, 1, name="c")(inp)
    >>> graph = build_graph(keras.Model(inp, keras.layers.Conv2D(2, 1)(x)))
    >>> gid = graph.group_of_layer("c").id
    >>> plan = make_plan(graph, {gid: np.array([0, 2])}, {gid: [[1, 1, 0, 0], [0, 0, 1, 0]]})
    >>> plan.groups[gid].folded.tolist()
    [3]
    """
    groups = {g.id: g for g in graph.groups()}
    maps = dict(consumer_maps or {})
    unknown = [g for g in maps if g not in keep]
    if unknown:
        raise ValueError(
            f"consumer_maps names group(s) {unknown} that have no kept-index set in `keep`; "
            "give each mapped group its kept indices too."
        )
    plans = {}
    for gid, kept in keep.items():
        group = groups[gid]
        kept = np.asarray(kept, dtype=np.int64)
        matrix = _check_map(maps.get(gid), kept, group.size, group.producers)
        plans[gid] = GroupPlan(
            group_id=gid,
            size=group.size,
            keep=kept,
            matrix=matrix,
            folded=np.zeros((0,), np.int64)
            if gid in unfolded_groups
            else _folded(kept, matrix, group.size),
            producers=list(group.producers),
        )
    plan = SurgeryPlan(graph, plans)
    _check_map_consumers(plan)
    return plan


def _check_map(raw: Any, kept: np.ndarray, size: int, producers: list[str]) -> np.ndarray | None:
    """The validated map, or None when it is absent or plain selection."""
    if raw is None:
        return None
    name = ", ".join(f"'{p}'" for p in producers) or "the group"
    try:
        matrix = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"The consumer map of {name} must be a numeric matrix.") from err
    if matrix.shape != (len(kept), size):
        raise ValueError(
            f"The consumer map of {name} must have shape (kept, channels) = "
            f"({len(kept)}, {size}), got {matrix.shape}."
        )
    if not np.isfinite(matrix).all():
        raise ValueError(f"The consumer map of {name} has non-finite entries.")
    if np.array_equal(matrix, np.eye(size)[kept]):
        return None
    return matrix


def _folded(kept: np.ndarray, matrix: np.ndarray | None, size: int) -> np.ndarray:
    """Channels not kept and not accounted for by the map (all-zero column)."""
    removed = np.setdiff1d(np.arange(size), kept)
    if matrix is None:
        return removed
    return removed[~np.any(matrix[:, removed] != 0, axis=0)]


def _check_map_consumers(plan: SurgeryPlan) -> None:
    """Refuses a non-selection map on channels that a per-channel kernel consumes."""
    per_channel = (registry.DepthwiseRule, registry.SeparableRule)
    for call in plan.graph.iter_calls():
        grouped = getattr(call.layer, "groups", 1) > 1  # per-group kernels: selection only
        rule = registry.rule_for(call.layer)
        if not (isinstance(rule, per_channel) or grouped) or not call.in_layouts:
            continue
        for space in call.in_layouts[0].spaces:
            group = plan.group_of_space(space)
            if group is not None and group.matrix is not None:
                raise ValueError(
                    f"Layer '{call.path}' ({type(call.layer).__name__}) applies a per-channel "
                    f"(depthwise) or per-group kernel to the channels of {group.name}, so it "
                    "cannot take a consumer map: consumer maps need mixing consumers (Conv, Dense, "
                    "Conv transpose). Use plain selection (no map) for this group."
                )


def channel_table(layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """For every index of the last axis: the channel space and the channel in it.

    Example:

    >>> from tf_filterprune.graph.layout import Layout, Segment
    >>> spaces, channels = channel_table(Layout((Segment(7, 2), Segment(9, 1)), repeat=2))
    >>> spaces.tolist(), channels.tolist()
    ([7, 7, 9, 7, 7, 9], [0, 1, 0, 0, 1, 0])
    """
    spaces, channels = [], []
    for seg in layout.segments:
        spaces.append(np.full(seg.width, seg.space, dtype=np.int64))
        channels.append(np.repeat(np.arange(seg.size, dtype=np.int64), seg.inner))
    if not spaces:
        empty = np.zeros((0,), np.int64)
        return empty, empty
    return np.tile(np.concatenate(spaces), layout.repeat), np.tile(
        np.concatenate(channels), layout.repeat
    )


def indices_of(layout: Layout, channels_of: Callable[[int], np.ndarray]) -> np.ndarray:
    """Indices of the last axis whose (space, channel) is in ``channels_of(space)``."""
    spaces, channels = channel_table(layout)
    hit = np.zeros(len(spaces), dtype=bool)
    for space in np.unique(spaces):
        chosen = channels_of(int(space))
        if len(chosen):
            at = spaces == space
            hit[at] = np.isin(channels[at], chosen)
    return np.nonzero(hit)[0]


def remap_axis(
    value: np.ndarray, axis: int, layout: Layout, op_of_space: Callable[[int], AxisOp]
) -> np.ndarray:
    """Rewrites ``value`` along ``axis``, laid out as ``layout``, space by space.

    Each space's channels are left alone (op None), selected (a 1-D index
    array) or mixed (a ``(rows, size)`` matrix: new row ``i`` is
    ``sum_c M[i, c] * value[..., c, ...]``), at every flattened position and for
    every expanded copy. A layout none of whose spaces has an op is left as is.
    """
    ops = [op_of_space(seg.space) for seg in layout.segments]
    if all(op is None for op in ops):
        return value
    if value.shape[axis] != layout.width:
        raise ValueError(
            f"Weight axis {axis} has size {value.shape[axis]}, but the channel layout "
            f"says {layout.width}; the graph and the model disagree."
        )
    moved = np.moveaxis(value, axis, 0)
    rest = moved.shape[1:]
    moved = moved.reshape(layout.repeat, layout.channels, *rest)
    blocks, offset = [], 0
    for seg, op in zip(layout.segments, ops, strict=True):
        block = moved[:, offset : offset + seg.width].reshape(
            layout.repeat, seg.size, seg.inner, *rest
        )
        offset += seg.width
        if op is not None and op.ndim == 1:
            block = np.take(block, op, axis=1)
        elif op is not None:
            block = np.moveaxis(np.tensordot(op, block, axes=([1], [1])), 0, 1)
        blocks.append(block.reshape(layout.repeat, -1, *rest))
    out = np.concatenate(blocks, axis=1).reshape(-1, *rest).astype(value.dtype, copy=False)
    return np.moveaxis(out, 0, axis)


def mixing_axis(axes: Mapping[int, str] | None) -> tuple[int, str] | None:
    """The input-channel axis of a weight that mixes input into output channels."""
    if not axes or registry.OUT not in axes.values():
        return None
    for axis, side in axes.items():
        if side in (registry.IN, registry.IN_EXPANDED):
            return axis, side
    return None


def is_consumer(layer: keras.Layer) -> bool:
    """True for a layer that mixes its input channels (Conv, Dense, Conv transpose...)."""
    rule = registry.rule_for(layer)
    return isinstance(rule, registry.ProducerRule) and rule.mixes(layer)
