"""Every method under ``MultiWorkerMirroredStrategy``: two local workers train, checkpoint, strip.

``tools/multi_worker.py --local_workers 2`` starts two worker processes on
127.0.0.1 (``TF_CONFIG``); each wraps a small CNN for DCFF, FCF, DPFPS and
clustering, trains it in a custom loop that drives ``UpdateFilterPruning`` as
``fit`` does (Keras 3's ``fit`` fails under this strategy: keras-team/keras#20585),
saves a checkpoint after every epoch and strips. The workers agree on the loss
(an all-reduced value) and on the compact widths; a run killed after its first
checkpoint resumes to the uninterrupted run's compact model on the chief.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "multi_worker.py"
METHODS = ("dcff", "fcf", "dpfps", "clustering")


def run_tool(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(TOOL), "--local_workers=2", f"--workdir={workdir}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=400)


def records(workdir: Path, method: str) -> list[dict]:
    return [json.loads((workdir / method / f"worker{i}.json").read_text()) for i in (0, 1)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("multi_worker")
    done = run_tool(workdir, "--timeout=300")
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir


@pytest.mark.parametrize("method", METHODS)
def test_two_workers_train_checkpoint_and_strip(uninterrupted, method):
    chief, other = records(uninterrupted, method)
    assert chief["replicas"] == other["replicas"] == 2
    assert chief["loss"] == other["loss"] and len(chief["loss"]) == 2
    assert chief["widths"] == other["widths"]
    assert all(w < full for w, full in zip(chief["widths"], (8, 16, 16), strict=True))
    if method in ("dcff", "clustering"):  # exact strips (FCF and DPFPS report theirs)
        assert chief["strip_max_abs_diff"] <= 1e-4
    assert (uninterrupted / method / "compact.keras").exists()
    assert list((uninterrupted / method / "ckpt").glob("*.index"))
    assert not list((uninterrupted / method).glob("scratch_worker*"))


def test_a_killed_run_resumes_from_its_checkpoint(uninterrupted, tmp_path):
    methods = "--methods=fcf"  # its gates, duals and penalty schedule are checkpointed state
    killed = run_tool(tmp_path, methods, "--kill_after_epoch=1", "--timeout=300")
    assert killed.returncode != 0
    assert "worker exit codes [3, 3]" in killed.stderr.splitlines()[-1]
    resumed = run_tool(tmp_path, methods, "--timeout=300")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    chief, reference = records(tmp_path, "fcf")[0], records(uninterrupted, "fcf")[0]
    assert chief["resumed_at_epoch"] == 1
    assert chief["loss"] == reference["loss"][1:]
    assert chief["widths"] == reference["widths"]
    assert chief["trainable_weights_sha256"] == reference["trainable_weights_sha256"]


def test_bad_flags_exit_with_one_line():
    done = subprocess.run(
        [sys.executable, str(TOOL), "--workdir=/tmp/x", "--methods=nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "unknown ['nope']" in done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr
