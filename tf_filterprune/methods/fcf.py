"""CNN-FCF: factorized convolutional filters, one binary gate per filter (../shared/ALGORITHMS.md §2).

Each filter ``j`` of a wrapped conv gets a scalar gate ``v_j`` (a
variable, starting at 1); the forward pass is ``conv(x, W * v) + b``. The gates are
driven to ``{0, 1}^C`` with exactly ``k`` ones (``k`` = the wrapper's
``kept_channels``) by lp-box ADMM: ``{0,1}^C`` is the box ``[0,1]^C`` intersected
with the sphere ``||v - 1/2||^2 = C/4``; two copies ``z1`` (box and ``sum = k``)
and ``z2`` (sphere) with duals ``y1, y2`` and a penalty ``rho`` that grows.

**The gates' update.** ALGORITHMS.md's gradient is
``grad_v = alpha [y1 + y2 + rho (2v - z1 - z2)] + (1 - alpha) dL/dv``, followed by
plain SGD (no momentum, no weight decay). The gates are method state
(non-trainable variables): the model's optimizer (any Keras optimizer) trains
``W`` and never touches ``v``; the step hook moves ``v`` itself:

- the backward pass records ``dL/dv`` (``sum W * dL/d(W v)`` over each filter) in a
  per-replica buffer (summed over the replicas when read: the global batch's
  gradient, as Keras scales each replica's loss by ``1 / replicas``); under
  ``mixed_float16`` the hook divides it by the ``LossScaleOptimizer``'s current
  scale (a step whose gradients are not finite moves the gates by the ADMM term
  only);
- the hook takes the step ``v -= s * grad_v`` with ``s = gate_lr / (1 + 2 gate_lr
  alpha rho)``: plain SGD at ``gate_lr`` with the augmented Lagrangian's quadratic
  ``rho`` term taken implicitly (a proximal step). An explicit SGD step,
  ``s = gate_lr``, is unstable for ``gate_lr >= 1 / (alpha rho_max)`` (0.168 at the
  defaults) and, measured, keeps the whole gate vector swinging between all-ones
  and all-zeros for hundreds of steps after ``rho`` reaches ``rho_max`` in a short
  run; the implicit step never overshoots and, for large ``gate_lr``, is the exact
  ADMM ``v``-minimization. Letting the optimizer step ``v`` was tried and rejected:
  under Adam ``v`` moves about ``lr`` per step while the duals grow by
  ``rho |v - z|`` per step, and the gates oscillate without converging.

**The step hook** (eager, after every optimizer step; one ``tf.function`` for all
layers): the gate step above with the current ``z, y, rho``; then
``y1 += rho (v - z1)``, ``y2 += rho (v - z2)``, ``rho`` grows, and
``z1 = P_box,sum(v + y1 / rho)``, ``z2 = P_sphere(v + y2 / rho)``. Once ``rho`` has
reached ``rho_max``, gates within ``snap_tolerance`` of a binary vector with
exactly ``k`` ones are set onto it (:func:`snap_binary`): stochastic task
gradients keep ADMM's gates jittering by about ``s (1 - alpha) |dL/dv|`` around
the binary point (measured on the tests' tiny CNN: 0.01-0.03, depending on the
seed), and the strip is exact only for gates that are exactly 0 or 1. A snapped
layer is *decided*: its gates, copies, duals and ``rho`` stay as they are for the
rest of the run, which then fine-tunes the weights under the final binary gates
(the paper thresholds and fine-tunes afterwards; here the two overlap).
``snap_tolerance=0`` turns this off.

**Coupled groups** (a residual stream with ``prune_residual=True``): one gate
vector per group. Every producer wrapper holds a copy of it (a wrapper cannot
reach another layer's variable at forward time in a way that survives cloning,
saving and loading); the hook computes the group's step once, from the *sum* of
the producers' ``dL/dv`` (the gradient of one gate multiplying all of them), and
writes the same ``v, z1, z2, y1, y2, rho`` to every producer, so the copies never
differ.

**rho schedule.** The paper multiplies ``rho`` by ``mu`` after every iteration up
to ``rho_max`` (``rho_epochs=None``; 0.01 to 6 at ``mu = 1.01`` takes 643 steps,
about 1.6 of its 30 CIFAR epochs). :meth:`FCF.paced` fits the schedule to a run
of any length instead: ``rho`` still grows geometrically, by a constant factor
per step, but reaches ``rho_max`` at ``ramp`` (default 0.75) of the run,
``rho(e) = rho0 (rho_max / rho0)^min(1, e / rho_epochs)`` with ``e`` the fractional
epoch and ``rho_epochs = ramp * epochs``. In a 5-epoch fine-tuning of a pretrained
model the task gradient then has most of the run to choose the gates while the
penalty is weak, and the last quarter, at ``rho_max``, makes them binary.

**Strip.** The plain conv that computes what the wrapper computes has the kernel
``W * v`` and the bias ``b`` unchanged (exact for any gates). The plan keeps the
filters with ``v >= prune_threshold``; when that is not exactly ``k`` filters (the
gates are not binary yet) it keeps the ``k`` largest gates and says so. A removed
filter with ``v = 0`` outputs its bias: the surgery folds that constant (through
BN and the activation) into the consumers' biases, exactly where the consumer sees
the same constant at every position (e.g. a 1x1 or ``valid`` conv, a pooled Dense;
a ``same``-padded 3x3 conv sees the zero padding at the border, and the surgery
notes that); removed filters with nonzero gates make the strip inexact, and the
plan's note says so. The measured difference is the strip's ``verify_data`` result.
"""

