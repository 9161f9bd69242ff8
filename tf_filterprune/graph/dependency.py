"""The channel dependency graph of a Keras 3 Functional or Sequential model.

:func:`build_graph` walks the model's nodes in topological order, giving every
tensor a :class:`~tf_filterprune.graph.layout.Layout` through the per-layer
rules of :mod:`tf_filterprune.graph.registry`, and ties coupled channel spaces
into groups with a union-find. Nested models (a ``keras.applications``
backbone inside a Functional model) are walked as part of the outer graph, and
``keras.ops`` calls (``x + 3.0``, ``keras.ops.split``) are nodes like layers,
with registry entries of their own. A layer or operation the registry does not
know, on a path that carries channels, makes the groups it touches unprunable
with the reason recorded; it never leads to a silently wrong cut.

When a split (or a join of differently laid-out tensors) falls inside one
layer's channels, the walk is repeated with that layer's output divided into
separate channel spaces at those points (each then prunes on its own or ties to
what it meets).

Example:

>>> import keras
>>> from tf_filterprune.graph import build_graph
>>> inp = keras.Input((8, 8, 3))
>>> a = keras.layers.Conv2D(4, 3, padding="same", name="a")(inp)
>>> b = keras.layers.Conv2D(4, 3, padding="same", name="b")(inp)
>>> out = keras.layers.Conv2D(2, 1, name="head")(keras.layers.Add()([a, b]))
>>> graph = build_graph(keras.Model(inp, out))
>>> [sorted(g.producers) for g in graph.groups() if g.prunable]
[['a', 'b']]
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from tf_filterprune.graph import registry, trace
from tf_filterprune.graph.layout import Layout, Segment


@dataclass
class Space:
    """A set of channels created by one layer call (or a model input)."""

    size: int
    origin: str | None  # path of the layer that created it
    reasons: list[str] = field(default_factory=list)
    residual: bool = False  # joined to other spaces by an Add-like layer
    offset: int = 0  # first channel of the space in its origin's output
    inexact: list[str] = field(default_factory=list)  # why a cut is not output-exact
    blocks: int = 1  # a cut keeps as many channels in each of this many equal parts
    blocked_by: list[str] = field(default_factory=list)  # the grouped convs asking it


@dataclass
class LayerCall:
    """One call of a layer in the graph, with the layouts of its tensors."""

    layer: Any
    path: str
    in_layouts: list[Layout]
    out_layouts: list[Layout]
    in_shapes: list[tuple]
    out_shapes: list[tuple]


@dataclass
class ChannelGroup:
    """Channel spaces that must keep the same channels.

    Attributes:
        id: the group id (the union-find root space).
        size: channels in each member space.
        spaces: member space ids.
        producers: paths of the layers whose outputs create the member spaces.
        norms: paths of normalization layers applied directly to a member space.
        reasons: why the group cannot be pruned (empty when it can).
        residual: the members are joined by a residual ``Add`` (or Subtract,
            Average, Maximum, Minimum): the stream of a ResNet stage.
        inexact: why cutting the group changes the kept channels' outputs too
            (a LayerNormalization over them); empty when the cut is exact.
        blocks: a cut must keep the same number of channels in each of this
            many equal, consecutive parts of the group (the groups of the
            grouped convs that make or read these channels); 1 for no constraint.
        blocked_by: paths of those grouped convs.
    """

    id: int
    size: int
    spaces: list[int]
    producers: list[str]
    norms: list[str]
    reasons: list[str]
    residual: bool = False
    inexact: list[str] = field(default_factory=list)
    blocks: int = 1
    blocked_by: list[str] = field(default_factory=list)

    @property
    def prunable(self) -> bool:
        return not self.reasons and self.size > 1

    def block_counts(self, kept: np.ndarray) -> np.ndarray:
        """How many of ``kept`` fall in each of the group's :attr:`blocks` parts.

        >>> ChannelGroup(0, 8, [0], ["g"], [], [], blocks=2).block_counts(np.array([0, 1, 6]))
        array([2, 1])
        """
        return np.bincount(np.asarray(kept) // (self.size // self.blocks), minlength=self.blocks)


class ChannelGraph:
    """Channel spaces, their groups, and every layer call with its layouts."""

    def __init__(self, model: keras.Model):
        self.model = model
        self.spaces: list[Space] = []
        self._parent: list[int] = []
        self.calls: dict[int, list[LayerCall]] = {}
        self.layers: dict[str, Any] = {}
        # custom layer id -> the Functional model its call was traced into (trace.py)
        self.traced: dict[int, keras.Model] = {}
        self.traced_paths: list[str] = []

    def inner_model(self, layer: Any) -> keras.Model | None:
        """The graph walked for ``layer``: a nested model, a traced custom layer's model, or None."""
        if isinstance(layer, keras.Model) and _has_graph(layer):
            return layer
        return self.traced.get(id(layer))

    def under_traced(self, path: str) -> bool:
        """True when ``path`` is a layer inside a traced custom layer."""
        return any(path.startswith(p + "/") for p in self.traced_paths)

    # ----------------------------------------------------------- union-find
    def find(self, space: int) -> int:
        """The group id (root space) of ``space``."""
        parent = self._parent
        root = space
        while parent[root] != root:
            root = parent[root]
        while parent[space] != root:
            parent[space], space = root, parent[space]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self._parent[max(ra, rb)] = min(ra, rb)

    # -------------------------------------------------------------- queries
    def groups(self) -> list[ChannelGroup]:
        """All channel groups, in the order their first space appeared."""
        members: dict[int, list[int]] = {}
        for sid in range(len(self.spaces)):
            members.setdefault(self.find(sid), []).append(sid)
        norms = self._norm_layers_by_root()
        groups = []
        for root, sids in members.items():
            producers = [self.spaces[s].origin for s in sids if self.spaces[s].origin]
            group = ChannelGroup(
                id=root,
                size=self.spaces[root].size,
                spaces=sids,
                producers=producers,
                norms=norms.get(root, []),
                reasons=self._collect(sids, "reasons"),
                residual=any(self.spaces[s].residual for s in sids),
                inexact=self._collect(sids, "inexact"),
                blocks=math.lcm(*(self.spaces[s].blocks for s in sids)),
                blocked_by=self._collect(sids, "blocked_by"),
            )
            if group.blocks > 1 and group.size == group.blocks and not group.reasons:
                convs = ", ".join(f"'{p}'" for p in group.blocked_by)
                group.reasons.append(
                    f"the grouped conv(s) {convs} have one of these {group.size} channels in "
                    "each group, and every group must keep the same number"
                )
            groups.append(group)
        return groups

    def _collect(self, sids: list[int], attribute: str) -> list[str]:
        out: list[str] = []
        for sid in sids:
            out.extend(r for r in getattr(self.spaces[sid], attribute) if r not in out)
        return out

    def producer_channels(self, group: ChannelGroup) -> list[tuple[str, np.ndarray]]:
        """``(producer path, its output channels in the group)`` for each producing space.

        The channels are in the group's order; they are the producer's whole
        output unless a split divided it into several groups.
        """
        return [
            (space.origin, space.offset + np.arange(space.size))
            for space in (self.spaces[s] for s in group.spaces)
            if space.origin
        ]

    def resolve(self, name: str) -> str:
        """The graph path of a layer given by path ("backbone/conv1") or unique name."""
        if name in self.layers:
            return name
        matches = [p for p in self.layers if p.rsplit("/", 1)[-1] == name]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise ValueError(f"Layer name '{name}' is ambiguous; use one of {matches}.")
        close = difflib.get_close_matches(name, list(self.layers), n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise ValueError(f"No layer named '{name}' in model '{self.model.name}'.{hint}")

    def group_of_layer(self, path: str) -> ChannelGroup:
        """The group of the channels ``path``'s first call outputs.

        Raises ValueError when the layer's output is not one whole channel space
        (a Concatenate, a Flatten, a depthwise conv with depth_multiplier > 1).
        """
        layer = self.layers[path]
        layout = self.calls[id(layer)][0].out_layouts[0]
        origins = {self.spaces[s].origin for s in layout.spaces}
        if len(layout.segments) > 1 and origins == {path}:
            raise ValueError(
                f"The output channels of '{path}' are split (keras.ops.split or a join "
                f"with a concatenation) into {len(layout.segments)} channel groups; name a "
                "layer after the split, or use prune_once."
            )
        if len(layout.segments) != 1 or layout.repeat != 1 or layout.segments[0].inner != 1:
            raise ValueError(
                f"Layer '{path}' does not output one channel space of its own (its output "
                "mixes several layers' channels); name the layer that produces them instead."
            )
        root = self.find(layout.segments[0].space)
        return next(g for g in self.groups() if g.id == root)

    def first_call(self, layer: Any) -> LayerCall | None:
        calls = self.calls.get(id(layer))
        return calls[0] if calls else None

    def iter_calls(self) -> Iterator[LayerCall]:
        for calls in self.calls.values():
            yield from calls

    def keep_function(self, keep: dict[int, np.ndarray]):
        """Returns ``space -> kept indices or None`` for a keep map by group id."""

        def keep_of(space: int) -> np.ndarray | None:
            return keep.get(self.find(space))

        return keep_of

    def _norm_layers_by_root(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for call in self.iter_calls():
            if not isinstance(registry.rule_for(call.layer), registry.NormalizationRule):
                continue
            layout = call.in_layouts[0]
            if len(layout.segments) == 1 and layout.repeat == 1 and layout.segments[0].inner == 1:
                out.setdefault(self.find(layout.segments[0].space), []).append(call.path)
        return out


_MAX_ROUNDS = 12  # walks of the model while splits refine channel spaces


class GraphBuilder:
    """Walks a model and fills a :class:`ChannelGraph` (used by the rules)."""

    def __init__(self, model: keras.Model):
        self.model = model
        self.graph = ChannelGraph(model)
        self._path_of: dict[int, str] = {}
        # producer path -> channel positions where its output is divided into spaces
        self.splits: dict[str, set[int]] = {}
        self._pending = False  # a walk asked for a new split: walk again
        self._may_split = True
        self._traces: dict[int, keras.Model | str] = {}  # custom layer id -> model or reason

    # ------------------------------------------------------- rule callbacks
    def new_space(
        self, size: int, layer: Any = None, reason: str | None = None, offset: int = 0
    ) -> int:
        """Creates a channel space; ``layer`` is the layer that creates it."""
        graph = self.graph
        sid = len(graph.spaces)
        origin = self._path_of.get(id(layer)) if layer is not None else None
        graph.spaces.append(Space(int(size), origin, [reason] if reason else [], offset=offset))
        graph._parent.append(sid)
        return sid

    def producer_layout(self, width: int, layer: Any) -> Layout:
        """The layout of a producer's new channels: one space, or several where split."""
        cuts = sorted(p for p in self.splits.get(self._path_of[id(layer)], ()) if 0 < p < width)
        edges = [0, *cuts, int(width)]
        layout = Layout(
            tuple(
                Segment(self.new_space(b - a, layer, offset=a), b - a)
                for a, b in zip(edges, edges[1:], strict=False)
            )
        )
        mixing = registry.channel_mixing_activation(layer)
        if mixing is not None:
            self.forbid(
                layout.spaces,
                f"'{self.name_of(layer)}' applies activation='{mixing}' across its output "
                "channels: removing some would change every kept one (apply the activation "
                "in a separate layer after the cut, or keep the layer whole)",
            )
        return layout

    def name_of(self, layer: Any) -> str:
        """The graph path of a layer or operation (its name if not walked yet)."""
        return self._path_of.get(id(layer), getattr(layer, "name", "?"))

    def forbid(self, spaces, reason: str) -> None:
        """Marks spaces (and so their groups) unprunable, recording why."""
        for sid in spaces:
            if reason not in self.graph.spaces[sid].reasons:
                self.graph.spaces[sid].reasons.append(reason)

    def mark_inexact(self, spaces, reason: str) -> None:
        """Records that cutting these spaces changes the kept channels' outputs too."""
        for sid in spaces:
            if reason not in self.graph.spaces[sid].inexact:
                self.graph.spaces[sid].inexact.append(reason)

    def opaque(self, tensor: Any, layer: Any, reason: str) -> Layout:
        """A layout for a tensor whose channels cannot be cut."""
        width = tensor.shape[-1] if len(tensor.shape) else 1
        width = int(width) if width is not None else 0
        name = self._path_of.get(id(layer), getattr(layer, "name", None) or tensor.name)
        sid = self.new_space(width, None, f"'{name}': {reason}")
        return Layout((Segment(sid, width),))

    def require_blocks(self, layout: Layout, groups: int, layer: Any, side: str) -> bool:
        """Asks every cut of ``layout`` to keep as many channels in each of ``groups`` parts.

        A grouped conv's input (or output) channels fall into ``groups`` equal
        runs of the last axis, and each run must keep the same count. That is a
        constraint on one channel space (``Space.blocks``): the layout must be
        one space, each run whole channels of it. Otherwise (a concatenation,
        a split output, a run cutting a depthwise multiplier's copies) the
        spaces are forbidden, with the reason, and False is returned.
        """
        seg = layout.segments[0] if len(layout.segments) == 1 else None
        if seg is None or layout.repeat != 1 or (seg.width // groups) % seg.inner:
            self.forbid(
                layout.spaces,
                f"'{self.name_of(layer)}' is a grouped convolution (groups={groups}) whose "
                f"{side} channels are not one layer's channels in whole runs per group, so "
                "they cannot be cut alike in each group",
            )
            return False
        space = self.graph.spaces[seg.space]
        space.blocks = math.lcm(space.blocks, groups)
        if self.name_of(layer) not in space.blocked_by:
            space.blocked_by.append(self.name_of(layer))
        return True

    def mark_residual(self, layout: Layout) -> None:
        """Records that ``layout``'s spaces are joined by a residual (Add-like) layer."""
        for sid in layout.spaces:
            self.graph.spaces[sid].residual = True

    def unify(self, layouts: list[Layout], layer: Any) -> Layout:
        """Ties layouts that must hold the same channels (Add, shared layers).

        Layouts of the same width laid out differently (a concatenation joined
        to a conv's output) are refined: the spaces cut by the others'
        boundaries are split on the next walk, so the parts can tie.
        """
        first = layouts[0]
        if all(first.same_structure(other) for other in layouts[1:]):
            for other in layouts[1:]:
                for a, b in zip(first.segments, other.segments, strict=True):
                    self.graph.union(a.space, b.space)
            return first
        if len({lay.width for lay in layouts}) == 1:
            bounds = set().union(*(lay.boundaries() for lay in layouts))
            if any([self.refine(lay, bounds) for lay in layouts]):  # walked again, split
                # meanwhile the finest layout (if one has every boundary) stands for the
                # join, so that later joins can ask for their splits in this walk too
                finest = [lay for lay in layouts if lay.boundaries() == bounds]
                return finest[0] if finest else self._placeholder(first.width)
        spaces = [s for lay in layouts for s in lay.spaces]
        self.forbid(
            spaces, f"'{self.name_of(layer)}' joins tensors whose channels are laid out differently"
        )
        return first

    def sub_layouts(
        self, layout: Layout, bounds: list[tuple[int, int]], layer: Any, tensors: list
    ) -> list[Layout]:
        """Layouts of the index ranges ``bounds`` of ``layout`` (a channel split's outputs)."""
        parts = [layout.sub_layout(a, b) for a, b in bounds]
        if all(part is not None for part in parts):
            return parts
        edges = {a for a, _ in bounds} | {b for _, b in bounds}
        if self.refine(layout, edges):
            return [self._placeholder(b - a) for a, b in bounds]
        name = self.name_of(layer)
        self.forbid(layout.spaces, f"'{name}' splits channels that cannot be divided there")
        return [self.opaque(t, layer, "part of an indivisible channel split") for t in tensors]

    def _placeholder(self, width: int) -> Layout:
        """Stands for a tensor until the next walk (nothing after it can ask for splits)."""
        return Layout((Segment(self.new_space(width, None, "walk pending"), width),))

    def refine(self, layout: Layout, bounds: set[int]) -> bool:
        """Asks for the spaces ``bounds`` fall inside to be split; True if that is new.

        Only spaces a producer created can be split (not model inputs or the
        outputs of refused layers); the next walk then divides that producer's
        output at the points (see :meth:`producer_layout`).
        """
        points = layout.cut_points(bounds)
        if not points or not self._may_split:
            return False
        wanted: dict[str, set[int]] = {}
        for sid, positions in points.items():
            space = self.graph.spaces[sid]
            if space.origin is None:
                return False
            wanted.setdefault(space.origin, set()).update(space.offset + p for p in positions)
        new = False
        for origin, positions in wanted.items():
            have = self.splits.setdefault(origin, set())
            if not positions <= have:
                have |= positions
                new = True
        self._pending = self._pending or new
        return new

    # ----------------------------------------------------------------- walk
    def build(self) -> ChannelGraph:
        for round_ in range(_MAX_ROUNDS):
            self._may_split = round_ < _MAX_ROUNDS - 1
            self._pending = False
            self.graph = ChannelGraph(self.model)
            self._path_of = {}
            self._walk_model()
            if not self._pending:
                break
        return self.graph

    def _walk_model(self) -> None:
        inputs = functional_of(self.model).inputs
        in_layouts = [self.opaque(t, None, "model input") for t in inputs]
        out_layouts = self._walk(self.model, in_layouts, prefix="")
        for layout in out_layouts:
            self.forbid(layout.spaces, "model output (the model's output shape is kept)")

    def _walk(self, model: keras.Model, in_layouts: list[Layout], prefix: str) -> list[Layout]:
        return walk_nodes(model, in_layouts, lambda node, ins: self._apply(node, ins, prefix))

    def _apply(self, node: Any, ins: list[Layout], prefix: str) -> list[Layout]:
        layer = node.operation
        path = prefix + layer.name
        self._path_of.setdefault(id(layer), path)
        path = self._path_of[id(layer)]
        if isinstance(layer, keras.Model) and _has_graph(layer):
            self.graph.layers[path] = layer
            return self._walk(layer, ins, prefix=path + "/")
        rule = registry.rule_for(layer)
        traced = self._trace(layer, node) if rule is None and trace.is_candidate(layer) else None
        if isinstance(traced, keras.Model):
            self.graph.layers[path] = traced
            self.graph.traced[id(layer)] = traced
            if path not in self.graph.traced_paths:
                self.graph.traced_paths.append(path)
            return self._walk(traced, ins, prefix=path + "/")
        reason = rule.check(layer, node) if rule is not None else None
        if rule is None or reason is not None:
            why = reason or _unknown(layer, traced)
            label = "" if isinstance(layer, keras.Layer) else f" ({registry.op_label(layer)})"
            for lay in ins:
                self.forbid(lay.spaces, f"'{path}'{label} {why}")
            outs = [self.opaque(t, layer, why) for t in node.outputs]
        else:
            outs = rule.propagate(layer, ins, node, self)
        self._record(
            LayerCall(layer, path, ins, outs, _shapes(node.input_tensors), _shapes(node.outputs))
        )
        return outs

    def _trace(self, layer: Any, node: Any) -> keras.Model | str:
        """The custom layer's traced model (traced at its first call), or why it cannot be."""
        if id(layer) not in self._traces:
            try:
                self._traces[id(layer)] = trace.trace_layer(layer, node)
            except trace.TraceError as err:
                self._traces[id(layer)] = str(err)
        return self._traces[id(layer)]

    def _record(self, call: LayerCall) -> None:
        graph = self.graph
        graph.layers[call.path] = call.layer
        previous = graph.calls.setdefault(id(call.layer), [])
        if previous:  # a shared layer: every call must keep the same channels
            first = previous[0]
            for a, b in zip(first.in_layouts, call.in_layouts, strict=False):
                self.unify([a, b], call.layer)
            for a, b in zip(first.out_layouts, call.out_layouts, strict=False):
                self.unify([a, b], call.layer)
        previous.append(call)


def _unknown(layer: Any, untraced: str | None = None) -> str:
    """The reason for a layer or operation the registry has no rule for.

    ``untraced`` says why a custom layer could not be traced into a sub-graph.
    """
    cls = type(layer)
    if untraced is not None:
        return (
            f"is a {cls.__name__}, which the channel registry does not know and which cannot "
            f"be traced into a sub-graph: {untraced} (register a rule for it with "
            "tf_filterprune.graph.register_layer)"
        )
    if isinstance(layer, keras.Layer):
        return (
            f"is a {cls.__name__}, which the channel registry does not know "
            "(register it with tf_filterprune.graph.register_layer)"
        )
    return (
        f"is an operation ({cls.__module__}.{cls.__name__}) that the channel registry does "
        "not know (register a rule for that class with tf_filterprune.register_layer)"
    )


def walk_nodes(model: keras.Model, inputs: list[Any], apply: Any) -> list[Any]:
    """Carries one value per tensor through a Functional model's nodes in order.

    ``apply(node, input_values) -> output_values`` runs for every layer or
    operation node whose inputs all have values (nodes off the inputs' paths are
    skipped); returns the values of the model's outputs.
    """
    function = functional_of(model)
    values = {id(t): v for t, v in zip(function.inputs, inputs, strict=True)}
    by_depth = function._nodes_by_depth
    for depth in sorted(by_depth, reverse=True):
        for node in by_depth[depth]:
            if node.operation is None or node.is_input:
                continue
            if any(id(t) not in values for t in node.input_tensors):
                continue
            outs = apply(node, [values[id(t)] for t in node.input_tensors])
            values.update({id(t): v for t, v in zip(node.outputs, outs, strict=True)})
    return [values[id(t)] for t in function.outputs]


def _shapes(tensors) -> list[tuple]:
    return [tuple(t.shape) for t in tensors]


def _has_graph(model: keras.Model) -> bool:
    return isinstance(model, keras.Sequential) or hasattr(model, "_nodes_by_depth")


def functional_of(model: keras.Model) -> keras.Model:
    """The Functional graph behind a Functional or Sequential model."""
    if isinstance(model, keras.Sequential):
        inner = getattr(model, "_functional", None)
        if inner is None:
            raise ValueError(
                f"Sequential model '{model.name}' is not built: give it an input shape "
                "(keras.Input(shape) as first layer) or call model.build(input_shape)."
            )
        return inner
    if not hasattr(model, "_nodes_by_depth"):
        raise ValueError(
            f"Model '{model.name}' is a subclassed model ({type(model).__name__}); "
            "pruning and profiling need the layer graph of a Functional or Sequential model. "
            "Rebuild it with the Functional API (keras.Model(inputs, outputs))."
        )
    return model


def describe_non_keras3(obj: Any) -> str:
    """``type(obj).__name__``, saying so when it is a legacy ``tf_keras`` model or layer."""
    name = type(obj).__name__
    module = type(obj).__module__ or ""
    if module.startswith(("tf_keras", "keras.src.engine", "tensorflow.python.keras")):
        return (
            f"{name} from legacy tf_keras ({module}); tf_filterprune works on Keras 3 models: "
            "build the model with `import keras` (Keras 3), without TF_USE_LEGACY_KERAS=1"
        )
    return name


def build_graph(model: keras.Model) -> ChannelGraph:
    """Builds the channel dependency graph of a Functional or Sequential model.

    Args:
        model: a built Keras 3 Functional or Sequential model.

    Returns:
        A :class:`ChannelGraph`; ``graph.groups()`` lists the coupled channel groups.

    Raises:
        ValueError: for a subclassed model or an unbuilt Sequential model.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"Expected a keras.Model, got {describe_non_keras3(model)}.")
    return GraphBuilder(model).build()
