#!/usr/bin/env bash
# Sets up a SEPARATE virtual environment, .venv-peers, with the peer libraries that
# tools/peers.py measures against (PyTorch CPU-run, torchvision, Torch-Pruning, numpy,
# absl-py). It never touches .venv (tf_filterprune's own environment).
# Usage: bash tools/setup_peers.sh     (idempotent; re-run after pulling)
#
# PyTorch: on x86_64 with Python 3.11 this machine's pip takes torch 2.14.1 and
# torchvision 0.29.1 from local disk (a CUDA build, ~5.5 GB in the venv, run on the
# CPU here); on aarch64 torch 2.9.1 / torchvision 0.24.1 (a CPU build). Plain `torch`
# would download a CUDA build of several GB instead. Override with TORCH_SPEC.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
VENV="${VENV:-.venv-peers}"

if [ "$VENV" = ".venv" ]; then
  echo "!! refusing to install the peers into .venv" >&2
  exit 2
fi

if [ -z "${TORCH_SPEC:-}" ]; then
  case "$(uname -m)" in
    x86_64) TORCH_SPEC="torch==2.14.1 torchvision==0.29.1" ;;
    aarch64 | arm64) TORCH_SPEC="torch==2.9.1 torchvision==0.24.1" ;;
    *) TORCH_SPEC="torch==2.14.1 torchvision==0.29.1" ;;
  esac
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
echo "== installing $TORCH_SPEC (first run: a few minutes)"
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install -q $TORCH_SPEC
# torch-pruning after torch, with torch pinned, so it never pulls another torch build.
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install -q $TORCH_SPEC "torch-pruning>=1.5" numpy absl-py
"$VENV/bin/python" - <<'PY'
from importlib.metadata import version
import torch, torchvision, torch_pruning, numpy  # noqa: F401  (they import)
print("== ready:", ", ".join(f"{n} {version(n)}" for n in ("torch", "torchvision", "torch-pruning", "numpy")))
PY
