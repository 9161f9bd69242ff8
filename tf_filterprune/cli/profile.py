r"""tffp-profile: params / MACs and per-layer widths of models, as Markdown and a chart.

Usage:

    tffp-profile --original original.keras --compact compact.keras \
        --output_md profile.md                 # + profile_widths.png (matplotlib)
    tffp-profile --compact compact.keras       # one model: its per-layer table
    python tools/profile.py --original a.keras --compact b.keras --output_md p.md

With ``--original`` and ``--compact``: a table of params, trainable params and MACs
of both with their ratios, and a per-layer table of every conv / dense layer's
output width in each model (matched by name), the kept fraction and the layer's
MACs; plus, when matplotlib is installed, a bar chart PNG of the widths per layer
(``--chart_png``). With one of them: that model's ``tffp.profile`` table.

Counts follow ``tffp.profile`` (MACs per example, bias adds and BatchNormalization
included). A ``.keras`` file still wrapped for filter pruning loads too: its
wrapped convs count at full width in the width table and at the width they compute
in the MACs. The Markdown is printed and, with ``--output_md``, written. Bad flags or
inputs end the tool with one line on stderr and a non-zero status.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from absl import flags

from tf_filterprune.cli import reports
from tf_filterprune.cli.common import CliError, UsageError
from tf_filterprune.cli.evaluate import launch, load_model, no_arguments

FLAGS = flags.FLAGS

AUTO = "auto"


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """The flags of tffp-profile."""
    flags.DEFINE_string(
        "original",
        "",
        "The model before pruning (.keras; may be a wrapped model).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "compact", "", "The pruned model (.keras), e.g. from tffp-strip.", flag_values=flag_values
    )
    flags.DEFINE_string(
        "output_md",
        "",
        "Write the Markdown report here (it is printed too).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "chart_png",
        AUTO,
        "The per-layer kept-width bar chart (PNG, needs matplotlib; with --original and "
        "--compact). 'auto': next to --output_md as <name>_widths.png when matplotlib is "
        "installed; '' for none; else the PNG path.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "title",
        "",
        "Report title (default: the compact model's file name).",
        flag_values=flag_values,
    )


def _chart_path() -> str | None:
    """Where the chart goes, or None (see ``--chart_png``)."""
    if not (FLAGS.original and FLAGS.compact) or not FLAGS.chart_png:
        if FLAGS.chart_png and FLAGS.chart_png != AUTO:
            raise UsageError("--chart_png needs both --original and --compact")
        return None
    if FLAGS.chart_png == AUTO:
        if not FLAGS.output_md or not reports.matplotlib_available():
            return None
        return os.path.splitext(FLAGS.output_md)[0] + "_widths.png"
    if not reports.matplotlib_available():
        raise CliError(f"--chart_png needs matplotlib: {reports.MATPLOTLIB_HINT}")
    return FLAGS.chart_png


def _write(path: str, text: str) -> None:
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def main(argv: Sequence[str]) -> int:
    """Profiles ``--original`` and/or ``--compact`` (see the module docstring)."""
    no_arguments(argv)
    if not (FLAGS.original or FLAGS.compact):
        raise UsageError("give --original and/or --compact (.keras files)")
    if FLAGS.output_md and not FLAGS.output_md.endswith(".md"):
        raise UsageError(f"--output_md must end in .md, got {FLAGS.output_md}")
    chart = _chart_path()
    if chart is not None and not chart.endswith(".png"):
        raise UsageError(f"--chart_png must end in .png, got {chart}")
    paths = [p for p in (FLAGS.original, FLAGS.compact) if p]
    title = FLAGS.title or f"Profile of {os.path.basename(paths[-1])}"
    if len(paths) == 2:
        original = load_model("original", FLAGS.original)
        compact = load_model("compact", FLAGS.compact)
        text = reports.comparison_markdown(
            original, compact, title=title, sources=(FLAGS.original, FLAGS.compact)
        )
    else:
        flag = "original" if FLAGS.original else "compact"
        text = reports.profile_markdown(load_model(flag, paths[0]), title=title, source=paths[0])
    print(text)
    if FLAGS.output_md:
        _write(FLAGS.output_md, text)
        print(f"wrote {FLAGS.output_md}")
    if chart is not None:
        rows = reports.width_rows(original, compact)
        folder = os.path.dirname(chart)
        if folder:
            os.makedirs(folder, exist_ok=True)
        reports.plot_kept_widths(
            chart,
            [row.name for row in rows],
            [row.original for row in rows],
            {"compact": [row.compact for row in rows]},
            title=f"{title}: output channels per layer",
        )
        print(f"wrote {chart}")
    elif FLAGS.original and FLAGS.compact and FLAGS.chart_png == AUTO and FLAGS.output_md:
        print(f"no width chart: matplotlib is not installed ({reports.MATPLOTLIB_HINT})")
    return 0


def run() -> None:
    """Console-script entry point (``tffp-profile``)."""
    launch(define_flags, main, __doc__)


if __name__ == "__main__":
    run()
