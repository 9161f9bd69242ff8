"""Orchestrates the two sides (each a subprocess in its own venv) and writes the outputs."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from peers.config import (
    CnnConfig,
    ResNetConfig,
    ResNetResult,
    cnn_markdown,
    ours_summary,
    pending_pairs,
    read_records,
    resnet_markdown,
    summarize,
)

TOOLS = Path(__file__).resolve().parents[1]
REPO = TOOLS.parent
RESULTS_JSON = "peers.json"
RESULTS_MD = "peers.md"
RUNS_JSONL = "runs.jsonl"
NOISE = ("I0000 ", "W0000 ", "WARNING: All log messages", "To enable the following")
"""TensorFlow's start-up chatter, not echoed (kept in the tail shown on failure)."""


class SideError(RuntimeError):
    """A side's subprocess failed; the message has the end of its output."""


# Runs ``module`` as ``__main__`` with ``tools/`` appended to ``sys.path``, not put first
# (as ``PYTHONPATH`` or ``-m`` would): the scripts there (``tools/profile.py``) must not
# shadow the standard library's modules of the same name (torch imports ``cProfile``).
_LAUNCH = (
    "import runpy, sys; sys.path.append(sys.argv[1]); module = sys.argv[2]; "
    "del sys.argv[1:3]; runpy.run_module(module, run_name='__main__', alter_sys=True)"
)


def call_side(
    python: str, module: str, command: str, request: dict[str, Any], work_dir: Path, log=None
) -> dict[str, Any]:
    """Runs ``module command`` in ``python`` with ``request``; returns its JSON response.

    The subprocess's output goes to ``log`` (a file object) or this process's stdout.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    handle, request_path = tempfile.mkstemp(prefix=f"{command}_", suffix=".json", dir=work_dir)
    os.close(handle)
    response_path = request_path.replace(".json", ".out.json")
    Path(request_path).write_text(json.dumps(request))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    command_line = [python, "-c", _LAUNCH, str(TOOLS), module, command, "--request", request_path]
    command_line += ["--response", response_path]
    started = time.time()
    out = log or sys.stdout
    tail: collections.deque[str] = collections.deque(maxlen=30)
    with subprocess.Popen(
        command_line,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    ) as process:
        for line in process.stdout:
            tail.append(line.rstrip("\n"))
            if not line.startswith(NOISE):
                out.write(line)
                out.flush()
    if process.returncode != 0 or not Path(response_path).exists():
        raise SideError(
            f"{module} {command} failed (exit {process.returncode}):\n" + "\n".join(tail)
        )
    response = json.loads(Path(response_path).read_text())
    response["_wall_s"] = time.time() - started
    for path in (request_path, response_path):
        Path(path).unlink(missing_ok=True)
    return response


def load_results(output_dir: Path) -> dict[str, Any]:
    path = output_dir / RESULTS_JSON
    return json.loads(path.read_text()) if path.exists() else {}


def machine_note() -> dict[str, Any]:
    return {
        "loadavg": [round(v, 2) for v in os.getloadavg()],
        "cpus": os.cpu_count(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def run_resnet(
    config: ResNetConfig, keras_python: str, torch_python: str, work_dir: Path
) -> dict[str, Any]:
    """Part (a): ``rounds`` interleaved rounds, one subprocess per side per round."""
    result = ResNetResult()
    notes = {"start": machine_note(), "rounds": []}
    for round_index in range(config.rounds):
        # alternate which side goes first, so neither always runs on a fresher machine
        sides = [
            ("keras", keras_python, "peers.keras_side"),
            ("torch", torch_python, "peers.torch_side"),
        ]
        if round_index % 2:
            sides.reverse()
        for side, python, module in sides:
            print(f"== (a) round {round_index + 1}/{config.rounds}: {side}", flush=True)
            response = call_side(python, module, "resnet50", {"config": vars(config)}, work_dir)
            seconds = response["seconds"]
            if side == "keras":
                result.keras_seconds.extend(seconds)
                result.keras = response
            else:
                result.torch_seconds.extend(seconds)
                result.torch = response
            print(f"   {side}: {', '.join(f'{s:.3f}' for s in seconds)} s", flush=True)
        notes["rounds"].append(machine_note())
    summary = result.summary()
    summary.update(settings=vars(config), machine=notes)
    return summary


def prepare(config: CnnConfig, keras_python: str, work_dir: Path) -> dict[str, Any]:
    """Our widths, the CNN's layers and the recorded example orders (cached per settings)."""
    key = json.dumps({"config": config.recorded(), "seeds": list(config.seeds)}, sort_keys=True)
    cache = work_dir / "prepared.json"
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("_key") == key and all(
            Path(info["path"]).exists() for info in cached["orders"].values()
        ):
            return cached
    print("== (b) Keras side: widths, layers, example orders", flush=True)
    request = {
        "config": config.to_json(),
        "orders_dir": str(work_dir / "orders" / _digest(key)),
    }
    prepared = call_side(keras_python, "peers.keras_side", "prepare", request, work_dir)
    prepared["_key"] = key
    cache.write_text(json.dumps(prepared, indent=2, sort_keys=True))
    return prepared