from __future__ import annotations

import math
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

BISECTION_STEPS = 64
"""Bisection steps of :func:`project_box_sum` (in float64, then one exact solve)."""


# --------------------------------------------------------------------------- math


def _floats(*values: Any) -> list[tf.Tensor]:
    """Tensors of the first value's float dtype (lists, scalars, integer arrays: float64)."""
    first = values[0]
    if not tf.is_tensor(first) and not isinstance(first, tf.Variable):
        first = np.asarray(first)
        if first.dtype not in (np.float16, np.float32, np.float64):
            first = first.astype(np.float64)
    first = tf.convert_to_tensor(first)
    if not first.dtype.is_floating:
        first = tf.cast(first, tf.float64)
    return [first] + [tf.cast(tf.convert_to_tensor(v), first.dtype) for v in values[1:]]


def project_box_sum(x: Any, k: Any, steps: int = BISECTION_STEPS) -> tf.Tensor:
    """Euclidean projection of ``x`` onto ``{z in [0, 1]^C : sum z = k}``.

    The projection is ``clip(x - tau, 0, 1)`` for the ``tau`` at which the sum is
    ``k`` (the sum falls with ``tau``): ``tau`` is bisected in float64 between
    ``min(x) - 1`` (sum ``C``) and ``max(x)`` (sum 0), then solved exactly on the
    final partition (the sum is linear in ``tau`` while no entry crosses 0 or 1).
    ``k`` must be in ``[0, C]``. Returns the dtype of ``x``.

    >>> project_box_sum([0.9, 0.8, 0.1, -0.2], 2).numpy().round(4).tolist()
    [0.9667, 0.8667, 0.1667, 0.0]
    """
    (x,) = _floats(x)
    dtype = x.dtype
    values = tf.cast(x, tf.float64)
    k = tf.cast(k, tf.float64)

    def total(tau):
        return tf.reduce_sum(tf.clip_by_value(values - tau, 0.0, 1.0))

    def body(i, lo, hi):
        mid = 0.5 * (lo + hi)
        above = total(mid) > k
        return i + 1, tf.where(above, mid, lo), tf.where(above, hi, mid)

    lo, hi = tf.reduce_min(values) - 1.0, tf.reduce_max(values)
    _, lo, hi = tf.while_loop(lambda i, lo, hi: i < steps, body, (tf.constant(0), lo, hi))
    tau = 0.5 * (lo + hi)
    shifted = values - tau
    free = tf.logical_and(shifted > 0.0, shifted < 1.0)
    n_free = tf.reduce_sum(tf.cast(free, tf.float64))
    n_full = tf.reduce_sum(tf.cast(shifted >= 1.0, tf.float64))
    exact = (n_full + tf.reduce_sum(tf.where(free, values, 0.0)) - k) / tf.maximum(n_free, 1.0)
    tau = tf.where(n_free > 0, exact, tau)
    return tf.cast(tf.clip_by_value(values - tau, 0.0, 1.0), dtype)


