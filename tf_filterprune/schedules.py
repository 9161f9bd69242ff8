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

    Args:
        total_epochs: E; None to take it from ``model.fit(epochs=...)``.
        t_start: T_s (1 in the paper).
        t_end: T_e (1e4 in the paper).
        k: steepness (1 in the paper).
    """

    def __init__(
        self,
        total_epochs: int | None = None,
        t_start: float = 1.0,
        t_end: float = 1e4,
        k: float = 1.0,
    ):
        if total_epochs is not None and total_epochs < 1:
            raise ValueError(f"total_epochs must be >= 1, got {total_epochs}.")
        self.total_epochs = total_epochs
        self.t_start, self.t_end, self.k = float(t_start), float(t_end), float(k)

    def __call__(self, epoch: float, total_epochs: int | None = None) -> float:
        total = self.total_epochs or total_epochs
        if not total:
            raise ValueError(
                "SigmoidTemperature needs the number of epochs: pass total_epochs or train "
                "with model.fit(epochs=...) and the UpdateFilterPruning callback."
            )
        decay = math.exp(-self.k * total)
        amplitude = 2.0 * (self.t_end - self.t_start) * (1.0 + decay) / (1.0 - decay)
        return amplitude / (1.0 + math.exp(-self.k * epoch)) + self.t_start - amplitude / 2.0

    def get_config(self) -> dict:
        return {
            "total_epochs": self.total_epochs,
            "t_start": self.t_start,
            "t_end": self.t_end,
            "k": self.k,
        }
