"""Export a .keras model to SavedModel / TFLite (tffp-export; --help for the flags)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from tf_filterprune.cli.export import run  # noqa: E402

if __name__ == "__main__":
    run()
