"""Smoke tests of tools/benchmark.py (the method comparison) on a tiny Fashion-MNIST subset."""

from __future__ import annotations

import ast
import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import keras
import pytest
from helpers import fashion_mnist_present

import tf_filterprune as tffp
from tf_filterprune.methods.base import wrappers_of

TOOLS = Path(__file__).resolve().parents[1] / "tools"


pytestmark = pytest.mark.skipif(
    not fashion_mnist_present(), reason="Fashion-MNIST IDX files are not installed"
)


def _load_tool():
    """Imports tools/benchmark.py once per process (it defines absl flags)."""
    name = "tffp_benchmark_tool"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, TOOLS / "benchmark.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


bench = _load_tool()
rows = bench.rows  # the registry (tools/bench/rows.py), importable once the tool is loaded


def tiny_config(tmp_path: Path, **overrides):
    """A run of a few training steps, small BN and test sets, short timings."""
    settings = dict(
        output_dir=tmp_path,
        rows=("unpruned", "l1_finetune", "scratch"),
        seeds=(0,),
        epochs=2,
        pretrain_epochs=1,
        train_limit=256,
        test_limit=256,
        bn_steps=2,
        latency_rounds=2,
        timing_steps=2,
        timing_skip=1,
        verbose=0,
    )
    settings.update(overrides)
    return bench.BenchmarkConfig(**settings)


def read_runs(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rows_summaries_and_resume(tmp_path):
    config = tiny_config(tmp_path)
    outcome = bench.run_benchmark(config)
    assert outcome["ran"] == [("unpruned", 0), ("l1_finetune", 0), ("scratch", 0)]

    runs = {r["row"]: r for r in read_runs(tmp_path / "runs.jsonl")}
    assert sorted(runs) == ["l1_finetune", "scratch", "unpruned"]
    for record in runs.values():
        assert record["seed"] == 0
        assert 0.0 <= record["accuracy"] <= 1.0
        assert record["tflite_bytes"] > 0 and record["latency_ms"] > 0
        assert record["config"] == config.recorded()
        assert (tmp_path / record["tflite_file"]).exists()
        assert (tmp_path / record["model_file"]).exists()
    assert runs["unpruned"]["macs_ratio"] == 1.0 and runs["unpruned"]["latency_ratio"] == 1.0
    assert runs["unpruned"]["accuracy_after_cut"] is None
    assert 0.0 <= runs["l1_finetune"]["accuracy_after_cut"] <= 1.0
    for row in ("l1_finetune", "scratch"):
        assert 0.4 <= runs[row]["macs_ratio"] <= 0.5
        assert runs[row]["tflite_bytes"] < runs["unpruned"]["tflite_bytes"]
    assert runs["scratch"]["widths"] == runs["l1_finetune"]["widths"]
    for record in runs.values():  # the full-int8 TFLite model of every row
        assert 0.0 <= record["int8_accuracy"] <= 1.0 and record["int8_latency_ratio"] > 0
        int8 = (tmp_path / record["int8_tflite_file"]).read_bytes()
        assert record["int8_tflite_bytes"] == len(int8) < 0.5 * record["tflite_bytes"]
        assert "CONV_2D" in tffp.export.tflite_ops(int8)

    with (tmp_path / "summary.csv").open() as f:
        summary = list(csv.DictReader(f))
    assert [line["row"] for line in summary] == ["unpruned", "l1_finetune", "scratch"]
    assert "| l1_finetune |" in (tmp_path / "summary.md").read_text()
    assert "Full-int8 TFLite" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "accuracy_vs_macs.png").read_bytes()[:4] == b"\x89PNG"

    again = bench.run_benchmark(config)  # resumed: every pair is done
    assert again["ran"] == []
    assert len(read_runs(tmp_path / "runs.jsonl")) == 3


