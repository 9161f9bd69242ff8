"""Training-step timing shared by both Keras worlds; imports neither.

The harness (Keras 3) and the tfmot child (``tools/tfmot_baseline.py``, tf_keras)
each mix :class:`StepTimerMixin` into their own ``Callback`` base class:

>>> class Base:
...     def __init__(self):
...         self.model = None
>>> class Timer(StepTimerMixin, Base):
...     pass
>>> timer = Timer(skip=1)
>>> for batch in range(3):
...     timer.on_train_batch_begin(batch)
...     timer.on_train_batch_end(batch)
>>> len(timer.seconds), timer.mean() >= 0.0
(2, True)
"""

from __future__ import annotations

import statistics
import time


class StepTimerMixin:
    """Records the seconds of every training step after the first ``skip`` ones.

    Mix it in before a ``Callback`` class (``class StepTimer(StepTimerMixin,
    keras.callbacks.Callback)``). Put the timer last in the callback list so the
    other callbacks' per-step work is timed too.
    """

    def __init__(self, skip: int = 10):
        super().__init__()
        self.skip = skip
        self.seconds: list[float] = []
        self._seen = 0
        self._start = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._seen += 1
        if self._seen > self.skip:
            self.seconds.append(time.perf_counter() - self._start)

    def mean(self) -> float | None:
        """Mean step time in seconds, or None when no step was timed."""
        return statistics.fmean(self.seconds) if self.seconds else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing or zero.

    >>> ratio(1.0, 4.0), ratio(None, 4.0), ratio(1.0, 0.0)
    (0.25, None, None)
    """
    if not numerator or not denominator:
        return None
    return numerator / denominator
