"""Filter clustering with feature diversity (../shared/ALGORITHMS.md §4).

Instead of removing filters, the channels of a layer whose outputs are alike are
merged: each of ``k`` clusters keeps one representative, and every consumer's
input slices of the cluster's members are summed onto the representative's
(exact when the members output the same values). Training at full width makes
the members alike first.

**Output distance without images.** With BatchNormalization after the conv,
channel ``i`` outputs ``z_i = a_i xhat_i + c_i`` with ``xhat_i`` of zero mean and unit
variance, so ``E(z_i - z_j)^2 = (c_i - c_j)^2 + a_i^2 + a_j^2 - 2 a_i a_j rho_ij``.
Here ``c_i = beta_i`` and ``a_i = gamma_i sqrt(var_i / (var_i + eps))`` (the BN
output's standard deviation when its moving statistics are current: BN gamma /
sqrt(var + eps) times the conv output's standard deviation, read as sqrt of the
moving variance), and the correlation ``rho_ij`` of the normalized outputs is
estimated by ``cos(w_i, w_j)`` of the flattened filters (exact for white inputs).
Measured on a small trained CNN with current BN statistics, the estimate ranks
filter pairs as the empirical distance does (Spearman 0.87-0.99 across its
layers; a diagonal input-variance weighting of the cosine did not help, the full
input covariance would need images). Without BN, ``z_i = w_i . x + b_i`` and, for
white inputs, ``E(z_i - z_j)^2 = ||w_i - w_j||^2 + (b_i - b_j)^2``. Both are
squared Euclidean distances between per-channel *embeddings*
(:func:`channel_embedding`): ``[c_i, a_i w_i / ||w_i||]`` with BN, ``[b_i, w_i]``
without; the channels of a residual stream (several producers) concatenate one
embedding per producer, so their distance is the sum over the producers.

**Clustering** (:func:`cluster_channels`, numpy, deterministic): Ward
agglomerative clustering of the embeddings down to ``k`` clusters (it merges the
pair of clusters that least increases the within-cluster sum of squares, i.e.
the merge error of the estimate), refined by Lloyd (k-means) iterations from
Ward's clusters. Each cluster's *representative* is its member nearest to the
cluster's mean embedding (lowest index on ties); clusters are numbered by their
representatives, ascending, so cluster ``i`` is kept channel ``keep[i]``.

**Schedule.** Every ``period_epochs`` epochs (at the epoch's begin, from epoch
``warmup_epochs`` on) the channels are re-clustered from the current weights.
After every optimizer step (a hook, one ``tf.function`` for all layers) every
weight that must be equal within a cluster for an exact merge -- the conv's kernel
and bias, the BatchNormalization's gamma, beta and moving statistics, any other
per-channel weight before the consumers (PReLU, a layer scale), the anti-blocking
branch; not the consumers' kernels -- moves a fraction ``p`` toward the cluster's
mean (:func:`pull_toward_centres`, a ``C x C`` averaging matrix on the channel
axis): a soft tie that the task gradient works against. The hook runs in the
cross-replica context, so every replica's copy gets the same value.
``p = pull`` for the first ``1 - merge_fraction`` of the run; in the last
``merge_fraction`` the clusters are frozen (no more re-clustering) and ``p`` rises
linearly to 1 (:func:`pull_at`), and the last step (or the end of the last
epoch) sets every member to its cluster's mean: the members are identical and
the merge at strip is exact. A step hook that runs after ``n > 1`` steps
(``steps_per_execution``) pulls by ``1 - (1 - p)^n``. The run's length is the
``epochs`` of ``fit`` or, to save and resume a run spread over several ``fit``
calls, the method's ``epochs``. A penalty (``lam ||w_i - mean||^2`` in the loss)
was the alternative; the pull is the proximal step of that penalty, works with
any optimizer and needs no change to the loss or the train step.

**Anti-blocking branch** (``anti_blocking=True``): every wrapped conv that is
narrowed (``kept_channels < filters``) gets a parallel branch, a 1x1 conv and a
per-channel normalization, added to the conv's output before the activation
(RepVGG-style). The 1x1 conv computes exactly ``conv(x, pad(K1x1))`` with the main
conv's strides, padding and dilation. The normalization is a BatchNormalization *without
shift* in its inference form, ``gamma * u / sqrt(var + eps)`` with a moving variance
(momentum 0.99; while training it follows the batch variance of ``u`` measured on the
first ``BRANCH_STAT_SAMPLES`` examples of each batch, averaged over the replicas under
``tf.distribute``); ``gamma`` starts at 0, so wrapping leaves the model's function
unchanged. A linear branch with fixed statistics is a kernel: the forward pass adds
``pad(K1x1 gamma / sqrt(var + eps))`` to the main kernel and runs one conv, so the
branch costs a kernel add and the statistics' 1x1 conv on a few examples per step,
not a second conv over the batch (measured: train-step ratio 1.36 with the branch as
its own conv with batch statistics, README). It has no beta and subtracts no mean, so
it folds into the kernel alone: the stripped conv never needs a bias the original
conv does not have (with a mean-subtracting BN the folded shift
``beta - gamma mean / sqrt(var + eps)`` needs one, and a conv followed by BN usually
has ``use_bias=False``); the BN after the conv centers the sum anyway. At strip the
branch is folded the same way: the stripped conv has no branch and costs nothing
more at inference. The identity
+ BN form (where the conv's input and output widths match) is a special case of
the 1x1 form and is not offered separately. Kernel sizes must be odd.

**Strip.** The plan keeps the representatives and gives the consumer map ``M``
(``k x C``, ``M[i, c] = 1`` when channel ``c`` is in cluster ``i``): every consumer's
input slice ``i`` becomes the sum of its members' slices. When the members are not
identical (the run stopped early, or was never trained) the plan's note gives the
largest difference of a member's weights from its cluster's mean and the largest
estimated output distance of a member to its representative; the strip's
``verify_data`` measures the effect. A merge needs every consumer to sum its input
slices, so a group whose channels reach a per-channel kernel (DepthwiseConv2D,
SeparableConv2D) is refused when wrapping.

**Measured** (one seed, not a benchmark): ``fashion_cnn`` on 6000 Fashion-MNIST
training images, 5 epochs of Adam (1e-3, cosine decay to 1%), batch 128 (47 steps an
epoch), ``keep_ratio=0.5`` with ``conv1`` whole (0.34x MACs), BN re-estimated after
the strip, 2000 test images: dense 0.837, the compact net from scratch 0.790, L1
cut after 3 epochs + 2 epochs 0.777; clustering from scratch (``warmup_epochs=1``)
with ``pull`` 0.005 / 0.02 / 0.1 / 0.3 / 1.0: 0.737 / 0.785 / 0.817 / 0.820 / 0.807
(0.816 with ``merge_fraction=0``); without the anti-blocking branch 0.791 at
``pull=0.02`` and 0.824 at ``pull=0.1``: no benefit from the branch here (single-seed
noise is about 0.01); 3 epochs of plain training and 2 of clustering: 0.702 at
``pull=0.02``, 0.801 at ``pull=0.1``. So the tie works best strong (members close to
their mean within a few steps; hence the default 0.1): a weak pull leaves the merge
to the final ramp, a large change of the function late in the run. Every strip was
exact (largest difference 2.4e-6).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tf_filterprune.graph import registry
from tf_filterprune.methods.base import (
    CONSUMER,
    NORM,
    PRODUCER,
    ChannelPlan,
    FilterPruningWrapper,
    PrunedGroup,
    PruningContext,
    PruningMethod,
)
from tf_filterprune.surgery.branches import center_tap_conv, fold_batchnorm, pad_kernel

REFINE_ITERATIONS = 20
"""Lloyd iterations after Ward's clustering (it stops earlier when stable)."""