def test_pending_pairs_respects_settings_and_overwrite(tmp_path):
    config = tiny_config(tmp_path, rows=("unpruned", "scratch"), seeds=(0, 1))
    done = {"row": "unpruned", "seed": 0, "config": config.recorded()}
    other = {"row": "scratch", "seed": 0, "config": {**config.recorded(), "epochs": 9}}
    bench.write_records(config.runs_path, [done, other])
    assert bench.pending_pairs(config) == [("unpruned", 1), ("scratch", 0), ("scratch", 1)]

    overwrite = tiny_config(tmp_path, rows=("unpruned",), seeds=(0,), overwrite=True)
    assert bench.pending_pairs(overwrite) == [("unpruned", 0)]
    assert read_runs(config.runs_path) == [other]  # the rerun pair's old record is gone


def test_mean_std_and_ratio():
    assert bench.mean_std([1.0, 3.0, None]) == (2.0, pytest.approx(2**0.5))
    assert bench.mean_std([0.5]) == (0.5, 0.0)
    assert bench.mean_std([None]) == (None, None)
    assert bench.ratio(1.0, 4.0) == 0.25 and bench.ratio(None, 4.0) is None


def test_dcff_row_has_the_l1_widths(tmp_path):
    config = tiny_config(tmp_path)
    compact = tffp.strip_filter_pruning(rows.get("dcff").wrap(tffp.models.fashion_cnn(), config))
    assert bench.conv_widths(compact) == bench.conv_widths(bench.compact_architecture(config))


def test_step_time_ratios_cover_every_method_row(tmp_path):
    config = tiny_config(tmp_path, rows=rows.default_names())
    result = bench.measure_step_time_ratios(config, rounds=1)
    assert list(result["ratio"]) == [
        "dcff", "dcff_steps", "dcff_paced", "dpfps", "fcf", "clustering", "clustering_no_branch"
    ]  # fmt: skip
    assert set(result["median_step_s"]) == {*result["ratio"], "plain", "dense"}
    assert result["reference"] == {"dcff": "plain", "dcff_steps": "plain",
                                   "dcff_paced": "plain", "dpfps": "dense",
                                   "fcf": "dense", "clustering": "dense",
                                   "clustering_no_branch": "dense"}  # fmt: skip
    assert all(value > 0 for value in result["ratio"].values())
    assert json.loads((tmp_path / "step_time.json").read_text()) == result


def test_registry_defaults_and_pending_rows(monkeypatch, tmp_path):
    assert rows.default_names() == (
        "unpruned",
        "l1_finetune",
        "scratch",
        "tfmot",
        "dcff",
        "dcff_steps",
        "dcff_paced",
        "dpfps",
        "fcf",
        "clustering",
        "clustering_no_branch",
    )  # the rows of the recorded tables: their results must still be found
    assert bench.BenchmarkConfig(output_dir=tmp_path).rows == rows.default_names()
    experiments = ("dcff_glorot", "dcff_t100", "dcff_paced_u10", "fcf_p1m4", "fcf_p3m1", "fcf_p2m2")
    for name in (*experiments, "tfmot_50", "tfmot_75"):
        assert name in rows.names() and not rows.get(name).default  # README experiments

    dpfps = rows.get("dpfps")
    assert isinstance(dpfps, bench.MethodRow) and dpfps.default
    config = tiny_config(tmp_path, rows=("dpfps",))
    assert "target_macs_reduction" not in dpfps.wrap_kwargs(config)  # DPFPS takes it itself
    monkeypatch.delattr(tffp, "DPFPS", raising=False)
    with pytest.raises(AttributeError, match="DPFPS"):  # looked up only when the row runs
        dpfps.method(config)
    assert rows.DPFPS_LAM == 30.0

    with pytest.raises(ValueError, match="unknown rows"):
        tiny_config(tmp_path, rows=("no_such_row",))
    with pytest.raises(ValueError, match="already taken"):
        rows.register(bench.MethodRow("dcff", lambda config: tffp.DCFF()))


