"""The constant output of removed channels, and its fold into consumer biases.

When only a removed channel's producer kernel slice is zeroed, the channel
outputs a constant: the producer's bias (0 without one) through whatever lies
between the producer and the layers that mix channels (BatchNormalization with
its moving statistics, activations, pooling, padding, residual joins...).
:func:`analyze_folds` finds, for every *consumer* (a layer that mixes its input
channels: Conv, Dense, Conv transpose, SeparableConv), what those constants add
to its output and whether a bias can represent it exactly.

Nothing here is special-cased per layer: the model's own layers are run, in
inference mode, on a batch of two probes. The removed channels carry their
constant maps in both probes; every other channel carries different large
garbage (positive in one probe, negative in the other). A channel of a layer's
output is a known constant when it is equal in both probes; a layer that mixes
channels (LayerNormalization, a broadcast gate) shows up as a difference. A
consumer's share is computed by the consumer's linear part (kernel only) on
the constant maps: the fold is exact when that share is the same at every
output position, otherwise the interior (centre) value is the best single bias.

Example:

>>> import keras, numpy as np
>>> from tf_filterprune.graph import build_graph
>>> from tf_filterprune.surgery.plan import make_plan
>>> inp = keras.Input((6, 6, 3))
>>> x = keras.layers.Conv2D(4, 3, padding="same", name="c")(inp)
>>> model = keras.Model(inp, keras.layers.Conv2D(2, 1, name="head")(x))
>>> graph = build_graph(model)
>>> plan = make_plan(graph, {graph.group_of_layer("c").id: np.array([0, 1])})
>>> fold = analyze_folds(graph, plan)[id(model.get_layer("head"))]
>>> fold.exact, fold.delta.shape
(True, (2,))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from tf_filterprune.graph import ChannelGraph, registry
from tf_filterprune.graph.dependency import functional_of, walk_nodes
from tf_filterprune.surgery.plan import SurgeryPlan, channel_table, indices_of, is_consumer

FoldMode = bool | str  # True, "exact" or False

_EXACT_RTOL = 1e-5  # a consumer's share is "uniform" within this relative tolerance


def check_mode(fold_constants: Any) -> FoldMode:
    """Validates ``fold_constants`` (True, ``"exact"`` or False)."""
    if fold_constants is True or fold_constants is False or fold_constants == "exact":
        return fold_constants
    raise ValueError(f"fold_constants must be True, 'exact' or False, got {fold_constants!r}.")


@dataclass
class Probe:
    """The two probe values of one tensor and which of its channels are known constants."""

    value: np.ndarray | None  # (2, ...): probe A then probe B; None when unknown
    known: np.ndarray  # bool over the last axis
    lost: tuple[str, ...] = ()  # layers where known channels stopped being known


@dataclass
class ConsumerFold:
    """What the removed channels' constants add to one consumer.

    Attributes:
        path: the consumer's graph path.
        delta: the bias to add (the interior value of the share), full output width.
        exact: the share is the same at every output position (a bias is exact).
        folded: group id -> channels whose constant is in ``delta``.
        unfoldable: group id -> removed channels whose output is not a constant
            the surgery can determine (they are dropped, not folded).
        largest: the largest |constant| among the folded channels.
        lost: layers where removed channels stopped being known constants.
    """

    path: str
    kind: str
    delta: np.ndarray
    exact: bool
    folded: dict[int, np.ndarray] = field(default_factory=dict)
    unfoldable: dict[int, np.ndarray] = field(default_factory=dict)
    largest: float = 0.0
    lost: tuple[str, ...] = ()

    def applies(self, mode: FoldMode) -> bool:
        """Whether the compact model adds ``delta`` under ``mode``."""
        return mode is True or (mode == "exact" and self.exact)

    def zeroed_in_reference(self, mode: FoldMode) -> dict[int, np.ndarray]:
        """Group id -> channels whose consumer slice the reference zeroes under ``mode``."""
        if mode is True:
            return {}
        out = {g: c for g, c in self.unfoldable.items()}
        if mode is False or not self.exact:
            for g, c in self.folded.items():
                out[g] = np.union1d(out.get(g, np.zeros((0,), np.int64)), c)
        return out

    def merge(self, other: ConsumerFold) -> None:
        """Combines the analysis of a second call of a shared consumer."""
        same = np.allclose(self.delta, other.delta, rtol=_EXACT_RTOL, atol=1e-6)
        self.exact = self.exact and other.exact and same
        for gid, chans in other.unfoldable.items():
            self.unfoldable[gid] = np.union1d(self.unfoldable.get(gid, chans), chans)
        for gid in self.unfoldable:
            if gid in self.folded:
                self.folded[gid] = np.setdiff1d(self.folded[gid], self.unfoldable[gid])
        self.largest = max(self.largest, other.largest)
        self.lost = tuple(dict.fromkeys(self.lost + other.lost))

    def note(self, mode: FoldMode, producers: dict[int, str]) -> str | None:
        """A human-readable note when the fold is inexact or skipped (None otherwise)."""
        parts = []
        count = sum(len(c) for c in self.folded.values())
        if count and not self.exact:
            what = (
                "folded the interior value into its bias; outputs near the borders differ "
                "from the kernel-zeroed model"
                if mode is True
                else "not folded (fold_constants='exact'), the constant is dropped"
            )
            parts.append(
                f"{count} removed channel(s) of {_names(self.folded, producers)} carry a "
                f"constant (largest |constant| {self.largest:.3g}) that this layer does not "
                f"see evenly (padding or borders): {what}"
            )
        missing = sum(len(c) for c in self.unfoldable.values())
        if missing:
            where = f" (through {', '.join(repr(p) for p in self.lost)})" if self.lost else ""
            parts.append(
                f"{missing} removed channel(s) of {_names(self.unfoldable, producers)} do not "
                f"carry a constant the surgery can determine{where}: dropped, not folded"
            )
        if not parts:
            return None
        return f"'{self.path}' ({self.kind}): " + "; ".join(parts) + "."


def _names(by_group: dict[int, np.ndarray], producers: dict[int, str]) -> str:
    return ", ".join(producers.get(g, f"group {g}") for g, c in by_group.items() if len(c))


def analyze_folds(graph: ChannelGraph, plan: SurgeryPlan, seed: int = 0) -> dict[int, ConsumerFold]:
    """Consumer layer id -> :class:`ConsumerFold` for every consumer of a folded channel.

    Runs the model's layers once on two probes (see the module docstring); the
    model is not modified.
    """
    if not plan.any_folded():
        return {}
    return _Walker(graph, plan, seed).run()


def fold_notes(folds: dict[int, ConsumerFold], plan: SurgeryPlan, mode: FoldMode) -> list[str]:
    """One note per consumer whose fold is inexact or skipped under ``mode``."""
    if mode is False:
        return []
    producers = {gid: p.name for gid, p in plan.groups.items()}
    notes = [fold.note(mode, producers) for fold in folds.values()]
    return [n for n in notes if n]


class _Walker:
    """Evaluates the model layer by layer on the two probes."""

    def __init__(self, graph: ChannelGraph, plan: SurgeryPlan, seed: int):
        self.graph = graph
        self.plan = plan
        self.rng = np.random.default_rng(seed)
        self.folds: dict[int, ConsumerFold] = {}
        self.twins: dict[int, Any] = {}
        self.pool: np.ndarray | None = None  # see _noise
        self.zero_outputs: dict[int, np.ndarray] = {}

    def run(self) -> dict[int, ConsumerFold]:
        model = self.graph.model
        probes = [self._input_probe(t) for t in functional_of(model).inputs]
        self._walk(model, probes)
        return self.folds

    # ------------------------------------------------------------ the walk
    def _walk(self, model: keras.Model, probes: list[Probe]) -> list[Probe]:
        return walk_nodes(model, probes, self._node)

    def _node(self, node: Any, ins: list[Probe]) -> list[Probe]:
        layer = node.operation
        inner = self.graph.inner_model(layer)  # a nested model or a traced custom layer
        if inner is not None:
            return self._walk(inner, ins)
        call = self.graph.first_call(layer)
        if call is not None and is_consumer(layer):
            self._record_consumer(layer, call, ins[0])
            return [self._producer_output(layer, call, ins[0], node.outputs[0])]
        lost = _union_lost(ins)
        nothing_known = not any(p.known.any() for p in ins if p.value is not None)
        if nothing_known and all(_defined(t) for t in node.outputs):
            return [self._unknown(t, lost) for t in node.outputs]
        return self._evaluate(node, ins, call.path if call else layer.name, lost)

    def _evaluate(self, node: Any, ins: list[Probe], path: str, lost: tuple) -> list[Probe]:
        if any(p.value is None for p in ins):
            return [self._unknown(t, lost + (path,)) for t in node.outputs]
        filled = {id(t): self._garbage(p) for t, p in zip(node.input_tensors, ins, strict=True)}
        args, kwargs = node.arguments.fill_in(filled)
        op = node.operation
        if isinstance(op, keras.Layer):
            kwargs = dict(kwargs, training=False)
        try:
            raw = keras.tree.flatten(op(*args, **kwargs))
            outs = [np.asarray(keras.ops.convert_to_numpy(o)) for o in raw]
        except Exception:  # noqa: BLE001 - any failure means "cannot determine"
            return [self._unknown(t, lost + (path,)) for t in node.outputs]
        probes = [Probe(o, _equal_channels(o), lost) for o in outs]
        if _lost_channels(ins, probes):
            probes = [Probe(p.value, p.known, lost + (path,)) for p in probes]
        return probes

    # ------------------------------------------------------------ producers
    def _producer_output(self, layer: Any, call: Any, probe: Probe, tensor: Any) -> Probe:
        """A producer's removed channels output ``layer(0)``: its kernel slice is zero."""
        out_idx = indices_of(call.out_layouts[0], self.plan.folded_of)
        if probe.value is None or (out_idx.size == 0 and _defined(tensor)):
            return self._unknown(tensor, ())
        try:  # both probes are zeros: one is computed, the other is the same
            one = self._at_zero(layer, probe.value[:1])
        except Exception:  # noqa: BLE001
            return self._unknown(tensor, (call.path,))
        out = np.broadcast_to(one, (2, *one.shape[1:]))
        known = np.zeros(out.shape[-1], dtype=bool)
        known[out_idx] = True
        return Probe(out, known)

    # ------------------------------------------------------------ consumers
    def _record_consumer(self, layer: Any, call: Any, probe: Probe) -> None:
        layout = call.in_layouts[0]
        removed = indices_of(layout, self.plan.folded_of)
        if removed.size == 0:
            return
        spaces, channels = channel_table(layout)
        groups = np.array([self.graph.find(int(s)) for s in spaces[removed]], dtype=np.int64)
        known = probe.known[removed] if probe.value is not None else np.zeros(removed.size, bool)
        unfoldable = _by_group(groups[~known], channels[removed][~known])
        # a channel is folded only when all its positions are known
        bad = np.zeros(removed.size, dtype=bool)
        for gid, chans in unfoldable.items():
            bad |= (groups == gid) & np.isin(channels[removed], chans)
        foldable = removed[~bad]
        fold = self._share(layer, call, probe, foldable)
        fold.folded = _by_group(groups[~bad], channels[removed][~bad])
        fold.unfoldable = unfoldable
        fold.lost = probe.lost if unfoldable else ()
        previous = self.folds.get(id(layer))
        if previous is None:
            self.folds[id(layer)] = fold
        else:
            previous.merge(fold)

    def _share(self, layer: Any, call: Any, probe: Probe, foldable: np.ndarray) -> ConsumerFold:
        """The consumer's linear response to the foldable constants."""
        width = int(call.out_shapes[0][-1])
        fold = ConsumerFold(call.path, type(layer).__name__, np.zeros(width), True)
        if foldable.size == 0:
            return fold
        x = np.zeros_like(probe.value[:1])
        x[..., foldable] = probe.value[:1][..., foldable]
        if _affine(layer):  # layer(x) - layer(0): its kernel's part, no twin to build
            share = _numpy(layer(x, training=False)) - self._at_zero(layer, x)
        else:
            share = _numpy(self._linear_twin(layer, x.shape)(x))
        centre = share[(0, *(d // 2 for d in share.shape[1:-1]))]
        spread = float(np.max(np.abs(share - centre))) if share.size else 0.0
        fold.delta = centre
        fold.exact = spread <= 1e-6 + _EXACT_RTOL * float(np.max(np.abs(share)))
        fold.largest = float(np.max(np.abs(x[..., foldable])))
        return fold

    def _at_zero(self, layer: Any, like: np.ndarray) -> np.ndarray:
        """``layer``'s output (one example) for a zero input shaped as ``like``; cached."""
        if id(layer) not in self.zero_outputs:
            zeros = np.zeros_like(like[:1])
            out = keras.ops.convert_to_numpy(layer(zeros, training=False))
            self.zero_outputs[id(layer)] = np.asarray(out)
        return self.zero_outputs[id(layer)]

    def _linear_twin(self, layer: Any, input_shape: tuple) -> Any:
        """A float32 copy of ``layer`` without bias and activation (its kernel only)."""
        from tf_filterprune.surgery.cut import (
            layer_from_config,
            zero_initializers,
        )  # cut imports this

        if id(layer) not in self.twins:
            config = dict(
                layer.get_config(),
                activation="linear",
                use_bias=False,
                dtype="float32",
                name=f"{layer.name}_fold",
            )
            twin = layer_from_config(layer, config)
            zero_initializers(twin)  # its weights are set below: no random draws
            twin.build(input_shape)
            weights = {name: value for name, value, _ in registry.weights_with_axes(layer)}
            twin.set_weights([weights[v.name] for v in twin.weights])
            self.twins[id(layer)] = twin
        return self.twins[id(layer)]

    # ------------------------------------------------------------ probes
    def _input_probe(self, tensor: Any) -> Probe:
        shape = tuple(32 if d is None else int(d) for d in tensor.shape[1:])
        dtype = keras.backend.standardize_dtype(tensor.dtype)
        value = np.zeros((2, *shape), dtype=dtype)
        return Probe(value, np.zeros(shape[-1] if shape else 0, dtype=bool))

    def _unknown(self, tensor: Any, lost: tuple) -> Probe:
        shape = tuple(tensor.shape[1:])
        if not _defined(tensor):
            return Probe(None, np.zeros(0, dtype=bool), lost)
        value = np.zeros((2, *shape), dtype=keras.backend.standardize_dtype(tensor.dtype))
        return Probe(value, np.zeros(shape[-1] if shape else 0, dtype=bool), lost)

    def _garbage(self, probe: Probe) -> np.ndarray:
        """The probe values, unknown channels replaced by large garbage of opposite signs."""
        value = probe.value
        if value.ndim < 2 or not np.issubdtype(value.dtype, np.floating):
            return value.copy()
        unknown = ~probe.known
        if not unknown.any():
            return value.copy()
        return np.where(unknown, self._noise(value.shape).astype(value.dtype, copy=False), value)

    def _noise(self, shape: tuple) -> np.ndarray:
        """Garbage of ``shape`` (2, ...): in [50, 150) for probe A, (-240, -80] for probe B.

        Drawn once into a pool (the largest tensor's size) and read from a random
        offset at each call: fast, and two tensors never get the same garbage.
        """
        size = int(np.prod(shape[1:]))
        if self.pool is None or self.pool.shape[1] < 2 * size:
            length = max(2 * size, 1 << 16)
            noise = self.rng.random((2, length), dtype=np.float32)
            self.pool = np.stack([50.0 + 100.0 * noise[0], -(80.0 + 160.0 * noise[1])])
        start = int(self.rng.integers(0, self.pool.shape[1] - size + 1))
        return self.pool[:, start : start + size].reshape(shape)


def _numpy(tensor: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(tensor), dtype=np.float64)


def _affine(layer: Any) -> bool:
    """True for a float32 consumer without activation: its output is kernel part + bias."""
    activation = getattr(layer, "activation", None)
    linear = activation is None or activation is keras.activations.linear
    return linear and layer.compute_dtype == "float32"


def _defined(tensor: Any) -> bool:
    """True when every dimension but the batch of a symbolic tensor is known."""
    return all(d is not None for d in tuple(tensor.shape)[1:])


def _equal_channels(out: np.ndarray) -> np.ndarray:
    """Channels (last axis) equal and finite in both probes."""
    if out.ndim < 2 or out.shape[0] != 2:
        return np.zeros(out.shape[-1] if out.ndim else 0, dtype=bool)
    if not np.issubdtype(out.dtype, np.floating):
        return (out[0] == out[1]).reshape(-1, out.shape[-1]).all(axis=0)
    a, b = out[0].reshape(-1, out.shape[-1]), out[1].reshape(-1, out.shape[-1])
    finite = np.isfinite(a).all(axis=0) & np.isfinite(b).all(axis=0)
    with np.errstate(invalid="ignore", over="ignore"):
        close = (np.abs(a - b) <= 1e-6 * (1.0 + np.abs(a))).all(axis=0)
    return finite & close


def _lost_channels(ins: Sequence[Probe], outs: Sequence[Probe]) -> bool:
    """True when this layer turned known input channels into unknown output channels."""
    known_in = sum(int(p.known.sum()) for p in ins)
    known_out = sum(int(p.known.sum()) for p in outs)
    if known_in and not known_out:
        return True
    if len(ins) == 1 and len(outs) == 1 and len(ins[0].known) == len(outs[0].known):
        return known_out < known_in
    return False


def _union_lost(probes: Sequence[Probe]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(p for probe in probes for p in probe.lost))


def _by_group(groups: np.ndarray, channels: np.ndarray) -> dict[int, np.ndarray]:
    return {int(g): np.unique(channels[groups == g]) for g in np.unique(groups)}
