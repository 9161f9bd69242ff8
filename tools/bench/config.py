"""The settings of one benchmark run, and which of them every result records."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RECORDED_SETTINGS: tuple[str, ...] = (
    "epochs",
    "pretrain_epochs",
    "macs_reduction",
    "round_to",
    "lr",
    "batch_size",
    "bn_steps",
    "train_limit",
    "test_limit",
    "tfmot_schedule",
)
"""Settings stored with every result; a rerun reuses only results with the same ones.

``ignored_layers`` is stored too when it is not empty, and ``model`` when it is not
``fashion_cnn`` (so older records still match)."""


IMAGE_PAD: dict[str, int] = {"fashion_cnn": 0, "resnet20": 2}
"""Zero pixels added on each side of the 28x28 images, per reference model."""

MODELS: tuple[str, ...] = tuple(IMAGE_PAD)
"""The benchmark's reference models: ``tffp.models.fashion_cnn()`` on 28x28 images, and
``tffp.models.resnet20`` on Fashion-MNIST zero-padded to 32x32 (one channel)."""


def _default_rows() -> tuple[str, ...]:
    from bench import rows  # the registry imports this module

    return rows.default_names()


@dataclass(frozen=True)
class BenchmarkConfig:
    """Settings of one benchmark run.

    The fields named in :data:`RECORDED_SETTINGS` are stored with every result
    and decide which earlier results a rerun may reuse. ``rows`` defaults to the
    registry's default rows (:func:`bench.rows.default_names`).
    """

    output_dir: Path
    model: str = "fashion_cnn"
    rows: tuple[str, ...] = field(default_factory=_default_rows)
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 5
    pretrain_epochs: int = 3
    macs_reduction: float = 0.5
    round_to: int = 8
    ignored_layers: tuple[str, ...] = ()
    lr: float = 2e-3
    batch_size: int = 128
    bn_steps: int = 50
    train_limit: int | None = None
    test_limit: int | None = None
    tfmot_schedule: str = "polynomial"
    overwrite: bool = False
    latency_rounds: int = 20
    timing_steps: int = 100
    timing_skip: int = 10
    verbose: int = 2
    save_models: bool = True
    int8: bool = True

    def __post_init__(self) -> None:
        from bench import rows

        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; expected one of {list(MODELS)}")
        unknown = sorted(set(self.rows) - set(rows.names()))
        if unknown:
            raise ValueError(f"unknown rows {unknown}; expected some of {list(rows.names())}")
        if not 0 <= self.pretrain_epochs <= self.epochs:
            raise ValueError(
                f"pretrain_epochs must be in [0, epochs={self.epochs}], got {self.pretrain_epochs}"
            )
        if not 0.0 < self.macs_reduction < 1.0:
            raise ValueError(f"macs_reduction must be in (0, 1), got {self.macs_reduction}")
        for name in self.rows:
            rows.get(name).check(self)

    def recorded(self) -> dict[str, Any]:
        """The settings stored with every result."""
        settings = {name: getattr(self, name) for name in RECORDED_SETTINGS}
        if self.ignored_layers:
            settings["ignored_layers"] = list(self.ignored_layers)
        if self.model != "fashion_cnn":
            settings["model"] = self.model
        return settings

    @property
    def runs_path(self) -> Path:
        return self.output_dir / "runs.jsonl"
