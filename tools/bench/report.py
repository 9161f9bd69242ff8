"""TFLite latency of every result, ``summary.csv``, ``summary.md`` and the plot."""

from __future__ import annotations

import csv
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tf_filterprune as tffp
from bench import records, rows
from bench.config import IMAGE_PAD, BenchmarkConfig
from bench.protocol import reference_model
from bench.timing import ratio

DENSE_REFERENCE = "dense_reference"
"""The key of the fresh dense CNN timed when no unpruned record's file is present."""


def measure_latencies(recs: list[dict[str, Any]], config: BenchmarkConfig) -> None:
    """Times every record's .tflite interleaved (batch 1, one thread); updates the records.

    ``latency_ratio`` is relative to the mean latency of the unpruned records. When
    none of their files is here (``tflite/`` is not committed: a fresh checkout that
    adds a row), a freshly built dense CNN is timed in the same interleaved run as the
    reference instead (latency does not depend on the weights' values).
    """
    files = {id(r): config.output_dir / r["tflite_file"] for r in recs if r.get("tflite_file")}
    present = [r for r in recs if id(r) in files and files[id(r)].exists()]
    if not present:
        return
    blobs = {f"{r['row']}/{r['seed']}": files[id(r)].read_bytes() for r in present}
    int8 = {
        id(r): config.output_dir / r["int8_tflite_file"]
        for r in present
        if r.get("int8_tflite_file")
    }
    int8 = {key: path for key, path in int8.items() if path.exists()}
    for record in present:
        if id(record) in int8:
            blobs[f"{record['row']}/{record['seed']}/int8"] = int8[id(record)].read_bytes()
    has_unpruned = any(r["row"] == "unpruned" for r in present)
    if not has_unpruned:
        blobs[DENSE_REFERENCE] = tffp.export.to_tflite(reference_model(config))
    results = tffp.export.compare_latency(blobs, num_threads=1, rounds=config.latency_rounds)
    for record in present:
        record["latency_ms"] = results[f"{record['row']}/{record['seed']}"].median_ms
    reference = [r["latency_ms"] for r in present if r["row"] == "unpruned"]
    if not has_unpruned:
        reference = [results[DENSE_REFERENCE].median_ms]
    base = statistics.fmean(reference) if reference else None
    for record in present:
        record["latency_ratio"] = ratio(record["latency_ms"], base)
        if id(record) in int8:  # against the float unpruned model, as every ratio here
            ms = results[f"{record['row']}/{record['seed']}/int8"].median_ms
            record["int8_latency_ms"], record["int8_latency_ratio"] = ms, ratio(ms, base)


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (0 for one value) of the non-missing values."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return None, None
    std = statistics.stdev(present) if len(present) > 1 else 0.0
    return statistics.fmean(present), std


SUMMARY_METRICS: tuple[str, ...] = (
    "accuracy",
    "accuracy_after_cut",
    "macs",
    "macs_ratio",
    "params",
    "params_ratio",
    "tflite_bytes",
    "latency_ms",
    "latency_ratio",
    "step_time_ratio",
    "int8_accuracy",
    "int8_tflite_bytes",
    "int8_latency_ratio",
)


