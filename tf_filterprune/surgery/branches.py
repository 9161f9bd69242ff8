"""RepVGG-style parallel branches: fold ``conv + 1x1 conv + identity`` into one conv.

A conv with parallel cheap branches that are summed (a kxk conv + BN, a 1x1 conv +
BN, a BN on the identity, the identity itself) is, at inference, one kxk conv: each
BatchNormalization folds into the kernel and bias before it (:func:`fold_batchnorm`),
a 1x1 kernel is the kxk kernel that is zero except at its centre tap
(:func:`pad_kernel`), the identity is the kernel whose centre tap is ``eye(C)``
(:func:`identity_kernel`), and kernels and biases add.

During training a branch can be computed at the cost of a 1x1 conv and still match
the kxk conv's positions exactly, for every stride, padding and dilation
(:func:`center_tap_conv`, :func:`center_tap_input`). :func:`fold_parallel_branch`
does the fold on a whole Keras model.

Channels-last and odd kernel sizes only (an even kernel has no centre tap).
TensorFlow's 'same' padding pads ``pad_total // 2`` before; for odd kernels the
centre tap then never falls into the padding (``pad_before`` and ``pad_after`` are at
most the centre offset), so the centre positions are always a strided slice of the
input: at stride 2 on an even size they start one pixel later than a plain 1x1
strided conv's, which :func:`center_tap_input` accounts for.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from tf_filterprune.surgery.cut import copy_lambda, layer_from_config

# --------------------------------------------------------------------------- kernels


def _numpy(value: Any, dtype: Any = np.float64) -> np.ndarray:
    """A variable, tensor or array as a numpy array of ``dtype``."""
    return np.asarray(keras.ops.convert_to_numpy(value), dtype=dtype)


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int | np.integer):
        return int(value), int(value)
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"`{name}` must be an int or a pair of ints, got {value!r}.")
    return pair  # type: ignore[return-value]


def _odd_kernel_size(kernel_size: int | Sequence[int]) -> tuple[int, int]:
    size = _pair(kernel_size, "kernel_size")
    if any(k < 1 or k % 2 == 0 for k in size):
        raise ValueError(
            f"kernel_size {size} has no centre tap: only odd kernel sizes can take a "
            "parallel 1x1 or identity branch."
        )
    return size


def fold_batchnorm(
    kernel: np.ndarray,
    bias: np.ndarray | None,
    gamma: Any,
    beta: Any,
    moving_mean: Any,
    moving_variance: Any,
    epsilon: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Kernel (..., out) and bias of conv followed by inference-mode BN as one conv.

    ``BN(y) = gamma * (y - mean) / sqrt(var + eps) + beta``, so with
    ``s = gamma / sqrt(var + eps)`` the folded conv has kernel ``kernel * s`` (on
    the last axis) and bias ``(bias - mean) * s + beta``. ``gamma``/``beta`` may be
    None (a BatchNormalization with ``scale=False`` / ``center=False``), ``bias``
    None (a conv without bias). Computed in float64, returned in the kernel's dtype.

    Example:

    >>> k, b = fold_batchnorm(np.ones((1, 1, 1, 2)), None, [2.0, 1.0], None,
    ...                       [1.0, 0.0], [3.0, 0.0], 1.0)
    >>> k.ravel().tolist(), b.tolist()
    ([1.0, 1.0], [-1.0, 0.0])
    """
    out_dtype = np.asarray(kernel).dtype
    kernel = _numpy(kernel)
    width = kernel.shape[-1]
    mean, var = _numpy(moving_mean), _numpy(moving_variance)
    gamma = np.ones(width) if gamma is None else _numpy(gamma)
    beta = np.zeros(width) if beta is None else _numpy(beta)
    bias = np.zeros(width) if bias is None else _numpy(bias)
    for name, value in (("gamma", gamma), ("beta", beta), ("bias", bias), ("mean", mean)):
        if value.shape != (width,):
            raise ValueError(f"{name} has shape {value.shape}; expected ({width},).")
    if var.shape != (width,):
        raise ValueError(f"moving_variance has shape {var.shape}; expected ({width},).")
    scale = gamma / np.sqrt(var + float(epsilon))
    return (kernel * scale).astype(out_dtype), ((bias - mean) * scale + beta).astype(out_dtype)


