"""DCFF: dynamic-coded filter fusion (Lin et al., 2021; see ../shared/ALGORITHMS.md §1).

A fused layer keeps all ``C`` filters ``W`` and outputs ``m`` channels. Once per
epoch each filter ``j`` gets a distribution ``P_j = softmax_k(-D_jk * T)`` over
the filters (``D``: Euclidean distances, ``T``: a temperature that grows with
the epochs), its score is ``s_j = sum_k KL(P_j || P_k)``, and the ``m`` most
distinct filters are selected. The forward pass uses the fused kernel
``W_f = W @ P_sel^T``; as T grows, ``P_sel`` becomes one-hot and the training
form and the compact form converge. Stripping keeps ``W_f`` (exact).

The published code takes ``log(P)`` without an epsilon, which is NaN once P
underflows, freezing the selection; here all log-probabilities come from a
log-softmax (see :func:`kl_scores` for why ``log(P + eps)`` is not enough).
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np

from tf_filterprune.methods.base import FilterPruningWrapper, PruningMethod, TrainingProgress
from tf_filterprune.schedules import Schedule, SigmoidTemperature


def filter_distances(kernel: np.ndarray) -> np.ndarray:
    """Euclidean distances between the filters (last axis) of a conv kernel."""
    filters = np.moveaxis(kernel, -1, 0).reshape(kernel.shape[-1], -1).astype(np.float64)
    sq = (filters**2).sum(axis=1)
    return np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * filters @ filters.T, 0.0))


def coding_distributions(
    distances: np.ndarray, temperature: float
) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise ``softmax(-D * T)`` and its log, computed stably."""
    logits = -distances * temperature
    logits = logits - logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return np.exp(log_p), log_p


def kl_scores(probs: np.ndarray, log_probs: np.ndarray) -> np.ndarray:
    """``s_j = sum_k KL(P_j || P_k)`` from exact log-probabilities (finite for any T).

    ``log P_k`` comes from the log-softmax, never ``log(P_k)`` of an underflowed
    ``P_k``: with ``log(P_k + eps)`` every score ties at ``-log(eps)`` once T is
    large, and the selection freezes just as with the published code's NaN.
    With exact logs, ``KL(P_j || P_k) ~ T * D_jk`` at large T, so the most
    distant filters keep being selected as the filters move.
    """
    self_term = (probs * log_probs).sum(axis=1)  # sum_i P_j(i) log P_j(i)
    cross = probs @ log_probs.T  # [j, k] = sum_i P_j(i) log P_k(i)
    return probs.shape[0] * self_term - cross.sum(axis=1)


def select_filters(kernel: np.ndarray, keep: int, temperature: float):
    """The ``keep`` most distinct filters and their coding rows ``P_sel`` (keep x C)."""
    probs, log_probs = coding_distributions(filter_distances(kernel), temperature)
    scores = kl_scores(probs, log_probs)
    selected = np.sort(np.argsort(-scores, kind="stable")[:keep])
    return selected, probs[selected].astype(np.float32)


