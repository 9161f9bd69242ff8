"""Params / MACs / per-layer widths report of models (tffp-profile; --help for the flags)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from tf_filterprune.cli.profile import run  # noqa: E402

if __name__ == "__main__":
    run()
