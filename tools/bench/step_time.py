"""The quiet train-step ratio: every method row wrapped vs the plain compact CNN.

Each round trains one epoch of each model in turn (the order rotating from round to
round), in one process, so machine load hits all of them alike; the ratio is of the medians of all timed steps
(``step_time.json``).
"""

from __future__ import annotations

import json
import statistics
from typing import Any

import keras

import tf_filterprune as tffp
from bench import rows
from bench.config import BenchmarkConfig
from bench.protocol import (
    compact_architecture,
    compile_model,
    fashion_pipeline,
    reference_model,
    timed_epoch,
)


def measure_step_time_ratios(config: BenchmarkConfig, rounds: int) -> dict[str, Any]:
    """Train-step time of the method rows' wrapped CNNs over the plain CNN of their width.

    The method rows are those of ``config.rows`` (by default: every default method
    row); each is wrapped on a fresh CNN as its row wraps it.
    """
    method_rows = rows.method_rows(config.rows)
    if not method_rows:
        raise ValueError(f"no training-time method row among {list(config.rows)}")
    dataset = fashion_pipeline(
        config, "train", config.batch_size, shuffle=True, limit=config.train_limit, seed=0
    )
    steps = int(dataset.cardinality())
    models = {row.name: row.wrap(reference_model(config), config) for row in method_rows}
    models["plain"] = keras.models.clone_model(compact_architecture(config))
    full_width = {r.name for r in method_rows if not r.method(config).compact_width}
    if full_width:  # full-width methods (DPFPS) train the dense CNN: that is their reference
        models["dense"] = reference_model(config)
    for model in models.values():
        compile_model(model, steps * rounds, config.lr)
    seconds: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    for index in range(rounds):
        order = names[index % len(names) :] + names[: index % len(names)]  # rotate: no slot bias
        for name in order:
            model = models[name]
            extra = [] if name in ("plain", "dense") else [tffp.callbacks.UpdateFilterPruning()]
            seconds[name] += timed_epoch(model, dataset, config, extra)
        print(
            f"round {index + 1}/{rounds}: "
            + ", ".join(
                f"{name} {statistics.median(s) * 1e3:.1f} ms" for name, s in seconds.items()
            )
        )
    result = {
        "rounds": rounds,
        "steps_per_round": steps,
        "median_step_s": {name: statistics.median(s) for name, s in seconds.items()},
        "ratio": {
            row.name: statistics.median(seconds[row.name])
            / statistics.median(seconds["dense" if row.name in full_width else "plain"])
            for row in method_rows
        },
        "reference": {
            row.name: "dense" if row.name in full_width else "plain" for row in method_rows
        },
    }
    path = config.output_dir / "step_time.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"train-step ratio wrapped / plain: {result['ratio']}; wrote {path}")
    return result