def summarize(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per method (in registry order): seeds and mean / std of every metric."""
    summary = []
    for row in rows.names():
        mine = sorted((r for r in recs if r["row"] == row), key=lambda r: r["seed"])
        if not mine:
            continue
        line: dict[str, Any] = {"row": row, "seeds": len(mine)}
        for metric in SUMMARY_METRICS:
            line[f"{metric}_mean"], line[f"{metric}_std"] = mean_std([r.get(metric) for r in mine])
        summary.append(line)
    return summary


def write_summary_csv(summary: list[dict[str, Any]], path: Path) -> None:
    """``summary.csv``: numeric mean / std columns."""
    columns = ["row", "seeds"] + [f"{m}_{s}" for m in SUMMARY_METRICS for s in ("mean", "std")]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(summary)


def _pm(line: dict[str, Any], metric: str, digits: int) -> str:
    """``mean ± std`` of a summary line, or an empty cell."""
    mean, std = line[f"{metric}_mean"], line[f"{metric}_std"]
    if mean is None:
        return ""
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _plain(line: dict[str, Any], metric: str, fmt: str) -> str:
    mean = line[f"{metric}_mean"]
    return "" if mean is None else format(mean, fmt)


def markdown_table(summary: list[dict[str, Any]]) -> str:
    """The README table: accuracy, cost and speed of every method, mean ± std over seeds."""
    header = (
        "| method | test accuracy | right after cut | MACs | MACs ratio | params | "
        "TFLite bytes | latency ratio | train step ratio | seeds |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = [
        f"| {line['row']} | {_pm(line, 'accuracy', 4)} | {_pm(line, 'accuracy_after_cut', 4)} | "
        f"{_plain(line, 'macs', ',.0f')} | {_plain(line, 'macs_ratio', '.3f')} | "
        f"{_plain(line, 'params', ',.0f')} | {_plain(line, 'tflite_bytes', ',.0f')} | "
        f"{_pm(line, 'latency_ratio', 3)} | {_pm(line, 'step_time_ratio', 2)} | {line['seeds']} |"
        for line in summary
    ]
    return header + "\n".join(lines) + "\n" + int8_table(summary)


def int8_table(summary: list[dict[str, Any]]) -> str:
    """The full-int8 TFLite models of the rows that have them (empty when none has)."""
    with_int8 = [line for line in summary if line.get("int8_accuracy_mean") is not None]
    if not with_int8:
        return ""
    header = (
        "\nFull-int8 TFLite (int8 ops and input/output, calibrated on 4 fixed training "
        "batches; latency ratio against the float unpruned model):\n\n"
        "| method | float accuracy | int8 accuracy | int8 TFLite bytes | int8 latency ratio "
        "| seeds |\n|---|---:|---:|---:|---:|---:|\n"
    )
    lines = [
        f"| {line['row']} | {_pm(line, 'accuracy', 4)} | {_pm(line, 'int8_accuracy', 4)} | "
        f"{_plain(line, 'int8_tflite_bytes', ',.0f')} | {_pm(line, 'int8_latency_ratio', 3)} | "
        f"{line['seeds']} |"
        for line in with_int8
    ]
    return header + "\n".join(lines) + "\n"


def settings_text(config: BenchmarkConfig) -> str:
    """One sentence with the run's settings, for the markdown summary."""
    kept = config.ignored_layers
    whole = f", {', '.join(kept)} kept whole" if kept else ""
    limits = f", train_limit={config.train_limit}" if config.train_limit else ""
    limits += f", test_limit={config.test_limit}" if config.test_limit else ""
    size = 28 + 2 * IMAGE_PAD[config.model]
    images = f" padded to {size}x{size}" if size != 28 else ""
    return (
        f"Fashion-MNIST{images}, `{config.model}`, {config.macs_reduction:.0%} fewer MACs "
        f"(round_to={config.round_to}{whole}), {config.epochs} epochs per row "
        f"(l1_finetune: {config.pretrain_epochs} + {config.epochs - config.pretrain_epochs}), "
        f"Adam lr {config.lr:g} cosine to 1%, batch {config.batch_size}, BN re-estimated on "
        f"{config.bn_steps} batches before every evaluation{limits}. Latency: TFLite float, "
        "batch 1, one thread, interleaved; ratio vs unpruned. Train step ratio: wrapped / "
        "plain step time."
    )


def write_summary_markdown(summary: list[dict], config: BenchmarkConfig, path: Path) -> None:
    path.write_text(f"{settings_text(config)}\n\n{markdown_table(summary)}")


def plot_accuracy_vs_macs(
    summary: list[dict[str, Any]], path: Path, model: str = "fashion_cnn"
) -> None:
    """``accuracy_vs_macs.png``: accuracy mean ± std against the MACs ratio, a point per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for line in summary:
        x, y = line["macs_ratio_mean"], line["accuracy_mean"]
        ax.errorbar(x, y, yerr=line["accuracy_std"], fmt="o", capsize=4, label=line["row"])
        ax.annotate(line["row"], (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("MACs ratio (vs unpruned)")
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.set_title(f"Fashion-MNIST, {model}: accuracy vs MACs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(config: BenchmarkConfig) -> list[dict[str, Any]]:
    """Measures latency, rewrites runs.jsonl with it and writes the summaries; returns them."""
    recs = records.load_records(config.runs_path)
    current = records.current_records(recs, config)
    if not current:
        return []
    measure_latencies(current, config)
    updated = {(r["row"], r["seed"]): r for r in current}
    merged = [
        updated.get((r["row"], r["seed"]), r) if records.same_settings(r, config) else r
        for r in recs
    ]
    records.write_records(config.runs_path, records.deduplicated(merged))
    summary = summarize(current)
    write_summary_csv(summary, config.output_dir / "summary.csv")
    write_summary_markdown(summary, config, config.output_dir / "summary.md")
    plot_accuracy_vs_macs(summary, config.output_dir / "accuracy_vs_macs.png", config.model)
    return summary