def pad_kernel(kernel: np.ndarray, kernel_size: tuple[int, int]) -> np.ndarray:
    """A (1, 1, in, out) kernel placed at the centre tap of a zero (kh, kw, in, out) kernel.

    Any smaller kernel with odd sizes is placed centred in the same way (a 1x3 and a
    3x1 kernel into a 3x3 one). Raises ValueError for even kernel sizes (no centre
    tap) or a kernel larger than ``kernel_size``.

    Example:

    >>> pad_kernel(np.full((1, 1, 1, 1), 7.0), (3, 3))[..., 0, 0].tolist()
    [[0.0, 0.0, 0.0], [0.0, 7.0, 0.0], [0.0, 0.0, 0.0]]
    """
    kernel = np.asarray(kernel)
    target = _odd_kernel_size(kernel_size)
    if kernel.ndim != 4:
        raise ValueError(f"Expected a (kh, kw, in, out) kernel, got shape {kernel.shape}.")
    own = _odd_kernel_size(kernel.shape[:2])
    if own[0] > target[0] or own[1] > target[1]:
        raise ValueError(f"A {own} kernel does not fit in kernel_size {target}.")
    top, left = (target[0] - own[0]) // 2, (target[1] - own[1]) // 2
    padded = np.zeros((*target, *kernel.shape[2:]), dtype=kernel.dtype)
    padded[top : top + own[0], left : left + own[1]] = kernel
    return padded


def identity_kernel(
    channels: int, kernel_size: tuple[int, int], dtype: Any = "float32"
) -> np.ndarray:
    """The (kh, kw, C, C) kernel of the identity map (centre tap = eye(C)).

    Example:

    >>> identity_kernel(2, (1, 1))[0, 0].tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    eye = np.eye(channels, dtype=dtype)[None, None]
    return pad_kernel(eye, kernel_size)


def parallel_branch_kernel(
    main_kernel: np.ndarray,
    main_bias: np.ndarray | None,
    branch_kernel_1x1: np.ndarray,
    branch_bias: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Kernel and bias of ``main conv + 1x1 branch conv`` (same strides/padding) as one conv.

    The branch kernel is centred in the main kernel's size (:func:`pad_kernel`) and
    added; missing biases count as zero.

    Example:

    >>> k, b = parallel_branch_kernel(np.zeros((3, 3, 1, 1)), None, np.ones((1, 1, 1, 1)), [2.0])
    >>> float(k[1, 1, 0, 0]), float(k.sum()), b.tolist()
    (1.0, 1.0, [2.0])
    """
    main_kernel = np.asarray(main_kernel)
    width = main_kernel.shape[-1]
    kernel = main_kernel + pad_kernel(np.asarray(branch_kernel_1x1), main_kernel.shape[:2])
    bias = np.zeros(width) if main_bias is None else _numpy(main_bias)
    if branch_bias is not None:
        bias = bias + _numpy(branch_bias)
    return kernel.astype(main_kernel.dtype), bias.astype(main_kernel.dtype)


# ---------------------------------------------------------------- centre-tap conv


def _check_channels_last(data_format: str | None) -> None:
    data_format = data_format or keras.config.image_data_format()
    if data_format != "channels_last":
        raise ValueError(f"Only channels_last is supported, got data_format={data_format!r}.")


def _normalize_conv_args(kernel_size, strides, padding, dilation_rate):
    size = _odd_kernel_size(kernel_size)
    strides, dilation = _pair(strides, "strides"), _pair(dilation_rate, "dilation_rate")
    padding = str(padding).lower()
    if padding not in ("same", "valid"):
        raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}.")
    if max(strides) > 1 and max(dilation) > 1:
        raise ValueError(
            "strides > 1 together with dilation_rate > 1 is not supported (as in "
            f"keras.ops.conv); got strides={strides}, dilation_rate={dilation}."
        )
    return size, strides, padding, dilation


def _centre_start(n: Any, k: int, s: int, padding: str, d: int) -> Any:
    """First input index of the centre taps along one axis of size ``n`` (int or tensor)."""
    centre = (k - 1) // 2 * d
    if padding == "valid" or s == 1:  # 'same' at stride 1 pads exactly `centre` before
        return centre if padding == "valid" else 0
    out = (n + s - 1) // s
    pad_total = (out - 1) * s + (k - 1) * d + 1 - n
    pad_total = max(pad_total, 0) if isinstance(pad_total, int) else keras.ops.maximum(pad_total, 0)
    return centre - pad_total // 2