BRANCH_MOMENTUM, BRANCH_EPSILON = 0.99, 1e-3
"""The anti-blocking branch's normalization: moving-average momentum and epsilon (as
keras BatchNormalization's defaults)."""

BRANCH_STAT_SAMPLES = 16
"""Examples of each (per-replica) batch the branch's variance is measured on: the
statistics cost 16/128 of a 1x1 conv per step in the benchmark, not a whole one."""

CONVERGED_TOLERANCE = 1e-6
"""Largest member-to-centre weight difference (relative to the weights' scale) of a
cluster counted as converged."""


# --------------------------------------------------------------------------- math


def _float64(value: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(value), dtype=np.float64)


def channel_embedding(
    kernel: Any, bias: Any | None = None, batchnorm: Mapping[str, Any] | None = None
) -> np.ndarray:
    """Per-channel rows whose squared distances estimate the output distance.

    Args:
        kernel: the conv kernel, output channels last (``(kh, kw, cin, C)``).
        bias: the conv bias ``(C,)`` or None (used only without BN).
        batchnorm: the BatchNormalization right after the conv, as a mapping with
            ``gamma``, ``beta`` (None for ``scale`` / ``center`` False),
            ``moving_variance`` and ``epsilon``; or None.

    Returns:
        ``(C, d)``: with BN ``[beta_i, a_i w_i / ||w_i||]`` with
        ``a_i = gamma_i sqrt(var_i / (var_i + eps))``; without, ``[b_i, w_i]``.

    >>> e = channel_embedding(np.array([[1.0, 2.0, -1.0]]), np.array([0.0, 1.0, 0.0]))
    >>> e.tolist()
    [[0.0, 1.0], [1.0, 2.0], [0.0, -1.0]]
    """
    kernel = _float64(kernel)
    channels = kernel.shape[-1]
    w = kernel.reshape(-1, channels).T  # (C, fan_in)
    if batchnorm is None:
        b = np.zeros(channels) if bias is None else _float64(bias).reshape(channels)
        return np.concatenate([b[:, None], w], axis=1)
    gamma = batchnorm.get("gamma")
    gamma = np.ones(channels) if gamma is None else _float64(gamma)
    beta = batchnorm.get("beta")
    beta = np.zeros(channels) if beta is None else _float64(beta)
    var = np.maximum(_float64(batchnorm["moving_variance"]), 0.0)
    scale = gamma * np.sqrt(var / (var + float(batchnorm.get("epsilon", 1e-3))))
    norms = np.linalg.norm(w, axis=1, keepdims=True)
    unit = np.divide(w, norms, out=np.zeros_like(w), where=norms > 0)
    return np.concatenate([beta[:, None], scale[:, None] * unit], axis=1)


def squared_distances(embedding: np.ndarray) -> np.ndarray:
    """``(C, C)`` squared Euclidean distances between the rows (>= 0, zero diagonal).

    >>> squared_distances(np.array([[0.0, 0.0], [3.0, 4.0]])).tolist()
    [[0.0, 25.0], [25.0, 0.0]]
    """
    e = np.asarray(embedding, dtype=np.float64)
    sq = np.sum(e * e, axis=1)
    d = sq[:, None] + sq[None, :] - 2.0 * (e @ e.T)
    d = np.maximum(d, 0.0)
    np.fill_diagonal(d, 0.0)
    return d


