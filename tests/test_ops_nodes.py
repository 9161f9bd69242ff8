"""keras.ops Operation nodes in the dependency graph and the surgery.

Keras 3 Functional models hold ``keras.ops`` calls (``x + 3.0``,
``keras.ops.relu6(x)``, ``keras.ops.split``) as Operation nodes that are not
layers. For each kind of op, a small model using it must satisfy the surgery
contract (the compact model equals the model with only the removed channels'
producer kernel slices zeroed), get the exact widths, and be re-created with
the cut arguments (split sizes, reshape targets, per-channel constants). An op
the registry does not know leaves its groups whole, with the reason recorded.
"""

import keras
import numpy as np
import pytest
from helpers import input_batch, predict, random_keep, randomize_batchnorm, randomize_biases
from keras import layers as L
from keras import ops

import tf_filterprune as tffp
from tf_filterprune.graph import build_graph, registry
from tf_filterprune.surgery import rebuild, zeroed_copy


def functional(build, shape=(8, 8, 3)):
    inp = keras.Input(shape, name="input")
    return keras.Model(inp, build(inp))


def conv(width, name, kernel=1):
    return L.Conv2D(width, kernel, padding="same", name=name)


def bn(x):
    return L.BatchNormalization()(x)


def head(x):
    return L.Conv2D(3, 1, name="head")(x)


def producer_widths(graph, keep) -> dict[str, int]:
    """Producer path -> the width its output must have after the cut."""
    keep_of = graph.keep_function(keep)
    widths = {}
    for group in graph.groups():
        for path in group.producers:
            layout = graph.first_call(graph.layers[path]).out_layouts[0]
            widths[path] = layout.cut_width(keep_of)
    return widths


def assert_contract(model, ratio=0.5, seed=0, atol=1e-5):
    """The surgery contract with randomized BN statistics and biases, plus exact widths."""
    randomize_batchnorm(model, seed)
    randomize_biases(model, seed)
    graph = build_graph(model)
    keep = random_keep(graph, ratio, seed)
    assert keep, "no prunable group: " + "; ".join(r for g in graph.groups() for r in g.reasons)
    compact = rebuild(model, graph, keep, fold_constants="exact")
    reference = zeroed_copy(model, graph, keep, fold_constants="exact")
    x = input_batch(model, seed=seed)
    np.testing.assert_allclose(predict(compact, x), predict(reference, x), atol=atol, rtol=0)
    for path, width in producer_widths(graph, keep).items():
        layer = compact.get_layer(path)
        assert (getattr(layer, "filters", None) or layer.units) == width, path
    return compact, graph, keep


def _ops_of(model, cls):
    return [op for op in model.operations if type(op) is cls]


# ------------------------------------------------------------------ builders
def _add_tensors(x):
    return head(ops.relu(ops.add(bn(conv(8, "a")(x)), bn(conv(8, "b")(x)))))


def _subtract_tensors(x):
    return head(bn(conv(8, "a")(x)) - bn(conv(8, "b")(x)))


def _maximum_minimum(x):
    a, b = bn(conv(8, "a")(x)), bn(conv(8, "b")(x))
    return head(ops.minimum(ops.maximum(a, b), 2.0))


def _scalar_arithmetic(x):
    y = bn(conv(8, "c")(x))
    return head((0.5 * (y + 3.0) - 1.0) / 4.0)


def _hard_swish(x):  # MobileNetV3's: x * relu6(x + 3) / 6, all ops
    y = bn(conv(8, "c")(x))
    return head(y * ops.relu6(y + 3.0) * (1.0 / 6.0))


def _per_channel_constant(x):
    y = bn(conv(8, "c")(x))
    y = y * np.linspace(0.5, 1.5, 8).astype("float32") + np.arange(8, dtype="float32")
    return head(y)


def _unary(fn):
    return lambda x: head(fn(bn(conv(8, "c")(x))))