def project_sphere(x: Any) -> tf.Tensor:
    """Projection onto the sphere ``||z - 1/2||^2 = C/4`` through the binary points.

    ``z = 1/2 + sqrt(C)/2 * (x - 1/2) / ||x - 1/2||``; at the centre (``x = 1/2``
    everywhere, where every point of the sphere is nearest) it returns the
    all-ones point.

    >>> project_sphere([1.0, 0.0, 1.0, 0.0]).numpy().tolist()
    [1.0, 0.0, 1.0, 0.0]
    >>> project_sphere([0.6, 0.5, 0.5, 0.5]).numpy().round(6).tolist()
    [1.5, 0.5, 0.5, 0.5]
    """
    (x,) = _floats(x)
    dtype = x.dtype
    values = tf.cast(x, tf.float64)
    offset = values - 0.5
    norm = tf.norm(offset)
    offset = tf.where(norm > 0.0, offset, tf.fill(tf.shape(offset), tf.constant(0.5, tf.float64)))
    norm = tf.norm(offset)
    size = tf.cast(tf.size(values), tf.float64)
    return tf.cast(0.5 + 0.5 * tf.sqrt(size) * offset / norm, dtype)


def admm_direction(v: Any, z1: Any, z2: Any, y1: Any, y2: Any, rho: Any) -> tf.Tensor:
    """``A = y1 + y2 + rho (2v - z1 - z2)``: the gradient of the augmented Lagrangian's
    ADMM terms in ``v``.

    >>> admm_direction([1.0], [0.5], [1.0], [0.1], [0.2], 2.0).numpy().round(6).tolist()
    [1.3]
    """
    v, z1, z2, y1, y2, rho = _floats(v, z1, z2, y1, y2, rho)
    return y1 + y2 + rho * (2.0 * v - z1 - z2)


def gate_gradient(
    v: Any, z1: Any, z2: Any, y1: Any, y2: Any, rho: Any, task_gradient: Any, alpha: float
) -> tf.Tensor:
    """``alpha A + (1 - alpha) dL/dv``: the gradient the gates follow.

    >>> gate_gradient([1.0], [0.5], [1.0], [0.1], [0.2], 2.0, [3.0], 0.9).numpy().round(6).tolist()
    [1.47]
    """
    direction = admm_direction(v, z1, z2, y1, y2, rho)
    return alpha * direction + (1.0 - alpha) * tf.cast(task_gradient, direction.dtype)


def gate_step(
    v: Any,
    z1: Any,
    z2: Any,
    y1: Any,
    y2: Any,
    rho: Any,
    task_gradient: Any,
    alpha: float,
    gate_lr: float,
) -> tf.Tensor:
    """``v - s * grad_v`` with ``s = gate_lr / (1 + 2 gate_lr alpha rho)``: SGD on the gates
    with the augmented Lagrangian's ``rho`` term implicit (a proximal step).

    It is ``argmin_u (1 - alpha) g.u + alpha [y.u + rho/2 (||u - z1||^2 + ||u - z2||^2)]
    + ||u - v||^2 / (2 gate_lr)`` (``g`` the task gradient, ``y = y1 + y2``).

    >>> gate_step([1.0], [0.5], [1.0], [0.1], [0.2], 2.0, [3.0], 0.9, 0.25).numpy().round(6).tolist()
    [0.806579]
    """
    v, rho = _floats(v, rho)
    grad = gate_gradient(v, z1, z2, y1, y2, rho, task_gradient, alpha)
    return v - gate_lr / (1.0 + 2.0 * gate_lr * alpha * rho) * grad