@keras.saving.register_keras_serializable(package="tf_filterprune")
class DCFF(PruningMethod):
    """Dynamic-coded filter fusion: train a compact network from scratch.

    Args:
        keep_ratio: fraction of each layer's filters kept (the paper's
            ``1 - rate``); per-layer ratios are given to ``prune_filters``.
        temperature: a :class:`~tf_filterprune.schedules.Schedule` of the
            temperature per epoch (default: the paper's sigmoid from 1 to 1e4).
        updates_per_epoch: how often the selection and fusion are recomputed.
            1 (the paper) updates at the start of each epoch; ``n > 1`` also
            updates ``n - 1`` times within it, with the temperature taken at the
            fractional epoch. The paper's schedule keeps T = 1 for all of epoch 0,
            where every kept filter is a near-uniform mix of all filters: that is
            1/300 of the paper's training but a fifth of a 5-epoch run, and
            ``n > 1`` shortens it to ``1/n`` of an epoch (see the README's
            benchmark for both). :meth:`paced` keeps the paper's pace in a short
            run (its 300 updates and temperatures spread over the run).

    Example:

    >>> import keras, numpy as np, tf_filterprune as tffp
    >>> model = tffp.models.fashion_cnn()
    >>> wrapped = tffp.prune_filters(model, tffp.DCFF(keep_ratio=0.5))
    >>> wrapped.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> x, y = np.zeros((8, 28, 28, 1), "float32"), np.zeros((8,), "int32")
    >>> _ = wrapped.fit(x, y, epochs=1, verbose=0,
    ...                 callbacks=[tffp.callbacks.UpdateFilterPruning()])
    >>> tffp.strip_filter_pruning(wrapped).get_layer("conv1").filters
    16
    """

    compact_width = True

    def __init__(
        self,
        keep_ratio: float = 0.5,
        temperature: Schedule | dict | None = None,
        updates_per_epoch: int = 1,
    ):
        super().__init__(keep_ratio)
        if not isinstance(updates_per_epoch, int) or updates_per_epoch < 1:
            raise ValueError(
                f"DCFF: updates_per_epoch must be an int >= 1, got {updates_per_epoch!r}."
            )
        self.updates_per_epoch = updates_per_epoch
        if isinstance(temperature, dict):
            temperature = keras.saving.deserialize_keras_object(temperature)
        self.temperature = temperature or SigmoidTemperature()
        if not isinstance(self.temperature, Schedule):
            raise ValueError(f"temperature must be a Schedule, got {type(temperature).__name__}.")

    @classmethod
    def paced(cls, epochs: int, keep_ratio: float = 0.5, reference_epochs: int = 300) -> DCFF:
        """DCFF for a run of ``epochs``, at the pace of the paper's ``reference_epochs``.

        The paper updates once per epoch of a 300-epoch run, at 300 temperatures.
        This spreads those updates over the run: ``reference_epochs / epochs``
        updates per epoch, each at the temperature of the matching reference epoch
        (``SigmoidTemperature(reference_epochs=...)``), so the low-temperature
        phase keeps its share of training (about 1/300) in a short run.

        Example:

        >>> method = DCFF.paced(epochs=5)
        >>> method.updates_per_epoch, method.temperature.reference_epochs
        (60, 300.0)
        """
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"DCFF.paced: epochs must be an int >= 1, got {epochs!r}.")
        return cls(
            keep_ratio,
            temperature=SigmoidTemperature(reference_epochs=reference_epochs),
            updates_per_epoch=max(1, round(reference_epochs / epochs)),
        )

    def create_state(self, wrapper: FilterPruningWrapper) -> None:
        filters, keep = wrapper.layer.filters, wrapper.out_channels
        wrapper.fusion = wrapper.add_weight(
            name="fusion", shape=(keep, filters), initializer="zeros", trainable=False
        )
        wrapper.fusion.assign(np.eye(keep, filters, dtype=np.float32))
        wrapper.selected = wrapper.add_weight(
            name="selected", shape=(keep,), dtype="int32", initializer="zeros", trainable=False
        )
        wrapper.selected.assign(np.arange(keep, dtype=np.int32))
        wrapper.temperature = wrapper.add_weight(
            name="temperature", shape=(), initializer="ones", trainable=False
        )

    def effective_weights(self, wrapper, kernel, bias):
        fusion = keras.ops.cast(wrapper.fusion, kernel.dtype)
        fused = keras.ops.einsum("hwio,mo->hwim", kernel, fusion)
        if bias is not None:
            bias = keras.ops.einsum("o,mo->m", bias, keras.ops.cast(fusion, bias.dtype))
        return fused, bias

    def layer_epoch_begin(self, wrapper, progress: TrainingProgress) -> None:
        self._update(wrapper, progress.epoch, progress.total_epochs)

    def has_step_updates(self) -> bool:
        return self.updates_per_epoch > 1

    def layer_step_end(self, wrapper: FilterPruningWrapper, progress: TrainingProgress) -> None:
        """Updates ``updates_per_epoch - 1`` times within each epoch (the epoch start is the other)."""
        steps = progress.steps_per_epoch
        if not steps:
            raise ValueError(
                f"DCFF(updates_per_epoch={self.updates_per_epoch}) on '{wrapper.name}' needs the "
                "number of steps per epoch: pass steps_per_epoch to model.fit (or use a dataset "
                "of known cardinality), or use updates_per_epoch=1."
            )
        done = progress.batch + 1
        if done < steps and _crosses_update(
            done, steps, self.updates_per_epoch, progress.steps_run
        ):
            self._update(wrapper, progress.epoch_fraction, progress.total_epochs)

    def _update(self, wrapper: FilterPruningWrapper, epoch: float, total_epochs: int | None):
        """Re-selects the filters and recomputes the fusion at (fractional) ``epoch``."""
        temperature = self.temperature(epoch, total_epochs)
        kernel = keras.ops.convert_to_numpy(wrapper.layer.kernel)
        selected, p_sel = select_filters(kernel, wrapper.out_channels, temperature)
        wrapper.fusion.assign(p_sel)
        wrapper.selected.assign(selected.astype(np.int32))
        wrapper.temperature.assign(temperature)

    def summaries(self, wrapper) -> dict[str, Any]:
        return {
            "kept_width": wrapper.out_channels,
            "temperature": float(keras.ops.convert_to_numpy(wrapper.temperature)),
            "fusion_max": keras.ops.convert_to_numpy(keras.ops.max(wrapper.fusion, axis=1)),
        }

    def get_config(self) -> dict:
        return {
            "keep_ratio": self.keep_ratio,
            "temperature": keras.saving.serialize_keras_object(self.temperature),
            "updates_per_epoch": self.updates_per_epoch,
        }


def _crosses_update(done: int, steps: int, updates: int, run: int = 1) -> bool:
    """Whether the batches ``done - run + 1 .. done`` (1-based) of ``steps`` reach one of
    the ``updates`` evenly spaced points of the epoch (``i * steps / updates``)."""
    return math.floor(done * updates / steps) > math.floor((done - run) * updates / steps)