def output_distance(
    kernel: Any, bias: Any | None = None, batchnorm: Mapping[str, Any] | None = None
) -> np.ndarray:
    """The estimate of ``E||z_i - z_j||^2`` for every pair of the layer's channels.

    With BN: ``(beta_i - beta_j)^2 + a_i^2 + a_j^2 - 2 a_i a_j cos(w_i, w_j)``, see
    :func:`channel_embedding`; without: ``||w_i - w_j||^2 + (b_i - b_j)^2``.

    >>> bn = {"gamma": [1.0, 2.0], "beta": [0.0, 1.0], "moving_variance": [1.0, 1.0],
    ...       "epsilon": 0.0}
    >>> output_distance(np.array([[1.0, 1.0]]), batchnorm=bn).round(6).tolist()
    [[0.0, 2.0], [2.0, 0.0]]
    """
    return squared_distances(channel_embedding(kernel, bias, batchnorm))


def ward_clusters(embedding: np.ndarray, k: int) -> np.ndarray:
    """Ward agglomerative clustering of the rows into ``k`` clusters (deterministic).

    Lance-Williams updates of the Ward distances, each row's nearest cluster
    cached; ties go to the lowest indices. ``O(C^2)`` memory, about ``O(C^2)`` time
    per merge in the worst case.

    Returns:
        ``(C,)`` labels in ``[0, k)``, numbered by each cluster's lowest member.

    >>> ward_clusters(np.array([[0.0], [10.0], [0.1], [10.2], [5.0]]), 3).tolist()
    [0, 1, 0, 1, 2]
    """
    e = np.asarray(embedding, dtype=np.float64)
    n = e.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}.")
    d = 0.5 * squared_distances(e)  # Ward cost of merging two singletons
    np.fill_diagonal(d, np.inf)
    sizes = np.ones(n)
    active = np.ones(n, dtype=bool)
    parent = np.arange(n)
    nearest = np.argmin(d, axis=1)
    nearest_d = d[np.arange(n), nearest]
    for _ in range(n - k):
        candidates = np.where(active, nearest_d, np.inf)
        i = int(np.argmin(candidates))
        j = int(nearest[i])
        i, j = min(i, j), max(i, j)
        dij = d[i, j]
        ni, nj = sizes[i], sizes[j]
        nk = sizes
        merged = ((nk + ni) * d[i] + (nk + nj) * d[j] - nk * dij) / (nk + ni + nj)
        merged[~active] = np.inf
        merged[i] = np.inf
        merged[j] = np.inf
        d[i, :] = merged
        d[:, i] = merged
        d[j, :] = np.inf
        d[:, j] = np.inf
        sizes[i] = ni + nj
        active[j] = False
        parent[parent == j] = i
        # rows whose nearest cluster was i or j (and row i) look again; others keep
        # theirs (Ward's merged distance is never below the smaller of the two)
        stale = active & ((nearest == i) | (nearest == j))
        stale[i] = True
        for r in np.flatnonzero(stale):
            nearest[r] = int(np.argmin(d[r]))
            nearest_d[r] = d[r, nearest[r]]
        closer = active & (merged < nearest_d)
        nearest[closer] = i
        nearest_d[closer] = merged[closer]
    roots = np.unique(parent)  # sorted: numbered by the lowest member
    return np.searchsorted(roots, parent).astype(np.int64)


def kmeans_refine(
    embedding: np.ndarray, labels: np.ndarray, k: int, iterations: int = REFINE_ITERATIONS
) -> np.ndarray:
    """Lloyd iterations from ``labels``; stops when stable or a cluster would empty.

    >>> kmeans_refine(np.array([[0.0], [1.0], [4.0], [5.0]]), np.array([0, 0, 0, 1]), 2).tolist()
    [0, 0, 1, 1]
    """
    e = np.asarray(embedding, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64).copy()
    for _ in range(int(iterations)):
        centres = cluster_centres(e, labels, k)
        cost = np.sum(e * e, 1)[:, None] + np.sum(centres**2, 1)[None] - 2 * e @ centres.T
        own = cost[np.arange(len(labels)), labels]
        best = np.argmin(cost, axis=1)
        # move only on a strict improvement (round-off must not flip ties)
        new = np.where(cost[np.arange(len(labels)), best] < own - 1e-12 * (1 + np.abs(own)),
                       best, labels)  # fmt: skip
        if np.array_equal(new, labels) or len(np.unique(new)) < k:
            break
        labels = new
    return labels


