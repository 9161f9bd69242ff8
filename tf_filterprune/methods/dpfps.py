"""DPFPS: dynamic and progressive filter pruning from scratch (../shared/ALGORITHMS.md §3).

One training run from random initialization, at full width, with a structured
sparsity penalty on the channels expected to go:

- A *group* is one channel of a channel group: its filters (every producer of a
  residual stream), the BatchNormalization scale and shift on it, and every
  consumer's input slice.
- Each epoch, **dynamic allocation**: ``nnz_l`` channels of layer ``l`` have a
  group norm above ``norm_threshold`` of the layer's largest; one global scale
  ``s`` (searched in steps of 0.005) gives ``n_l = floor(s * nnz_l)`` (rounded down
  to ``round_to``, at least ``min_filters``) so that the widths meet the MACs
  target on the engine's exact MACs model; channels left over by the rounding are
  handed back greedily while the target holds.
- Each step, after the optimizer update: the **Taylor sensitivity** of each
  channel, ``|sum W * dL/dW|`` over its filters (and bias), picks the
  ``C_l - n_l`` least sensitive channels: the *expected-pruned* ones. Only those
  get the **proximal (ISTA) group shrink** ``g <- g * max(0, 1 - tau / ||g||)``
  with ``tau = lr * lam * p(t)``, ``p(t) = 1 / (1 + exp(15 - 30 t / t1))`` the
  **progressive** factor (``t`` the epochs done, fractional; ``t1`` the first
  learning-rate milestone). The paper's ``(e + 1) / E1`` on whole epochs is the
  same curve read once per epoch; reading it continuously keeps its shape in a
  5-epoch run.
- At strip, exactly the ``n_l`` channels with the largest group norms stay: the
  MACs target holds whether or not the other groups reached zero; when they did
  (the usual case) the strip is exact, otherwise the strip says by how much the
  removed groups were not zero.

Pitfall: ``lam`` = 0.01 is the paper's value for SGD at lr 0.1 over 200+ epochs.
``tau`` scales with the learning rate, so Adam at lr 1e-3 over a few epochs needs
a much larger ``lam`` for the expected-pruned groups to reach zero (see the
benchmark's ``dpfps`` row).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tf_filterprune.methods.base import (
    ChannelPlan,
    FilterPruningWrapper,
    PrunedGroup,
    PruningContext,
    PruningMethod,
)

SEARCH_STEP = 0.005
"""Step of the global scale search (the paper's)."""


def progressive_factor(epochs_done: float, first_milestone: float) -> float:
    """``p(t) = 1 / (1 + exp(15 - 30 t / t1))``: ~0 at the start, 1/2 at ``t1 / 2``, ~1 at ``t1``.

    >>> round(progressive_factor(0.0, 10), 6), progressive_factor(5.0, 10), round(
    ...     progressive_factor(10.0, 10), 6)
    (0.0, 0.5, 1.0)
    """
    exponent = 15.0 - 30.0 * float(epochs_done) / float(first_milestone)
    if exponent > 700:
        return 0.0
    return 1.0 / (1.0 + math.exp(exponent))


def nonzero_count(norms: np.ndarray, threshold: float) -> int:
    """Channels whose norm is above ``threshold`` times the largest (at least 1).

    >>> nonzero_count(np.array([1.0, 0.5, 0.005, 0.0]), 0.01)
    2
    """
    top = float(np.max(norms)) if len(norms) else 0.0
    return max(1, int(np.sum(norms > threshold * top))) if top > 0 else 1


def width_at_scale(scale: float, nnz: int, size: int, round_to: int, min_filters: int) -> int:
    """``floor(scale * nnz)`` rounded down to ``round_to``, within [min, size].

    A layer no wider than ``round_to`` stays whole (as ``prune_once`` does).

    >>> width_at_scale(0.5, 64, 64, 16, 1), width_at_scale(0.3, 64, 64, 16, 1)
    (32, 16)
    >>> width_at_scale(0.5, 8, 8, 16, 1)
    8
    """
    if size <= round_to:
        return size
    n = int(math.floor(scale * nnz + 1e-9))
    n = (n // round_to) * round_to
    return int(min(size, max(n, round_to, min_filters)))


def allocate_widths(
    nnz: Mapping[int, int],
    sizes: Mapping[int, int],
    estimate: Callable[[Mapping[int, int]], float],
    goal: float,
    round_to: Mapping[int, int],
    min_filters: Mapping[int, int],
    step: float = SEARCH_STEP,
) -> dict[int, int]:
    """Widths per group for a MACs goal: one global scale of ``nnz``, then a greedy fill.

    Args:
        nnz: group id -> channels above the norm threshold.
        sizes: group id -> channels.
        estimate: MACs of the model at a ``{group: width}`` map.
        goal: the MACs the widths must not exceed.
        round_to, min_filters: per group.
        step: the scale search step.

    Returns:
        group id -> width; ``estimate`` of it is <= ``goal``.

    Raises:
        ValueError: when even the smallest widths exceed ``goal``.
    """

    def widths(scale: float) -> dict[int, int]:
        return {
            g: width_at_scale(scale, nnz[g], sizes[g], round_to[g], min_filters[g]) for g in sizes
        }

    if estimate(widths(0.0)) > goal:
        raise ValueError("the smallest widths allowed exceed the MACs goal")
    top = max(math.ceil(sizes[g] / max(nnz[g], 1) / step) for g in sizes)
    lo, hi = 0, top  # largest k with estimate(widths(k * step)) <= goal
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate(widths(mid * step)) <= goal:
            lo = mid
        else:
            hi = mid - 1
    return fill_widths(widths(lo * step), sizes, estimate, goal, round_to)


def fill_widths(
    counts: Mapping[int, int],
    sizes: Mapping[int, int],
    estimate: Callable[[Mapping[int, int]], float],
    goal: float,
    round_to: Mapping[int, int],
) -> dict[int, int]:
    """Hands back ``round_to`` channels at a time, to the group keeping the smallest
    fraction of its channels, while the MACs stay within ``goal``."""
    counts = dict(counts)
    spent = estimate(counts)
    while True:
        best = None
        for g in sorted(counts, key=lambda g: (counts[g] / sizes[g], g)):
            new = min(counts[g] + round_to[g], sizes[g])
            if new == counts[g]:
                continue
            trial = {**counts, g: new}
            cost = estimate(trial)
            if cost <= goal:
                best = (g, new, cost)
                break
        if best is None:
            return counts
        g, counts[g], spent = best


def taylor_sensitivity(
    values: list[np.ndarray], gradients: list[np.ndarray], axes: list[int]
) -> np.ndarray:
    """``|sum W * dL/dW|`` per channel, summed over several producer weights.

    Each weight's channel axis is ``axes[i]``; the others are reduced.

    >>> taylor_sensitivity([np.array([[1.0, 2.0]])], [np.array([[3.0, -1.0]])], [1])
    array([3., 2.])
    """
    total = None
    for value, grad, axis in zip(values, gradients, axes, strict=True):
        product = np.asarray(value, np.float64) * np.asarray(grad, np.float64)
        other = tuple(i for i in range(product.ndim) if i != axis % product.ndim)
        term = product.sum(axis=other)
        total = term if total is None else total + term
    return np.abs(total)


def proximal_factors(norms: np.ndarray, pruned: np.ndarray, tau: float) -> np.ndarray:
    """``max(0, 1 - tau / ||g||)`` on the ``pruned`` channels, 1 elsewhere.

    >>> proximal_factors(np.array([1.0, 0.5, 2.0]), np.array([True, True, False]), 0.5)
    array([0.5, 0. , 1. ])
    """
    shrink = np.maximum(0.0, 1.0 - tau / np.maximum(norms, 1e-12))
    return np.where(pruned, shrink, 1.0)


def expected_pruned(sensitivity: np.ndarray, count: int) -> np.ndarray:
    """Boolean mask of the ``count`` least sensitive channels (ties: lower index first).

    >>> expected_pruned(np.array([0.3, 0.1, 0.2, 0.0]), 2)
    array([False,  True, False,  True])
    """
    mask = np.zeros(len(sensitivity), dtype=bool)
    if count > 0:
        mask[np.argsort(sensitivity, kind="stable")[:count]] = True
    return mask


@keras.saving.register_keras_serializable(package="tf_filterprune")
class DPFPS(PruningMethod):
    """Dynamic and progressive filter pruning, trained from scratch at full width.

    Args:
        target_macs_reduction: fraction of the model's MACs the stripped model removes.
        lam: the group-lasso strength lambda (``tau = lr * lam * p(t)``); 0.01 is
            the paper's for SGD at lr 0.1 (see the module docstring for Adam).
        first_milestone: ``t1`` of the progressive factor, in epochs; None takes
            the first boundary of a ``PiecewiseConstantDecay`` learning rate, else
            half of the ``fit`` call's epochs.
        norm_threshold: a channel counts as nonzero above this fraction of its
            layer's largest group norm, in (0, 1).

    Example:

    >>> import keras, numpy as np, tf_filterprune as tffp
    >>> model = tffp.models.fashion_cnn()
    >>> wrapped = tffp.prune_filters(model, tffp.DPFPS(target_macs_reduction=0.5, lam=1.0))
    >>> wrapped.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> x, y = np.zeros((8, 28, 28, 1), "float32"), np.zeros((8,), "int32")
    >>> _ = wrapped.fit(x, y, epochs=1, verbose=0,
    ...                 callbacks=[tffp.callbacks.UpdateFilterPruning()])
    >>> compact = tffp.strip_filter_pruning(wrapped)
    >>> tffp.profile(compact).total_macs <= 0.5 * tffp.profile(model).total_macs
    True
    """

    takes_coupled_groups = True
    needs_gradients = True
    allocates_widths = True
    needs_every_step = True

    def __init__(
        self,
        target_macs_reduction: float = 0.5,
        lam: float = 0.01,
        first_milestone: float | None = None,
        norm_threshold: float = 0.01,
    ):
        if not isinstance(target_macs_reduction, int | float) or not (
            0.0 < target_macs_reduction < 1.0
        ):
            raise ValueError(
                f"DPFPS: target_macs_reduction must be in (0, 1), got {target_macs_reduction!r}."
            )
        if not isinstance(lam, int | float) or lam < 0:
            raise ValueError(f"DPFPS: lam must be >= 0, got {lam!r}.")
        if first_milestone is not None and not first_milestone > 0:
            raise ValueError(f"DPFPS: first_milestone must be > 0 epochs, got {first_milestone!r}.")
        if not isinstance(norm_threshold, int | float) or not (0.0 < norm_threshold < 1.0):
            raise ValueError(f"DPFPS: norm_threshold must be in (0, 1), got {norm_threshold!r}.")
        super().__init__(keep_ratio=1.0 - float(target_macs_reduction))
        self.target_macs_reduction = float(target_macs_reduction)
        self.lam = float(lam)
        self.first_milestone = None if first_milestone is None else float(first_milestone)
        self.norm_threshold = float(norm_threshold)

    # ---------------------------------------------------------------- state
    def create_state(self, wrapper: FilterPruningWrapper) -> None:
        wrapper.dpfps_width = wrapper.add_weight(
            name="dpfps_width", shape=(), dtype="int32", initializer="zeros", trainable=False
        )
        wrapper.dpfps_width.assign(-1)  # not allocated yet

    # ----------------------------------------------------------- allocation
    def goal(self, context: PruningContext) -> float:
        """The MACs the stripped model may have."""
        return context.macs.total * (1.0 - self.target_macs_reduction)

    def allocate(self, context: PruningContext) -> dict[int, int]:
        """This epoch's widths per group, from the current group norms."""
        groups = context.groups
        sizes = {g.id: g.size for g in groups}
        nnz = {g.id: nonzero_count(g.channel_norms(), self.norm_threshold) for g in groups}
        try:
            return allocate_widths(
                nnz,
                sizes,
                context.macs.estimate,
                self.goal(context),
                {g.id: g.leader.round_to for g in groups},
                {g.id: g.leader.min_filters for g in groups},
            )
        except ValueError as error:
            raise ValueError(self._unreachable(context)) from error

    def _unreachable(self, context: PruningContext) -> str:
        return (
            f"DPFPS: target_macs_reduction={self.target_macs_reduction} cannot be met on "
            f"'{context.model.name}': even the smallest widths allowed (min_filters, round_to, "
            f"ignored and unwrapped layers: {len(context.groups)} groups are pruned) keep more "
            "MACs. Lower target_macs_reduction, or wrap more layers (prune_residual=True)."
        )

    def validate(self, context: PruningContext) -> None:
        if not context.groups:
            raise ValueError(f"DPFPS: model '{context.model.name}' has no group to prune.")
        minimal = {g.id: min(g.size, max(1, g.leader.min_filters)) for g in context.groups}
        for g in context.groups:
            if g.size > g.leader.round_to:
                minimal[g.id] = max(minimal[g.id], g.leader.round_to)
        if context.macs.estimate(minimal) > self.goal(context):
            raise ValueError(self._unreachable(context))

    def _store(self, context: PruningContext, widths: Mapping[int, int]) -> None:
        for group in context.groups:
            for wrapper in group.wrappers:
                wrapper.dpfps_width.assign(int(widths[group.id]))

    def widths(self, context: PruningContext) -> dict[int, int]:
        """The widths allocated last (allocated now if never; kept for this context, as
        the strip asks once per group)."""
        cached = context.cache.get("dpfps_strip_widths")
        if cached is not None:
            return cached
        stored = {g.id: int(g.leader.dpfps_width.numpy()) for g in context.groups}
        if any(w < 1 for w in stored.values()):
            stored = self.allocate(context)
        if context.progress is None:  # outside fit: the strip's context
            context.cache["dpfps_strip_widths"] = stored
        return stored

    # ----------------------------------------------------------------- hooks
    def on_train_begin(self, context: PruningContext) -> None:
        self.validate(context)

    def on_epoch_begin(self, context: PruningContext) -> None:
        widths = self.allocate(context)
        self._store(context, widths)
        counts = [g.size - widths[g.id] for g in context.groups]
        context.cache["dpfps_prune_counts"] = tf.constant(counts, tf.int32)

    def on_step_end(self, context: PruningContext) -> None:
        progress = context.progress
        milestone = self._milestone(context)
        done = progress.epoch_fraction if progress.epoch_fraction is not None else progress.epoch
        scale = self.lam * progressive_factor(done, milestone)  # tau = lr * scale
        if scale < 1e-12:
            return  # no shrink yet (p ~ 0 at the start, or lam = 0)
        if context.optimizer is None:
            raise ValueError("DPFPS's step hook needs the optimizer (it runs inside model.fit).")
        step = context.cache.get("dpfps_step")
        if step is None:
            step = context.cache["dpfps_step"] = _ShrinkStep(context.groups, context.optimizer)
        prune_counts = context.cache.get("dpfps_prune_counts")
        if prune_counts is None:  # a step hook called outside fit's epochs (tests)
            prune_counts = [g.size - int(g.leader.dpfps_width.numpy()) for g in context.groups]
        step(scale, prune_counts)

    def _milestone(self, context: PruningContext) -> float:
        if self.first_milestone is not None:
            return self.first_milestone
        cached = context.cache.get("dpfps_milestone")
        if cached is None:
            cached = context.cache["dpfps_milestone"] = _first_milestone(context)
        return cached

    # ----------------------------------------------------------------- strip
    def plan(self, group: PrunedGroup, context: PruningContext) -> ChannelPlan:
        width = self.widths(context)[group.id]
        norms = group.channel_norms()
        keep = np.sort(np.argsort(-norms, kind="stable")[:width])
        removed = np.setdiff1d(np.arange(group.size), keep)
        left = float(norms[removed].max()) if removed.size else 0.0
        note = None
        if left > 0:
            note = (
                f"DPFPS '{group.name}': the {removed.size} removed channels were not all zero "
                f"(largest group norm {left:.3g}, {left / max(norms.max(), 1e-12):.2%} of the "
                "layer's largest); the strip is not exact: pass verify_data to measure it"
            )
            logging.info(note)
        return ChannelPlan(keep, note=note)

    def summaries(self, wrapper: FilterPruningWrapper) -> dict[str, Any]:
        return {"kept_width": int(wrapper.dpfps_width.numpy())}

    def get_config(self) -> dict:
        return {
            "target_macs_reduction": self.target_macs_reduction,
            "lam": self.lam,
            "first_milestone": self.first_milestone,
            "norm_threshold": self.norm_threshold,
        }


def _first_milestone(context: PruningContext) -> float:
    """The first boundary of a piecewise-constant learning rate, in epochs, else half the run."""
    progress = context.progress
    optimizer = getattr(context.optimizer, "inner_optimizer", context.optimizer)
    schedule = getattr(optimizer, "_learning_rate", None)
    boundaries = getattr(schedule, "boundaries", None)
    if boundaries and progress.steps_per_epoch:
        return max(float(boundaries[0]) / progress.steps_per_epoch, 1e-6)
    return max((progress.total_epochs or 2) / 2.0, 1e-6)


class _ShrinkStep:
    """The per-step Taylor selection and group shrink of all groups, as one tf.function."""

    def __init__(self, groups: list[PrunedGroup], optimizer: Any):
        self.groups = groups
        self.optimizer = optimizer
        self._function = tf.function(self._shrink)

    def __call__(self, scale: float, prune_counts: Any) -> None:
        self._function(tf.constant(scale, tf.float32), tf.convert_to_tensor(prune_counts, tf.int32))

    def _shrink(self, scale, prune_counts):
        # the learning rate read in the graph: no eager read of the schedule per step
        tau = tf.cast(self.optimizer.learning_rate, tf.float32) * scale
        # All factors from the weights as they are, then all the scaling: groups
        # overlap (a conv's filters are the previous group's consumer slice).
        factors = []
        for index, group in enumerate(self.groups):
            sensitivity = _taylor(group)
            order = tf.argsort(sensitivity, stable=True)
            rank = tf.argsort(order, stable=True)
            pruned = rank < prune_counts[index]
            norms = tf.sqrt(tf.add_n([_square_sums(m) for m in group.trainable_members()]))
            shrink = tf.nn.relu(1.0 - tau / tf.maximum(norms, 1e-12))
            factors.append(tf.where(pruned, shrink, tf.ones_like(shrink)))
        for group, group_factors in zip(self.groups, factors, strict=True):
            for member in group.trainable_members():
                _scale(member, group_factors)


def _taylor(group: PrunedGroup):
    """``|sum W * dL/dW|`` per channel over the group's producer kernels and biases."""
    total = 0.0
    for wrapper in group.wrappers:
        pairs = [(wrapper.layer.kernel, wrapper.kernel_gradient)]
        if wrapper.bias_gradient is not None:
            pairs.append((wrapper.layer.bias, wrapper.bias_gradient))
        for variable, gradient in pairs:
            product = tf.cast(variable.value, tf.float32) * gradient.value
            rank = len(variable.shape)
            total += tf.reduce_sum(product, axis=list(range(rank - 1)))
    total = tf.abs(total)
    return tf.where(tf.math.is_finite(total), total, tf.zeros_like(total))


def _square_sums(member):
    value = tf.cast(member.variable.value, tf.float32)
    axis = member.axis % value.shape.rank
    other = [i for i in range(value.shape.rank) if i != axis]
    along = tf.reduce_sum(tf.square(value), axis=other) if other else tf.square(value)
    return tf.reduce_sum(tf.gather(along, member.positions), axis=1)


def _scale(member, factors) -> None:
    """Multiplies each channel's slices of ``member`` by its factor."""
    value = member.variable.value
    axis = member.axis % value.shape.rank
    length = value.shape[axis]
    flat = member.positions.reshape(-1, 1)
    repeated = tf.repeat(factors, member.positions.shape[1])
    scale = tf.tensor_scatter_nd_update(tf.ones([length], tf.float32), flat, repeated)
    shape = [1] * value.shape.rank
    shape[axis] = length
    member.variable.assign(value * tf.cast(tf.reshape(scale, shape), value.dtype))


__all__ = [
    "DPFPS",
    "allocate_widths",
    "expected_pruned",
    "nonzero_count",
    "progressive_factor",
    "proximal_factors",
    "taylor_sensitivity",
]
