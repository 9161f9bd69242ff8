"""What every tf_filterprune command-line tool shares: one-line errors and exit codes.

A tool's ``main(argv)`` raises :class:`CliError` (or ``ValueError``,
``FileNotFoundError``, ``absl.flags.Error``) for bad flags, configs or inputs;
:func:`run_tool` prints ``<tool>: error: <message>`` on one line to stderr and exits
with status 2 (usage) or 1 (anything else the user can fix), never a traceback. Bugs
(any other exception) still raise with their traceback. ``--help`` (absl's help flags,
which exit with status 1) exits with status 0.

Example:

>>> from tf_filterprune.cli.common import CliError, check_ratio
>>> check_ratio("keep_ratio", 0.5)
0.5
>>> try:
...     check_ratio("keep_ratio", 1.5)
... except CliError as error:
...     print(error)
--keep_ratio must be in (0, 1], got 1.5
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Sequence

from absl import app, flags

USAGE_EXIT = 2
ERROR_EXIT = 1


class CliError(Exception):
    """A problem with the user's flags, config or files: reported on one line, exit 1."""


class UsageError(CliError):
    """A bad flag value or combination: reported on one line, exit 2."""


def check_ratio(name: str, value: float, *, low_open: bool = True) -> float:
    """``value`` if it is in (0, 1] (or [0, 1] with ``low_open=False``), else :class:`UsageError`."""
    ok = (0.0 < value <= 1.0) if low_open else (0.0 <= value <= 1.0)
    if not ok:
        bounds = "(0, 1]" if low_open else "[0, 1]"
        raise UsageError(f"--{name} must be in {bounds}, got {value:g}")
    return value


def check_file(name: str, path: str | None) -> str:
    """``path`` if it names an existing file or directory, else :class:`UsageError`."""
    if not path:
        raise UsageError(f"--{name} is required")
    if not os.path.exists(path):
        raise UsageError(f"--{name}: no such file or directory: {path}")
    return path


def _tool_name() -> str:
    return os.path.basename(sys.argv[0]).removesuffix(".py") or "tffp"


def report(error: BaseException, status: int) -> None:
    """Prints ``<tool>: error: <message>`` (first line only) and exits with ``status``."""
    message = str(error).strip().splitlines()
    text = message[0] if message else type(error).__name__
    print(f"{_tool_name()}: error: {text}", file=sys.stderr)
    sys.exit(status)


def run_tool(main: Callable[[Sequence[str]], int | None], argv: Sequence[str] | None = None):
    """``absl.app.run(main)``, with the user's mistakes reported on one line (see module doc)."""

    def guarded(args: Sequence[str]) -> int | None:
        try:
            return main(args)
        except (UsageError, flags.Error) as error:
            report(error, USAGE_EXIT)
        except (CliError, ValueError, FileNotFoundError) as error:
            report(error, ERROR_EXIT)
        return None

    flags_parser = _one_line_flags_parser
    try:
        app.run(guarded, argv=list(argv) if argv is not None else None, flags_parser=flags_parser)
    except SystemExit as exit_:  # absl's --help prints the usage and exits with status 1
        args = list(argv if argv is not None else sys.argv)[1:]
        args = args[: args.index("--")] if "--" in args else args
        if exit_.code == 1 and HELP_FLAGS.intersection(args):
            sys.exit(0)
        raise


HELP_FLAGS = frozenset(
    {
        "-?",
        "-h",
        "--h",
        "-help",
        "--help",
        "-helpshort",
        "--helpshort",
        "-helpfull",
        "--helpfull",
        "-helpxml",
        "--helpxml",
    }
)
"""absl's help flags: they print and exit with status 1, which :func:`run_tool` makes 0."""


def _one_line_flags_parser(argv: list[str]) -> list[str]:
    """absl's flag parsing, with an unknown or malformed flag reported on one line.

    An override of a config field that does not exist (``--config.no_such=1``, the
    ml_collections config flags) raises ``AttributeError`` / ``KeyError`` while parsing:
    reported on one line too, naming the argument.
    """
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        report(error, USAGE_EXIT)
        raise  # unreachable: report exits
    except (AttributeError, KeyError) as error:
        report(UsageError(_no_such_field(str(error), argv[1:])), USAGE_EXIT)
        raise  # unreachable: report exits
    except Exception as error:  # ml_collections' own errors (an unsupported override...)
        if not type(error).__module__.startswith("ml_collections"):
            raise
        report(error, USAGE_EXIT)
        raise  # unreachable: report exits


def _no_such_field(message: str, args: Sequence[str]) -> str:
    """``--config.a.b: the config has no field 'b' (did you mean ...)`` from ml_collections' error."""
    names = [a.split("=", 1)[0] for a in args if a.startswith("-") and "." in a.split("=", 1)[0]]
    words = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", message)
    for word in words:
        for name in names:
            if word in name.lstrip("-").split(".")[1:]:
                hint = re.search(r'Did you mean "([^"]+)"', message)
                tail = f" (did you mean {hint.group(1)!r}?)" if hint else ""
                return f"{name}: the config has no field {word!r}{tail}"
    return f"{names[0] if names else 'a flag'}: the config has no such field ({message.strip()})"