def _pad_hw(mode):
    def build(x):
        y = ops.pad(bn(conv(8, "c")(x)), ((0, 0), (1, 1), (2, 0), (0, 0)), mode=mode)
        return L.Conv2D(3, 3, name="head")(y)

    return build


def _pad_channels(x):
    y = ops.pad(bn(conv(8, "c")(x)), ((0, 0), (0, 0), (0, 0), (2, 1)))
    return head(y)


def _split_concat(x):
    a, b = ops.split(bn(conv(8, "c")(x)), 2, axis=-1)
    return head(ops.concatenate([ops.relu(b), ops.sigmoid(a)], axis=-1))


def _split_unequal(x):
    a, b = ops.split(bn(conv(9, "c")(x)), [3], axis=-1)
    a = bn(conv(5, "d")(a))
    return head(ops.concatenate([a, b], axis=-1))


def _split_gate(x):  # GLU-like: the two halves tie channel by channel
    a, b = ops.split(bn(conv(8, "c")(x)), 2, axis=-1)
    return head(a * ops.sigmoid(b))


def _split_spatial(x):
    top, bottom = ops.split(bn(conv(8, "c")(x)), 2, axis=1)
    return head(ops.concatenate([bottom, ops.relu(top)], axis=1))


def _concat_then_add(x):  # a concatenation joined to one conv's output
    y = ops.concatenate([bn(conv(4, "a")(x)), bn(conv(6, "b")(x))], axis=-1)
    return head(ops.relu(y + bn(conv(10, "c")(x))))


def _mean_hw(x):
    return L.Dense(3, name="head")(ops.mean(ops.relu(bn(conv(8, "c")(x))), axis=(1, 2)))


def _max_sum_hw(x):
    y = ops.relu(bn(conv(8, "c")(x)))
    return L.Dense(3, name="head")(ops.max(y, axis=(1, 2)) + ops.sum(y, axis=(1, 2)))


def _squeeze_excite_ops(x):
    y = ops.relu(bn(conv(8, "c")(x)))
    s = ops.mean(y, axis=(1, 2), keepdims=True)
    s = L.Conv2D(8, 1, name="expand")(L.Conv2D(4, 1, activation="relu", name="reduce")(s))
    return head(y * ops.hard_sigmoid(s))


def _reshape_tokens(x):  # channels stay last and whole: (N, H*W, C)
    y = ops.reshape(ops.relu(bn(conv(8, "c")(x))), (-1, 64, 8))
    return L.Dense(3, name="head")(y)


def _reshape_flatten(x):
    y = ops.reshape(ops.relu(bn(conv(6, "c")(L.MaxPooling2D()(x)))), (-1, 4 * 4 * 6))
    return L.Dense(3, name="head")(y)


def _transpose_hw(x):
    return head(ops.transpose(bn(conv(8, "c")(x)), (0, 2, 1, 3)))


def _expand_squeeze(x):
    y = ops.mean(ops.relu(bn(conv(8, "c")(x))), axis=(1, 2))
    y = ops.expand_dims(ops.expand_dims(y, 1), 1)
    return ops.squeeze(head(y), axis=(1, 2))


def _getitem_channels(x):
    y = bn(conv(10, "c")(x))
    a, b = y[..., :4], y[:, 1:-1, 1:-1, 4:]
    y = ops.concatenate([bn(L.Conv2D(6, 3, name="d")(a)), b], axis=-1)
    return head(y[:, ::2])


def _getitem_spatial(x):
    y = ops.relu(bn(conv(8, "c")(x)))[:, 0]  # (N, W, C): channels stay last
    return L.Dense(3, name="head")(y)


