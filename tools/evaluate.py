"""Accuracy of .keras / .tflite models on a dataset (tffp-evaluate; --help for the flags)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from tf_filterprune.cli.evaluate import run  # noqa: E402

if __name__ == "__main__":
    run()