def _centre_slice(n: Any, k: int, s: int, padding: str, d: int) -> slice:
    """The centre taps' positions along one axis, as a slice of the input.

    'valid': ``centre, centre + s, ...`` up to ``n - centre`` (exclusive). 'same': from
    the start up to the end (TensorFlow's 'same' output has ceil((n - start) / s) =
    ceil(n / s) positions, the last centre tap being inside the input).
    """
    start = _centre_start(n, k, s, padding, d)
    if padding == "valid":
        centre = (k - 1) // 2 * d
        return slice(start, -centre if centre else None, s)
    return slice(start, None, s)


def center_tap_input(
    inputs: Any,
    *,
    kernel_size: int | Sequence[int],
    strides: int | Sequence[int] = 1,
    padding: str = "valid",
    dilation_rate: int | Sequence[int] = 1,
    data_format: str | None = None,
) -> Any:
    """The slice of inputs that center_tap_conv multiplies.

    The input pixels under the centre tap of a (kh, kw) conv with these strides,
    padding and dilation, one per output position: a (N, out_h, out_w, C) tensor. So
    an identity + BN branch of that conv is ``BN(center_tap_input(x))``. Works on
    eager and symbolic tensors (unknown spatial sizes inside a Layer's ``call`` or a
    ``tf.function``; a bare KerasTensor needs a known size at stride > 1 'same').

    Example:

    >>> x = np.arange(6.0).reshape(1, 1, 6, 1)
    >>> y = center_tap_input(x, kernel_size=3, strides=2, padding="same")
    >>> keras.ops.convert_to_numpy(y).ravel().tolist()  # not 0, 2, 4: 'same' pads 0 before
    [1.0, 3.0, 5.0]
    """
    _check_channels_last(data_format)
    size, strides, padding, dilation = _normalize_conv_args(
        kernel_size, strides, padding, dilation_rate
    )
    if len(inputs.shape) != 4:
        raise ValueError(f"Expected a (N, H, W, C) input, got shape {inputs.shape}.")
    shape = keras.ops.shape(inputs)
    slices = []
    for axis in (0, 1):
        n = shape[1 + axis]
        if n is None and padding == "same" and strides[axis] > 1:
            raise ValueError(
                "The spatial size must be known for a strided 'same' centre tap on a "
                "KerasTensor; call center_tap_input inside a Layer's call instead."
            )
        slices.append(_centre_slice(n, size[axis], strides[axis], padding, dilation[axis]))
    return inputs[:, slices[0], slices[1], :]


def center_tap_conv(
    inputs: Any,
    kernel_1x1: Any,
    *,
    kernel_size: int | Sequence[int],
    strides: int | Sequence[int] = 1,
    padding: str = "valid",
    dilation_rate: int | Sequence[int] = 1,
    bias: Any = None,
    data_format: str | None = None,
) -> Any:
    """A 1x1 conv that equals a kxk conv with the 1x1 kernel at its centre tap, exactly.

    Same output shape and values as ``conv2d(inputs, pad_kernel(kernel_1x1,
    kernel_size), strides, padding, dilation_rate) (+ bias)``, at the cost of a 1x1
    conv: the input is sliced at the centre tap's positions (:func:`center_tap_input`)
    and multiplied by the (1, 1, in, out) kernel. keras.ops only; works symbolically
    in a Layer's ``call`` and under ``tf.function``; the kernel and bias are cast to
    the input's dtype (float16 under mixed precision).

    Example:

    >>> x = np.random.default_rng(0).normal(size=(1, 8, 8, 2)).astype("float32")
    >>> k = np.random.default_rng(1).normal(size=(1, 1, 2, 3)).astype("float32")
    >>> ref = keras.ops.conv(x, pad_kernel(k, (3, 3)), strides=2, padding="same")
    >>> y = center_tap_conv(x, k, kernel_size=3, strides=2, padding="same")
    >>> bool(np.allclose(ref, y, atol=1e-6)), tuple(y.shape)
    (True, (1, 4, 4, 3))
    """
    if len(kernel_1x1.shape) != 4 or tuple(kernel_1x1.shape[:2]) != (1, 1):
        raise ValueError(f"Expected a (1, 1, in, out) kernel, got shape {kernel_1x1.shape}.")
    taps = center_tap_input(
        inputs,
        kernel_size=kernel_size,
        strides=strides,
        padding=padding,
        dilation_rate=dilation_rate,
        data_format=data_format,
    )
    outputs = keras.ops.conv(taps, keras.ops.cast(kernel_1x1, taps.dtype), padding="valid")
    if bias is not None:
        outputs = outputs + keras.ops.cast(bias, taps.dtype)
    return outputs


