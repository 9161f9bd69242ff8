"""tffp-train-prune (tools/train_prune.py): resuming after a stop, --help, one-line errors.

The runs happen in this process (``train_prune.run_in_process``); only the exit codes
and the stderr lines need subprocesses, started together and awaited together. The
end-to-end run of every config of configs/ is in tests/test_configs.py.
"""

from __future__ import annotations

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

import tf_filterprune as tffp
from tf_filterprune.cli import train_prune
from tf_filterprune.cli.common import CliError, UsageError

ROOT = Path(__file__).resolve().parents[1]
FASHION = ROOT / "configs" / "fashion"

TIMEOUT = 300

needs_fashion_mnist = pytest.mark.skipif(
    not fashion_mnist_present(), reason="Fashion-MNIST IDX files are not installed"
)


def start(*args: object) -> subprocess.Popen:
    """Starts ``tools/train_prune.py args`` (the tests of tests/test_cli_tools.py do the same)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
    return subprocess.Popen(
        [sys.executable, str(ROOT / "tools" / "train_prune.py"), *map(str, args)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(*procs: subprocess.Popen) -> list[subprocess.CompletedProcess]:
    """Waits for every process; their outputs."""
    return finish_processes(*procs, timeout=TIMEOUT)


def assert_one_line_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    """Non-zero exit, no traceback, one ``train_prune: error: ...`` line, the last one."""
    stderr = result.stderr.strip()
    assert result.returncode != 0, (result.args, result.stdout[-1000:], stderr[-2000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    last = stderr.splitlines()[-1] if stderr else ""
    assert last.startswith("train_prune: error: "), (result.args, stderr[-2000:])
    assert fragment in last, (fragment, last)
    assert sum("train_prune: error:" in line for line in stderr.splitlines()) == 1, stderr


def quick(config: Path, workdir: Path, *extra: str) -> list[str]:
    """A 3-epoch run of 3 steps of 32 examples, evaluated on one batch."""
    return [
        f"--config={config}", f"--workdir={workdir}", "--config.training.epochs=3",
        "--config.steps_per_epoch=3", "--config.training.batch_size=32",
        "--config.eval_steps=1", "--config.eval_batch_size=64", "--config.bn_steps=2",
        "--verbose=0", *extra,
    ]  # fmt: skip


def saved_weights(workdir: Path) -> list[np.ndarray]:
    """Every variable of the run's wrapped model (the method's state included)."""
    with tffp.prune_scope():
        model = keras.models.load_model(workdir / "wrapped.keras", compile=False)
    return [np.asarray(w) for w in model.get_weights()]


@needs_fashion_mnist
def test_a_stopped_run_resumes_to_the_uninterrupted_result(tmp_path, capsys):
    """Stopped after epoch 1 (as a kill would), rerun twice: the uninterrupted weights.

    FCF updates its state after every step (gates, duals, the penalty rho, the gates'
    decision), the cosine learning rate reads the optimizer's step count, and Adam has
    its moments: what a resume must restore besides the weights. (DPFPS, whose shrink
    reads the learning rate every step, passes the same test: 35 s more.)
    """
    config = FASHION / "fcf.py"
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    expected = train_prune.run_in_process(quick(config, straight))
    with pytest.raises(train_prune.Interrupted, match="stopped after epoch 1"):
        train_prune.run_in_process(quick(config, stopped, "--stop_after_epoch=1"))
    assert json.loads((stopped / "checkpoint" / "progress.json").read_text())["epochs_done"] == 1
    assert not (stopped / "result.json").exists()
    with pytest.raises(train_prune.Interrupted, match="stopped after epoch 2"):
        train_prune.run_in_process(quick(config, stopped, "--stop_after_epoch=2"))
    capsys.readouterr()
    resumed = train_prune.run_in_process(quick(config, stopped))
    assert "resuming" in capsys.readouterr().out
    assert resumed["accuracy"] == expected["accuracy"]
    assert resumed["widths"] == expected["widths"]
    for a, b in zip(saved_weights(straight), saved_weights(stopped), strict=True):
        np.testing.assert_array_equal(a, b)
    # a different config in the same workdir is refused, the same one finishes again
    with pytest.raises(UsageError, match="holds a run of another config"):
        train_prune.run_in_process(quick(config, stopped, "--config.training.lr=0.1"))


@needs_fashion_mnist
def test_help_and_bad_inputs_exit_with_one_line(tmp_path):
    workdir = tmp_path / "run"
    dcff = FASHION / "dcff.py"
    base = ["--config", dcff, "--workdir", workdir]
    cases = [
        ([*base, "--config.method.name=Magic"], "unknown method 'Magic'"),
        ([*base, "--config.pruning.target_macs_reduction=1.5"], "must be in (0, 1)"),
        ([*base, "--config.training.no_such_field=3"], "no field 'no_such_field'"),
        (["--config", tmp_path / "missing.py", "--workdir", workdir], "no such config file"),
        (
            [
                "--config", ROOT / "configs/dpfps/resnet50_imagenet.py", "--workdir", workdir,
                "--data_dir", tmp_path / "no_tfds_data",
            ],
            "imagenet2012: not prepared",
        ),
    ]  # fmt: skip
    runs = finish(start("--help"), *(start(*a) for a, _ in cases))
    assert runs[0].returncode == 0, runs[0].stderr[-2000:]
    text = runs[0].stdout
    assert text.startswith("tffp-train-prune: train a model") and "Usage:" in text
    words = " ".join(text.split())
    values = flags.FlagValues()
    train_prune.define_flags(values)
    assert len(list(values)) == 6
    for name in values:  # every flag listed with its help (booleans as --[no]name)
        assert f"--{name}:" in words or f"--[no]{name}:" in words, name
        assert " ".join(values[name].help.split())[:40] in words, name
    for (_, fragment), result in zip(cases, runs[1:], strict=True):
        assert_one_line_error(result, fragment)
    assert not (workdir / "result.json").exists()


@pytest.mark.parametrize(
    "config, extra, error, fragment",
    [
        ("fashion/dcff.py", ["--config.dataset.name=no_such_data"], CliError, "unknown dataset"),
        ("fashion/dcff.py", ["--config.model.name=resnet9"], CliError, "unknown model 'resnet9'"),
        ("dcff/vgg16_cifar10.py", ["--config.pruning.prune_rates=(0.5, 1.5)"], UsageError,
         "prune_rates[1] must be in [0, 1), got 1.5"),
        ("fashion/dcff.py", ["--config.training.epochs=many"], flags.IllegalFlagValueError,
         "training.epochs"),
        ("fashion/dcff.py", ["--workdir="], UsageError, "--workdir is required"),
    ],
)  # fmt: skip
def test_bad_configs_raise_in_process(tmp_path, config, extra, error, fragment):
    """Checked before any model is built or data read: fast, and nothing is written."""
    args = [f"--config={ROOT / 'configs' / config}", f"--workdir={tmp_path / 'run'}", *extra]
    with pytest.raises(error, match=re.escape(fragment)):
        train_prune.run_in_process(args)
    assert not (tmp_path / "run" / "result.json").exists()
