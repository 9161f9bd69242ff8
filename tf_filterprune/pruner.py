"""One-shot structured pruning: score channel groups, pick a budget, cut.

:func:`prune_once` combines the dependency graph, a criterion and the
surgery: it never mutates the input model and returns a physically smaller
one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import keras
import numpy as np
from absl import logging

from tf_filterprune.graph import ChannelGraph, ChannelGroup, LayerCall, build_graph
from tf_filterprune.methods import criteria
from tf_filterprune.profiling import layer_macs, profile
from tf_filterprune.surgery import rebuild


@dataclass(frozen=True)
class Budget:
    """How many channels each prunable group keeps.

    Attributes:
        keep_ratio: default fraction of channels kept.
        per_group: group id -> keep fraction overriding ``keep_ratio``.
        round_to: kept counts are multiples of this (when the group is larger).
        min_filters: no group keeps fewer channels.
    """

    keep_ratio: float
    per_group: Mapping[int, float]
    round_to: int = 1
    min_filters: int = 1

    def count(self, group: ChannelGroup, keep_ratio: float | None = None) -> int:
        ratio = self.per_group.get(group.id, self.keep_ratio if keep_ratio is None else keep_ratio)
        return kept_count(group.size, ratio, self.round_to, self.min_filters, group.blocks)

    def step(self, group: ChannelGroup) -> int:
        """The group's kept counts move in steps of this (``round_to`` and its blocks)."""
        return math.lcm(self.round_to, group.blocks)