# ----------------------------------------------------------------- model-level fold

_IDENTITY, _BATCHNORM, _CONV, _CONV_BN = "identity", "batchnorm", "conv", "conv+batchnorm"


@dataclass
class _Branch:
    """One input of an Add: the layers between the shared root tensor and the Add."""

    kind: str
    conv: keras.layers.Conv2D | None = None
    bn: keras.layers.BatchNormalization | None = None

    @property
    def layers(self) -> list[keras.Layer]:
        return [layer for layer in (self.conv, self.bn) if layer is not None]

    def describe(self) -> str:
        names = " -> ".join(f"'{layer.name}'" for layer in self.layers)
        return f"{self.kind} {names}".strip()


@dataclass
class _Fold:
    """A foldable Add: its branches of ``root`` and the fused conv's geometry."""

    add: keras.layers.Add
    root: Any
    branches: list[_Branch]
    main: keras.layers.Conv2D
    kernel_size: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    absorbed: list[keras.Layer] = field(default_factory=list)


class _Graph:
    """The nodes of a Functional model, with tensor consumer counts."""

    def __init__(self, model: keras.Model):
        self.nodes = [n for nodes in model._nodes_by_depth.values() for n in nodes]
        self.uses = Counter(id(t) for n in self.nodes for t in n.input_tensors)
        self.uses.update(id(t) for t in model.outputs)
        self.calls = Counter(id(n.operation) for n in self.nodes)
        self._in_model = {id(n) for n in self.nodes}

    def producer(self, tensor):
        """The (non-input) node in this model that outputs ``tensor``, or None."""
        history = getattr(tensor, "_keras_history", None)
        if history is None:
            return None
        node = history.operation._inbound_nodes[history.node_index]
        if node.is_input or id(node) not in self._in_model:
            return None
        return node

    def single(self, tensor, layer_type) -> Any:
        """The node producing ``tensor`` if it is a lone call of ``layer_type`` (exactly)
        whose output feeds one consumer; else None."""
        node = self.producer(tensor)
        if node is None or type(node.operation) is not layer_type:
            return None
        if self.calls[id(node.operation)] != 1 or self.uses[id(tensor)] != 1:
            return None
        if len(node.input_tensors) != 1 or len(node.outputs) != 1:
            return None
        return node


def _candidates(graph: _Graph, tensor) -> list[tuple[Any, _Branch]]:
    """Every way to read ``tensor`` as a branch: (root tensor, branch) pairs."""
    found = [(tensor, _Branch(_IDENTITY))]
    conv_node = graph.single(tensor, keras.layers.Conv2D)
    if conv_node is not None:
        found.append((conv_node.input_tensors[0], _Branch(_CONV, conv=conv_node.operation)))
    bn_node = graph.single(tensor, keras.layers.BatchNormalization)
    if bn_node is not None:
        inner = bn_node.input_tensors[0]
        found.append((inner, _Branch(_BATCHNORM, bn=bn_node.operation)))
        conv_node = graph.single(inner, keras.layers.Conv2D)
        if conv_node is not None:
            branch = _Branch(_CONV_BN, conv=conv_node.operation, bn=bn_node.operation)
            found.append((conv_node.input_tensors[0], branch))
    return found


def _match_branches(graph: _Graph, add_node) -> tuple[Any, list[_Branch]]:
    """The shared root and the branches of an Add, preferring the most conv branches."""
    options = [_candidates(graph, t) for t in add_node.input_tensors]
    common = set.intersection(*({id(root) for root, _ in opts} for opts in options))
    best, best_score = None, None
    for root, _ in options[0]:
        if id(root) not in common:
            continue
        branches = [next(b for r, b in opts if r is root) for opts in options]
        score = (sum(b.conv is not None for b in branches), sum(len(b.layers) for b in branches))
        if best_score is None or score > best_score:
            best, best_score = (root, branches), score
    if best is None:
        sources = ", ".join(
            f"input {i} from '{t._keras_history.operation.name}'"
            for i, t in enumerate(add_node.input_tensors)
        )
        raise _Refusal(
            "its inputs are not parallel branches of one tensor (each must be the tensor, "
            "BatchNormalization(tensor), Conv2D(tensor) or BatchNormalization(Conv2D("
            f"tensor)), each layer called once and used only there): {sources}"
        )
    return best


