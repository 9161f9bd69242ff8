"""Channel layouts: how the last axis of a tensor is made of channel spaces.

A *channel space* is a set of channels created by one layer (a conv's filters,
a Dense layer's units, a model input). Spaces tied together (residual ``Add``,
squeeze-excite ``Multiply``) form one *group* and must be pruned alike.

A :class:`Layout` describes the last axis of one tensor as an ordered list of
:class:`Segment` objects, each one a whole space, optionally expanded (a
depthwise conv with ``depth_multiplier`` m turns channel ``c`` into channels
``c*m .. c*m+m-1``) and optionally repeated over flattened positions (``Flatten``
of an ``H x W x C`` tensor gives index ``p*C + c``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Segment:
    """One channel space inside a tensor's last axis.

    Attributes:
        space: id of the channel space (see :class:`SpaceTable`).
        size: number of channels of the space.
        inner: each space channel occupies ``inner`` consecutive tensor channels.
    """

    space: int
    size: int
    inner: int = 1

    @property
    def width(self) -> int:
        return self.size * self.inner


@dataclass(frozen=True)
class Layout:
    """The channel structure of a tensor's last axis.

    Attributes:
        segments: the spaces concatenated along the last axis.
        repeat: how many times the segment list repeats (flattened positions).
    """

    segments: tuple[Segment, ...]
    repeat: int = 1

    @property
    def channels(self) -> int:
        """Width of one repetition (the channel count before flattening)."""
        return sum(s.width for s in self.segments)

    @property
    def width(self) -> int:
        """Total size of the last axis."""
        return self.repeat * self.channels

    @property
    def spaces(self) -> tuple[int, ...]:
        return tuple(s.space for s in self.segments)

    def expanded(self, multiplier: int) -> Layout:
        """The layout after a depthwise conv with ``depth_multiplier=multiplier``."""
        if multiplier == 1:
            return self
        segs = tuple(Segment(s.space, s.size, s.inner * multiplier) for s in self.segments)
        return Layout(segs, self.repeat)

    def flattened(self, positions: int) -> Layout:
        """The layout after flattening ``positions`` spatial positions (NHWC order)."""
        return Layout(self.segments, self.repeat * positions)

    def same_structure(self, other: Layout) -> bool:
        """True when both layouts have the same segment sizes, expansions and repeat."""
        return self.repeat == other.repeat and [(s.size, s.inner) for s in self.segments] == [
            (s.size, s.inner) for s in other.segments
        ]

    def kept_indices(self, keep_of: Callable[[int], np.ndarray | None]) -> np.ndarray:
        """Indices of the last axis that survive, given the kept channels per space.

        Args:
            keep_of: maps a space id to its sorted kept channel indices, or None
                when the space keeps all its channels.
        """
        per_rep = []
        offset = 0
        for seg in self.segments:
            kept = keep_of(seg.space)
            if kept is None:
                idx = np.arange(seg.width)
            else:
                idx = (np.asarray(kept)[:, None] * seg.inner + np.arange(seg.inner)).reshape(-1)
            per_rep.append(idx + offset)
            offset += seg.width
        one = np.concatenate(per_rep) if per_rep else np.zeros((0,), dtype=np.int64)
        if self.repeat == 1:
            return one
        stride = self.channels
        return (np.arange(self.repeat)[:, None] * stride + one[None, :]).reshape(-1)

    def kept_width(self, count_of: Callable[[int, int], int]) -> int:
        """Width of the last axis once space ``s`` of size ``n`` keeps ``count_of(s, n)``."""
        per_rep = sum(count_of(s.space, s.size) * s.inner for s in self.segments)
        return self.repeat * per_rep

    def cut_width(self, keep_of: Callable[[int], np.ndarray | None]) -> int:
        """Width of the last axis once each space keeps ``keep_of(space)`` (None: all)."""

        def count_of(space: int, size: int) -> int:
            kept = keep_of(space)
            return size if kept is None else len(kept)

        return self.kept_width(count_of)

    def boundaries(self) -> set[int]:
        """Indices of the last axis where a segment starts or ends (one repetition)."""
        edges, offset = {0}, 0
        for seg in self.segments:
            offset += seg.width
            edges.add(offset)
        return edges

    def sub_layout(self, start: int, end: int) -> Layout | None:
        """The layout of indices ``[start, end)``, or None unless both are segment boundaries.

        >>> Layout((Segment(0, 2), Segment(1, 3))).sub_layout(2, 5)
        Layout(segments=(Segment(space=1, size=3, inner=1),), repeat=1)
        """
        if self.repeat != 1 or start not in self.boundaries() or end not in self.boundaries():
            return None
        kept, offset = [], 0
        for seg in self.segments:
            if start <= offset and offset + seg.width <= end:
                kept.append(seg)
            offset += seg.width
        return Layout(tuple(kept))

    def cut_points(self, bounds: set[int]) -> dict[int, set[int]] | None:
        """Space -> channel positions where an index in ``bounds`` falls inside its segment.

        None when a bound falls inside one expanded channel (a depthwise
        multiplier's copies) or the layout is flattened.

        >>> Layout((Segment(0, 4), Segment(1, 2, inner=2))).cut_points({1, 6})
        {0: {1}, 1: {1}}
        """
        if self.repeat != 1:
            return None if bounds - self.boundaries() else {}
        points: dict[int, set[int]] = {}
        offset = 0
        for seg in self.segments:
            for b in bounds:
                if offset < b < offset + seg.width:
                    if (b - offset) % seg.inner:
                        return None
                    points.setdefault(seg.space, set()).add((b - offset) // seg.inner)
            offset += seg.width
        return points
