#!/usr/bin/env bash
# Sets up a virtual environment in .venv with tf_filterprune and its test and
# benchmark extras, and (when root) Debian's Fashion-MNIST package.
# Usage: bash tools/setup.sh        (idempotent; re-run after pulling)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"

if [ ! -d /usr/share/datasets/fashion-mnist ] && [ -z "${FASHION_MNIST_DIR:-}" ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "== installing Debian's dataset-fashion-mnist"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "!! Fashion-MNIST not found: run 'sudo apt-get install -y dataset-fashion-mnist'" \
         "or set FASHION_MNIST_DIR (the demo needs it; most tests do not)." >&2
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
echo "== installing tf_filterprune[test,bench] (first run downloads TensorFlow, a few minutes)"
"$VENV/bin/python" -m pip install -q -e '.[test,bench]'
echo "== ready: $VENV"
