"""tffp-benchmark: the method-comparison benchmark of a source checkout, as a console script.

The benchmark's implementation stays ``tools/benchmark.py`` with its ``tools/bench``
package (rows, protocol, reports; imported by the tests from there), which are not
part of the installed package. This entry point finds ``tools/benchmark.py`` next to
the package of an editable install (``bash tools/setup.sh`` / ``pip install -e .``) or
at ``$TFFP_BENCHMARK_SCRIPT``, and runs it as ``__main__`` with the same arguments: the
same flags, ``--help`` and outputs as ``python tools/benchmark.py``.

Usage:

    tffp-benchmark --help
    tffp-benchmark --rows unpruned,dcff_paced --seeds 0 --output_dir /tmp/bench
"""

from __future__ import annotations

import os
import runpy
import sys
from collections.abc import Sequence
from pathlib import Path

from tf_filterprune.cli.common import ERROR_EXIT, HELP_FLAGS, CliError, report

SCRIPT_ENV = "TFFP_BENCHMARK_SCRIPT"
"""Environment variable naming the benchmark script, when it is not next to the package."""


def benchmark_script() -> Path:
    """``tools/benchmark.py`` of the checkout this package runs from (or ``$TFFP_BENCHMARK_SCRIPT``).

    Raises:
        CliError: no such file (a non-editable install has no ``tools/``).
    """
    configured = os.environ.get(SCRIPT_ENV)
    script = (
        Path(configured)
        if configured
        else Path(__file__).resolve().parents[2] / "tools" / "benchmark.py"
    )
    if not script.is_file():
        raise CliError(
            f"the benchmark script is not at {script}: tffp-benchmark runs tools/benchmark.py "
            "of a source checkout (clone the repository and `pip install -e .` it, or set "
            f"{SCRIPT_ENV} to the script)"
        )
    return script


def main(argv: Sequence[str]) -> None:
    """Runs ``tools/benchmark.py`` as ``__main__`` with ``argv[1:]`` as its arguments."""
    script = benchmark_script()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.argv = [str(argv[0]) if argv else str(script), *argv[1:]]
    runpy.run_path(str(script), run_name="__main__")


def run() -> None:
    """Console-script entry point (``tffp-benchmark``)."""
    try:
        main(list(sys.argv))
    except CliError as error:
        report(error, ERROR_EXIT)
    except SystemExit as exit_:  # absl's --help exits with status 1: 0 here, as the other tools
        if exit_.code == 1 and HELP_FLAGS.intersection(sys.argv[1:]):
            sys.exit(0)
        raise


if __name__ == "__main__":
    run()