EXACT = {
    "add": _add_tensors,
    "subtract": _subtract_tensors,
    "maximum_minimum": _maximum_minimum,
    "scalar_arithmetic": _scalar_arithmetic,
    "hard_swish": _hard_swish,
    "per_channel_constant": _per_channel_constant,
    "relu": _unary(ops.relu),
    "relu6": _unary(ops.relu6),
    "sigmoid": _unary(ops.sigmoid),
    "hard_sigmoid": _unary(ops.hard_sigmoid),
    "silu": _unary(ops.silu),
    "hard_silu": _unary(ops.hard_silu),
    "gelu": _unary(ops.gelu),
    "tanh": _unary(ops.tanh),
    "leaky_relu": _unary(lambda y: ops.leaky_relu(y, 0.1)),
    "elu": _unary(ops.elu),
    "softplus": _unary(ops.softplus),
    "clip": _unary(lambda y: ops.clip(y, -0.5, 0.5)),
    "where_greater": _unary(lambda y: ops.where(y > 0.1, y, 0.2 * y)),
    "square": _unary(ops.square),
    "cast": _unary(lambda y: ops.cast(ops.cast(y, "float16"), "float32")),
    "pad_hw": _pad_hw("constant"),
    "pad_hw_reflect": _pad_hw("reflect"),
    "pad_channels": _pad_channels,
    "split_concat": _split_concat,
    "split_unequal": _split_unequal,
    "split_gate": _split_gate,
    "split_spatial": _split_spatial,
    "concat_then_add": _concat_then_add,
    "mean_hw": _mean_hw,
    "max_sum_hw": _max_sum_hw,
    "squeeze_excite_ops": _squeeze_excite_ops,
    "reshape_tokens": _reshape_tokens,
    "reshape_flatten": _reshape_flatten,
    "transpose_hw": _transpose_hw,
    "expand_squeeze": _expand_squeeze,
    "resize_pool": _unary(lambda y: ops.image.resize(ops.average_pool(y, 2, 2), (8, 8))),
    "getitem_channels": _getitem_channels,
    "getitem_spatial": _getitem_spatial,
}


@pytest.mark.parametrize("name", list(EXACT))
def test_op_satisfies_the_surgery_contract(name):
    model = functional(EXACT[name])
    before = predict(model, input_batch(model))
    assert_contract(model)
    compact = tffp.prune_once(model, "l1", keep_ratio=0.5)
    assert predict(compact, input_batch(model)).shape == before.shape


# ------------------------------------------------------------- graph details
def test_add_op_ties_and_marks_residual():
    graph = build_graph(functional(_add_tensors))
    group = graph.group_of_layer("a")
    assert group.id == graph.group_of_layer("b").id
    assert group.residual and group.prunable


def test_gate_op_is_not_residual():
    graph = build_graph(functional(_squeeze_excite_ops))
    group = graph.group_of_layer("c")
    assert group.id == graph.group_of_layer("expand").id and not group.residual


def test_scalar_ops_pass_channels_through():
    graph = build_graph(functional(_hard_swish))
    assert graph.group_of_layer("c").prunable


def test_split_inside_a_conv_divides_its_channels():
    graph = build_graph(functional(_split_unequal))
    call = graph.first_call(graph.layers["c"])
    assert [s.size for s in call.out_layouts[0].segments] == [3, 6]
    with pytest.raises(ValueError, match="split"):
        graph.group_of_layer("c")


def test_split_halves_that_meet_tie():
    graph = build_graph(functional(_split_gate))
    spaces = graph.first_call(graph.layers["c"]).out_layouts[0].spaces
    assert len(spaces) == 2 and graph.find(spaces[0]) == graph.find(spaces[1])


def test_concatenation_joined_to_a_conv_refines_the_conv():
    graph = build_graph(functional(_concat_then_add))
    sizes = [s.size for s in graph.first_call(graph.layers["c"]).out_layouts[0].segments]
    assert sizes == [4, 6]
    groups = {g.id: g for g in graph.groups() if g.prunable}
    assert sorted(sorted(g.producers) for g in groups.values()) == [["a", "c"], ["b", "c"]]


