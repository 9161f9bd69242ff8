"""Settings of a peers run, and the pure helpers both sides share (no TF, no torch).

Everything here is plain Python so that the orchestrator (``tools/peers.py``), the
Keras side (``peers.keras_side``, run in ``.venv``), the PyTorch side
(``peers.torch_side``, run in ``.venv-peers``) and the tests can all import it.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PRUNERS: tuple[str, ...] = ("l1", "taylor", "bn_scale", "group_norm")
"""Torch-Pruning importances run on the reference CNN, in table order:
``MagnitudeImportance(p=1)`` and ``TaylorImportance()`` through
``tp.pruner.MagnitudePruner``, ``BNScaleImportance()`` through ``tp.pruner.BNScalePruner``
and the group L2 norm (``GroupMagnitudeImportance(p=2)``, Torch-Pruning's
``group_norm`` method; 1.6 has no class named ``GroupNormImportance``) through
``tp.pruner.GroupNormPruner``, as Torch-Pruning's own benchmark script pairs them. One
shot after the same pretraining: the sparsity-training regularizers of the last two
pruners are not applied (the protocol has no sparse-training phase)."""

PRUNER_LABELS: dict[str, str] = {
    "l1": "Torch-Pruning L1 (MagnitudeImportance p=1)",
    "taylor": "Torch-Pruning Taylor (TaylorImportance)",
    "bn_scale": "Torch-Pruning BN scale (BNScaleImportance)",
    "group_norm": "Torch-Pruning GroupNorm (group L2, GroupNormPruner)",
}

CONV_NAMES: tuple[str, ...] = ("conv1", "conv2", "conv3", "conv4", "conv5")
"""The reference CNN's convs (``tffp.models.fashion_cnn``), in order."""

RECORDED_SETTINGS: tuple[str, ...] = (
    "pretrain_epochs",
    "finetune_epochs",
    "macs_reduction",
    "round_to",
    "ignored_layers",
    "lr",
    "batch_size",
    "bn_steps",
    "taylor_batches",
    "train_limit",
    "test_limit",
)
"""Settings stored with every (pruner, seed) record; a rerun reuses only records with
the same ones."""


