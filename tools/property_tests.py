r"""Long runs of the property tests (``tests/test_properties.py``) outside CI.

CI runs a fixed (derandomized) set of examples per block family. This runs
``--examples`` per family instead (the ``TFFP_PROPERTY_EXAMPLES`` variable the
test reads), optionally new random examples each run (``--random``, the
``TFFP_PROPERTY_RANDOM`` variable), of the families in ``--families`` (default
all). A failing example prints its block specs and head: rebuild it with
``tests.model_gen.build_model(specs, head)`` and add it to ``REGRESSIONS``.

Usage:

    .venv/bin/python tools/property_tests.py --examples 500
    .venv/bin/python tools/property_tests.py --examples 300 --random --families ops,chains
    .venv/bin/python tools/property_tests.py --examples 1000 -- -x -n 2   # extra pytest args
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("examples", 500, "Examples per family.")
flags.DEFINE_bool("random", False, "New random examples each run (not derandomized).")
flags.DEFINE_list("families", [], "Families to run (default: all of FAMILIES).")
flags.DEFINE_bool("regressions", True, "Also run the fixed cases (REGRESSIONS, named tests).")

ROOT = Path(__file__).resolve().parent.parent


def command(argv: list[str]) -> list[str]:
    """The pytest command line for the flags and extra pytest arguments ``argv``."""
    # the family tests are test_random_models_satisfy_the_surgery_contract[<family>]
    expression = "surgery_contract"
    if FLAGS.families:
        expression += " and (" + " or ".join(FLAGS.families) + ")"
    if FLAGS.regressions:
        expression = f"({expression}) or not surgery_contract" if FLAGS.families else ""
    args = [sys.executable, "-m", "pytest", "tests/test_properties.py", "-q"]
    return args + (["-k", expression] if expression else []) + argv


def main(argv: list[str]) -> int:
    env = dict(os.environ, TFFP_PROPERTY_EXAMPLES=str(FLAGS.examples))
    env["TFFP_PROPERTY_RANDOM"] = "1" if FLAGS.random else "0"
    args = command(argv[1:])
    print(" ".join(args), flush=True)
    return subprocess.call(args, cwd=ROOT, env=env)


if __name__ == "__main__":
    app.run(main)
