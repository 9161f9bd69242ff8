"""Train and prune a model as an experiment config says (tffp-train-prune; --help for the flags)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from tf_filterprune.cli.train_prune import run  # noqa: E402

if __name__ == "__main__":
    run()