@dataclass(frozen=True)
class CnnConfig:
    """Settings of part (b), the reference CNN under the benchmark protocol.

    The defaults are the README's headline setting: 50% fewer MACs, channel counts in
    multiples of 16, ``conv1`` kept whole, 3 epochs before the cut and 2 after, Adam at
    ``lr`` with a cosine decay to 1% over each phase, batch 128, BN statistics
    re-estimated on the first 50 unshuffled training batches before every evaluation.
    """

    pretrain_epochs: int = 3
    finetune_epochs: int = 2
    macs_reduction: float = 0.5
    round_to: int = 16
    ignored_layers: tuple[str, ...] = ("conv1",)
    lr: float = 2e-3
    batch_size: int = 128
    bn_steps: int = 50
    taylor_batches: int = 10
    train_limit: int | None = None
    test_limit: int | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    pruners: tuple[str, ...] = PRUNERS
    threads: int = 2

    def __post_init__(self) -> None:
        unknown = sorted(set(self.pruners) - set(PRUNERS))
        if unknown:
            raise ValueError(f"unknown pruners {unknown}; expected some of {list(PRUNERS)}")
        if not self.pruners:
            raise ValueError("no pruner requested")
        if not self.seeds:
            raise ValueError("no seed requested")
        if not 0.0 < self.macs_reduction < 1.0:
            raise ValueError(f"macs_reduction must be in (0, 1), got {self.macs_reduction}")
        if self.pretrain_epochs < 1 or self.finetune_epochs < 0:
            raise ValueError(
                "pretrain_epochs must be >= 1 and finetune_epochs >= 0, got "
                f"{self.pretrain_epochs} and {self.finetune_epochs}"
            )
        for name, value in (
            ("round_to", self.round_to),
            ("batch_size", self.batch_size),
            ("bn_steps", self.bn_steps),
            ("taylor_batches", self.taylor_batches),
            ("threads", self.threads),
        ):
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        unknown_layers = sorted(set(self.ignored_layers) - set(CONV_NAMES))
        if unknown_layers:
            raise ValueError(
                f"ignored_layers {unknown_layers} are not convs of fashion_cnn {list(CONV_NAMES)}"
            )

    @property
    def epochs(self) -> int:
        """Training epochs in all (before and after the cut)."""
        return self.pretrain_epochs + self.finetune_epochs

    def recorded(self) -> dict[str, Any]:
        """The settings stored with every record (JSON types)."""
        values = {name: getattr(self, name) for name in RECORDED_SETTINGS}
        values["ignored_layers"] = list(self.ignored_layers)
        return values

    def to_json(self) -> dict[str, Any]:
        values = asdict(self)
        for key in ("ignored_layers", "seeds", "pruners"):
            values[key] = list(values[key])
        return values

    @classmethod
    def from_json(cls, values: Mapping[str, Any]) -> CnnConfig:
        values = dict(values)
        for key in ("ignored_layers", "seeds", "pruners"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


@dataclass(frozen=True)
class ResNetConfig:
    """Settings of part (a): pruning ResNet-50 at 224x224 in both libraries.

    Ours: ``tffp.prune_once(keras.applications.ResNet50(weights=None), "l1",
    keep_ratio=keep_ratio)``. Torch-Pruning: ``MagnitudePruner`` with
    ``MagnitudeImportance(p=1)`` at ``pruning_ratio = 1 - keep_ratio`` on every layer
    but the classifier, on torchvision's ``resnet50(weights=None)``, pruned in place.
    """

    keep_ratio: float = 0.6
    rounds: int = 3
    repeats: int = 1
    threads: int = 2

    def __post_init__(self) -> None:
        if not 0.0 < self.keep_ratio <= 1.0:
            raise ValueError(f"keep_ratio must be in (0, 1], got {self.keep_ratio}")
        if self.rounds < 1 or self.repeats < 1 or self.threads < 1:
            raise ValueError("rounds, repeats and threads must be positive")


# --------------------------------------------------------------------------- #
# Widths: ours -> Torch-Pruning's per-layer ratios
# --------------------------------------------------------------------------- #


def widths_from_profile(layers: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """``{conv name: filters}`` of the fashion CNN from per-layer rows.

    ``layers`` are dicts with ``name``, ``class_name`` and ``filters`` (what
    ``peers.keras_side`` reads off a Keras model); only the CNN's convs are kept and all
    five must be there.
    """
    widths = {
        row["name"]: int(row["filters"])
        for row in layers
        if row.get("class_name") == "Conv2D" and row["name"] in CONV_NAMES
    }
    missing = [name for name in CONV_NAMES if name not in widths]
    if missing:
        raise ValueError(f"convs {missing} missing from the model's layers")
    return {name: widths[name] for name in CONV_NAMES}


def pruning_ratios(dense: Mapping[str, int], target: Mapping[str, int]) -> dict[str, float]:
    """Torch-Pruning per-layer ``pruning_ratio`` that leaves exactly ``target`` filters.

    Torch-Pruning keeps ``int(C * (1 - ratio))`` of a layer's ``C`` channels (without
    ``round_to``), so the exact fraction ``(C - w) / C`` could land one channel short
    by floating-point rounding; the ratio is therefore nudged down by a margin far below
    one channel (``0.5 / C``, then checked by :func:`kept_channels`). Layers kept whole
    get no entry.
    """
    ratios = {}
    for name, width in target.items():
        channels = int(dense[name])
        if not 1 <= width <= channels:
            raise ValueError(f"{name}: target width {width} outside [1, {channels}]")
        if width == channels:
            continue
        ratio = (channels - width) / channels - 0.25 / channels
        if kept_channels(channels, ratio) != width:
            raise AssertionError(f"{name}: ratio {ratio} keeps {kept_channels(channels, ratio)}")
        ratios[name] = ratio
    return ratios


def kept_channels(channels: int, ratio: float) -> int:
    """Channels Torch-Pruning keeps of ``channels`` at ``pruning_ratio`` (no round_to).

    ``BasePruner`` (local pruning) removes ``C - int(C * (1 - ratio))`` channels.
    """
    return int(channels * (1 - ratio))


# --------------------------------------------------------------------------- #
# Records (jsonl) and summaries
# --------------------------------------------------------------------------- #


def read_records(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of ``path`` (none when it does not exist); bad lines are skipped."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by an interrupted run
    return records


def append_record(path: Path, record: Mapping[str, Any]) -> None:
    """Appends one JSON line (flushed) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")
        handle.flush()


def done_pairs(records: Iterable[Mapping[str, Any]], config: CnnConfig) -> set[tuple[str, int]]:
    """(pruner, seed) pairs already recorded with ``config``'s recorded settings."""
    settings = config.recorded()
    return {
        (record["pruner"], int(record["seed"]))
        for record in records
        if record.get("config") == settings and "pruner" in record
    }


def pending_pairs(
    records: Iterable[Mapping[str, Any]], config: CnnConfig, overwrite: bool = False
) -> dict[int, list[str]]:
    """``{seed: [pruner, ...]}`` still to run, seeds and pruners in request order."""
    done = set() if overwrite else done_pairs(records, config)
    pending: dict[int, list[str]] = {}
    for seed in config.seeds:
        todo = [pruner for pruner in config.pruners if (pruner, seed) not in done]
        if todo:
            pending[seed] = todo
    return pending


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    values = [float(v) for v in values]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


SUMMARY_FIELDS: tuple[str, ...] = (
    "accuracy",
    "accuracy_after_cut",
    "accuracy_pretrained",
    "macs_ratio",
    "tp_macs_ratio",
    "seconds_prune",
)


def summarize(records: Iterable[Mapping[str, Any]], config: CnnConfig) -> list[dict[str, Any]]:
    """Mean and std per pruner over the seeds of the records with ``config``'s settings."""
    settings = config.recorded()
    by_pruner: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        if record.get("config") == settings and record.get("pruner") in config.pruners:
            by_pruner.setdefault(record["pruner"], []).append(record)
    rows = []
    for pruner in config.pruners:
        group = by_pruner.get(pruner, [])
        if not group:
            continue
        # one record per seed: the latest (a rerun with --overwrite appends a newer one)
        latest = {int(r["seed"]): r for r in group}
        group = [latest[seed] for seed in sorted(latest)]
        row: dict[str, Any] = {
            "pruner": pruner,
            "label": PRUNER_LABELS[pruner],
            "seeds": [int(r["seed"]) for r in group],
            "widths": group[0].get("widths"),
            "macs": group[0].get("macs"),
            "params": group[0].get("params"),
        }
        for name in SUMMARY_FIELDS:
            values = [r[name] for r in group if r.get(name) is not None]
            mean, std = mean_std(values)
            row[name] = {"mean": mean, "std": std, "values": values}
        rows.append(row)
    return rows


def format_mean_std(stat: Mapping[str, Any] | None, digits: int = 4) -> str:
    if not stat or not stat.get("values"):
        return ""
    if len(stat["values"]) == 1:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def cnn_markdown(summary: Sequence[Mapping[str, Any]], ours: Sequence[Mapping[str, Any]]) -> str:
    """The part (b) table: Torch-Pruning rows, then our rows read from their benchmark."""
    lines = [
        "| method | test accuracy | right after cut | dense after pretraining | MACs ratio "
        "| widths conv1-5 | params | seeds |",
        "|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for row in summary:
        widths = ", ".join(str(w) for w in (row.get("widths") or {}).values())
        lines.append(
            f"| {row['label']} | {format_mean_std(row['accuracy'])} "
            f"| {format_mean_std(row['accuracy_after_cut'])} "
            f"| {format_mean_std(row['accuracy_pretrained'])} "
            f"| {format_mean_std(row['macs_ratio'], 3)} | {widths} "
            f"| {row.get('params') or 0:,} | {len(row['seeds'])} |"
        )
    for row in ours:
        lines.append(
            f"| {row['label']} | {format_mean_std(row.get('accuracy'))} "
            f"| {format_mean_std(row.get('accuracy_after_cut'))} |  "
            f"| {format_mean_std(row.get('macs_ratio'), 3)} | {row.get('widths', '')} "
            f"| {row.get('params') or 0:,} | {row.get('n', '')} |"
        )
    return "\n".join(lines)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


@dataclass
class ResNetResult:
    """Collected part (a) timings of both sides (seconds per prune, by round)."""

    keras_seconds: list[float] = field(default_factory=list)
    torch_seconds: list[float] = field(default_factory=list)
    keras: dict[str, Any] = field(default_factory=dict)
    torch: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        keras_s, torch_s = median(self.keras_seconds), median(self.torch_seconds)
        return {
            "keras_median_s": keras_s,
            "torch_median_s": torch_s,
            "keras_over_torch": keras_s / torch_s if torch_s else math.nan,
            "keras_seconds": self.keras_seconds,
            "torch_seconds": self.torch_seconds,
            "keras_macs_ratio": self.keras.get("macs_ratio"),
            "torch_macs_ratio": self.torch.get("macs_ratio"),
            "keras_params_ratio": self.keras.get("params_ratio"),
            "torch_params_ratio": self.torch.get("params_ratio"),
            "keras": self.keras,
            "torch": self.torch,
        }


def resnet_markdown(summary: Mapping[str, Any], config: ResNetConfig) -> str:
    keras_side, torch_side = summary["keras"], summary["torch"]
    rows = [
        "| library (call) | median s | s per round | MACs before | MACs after | MACs ratio "
        "| params ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, side, seconds in (
        (
            f'tf_filterprune `prune_once(ResNet50, "l1", keep_ratio={config.keep_ratio})`',
            keras_side,
            summary["keras_seconds"],
        ),
        (
            f"Torch-Pruning `MagnitudePruner` L1, pruning_ratio={1 - config.keep_ratio:.2f}"
            " (in place)",
            torch_side,
            summary["torch_seconds"],
        ),
    ):
        rows.append(
            f"| {label} | {median(seconds):.3f} | {', '.join(f'{s:.3f}' for s in seconds)} "
            f"| {side.get('macs_before', 0):,} | {side.get('macs_after', 0):,} "
            f"| {side.get('macs_ratio', math.nan):.3f} | {side.get('params_ratio', math.nan):.3f} |"
        )
    return "\n".join(rows)


OUR_ROWS: tuple[str, ...] = ("unpruned", "l1_finetune", "scratch", "dcff_paced", "dpfps")
"""Rows of ``tools/benchmark.py`` shown next to Torch-Pruning's (when their runs exist)."""


def ours_summary(records: Iterable[Mapping[str, Any]], config: CnnConfig) -> list[dict[str, Any]]:
    """Our benchmark's rows at the same settings (read from its ``runs.jsonl``)."""
    want = {
        "epochs": config.epochs,
        "pretrain_epochs": config.pretrain_epochs,
        "macs_reduction": config.macs_reduction,
        "round_to": config.round_to,
        "lr": config.lr,
        "batch_size": config.batch_size,
        "bn_steps": config.bn_steps,
        "train_limit": config.train_limit,
        "test_limit": config.test_limit,
    }
    by_row: dict[str, dict[int, Mapping[str, Any]]] = {}
    for record in records:
        settings = record.get("config") or {}
        if any(settings.get(key) != value for key, value in want.items()):
            continue
        if list(settings.get("ignored_layers", [])) != list(config.ignored_layers):
            continue
        if record.get("row") in OUR_ROWS:
            by_row.setdefault(record["row"], {})[int(record["seed"])] = record
    rows = []
    for name in OUR_ROWS:
        group = [by_row[name][seed] for seed in sorted(by_row.get(name, {}))]
        if not group:
            continue
        row: dict[str, Any] = {
            "row": name,
            "label": f"ours (Keras): {name}",
            "n": len(group),
            "seeds": [int(r["seed"]) for r in group],
            "widths": ", ".join(str(w) for w in (group[0].get("widths") or {}).values()),
            "params": group[0].get("params"),
        }
        for key in ("accuracy", "accuracy_after_cut", "macs_ratio"):
            values = [r[key] for r in group if r.get(key) is not None]
            mean, std = mean_std(values)
            row[key] = {"mean": mean, "std": std, "values": values}
        rows.append(row)
    return rows