class _Refusal(Exception):
    """Why an Add cannot be folded (turned into a ValueError naming the layer)."""


def _check_conv(conv: keras.layers.Conv2D) -> None:
    if conv.data_format != "channels_last":
        raise _Refusal(f"Conv2D '{conv.name}' is {conv.data_format}; only channels_last folds")
    if conv.groups != 1:
        raise _Refusal(f"Conv2D '{conv.name}' has groups={conv.groups}; only groups=1 folds")
    if conv.activation is not keras.activations.linear:
        name = getattr(conv.activation, "__name__", str(conv.activation))
        raise _Refusal(f"Conv2D '{conv.name}' has activation '{name}' (only a linear conv folds)")
    if getattr(conv, "quantization_mode", None) is not None:
        raise _Refusal(f"Conv2D '{conv.name}' is quantized ({conv.quantization_mode})")
    if any(k % 2 == 0 for k in conv.kernel_size):
        raise _Refusal(
            f"Conv2D '{conv.name}' has the even kernel size {tuple(conv.kernel_size)} "
            "(no centre tap)"
        )


def _check_bn(bn: keras.layers.BatchNormalization, rank: int) -> None:
    axis = bn.axis if isinstance(bn.axis, int) else list(bn.axis)
    if axis not in (-1, rank - 1, [-1], [rank - 1]):
        raise _Refusal(
            f"BatchNormalization '{bn.name}' normalizes axis {bn.axis}, not the channels_last "
            "channel axis"
        )


def _check_call(graph: _Graph, layer: keras.Layer) -> None:
    node = next(n for n in graph.nodes if n.operation is layer)
    kwargs = {k: v for k, v in node.arguments.kwargs.items() if v is not None and k != "inputs"}
    if kwargs.get("training", False) is not False or set(kwargs) - {"training"}:
        raise _Refusal(f"'{layer.name}' is called with arguments {kwargs}")