def test_glorot_experiment_scales_the_wrapped_kernels(tmp_path):
    config = tiny_config(tmp_path)
    kernels = {}
    for name in ("dcff_steps", "dcff_glorot"):
        keras.utils.set_random_seed(0)
        wrapped = rows.get(name).wrap(tffp.models.fashion_cnn(), config)
        kernels[name] = {w.name: w.layer.kernel.numpy() for w in wrappers_of(wrapped)}
    assert list(kernels["dcff_glorot"]) == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    conv2 = kernels["dcff_glorot"]["conv2"] / kernels["dcff_steps"]["conv2"]  # 24 of 32 kept
    cin = bench.conv_widths(bench.compact_architecture(config))["conv1"]
    assert conv2 == pytest.approx(((cin + 32) / (cin + 24)) ** 0.5)


@pytest.fixture
def registered():
    """Registers rows for one test (``registered(row)``), then removes them."""
    added = []

    def register(row):
        added.append(rows.register(row))
        return row

    yield register
    for row in added:
        rows.ROWS.pop(row.name)


def test_a_new_method_row_is_one_entry(tmp_path, registered):
    registered(bench.MethodRow("toy", lambda config: tffp.DCFF(updates_per_epoch=2)))
    registered(
        bench.MethodRow(
            "toy_pretrained",
            lambda config: tffp.DCFF(),
            recipe=rows.pretrain_then_method(method_epochs=1),
            default=False,
        )
    )
    assert "toy" in rows.default_names() and "toy_pretrained" not in rows.default_names()
    config = tiny_config(
        tmp_path,
        rows=("toy", "toy_pretrained"),
        pretrain_epochs=0,  # toy_pretrained: 0 dense + 1 wrapped + 1 compact fine-tuning
        save_models=False,
        latency_rounds=1,
    )
    outcome = bench.run_benchmark(config)
    assert outcome["ran"] == [("toy", 0), ("toy_pretrained", 0)]
    runs = {r["row"]: r for r in read_runs(tmp_path / "runs.jsonl")}
    widths = bench.conv_widths(bench.compact_architecture(config))
    for record in runs.values():
        assert record["config"] == config.recorded() and record["widths"] == widths
        assert 0.4 <= record["macs_ratio"] <= 0.5 and 0.0 <= record["accuracy"] <= 1.0
        assert record["step_time_wrapped_s"] > 0 and (tmp_path / record["tflite_file"]).exists()
    assert runs["toy"]["accuracy_after_cut"] is None
    assert 0.0 <= runs["toy_pretrained"]["accuracy_after_cut"] <= 1.0  # right after the strip
    assert [line["row"] for line in outcome["summary"]] == ["toy", "toy_pretrained"]

    with pytest.raises(ValueError, match="pretrain_then_method"):  # 2 + 1 > 2 epochs
        tiny_config(tmp_path, rows=("toy_pretrained",), pretrain_epochs=2)


def test_tfmot_row_runs_in_the_child_process(tmp_path):
    config = tiny_config(tmp_path, rows=("tfmot",), epochs=1, pretrain_epochs=0, latency_rounds=1)
    assert "tensorflow_model_optimization" not in sys.modules
    outcome = bench.run_benchmark(config)
    assert outcome["ran"] == [("tfmot", 0)]
    (record,) = read_runs(tmp_path / "runs.jsonl")
    assert "tensorflow_model_optimization" not in sys.modules  # tfmot stayed in the child
    assert 0.0 <= record["accuracy"] <= 1.0 and record["macs_ratio"] == 1.0
    sparsity = 1.0 - (
        tffp.profile(bench.compact_architecture(config)).trainable_params
        / tffp.profile(tffp.models.fashion_cnn()).trainable_params
    )
    assert record["target_sparsity"] == pytest.approx(sparsity)
    assert record["tflite_file"] == "tflite/tfmot_seed0.tflite" and record["latency_ms"] > 0
    assert (tmp_path / record["model_file"]).exists()


