"""The Fashion-MNIST method comparison behind ``tools/benchmark.py``, split by concern.

- :mod:`bench.config`: the run's settings (:class:`~bench.config.BenchmarkConfig`) and
  which of them are recorded with every result.
- :mod:`bench.timing`: the training-step timer and ``ratio``, with no Keras import
  (shared with the tf_keras tfmot child, ``tools/tfmot_baseline.py``).
- :mod:`bench.protocol`: data, training phases, evaluation with BN re-estimation,
  the compact architecture, step timing.
- :mod:`bench.row_types`: what a row is (``FunctionRow``, ``MethodRow`` and its
  recipes ``from_scratch`` / ``pretrain_then_method``) and running one into a record.
- :mod:`bench.tfmot_row`: the tfmot rows, run in a tf_keras subprocess.
- :mod:`bench.rows`: the registry, one small entry per row.
- :mod:`bench.records`: ``runs.jsonl``, settings matching, pending pairs, resume.
- :mod:`bench.report`: TFLite latency, ``summary.csv`` / ``summary.md``, the plot.
- :mod:`bench.step_time`: the quiet interleaved train-step ratio (``step_time.json``).

This file imports nothing: the tfmot child imports :mod:`bench.timing` and must not
load Keras 3 or ``tf_filterprune``.
"""
