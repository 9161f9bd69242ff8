"""The command-line tools (tools/<name>.py = tf_filterprune/cli/<name>.py) on a tiny model.

Every tool runs in a subprocess (about 5 s of TensorFlow import each), so the cases of
one test start together and are awaited together.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from absl import flags
from helpers import fashion_mnist_present, finish_processes
from keras import layers as L

import tf_filterprune as tffp
from tf_filterprune.cli.evaluate import prepare_tool
from tf_filterprune.methods.base import wrappers_of

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"
NAMES = ("strip", "export", "evaluate", "profile")
TIMEOUT = 300


needs_fashion_mnist = pytest.mark.skipif(
    not fashion_mnist_present(), reason="Fashion-MNIST IDX files are not installed"
)


def tiny_model() -> keras.Model:
    """Three 3x3 convs with BN on 28x28x1 images, ten logits."""
    inputs = keras.Input((28, 28, 1))
    x = inputs
    for i, width in enumerate((8, 16, 16), start=1):
        x = L.Conv2D(width, 3, padding="same", name=f"conv{i}")(x)
        x = L.BatchNormalization(name=f"bn{i}")(x)
        x = L.ReLU(name=f"relu{i}")(x)
        if i == 2:
            x = L.MaxPooling2D(name="pool")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, L.Dense(10, name="fc")(x), name="tiny")


COMPACT_WIDTHS = {"conv1": 4, "conv2": 8, "conv3": 8}  # DCFF(keep_ratio=0.5)


def save_models(folder: Path) -> dict[str, Path]:
    """``original.keras`` (plain) and ``wrapped.keras`` (DCFF at half the filters)."""
    model = tiny_model()
    paths = {"original": folder / "original.keras", "wrapped": folder / "wrapped.keras"}
    model.save(paths["original"])
    tffp.prune_filters(model, tffp.DCFF(keep_ratio=0.5)).save(paths["wrapped"])
    return paths


def start(tool: str, *args: object, code: str | None = None) -> subprocess.Popen:
    """Starts ``tools/<tool>.py args`` (or ``python -c code args``) in the repository."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
    head = ["-c", code] if code is not None else [str(TOOLS / f"{tool}.py")]
    return subprocess.Popen(
        [sys.executable, *head, *map(str, args)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(*procs: subprocess.Popen) -> list[subprocess.CompletedProcess]:
    """Waits for every process; their outputs."""
    return finish_processes(*procs, timeout=TIMEOUT)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, (result.args, result.stdout[-2000:], result.stderr[-3000:])
    return result.stdout


def assert_one_line_error(result: subprocess.CompletedProcess, tool: str, fragment: str) -> None:
    """Non-zero exit, no traceback, and the last stderr line is ``<tool>: error: ...``."""
    stderr = result.stderr.strip()
    assert result.returncode != 0, (result.args, result.stdout[-1000:], stderr[-2000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    last = stderr.splitlines()[-1] if stderr else ""
    assert last.startswith(f"{tool}: error: "), (result.args, stderr[-2000:])
    assert fragment in last, (fragment, last)
    assert sum(f"{tool}: error:" in line for line in stderr.splitlines()) == 1, stderr


def tool_help(name: str) -> tuple[dict[str, str], str]:
    """A tool's ``{flag: help}`` and the flag list its ``--help`` prints (a fresh FlagValues).

    ``--help`` prints the docstring, then ``FLAGS.main_module_help()``: the key flags of
    ``sys.argv[0]``, which ``prepare_tool`` registers.
    """
    module = importlib.import_module(f"tf_filterprune.cli.{name}")
    values = flags.FlagValues()
    prepare_tool(module.define_flags, None, values)
    return {flag: values[flag].help for flag in values}, values.module_help(sys.argv[0])


def _words(text: str) -> str:
    return " ".join(text.split())


def assert_explains_every_flag(name: str, help_output: str) -> None:
    defined, _ = tool_help(name)
    text = _words(help_output)
    assert len(defined) >= 4, defined
    for flag, help_text in defined.items():
        assert len(help_text) > 20, (name, flag, help_text)
        assert f"--{flag}:" in text or f"--[no]{flag}:" in text, (name, flag)  # [no]: a bool
        assert _words(help_text)[:40] in text, (name, flag, help_text)


def test_help_lists_and_explains_every_flag():
    for name in NAMES:  # in this process: what --help lists after the docstring
        assert_explains_every_flag(name, tool_help(name)[1])
    strip, bench = finish(
        start("strip", "--help"),
        start("", "--help", code="from tf_filterprune.cli.benchmark import run; run()"),
    )
    text = ok(strip)  # the real --help: exit 0, the module docstring, every flag
    assert text.startswith("tffp-strip: a model saved while wrapped") and "Usage:" in text
    assert_explains_every_flag("strip", text)
    bench_help = ok(bench)  # the harness's own flags, through the console-script entry
    assert "--macs_reduction" in bench_help and "--rows" in bench_help, bench_help[:2000]


def test_console_scripts_point_at_run_functions():
    tree = ast.parse((ROOT / "setup.py").read_text())
    (call,) = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup"
    ]
    (entry_points,) = [ast.literal_eval(k.value) for k in call.keywords if k.arg == "entry_points"]
    scripts = dict(
        (part.strip() for part in line.split("=")) for line in entry_points["console_scripts"]
    )
    expected = {f"tffp-{n}" for n in (*NAMES, "benchmark", "train-prune")}
    assert set(scripts) == expected
    for script, target in scripts.items():
        module_name, function = target.split(":")
        assert function == "run", script
        if (
            module_name.endswith("train_prune")
            and not (ROOT / "tf_filterprune/cli/train_prune.py").exists()
        ):
            continue  # written next to these tools; checked once it is there
        assert callable(getattr(importlib.import_module(module_name), function)), script


@needs_fashion_mnist
def test_strip_export_evaluate_profile_on_a_tiny_model(tmp_path):
    paths = save_models(tmp_path)
    compact, report = tmp_path / "out" / "compact.keras", tmp_path / "report" / "profile.md"
    (strip,) = finish(
        start(
            "strip", "--input", paths["wrapped"], "--output", compact,
            "--dataset", "fashion_mnist", "--split", "train", "--calibration_steps", "2",
            "--batch_size", "32",
        )
    )  # fmt: skip
    text = ok(strip)
    diff = float(re.search(r"max \|wrapped - compact\| = (\S+) on 16 examples", text).group(1))
    assert diff <= 1e-4, text
    assert "re-estimated on 2 batches of fashion_mnist train" in text, text
    assert "conv2: 16 -> 8 filters" in text, text
    model = keras.models.load_model(compact)
    assert not wrappers_of(model)
    assert {name: model.get_layer(name).filters for name in COMPACT_WIDTHS} == COMPACT_WIDTHS

    float_tflite, int8_tflite = tmp_path / "compact.tflite", tmp_path / "int8" / "compact.tflite"
    saved_model = tmp_path / "compact_saved_model"
    mock_json = tmp_path / "mock.json"
    mock_tfds = (
        "import sys, tensorflow_datasets as tfds\n"
        "from tf_filterprune.cli.evaluate import run\n"
        "sys.argv[0] = 'evaluate'\n"
        "with tfds.testing.mock_data(num_examples=24):\n"
        "    run()\n"
    )
    float_export, int8_export, profile, mock = finish(
        start("export", "--input", compact, "--saved_model", saved_model, "--tflite", float_tflite),
        start(
            "export", "--input", compact, "--tflite", int8_tflite, "--quantization", "int8",
            "--representative_dataset", "fashion_mnist", "--num_examples", "16",
        ),
        start(
            "profile", "--original", paths["original"], "--compact", compact,
            "--output_md", report,
        ),
        start(
            "", "--model", compact, "--dataset", "mnist", "--split", "test", "--limit", "16",
            "--batch_size", "8", "--calibration_steps", "2", "--output_json", mock_json,
            code=mock_tfds,
        ),
    )  # fmt: skip
    assert "CONV_2D x3" in ok(float_export) and (saved_model / "saved_model.pb").is_file()
    assert "int8" in ok(int8_export)
    assert tffp.export.tflite_ops(int8_tflite).count("CONV_2D") == 3
    assert _conv_dtypes(int8_tflite) == [(np.int8, np.int8)] * 3
    assert _conv_dtypes(float_tflite) == [(np.float32, np.float32)] * 3

    ok(profile)
    markdown = report.read_text()
    assert "| MACs |" in markdown and "| params |" in markdown
    for name, width in COMPACT_WIDTHS.items():
        full = tiny_model().get_layer(name).filters
        assert re.search(rf"\| {name} \| Conv2D \| {full} \| {width} \| 0\.500 \|", markdown), name
    chart = tmp_path / "report" / "profile_widths.png"
    if importlib.util.find_spec("matplotlib") is not None:
        assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert "BN re-estimated" in ok(mock)
    mock_results = json.loads(mock_json.read_text())["results"]
    assert mock_results[0]["examples"] == 16 and mock_results[0]["bn_recalibrated"]

    accuracy_json = tmp_path / "accuracy.json"
    (evaluate,) = finish(
        start(
            "evaluate", "--model", f"{compact},{float_tflite},{int8_tflite}",
            "--dataset", "fashion_mnist", "--limit", "64", "--batch_size", "32",
            "--output_json", accuracy_json,
        )
    )  # fmt: skip
    assert "accuracy" in ok(evaluate)
    results = json.loads(accuracy_json.read_text())["results"]
    assert [r["examples"] for r in results] == [64, 64, 64]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in results)
    assert abs(results[0]["accuracy"] - results[1]["accuracy"]) <= 2 / 64  # keras vs float TFLite


def _conv_dtypes(path: Path) -> list[tuple[type, type]]:
    """(input, kernel) dtypes of every CONV_2D of a TFLite model."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    dtypes = {d["index"]: d["dtype"] for d in interpreter.get_tensor_details()}
    return [
        (dtypes[op["inputs"][0]], dtypes[op["inputs"][1]])
        for op in interpreter._get_ops_details()
        if op["op_name"] == "CONV_2D"
    ]


def test_bad_flags_and_inputs_fail_on_one_line(tmp_path):
    paths = save_models(tmp_path)
    original, wrapped = paths["original"], paths["wrapped"]
    inexact = tmp_path / "dpfps.keras"  # untrained DPFPS: its removed channels are not zero
    tffp.prune_filters(tiny_model(), tffp.DPFPS(target_macs_reduction=0.5)).save(inexact)
    out = tmp_path / "never.keras"
    cases = [
        ("strip", ["--input", tmp_path / "missing.keras", "--output", out], "no such file"),
        ("strip", ["--input", wrapped, "--output", out, "--tolerance", "-1"], "--tolerance"),
        ("strip", ["--input", original, "--output", out], "no filter-pruning wrappers"),
        ("strip", ["--input", inexact, "--output", out], "is above --tolerance 0.0001"),
        ("export", ["--input", original, "--tflite", tmp_path / "x.tflite", "--quantization", "int4"], "int4"),
        ("export", ["--input", original, "--tflite", tmp_path / "x.tflite", "--quantization", "int8"],
         "--representative_dataset"),
        ("export", ["--input", wrapped, "--tflite", tmp_path / "x.tflite"], "strip it first"),
        ("evaluate", ["--model", original, "--dataset", "no_such_dataset_xyz"], "no_such_dataset_xyz"),
        ("evaluate", ["--model", original, "--split", "validation"], "split"),
    ]  # fmt: skip
    results = finish(*(start(tool, *args) for tool, args, _ in cases))
    for (tool, _, fragment), result in zip(cases, results, strict=True):
        assert_one_line_error(result, tool, fragment)
    assert not out.exists()