def _fused_geometry(branches: list[_Branch]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Kernel size and dilation of the fused conv (per axis: the convs wider than 1 agree)."""
    convs = [b.conv for b in branches if b.conv is not None]
    size = tuple(max(c.kernel_size[a] for c in convs) for a in (0, 1))
    dilation = []
    for a in (0, 1):
        rates = {c.dilation_rate[a] for c in convs if c.kernel_size[a] > 1}
        if len(rates) > 1:
            raise _Refusal(f"its convs have different dilation rates {sorted(rates)} on axis {a}")
        dilation.append(rates.pop() if rates else 1)
    return size, tuple(dilation)  # type: ignore[return-value]


def _window(n: int, geometry: tuple[int, int, int, str] | None) -> tuple[int, int, int]:
    """(first position, step, count) of the centre taps along an axis of size ``n``.

    ``geometry`` is (kernel size, stride, dilation, padding) along that axis, None for
    an identity branch (every position).
    """
    if geometry is None:
        return 0, 1, n
    k, s, d, padding = geometry
    if padding == "valid":
        count = (n - (k - 1) * d - 1) // s + 1
    else:
        count = -(-n // s)
    return _centre_start(n, k, s, padding, d), s, count


def _geometry(conv: keras.layers.Conv2D | None, axis: int):
    if conv is None:
        return None
    k, s, d = conv.kernel_size[axis], conv.strides[axis], conv.dilation_rate[axis]
    return k, s, d, conv.padding


def _check_positions(fold: _Fold) -> None:
    """Every branch reads the fused conv's centre-tap positions (for every input size
    up to 63 when the size is unknown)."""
    for axis in (0, 1):
        fused = (
            fold.kernel_size[axis],
            fold.main.strides[axis],
            fold.dilation[axis],
            fold.main.padding,
        )
        known = fold.root.shape[1 + axis]
        for n in [known] if known is not None else range(1, 64):
            want = _window(n, fused)
            if want[2] <= 0:
                continue
            for branch in fold.branches:
                got = _window(n, _geometry(branch.conv, axis))
                if got != want:
                    size = f"size {n}" if known is not None else f"unknown size (e.g. {n})"
                    raise _Refusal(
                        f"branch {branch.describe()} reads the positions (start, step, count) "
                        f"= {got} along spatial axis {axis} of {size}, but the fused "
                        f"{fold.kernel_size} conv's centre taps are at {want}, so folding "
                        "would not be exact (e.g. a stride-2 1x1 conv next to a 'same' "
                        "3x3 one on an even size)"
                    )


def _plan_fold(graph: _Graph, add: keras.layers.Add) -> _Fold:
    """Analyses one Add; raises _Refusal with the reason when it cannot fold."""
    if graph.calls[id(add)] != 1:
        raise _Refusal("the Add layer is called more than once")
    add_node = next(n for n in graph.nodes if n.operation is add)
    root, branches = _match_branches(graph, add_node)
    convs = [b.conv for b in branches if b.conv is not None]
    if not convs:
        raise _Refusal("it has no Conv2D branch to fold into")
    if len(root.shape) != 4:
        raise _Refusal(f"its branches read a rank-{len(root.shape)} tensor, not (N, H, W, C)")
    for branch in branches:
        for layer in branch.layers:
            _check_call(graph, layer)
        if branch.conv is not None:
            _check_conv(branch.conv)
        if branch.bn is not None:
            _check_bn(branch.bn, 4)
    main = max(convs, key=lambda c: c.kernel_size[0] * c.kernel_size[1])
    size, dilation = _fused_geometry(branches)
    fold = _Fold(add, root, branches, main, size, dilation)
    fold.absorbed = [layer for b in branches for layer in b.layers]
    _check_positions(fold)
    return fold


def _branch_weights(branch: _Branch, channels: int, size) -> tuple[np.ndarray, np.ndarray]:
    """The branch as a (kh, kw, in, out) kernel and bias, float64, centred in ``size``."""
    if branch.conv is not None:
        conv = branch.conv
        kernel = _numpy(conv.kernel)
        bias = _numpy(conv.bias) if conv.use_bias else np.zeros(kernel.shape[-1])
    else:
        kernel, bias = identity_kernel(channels, (1, 1), np.float64), np.zeros(channels)
    if branch.bn is not None:
        bn = branch.bn
        kernel, bias = fold_batchnorm(
            kernel,
            bias,
            bn.gamma if bn.scale else None,
            bn.beta if bn.center else None,
            bn.moving_mean,
            bn.moving_variance,
            bn.epsilon,
        )
    return pad_kernel(kernel, size), bias


def _fused_layer(fold: _Fold) -> keras.layers.Conv2D:
    config = dict(
        fold.main.get_config(),
        kernel_size=fold.kernel_size,
        dilation_rate=fold.dilation,
        use_bias=True,
        activation="linear",
    )
    return keras.layers.Conv2D.from_config(config)


def _fused_weights(fold: _Fold, dtype) -> list[np.ndarray]:
    channels = fold.root.shape[-1]
    parts = [_branch_weights(b, channels, fold.kernel_size) for b in fold.branches]
    kernel = sum(k for k, _ in parts)
    bias = sum(b for _, b in parts)
    return [np.asarray(kernel, dtype), np.asarray(bias, dtype)]


def _named_adds(model: keras.Model, names: Sequence[str]) -> list[keras.Layer]:
    if isinstance(names, str):
        names = [names]
    by_name = {layer.name: layer for layer in model.layers}
    adds = []
    for name in names:
        if name not in by_name:
            raise ValueError(f"fold_parallel_branch: the model has no layer named '{name}'.")
        if type(by_name[name]) is not keras.layers.Add:
            raise ValueError(
                f"Cannot fold '{name}': it is a {type(by_name[name]).__name__}, not an Add layer."
            )
        adds.append(by_name[name])
    return adds


def _plan(model: keras.Model, layers: Sequence[str] | None) -> list[_Fold]:
    if isinstance(model, keras.Sequential):
        if layers:
            _named_adds(model, layers)  # raises: a Sequential model has no Add
        return []
    graph = _Graph(model)
    if layers is None:
        folds = []
        for layer in model.layers:
            if type(layer) is keras.layers.Add:
                try:
                    folds.append(_plan_fold(graph, layer))
                except _Refusal:
                    continue
        return folds
    folds = []
    for add in _named_adds(model, layers):
        try:
            folds.append(_plan_fold(graph, add))
        except _Refusal as reason:
            raise ValueError(f"Cannot fold Add layer '{add.name}': {reason}.") from None
    return folds


def fold_parallel_branch(model: keras.Model, layers: Sequence[str] | None = None) -> keras.Model:
    """Folds every RepVGG-style block (parallel branches summed by an Add) into one Conv2D.

    A ``keras.layers.Add`` folds when all its inputs are parallel branches of the same
    tensor ``x``, each one of ``Conv2D(x)``, ``BatchNormalization(Conv2D(x))``,
    ``BatchNormalization(x)`` (an identity branch) or ``x`` itself, and each branch
    reads the same positions of ``x``: the convs are plain (linear, ``groups=1``,
    channels_last, odd kernel sizes), share strides, their kernels wider than 1 share
    padding and dilation, and the smaller ones (1x1, 1x3...) sit at the centre of the
    largest. This is checked on the input size, so a stride-2 1x1 conv next to a
    'same' 3x3 one on an even size (offset by one pixel) is refused, as is any block
    whose input size is unknown at stride 2. The Add is replaced by ONE Conv2D
    (``use_bias=True``) computing the sum exactly at inference (BatchNormalization
    with its moving statistics); it takes the name and config of the branch conv with
    the largest kernel, so downstream code finds the "main" conv under its name.
    Every branch layer must be called once and used only by its branch. Only the
    model's own Add layers fold (those inside a nested model are copied unchanged).
    The fold is an inference-time transform: in training mode the BatchNormalization
    layers it removes would have used batch statistics.

    Args:
        model: a built Functional model (a Sequential one has no Add, so it is copied).
        layers: names of the Add layers to fold. None (default) folds every foldable
            Add and leaves the others; a named Add that cannot be folded raises.

    Returns:
        A new model (the input model is not modified); layers not involved are
        re-created with the same names, configs and weights. With nothing to fold it
        is an equivalent copy.

    Raises:
        ValueError: a named layer is missing, not an Add, or cannot be folded (the
            message names the layer and the reason); or the model is not Functional
            or Sequential.

    Example:

    >>> inp = keras.Input((8, 8, 4))
    >>> main = keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3, padding="same")(inp))
    >>> side = keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 1)(inp))
    >>> model = keras.Model(inp, keras.layers.Add()([main, side, inp]))
    >>> folded = fold_parallel_branch(model)
    >>> [type(layer).__name__ for layer in folded.layers]
    ['InputLayer', 'Conv2D']
    >>> x = np.random.default_rng(0).normal(size=(1, 8, 8, 4)).astype("float32")
    >>> bool(np.allclose(model(x), folded(x), atol=1e-5))
    True
    """
    if not (isinstance(model, keras.Sequential) or hasattr(model, "_nodes_by_depth")):
        raise ValueError(
            "fold_parallel_branch needs a Functional or Sequential model, got "
            f"{type(model).__name__}."
        )
    folds = _plan(model, layers)
    by_add = {id(f.add): f for f in folds}
    absorbed = {id(layer) for f in folds for layer in f.absorbed}
    fused: dict[int, tuple[keras.layers.Conv2D, _Fold]] = {}
    pairs: list[tuple[keras.Layer, keras.Layer]] = []

    def clone_layer(layer):
        if id(layer) in by_add:
            conv = _fused_layer(by_add[id(layer)])
            fused[id(conv)] = (conv, by_add[id(layer)])
            return conv
        if id(layer) in absorbed:
            return layer  # never called: call_layer passes its input through
        twin = copy_lambda(layer) if type(layer) is keras.layers.Lambda else None
        twin = twin or layer_from_config(layer)
        pairs.append((layer, twin))
        return twin

    def call_layer(layer, *args, **kwargs):
        # A branch layer passes the shared root through, so every input of a folded
        # Add arrives as the new root tensor, which the fused conv then reads.
        if id(layer) in absorbed or id(layer) in fused:
            first = args[0] if args else kwargs["inputs"]
            return first if id(layer) in absorbed else layer(first[0])
        return layer(*args, **kwargs)

    if isinstance(model, keras.Sequential):
        copy = keras.models.clone_model(model, clone_function=clone_layer, recursive=True)
    else:
        inputs = keras.tree.map_structure(
            lambda t: keras.Input(
                batch_shape=t.shape, dtype=t.dtype, name=t._keras_history.operation.name
            ),
            model.input,
        )
        copy = keras.models.clone_model(
            model,
            input_tensors=inputs,
            clone_function=clone_layer,
            call_function=call_layer,
            recursive=True,
        )
    for original, twin in pairs:
        if original.weights:
            twin.set_weights(original.get_weights())
    for conv, fold in fused.values():
        conv.set_weights(_fused_weights(fold, conv.kernel.dtype))
    return copy
