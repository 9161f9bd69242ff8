"""tools/peers.py: Torch-Pruning next to tf_filterprune, each in its own venv.

The end-to-end test needs ``.venv-peers`` (``bash tools/setup_peers.sh``) and is skipped
without it; the width / config / summary handling on our side needs no torch.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"
PEERS_PYTHON = REPO / ".venv-peers" / "bin" / "python"
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))

from peers import config as peers_config  # noqa: E402
from peers.config import (  # noqa: E402
    CnnConfig,
    kept_channels,
    pending_pairs,
    pruning_ratios,
    summarize,
    widths_from_profile,
)

DENSE = {"conv1": 32, "conv2": 32, "conv3": 64, "conv4": 64, "conv5": 128}
HEADLINE = {"conv1": 32, "conv2": 16, "conv3": 64, "conv4": 32, "conv5": 112}


def test_our_headline_widths_and_the_port_layers_come_from_the_keras_model():
    from peers.keras_side import layer_specs

    import tf_filterprune as tffp

    dense = tffp.models.fashion_cnn()
    compact = tffp.prune_once(
        dense, "l1", target_macs_reduction=0.5, round_to=16, ignored_layers=("conv1",)
    )
    assert widths_from_profile(layer_specs(dense)) == DENSE
    assert widths_from_profile(layer_specs(compact)) == HEADLINE
    specs = {spec["name"]: spec for spec in layer_specs(dense)}
    # what the PyTorch port is checked against
    assert specs["conv1"]["kernel_initializer"] == "HeNormal"
    assert specs["conv1"]["padding"] == "same" and specs["conv1"]["use_bias"] is True
    assert specs["bn1"]["momentum"] == 0.99 and specs["bn1"]["epsilon"] == 1e-3
    assert specs["fc"]["kernel_initializer"] == "GlorotUniform"
    assert sum(spec["params"] for spec in specs.values()) == dense.count_params()


def test_pruning_ratios_keep_exactly_the_target_widths():
    ratios = pruning_ratios(DENSE, HEADLINE)
    assert set(ratios) == {"conv2", "conv4", "conv5"}  # conv1, conv3 stay whole
    for name, ratio in ratios.items():
        assert kept_channels(DENSE[name], ratio) == HEADLINE[name]
    # widths where the plain fraction (C - w) / C would lose a channel to rounding
    for channels in range(1, 300):
        for width in range(1, channels + 1):
            got = pruning_ratios({"c": channels}, {"c": width}).get("c")
            assert (got is None) == (width == channels)
            if got is not None:
                assert kept_channels(channels, got) == width
    with pytest.raises(ValueError, match="outside"):
        pruning_ratios(DENSE, {"conv1": 33})


def test_widths_from_profile_needs_every_conv():
    rows = [{"name": n, "class_name": "Conv2D", "filters": w} for n, w in DENSE.items()]
    rows.append({"name": "fc", "class_name": "Dense", "units": 10})
    assert widths_from_profile(rows) == DENSE
    with pytest.raises(ValueError, match="conv5"):
        widths_from_profile(rows[:4])


def test_config_validation_and_json_round_trip():
    config = CnnConfig(train_limit=384, seeds=(0, 2), pruners=("l1", "taylor"))
    assert config.epochs == 5
    assert CnnConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
    assert config.recorded()["ignored_layers"] == ["conv1"]
    for bad in (
        {"pruners": ("l2",)},
        {"macs_reduction": 1.0},
        {"ignored_layers": ("dense",)},
        {"round_to": 0},
        {"seeds": ()},
    ):
        with pytest.raises(ValueError):
            CnnConfig(**bad)


def test_records_resume_and_summary(tmp_path):
    config = CnnConfig(seeds=(0, 1), pruners=("l1", "taylor"))
    runs = tmp_path / "runs.jsonl"
    base = {"config": config.recorded(), "widths": HEADLINE, "macs": 1, "params": 2}
    peers_config.append_record(runs, {**base, "pruner": "l1", "seed": 0, "accuracy": 0.9})
    peers_config.append_record(runs, {**base, "pruner": "l1", "seed": 1, "accuracy": 0.8})
    other = {**base, "config": {**config.recorded(), "round_to": 8}}
    peers_config.append_record(runs, {**other, "pruner": "taylor", "seed": 0, "accuracy": 0.1})
    with runs.open("a") as handle:
        handle.write('{"cut by an interrupted run": ')
    records = peers_config.read_records(runs)
    assert len(records) == 3
    assert pending_pairs(records, config) == {0: ["taylor"], 1: ["taylor"]}
    assert pending_pairs(records, config, overwrite=True) == {
        0: ["l1", "taylor"],
        1: ["l1", "taylor"],
    }
    (row,) = summarize(records, config)
    assert row["pruner"] == "l1" and row["seeds"] == [0, 1]
    assert row["accuracy"]["mean"] == pytest.approx(0.85)
    assert row["accuracy"]["std"] == pytest.approx(0.0707106781)
    table = peers_config.cnn_markdown([row], [])
    assert "0.8500 ± 0.0707" in table and "32, 16, 64, 32, 112" in table


def test_tool_help_explains_every_flag():
    out = subprocess.run(
        [sys.executable, str(TOOLS / "peers.py"), "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    ).stdout
    assert "(a) ``resnet``" in out and "(b) ``cnn``" in out
    for flag in (
        "parts", "output_dir", "work_dir", "keras_python", "torch_python", "quick",
        "keep_ratio", "rounds", "repeats", "seeds", "pruners", "pretrain_epochs",
        "finetune_epochs", "macs_reduction", "round_to", "ignored_layers", "lr",
        "batch_size", "bn_steps", "taylor_batches", "train_limit", "test_limit",
        "threads", "overwrite", "ours_runs",
    ):  # fmt: skip
        assert re.search(rf"--(\[no\])?{flag}: \S", out), flag


@pytest.mark.skipif(
    not PEERS_PYTHON.exists(),
    reason=f"{PEERS_PYTHON} does not exist (set it up with: bash tools/setup_peers.sh)",
)
def test_quick_run_writes_results(tmp_path):
    out_dir = tmp_path / "peers"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.run(
        [
            sys.executable,
            str(TOOLS / "peers.py"),
            "--quick",
            "--threads=1",  # OpenMP's 2 threads stall when other jobs share the 2 cores
            "--output_dir",
            str(out_dir),
            "--ours_runs=",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=1500,
        check=False,
    )
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    records = peers_config.read_records(out_dir / "runs.jsonl")
    assert sorted(r["pruner"] for r in records) == sorted(peers_config.PRUNERS)
    for record in records:
        assert record["seed"] == 0
        assert record["widths"] == HEADLINE  # exactly our widths
        assert record["params"] == 67210  # = the Keras compact model's
        assert 0.0 <= record["accuracy_after_cut"] <= 1.0 and 0.0 <= record["accuracy"] <= 1.0
        assert 0.45 < record["tp_macs_ratio"] < 0.55
    results = json.loads((out_dir / "peers.json").read_text())
    assert {row["pruner"] for row in results["cnn"]["summary"]} == set(peers_config.PRUNERS)
    assert results["cnn"]["ours"]["target_widths"] == HEADLINE
    resnet = results["resnet50"]
    assert len(resnet["keras_seconds"]) == len(resnet["torch_seconds"]) == 1
    assert resnet["keras_median_s"] > 0 and resnet["torch_median_s"] > 0
    assert 0.2 < resnet["keras_macs_ratio"] < 0.6 and 0.2 < resnet["torch_macs_ratio"] < 0.6
    text = (out_dir / "peers.md").read_text()
    assert "(a) Pruning ResNet-50" in text and "(b) Torch-Pruning" in text
    # resumable: a second run has nothing left to train
    again = subprocess.run(
        [
            sys.executable,
            str(TOOLS / "peers.py"),
            "--quick",
            "--parts",
            "cnn",
            "--output_dir",
            str(out_dir),
            "--ours_runs=",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=600,
        check=False,
    )
    assert again.returncode == 0, again.stdout[-3000:]
    assert "pending (seed: pruners): {}" in again.stdout
    assert len(peers_config.read_records(out_dir / "runs.jsonl")) == 4
