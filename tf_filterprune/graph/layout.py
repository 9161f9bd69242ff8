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