def admm_update(
    v: Any, z1: Any, z2: Any, y1: Any, y2: Any, rho: Any, next_rho: Any, k: Any
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """One ADMM update after the step on ``v``: the duals, then the two copies.

    ``y1 += rho (v - z1)``, ``y2 += rho (v - z2)``; then, with the next penalty,
    ``z1 = P_box,sum(v + y1 / next_rho)`` and ``z2 = P_sphere(v + y2 / next_rho)``.

    Returns:
        ``(z1, z2, y1, y2)``.
    """
    v, z1, z2, y1, y2, rho, next_rho = _floats(v, z1, z2, y1, y2, rho, next_rho)
    y1 = y1 + rho * (v - z1)
    y2 = y2 + rho * (v - z2)
    z1 = project_box_sum(v + y1 / next_rho, k)
    z2 = project_sphere(v + y2 / next_rho)
    return z1, z2, y1, y2


def snap_binary(v: Any, k: Any, tolerance: float) -> tf.Tensor:
    """``round(v)`` when it has exactly ``k`` ones and ``max |v - round(v)| <= tolerance``,
    else ``v``.

    >>> snap_binary([0.9999, 0.0002, 1.0], 2, 1e-3).numpy().tolist()
    [1.0, 0.0, 1.0]
    >>> snap_binary([0.9999, 0.0002, 1.0], 1, 1e-3).numpy().round(4).tolist()
    [0.9999, 0.0002, 1.0]
    """
    (v,) = _floats(v)
    return tf.where(snaps(v, k, tolerance), tf.clip_by_value(tf.round(v), 0.0, 1.0), v)


def snaps(v: Any, k: Any, tolerance: float) -> tf.Tensor:
    """Whether :func:`snap_binary` moves ``v`` onto a binary vector (a scalar bool).

    >>> bool(snaps([0.97, 0.02], 1, 0.05)), bool(snaps([0.9, 0.0], 1, 0.05))
    (True, False)
    """
    (v,) = _floats(v)
    binary = tf.clip_by_value(tf.round(v), 0.0, 1.0)
    close = tf.reduce_max(tf.abs(v - binary)) <= tolerance
    return tf.logical_and(close, tf.equal(tf.reduce_sum(binary), tf.cast(k, binary.dtype)))


def ramped_rho(epoch: float, rho: float, rho_max: float, rho_epochs: float) -> float:
    """``rho (rho_max / rho)^min(1, epoch / rho_epochs)``: geometric growth, ``rho_max``
    at ``rho_epochs``.

    >>> ramped_rho(0, 0.01, 6.0, 3.0), ramped_rho(1.5, 0.01, 4.0, 3.0), ramped_rho(9, 0.01, 6.0, 3.0)
    (0.01, 0.2, 6.0)
    """
    fraction = min(1.0, max(0.0, float(epoch)) / float(rho_epochs))
    return float(rho) * (float(rho_max) / float(rho)) ** fraction


def gate_gap(v: Any) -> float:
    """``max |v - round(v)|``: 0 for binary gates."""
    v = np.asarray(keras.ops.convert_to_numpy(v), dtype=np.float64)
    return float(np.max(np.abs(v - np.round(v)))) if v.size else 0.0


# --------------------------------------------------------------------------- method


@keras.saving.register_keras_serializable(package="tf_filterprune")
class FCF(PruningMethod):
    """CNN-FCF: learn one binary gate per filter by lp-box ADMM, at full width.

    Args:
        keep_ratio: fraction of each layer's filters kept (``k`` per layer; per-layer
            ratios and MACs targets are given to ``prune_filters``).
        alpha: the weight of the ADMM term in the gates' gradient, in (0, 1)
            (``1 - alpha`` weighs the task gradient); 0.99 in the paper.
        rho: the initial ADMM penalty, > 0 (0.01 in the paper).
        mu: the factor ``rho`` grows by after every step, >= 1 (1.01 in the paper);
            not used when ``rho_epochs`` is set.
        rho_max: the largest penalty, >= ``rho`` (6 in the paper).
        prune_threshold: filters with a gate below this are removed at strip, in
            (0, 1).
        rho_epochs: None for the paper's ``rho *= mu`` per step; else ``rho`` grows
            geometrically with the (fractional) epoch and reaches ``rho_max`` after
            ``rho_epochs`` epochs (see :meth:`paced`).
        snap_tolerance: once ``rho`` is at ``rho_max``, gates within this of a binary
            vector with ``k`` ones are set onto it (0 turns it off), in [0, 0.5).
        gate_lr: the gates' SGD learning rate, > 0. The step is proximal, so any
            value is stable; at ``rho_max`` every value >= 1 is close to the exact
            ADMM step, but a larger one makes more ADMM progress while ``rho`` is
            still small. Measured on the tests' tiny CNN (64 steps, ``paced``,
            16 at ``rho_max``): with 1.0 the gates ended binary in 7 of 10 seeds,
            with 3.0 (default) and 10.0 in 10 of 10 and 6 of 6; the paper's 0.1
            (its lr) needs about ten times the steps.

    Example:

    >>> import keras, numpy as np, tf_filterprune as tffp
    >>> from tf_filterprune.methods.fcf import FCF
    >>> wrapped = tffp.prune_filters(tffp.models.fashion_cnn(), FCF.paced(epochs=1))
    >>> wrapped.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> x, y = np.zeros((8, 28, 28, 1), "float32"), np.zeros((8,), "int32")
    >>> _ = wrapped.fit(x, y, epochs=1, verbose=0,
    ...                 callbacks=[tffp.callbacks.UpdateFilterPruning()])
    >>> tffp.strip_filter_pruning(wrapped).get_layer("conv3").filters
    32
    """

    takes_coupled_groups = True
    needs_every_step = True

    def __init__(
        self,
        keep_ratio: float = 0.5,
        alpha: float = 0.99,
        rho: float = 0.01,
        mu: float = 1.01,
        rho_max: float = 6.0,
        prune_threshold: float = 0.1,
        rho_epochs: float | None = None,
        snap_tolerance: float = 0.05,
        gate_lr: float = 3.0,
    ):
        super().__init__(keep_ratio)
        if not _number(alpha) or not (0.0 < alpha < 1.0):
            raise ValueError(f"FCF: alpha must be in (0, 1), got {alpha!r}.")
        if not _number(rho) or not rho > 0.0:
            raise ValueError(f"FCF: rho must be > 0, got {rho!r}.")
        if not _number(mu) or not mu >= 1.0:
            raise ValueError(f"FCF: mu must be >= 1, got {mu!r}.")
        if not _number(rho_max) or not rho_max >= rho:
            raise ValueError(f"FCF: rho_max must be >= rho ({rho!r}), got {rho_max!r}.")
        if not _number(prune_threshold) or not (0.0 < prune_threshold < 1.0):
            raise ValueError(f"FCF: prune_threshold must be in (0, 1), got {prune_threshold!r}.")
        if rho_epochs is not None and (not _number(rho_epochs) or not rho_epochs > 0):
            raise ValueError(f"FCF: rho_epochs must be None or > 0 epochs, got {rho_epochs!r}.")
        if not _number(snap_tolerance) or not (0.0 <= snap_tolerance < 0.5):
            raise ValueError(f"FCF: snap_tolerance must be in [0, 0.5), got {snap_tolerance!r}.")
        if not _number(gate_lr) or not gate_lr > 0.0:
            raise ValueError(f"FCF: gate_lr must be > 0, got {gate_lr!r}.")
        self.gate_lr = float(gate_lr)
        self.alpha, self.rho, self.mu = float(alpha), float(rho), float(mu)
        self.rho_max, self.prune_threshold = float(rho_max), float(prune_threshold)
        self.rho_epochs = None if rho_epochs is None else float(rho_epochs)
        self.snap_tolerance = float(snap_tolerance)

    @classmethod
    def paced(cls, epochs: int, keep_ratio: float = 0.5, ramp: float = 0.75, **kwargs) -> FCF:
        """FCF for a run of ``epochs``: ``rho`` reaches ``rho_max`` at ``ramp`` of the run.

        The paper's penalty grows geometrically from ``rho`` to ``rho_max``; here it
        grows by a constant factor per step too, paced by the run's length
        (``rho_epochs = ramp * epochs``), so a short run ends with ``1 - ramp`` of
        its steps at ``rho_max``, where the gates become binary. Other arguments go
        to :class:`FCF`.

        Example:

        >>> FCF.paced(epochs=4).rho_epochs
        3.0
        """
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"FCF.paced: epochs must be an int >= 1, got {epochs!r}.")
        if not _number(ramp) or not (0.0 < ramp <= 1.0):
            raise ValueError(f"FCF.paced: ramp must be in (0, 1], got {ramp!r}.")
        return cls(keep_ratio, rho_epochs=float(ramp) * epochs, **kwargs)

    # ---------------------------------------------------------------- state
    def create_state(self, wrapper: FilterPruningWrapper) -> None:
        size, keep = wrapper.out_channels, wrapper.kept_channels

        def state(name, value):
            variable = wrapper.add_weight(
                name=name,
                shape=np.shape(value),
                dtype="float32",
                initializer="zeros",
                trainable=False,
                autocast=False,  # float32 under mixed_float16 too; cast where used
            )
            variable.assign(np.asarray(value, dtype=np.float32))
            return variable

        # v = 1 and y = 0: z1 = P_box,sum(1) = k / C, z2 = P_sphere(1) = 1
        wrapper.fcf_gate = state("fcf_gate", np.ones(size))
        wrapper.fcf_z1 = state("fcf_z1", np.full(size, keep / size))
        wrapper.fcf_z2 = state("fcf_z2", np.ones(size))
        wrapper.fcf_y1 = state("fcf_y1", np.zeros(size))
        wrapper.fcf_y2 = state("fcf_y2", np.zeros(size))
        wrapper.fcf_rho = state("fcf_rho", np.float32(self.rho))
        wrapper.fcf_decided = state("fcf_decided", np.float32(0.0))  # 1 once snapped
        # dL/dv of the last step, per replica; reading it sums the replicas
        wrapper.fcf_task_gradient = keras.Variable(
            np.zeros(size, dtype="float32"),
            trainable=False,
            dtype="float32",
            name="fcf_task_gradient",
            synchronization="on_read",
            aggregation="sum",
        )

    # --------------------------------------------------------------- forward
    def effective_weights(self, wrapper, kernel, bias):
        """``W * v`` (the gate broadcast over the output axis) and the bias as it is."""
        gate = keras.ops.convert_to_tensor(wrapper.fcf_gate)
        return kernel * keras.ops.cast(gate, kernel.dtype), bias

    def call(self, wrapper: FilterPruningWrapper, inputs: Any, training: bool | None) -> Any:
        kernel, bias = wrapper.raw_weights(training)
        gate = tf.cast(tf.convert_to_tensor(wrapper.fcf_gate.value), kernel.dtype)
        gated = kernel * gate
        if training:
            gated = _record_gate_gradient(gated, kernel, wrapper.fcf_task_gradient)
        return wrapper.convolve(inputs, gated, bias)

    # ----------------------------------------------------------------- hooks
    def on_train_begin(self, context: PruningContext) -> None:
        self.validate(context)
        progress = context.progress
        if self.rho_epochs is not None and progress is not None and not progress.steps_per_epoch:
            logging.warning(
                "FCF(rho_epochs=%s): fit does not know the steps per epoch, so rho cannot "
                "follow the epochs; it grows by mu=%s per step instead.",
                self.rho_epochs,
                self.mu,
            )

    def next_rho(self, context: PruningContext) -> float:
        """The penalty after this step from the schedule, or -1 for ``rho *= mu``."""
        progress = context.progress
        fraction = None if progress is None else progress.epoch_fraction
        if self.rho_epochs is None or fraction is None:
            return -1.0
        return ramped_rho(fraction, self.rho, self.rho_max, self.rho_epochs)

    def on_step_end(self, context: PruningContext) -> None:
        if context.cache.get("fcf_all_decided"):
            return  # every gate is frozen: nothing left to update
        step = context.cache.get("fcf_step")
        if step is None:
            step = context.cache["fcf_step"] = _AdmmStep(self, gate_units(context))
        step(self.next_rho(context), _loss_scale(context.optimizer))
        calls = context.cache["fcf_step_calls"] = context.cache.get("fcf_step_calls", 0) + 1
        if calls % DECIDED_CHECK_STEPS == 0:  # a read syncs the device: not every step
            context.cache["fcf_all_decided"] = all(
                float(keras.ops.convert_to_numpy(unit[0].fcf_decided)) > 0.5 for unit in step.units
            )

    # ----------------------------------------------------------------- strip
    def plan(self, group: PrunedGroup, context: PruningContext) -> ChannelPlan:
        gates = np.asarray(keras.ops.convert_to_numpy(group.leader.fcf_gate), dtype=np.float64)
        k = group.target
        keep = above = np.flatnonzero(gates >= self.prune_threshold)
        notes = []
        if above.size != k:
            keep = np.sort(np.argsort(-gates, kind="stable")[:k])
            notes.append(
                f"{above.size} gates are >= prune_threshold={self.prune_threshold}, not "
                f"k={k}: the {k} largest gates are kept"
            )
        removed = np.setdiff1d(np.arange(group.size), keep)
        left = float(np.max(np.abs(gates[removed]))) if removed.size else 0.0
        if left > 0:
            notes.append(
                f"the {removed.size} removed gates are not all zero (largest {left:.3g}); the "
                "strip is not exact: pass verify_data to measure it"
            )
        note = None
        if notes:
            note = f"FCF '{group.name}': " + "; ".join(notes)
            logging.info(note)
        return ChannelPlan(keep, note=note)

    def summaries(self, wrapper: FilterPruningWrapper) -> dict[str, Any]:
        gates = keras.ops.convert_to_numpy(wrapper.fcf_gate)
        return {
            "kept_width": wrapper.kept_channels,
            "gates": gates,
            "gate_gap": gate_gap(gates),
            "gates_above_threshold": int(np.sum(gates >= self.prune_threshold)),
            "rho": float(keras.ops.convert_to_numpy(wrapper.fcf_rho)),
        }

    def get_config(self) -> dict:
        return {
            "keep_ratio": self.keep_ratio,
            "alpha": self.alpha,
            "rho": self.rho,
            "mu": self.mu,
            "rho_max": self.rho_max,
            "prune_threshold": self.prune_threshold,
            "rho_epochs": self.rho_epochs,
            "snap_tolerance": self.snap_tolerance,
            "gate_lr": self.gate_lr,
        }


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def gate_units(context: PruningContext) -> list[list[FilterPruningWrapper]]:
    """The wrappers whose gates are one vector: each group's producers, and every
    wrapper of the method in no group (left whole) alone."""
    units, seen = [], set()
    for group in context.groups:
        units.append(list(group.wrappers))
        seen.update(id(w) for w in group.wrappers)
    units += [[w] for w in context.wrappers if id(w) not in seen]
    return units


