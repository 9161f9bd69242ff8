"""A measured latency model of a Keras model on the TFLite interpreter, and budgets by it.

MACs do not predict latency well on XNNPACK: a conv's output channels are
computed in tiles of the vector width (16 floats on AVX-512), so a conv cut
from 16 to 8 filters costs as much as at 16. This module measures, on this
machine, what each layer costs at the widths a cut can give it, and allocates
widths by that (``tffp.prune_once(..., target_latency_reduction=0.5)``).

The latency model
-----------------
The model's latency at kept channel counts ``n`` (one count per channel group)
is estimated as::

    latency(n) = r0 + scale * sum_t  net_t * U_t(c_in_t(n)) * V_t(c_out_t(n))

* **Timed layers** ``t`` are the convolutions and Dense layers (every call of
  Conv1D/2D, their transposes, DepthwiseConv2D, SeparableConv2D, Dense). Each is
  timed alone: a model of that one layer with the layer's exact config and
  input shape (batch 1), converted to TFLite and run on the interpreter with
  XNNPACK, at its full widths (``net_t``, its latency less the invoke overhead of
  a trivial model) and along each axis whose width a cut can change: input
  channels ``U_t`` (4 widths, multiples of 4, interpolated linearly) and
  output channels ``V_t`` (up to 16 widths: every multiple of 4 up to 64
  channels, of 8 up to 128...; a width between two costs as the next one, or as
  the next multiple of the channel tile when the steps are wider). The
  cost is taken as separable, ``U(c_in) * V(c_out)``, as a GEMM whose ``K`` is
  ``c_in`` and whose ``N`` is tiled ``c_out``. Layers of identical config and
  shapes are timed once.
* **The whole model** is the sum of its timed layers mapped linearly:
  ``r0`` and ``scale`` are fitted exactly on two whole models timed in the same
  session, the model itself and a copy cut to half of every prunable group
  (rounded to the tile), so the estimate equals the measurement at full width
  and near the targets one asks for. The map takes in what the sum leaves out:
  the element-wise and pooling ops (BatchNormalization is folded into the conv
  by the converter), the interpreter's overhead, and the layers running slower
  inside the model than alone, more so when wide (measured here: the sum of
  ResNet-56's layers alone is 86% of the model at full width, 90% at half; so
  ``scale`` > 1 and ``r0`` < 0 are normal).
* **The channel tile** (``round_to="auto"``) is measured once per machine and
  thread count: a 3x3 conv on a 16x16x32 input at 4, 8, ..., 64 filters; the tile
  is the largest of 32, 16, 8 at whose multiples the latency rises (the steps in
  between add less than 15% of the whole rise), else 4.

Every probe of a model is timed interleaved in one session
(:func:`tf_filterprune.export.compare_latency`), so machine noise hits all alike;
each probe's latency is the 10th percentile of its 200 samples (:func:`robust_ms`).
The measured model is cached as JSON in ``cache_dir``, or ``$TFFP_LATENCY_CACHE``,
or ``~/.cache/tf_filterprune/latency``, keyed by a hash of the architecture
(layer classes, configs without names, shapes), the machine (CPU model and
flags, cores), the thread count and the TensorFlow / LiteRT versions.

The allocation
--------------
:func:`allocate` chooses each group's width among the tops of its latency
steps (:func:`steps`: the widths, multiples of ``round_to``, after which its
producers get slower; on AVX-512 XNNPACK, 16, 32, 64, 96... for a 128-wide
conv; below the first top, every allowed width), as the MACs allocation of :func:`tffp.prune_once` chooses multiples of
``round_to``: the largest uniform keep ratio whose estimate fits the goal
(bisection), then groups moved up one step at a time, the group keeping the
smallest fraction of its channels first, while the estimate fits. So no conv is
left inside a step for want of a better use of the budget (a 64-wide conv cut
to 20 filters costs as 32), and widths stay as even as the steps allow. What budget is
left then goes, ``round_to`` channels at a time in the same order, to widths
inside a step, which brings small models closer to the goal.

Example (a fake timer, so that nothing is timed here):

>>> import keras, tempfile, tf_filterprune as tffp
>>> from tf_filterprune import latency
>>> model = tffp.models.fashion_cnn()
>>> fake = lambda probes, num_threads: {p.name: 0.001 * (1 + p.model.count_params() / 1e3)
...                                     for p in probes}
>>> lat = latency.measure(model, cache_dir=tempfile.mkdtemp(), timer=fake, verbose=0)
>>> round(lat.estimate({}) / lat.total, 6)
1.0
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
from absl import logging

from tf_filterprune.graph import ChannelGraph, ChannelGroup, LayerCall, build_graph
from tf_filterprune.pruner import Budget, give_back, kept_count, largest_fitting_ratio

__all__ = [
    "CACHE_ENV",
    "LatencyModel",
    "Probe",
    "allocate",
    "channel_tile",
    "check_latency_budget",
    "detect_tile",
    "measure",
    "measure_probes",
    "resolve_round_to",
    "robust_ms",
    "steps",
    "timed_ratio",
]

#: Environment variable naming the cache directory (overridden by ``cache_dir=``).
CACHE_ENV = "TFFP_LATENCY_CACHE"
_FORMAT = 4  # bump when the cached JSON changes meaning
_TILE_WIDTHS = tuple(range(4, 68, 4))
_TILES = (32, 16, 8)
CHECK_ROUNDS = 4  # allocations checked by timing the compact model (allocate_for_target)
CHECK_TOLERANCE = 0.01  # measured latency ratio within this of the target: done
_CHECK_TIMING = {"rounds": 60, "runs_per_round": 5}  # compare_latency for the check
_TIMED = (
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.DepthwiseConv1D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv1D,
    keras.layers.SeparableConv2D,
    keras.layers.Dense,
)


# --------------------------------------------------------------------------- #
# Probes and the timer
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Probe:
    """One small Keras model to time.

    Attributes:
        name: unique key of the probe in the timer's answer.
        kind: ``"layer"`` (one layer at candidate widths), ``"model"`` (a whole
            model: converted as users export it) or ``"overhead"`` (a trivial model).
        model: the Keras model, batch size 1.
    """

    name: str
    kind: str
    model: keras.Model


#: ``timer(probes, num_threads) -> {probe name: latency in ms}``.
Timer = Callable[[Sequence[Probe], int], Mapping[str, float]]


def measure_probes(
    probes: Sequence[Probe], num_threads: int = 1, verbose: int = 1
) -> dict[str, float]:
    """Converts every probe to TFLite and times them all interleaved; median ms each.

    Layer probes are converted from a frozen concrete function (4x faster than the
    SavedModel route, the same op); whole models with
    :func:`tf_filterprune.export.to_tflite`. Timing is
    :func:`tf_filterprune.export.compare_latency` (XNNPACK, batch 1).

    Example:

    >>> import keras
    >>> x = keras.Input((4,), batch_size=1)
    >>> probe = Probe("fc", "model", keras.Model(x, keras.layers.Dense(3)(x)))
    >>> sorted(measure_probes([probe], verbose=0))
    ['fc']
    """
    from tf_filterprune import export  # layer 5, as this module; ai_edge_litert on use

    bar = keras.utils.Progbar(len(probes), unit_name="model", verbose=verbose)
    blobs = {}
    for probe in probes:
        convert = export.to_tflite if probe.kind == "model" else _convert_small
        blobs[probe.name] = convert(probe.model)
        bar.add(1)
    if verbose:
        print(f"tf_filterprune.latency: timing {len(blobs)} TFLite models interleaved...")
    results = export.compare_latency(blobs, num_threads=num_threads, rounds=40, runs_per_round=5)
    return {name: robust_ms(result) for name, result in results.items()}


def robust_ms(result: Any) -> float:
    """The 10th percentile of a :class:`~tf_filterprune.export.LatencyResult`'s samples.

    On a loaded machine a long invoke is preempted more often than a short one,
    which inflates its median; the fast decile is what the model costs when it
    runs (the median on a quiet machine, within noise).

    >>> from tf_filterprune.export import LatencyResult
    >>> robust_ms(LatencyResult.from_samples([1.0] * 9 + [5.0] * 11, num_threads=1))
    1.0
    """
    return float(np.percentile(result.samples_ms, 10))


def _convert_small(model: keras.Model) -> bytes:
    """TFLite flatbuffer of a small model via a frozen concrete function."""
    import tensorflow as tf

    try:
        from tensorflow.python.framework.convert_to_constants import (
            convert_variables_to_constants_v2,
        )
    except ImportError:  # private TF API moved: the (slower) SavedModel route
        from tf_filterprune import export

        return export.to_tflite(model)
    spec = tf.TensorSpec(tuple(model.inputs[0].shape), model.inputs[0].dtype)
    function = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    frozen = convert_variables_to_constants_v2(function)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen], model)
    return bytes(converter.convert())


def _overhead_probe() -> Probe:
    x = keras.Input((4,), batch_size=1)
    return Probe("overhead", "overhead", keras.Model(x, keras.layers.ReLU()(x)))


# --------------------------------------------------------------------------- #
# The channel tile
# --------------------------------------------------------------------------- #


def detect_tile(widths: Sequence[int], latencies_ms: Sequence[float]) -> int:
    """The channel tile of a latency profile over output widths (multiples of 4).

    The largest of 32, 16 and 8 at whose multiples the latency rises: the steps
    between them add less than 15% of the whole rise (the profile is first made
    non-decreasing, so that timing noise does not count as steps); else 4.

    >>> widths = list(range(4, 68, 4))
    >>> detect_tile(widths, [1.0 + (w + 15) // 16 for w in widths])
    16
    >>> detect_tile(widths, [float(w) for w in widths])
    4
    """
    profile = np.maximum.accumulate(np.asarray(latencies_ms, dtype=float))
    rises = dict(zip(widths, np.diff(profile), strict=False))  # width -> rise to the next
    total = float(profile[-1] - profile[0])
    for tile in _TILES:
        off = sum(r for w, r in rises.items() if w % tile != 0)
        if total > 0 and off < 0.15 * total:
            return tile
    return 4


def channel_tile(
    num_threads: int = 1,
    cache_dir: str | os.PathLike | None = None,
    *,
    timer: Timer | None = None,
    verbose: int = 1,
) -> int:
    """The measured channel tile of this machine's TFLite float convs (``round_to="auto"``).

    Measured once per machine and ``num_threads`` (see the module docstring)
    and cached.

    Example (a fake timer whose latency jumps every 8 filters):

    >>> import tempfile
    >>> fake = lambda probes, n: {p.name: 1.0 + (p.model.outputs[0].shape[-1] + 7) // 8
    ...                           for p in probes}
    >>> channel_tile(cache_dir=tempfile.mkdtemp(), timer=fake, verbose=0)
    8
    """
    _check_threads(num_threads)
    path = _cache_dir(cache_dir) / f"tile-{_digest([_machine(num_threads)])}.json"
    cached = _read_json(path)
    if cached is not None:
        return int(cached["tile"])
    probes = [_tile_probe(width) for width in _TILE_WIDTHS]
    ms = (timer or measure_probes)(probes, num_threads, **_verbosity(timer, verbose))
    latencies = [ms[p.name] for p in probes]
    tile = detect_tile(_TILE_WIDTHS, latencies)
    _write_json(path, {"tile": tile, "widths": list(_TILE_WIDTHS), "ms": latencies})
    return tile


def _tile_probe(width: int) -> Probe:
    x = keras.Input((16, 16, 32), batch_size=1)
    y = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
    return Probe(f"tile/out{width}", "layer", keras.Model(x, y))


def _verbosity(timer: Timer | None, verbose: int) -> dict[str, int]:
    return {"verbose": verbose} if timer is None else {}


# --------------------------------------------------------------------------- #
# Arguments
# --------------------------------------------------------------------------- #


def check_latency_budget(
    target_latency_reduction: float | None,
    *,
    keep_ratio: float | None = None,
    target_macs_reduction: float | None = None,
) -> None:
    """Raises ValueError for a target outside (0, 1) or combined with another budget.

    >>> check_latency_budget(0.5)
    >>> check_latency_budget(1.5)
    Traceback (most recent call last):
    ...
    ValueError: `target_latency_reduction` must be in (0, 1) (the fraction of latency removed), got 1.5.
    """
    if target_latency_reduction is None:
        return
    value = target_latency_reduction
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value < 1.0:
        raise ValueError(
            "`target_latency_reduction` must be in (0, 1) (the fraction of latency "
            f"removed), got {value!r}."
        )
    for name, other in (
        ("target_macs_reduction", target_macs_reduction),
        ("keep_ratio", keep_ratio),
    ):
        if other is not None:
            raise ValueError(
                f"Give either `target_latency_reduction` or `{name}`, not both: each sets "
                "the widths of every pruned layer."
            )


def _check_threads(num_threads: int) -> None:
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"`num_threads` must be a positive integer, got {num_threads!r}.")


def resolve_round_to(
    round_to: int | str,
    num_threads: int = 1,
    cache_dir: str | os.PathLike | None = None,
    *,
    timer: Timer | None = None,
) -> int:
    """``round_to`` as an int: ``"auto"`` is the measured channel tile (:func:`channel_tile`).

    >>> resolve_round_to(8)
    8
    """
    if isinstance(round_to, str):
        if round_to != "auto":
            raise ValueError(f"`round_to` must be a positive integer or 'auto', got {round_to!r}.")
        return channel_tile(num_threads, cache_dir, timer=timer)
    if isinstance(round_to, bool) or not isinstance(round_to, int | np.integer) or round_to < 1:
        raise ValueError(f"`round_to` must be a positive integer or 'auto', got {round_to!r}.")
    return int(round_to)


# --------------------------------------------------------------------------- #
# The latency model
# --------------------------------------------------------------------------- #


@dataclass
class TermProfile:
    """The measured cost of one timed layer call (JSON-able).

    Attributes:
        index: the call's position among the model's timed calls.
        path: the layer's graph path.
        net_ms: latency of the layer alone at full width, less the invoke overhead.
        c_in, c_out: full input / output widths.
        u: ``[width, fraction of net_ms]`` along the input channels (empty: fixed).
        v: the same along the output channels.
        v_step: the width step of ``v`` (a width between steps costs as the next
            step, or as the next tile when the tile is finer).
    """

    index: int
    path: str
    net_ms: float
    c_in: int
    c_out: int
    u: list[list[float]] = field(default_factory=list)
    v: list[list[float]] = field(default_factory=list)
    v_step: int = 4


class LatencyModel:
    """Estimated latency (ms) of the compact model a keep-count map would give.

    Built by :func:`measure`; the same interface as the engine's MACs model:
    ``total``, ``estimate(counts)``, ``delta(counts, group, new_count)``.
    """

    def __init__(
        self,
        graph: ChannelGraph,
        terms: list[TermProfile],
        *,
        total: float,
        r0: float,
        scale: float,
        tile: int,
    ):
        self.graph = graph
        self.total, self.r0, self.scale = float(total), float(r0), float(scale)
        self.tile = int(tile)
        calls = _timed_calls(graph)
        if sorted(t.index for t in terms) != list(range(len(calls))) or any(
            calls[t.index].path != t.path for t in terms
        ):
            raise ValueError("The latency profiles do not match this model's timed layers.")
        self.terms = [(calls[t.index], t) for t in terms]
        self.terms_of_group = _index_by_group(graph, [c for c, _ in self.terms])
        self.out_terms_of_group = _index_by_group(graph, [c for c, _ in self.terms], inputs=False)

    def _width(self, layout: Any, counts: Mapping[int, int]) -> int:
        return layout.kept_width(lambda space, size: counts.get(self.graph.find(space), size))

    def _term(self, index: int, counts: Mapping[int, int]) -> float:
        call, prof = self.terms[index]
        c_in = self._width(call.in_layouts[0], counts)
        c_out = self._width(call.out_layouts[0], counts)
        u = _interp(prof.u, c_in) if prof.u else 1.0
        tiled = min(_ceil_to(c_out, min(prof.v_step, self.tile)), prof.c_out)
        v = _interp(prof.v, tiled) if prof.v else 1.0
        return prof.net_ms * u * v

    def out_cost(self, group: int, width: int) -> float:
        """Latency (ms) of the timed layers producing ``group`` when it keeps ``width``."""
        counts = {group: width}
        return sum(self._term(i, counts) for i in self.out_terms_of_group.get(group, []))

    def timed_ms(self, counts: Mapping[int, int]) -> float:
        """The timed layers' part of :meth:`estimate`."""
        return sum(self._term(i, counts) for i in range(len(self.terms)))

    def estimate(self, counts: Mapping[int, int]) -> float:
        """Latency (ms) when group ``g`` keeps ``counts[g]`` channels (others all)."""
        return self.r0 + self.scale * self.timed_ms(counts)

    def delta(self, counts: Mapping[int, int], group: int, new_count: int) -> float:
        """Latency added by giving ``group`` ``new_count`` channels instead of ``counts[group]``."""
        changed = {**counts, group: new_count}
        timed = sum(
            self._term(i, changed) - self._term(i, counts)
            for i in self.terms_of_group.get(group, [])
        )
        return self.scale * timed


def _interp(points: list[list[float]], width: float) -> float:
    xs = [0.0] + [p[0] for p in points]
    ys = [0.0] + [p[1] for p in points]
    return float(np.interp(width, xs, ys))


def _ceil_to(width: int, tile: int) -> int:
    return int(math.ceil(width / tile) * tile)


def _layer_of(call: LayerCall) -> Any:
    layer = call.layer
    return layer.layer if isinstance(layer, keras.layers.Wrapper) else layer


def _known(shapes: Sequence[tuple]) -> bool:
    return all(d is not None for shape in shapes for d in shape[1:])


def _timed_calls(graph: ChannelGraph) -> list[LayerCall]:
    return [
        c
        for c in graph.iter_calls()
        if isinstance(_layer_of(c), _TIMED)
        and c.in_layouts
        and c.out_layouts
        and _known(c.in_shapes[:1] + c.out_shapes[:1])
    ]


def _index_by_group(
    graph: ChannelGraph, calls: Sequence[LayerCall], inputs: bool = True
) -> dict[int, list[int]]:
    """Group id -> indices of the calls whose output (or, with ``inputs``, input) has it."""
    out: dict[int, list[int]] = {}
    for index, call in enumerate(calls):
        layouts = [*(call.in_layouts[:1] if inputs else []), *call.out_layouts[:1]]
        for root in {graph.find(s) for lay in layouts for s in lay.spaces}:
            out.setdefault(root, []).append(index)
    return out


# --------------------------------------------------------------------------- #
# Measuring a model
# --------------------------------------------------------------------------- #


def measure(
    model: keras.Model,
    graph: ChannelGraph | None = None,
    *,
    num_threads: int = 1,
    cache_dir: str | os.PathLike | None = None,
    timer: Timer | None = None,
    verbose: int = 1,
) -> LatencyModel:
    """The latency model of ``model`` on this machine: cached, else measured and cached.

    Args:
        model: a built Functional or Sequential model with fixed input shapes.
        graph: its channel graph (built when not given).
        num_threads: interpreter threads the latency is measured with.
        cache_dir: where the JSON cache lives (default ``$TFFP_LATENCY_CACHE``,
            else ``~/.cache/tf_filterprune/latency``).
        timer: ``timer(probes, num_threads) -> {name: ms}``; default
            :func:`measure_probes` (TFLite, XNNPACK, interleaved).
        verbose: 1 shows a progress bar while converting the probes.

    Returns:
        A :class:`LatencyModel`; ``total`` is the measured full-model latency (ms).

    Example: see the module docstring.
    """
    graph = graph or build_graph(model)
    tile = channel_tile(num_threads, cache_dir, timer=timer, verbose=verbose)
    path = _cache_dir(cache_dir) / f"{_digest([_architecture(graph), _machine(num_threads)])}.json"
    cached = _read_json(path)
    if cached is not None and cached.get("tile") == tile:
        terms = [TermProfile(**t) for t in cached["terms"]]
        return LatencyModel(
            graph, terms, **{k: cached[k] for k in ("total", "r0", "scale", "tile")}
        )
    logging.info("tf_filterprune.latency: measuring '%s' (cache: %s).", model.name, path)
    result = _measure(model, graph, tile, num_threads, timer, verbose)
    _write_json(path, {"format": _FORMAT, "model": model.name, **result})
    terms = [TermProfile(**t) for t in result["terms"]]
    return LatencyModel(graph, terms, **{k: result[k] for k in ("total", "r0", "scale", "tile")})


@dataclass
class _Signature:
    """Timed calls of identical config and shapes, and the probe widths they need."""

    call: LayerCall
    c_in: int
    c_out: int
    in_widths: list[int]
    out_widths: list[int]
    calls: list[tuple[int, str]]


def _measure(model, graph, tile, num_threads, timer, verbose) -> dict[str, Any]:
    signatures = _signatures(graph)
    probes = [_overhead_probe(), Probe("model/full", "model", model)]
    calibration = _half_counts(graph, tile)
    if calibration:
        probes.append(Probe("model/half", "model", _cut_copy(model, graph, calibration)))
    for index, sig in enumerate(signatures):
        probes.extend(_signature_probes(index, sig))
    ms = (timer or measure_probes)(probes, num_threads, **_verbosity(timer, verbose))
    overhead = ms["overhead"]
    terms = [t for index, sig in enumerate(signatures) for t in _profiles(index, sig, ms, overhead)]
    draft = LatencyModel(graph, terms, total=ms["model/full"], r0=0.0, scale=1.0, tile=tile)
    r0, scale = _fit_map(draft, ms, calibration)
    return {
        "total": ms["model/full"],
        "r0": r0,
        "scale": scale,
        "tile": tile,
        "overhead_ms": overhead,
        "calibration_ms": ms.get("model/half"),
        "terms": [asdict(t) for t in terms],
    }


def _signatures(graph: ChannelGraph) -> list[_Signature]:
    prunable = {g.id for g in graph.groups() if g.prunable and g.size > 1}
    by_key: dict[str, _Signature] = {}
    for position, call in enumerate(_timed_calls(graph)):
        layer = _layer_of(call)
        c_in, c_out = int(call.in_shapes[0][-1]), int(call.out_shapes[0][-1])
        in_var = _varies(graph, call.in_layouts[0], prunable)
        out_var = _out_key(layer) is not None and _varies(graph, call.out_layouts[0], prunable)
        key = _signature_key(call, in_var, out_var)
        if key not in by_key:
            grouped = getattr(layer, "groups", 1) > 1  # not probed: latency linear in width
            in_widths = ([c_in] if grouped else _in_widths(c_in)) if in_var else []
            out_widths = ([c_out] if grouped else _out_widths(c_out)) if out_var else []
            by_key[key] = _Signature(call, c_in, c_out, in_widths, out_widths, [])
        by_key[key].calls.append((position, call.path))
    return list(by_key.values())


def _signature_key(call: LayerCall, in_var: bool, out_var: bool) -> str:
    layer = _layer_of(call)
    shapes = [call.in_shapes[0][1:], call.out_shapes[0][1:]]
    parts = [type(layer).__name__, _config(layer), shapes, in_var, out_var]
    return json.dumps(parts, sort_keys=True, default=str)


def _varies(graph: ChannelGraph, layout: Any, prunable: set[int]) -> bool:
    return any(graph.find(s) in prunable for s in layout.spaces)


def _in_widths(size: int) -> list[int]:
    step = max(4, 4 * math.ceil(size / 4 / 4))
    return sorted({*range(step, size, step), size})


def _out_step(size: int) -> int:
    """Multiples of 4, at most 16 widths: every width a tile of 4, 8 or 16 can jump at."""
    return 4 * max(1, math.ceil(size / 4 / 16))


def _out_widths(size: int) -> list[int]:
    step = _out_step(size)
    return sorted({*range(step, size, step), size})


def _out_key(layer: Any) -> str | None:
    config = layer.get_config()
    return next((k for k in ("filters", "units") if k in config), None)


def _config(layer: Any) -> dict[str, Any]:
    config = dict(layer.get_config())
    config.pop("name", None)
    return config


def _signature_probes(index: int, sig: _Signature) -> list[Probe]:
    pairs = {(sig.c_in, sig.c_out)}
    pairs.update((w, sig.c_out) for w in sig.in_widths)
    pairs.update((sig.c_in, w) for w in sig.out_widths)
    return [
        Probe(_probe_name(index, c_in, c_out), "layer", _layer_model(sig.call, c_in, c_out))
        for c_in, c_out in sorted(pairs)
    ]


def _probe_name(index: int, c_in: int, c_out: int) -> str:
    return f"layer{index}/in{c_in}/out{c_out}"


def _layer_model(call: LayerCall, c_in: int, c_out: int) -> keras.Model:
    """One layer of ``call``'s config and input shape, at ``c_in`` / ``c_out`` channels."""
    layer = _layer_of(call)
    config = _config(layer)
    key = _out_key(layer)
    if key is not None:
        config[key] = c_out
    x = keras.Input((*call.in_shapes[0][1:-1], c_in), batch_size=1)
    return keras.Model(x, type(layer).from_config(config)(x))


def _profiles(index: int, sig: _Signature, ms: Mapping[str, float], overhead: float):
    def net(c_in: int, c_out: int) -> float:
        return max(ms[_probe_name(index, c_in, c_out)] - overhead, 0.0)

    full = net(sig.c_in, sig.c_out) or 1e-9
    u = _monotone([(w, net(w, sig.c_out) / full) for w in sig.in_widths])
    v = _monotone([(w, net(sig.c_in, w) / full) for w in sig.out_widths])
    for position, path in sig.calls:
        yield TermProfile(position, path, full, sig.c_in, sig.c_out, u, v, _out_step(sig.c_out))


def _monotone(points: list[tuple[int, float]]) -> list[list[float]]:
    """Points made non-decreasing (timing noise must not make a wider layer cheaper)."""
    out, top = [], 0.0
    for w, y in points:
        top = max(top, y)
        out.append([float(w), top])
    return out


def _half_counts(graph: ChannelGraph, tile: int) -> dict[int, int]:
    counts = {}
    for g in graph.groups():
        if g.prunable and g.size > 1:
            n = kept_count(g.size, 0.5, tile)
            if n < g.size:
                counts[g.id] = n
    return counts


def _cut_copy(model: keras.Model, graph: ChannelGraph, counts: Mapping[int, int]) -> keras.Model:
    from tf_filterprune.surgery import rebuild

    return rebuild(model, graph, {g: np.arange(n) for g, n in counts.items()})


def _fit_map(
    draft: LatencyModel, ms: Mapping[str, float], calibration: Mapping[int, int]
) -> tuple[float, float]:
    """``r0, scale`` with ``estimate == measured`` for the full and the half model.

    Without a half model, or when the fit is not increasing, ``r0 = 0`` and the
    scale matches the full model alone.
    """
    full, timed_full = ms["model/full"], draft.timed_ms({})
    if calibration and timed_full > draft.timed_ms(calibration):
        half, timed_half = ms["model/half"], draft.timed_ms(calibration)
        scale = (full - half) / (timed_full - timed_half)
        if scale > 0:
            return float(full - scale * timed_full), float(scale)
    return 0.0, float(full / timed_full) if timed_full > 0 else 1.0


# --------------------------------------------------------------------------- #
# The cache
# --------------------------------------------------------------------------- #


def _cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tf_filterprune" / "latency"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if data.get("format") == _FORMAT else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"format": _FORMAT, **data}, indent=1))
    tmp.replace(path)


def _digest(parts: Sequence[Any]) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _architecture(graph: ChannelGraph) -> list[Any]:
    """Layer classes, configs without names and shapes of every call, in order."""
    return [
        [type(_layer_of(c)).__name__, _config(_layer_of(c)), c.in_shapes, c.out_shapes]
        for c in graph.iter_calls()
    ]


def _machine(num_threads: int) -> dict[str, Any]:
    return {
        "cpu": _cpu_info(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "num_threads": int(num_threads),
        "tensorflow": _version("tensorflow"),
        "litert": _version("ai-edge-litert"),
    }


def _cpu_info() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    wanted = ("model name", "flags", "Features", "CPU part")
    return "|".join(sorted({line for line in lines if line.startswith(wanted)}))


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "none"


# --------------------------------------------------------------------------- #
# Allocation
# --------------------------------------------------------------------------- #


def steps(latency: LatencyModel, group: ChannelGroup, budget: Budget) -> list[int]:
    """The widths worth keeping for ``group``: the tops of its latency steps.

    Candidates are the widths ``budget`` allows (multiples of ``round_to``, at
    least ``min_filters``, and the full size). A candidate is kept when the
    next one makes the group's producers slower: between two such widths the
    producers cost the same (XNNPACK computes whole tiles of output channels),
    so a width inside a step buys nothing. Below the first top every candidate
    is kept: there the producers cost as one tile, but a narrower width still
    makes the consumers (whose cost grows with their input channels) and the
    element-wise ops cheaper, and it is the only way to cut further (a 16-wide
    ResNet-56 stage at tile 16). Groups no timed layer produces keep every
    candidate.
    """
    candidates = _candidates(group, budget)
    costs = [latency.out_cost(group.id, w) for w in candidates]
    if costs[-1] <= 0.0:
        return candidates
    tops = [w for w, c, nxt in zip(candidates, costs, costs[1:], strict=False) if nxt > c * 1.001]
    first = tops[0] if tops else group.size
    return [*(w for w in candidates if w < first), *tops, group.size]


def _candidates(group: ChannelGroup, budget: Budget) -> list[int]:
    """The widths ``budget`` allows ``group``, as :func:`tffp.pruner.kept_count` gives them."""
    size, step = group.size, budget.round_to
    if size <= step:
        return [size]
    floor = max(step, budget.min_filters)
    return sorted({*(w for w in range(step, size, step) if w >= floor), size})


def _at_ratio(tops: Mapping[int, list[int]], groups: list[ChannelGroup], ratio: float):
    """Per group, the largest top within ``ratio`` of its size (else its smallest top)."""
    out = {}
    for g in groups:
        within = [w for w in tops[g.id] if w <= ratio * g.size + 1e-9]
        out[g.id] = within[-1] if within else tops[g.id][0]
    return out


def allocate(
    latency: LatencyModel, groups: list[ChannelGroup], budget: Budget, goal_ms: float
) -> dict[int, int]:
    """Kept channels per group whose estimated latency is within ``goal_ms``.

    Widths are taken among each group's :func:`steps` (the tops of its latency
    steps, multiples of ``round_to``): the largest uniform keep ratio whose
    estimate fits (bisection), then groups moved up one step at a time, the one
    keeping the smallest fraction of its channels first (the cheapest among
    equals), while the estimate fits. What budget is left then goes, ``round_to``
    channels at a time and in the same order, to widths inside a step (fewer
    channels per ms, but more channels within the goal). Groups with a
    per-layer ratio keep it.

    Raises:
        ValueError: even the smallest allowed widths are estimated above the goal.
    """
    fixed = {g.id: [budget.count(g)] for g in groups if g.id in budget.per_group}
    tops = {g.id: fixed.get(g.id) or steps(latency, g, budget) for g in groups}
    smallest = _at_ratio(tops, groups, 0.0)
    if latency.estimate(smallest) > goal_ms:
        reachable = 1 - latency.estimate(smallest) / latency.total
        raise ValueError(
            f"A {1 - goal_ms / latency.total:.0%} latency reduction is out of reach: even the "
            f"smallest widths allowed (min_filters, round_to, ignored layers, unprunable groups) "
            f"remove about {reachable:.0%} (the unpruned layers and the interpreter's overhead "
            "stay). Lower target_latency_reduction or allow more layers to be pruned."
        )
    lo = largest_fitting_ratio(lambda r: latency.estimate(_at_ratio(tops, groups, r)) <= goal_ms)
    counts = _give_back(latency, groups, tops, _at_ratio(tops, groups, lo), goal_ms)
    allowed = {g.id: fixed.get(g.id) or _candidates(g, budget) for g in groups}
    return _give_back(latency, groups, allowed, counts, goal_ms)


def _give_back(
    latency: LatencyModel,
    groups: list[ChannelGroup],
    tops: Mapping[int, list[int]],
    counts: dict[int, int],
    goal_ms: float,
) -> dict[int, int]:
    def next_width(group: ChannelGroup, kept: int) -> int | None:
        return next((w for w in tops[group.id] if w > kept), None)

    return give_back(latency, groups, counts, goal_ms, next_width)


def allocate_for_target(
    model: keras.Model,
    graph: ChannelGraph,
    groups: list[ChannelGroup],
    budget: Budget,
    target_latency_reduction: float,
    *,
    num_threads: int = 1,
    cache_dir: str | os.PathLike | None = None,
    timer: Timer | None = None,
) -> dict[int, int]:
    """Kept channels per group for ``target_latency_reduction``, checked by timing.

    The latency model (measured if not cached) gives an allocation; the compact
    model it describes is then timed next to the original (interleaved, median
    of the per-round ratios: :func:`measured_ratio`), and while the measured ratio misses ``1 - target`` by more than
    ``CHECK_TOLERANCE``, the estimate's goal is scaled by ``wanted / measured``
    and the allocation redone, at most ``CHECK_ROUNDS`` times; the allocation
    measured closest to the target is returned. The estimate alone is off by up
    to 0.07 on the reference models (a layer costs differently alone than inside
    its model, and the element-wise ops scale with the widths too); the check
    costs one conversion and a few hundred invokes per round.
    """
    latency = measure(model, graph, num_threads=num_threads, cache_dir=cache_dir, timer=timer)
    wanted = 1.0 - target_latency_reduction
    goal, best = wanted, None
    for _ in range(CHECK_ROUNDS):
        try:
            counts = allocate(latency, groups, budget, latency.total * goal)
        except ValueError:
            if best is None:
                raise
            break  # the corrected goal is out of reach: keep the closest so far
        measured = measured_ratio(model, graph, counts, num_threads=num_threads, timer=timer)
        logging.info(
            "tf_filterprune.latency: estimated latency ratio %.3f, measured %.3f (goal %.3f).",
            latency.estimate(counts) / latency.total,
            measured,
            wanted,
        )
        if best is None or abs(measured - wanted) < abs(best[1] - wanted):
            best = (counts, measured)
        if abs(measured - wanted) <= CHECK_TOLERANCE:
            break
        goal *= wanted / measured
    return best[0]


def measured_ratio(
    model: keras.Model,
    graph: ChannelGraph,
    counts: Mapping[int, int],
    *,
    num_threads: int = 1,
    timer: Timer | None = None,
) -> float:
    """Measured latency of the model cut to ``counts`` over the model's (one session).

    Without a ``timer``, :func:`timed_ratio` (median of the per-round ratios of
    medians, what an interleaved benchmark of the two converges to); with a
    ``timer``, the ratio of its two answers.
    """
    compact = _cut_copy(model, graph, counts)
    if timer is None:
        return timed_ratio(compact, model, num_threads=num_threads)
    probes = [Probe("model/full", "model", model), Probe("model/compact", "model", compact)]
    ms = timer(probes, num_threads)
    return ms["model/compact"] / ms["model/full"]


def timed_ratio(model: keras.Model, reference: keras.Model, num_threads: int = 1) -> float:
    """TFLite latency of ``model`` over ``reference``'s, timed interleaved in one session.

    Both are converted as users export them (:func:`tf_filterprune.export.to_tflite`);
    the answer is :func:`tf_filterprune.export.paired_ratio`, the median of the
    per-round ratios of medians.

    Example:

    >>> import keras
    >>> x = keras.Input((64,), batch_size=1)
    >>> big = keras.Model(x, keras.layers.Dense(256)(x))
    >>> 0 < timed_ratio(big, big) < 2
    True
    """
    from tf_filterprune import export  # layer 5, as this module; ai_edge_litert on use

    blobs = {"model": export.to_tflite(model), "reference": export.to_tflite(reference)}
    timed = export.compare_latency(blobs, num_threads=num_threads, **_CHECK_TIMING)
    return export.paired_ratio(timed["model"], timed["reference"], _CHECK_TIMING["runs_per_round"])
