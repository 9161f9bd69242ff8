"""Schedules used by the training-time methods, as serializable objects.

Example:

>>> from tf_filterprune.schedules import SigmoidTemperature
>>> schedule = SigmoidTemperature(total_epochs=10)
>>> round(schedule(0), 3), round(schedule(10))
(1.0, 10000)
"""

from __future__ import annotations

import math

import keras


class Schedule:
    """A value per epoch; subclasses implement ``__call__`` and ``get_config``."""

    def __call__(self, epoch: float, total_epochs: int | None = None) -> float:
        raise NotImplementedError

    def get_config(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict) -> Schedule:
        return cls(**config)


@keras.saving.register_keras_serializable(package="tf_filterprune")
class SigmoidTemperature(Schedule):
    """DCFF's temperature: ``T(e) = A / (1 + exp(-k e)) + T_s - A / 2``.

    ``A = 2 (T_e - T_s)(1 + exp(-k E)) / (1 - exp(-k E))``, so ``T(0) = T_s``
    and ``T(E) = T_e``. ``E`` is ``total_epochs`` or, when None, the number of
    epochs of the ``fit`` call (given by the callback).

    With ``k = 1`` per epoch the temperature passes 4,000 after one epoch whatever
    ``E`` is: in the paper's 300-epoch runs the low-temperature phase (every kept
    filter a soft mix of all filters) is about 1/300 of training, in a 5-epoch run it
    is 1/5. ``reference_epochs`` keeps the paper's pace instead: the run of ``E``
    epochs reads the schedule of a ``reference_epochs``-epoch run at the same
    fraction of training, ``T(e) = T_ref(e * R / E)`` with ``E_ref = R``.

    Example:

    >>> paced = SigmoidTemperature(total_epochs=5, reference_epochs=300)
    >>> round(paced(0), 3), round(paced(0.1)), round(paced(5))
    (1.0, 9951, 10000)

    Args:
        total_epochs: E; None to take it from ``model.fit(epochs=...)``.
        t_start: T_s (1 in the paper).
        t_end: T_e (1e4 in the paper).
        k: steepness (1 in the paper), per epoch of the reference run when
            ``reference_epochs`` is set.
        reference_epochs: None for the formula as published, over the run's own
            epochs; R (300 for the paper's CIFAR runs) to read the R-epoch schedule
            at the run's fraction of training.
    """

    def __init__(
        self,
        total_epochs: int | None = None,
        t_start: float = 1.0,
        t_end: float = 1e4,
        k: float = 1.0,
        reference_epochs: float | None = None,
    ):
        if total_epochs is not None and total_epochs < 1:
            raise ValueError(f"total_epochs must be >= 1, got {total_epochs}.")
        if reference_epochs is not None and not reference_epochs > 0:
            raise ValueError(f"reference_epochs must be > 0 or None, got {reference_epochs}.")
        self.total_epochs = total_epochs
        self.t_start, self.t_end, self.k = float(t_start), float(t_end), float(k)
        self.reference_epochs = None if reference_epochs is None else float(reference_epochs)

    def __call__(self, epoch: float, total_epochs: int | None = None) -> float:
        total = self.total_epochs or total_epochs
        if not total:
            raise ValueError(
                "SigmoidTemperature needs the number of epochs: pass total_epochs or train "
                "with model.fit(epochs=...) and the UpdateFilterPruning callback."
            )
        if self.reference_epochs is not None:
            epoch, total = epoch * self.reference_epochs / total, self.reference_epochs
        decay = math.exp(-self.k * total)
        amplitude = 2.0 * (self.t_end - self.t_start) * (1.0 + decay) / (1.0 - decay)
        return amplitude / (1.0 + math.exp(-self.k * epoch)) + self.t_start - amplitude / 2.0

    def get_config(self) -> dict:
        return {
            "total_epochs": self.total_epochs,
            "t_start": self.t_start,
            "t_end": self.t_end,
            "k": self.k,
            "reference_epochs": self.reference_epochs,
        }
