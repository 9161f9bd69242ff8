"""The reports people look at: profile tables in Markdown and a per-layer kept-width chart.

Used by ``tffp-profile`` (and ``tffp-strip`` for the widths); plain functions of
models, profiles and numbers, so the benchmark harness can draw the same chart for
its rows (:func:`plot_kept_widths` takes any number of compact series).
matplotlib is optional (the ``bench`` extra) and imported only by
:func:`plot_kept_widths`.

Example:

>>> print(markdown_table(("layer", "width"), [("conv1", 32), ("conv2", 16)], align="lr"))
| layer | width |
|:---|---:|
| conv1 | 32 |
| conv2 | 16 |
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import keras

from tf_filterprune.methods.base import FilterPruningWrapper
from tf_filterprune.profiling import ModelProfile, profile

_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
PRODUCERS = (
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
    keras.layers.SeparableConv1D,
    keras.layers.SeparableConv2D,
    *_DEPTHWISE,
    keras.layers.Dense,
)
"""Layers whose output width (channels or units) the reports list."""

MATPLOTLIB_HINT = "pip install matplotlib (or 'tf_filterprune[bench]')"


@dataclass(frozen=True)
class WidthRow:
    """One producer layer's width in the original and the compact model (None: absent)."""

    name: str
    class_name: str
    original: int | None
    compact: int | None

    @property
    def kept(self) -> float | None:
        """``compact / original``, or None when either is missing."""
        if not self.original or self.compact is None:
            return None
        return self.compact / self.original


def layer_widths(model: keras.Model, prefix: str = "") -> dict[str, tuple[str, int]]:
    """``{name: (class name, output width)}`` of every producer layer, in layer order.

    Nested models' layers are named ``"outer/inner"`` (as in :func:`tffp.profile`).
    A filter-pruning wrapper counts as its conv at full width (``layer.filters``), so a
    wrapped model reads as the model before the strip.
    """
    widths: dict[str, tuple[str, int]] = {}
    for layer in model.layers:
        name = prefix + layer.name
        if isinstance(layer, FilterPruningWrapper):
            widths[name] = (type(layer.layer).__name__, int(layer.layer.filters))
        elif isinstance(layer, keras.Model):
            widths.update(layer_widths(layer, prefix=name + "/"))
        elif isinstance(layer, PRODUCERS):
            widths[name] = (type(layer).__name__, _width(layer))
    return widths


def _width(layer: Any) -> int:
    if isinstance(layer, keras.layers.Dense):
        return int(layer.units)
    if isinstance(layer, _DEPTHWISE):
        kernel_shape = tuple(layer.kernel.shape)  # (..., channels, depth_multiplier)
        return int(kernel_shape[-2] * kernel_shape[-1])
    return int(layer.filters)