def test_a_stream_of_joins_to_a_concatenation_refines_every_block():
    def build(x):  # Inception-ResNet: a concatenated stream, then residual 1x1 convs
        stream = ops.concatenate([bn(conv(4, "a")(x)), bn(conv(6, "b")(x))], axis=-1)
        for i in range(14):
            stream = stream + bn(conv(10, f"up{i}")(ops.relu(stream)))
        return head(stream)

    graph = build_graph(functional(build))
    for i in range(14):
        call = graph.first_call(graph.layers[f"up{i}"])
        assert [s.size for s in call.out_layouts[0].segments] == [4, 6], i
    groups = [g for g in graph.groups() if g.prunable]
    assert sorted(len(g.producers) for g in groups) == [15, 15]


def test_channel_padding_adds_unprunable_channels():
    graph = build_graph(functional(_pad_channels))
    assert graph.group_of_layer("c").prunable
    pad = next(c for c in graph.iter_calls() if c.path.startswith("pad"))
    assert [s.size for s in pad.out_layouts[0].segments] == [2, 8, 1]
    padded = [graph.find(s) for s in pad.out_layouts[0].spaces[::2]]
    assert all(g.reasons for g in graph.groups() if g.id in padded)


# ------------------------------------------------------- cut arguments rebuilt
def test_split_sizes_are_rewritten():
    model = functional(_split_unequal)
    graph = build_graph(model)
    spaces = graph.first_call(graph.layers["c"]).out_layouts[0].spaces
    keep = {graph.find(spaces[0]): np.array([0, 2]), graph.find(spaces[1]): np.array([1, 3, 5])}
    compact = rebuild(model, graph, keep)
    (split,) = _ops_of(compact, keras.src.ops.numpy.Split)
    assert list(split.indices_or_sections) == [2]
    assert compact.get_layer("c").filters == 5


def test_equal_split_becomes_sizes_after_an_uneven_cut():
    model = functional(_split_concat)
    graph = build_graph(model)
    first, second = graph.first_call(graph.layers["c"]).out_layouts[0].spaces
    keep = {graph.find(first): np.array([1]), graph.find(second): np.array([0, 1, 3])}
    compact = rebuild(model, graph, keep)
    (split,) = _ops_of(compact, keras.src.ops.numpy.Split)
    assert list(split.indices_or_sections) == [1]
    assert compact.get_layer("head").input.shape[-1] == 4


def test_reshape_target_is_rewritten():
    model = functional(_reshape_tokens)
    compact = tffp.prune_channels(model, {"c": [0, 3, 4]})
    (reshape,) = _ops_of(compact, keras.src.ops.numpy.Reshape)
    assert tuple(reshape.newshape) == (-1, 64, 3)


def test_flattening_reshape_is_rewritten():
    model = functional(_reshape_flatten)
    compact = tffp.prune_channels(model, {"c": [1, 4]})
    (reshape,) = _ops_of(compact, keras.src.ops.numpy.Reshape)
    assert tuple(reshape.newshape) == (-1, 4 * 4 * 2)
    assert compact.get_layer("head").kernel.shape == (32, 3)


def test_channel_slice_bounds_are_rewritten():
    model = functional(_getitem_channels)
    graph = build_graph(model)
    first, second = graph.first_call(graph.layers["c"]).out_layouts[0].spaces
    keep = {graph.find(first): np.array([1, 3]), graph.find(second): np.array([0, 2, 5])}
    compact = rebuild(model, graph, keep)
    keys = [
        node.arguments.args[1]
        for op in _ops_of(compact, keras.src.ops.numpy.GetItem)
        for node in op._inbound_nodes
    ]
    channel_slices = sorted((k[-1].start, k[-1].stop) for k in keys if len(k) == 4)
    assert channel_slices == [(0, 2), (2, 5)]
    assert compact.get_layer("c").filters == 5


def test_per_channel_constants_are_cut():
    model = functional(_per_channel_constant)
    compact = tffp.prune_channels(model, {"c": [1, 2, 6]})
    constants = [
        arg
        for op in compact.operations
        if not isinstance(op, keras.Layer)
        for node in op._inbound_nodes
        for arg in node.arguments.args
        if isinstance(arg, np.ndarray)
    ]
    np.testing.assert_allclose(constants[0], np.linspace(0.5, 1.5, 8)[[1, 2, 6]], rtol=1e-6)
    np.testing.assert_array_equal(constants[1], [1.0, 2.0, 6.0])