def _record_gate_gradient(gated: Any, kernel: Any, buffer: keras.Variable) -> Any:
    """Identity on ``W * v`` whose backward pass writes ``dL/dv = sum W * dL/d(W v)``
    (per filter, in float32) into ``buffer``."""

    @tf.custom_gradient
    def record(value):
        def grad(upstream):
            product = tf.cast(kernel, tf.float32) * tf.cast(upstream, tf.float32)
            per_filter = tf.reduce_sum(product, axis=list(range(product.shape.rank - 1)))
            with tf.control_dependencies([buffer.assign(per_filter)]):
                return tf.identity(upstream)

        return tf.identity(value), grad

    return record(gated)


def _loss_scale(optimizer: Any) -> Any:
    """The current loss scale of a ``LossScaleOptimizer`` (mixed precision), else None."""
    scale = getattr(optimizer, "dynamic_scale", None)
    return None if scale is None else tf.convert_to_tensor(scale.value)


class _AdmmStep:
    """The hook's work for all gate units, as one ``tf.function``: the gate step from
    the unit's summed task gradient, the snap, the duals, rho and the copies."""

    def __init__(self, method: FCF, units: list[list[FilterPruningWrapper]]):
        self.method = method
        self.units = units
        self._function = tf.function(self._step)

    def __call__(self, next_rho: float, loss_scale: Any) -> None:
        scale = tf.constant(1.0, tf.float32) if loss_scale is None else loss_scale
        self._function(tf.constant(next_rho, tf.float32), tf.cast(scale, tf.float32))

    def _step(self, next_rho, loss_scale):
        method = self.method
        for unit in self.units:
            lead = unit[0]
            task = tf.add_n([w.fcf_task_gradient.value for w in unit]) / loss_scale
            task = tf.where(tf.reduce_all(tf.math.is_finite(task)), task, tf.zeros_like(task))
            z1, z2 = lead.fcf_z1.value, lead.fcf_z2.value
            y1, y2 = lead.fcf_y1.value, lead.fcf_y2.value
            rho = lead.fcf_rho.value
            v = gate_step(
                lead.fcf_gate.value, z1, z2, y1, y2, rho, task, method.alpha, method.gate_lr
            )
            new_rho = tf.where(
                next_rho < 0.0, tf.minimum(rho * method.mu, method.rho_max), next_rho
            )
            k = float(lead.kept_channels)
            decided = lead.fcf_decided.value > 0.5
            snapped = tf.constant(False)
            if method.snap_tolerance > 0:
                at_max = new_rho >= method.rho_max * (1.0 - 1e-6)
                snapped = tf.logical_and(at_max, snaps(v, k, method.snap_tolerance))
                v = tf.where(snapped, tf.clip_by_value(tf.round(v), 0.0, 1.0), v)
            updated = (v, *admm_update(v, z1, z2, y1, y2, rho, new_rho, k), new_rho)
            kept = (lead.fcf_gate.value, z1, z2, y1, y2, rho)
            values = [tf.where(decided, old, new) for old, new in zip(kept, updated, strict=True)]
            values.append(tf.where(tf.logical_or(decided, snapped), 1.0, 0.0))
            for wrapper in unit:
                for name, value in zip(_STATE, values, strict=True):
                    getattr(wrapper, f"fcf_{name}").assign(value)


DECIDED_CHECK_STEPS = 25
"""The step hook checks every this many steps whether every layer is decided; from then on
it does nothing (the gates, duals and rho are frozen), so the rest of the run trains at
the cost of the masked forward alone."""


_STATE = ("gate", "z1", "z2", "y1", "y2", "rho", "decided")
"""The per-wrapper ADMM state, in the order :class:`_AdmmStep` computes it."""


__all__ = [
    "FCF",
    "admm_direction",
    "admm_update",
    "gate_gap",
    "gate_gradient",
    "gate_step",
    "gate_units",
    "project_box_sum",
    "project_sphere",
    "ramped_rho",
    "snap_binary",
    "snaps",
]