def width_rows(original: keras.Model, compact: keras.Model) -> list[WidthRow]:
    """The producer layers of both models by name: the original's order, then compact-only."""
    before, after = layer_widths(original), layer_widths(compact)
    rows = [
        WidthRow(name, cls, width, after.get(name, (None, None))[1])
        for name, (cls, width) in before.items()
    ]
    rows += [
        WidthRow(name, cls, None, width)
        for name, (cls, width) in after.items()
        if name not in before
    ]
    return rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> str:
    """A Markdown table; ``align`` has one ``l`` / ``r`` per column (default: first left)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _ratio(numerator: float | None, denominator: float | None) -> str:
    if numerator is None or not denominator:
        return "-"
    return f"{numerator / denominator:.3f}"


def totals_table(profiles: Mapping[str, ModelProfile]) -> str:
    """Params, trainable params and MACs per model; with two models, their ratio."""
    labels = list(profiles)
    header = ["", *labels] + (["ratio"] if len(labels) == 2 else [])
    rows = []
    for metric, attr in (
        ("params", "total_params"),
        ("trainable params", "trainable_params"),
        ("MACs", "total_macs"),
    ):
        values = [getattr(profiles[label], attr) for label in labels]
        row = [metric, *(_count(v) for v in values)]
        if len(values) == 2:
            row.append(_ratio(values[1], values[0]))
        rows.append(row)
    return markdown_table(header, rows)


def comparison_markdown(
    original: keras.Model,
    compact: keras.Model,
    *,
    labels: tuple[str, str] = ("original", "compact"),
    title: str = "Profile",
    sources: tuple[str, str] | None = None,
) -> str:
    """Totals (with ratios) and the per-layer widths and MACs of two models, as Markdown."""
    profiles = {labels[0]: profile(original), labels[1]: profile(compact)}
    macs = [{row.name: row.macs for row in p.layers} for p in profiles.values()]
    rows = []
    for row in width_rows(original, compact):
        kept = "-" if row.kept is None else f"{row.kept:.3f}"
        before, after = macs[0].get(row.name), macs[1].get(row.name)
        rows.append(
            (
                row.name,
                row.class_name,
                _count(row.original),
                _count(row.compact),
                kept,
                _count(before),
                _count(after),
            )
        )
    header = (
        "layer",
        "class",
        f"{labels[0]} width",
        f"{labels[1]} width",
        "kept",
        f"{labels[0]} MACs",
        f"{labels[1]} MACs",
    )
    parts = [f"# {title}", ""]
    if sources:
        parts += [f"{labels[0]}: `{sources[0]}`, {labels[1]}: `{sources[1]}`", ""]
    parts += [totals_table(profiles), "", "## Per-layer widths", ""]
    parts += [markdown_table(header, rows, align="llrrrrr"), ""]
    parts += [
        "Widths: output channels (units for Dense); a layer still wrapped for filter "
        "pruning counts at full width, its MACs at the width it computes. MACs per "
        "example (tffp.profile's convention: bias adds and BatchNormalization included).",
        "",
    ]
    return "\n".join(parts)


def profile_markdown(model: keras.Model, *, title: str = "Profile", source: str = "") -> str:
    """Totals and the per-layer table of one model, as Markdown."""
    prof = profile(model)
    rows = [
        (
            layer.name + (f" (x{layer.calls})" if layer.calls > 1 else ""),
            layer.class_name,
            _shape(layer.output_shape),
            _count(layer.width),
            _count(layer.params),
            _count(layer.macs),
        )
        for layer in prof.layers
    ]
    header = ("layer", "class", "output shape", "width", "params", "MACs")
    parts = [f"# {title}", ""]
    if source:
        parts += [f"model: `{source}`", ""]
    parts += [totals_table({"model": prof}), "", "## Layers", ""]
    parts += [markdown_table(header, rows, align="lllrrr"), ""]
    return "\n".join(parts)


def _shape(shape: Any) -> str:
    if isinstance(shape, list):
        return ", ".join(_shape(s) for s in shape)
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def matplotlib_available() -> bool:
    """Whether matplotlib can be imported (it is optional: the ``bench`` extra)."""
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):
        return False


def plot_kept_widths(
    path: str | os.PathLike,
    layers: Sequence[str],
    original: Sequence[int | None],
    compact: Mapping[str, Sequence[int | None]],
    *,
    title: str = "Kept width per layer",
    original_label: str = "original",
) -> str:
    """A bar chart PNG of each layer's width: the original and one bar per compact series.

    Args:
        path: the PNG written.
        layers: layer names (the x axis).
        original: each layer's original width (None: the layer is not in it).
        compact: ``{label: widths}``, one series per compact model (a benchmark passes
            one per row); with one series each bar is labelled with its kept fraction.
        title: the chart title.
        original_label: the legend label of the original widths.

    Returns:
        ``path`` as a string.

    Raises:
        ImportError: matplotlib is not installed (the message says how to get it).
    """
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError(f"The kept-width chart needs matplotlib: {MATPLOTLIB_HINT}.") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {original_label: list(original), **{k: list(v) for k, v in compact.items()}}
    count = len(layers)
    step = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * count * len(series) + 2.0), 4.0))
    for index, (label, widths) in enumerate(series.items()):
        xs = [i - 0.4 + step * (index + 0.5) for i in range(count)]
        heights = [0 if w is None else w for w in widths]
        color = "#c8c8c8" if index == 0 else None
        bars = ax.bar(xs, heights, width=step * 0.95, label=label, color=color)
        if index == 1 and len(series) == 2:
            for bar, kept, full in zip(bars, widths, original, strict=True):
                if kept is not None and full:
                    ax.annotate(
                        f"{kept / full:.2f}",
                        (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        textcoords="offset points",
                        xytext=(0, 2),
                        ha="center",
                        fontsize=7,
                    )
    ax.set_xticks(range(count))
    ax.set_xticklabels(
        layers, rotation=45 if count > 6 else 0, ha="right" if count > 6 else "center"
    )
    ax.set_ylabel("output channels")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.fspath(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
