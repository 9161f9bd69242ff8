r"""Latency-targeted budgets: measured TFLite latency ratios of ``target_latency_reduction``.

For each reference model (CIFAR ResNet-56, CIFAR VGG-16, the Fashion-MNIST CNN)
this prunes once with ``target_latency_reduction`` (the latency model is measured
on this machine, or read from its cache), and ResNet-56 at half the MACs with
``round_to="auto"`` (and with ``round_to=8``, the earlier setting, for
reference). Then every original and compact model is converted to TFLite
(float, batch 1) and timed in one interleaved session
(:func:`tffp.export.compare_latency`, XNNPACK, ``--num_threads``), so machine
noise hits all alike; only ratios are reported.

Targets: latency ratio in [1 - t - 0.03, 1 - t + 0.03] for the latency rows
(0.47-0.53 at t = 0.5); latency ratio / MACs ratio <= 1.25 for ResNet-56 at half
the MACs with ``round_to="auto"``.

Usage:

    .venv/bin/python tools/latency_budget.py
    .venv/bin/python tools/latency_budget.py --fresh_cache   # measure the latency models again
    .venv/bin/python tools/latency_budget.py --models fashion_cnn --rounds 20

Writes ``results.json`` and ``summary.md`` to ``--output_dir``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from absl import app, flags, logging  # noqa: E402

import tf_filterprune as tffp  # noqa: E402
from tf_filterprune import latency  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "output_dir", "benchmarks/results/latency_budget", "Where results.json and summary.md go."
)
flags.DEFINE_list("models", ["resnet56", "vgg16_cifar", "fashion_cnn"], "tffp.models builders.")
flags.DEFINE_float("target", 0.5, "target_latency_reduction of the latency rows.")
flags.DEFINE_float("tolerance", 0.03, "Allowed |latency ratio - (1 - target)|.")
flags.DEFINE_float("max_latency_over_macs", 1.25, "Target of ResNet-56 at half the MACs, auto.")
flags.DEFINE_integer("num_threads", 1, "Interpreter threads (latency model and timing).")
flags.DEFINE_integer("rounds", 40, "Interleaved timing rounds (5 invokes per model each).")
flags.DEFINE_string("latency_cache_dir", None, "Latency model cache (default: the user cache).")
flags.DEFINE_bool("fresh_cache", False, "Measure the latency models again (a fresh cache).")
flags.DEFINE_enum(
    "sessions",
    "pairs",
    ["pairs", "all"],
    "pairs: each compact model timed interleaved with its original in a session of its "
    "own (a user comparing the two; what the allocation's check measures); all: every "
    "model in one session (their caches compete: ratios move by up to 0.04 here).",
)
flags.DEFINE_enum(
    "judge",
    "paired",
    ["fast_decile", "median", "paired"],
    "Which measured ratio the pass column judges: of the 10th percentiles (robust to a "
    "loaded machine, where long invokes are preempted more often), of the medians, or "
    "the median of the per-round ratios (export.paired_ratio, what the allocation's "
    "check measures).",
)


def rows(models: list[str], target: float) -> list[dict[str, Any]]:
    """The benchmark's rows: name, base model and prune_once arguments, and its check."""
    out = [
        {
            "row": f"{name} latency {target:g}",
            "model": name,
            "kwargs": {"target_latency_reduction": target},
            "check": "latency_ratio",
        }
        for name in models
    ]
    if "resnet56" in models:
        out.append(
            {
                "row": "resnet56 MACs 0.5 round_to=auto",
                "model": "resnet56",
                "kwargs": {"target_macs_reduction": 0.5, "round_to": "auto"},
                "check": "latency_over_macs",
            }
        )
        out.append(
            {
                "row": "resnet56 MACs 0.5 round_to=8 prune_residual=False (before)",
                "model": "resnet56",
                "kwargs": {"target_macs_reduction": 0.5, "round_to": 8, "prune_residual": False},
                "check": None,
            }
        )
    return out