def cluster_centres(values: Any, labels: Any, k: int) -> np.ndarray:
    """The mean of each cluster's rows: ``(k, ...)`` from ``values`` ``(C, ...)``.

    >>> cluster_centres(np.array([[1.0], [3.0], [10.0]]), np.array([0, 0, 1]), 2).tolist()
    [[2.0], [10.0]]
    """
    v = np.asarray(values, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    flat = v.reshape(v.shape[0], -1)
    sums = np.zeros((k, flat.shape[1]))
    np.add.at(sums, labels, flat)
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    return (sums / np.maximum(counts, 1.0)[:, None]).reshape((k, *v.shape[1:]))


def representatives(embedding: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Each cluster's member nearest to the cluster's mean (lowest index on ties).

    >>> representatives(np.array([[0.0], [1.0], [3.0], [9.0]]), np.array([0, 0, 0, 1]), 2).tolist()
    [1, 3]
    """
    e = np.asarray(embedding, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    centres = cluster_centres(e, labels, k)
    dist = np.sum((e - centres[labels]) ** 2, axis=1)
    reps = np.zeros(k, dtype=np.int64)
    for c in range(k):
        members = np.flatnonzero(labels == c)
        reps[c] = members[np.argmin(dist[members])]  # argmin: the first of equals
    return reps


def cluster_channels(
    embedding: np.ndarray, k: int, iterations: int = REFINE_ITERATIONS
) -> tuple[np.ndarray, np.ndarray]:
    """Clusters the channels: Ward, then Lloyd refinement, then representatives.

    Returns:
        ``(assignment, representatives)``: ``(C,)`` cluster of each channel and the
        ``(k,)`` representatives, ascending; cluster ``i``'s representative is
        ``representatives[i]``.

    >>> emb = np.array([[0.0], [5.0], [0.1], [5.1], [0.2]])
    >>> [a.tolist() for a in cluster_channels(emb, 2)]
    [[1, 0, 1, 0, 1], [1, 2]]
    """
    labels = kmeans_refine(embedding, ward_clusters(embedding, k), k, iterations)
    reps = representatives(embedding, labels, k)
    order = np.argsort(reps, kind="stable")  # cluster i <-> i-th smallest representative
    rank = np.empty(k, dtype=np.int64)
    rank[order] = np.arange(k)
    return rank[labels], reps[order]


def consumer_map(assignment: Any, k: int) -> np.ndarray:
    """The ``(k, C)`` consumer map summing each cluster's members onto its slot.

    >>> consumer_map([0, 1, 0, 1, 0], 2).tolist()
    [[1.0, 0.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0, 0.0]]
    """
    assignment = np.asarray(assignment, dtype=np.int64)
    matrix = np.zeros((k, assignment.size))
    matrix[assignment, np.arange(assignment.size)] = 1.0
    return matrix


def max_member_distance(embedding: np.ndarray, assignment: Any, reps: Any) -> float:
    """The largest estimated output distance (RMS) of a member to its representative.

    >>> max_member_distance(np.array([[0.0], [3.0], [4.0]]), [0, 1, 1], [0, 1])
    1.0
    """
    e = np.asarray(embedding, dtype=np.float64)
    reps = np.asarray(reps, dtype=np.int64)
    rep_of = reps[np.asarray(assignment, dtype=np.int64)]
    return float(np.sqrt(np.max(np.sum((e - e[rep_of]) ** 2, axis=1)))) if e.size else 0.0


def pull_matrix(assignment: Any, k: int, fraction: Any, dtype=tf.float32) -> tf.Tensor:
    """``(1 - f) I + f P``, ``P[c, d] = 1 / n`` when channels ``c, d`` share a cluster of ``n``.

    Right-multiplying a weight's channel axis by it moves every channel a fraction ``f``
    toward its cluster's mean (the matrix is symmetric).

    >>> pull_matrix([0, 0, 1], 2, 0.5).numpy().tolist()
    [[0.75, 0.25, 0.0], [0.25, 0.75, 0.0], [0.0, 0.0, 1.0]]
    """
    onehot = tf.one_hot(tf.cast(tf.convert_to_tensor(assignment), tf.int32), k, dtype=dtype)
    counts = tf.reduce_sum(onehot, axis=0)
    means = tf.matmul(onehot / tf.maximum(counts, 1.0), onehot, transpose_b=True)
    if tf.is_tensor(fraction):
        fraction = tf.cast(fraction, dtype)
    else:
        fraction = tf.constant(float(fraction), dtype)
    size = tf.shape(onehot)[0]
    return (1.0 - fraction) * tf.eye(size, dtype=dtype) + fraction * means


def apply_pull(value: Any, matrix: Any, axis: int = -1, positions: Any | None = None) -> tf.Tensor:
    """Mixes the channel ``axis`` of ``value`` by :func:`pull_matrix`'s ``matrix``.

    Args:
        value: a weight; its ``axis`` follows the channels.
        matrix: ``(C, C)``, symmetric.
        axis: the channel axis of ``value``.
        positions: ``(C, r)`` indices along ``axis`` of each channel (None: channel
            ``c`` is index ``c``); the other indices are left as they are.
    """
    value = tf.convert_to_tensor(value)
    matrix = tf.cast(matrix, value.dtype)
    rank = value.shape.rank
    axis = axis % rank
    if positions is None and axis == rank - 1:
        shape = tf.shape(value)
        flat = tf.reshape(value, [-1, shape[-1]])
        return tf.reshape(tf.matmul(flat, matrix), shape)
    perm = [axis] + [i for i in range(rank) if i != axis]
    moved = tf.transpose(value, perm) if axis else value
    channels = int(matrix.shape[0])
    if positions is None:
        shape = tf.shape(moved)
        out = tf.reshape(tf.matmul(matrix, tf.reshape(moved, [channels, -1])), shape)
    else:
        index = tf.constant(np.asarray(positions, dtype=np.int32).reshape(-1))
        selected = tf.gather(moved, index)
        pulled = tf.matmul(matrix, tf.reshape(selected, [channels, -1]))
        out = tf.tensor_scatter_nd_update(
            moved, index[:, None], tf.reshape(pulled, tf.shape(selected))
        )
    return tf.transpose(out, np.argsort(perm).tolist()) if axis else out


def pull_toward_centres(
    value: Any,
    assignment: Any,
    k: int,
    fraction: Any,
    axis: int = -1,
    positions: Any | None = None,
) -> tf.Tensor:
    """Moves every channel's slice of ``value`` a ``fraction`` toward its cluster's mean.

    ``(1 - f) v_c + f mean_{cluster(c)}``: the mean at ``f = 1``. The channels are
    ``axis`` (or the ``(C, r)`` ``positions`` along it, r copies per channel).

    >>> pull_toward_centres([[1.0, 3.0, 7.0]], [0, 0, 1], 2, 0.5).numpy().tolist()
    [[1.5, 2.5, 7.0]]
    """
    value = tf.convert_to_tensor(value)
    if not value.dtype.is_floating:
        value = tf.cast(value, tf.float32)
    matrix = pull_matrix(assignment, k, fraction, value.dtype)
    if positions is not None:
        positions = np.asarray(positions).reshape(int(matrix.shape[0]), -1)
        out = value
        for column in range(positions.shape[1]):  # each copy of the channels apart
            out = apply_pull(out, matrix, axis, positions[:, column : column + 1])
        return out
    return apply_pull(value, matrix, axis)


def pull_at(run_fraction: float, pull: float, merge_fraction: float) -> float:
    """The step's pull: ``pull``, then rising linearly to 1 over the last ``merge_fraction``.

    >>> pull_at(0.5, 0.02, 0.2), round(pull_at(0.9, 0.02, 0.2), 6), pull_at(1.0, 0.02, 0.2)
    (0.02, 0.51, 1.0)
    """
    f = min(1.0, max(0.0, float(run_fraction)))
    if f >= 1.0:
        return 1.0
    ramp = 1.0 - (1.0 - f) / float(merge_fraction) if merge_fraction > 0 else 0.0
    return float(pull) + (1.0 - float(pull)) * max(0.0, ramp)


# --------------------------------------------------------------------------- method


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _int_at_least(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


@dataclass
class _Unit:
    """The channels clustered together: one group's producers and every weight pulled."""

    group: PrunedGroup
    wrappers: list[FilterPruningWrapper]
    norms: list[keras.layers.BatchNormalization | None]
    pulled: list[tuple[Any, int, np.ndarray | None]] = field(default_factory=list)

    @property
    def k(self) -> int:
        return self.group.target


@keras.saving.register_keras_serializable(package="tf_filterprune")
class FilterClustering(PruningMethod):
    """Filter clustering: merge the filters whose outputs are alike, at full width.

    Args:
        keep_ratio: fraction of each layer's filters kept (``k`` clusters per layer;
            per-layer ratios and MACs targets are given to ``prune_filters``).
        period_epochs: re-cluster every this many epochs (int >= 1).
        pull: fraction of the way to its cluster's mean every member moves after
            each optimizer step, in [0, 1] (per step: with many steps an epoch a
            smaller value ties as strongly); 1 ties the members from the first
            clustering on.
        anti_blocking: give every narrowed conv a parallel 1x1 conv + BN branch
            while training, folded into the conv at strip.
        merge_fraction: the last fraction of the run, in [0, 1), in which the
            clusters are frozen and the pull rises linearly to 1 (the members are
            identical at the end). 0: constant pull, members set to their cluster's
            mean after the last epoch.
        warmup_epochs: epochs trained before the first clustering (int >= 0); 0
            for a pretrained model, a few when training from scratch.
        epochs: the run's length in epochs for the schedule (None: the ``epochs``
            of each ``fit`` call); set it when a run spans several ``fit`` calls.

    Example:

    >>> import keras, numpy as np, tf_filterprune as tffp
    >>> from tf_filterprune.methods.clustering import FilterClustering
    >>> wrapped = tffp.prune_filters(tffp.models.fashion_cnn(), FilterClustering(0.5))
    >>> wrapped.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> x = np.random.default_rng(0).normal(size=(8, 28, 28, 1)).astype("float32")
    >>> _ = wrapped.fit(x, np.zeros((8,), "int32"), epochs=2, verbose=0,
    ...                 callbacks=[tffp.callbacks.UpdateFilterPruning()])
    >>> notes = []
    >>> compact, diff = tffp.strip_filter_pruning(wrapped, verify_data=x, notes=notes)
    >>> compact.get_layer("conv3").filters, diff < 1e-4
    (32, True)
    """

    takes_coupled_groups = True

    def __init__(
        self,
        keep_ratio: float = 0.5,
        period_epochs: int = 1,
        pull: float = 0.1,
        anti_blocking: bool = True,
        merge_fraction: float = 0.2,
        warmup_epochs: int = 0,
        epochs: float | None = None,
    ):
        super().__init__(keep_ratio)
        name = type(self).__name__
        if not _int_at_least(period_epochs, 1):
            raise ValueError(f"{name}: period_epochs must be an int >= 1, got {period_epochs!r}.")
        if not _number(pull) or not (0.0 <= pull <= 1.0):
            raise ValueError(f"{name}: pull must be in [0, 1], got {pull!r}.")
        if not isinstance(anti_blocking, bool):
            raise ValueError(f"{name}: anti_blocking must be True or False, got {anti_blocking!r}.")
        if not _number(merge_fraction) or not (0.0 <= merge_fraction < 1.0):
            raise ValueError(f"{name}: merge_fraction must be in [0, 1), got {merge_fraction!r}.")
        if not _int_at_least(warmup_epochs, 0):
            raise ValueError(f"{name}: warmup_epochs must be an int >= 0, got {warmup_epochs!r}.")
        if epochs is not None and (not _number(epochs) or not epochs > 0):
            raise ValueError(f"{name}: epochs must be None or > 0, got {epochs!r}.")
        self.period_epochs, self.pull = int(period_epochs), float(pull)
        self.anti_blocking, self.merge_fraction = bool(anti_blocking), float(merge_fraction)
        self.warmup_epochs = int(warmup_epochs)
        self.epochs = None if epochs is None else float(epochs)

    # ---------------------------------------------------------------- state
    def create_state(self, wrapper: FilterPruningWrapper) -> None:
        size, keep = wrapper.out_channels, wrapper.kept_channels

        def state(name, shape):
            variable = wrapper.add_weight(
                name=name, shape=shape, dtype="int32", initializer="zeros", trainable=False
            )
            variable.assign(np.full(shape, -1, dtype=np.int32))  # -1: not clustered yet
            return variable

        wrapper.cluster_assignment = state("cluster_assignment", (size,))
        wrapper.cluster_representatives = state("cluster_representatives", (keep,))
        wrapper.cluster_epoch = state("cluster_epoch", ())
        wrapper.branch_kernel = wrapper.branch_gamma = wrapper.branch_variance = None
        if self.anti_blocking and keep < size:
            self._create_branch(wrapper)

    def _create_branch(self, wrapper: FilterPruningWrapper) -> None:
        conv = wrapper.layer
        kernel_size = tuple(int(k) for k in conv.kernel_size)
        if any(k % 2 == 0 for k in kernel_size) or conv.data_format != "channels_last":
            raise ValueError(
                f"FilterClustering(anti_blocking=True): the branch of '{wrapper.name}' needs "
                f"an odd kernel size and channels_last data (got kernel_size={kernel_size}, "
                f"data_format='{conv.data_format}'); pass anti_blocking=False or leave the "
                "layer out (ignored_layers)."
            )
        cin, size = int(conv.kernel.shape[-2]), wrapper.out_channels
        wrapper.branch_kernel = wrapper.add_weight(
            name="branch_kernel",
            shape=(1, 1, cin, size),
            initializer="glorot_uniform",
            trainable=True,
        )
        wrapper.branch_gamma = wrapper.add_weight(
            name="branch_gamma", shape=(size,), initializer="zeros", trainable=True,
            autocast=False,
        )  # fmt: skip
        wrapper.branch_variance = wrapper.add_weight(
            name="branch_moving_variance", shape=(size,), initializer="ones", trainable=False,
            autocast=False, aggregation="mean",  # replicas average their batch statistics
        )  # fmt: skip

    # --------------------------------------------------------------- forward
    def call(self, wrapper: FilterPruningWrapper, inputs: Any, training: bool | None) -> Any:
        conv = wrapper.layer
        kernel, bias = wrapper.raw_weights(training)
        if wrapper.branch_kernel is not None:
            if training:
                _update_branch_variance(wrapper, inputs)
            kernel = kernel + keras.ops.cast(_folded_branch_kernel(wrapper), kernel.dtype)
        outputs = conv.convolution_op(inputs, kernel)
        if bias is not None:
            outputs = outputs + keras.ops.cast(bias, outputs.dtype)
        if conv.activation is not None:
            outputs = conv.activation(outputs)
        return outputs

    def producer_weights(self, wrapper: FilterPruningWrapper) -> list[np.ndarray]:
        """The conv's kernel and bias with the anti-blocking branch folded in (exact)."""
        kernel, bias = _effective_weights(wrapper)
        dtype = keras.ops.convert_to_numpy(wrapper.layer.kernel).dtype
        values = [kernel.astype(dtype)]
        if bias is not None:
            values.append(bias.astype(dtype))
        return values

    # ----------------------------------------------------------------- hooks
    def _run_epochs(self, context: PruningContext) -> float | None:
        progress = context.progress
        return self.epochs or (progress.total_epochs if progress is not None else None)

    def _run_fraction(self, context: PruningContext, at_boundary: bool = False) -> float | None:
        progress, total = context.progress, self._run_epochs(context)
        if progress is None or not total:
            return None
        fraction = float(progress.epoch) if at_boundary else progress.epoch_fraction
        if fraction is None:  # inside an epoch of unknown length: its start
            fraction = float(progress.epoch)
        return min(1.0, fraction / total)

    def _units(self, context: PruningContext) -> list[_Unit]:
        units = context.cache.get("clustering_units")
        if units is None:
            layers = _layers_by_variable(context.model)
            units = context.cache["clustering_units"] = [
                _unit(group, layers) for group in context.groups if group.target < group.size
            ]
        return units

    def validate(self, context: PruningContext) -> None:
        """Refuses groups whose channels reach a per-channel (depthwise) kernel: a merge
        needs every consumer to sum its input slices."""
        layers = _layers_by_variable(context.model)
        for group in context.groups:
            if group.target >= group.size:
                continue
            for member in group.members:
                layer = layers.get(id(member.variable))
                if member.role == CONSUMER and _per_channel_consumer(layer):
                    raise ValueError(
                        f"FilterClustering merges the channels of '{group.name}' by summing "
                        f"their slices in every consumer, but '{layer.name}' "
                        f"({type(layer).__name__}) applies a per-channel kernel to them; leave "
                        f"'{group.name}' whole (ignored_layers) or prune it with another method."
                    )

    def on_train_begin(self, context: PruningContext) -> None:
        self.validate(context)
        units = self._units(context)
        context.cache["clustering_ready"] = bool(units) and all(_clustered(u) for u in units)

    def on_epoch_begin(self, context: PruningContext) -> None:
        epoch = context.progress.epoch
        if epoch < self.warmup_epochs:
            return
        fraction = self._run_fraction(context, at_boundary=True)
        frozen = self.merge_fraction > 0 and fraction is not None
        frozen = frozen and fraction >= 1.0 - self.merge_fraction - 1e-9
        due = (epoch - self.warmup_epochs) % self.period_epochs == 0
        for unit in self._units(context):
            if not _clustered(unit) or (due and not frozen):
                assignment, reps = cluster_channels(_embedding(unit), unit.k)
                for wrapper in unit.wrappers:
                    wrapper.cluster_assignment.assign(assignment.astype(np.int32))
                    wrapper.cluster_representatives.assign(reps.astype(np.int32))
                    wrapper.cluster_epoch.assign(epoch)
        context.cache["clustering_ready"] = bool(self._units(context))

    def on_step_end(self, context: PruningContext) -> None:
        if not context.cache.get("clustering_ready") or context.progress.epoch < self.warmup_epochs:
            return
        fraction = self._run_fraction(context)
        pull = self.pull if fraction is None else pull_at(fraction, self.pull, self.merge_fraction)
        pull = 1.0 - (1.0 - pull) ** max(1, context.progress.steps_run)
        if pull > 0:
            self._pull(context, pull)

    def on_epoch_end(self, context: PruningContext) -> None:
        total = self._run_epochs(context)
        last = total is not None and context.progress.epoch + 1 >= total - 1e-9
        if last and context.cache.get("clustering_ready"):
            self._pull(context, 1.0)  # the members are their cluster's mean: an exact merge

    def _pull(self, context: PruningContext, fraction: float) -> None:
        step = context.cache.get("clustering_pull")
        if step is None:
            step = context.cache["clustering_pull"] = _PullStep(self._units(context))
        step(fraction)

    # ----------------------------------------------------------------- strip
    def plan(self, group: PrunedGroup, context: PruningContext) -> ChannelPlan:
        k, size = group.target, group.size
        if k >= size:
            return ChannelPlan(np.arange(size))
        unit = _unit(group, _layers_by_variable(context.model))
        embedding = _embedding(unit)
        notes = []
        if _clustered(unit):
            assignment = keras.ops.convert_to_numpy(group.leader.cluster_assignment)
            reps = keras.ops.convert_to_numpy(group.leader.cluster_representatives)
        else:
            assignment, reps = cluster_channels(embedding, k)
            notes.append("never clustered in training: clustered now from the current weights")
        assignment, reps = assignment.astype(np.int64), reps.astype(np.int64)
        spread = _spread(unit, assignment, k)
        if spread > CONVERGED_TOLERANCE:
            distance = max_member_distance(embedding, assignment, reps)
            notes.append(
                f"clusters not converged: a member's weights differ from its cluster's mean "
                f"by up to {spread:.3g} (relative), its estimated output distance to the "
                f"representative is up to {distance:.3g} (RMS); the merge is not exact: pass "
                "verify_data to measure it"
            )
        note = None
        if notes:
            note = f"FilterClustering '{group.name}': " + "; ".join(notes)
            logging.info(note)
        return ChannelPlan(reps, consumer_map=consumer_map(assignment, k), note=note)

    def summaries(self, wrapper: FilterPruningWrapper) -> dict[str, Any]:
        assignment = keras.ops.convert_to_numpy(wrapper.cluster_assignment)
        out = {"kept_width": wrapper.kept_channels}
        if assignment.size and assignment.min() >= 0:
            out["cluster_sizes"] = np.bincount(assignment, minlength=wrapper.kept_channels)
            out["clustered_epoch"] = int(keras.ops.convert_to_numpy(wrapper.cluster_epoch))
        return out

    def get_config(self) -> dict:
        return {
            "keep_ratio": self.keep_ratio,
            "period_epochs": self.period_epochs,
            "pull": self.pull,
            "anti_blocking": self.anti_blocking,
            "merge_fraction": self.merge_fraction,
            "warmup_epochs": self.warmup_epochs,
            "epochs": self.epochs,
        }


# ---------------------------------------------------------------------- plumbing


def _folded_branch_kernel(wrapper: FilterPruningWrapper) -> tf.Tensor:
    """The branch as a kernel of the main conv's size: ``pad(K1x1 * gamma / sqrt(var + eps))``
    (float32), with the moving variance; added to the main kernel, one conv computes both."""
    conv = wrapper.layer
    scale = tf.convert_to_tensor(wrapper.branch_gamma.value) * tf.math.rsqrt(
        tf.convert_to_tensor(wrapper.branch_variance.value) + BRANCH_EPSILON
    )
    kernel = tf.cast(tf.convert_to_tensor(wrapper.branch_kernel.value), tf.float32) * scale
    kh, kw = (int(k) for k in conv.kernel_size)
    pads = [[(kh - 1) // 2] * 2, [(kw - 1) // 2] * 2, [0, 0], [0, 0]]
    return tf.pad(kernel, pads)


def _update_branch_variance(wrapper: FilterPruningWrapper, inputs: Any) -> None:
    """Moves the branch's moving variance toward the variance of its 1x1 conv's outputs
    on the first ``BRANCH_STAT_SAMPLES`` examples of the batch (no gradient)."""
    conv = wrapper.layer
    sample = tf.stop_gradient(inputs[:BRANCH_STAT_SAMPLES])
    u = center_tap_conv(
        sample,
        tf.stop_gradient(keras.ops.cast(wrapper.branch_kernel, sample.dtype)),
        kernel_size=conv.kernel_size, strides=conv.strides,
        padding=conv.padding, dilation_rate=conv.dilation_rate,
    )  # fmt: skip
    variance = tf.math.reduce_variance(tf.cast(u, tf.float32), axis=[0, 1, 2])
    moving = wrapper.branch_variance
    moving.assign(moving * BRANCH_MOMENTUM + variance * (1 - BRANCH_MOMENTUM))


def _effective_weights(wrapper: FilterPruningWrapper) -> tuple[np.ndarray, np.ndarray | None]:
    """Kernel and bias (float64) of the plain conv computing the wrapper in inference."""
    conv = wrapper.layer
    kernel = _float64(conv.kernel)
    bias = _float64(conv.bias) if conv.use_bias else None
    if wrapper.branch_kernel is None:
        return kernel, bias
    channels = wrapper.out_channels
    k1, _ = fold_batchnorm(  # a BN without shift: the folded bias is zero
        _float64(wrapper.branch_kernel),
        np.zeros(channels),
        _float64(wrapper.branch_gamma),
        np.zeros(channels),
        np.zeros(channels),
        _float64(wrapper.branch_variance),
        BRANCH_EPSILON,
    )
    kernel = kernel + pad_kernel(np.asarray(k1, np.float64), tuple(conv.kernel_size))
    return kernel, bias


def _following_norm(wrapper: FilterPruningWrapper, group: PrunedGroup):
    """The BatchNormalization that alone reads the wrapper's output, if its weights follow
    the group's channels (None otherwise: the estimate without BN is used)."""
    operations = {id(node.operation): node.operation for node in wrapper._outbound_nodes}
    if len(operations) != 1:
        return None
    (layer,) = operations.values()
    if not isinstance(layer, keras.layers.BatchNormalization):
        return None
    norm_variables = {id(m.variable) for m in group.members if m.role == NORM}
    if id(layer.moving_variance) not in norm_variables or layer.axis not in (-1, 3):
        return None
    return layer


def _norm_stats(layer: keras.layers.BatchNormalization) -> dict[str, Any]:
    return {
        "gamma": layer.gamma if layer.scale else None,
        "beta": layer.beta if layer.center else None,
        "moving_mean": layer.moving_mean,
        "moving_variance": layer.moving_variance,
        "epsilon": layer.epsilon,
    }


_PER_CHANNEL = (registry.DepthwiseRule, registry.SeparableRule)


def _per_channel_consumer(layer: Any) -> bool:
    """A depthwise or separable conv, or a ``Conv2D(groups>1)``: no sum over all its inputs."""
    rule = registry.rule_for(layer)
    if isinstance(rule, _PER_CHANNEL):
        return True
    return isinstance(rule, registry.ConvRule) and registry.conv_grouping(layer) != "plain"


def _layers_by_variable(model: keras.Model) -> dict[int, keras.Layer]:
    """``id(variable)`` -> the innermost layer holding it (a wrapper's conv, not the wrapper)."""
    found = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        for variable in layer.weights:
            found[id(variable)] = layer  # children come after their parents: innermost wins
    return found


def _pulled_member(member, layers: dict[int, keras.Layer]) -> bool:
    """Whether a member's slices must be equal within a cluster for an exact merge: the
    producers' and normalizations' weights, and any other per-channel weight between the
    producers and the consumers (PReLU, a layer scale); not the consumers' mixing kernels."""
    if member.role in (PRODUCER, NORM):
        return True
    rule = registry.rule_for(layers.get(id(member.variable)))
    return rule is not None and not isinstance(rule, (registry.ProducerRule, *_PER_CHANNEL))


def _unit(group: PrunedGroup, layers: dict[int, keras.Layer]) -> _Unit:
    unit = _Unit(group, list(group.wrappers), [_following_norm(w, group) for w in group.wrappers])
    seen = set()

    def add(variable, axis, positions):
        if id(variable) in seen:
            return
        seen.add(id(variable))
        rank = len(variable.shape)
        axis = axis % rank
        positions = np.asarray(positions, dtype=np.int64).reshape(group.size, -1)
        trivial = positions.shape[1] == 1 and variable.shape[axis] == group.size
        if trivial and np.array_equal(positions[:, 0], np.arange(group.size)):
            positions = None
        unit.pulled.append((variable, axis, positions))

    for member in group.members:
        if _pulled_member(member, layers):
            add(member.variable, member.axis, member.positions)
    identity = np.arange(group.size)[:, None]
    for wrapper in group.wrappers:
        if wrapper.branch_kernel is not None:
            add(wrapper.branch_kernel, 3, identity)
            add(wrapper.branch_gamma, 0, identity)
            add(wrapper.branch_variance, 0, identity)
    return unit


def _clustered(unit: _Unit) -> bool:
    return int(keras.ops.convert_to_numpy(unit.wrappers[0].cluster_epoch)) >= 0


def _embedding(unit: _Unit) -> np.ndarray:
    parts = []
    for wrapper, norm in zip(unit.wrappers, unit.norms, strict=True):
        kernel, bias = _effective_weights(wrapper)
        parts.append(channel_embedding(kernel, bias, None if norm is None else _norm_stats(norm)))
    return np.concatenate(parts, axis=1)


def _spread(unit: _Unit, assignment: np.ndarray, k: int) -> float:
    """The largest difference of a member's pulled weights from its cluster's mean,
    relative to each weight's largest magnitude."""
    worst = 0.0
    for variable, axis, positions in unit.pulled:
        value = np.moveaxis(_float64(variable), axis, 0)
        if positions is not None:
            value = value[positions.reshape(-1)]
        flat = value.reshape(unit.group.size, -1)
        centres = cluster_centres(flat, assignment, k)
        scale = max(float(np.max(np.abs(flat))), 1e-12)
        worst = max(worst, float(np.max(np.abs(flat - centres[assignment]))) / scale)
    return worst


class _PullStep:
    """The pull for all units, as one ``tf.function`` (cross-replica: every replica's
    copy gets the same value)."""

    def __init__(self, units: list[_Unit]):
        self.units = units
        self._function = tf.function(self._step, autograph=False)

    def __call__(self, fraction: float) -> None:
        self._function(tf.constant(fraction, tf.float32))

    def _step(self, fraction):
        for unit in self.units:
            matrix = pull_matrix(unit.wrappers[0].cluster_assignment.value, unit.k, fraction)
            for variable, axis, positions in unit.pulled:
                value = tf.cast(variable.value, tf.float32)
                if positions is None:
                    pulled = apply_pull(value, matrix, axis)
                else:
                    for column in range(positions.shape[1]):
                        value = apply_pull(value, matrix, axis, positions[:, column : column + 1])
                    pulled = value
                variable.assign(tf.cast(pulled, variable.dtype))


__all__ = [
    "FilterClustering",
    "channel_embedding",
    "cluster_centres",
    "cluster_channels",
    "consumer_map",
    "kmeans_refine",
    "max_member_distance",
    "output_distance",
    "apply_pull",
    "pull_at",
    "pull_matrix",
    "pull_toward_centres",
    "representatives",
    "squared_distances",
    "ward_clusters",
]
