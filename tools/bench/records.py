"""Results on disk: ``runs.jsonl`` (one JSON line per (row, seed)), settings, resume.

Every record stores ``config.recorded()`` under ``"config"``; a rerun treats a
(row, seed) as done only when a record with the same settings exists.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.config import BenchmarkConfig


def output_relative(config: BenchmarkConfig, path: Path | None) -> str | None:
    """``path`` relative to the output folder (records stay valid if the folder moves)."""
    return None if path is None else os.path.relpath(path, config.output_dir)


def tflite_path(config: BenchmarkConfig, row: str, seed: int) -> Path:
    return config.output_dir / "tflite" / f"{row}_seed{seed}.tflite"


def int8_tflite_path(config: BenchmarkConfig, row: str, seed: int) -> Path:
    return config.output_dir / "tflite" / f"{row}_seed{seed}_int8.tflite"


def model_path(config: BenchmarkConfig, row: str) -> Path:
    return config.output_dir / "models" / f"{row}.keras"


def load_records(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of ``path`` (none if it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Appends one JSON line (written at once, so an interrupted run loses no finished pair)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def write_records(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Replaces ``path`` with ``records`` atomically."""
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(record) + "\n" for record in records))
    os.replace(tmp, path)


def same_settings(record: dict[str, Any], config: BenchmarkConfig) -> bool:
    """Whether ``record`` was produced with this run's recorded settings."""
    return record.get("config") == config.recorded()


def current_records(records: list[dict[str, Any]], config: BenchmarkConfig) -> list[dict]:
    """The latest record of each (row, seed) made with this run's settings."""
    latest: dict[tuple[str, int], dict] = {}
    for record in records:
        if same_settings(record, config):
            latest[(record["row"], record["seed"])] = record
    return list(latest.values())


def pending_pairs(config: BenchmarkConfig) -> list[tuple[str, int]]:
    """The requested (row, seed) pairs still to run; with ``overwrite`` their old records go."""
    records = load_records(config.runs_path)
    requested = [(row, seed) for row in config.rows for seed in config.seeds]
    if config.overwrite:
        kept = [r for r in records if (r["row"], r["seed"]) not in set(requested)]
        if len(kept) != len(records):
            write_records(config.runs_path, kept)
        return requested
    done = {(r["row"], r["seed"]) for r in current_records(records, config)}
    other = {(r["row"], r["seed"]) for r in records if not same_settings(r, config)}
    stale = sorted(set(requested) & (other - done))
    if stale:
        print(f"note: {config.runs_path} has results of {stale} with other settings; rerunning")
    return [pair for pair in requested if pair not in done]


def deduplicated(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drops exact repeats (the same updated record listed twice) keeping order."""
    seen: set[str] = set()
    unique = []
    for record in records:
        key = json.dumps(record, sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique.append(record)
    return unique