def test_compact_model_with_ops_saves_and_converts(tmp_path):
    def build(x):
        y = _hard_swish(x)
        a, b = ops.split(ops.pad(y, ((0, 0), (1, 1), (1, 1), (0, 0))), [1], axis=-1)
        return ops.mean(ops.concatenate([b, a], axis=-1), axis=(1, 2))

    model = functional(build)
    compact = tffp.prune_once(model, "l1", keep_ratio=0.5)
    assert compact.get_layer("c").filters == 4
    x = input_batch(model)
    path = tmp_path / "compact.keras"
    compact.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(predict(loaded, x), predict(compact, x), atol=1e-6)
    assert len(tffp.export.to_tflite(compact)) > 0


# ------------------------------------------------------------------ refusals
def _cumsum_and_plain(x):
    a = ops.cumsum(bn(conv(8, "a")(x)), axis=-1)
    b = ops.relu(bn(conv(8, "b")(x)))
    return head(ops.concatenate([a, b], axis=-1))


def test_unknown_op_makes_its_group_unprunable_with_the_reason():
    model = functional(_cumsum_and_plain)
    graph = build_graph(model)
    refused = graph.group_of_layer("a")
    assert not refused.prunable
    assert any("keras.ops.cumsum" in r and "Cumsum" in r for r in refused.reasons)
    assert graph.group_of_layer("b").prunable
    compact = tffp.prune_once(model, "l1", keep_ratio=0.5)
    assert compact.get_layer("a").filters == 8 and compact.get_layer("b").filters == 4
    with pytest.raises(ValueError, match="cumsum"):
        tffp.prune_channels(model, {"a": [0, 1]})


def test_only_unknown_ops_raises_a_clear_error():
    model = functional(lambda x: head(ops.cumsum(conv(8, "a")(x), axis=-1)))
    with pytest.raises(ValueError, match="keras.ops.cumsum"):
        tffp.prune_once(model, "l1", keep_ratio=0.5)


@pytest.mark.parametrize(
    "op, match",
    [
        (
            lambda y: y * ops.sigmoid(ops.mean(y, axis=-1, keepdims=True)),
            "reduces over the channel",
        ),
        (lambda y: ops.softmax(y, axis=-1), "softmax over the channel"),
        (lambda y: ops.transpose(y, (0, 3, 1, 2)), "transposes the channel axis"),
        (lambda y: ops.reshape(y, (-1, 8, 8, 2, 4)), "reshapes"),
        (lambda y: ops.pad(y, ((0, 0), (0, 0), (0, 0), (1, 1)), mode="reflect"), "mode 'reflect'"),
        (lambda y: y * ops.expand_dims(y[..., 3], -1), "indexes the channel axis with 3"),
        (lambda y: y[..., ::2], "indexes the channel axis with slice(None, None, 2)"),
    ],
    ids=[
        "mean_over_channels",
        "softmax",
        "transpose",
        "channel_shuffle_reshape",
        "reflect_pad",
        "channel_index",
        "stepped_channels",
    ],
)
def test_channel_mixing_ops_are_refused(op, match):
    def build(x):
        y = op(bn(conv(8, "c")(x)))
        y = ops.reshape(y, (-1, 8, 8, 8)) if len(y.shape) != 4 or y.shape[1] != 8 else y
        return head(y)

    graph = build_graph(functional(build))
    group = graph.group_of_layer("c")
    assert not group.prunable
    assert any(match in r for r in group.reasons), group.reasons


def test_registering_an_op_makes_it_prunable(monkeypatch):
    sinh = keras.src.ops.numpy.Sinh
    model = functional(_unary(ops.sinh))
    assert not build_graph(model).group_of_layer("c").prunable
    monkeypatch.setitem(registry._REGISTRY, sinh, registry.ElementwiseRule(residual=False))
    assert_contract(model)
