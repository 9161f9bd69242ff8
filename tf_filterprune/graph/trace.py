"""Custom layers traced into Functional sub-graphs.

A custom layer (a ``keras.Layer`` subclass from outside Keras, say keras_hub's
``MBConvBlock``, with no entry in the registry) hides its convs from the graph:
one node, an opaque call. :func:`trace_layer` calls the layer's ``call`` on
symbolic inputs shaped as the tensors it receives in the model; its sublayers
and ``keras.ops`` calls then become the nodes of a Functional model that uses
the *same* sublayer objects, so it holds the same weights and computes the same
function. The dependency graph walks that model as a nested model (its
sublayers get paths ``"<custom layer>/<sublayer>"``), and the surgery emits the
compact layer as a plain Functional sub-model of the same name.

Only layers owning sublayers are traced. Such a layer is not traced (its
channels stay whole, the reason recorded) when:

- it creates weights of its own (``add_weight`` in the custom layer itself):
  a Functional model cannot hold them;
- its ``call`` does not run on symbolic tensors (Python control flow on tensor
  values, TensorFlow functions applied to Keras tensors...);
- the traced model does not give the layer's outputs (another structure or
  shape, or other values on a random batch in inference mode);
- it is one of Keras' own layers (their calls use backend-specific code).

Tracing runs the call once in inference form: a Python branch on ``training``
takes its ``training=None`` path (sublayers still receive ``training`` from the
model call, so BatchNormalization and Dropout behave as in the layer). The
user's layers are left as they were: the call records of the trace are removed
from the sublayers once the Functional model is built.

Example:

>>> import keras
>>> class Block(keras.layers.Layer):
...     def __init__(self, **kwargs):
...         super().__init__(**kwargs)
...         self.conv = keras.layers.Conv2D(4, 3, padding="same", name="conv")
...     def call(self, x):
...         return keras.ops.relu(self.conv(x)) + 1.0
>>> inp = keras.Input((8, 8, 3))
>>> model = keras.Model(inp, Block(name="block")(inp))
>>> node = model.get_layer("block")._inbound_nodes[0]
>>> traced = trace_layer(model.get_layer("block"), node)
>>> traced.name, [layer.name for layer in traced.layers[1:2]]
('block', ['conv'])
"""

from __future__ import annotations

import inspect
from typing import Any

import keras
import numpy as np

_RTOL = 1e-4  # the traced model's outputs match the layer's within this (relative to its range)


class TraceError(ValueError):
    """The layer cannot be traced into a Functional sub-graph; the message says why."""


def is_candidate(layer: Any) -> bool:
    """True for a layer the graph should try to trace: a custom (non-Keras) composite layer.

    That is a layer owning sublayers. Functional and Sequential models are
    walked as they are; Keras' own layers are not traced (their calls use
    backend-specific code), nor are layers without sublayers (a layer of plain
    ``keras.ops`` stays one unknown layer: register a rule for it).
    """
    if not isinstance(layer, keras.Layer) or not layer._layers:
        return False
    if isinstance(layer, keras.Sequential) or hasattr(layer, "_nodes_by_depth"):
        return False
    module = type(layer).__module__ or ""
    return not (module == "keras" or module.startswith("keras."))


def own_weights(layer: keras.Layer) -> list[Any]:
    """The weights ``layer`` holds itself (not through one of its sublayers)."""
    inner = {id(w) for sub in layer._flatten_layers(include_self=False) for w in sub.weights}
    return [w for w in layer.weights if id(w) not in inner]


def trace_layer(layer: keras.Layer, node: Any, verify: bool = True) -> keras.Model:
    """A Functional model computing ``layer``'s call of ``node``, from its sublayers.

    Args:
        layer: a custom layer (see :func:`is_candidate`).
        node: the layer's call in the model (a ``keras`` Node).
        verify: run the layer and the traced model on a random batch (inference
            mode) and compare.

    Returns:
        A Functional model named as the layer, whose inputs are the tensors of
        the call (structured as the call's first argument) and whose outputs
        are structured as the layer's. It shares the sublayer objects (and so
        the weights) with ``layer``.

    Raises:
        TraceError: the layer cannot be traced; the message says why.
    """
    own = own_weights(layer)
    if own:
        names = ", ".join(sorted({w.name for w in own}))
        raise TraceError(
            f"it holds weights of its own ({names}), which a traced sub-graph of its "
            "sublayers cannot carry (register a rule for it instead)"
        )
    tensors = list(node.input_tensors)
    if not tensors:
        raise TraceError("it is called without tensor inputs")
    if len({id(t) for t in tensors}) != len(tensors):
        raise TraceError("it receives the same tensor twice")
    args = node.arguments.args
    first = keras.tree.flatten(args[0]) if args else []
    if [id(t) for t in first] != [id(t) for t in tensors]:
        raise TraceError(
            "its tensor inputs are not all in its first argument (a traced sub-model "
            "takes them there)"
        )
    inputs = {
        id(t): keras.Input(batch_shape=tuple(t.shape), dtype=t.dtype, name=f"{layer.name}_in{i}")
        for i, t in enumerate(tensors)
    }
    symbolic_args, symbolic_kwargs = node.arguments.fill_in(inputs)
    symbolic_kwargs = _call_kwargs(layer, symbolic_kwargs)
    model_inputs = symbolic_args[0]
    before = _node_counts(layer)
    try:
        try:
            outputs = layer.call(*symbolic_args, **symbolic_kwargs)
        except Exception as err:  # noqa: BLE001 - any failure means "cannot trace"
            raise TraceError(
                f"its call does not run on symbolic tensors ({type(err).__name__}: "
                f"{_first_line(err)})"
            ) from err
        _check_outputs(node, outputs)
        try:
            traced = keras.Model(model_inputs, outputs, name=layer.name)
        except Exception as err:  # noqa: BLE001
            raise TraceError(
                f"its traced call is not a valid Functional graph ({type(err).__name__}: "
                f"{_first_line(err)})"
            ) from err
    finally:
        _restore_node_counts(before)
    if verify:
        _verify(layer, node, traced)
    return traced