def prune_rows(
    originals: Mapping[str, keras.Model], plan: list[dict], cache_dir: str | None
) -> dict[str, dict]:
    """Prunes every row; records the seconds taken (latency models measured on first use)."""
    out = {}
    for row in plan:
        kwargs = dict(row["kwargs"])
        kwargs.update(num_threads=FLAGS.num_threads, latency_cache_dir=cache_dir)
        start = time.perf_counter()
        compact = tffp.prune_once(originals[row["model"]], "l1", **kwargs)
        out[row["row"]] = {"compact": compact, "prune_s": time.perf_counter() - start}
        print(f"{row['row']}: pruned in {out[row['row']]['prune_s']:.1f} s")
    return out


def estimated_ratio(model: keras.Model, compact: keras.Model, cache_dir: str | None) -> float:
    """The latency model's ratio for the compact model's widths (read from the cache)."""
    graph = tffp.build_graph(model)
    lat = latency.measure(
        model, graph, num_threads=FLAGS.num_threads, cache_dir=cache_dir, verbose=0
    )
    counts = {}
    for group in graph.groups():
        if group.prunable and group.producers:
            layer = compact.get_layer(group.producers[0].rsplit("/", 1)[-1])
            counts[group.id] = int(layer.output.shape[-1])
    return lat.estimate(counts) / lat.total


def widths(model: keras.Model) -> list[int]:
    return [layer.filters for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]


def judge(row: dict, result: dict) -> bool | None:
    """Whether the row meets its target, by the ratio ``--judge`` names."""
    key = {
        "fast_decile": "p10_latency_ratio",
        "median": "latency_ratio",
        "paired": "paired_latency_ratio",
    }[FLAGS.judge]
    if row["check"] == "latency_ratio":
        goal = 1.0 - row["kwargs"]["target_latency_reduction"]
        return abs(result[key] - goal) <= FLAGS.tolerance
    if row["check"] == "latency_over_macs":
        return result[key] / result["macs_ratio"] <= FLAGS.max_latency_over_macs
    return None