def kept_count(
    size: int, ratio: float, round_to: int = 1, min_filters: int = 1, blocks: int = 1
) -> int:
    """Channels kept of ``size`` at ``ratio``, a multiple of ``round_to`` where possible.

    ``blocks`` (a grouped conv's groups) must divide ``size``; the count is a
    multiple of it, so every block keeps the same number.

    >>> kept_count(64, 0.5, round_to=8), kept_count(20, 0.33, round_to=8), kept_count(6, 0.5, 8)
    (32, 8, 6)
    >>> kept_count(24, 0.5, round_to=8, blocks=3), kept_count(12, 0.1, min_filters=5, blocks=4)
    (24, 8)
    """
    step = math.lcm(int(round_to), int(blocks))
    if size <= step:
        return size
    n = int(round(size * ratio / step)) * step
    n = max(n, step, -(-int(min_filters) // int(blocks)) * int(blocks))
    return int(min(n, size))


def _check_ratio(name: str, value: float) -> float:
    if not isinstance(value, int | float) or not (0.0 < value <= 1.0):
        raise ValueError(f"`{name}` must be in (0, 1], got {value!r}.")
    return float(value)


def check_target(target_macs_reduction: float) -> None:
    """Raises ValueError unless the MACs reduction target is in (0, 1)."""
    if not isinstance(target_macs_reduction, int | float) or not (
        0.0 < target_macs_reduction < 1.0
    ):
        raise ValueError(
            f"`target_macs_reduction` must be in (0, 1), got {target_macs_reduction!r}."
        )


def select_groups(
    graph: ChannelGraph, ignored_layers: Iterable[Any] = (), prune_residual: bool = True
) -> list[ChannelGroup]:
    """The prunable groups of the graph, less those of the ignored layers' outputs.

    With ``prune_residual=False``, groups joined by a residual ``Add`` (a ResNet
    stage's stream) are left whole too.
    """
    ignored: set[int] = set()
    for item in ignored_layers:
        path = graph.resolve(item if isinstance(item, str) else item.name)
        layout = graph.first_call(graph.layers[path]).out_layouts[0]
        ignored.update(graph.find(space) for space in layout.spaces)
    return [
        g
        for g in graph.groups()
        if g.prunable and g.id not in ignored and (prune_residual or not g.residual)
    ]


def refusals(
    graph: ChannelGraph,
    ignored_layers: Iterable[Any] = (),
    prune_residual: bool = True,
    min_filters: int = 1,
) -> list[str]:
    """One line per channel group that will not be pruned, with the reasons why.

    Groups are named by the layers that produce their channels; a group with
    no producing layer (a model input, the output of a refused layer) is named
    by its reasons, which name the layers involved.
    """
    selected = {g.id for g in select_groups(graph, ignored_layers, prune_residual=True)}
    named, unnamed = [], []
    for g in graph.groups():
        if g.reasons:
            why = g.reasons
        elif g.size <= 1:
            why = ["has a single filter; there is nothing to prune"]
        elif g.size <= int(min_filters):
            why = [f"has {g.size} channels, not more than min_filters={int(min_filters)}"]
        elif g.id not in selected:
            why = ["its producer is in ignored_layers"]
        elif g.residual and not prune_residual:
            why = ["joined by a residual Add, and prune_residual=False"]
        else:
            continue
        if g.producers:
            names = ", ".join(f"'{p}'" for p in g.producers)
            named.append(f"- {names} ({_channels(g.size)}): " + "; ".join(why))
        else:
            unnamed.append(f"- {_channels(g.size)} not made by a prunable layer: " + "; ".join(why))
    return named + unnamed


def _channels(count: int) -> str:
    return f"{count} channel" + ("" if count == 1 else "s")


def nothing_to_prune(
    graph: ChannelGraph,
    ignored_layers: Iterable[Any] = (),
    prune_residual: bool = True,
    min_filters: int = 1,
) -> str:
    """The error message for a model in which no channel group can be pruned."""
    lines = refusals(graph, ignored_layers, prune_residual, min_filters)
    return refusal_message(graph, "pruned: every channel group is refused", lines)


def refusal_message(graph: ChannelGraph, why: str, lines: Sequence[str]) -> str:
    """``Nothing in model '<name>' can be <why>. Per group:`` and the per-group ``lines``."""
    listed = "\n".join(lines or ["- (the model has no channel groups)"])
    return f"Nothing in model '{graph.model.name}' can be {why}. Per group:\n{listed}"


def per_layer_ratios(
    graph: ChannelGraph, per_layer: Mapping[str, float] | None
) -> dict[int, float]:
    """Resolves a per-layer keep-ratio dict to group ids, checking each entry."""
    out: dict[int, float] = {}
    for name, ratio in (per_layer or {}).items():
        ratio = _check_ratio(f"per_layer[{name!r}]", ratio)
        group = graph.group_of_layer(graph.resolve(name))
        if group.reasons:
            raise ValueError(f"Layer '{name}' cannot be pruned: " + "; ".join(group.reasons[:3]))
        if group.size <= 1:
            raise ValueError(
                f"Layer '{name}' has a single filter; there is nothing to prune. "
                "Remove it from `per_layer`."
            )
        out[group.id] = ratio
    return out


class MacsModel:
    """Exact MACs of the compact model a keep-count map would give, without building it.

    Every call of a counted layer is re-priced by :func:`layer_macs` with its
    input and output channel counts replaced by the kept ones. ``total``
    counts the layers inside traced custom layers too (which :func:`profile`
    of the original model, seeing one opaque layer, does not).
    """

    def __init__(self, model: keras.Model, graph: ChannelGraph):
        self.graph = graph
        self.total = profile(model).total_macs
        self.terms: list[tuple[Any, LayerCall]] = []
        self.terms_of_group: dict[int, list[int]] = {}
        for call in graph.iter_calls():
            if graph.traced_paths and graph.under_traced(call.path):
                self.total += layer_macs(call.layer, call.in_shapes, call.out_shapes, call.path)
            if not (call.in_layouts and call.out_layouts):
                continue
            if layer_macs(call.layer, call.in_shapes, call.out_shapes, call.path) == 0:
                continue
            layouts = (call.in_layouts[0], call.out_layouts[0])
            for root in {graph.find(s) for lay in layouts for s in lay.spaces}:
                self.terms_of_group.setdefault(root, []).append(len(self.terms))
            self.terms.append(call)
        self.fixed = self.total - sum(self._term(i, {}) for i in range(len(self.terms)))

    def _term(self, index: int, counts: Mapping[int, int]) -> int:
        def count_of(space: int, size: int) -> int:
            return counts.get(self.graph.find(space), size)

        call = self.terms[index]
        in_shape = (*call.in_shapes[0][:-1], call.in_layouts[0].kept_width(count_of))
        out_shape = (*call.out_shapes[0][:-1], call.out_layouts[0].kept_width(count_of))
        return layer_macs(call.layer, [in_shape], [out_shape], call.path)

    def estimate(self, counts: Mapping[int, int]) -> float:
        """MACs when group ``g`` keeps ``counts[g]`` channels (others all)."""
        return self.fixed + sum(self._term(i, counts) for i in range(len(self.terms)))

    def delta(self, counts: Mapping[int, int], group: int, new_count: int) -> float:
        """MACs added by giving ``group`` ``new_count`` channels instead of ``counts[group]``."""
        changed = {**counts, group: new_count}
        terms = self.terms_of_group.get(group, [])
        return sum(self._term(i, changed) - self._term(i, counts) for i in terms)


def _counts(groups: list[ChannelGroup], budget: Budget, ratio: float | None = None):
    return {g.id: budget.count(g, ratio) for g in groups}


def search_uniform_ratio(
    macs: MacsModel, groups: list[ChannelGroup], budget: Budget, goal: float
) -> float:
    """Largest uniform keep ratio whose estimated MACs stay within ``goal``."""
    if macs.estimate(_counts(groups, budget, 1e-6)) > goal:
        raise ValueError(
            f"A {1 - goal / macs.total:.0%} MACs reduction is out of reach: even the smallest "
            "widths allowed (min_filters, round_to, ignored layers, unprunable groups) keep "
            "more. Lower target_macs_reduction or allow more layers to be pruned."
        )
    return max(
        largest_fitting_ratio(lambda r: macs.estimate(_counts(groups, budget, r)) <= goal), 1e-6
    )


def largest_fitting_ratio(fits: Callable[[float], bool], steps: int = 30) -> float:
    """The largest ratio in [0, 1] for which ``fits`` holds (bisection; ``fits`` monotone).

    >>> round(largest_fitting_ratio(lambda r: r * 10 <= 4), 6)
    0.4
    """
    lo, hi = 0.0, 1.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


class CostModel(Protocol):
    """What :func:`give_back` needs of a cost: :class:`MacsModel` or a latency model."""

    def estimate(self, counts: Mapping[int, int]) -> float: ...

    def delta(self, counts: Mapping[int, int], group: int, new_count: int) -> float: ...


def give_back(
    cost: CostModel,
    groups: list[ChannelGroup],
    counts: Mapping[int, int],
    goal: float,
    next_count: Callable[[ChannelGroup, int], int | None],
) -> dict[int, int]:
    """Grows groups one step at a time while the estimated cost stays within ``goal``.

    Each step gives ``next_count(group, kept)`` channels (``None``: no larger
    width) to the group that keeps the smallest fraction of its channels (the
    cheapest among equals) and still fits, so widths stay as even as the budget
    allows.
    """
    counts = dict(counts)
    spent = cost.estimate(counts)
    while True:
        best = None
        for g in groups:
            new = next_count(g, counts[g.id])
            if new is None or new == counts[g.id]:
                continue
            delta = cost.delta(counts, g.id, new)
            key = (counts[g.id] / g.size, delta)
            if spent + delta <= goal and (best is None or key < best[0]):
                best = (key, delta, g.id, new)
        if best is None:
            return counts
        _, delta, group, new = best
        spent += delta
        counts[group] = new


def fill_budget(
    macs: MacsModel, groups: list[ChannelGroup], budget: Budget, counts: dict[int, int], goal: float
) -> dict[int, int]:
    """Gives channels back, ``round_to`` at a time, while the MACs stay within ``goal``.

    Rounding leaves the uniform allocation short of the target; :func:`give_back`
    adds channels where the fewest are kept. Groups with a per-layer ratio keep it.
    """
    free = [g for g in groups if g.id not in budget.per_group]
    return give_back(macs, free, counts, goal, lambda g, kept: min(kept + budget.step(g), g.size))


def allocate(
    macs: MacsModel, groups: list[ChannelGroup], budget: Budget, goal: float
) -> dict[int, int]:
    """Kept channels per group for a MACs goal: a uniform ratio, then a greedy fill."""
    ratio = search_uniform_ratio(macs, groups, budget, goal)
    return fill_budget(macs, groups, budget, _counts(groups, budget, ratio), goal)


def prune_once(
    model: keras.Model,
    criterion: str = "l1",
    keep_ratio: float | None = None,
    data: Iterable | None = None,
    ignored_layers: Sequence[Any] = (),
    per_layer: Mapping[str, float] | None = None,
    target_macs_reduction: float | None = None,
    round_to: int | str = 1,
    min_filters: int = 1,
    *,
    seed: int = 0,
    taylor_steps: int = 10,
    loss: Any = None,
    prune_residual: bool = True,
    target_latency_reduction: float | None = None,
    num_threads: int = 1,
    latency_cache_dir: str | None = None,
) -> keras.Model:
    """Prunes whole filters once by an importance criterion; returns a compact model.

    Coupled channels (residual ``Add``, ``Concatenate``, depthwise chains,
    squeeze-excite) are scored together and cut together; the model's outputs
    are never cut. The input model is not modified.

    Args:
        model: a built Functional or Sequential Keras model.
        criterion: "l1", "l2", "bn_gamma", "taylor" (needs ``data``), "fpgm" or
            "random" (seeded by ``seed``).
        keep_ratio: fraction of each prunable group's channels kept, in (0, 1]
            (default 0.5).
        data: (x, y) batches for the Taylor criterion.
        ignored_layers: layers (or names) whose output channels are left whole.
        per_layer: layer name -> keep ratio, overriding ``keep_ratio`` for the
            group of that layer's output.
        target_macs_reduction: instead of ``keep_ratio``, the fraction of MACs
            to remove (e.g. 0.5 for 2x fewer); a uniform keep ratio is searched.
        round_to: keep channel counts multiples of this (8 for XNNPACK), or
            ``"auto"``: the channel tile measured on this machine's TFLite
            interpreter (16 on AVX-512; see :mod:`tf_filterprune.latency`).
        min_filters: no group keeps fewer channels.
        seed: seed of the random criterion.
        taylor_steps: batches of ``data`` used by the Taylor criterion.
        loss: loss for the Taylor criterion (default: the compiled loss, else
            sparse categorical cross-entropy).
        prune_residual: False leaves the channels joined by residual ``Add``
            layers whole and prunes only block-internal convs, as the DCFF and
            DPFPS papers do for ResNets (measured here: at half the MACs,
            ResNet-56 with round_to=8 runs at 1.23x its MACs ratio this way,
            1.47x when the 16-wide first stage is cut to 8 too).
        target_latency_reduction: instead of ``keep_ratio`` or
            ``target_macs_reduction``, the fraction of the TFLite latency to
            remove (batch 1, XNNPACK, ``num_threads``), allocated by a latency
            model measured on this machine and cached
            (:mod:`tf_filterprune.latency`; the first call per architecture
            converts and times small models, about a minute).
        num_threads: interpreter threads of the latency model.
        latency_cache_dir: where latency models are cached (default
            ``$TFFP_LATENCY_CACHE``, else ``~/.cache/tf_filterprune/latency``).

    Returns:
        A new, physically smaller Keras model with the same layer names.

    Raises:
        ValueError: bad arguments, or no channel group can be pruned at all
            (every group refused: e.g. a ``channels_first`` model); the message
            lists the reasons per group.

    Example:

    >>> import keras, tf_filterprune as tffp
    >>> model = keras.applications.MobileNetV2(weights=None, input_shape=(64, 64, 3))
    >>> compact = tffp.prune_once(model, "l1", target_macs_reduction=0.5, round_to=8)
    >>> tffp.profile(compact).total_macs <= 0.5 * tffp.profile(model).total_macs
    True
    """
    if criterion not in criteria.CRITERIA:
        raise ValueError(f"Unknown criterion {criterion!r}; choose one of {criteria.CRITERIA}.")
    if target_latency_reduction is not None or isinstance(round_to, str):
        # tf_filterprune.latency is in the export/profiling layer (DESIGN.md, layer 5),
        # above this engine, and imports it: so it is imported here, lazily.
        from tf_filterprune import latency

        latency.check_latency_budget(
            target_latency_reduction,
            keep_ratio=keep_ratio,
            target_macs_reduction=target_macs_reduction,
        )
        round_to = latency.resolve_round_to(round_to, num_threads, latency_cache_dir)
    keep_ratio = _check_ratio("keep_ratio", 0.5 if keep_ratio is None else keep_ratio)
    if target_macs_reduction is not None:
        check_target(target_macs_reduction)
    if int(round_to) < 1 or int(min_filters) < 1:
        raise ValueError("`round_to` and `min_filters` must be positive integers.")
    if criterion == "taylor" and data is None:
        raise ValueError("criterion='taylor' needs `data`: (x, y) batches to compute gradients.")

    graph = build_graph(model)
    groups = select_groups(graph, ignored_layers, prune_residual)
    budget = Budget(keep_ratio, per_layer_ratios(graph, per_layer), int(round_to), int(min_filters))
    groups = [g for g in groups if g.size > budget.min_filters or g.id in budget.per_group]
    if not groups:
        raise ValueError(nothing_to_prune(graph, ignored_layers, prune_residual, min_filters))
    scores = _score(model, graph, groups, criterion, data, seed, taylor_steps, loss)
    if target_latency_reduction is not None:
        from tf_filterprune import latency  # lazily, as above

        counts = latency.allocate_for_target(
            model,
            graph,
            groups,
            budget,
            target_latency_reduction,
            num_threads=num_threads,
            cache_dir=latency_cache_dir,
        )
        return rebuild(model, graph, _top(groups, scores, counts))
    if target_macs_reduction is None:
        return rebuild(model, graph, _top(groups, scores, _counts(groups, budget)))

    macs = MacsModel(model, graph)
    goal = macs.total * (1.0 - target_macs_reduction)
    for attempt in range(20):
        counts = allocate(macs, groups, budget, goal * 0.99**attempt)
        compact = rebuild(model, graph, _top(groups, scores, counts))
        if profile(compact).total_macs <= goal:
            return compact
        logging.info("prune_once: the MACs estimate was optimistic; aiming lower.")
    raise RuntimeError("prune_once could not meet the MACs target; please report this model.")


def _score(model, graph, groups, criterion, data, seed, steps, loss) -> dict[int, np.ndarray]:
    gradients = None
    if criterion == "taylor":
        layers = [graph.layers[p] for g in groups for p in g.producers]
        gradients = criteria.taylor_gradients(model, layers, data, steps, loss)
    rng = np.random.default_rng(seed)
    return {g.id: score_channels(graph, g, criterion, gradients=gradients, rng=rng) for g in groups}


def score_channels(
    graph: ChannelGraph,
    group: ChannelGroup,
    criterion: str,
    *,
    gradients: dict[int, list[np.ndarray]] | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """The criterion's score of each channel of ``group``.

    A group holding only part of a producer's output (a ``keras.ops.split``
    divided it) is scored on the producer's whole output, then sliced to the
    group's channels; members are scaled to mean 1 and averaged, as
    :func:`criteria.score_group` does for whole producers.
    """
    parts = graph.producer_channels(group)
    if all(_whole_output(graph, path, channels) for path, channels in parts):
        return criteria.score_group(graph, group, criterion, gradients=gradients, rng=rng)
    scores = []
    for path, channels in parts:
        width = _output_width(graph, path)
        whole = ChannelGroup(-1, width, [], [path], [], [])
        full = criteria.score_group(graph, whole, criterion, gradients=gradients, rng=rng)
        scores.append(full[channels] / (np.mean(full[channels]) or 1.0))
    return np.mean(scores, axis=0)


def _output_width(graph: ChannelGraph, path: str) -> int:
    return graph.first_call(graph.layers[path]).out_layouts[0].width


def _whole_output(graph: ChannelGraph, path: str, channels: np.ndarray) -> bool:
    return len(channels) == _output_width(graph, path)


def _top(groups, scores, counts) -> dict[int, np.ndarray]:
    keep = {}
    for g in groups:
        n = counts[g.id]
        if n < g.size:
            keep[g.id] = top_channels(scores[g.id], n, g.blocks)
    return keep


def top_channels(scores: np.ndarray, count: int, blocks: int = 1) -> np.ndarray:
    """Sorted indices of the ``count`` best ``scores``, ``count / blocks`` in each block.

    >>> top_channels(np.array([1.0, 5, 2, 0, 3, 4]), 2, blocks=2).tolist()
    [1, 5]
    """
    per_block = np.split(np.asarray(scores), blocks)
    size, take = len(per_block[0]), count // blocks
    kept = [
        b * size + np.argsort(-block, kind="stable")[:take] for b, block in enumerate(per_block)
    ]
    return np.sort(np.concatenate(kept))