def _call_kwargs(layer: keras.Layer, kwargs: dict) -> dict:
    """The keyword arguments ``layer.call`` takes (``Layer.__call__`` drops the others)."""
    params = inspect.signature(layer.call).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        accepted = set(kwargs)
    else:
        accepted = set(params)
    if not getattr(layer, "_call_has_training_arg", "training" in params):
        accepted.discard("training")
    return {k: v for k, v in kwargs.items() if k in accepted}


def _check_outputs(node: Any, outputs: Any) -> None:
    flat = keras.tree.flatten(outputs)
    if not all(isinstance(t, keras.KerasTensor) for t in flat):
        raise TraceError("its traced call returns values that are not tensors of the graph")
    if len(flat) != len(node.outputs):
        raise TraceError(
            f"its traced call returns {len(flat)} tensors where the layer gives {len(node.outputs)}"
        )
    for got, want in zip(flat, node.outputs, strict=True):
        if tuple(got.shape) != tuple(want.shape) or got.dtype != want.dtype:
            raise TraceError(
                f"its traced call returns a {got.dtype} tensor of shape {tuple(got.shape)} "
                f"where the layer gives {want.dtype} {tuple(want.shape)}"
            )


def _verify(layer: keras.Layer, node: Any, traced: keras.Model) -> None:
    """Raises TraceError unless ``traced`` gives ``layer``'s outputs on a random batch."""
    rng = np.random.default_rng(0)
    values = {id(t): _random_input(t, rng) for t in node.input_tensors}
    args, kwargs = node.arguments.fill_in(values)
    if getattr(layer, "_call_has_training_arg", False):
        kwargs = dict(kwargs, training=False)
    try:
        expected = keras.tree.flatten(layer(*args, **kwargs))
        got = keras.tree.flatten(traced(args[0], training=False))
    except Exception as err:  # noqa: BLE001
        raise TraceError(
            f"its traced sub-graph could not be checked against the layer "
            f"({type(err).__name__}: {_first_line(err)})"
        ) from err
    for want, have in zip(expected, got, strict=True):
        want = np.asarray(keras.ops.convert_to_numpy(want), dtype=np.float64)
        have = np.asarray(keras.ops.convert_to_numpy(have), dtype=np.float64)
        scale = float(np.max(np.abs(want))) if want.size else 0.0
        if want.shape != have.shape or not np.allclose(
            have, want, rtol=_RTOL, atol=_RTOL * (1.0 + scale), equal_nan=True
        ):
            raise TraceError(
                "its traced sub-graph computes other values than the layer on a random "
                "batch (its call depends on more than its sublayers and keras.ops, e.g. "
                "Python state or a branch on `training`)"
            )


def _random_input(tensor: Any, rng: np.random.Generator) -> np.ndarray:
    shape = (2, *(8 if d is None else int(d) for d in tuple(tensor.shape)[1:]))
    dtype = keras.backend.standardize_dtype(tensor.dtype)
    if "float" in dtype:
        return rng.normal(size=shape).astype(dtype)
    return np.zeros(shape, dtype=dtype)


def _node_counts(layer: keras.Layer) -> list[tuple[Any, int, int]]:
    return [
        (op, len(op._inbound_nodes), len(op._outbound_nodes))
        for op in layer._flatten_layers(include_self=True)
    ]


def _restore_node_counts(counts: list[tuple[Any, int, int]]) -> None:
    """Drops the call records a trace added to the user's layers (their graphs stay as built)."""
    for op, inbound, outbound in counts:
        del op._inbound_nodes[inbound:]
        del op._outbound_nodes[outbound:]


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else "")[:200]