def _shown(path: Path) -> str:
    """``path`` relative to the repository when inside it."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _digest(text: str) -> str:
    import hashlib

    return hashlib.sha1(text.encode()).hexdigest()[:12]


def run_cnn(
    config: CnnConfig,
    keras_python: str,
    torch_python: str,
    output_dir: Path,
    work_dir: Path,
    overwrite: bool = False,
    progress=None,
) -> dict[str, Any]:
    """Part (b): the pending (pruner, seed) pairs, one torch subprocess per seed.

    ``progress(result)``, if given, is called with the result so far after every seed.
    """
    runs_path = output_dir / RUNS_JSONL
    pending = pending_pairs(read_records(runs_path), config, overwrite)
    print(f"== (b) pending (seed: pruners): {pending}", flush=True)
    prepared = prepare(config, keras_python, work_dir) if pending else None
    if prepared is None:
        cache = work_dir / "prepared.json"
        prepared = json.loads(cache.read_text()) if cache.exists() else None
    for seed, pruners in pending.items():
        print(f"== (b) seed {seed}: {', '.join(pruners)}", flush=True)
        request = {
            "config": config.to_json(),
            "prepared": prepared,
            "seed": seed,
            "pruners": pruners,
            "runs_path": str(runs_path),
            "checkpoint_dir": str(work_dir / "checkpoints"),
        }
        call_side(torch_python, "peers.torch_side", "cnn", request, work_dir)
        if progress is not None:
            progress(cnn_result(config, runs_path, prepared))
    return cnn_result(config, runs_path, prepared)


def cnn_result(
    config: CnnConfig, runs_path: Path, prepared: dict[str, Any] | None
) -> dict[str, Any]:
    """Part (b)'s entry of ``peers.json``: the summary of the records so far."""
    records = read_records(runs_path)
    summary = summarize(records, config)
    result: dict[str, Any] = {"settings": config.recorded(), "summary": summary}
    if prepared is not None:
        result["ours"] = {
            key: prepared[key] for key in ("dense_widths", "target_widths", "dense", "compact")
        }
        result["port_check"] = {
            "keras_layers": [spec["name"] for spec in prepared["layers"]],
            "bn": prepared["bn"],
            "orders": {
                seed: {k: v for k, v in info.items() if k != "path"}
                for seed, info in prepared["orders"].items()
            },
        }
    return result


def write_outputs(
    output_dir: Path,
    results: dict[str, Any],
    cnn_config: CnnConfig | None,
    resnet_config: ResNetConfig | None,
    ours_runs: Path | None,
) -> str:
    """Writes ``peers.json`` and ``peers.md``; returns the markdown."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / RESULTS_JSON).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    parts = ["# Peers measured in one run (`tools/peers.py`)", ""]
    if "resnet50" in results:
        resnet = results["resnet50"]
        config = resnet_config or ResNetConfig(**resnet["settings"])
        parts += [
            "## (a) Pruning ResNet-50 (224x224, weights=None)",
            "",
            f"{config.rounds} interleaved rounds (one fresh subprocess per side per round, "
            f"one untimed warm-up call each, then {config.repeats} timed), "
            f"{config.threads} thread{'s' if config.threads > 1 else ''}. Load average at the start: "
            f"{resnet['machine']['start']['loadavg']}.",
            "",
            resnet_markdown(resnet, config),
            "",
            f"tf_filterprune / Torch-Pruning (median seconds): **{resnet['keras_over_torch']:.2f}**."
            " MACs are each library's own count (ours: `tffp.profile`; Torch-Pruning: "
            "`tp.utils.count_ops_and_params`).",
            "",
        ]
    if "cnn" in results:
        cnn = results["cnn"]
        config = cnn_config or CnnConfig.from_json(cnn["settings"])
        ours = ours_summary(read_records(ours_runs), config) if ours_runs else []
        settings = cnn["settings"]
        widths = cnn.get("ours", {}).get("target_widths", {})
        parts += [
            "## (b) Torch-Pruning's pruners on the reference CNN, our protocol",
            "",
            "PyTorch port of `tffp.models.fashion_cnn` (checked layer by layer, parameter "
            "counts equal), pretrained "
            f"{settings['pretrain_epochs']} epochs, pruned to our widths "
            f"({', '.join(f'{k}={v}' for k, v in widths.items())}: "
            f"`prune_once(fashion_cnn(), 'l1', target_macs_reduction="
            f"{settings['macs_reduction']}, round_to={settings['round_to']}, "
            f"ignored_layers={tuple(settings['ignored_layers'])})`), fine-tuned "
            f"{settings['finetune_epochs']} epochs; Adam lr {settings['lr']} with a cosine "
            f"decay to 1% per phase, batch {settings['batch_size']}, the examples in the "
            "order our `l1_finetune` row sees them (recorded from its tf.data pipeline), BN "
            f"statistics re-estimated on the first {settings['bn_steps']} unshuffled training "
            "batches before every evaluation. Every pruner starts from the same pretrained "
            "model of its seed. Mean ± std over seeds; train_limit "
            f"{settings['train_limit']}, test_limit {settings['test_limit']}.",
            "",
            cnn_markdown(cnn["summary"], ours),
            "",
        ]
        if ours:
            parts += [
                f"Our rows are read from `{_shown(ours_runs)}` (same settings), not rerun here.",
                "",
            ]
    text = "\n".join(parts)
    (output_dir / RESULTS_MD).write_text(text)
    return text