def _imports(path: Path) -> set[str]:
    """Top-level module names ``path`` imports (absolute imports, anywhere in the file)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.add(node.module)
    return found


def test_tfmot_child_shares_only_the_keras_free_timer():
    """tools/tfmot_baseline.py imports no tf_filterprune and, of the harness, bench.timing,
    which (like bench/__init__.py) imports the standard library only."""
    child = _imports(TOOLS / "tfmot_baseline.py")
    assert not any(name.split(".")[0] == "tf_filterprune" for name in child)
    assert {name for name in child if name.split(".")[0] == "bench"} == {"bench.timing"}
    for module in ("__init__.py", "timing.py"):
        names = {name.split(".")[0] for name in _imports(TOOLS / "bench" / module)}
        assert names <= sys.stdlib_module_names | {"__future__"}, (module, names)


def test_demo_runs_end_to_end_with_dcff(tmp_path):
    """The README's first command, on a small subset: DCFF -> strip -> export -> report."""
    out = tmp_path / "demo"
    command = [sys.executable, str(TOOLS / "demo.py"), "--epochs", "1", "--train_limit", "1024"]
    command += ["--bn_steps", "2", "--latency_rounds", "1", "--output_dir", str(out)]
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "dcff"
    original, compact = report["rows"]["original"], report["rows"]["compact"]
    assert compact["macs"] <= 0.5 * original["macs"]
    assert compact["tflite_bytes"] < 0.6 * original["tflite_bytes"]
    assert all(width % 16 == 0 for width in report["widths"].values())
    assert report["widths"]["conv1"] == 32  # kept whole by default
    assert (out / "compact.tflite").exists() and (out / "compact_saved_model").is_dir()


def test_ignored_layers_are_kept_whole_and_recorded(tmp_path):
    plain = tiny_config(tmp_path, round_to=16)
    kept = tiny_config(tmp_path, round_to=16, ignored_layers=("conv1",))
    assert "ignored_layers" not in plain.recorded()  # older records still match
    assert kept.recorded()["ignored_layers"] == ["conv1"]
    assert not bench.same_settings({"config": plain.recorded()}, kept)

    widths = bench.conv_widths(bench.compact_architecture(kept))
    assert widths == {"conv1": 32, "conv2": 16, "conv3": 64, "conv4": 32, "conv5": 112}
    dcff = tffp.strip_filter_pruning(rows.get("dcff_paced").wrap(tffp.models.fashion_cnn(), kept))
    assert bench.conv_widths(dcff) == widths
    assert "conv1 kept whole" in bench.settings_text(kept)


def test_two_stage_fcf_row_pretrains_gates_strips_and_finetunes(tmp_path):
    config = tiny_config(tmp_path, rows=("fcf_p1m4",), epochs=3, pretrain_epochs=1)
    bench.run_benchmark(config)
    (record,) = read_runs(tmp_path / "runs.jsonl")
    l1 = bench.conv_widths(bench.compact_architecture(config))
    assert record["widths"] == l1
    assert 0.0 <= record["accuracy_after_cut"] <= 1.0 and 0.0 <= record["accuracy"] <= 1.0
    assert record["strip_difference"] is not None and record["step_time_ratio"] > 0


def test_resnet20_model_pads_the_images_and_prunes_only_inside_blocks(tmp_path):
    config = tiny_config(tmp_path, model="resnet20", round_to=8, rows=("unpruned", "dpfps"))
    assert config.recorded()["model"] == "resnet20"
    assert "model" not in tiny_config(tmp_path).recorded()  # older records still match
    data = bench.load_data(config)
    assert tuple(data.bn_batches[0].shape[1:]) == (32, 32, 1)
    compact = bench.compact_architecture(config)
    widths = bench.conv_widths(compact)
    dense = bench.conv_widths(tffp.models.resnet20(input_shape=(32, 32, 1)))
    cut = {name for name in widths if widths[name] != dense[name]}
    assert cut and all(name.endswith("_conv1") and name != "conv1" for name in cut), cut
    ratio = (
        tffp.profile(compact).total_macs / tffp.profile(bench.reference_model(config)).total_macs
    )
    assert ratio <= 0.5
    wrapped = rows.get("dcff_paced").wrap(bench.reference_model(config), config)
    assert bench.conv_widths(tffp.strip_filter_pruning(wrapped)) == widths
    with pytest.raises(ValueError, match="tfmot baseline rebuilds fashion_cnn"):
        tiny_config(tmp_path, model="resnet20", rows=("tfmot",))
    with pytest.raises(ValueError, match="unknown model"):
        tiny_config(tmp_path, model="resnet50")