def summary_md(results: dict) -> str:
    lines = [
        "# Latency-targeted budgets (`tools/latency_budget.py`)",
        "",
        f"One run, {results['machine_cores']} cores, TFLite float batch 1, XNNPACK, "
        f"{results['num_threads']} thread(s); {SESSIONS_TEXT[results.get('sessions', 'all')]} "
        f"({results['rounds']} rounds x {RUNS_PER_ROUND} invokes); measured channel tile "
        f"**{results['tile']}**; load average at the start {results['load_average']}. "
        "Ratios are compact / original: of the medians, the median of the per-round "
        f"ratios (paired) and of the 10th percentiles (fast decile); the pass column judges the {results['judge'].replace('_', ' ')} "
        "ratio. `prune s` includes measuring the latency model when it was not cached.",
        "",
        "| row | MACs ratio | estimated latency ratio | measured latency ratio: median | "
        "paired | fast decile | latency / MACs (median, fast decile) | target | pass | "
        "prune s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        verdict = {True: "yes", False: "**no**", None: ""}[r["pass"]]
        lines.append(
            f"| {r['row']} | {r['macs_ratio']:.3f} | {r['estimated_latency_ratio']:.3f} | "
            f"{r['latency_ratio']:.3f} | {r.get('paired_latency_ratio', float('nan')):.3f} | "
            f"{r['p10_latency_ratio']:.3f} | "
            f"{r['latency_over_macs']:.2f}, {r['p10_latency_ratio'] / r['macs_ratio']:.2f} | "
            f"{r['target']} | "
            f"{verdict} | {r['prune_s']:.1f} |"
        )
    lines += ["", "Widths of the compact models' Conv2D layers:", ""]
    lines += [f"- {r['row']}: {r['widths']}" for r in results["rows"]]
    return "\n".join(lines) + "\n"


def target_text(row: dict) -> str:
    if row["check"] == "latency_ratio":
        goal = 1.0 - row["kwargs"]["target_latency_reduction"]
        return f"{goal - FLAGS.tolerance:.2f}-{goal + FLAGS.tolerance:.2f}"
    if row["check"] == "latency_over_macs":
        return f"latency/MACs <= {FLAGS.max_latency_over_macs}"
    return "(info)"


def time_rows(originals: dict, pruned: dict, plan: list[dict]) -> dict[str, tuple]:
    """Row -> (original's, compact's) LatencyResult, by the session layout ``--sessions``."""
    blobs = {name: tffp.export.to_tflite(model) for name, model in originals.items()}
    blobs.update(
        {f"pruned:{row}": tffp.export.to_tflite(p["compact"]) for row, p in pruned.items()}
    )

    def session(names: list[str]) -> dict:
        print(f"timing {len(names)} TFLite models interleaved...")
        return tffp.export.compare_latency(
            {n: blobs[n] for n in names},
            num_threads=FLAGS.num_threads,
            rounds=FLAGS.rounds,
            runs_per_round=RUNS_PER_ROUND,
        )

    pairs = {r["row"]: (r["model"], f"pruned:{r['row']}") for r in plan}
    if FLAGS.sessions == "all":
        timed = session(list(blobs))
        return {row: (timed[a], timed[b]) for row, (a, b) in pairs.items()}
    out = {}
    for row, (a, b) in pairs.items():
        timed = session([a, b])
        out[row] = (timed[a], timed[b])
    return out


def run(cache_dir: str | None) -> dict:
    plan = rows(FLAGS.models, FLAGS.target)
    originals = {name: getattr(tffp.models, name)() for name in {r["model"] for r in plan}}
    pruned = prune_rows(originals, plan, cache_dir)
    timed = time_rows(originals, pruned, plan)
    out_rows = []
    for row in plan:
        original, compact = originals[row["model"]], pruned[row["row"]]["compact"]
        macs_ratio = tffp.profile(compact).total_macs / tffp.profile(original).total_macs
        base, comp = timed[row["row"]]
        lat_ratio = comp.median_ms / base.median_ms
        result = {
            "row": row["row"],
            "model": row["model"],
            "options": row["kwargs"],
            "macs_ratio": macs_ratio,
            "latency_ratio": lat_ratio,
            "latency_over_macs": lat_ratio / macs_ratio,
            "paired_latency_ratio": tffp.export.paired_ratio(comp, base, RUNS_PER_ROUND),
            "p10_latency_ratio": latency.robust_ms(comp) / latency.robust_ms(base),
            "estimated_latency_ratio": estimated_ratio(original, compact, cache_dir),
            "original_ms": base.median_ms,
            "compact_ms": comp.median_ms,
            "prune_s": pruned[row["row"]]["prune_s"],
            "widths": widths(compact),
            "target": target_text(row),
        }
        result["pass"] = judge(row, result)
        print(
            f"{row['row']}: MACs {macs_ratio:.3f}, latency {lat_ratio:.3f} "
            f"(estimated {result['estimated_latency_ratio']:.3f}), latency/MACs "
            f"{result['latency_over_macs']:.2f}, target {result['target']}, pass {result['pass']}"
        )
        out_rows.append(result)
    return {
        "machine_cores": os.cpu_count(),
        "keras": keras.__version__,
        "num_threads": FLAGS.num_threads,
        "rounds": FLAGS.rounds,
        "judge": FLAGS.judge,
        "sessions": FLAGS.sessions,
        "load_average": LOAD_AVERAGE,
        "tile": latency.channel_tile(FLAGS.num_threads, cache_dir, verbose=0),
        "rows": out_rows,
    }


RUNS_PER_ROUND = 5
SESSIONS_TEXT = {
    "pairs": "each compact model timed interleaved with its original, one session per row",
    "all": "all models timed interleaved in one session",
}
LOAD_AVERAGE = [round(x, 2) for x in os.getloadavg()]


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    if FLAGS.fresh_cache:
        with tempfile.TemporaryDirectory(prefix="tffp_latency_") as cache_dir:
            results = run(cache_dir)
    else:
        results = run(FLAGS.latency_cache_dir)
    out = Path(FLAGS.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "summary.md").write_text(summary_md(results))
    print(f"wrote {out / 'results.json'} and {out / 'summary.md'}")


if __name__ == "__main__":
    app.run(main)
