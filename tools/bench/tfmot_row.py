"""The tfmot rows: unstructured ``prune_low_magnitude`` in a tf_keras subprocess.

tfmot switches its whole process to the legacy ``tf_keras``, so it runs in
``tools/tfmot_baseline.py`` (which imports neither Keras 3 nor ``tf_filterprune``)
on an ``.npz`` of the same (limited) data; this process never imports tfmot.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import tf_filterprune as tffp
from bench import records
from bench.config import BenchmarkConfig
from bench.protocol import Data, RowResult, compact_architecture, conv_widths

TFMOT_SCRIPT = Path(__file__).resolve().parents[1] / "tfmot_baseline.py"

RESULT_KEYS: tuple[str, ...] = (
    "accuracy",
    "target_sparsity",
    "kernel_sparsity",
    "param_sparsity",
    "nonzero_params",
    "step_time_wrapped_s",
    "step_time_plain_s",
    "step_time_ratio",
)
"""The child's result fields copied into the record."""


def tfmot_sparsity(config: BenchmarkConfig) -> float:
    """1 - trainable params(compact) / trainable params(dense)."""
    dense = tffp.profile(tffp.models.fashion_cnn()).trainable_params
    compact = tffp.profile(compact_architecture(config)).trainable_params
    return 1.0 - compact / dense


def write_npz(path: Path, config: BenchmarkConfig) -> None:
    """The (limited) training and test arrays for the tfmot subprocess."""
    x_train, y_train = tffp.data.load_fashion_mnist("train")
    x_test, y_test = tffp.data.load_fashion_mnist("test")
    train_slice, test_slice = slice(config.train_limit), slice(config.test_limit)
    np.savez(
        path,
        x_train=x_train[train_slice],
        y_train=y_train[train_slice],
        x_test=x_test[test_slice],
        y_test=y_test[test_slice],
    )


def tfmot_command(
    config: BenchmarkConfig,
    seed: int,
    npz: Path,
    out_json: Path,
    sparsity: float,
    row: str = "tfmot",
) -> list[str]:
    """The command line of ``tools/tfmot_baseline.py`` for one seed of ``row``."""
    command = [
        sys.executable,
        str(TFMOT_SCRIPT),
        f"--data={npz}",
        f"--sparsity={sparsity}",
        f"--output_json={out_json}",
        f"--output_tflite={records.tflite_path(config, row, seed)}",
        f"--schedule={config.tfmot_schedule}",
        f"--epochs={config.epochs}",
        f"--batch_size={config.batch_size}",
        f"--lr={config.lr}",
        f"--bn_steps={config.bn_steps}",
        f"--timing_steps={config.timing_steps}",
        f"--timing_skip={config.timing_skip}",
        f"--seed={seed}",
        f"--verbose={config.verbose}",
    ]
    if config.save_models and seed == 0:
        command.append(f"--output_model={records.model_path(config, row)}")
    return command


@dataclass(frozen=True)
class TfmotRow:
    """tfmot magnitude pruning, in a subprocess.

    Args:
        name: the row name.
        sparsity: the target sparsity of the pruned kernels; None for the compact
            model's parameter sparsity (:func:`tfmot_sparsity`, the ``tfmot`` row).
        default: part of the default ``--rows``.
    """

    name: str
    sparsity: float | None = None
    default: bool = True

    def check(self, config: BenchmarkConfig) -> None:
        if config.model != "fashion_cnn":
            raise ValueError(
                f"{self.name}: the tfmot baseline rebuilds fashion_cnn in tf_keras; "
                f"it does not run on {config.model!r} (leave the row out of --rows)"
            )
        if self.sparsity is not None and not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"{self.name}: sparsity must be in [0, 1), got {self.sparsity}")

    def run(self, data: Data, seed: int) -> RowResult:
        config = data.config
        sparsity = tfmot_sparsity(config) if self.sparsity is None else self.sparsity
        with tempfile.TemporaryDirectory(prefix="tfmot_baseline_") as tmp:
            npz, out_json = Path(tmp) / "data.npz", Path(tmp) / "result.json"
            write_npz(npz, config)
            env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
            command = tfmot_command(config, seed, npz, out_json, sparsity, self.name)
            completed = subprocess.run(command, env=env, check=False)
            if completed.returncode != 0:
                raise RuntimeError(
                    f"tfmot baseline failed (exit {completed.returncode}): {command}"
                )
            result = json.loads(out_json.read_text())
        dense = tffp.profile(tffp.models.fashion_cnn())  # same architecture, zeros kept
        metrics = {key: result[key] for key in RESULT_KEYS}
        metrics.update(params=dense.total_params, trainable_params=dense.trainable_params)
        metrics.update(macs=dense.total_macs, widths=conv_widths(tffp.models.fashion_cnn()))
        return RowResult(
            metrics,
            tflite_path=Path(result["tflite_path"]),
            model_path=Path(result["model_path"]) if result.get("model_path") else None,
        )
