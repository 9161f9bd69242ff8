"""Constant folding of removed channels and consumer maps (tf_filterprune.surgery)."""

import keras
import numpy as np
import pytest
from helpers import input_batch, predict, random_keep, randomize_batchnorm, randomize_biases
from keras import layers as L

from tf_filterprune.graph import build_graph
from tf_filterprune.surgery import prune_channels, rebuild, zeroed_copy


def functional(build, shape=(8, 8, 3)):
    inp = keras.Input(shape)
    return keras.Model(inp, build(inp))


def bn_relu(x):
    return L.ReLU()(L.BatchNormalization()(x))


def prepared(model, seed=0):
    randomize_batchnorm(model, seed)
    randomize_biases(model, seed)
    return model


def compact_and_reference(model, keep=None, fold_constants=True, consumer_maps=None, seed=0):
    graph = build_graph(model)
    keep = random_keep(graph, 0.5, seed) if keep is None else keep
    notes = []
    compact = rebuild(
        model,
        graph,
        keep,
        consumer_maps=consumer_maps,
        fold_constants=fold_constants,
        notes=notes,
    )
    reference = zeroed_copy(
        model, graph, keep, consumer_maps=consumer_maps, fold_constants=fold_constants
    )
    return compact, reference, notes, graph, keep


# ------------------------------------------------------------ (a) exact consumers
def _one_by_one(x):
    x = bn_relu(L.Conv2D(8, 3, padding="same", name="c")(x))
    return L.Conv2D(3, 1, name="d")(x)


def _valid(x):
    x = bn_relu(L.Conv2D(8, 3, padding="same", name="c")(x))
    return L.Conv2D(3, 3, padding="valid", name="d")(x)


def _gap_dense(x):
    x = L.BatchNormalization()(L.Conv2D(8, 3, padding="same", name="c")(x))
    return L.Dense(3, name="d")(L.GlobalAveragePooling2D()(L.ReLU()(x)))


def _gmp_dense(x):
    x = bn_relu(L.Conv2D(8, 3, padding="same", name="c")(x))
    return L.Dense(3, name="d")(L.GlobalMaxPooling2D()(x))


def _flatten_dense(x):
    x = bn_relu(L.Conv2D(6, 3, padding="same", name="c")(x))
    return L.Dense(3, name="d")(L.Flatten()(L.MaxPooling2D()(x)))


def _concat_one_by_one(x):
    a = bn_relu(L.Conv2D(4, 3, padding="same", name="a")(x))
    b = bn_relu(L.Conv2D(6, 1, name="b")(a))
    y = bn_relu(L.Concatenate()([a, b]))
    return L.Conv2D(3, 1, name="d")(y)


def _no_bias_consumer(x):
    x = L.BatchNormalization()(L.Conv2D(8, 3, padding="same", use_bias=False, name="c")(x))
    return L.Conv2D(3, 1, use_bias=False, name="d")(L.ELU()(x))


def _residual(x):
    x = bn_relu(L.Conv2D(8, 1, name="stem")(x))
    y = bn_relu(L.Conv2D(6, 1, name="b_c1")(x))
    y = L.BatchNormalization()(L.Conv2D(8, 1, name="b_c2")(y))
    x = L.ReLU()(L.Add()([x, y]))
    return L.Dense(3, name="head")(L.GlobalAveragePooling2D()(x))


def _squeeze_excite(x):
    x = bn_relu(L.Conv2D(8, 1, name="c")(x))
    s = L.GlobalAveragePooling2D(keepdims=True)(x)
    s = L.Conv2D(4, 1, activation="relu", name="se_reduce")(s)
    s = L.Conv2D(8, 1, activation="sigmoid", name="se_expand")(s)
    return L.Conv2D(3, 1, name="d")(L.Multiply()([x, s]))


def _separable_valid(x):
    x = bn_relu(L.Conv2D(8, 1, name="c")(x))
    return L.SeparableConv2D(4, 3, padding="valid", name="d")(x)


def _depthwise_valid(x):
    x = bn_relu(L.Conv2D(8, 1, name="c")(x))
    x = bn_relu(L.DepthwiseConv2D(3, padding="valid", name="dw")(x))
    return L.Conv2D(3, 1, name="d")(x)


def _dense_chain(x):
    x = L.Dense(3, name="d")(L.ReLU()(L.Dense(12, name="c")(L.GlobalAveragePooling2D()(x))))
    return x


EXACT = {
    "1x1": _one_by_one,
    "valid": _valid,
    "gap_dense": _gap_dense,
    "gmp_dense": _gmp_dense,
    "flatten_dense": _flatten_dense,
    "concat_1x1": _concat_one_by_one,
    "no_bias": _no_bias_consumer,
    "residual": _residual,
    "squeeze_excite": _squeeze_excite,
    "separable_valid": _separable_valid,
    "depthwise_valid": _depthwise_valid,
    "dense_chain": _dense_chain,
}


@pytest.mark.parametrize("name", list(EXACT))
def test_exact_consumers_fold_to_the_kernel_zeroed_model(name):
    model = prepared(functional(EXACT[name]))
    compact, reference, notes, graph, keep = compact_and_reference(model)
    x = input_batch(model)
    assert notes == []
    np.testing.assert_allclose(predict(compact, x), predict(reference, x), atol=1e-5, rtol=0)
    # the fold is not vacuous: dropping the constants gives another model
    dropped = rebuild(model, graph, keep, fold_constants=False)
    assert np.max(np.abs(predict(dropped, x) - predict(reference, x))) > 1e-3


def test_consumer_without_bias_gets_one():
    model = prepared(functional(_no_bias_consumer))
    compact, _, _, _, _ = compact_and_reference(model)
    assert compact.get_layer("d").use_bias
    assert not model.get_layer("d").use_bias
    kept = rebuild(
        model, build_graph(model), random_keep(build_graph(model), 0.5), fold_constants=False
    )
    assert not kept.get_layer("d").use_bias


def test_default_exact_and_false_agree_with_their_references_on_exact_models():
    model = prepared(functional(_concat_one_by_one))
    x = input_batch(model)
    for mode in (True, "exact", False):
        compact, reference, notes, _, _ = compact_and_reference(model, fold_constants=mode)
        assert notes == []
        np.testing.assert_allclose(predict(compact, x), predict(reference, x), atol=1e-5, rtol=0)


# ------------------------------------------------------------ (b) inexact consumers
def _same_3x3(x):
    x = bn_relu(L.Conv2D(8, 3, padding="same", name="c")(x))
    return L.Conv2D(3, 3, padding="same", name="d")(x)


def test_same_padded_consumer_gets_a_note_and_matches_in_the_interior():
    model = prepared(functional(_same_3x3, (10, 10, 3)))
    compact, reference, notes, graph, keep = compact_and_reference(model)
    x = input_batch(model)
    got, expected = predict(compact, x), predict(reference, x)
    assert len(notes) == 1
    removed = graph.group_of_layer("c").size - len(keep[graph.group_of_layer("c").id])
    assert "'d'" in notes[0] and "'c'" in notes[0] and f"{removed} removed channel" in notes[0]
    assert "largest |constant|" in notes[0] and "interior" in notes[0]
    # a 3x3 'same' conv sees the padding only in its one-pixel border
    np.testing.assert_allclose(got[:, 1:-1, 1:-1], expected[:, 1:-1, 1:-1], atol=1e-5, rtol=0)
    assert np.max(np.abs(got - expected)) > 1e-4  # the border differs


def test_same_padded_consumer_with_exact_folding_drops_the_constant():
    model = prepared(functional(_same_3x3, (10, 10, 3)))
    compact, reference, notes, graph, keep = compact_and_reference(model, fold_constants="exact")
    x = input_batch(model)
    assert len(notes) == 1 and "not folded" in notes[0]
    np.testing.assert_allclose(predict(compact, x), predict(reference, x), atol=1e-5, rtol=0)
    dropped = rebuild(model, graph, keep, fold_constants=False)
    np.testing.assert_allclose(predict(compact, x), predict(dropped, x), atol=1e-6, rtol=0)


def _zero_padding(x):
    x = bn_relu(L.Conv2D(8, 3, padding="same", name="c")(x))
    return L.Conv2D(3, 1, name="d")(L.ZeroPadding2D(1)(x))


def _depthwise_same(x):
    x = bn_relu(L.Conv2D(8, 1, name="c")(x))
    x = bn_relu(L.DepthwiseConv2D(3, padding="same", name="dw")(x))
    return L.Conv2D(3, 1, name="d")(x)


def _separable_same(x):
    x = bn_relu(L.Conv2D(8, 1, name="c")(x))
    return L.SeparableConv2D(4, 3, padding="same", name="d")(x)


@pytest.mark.parametrize(
    "build, border",
    [(_zero_padding, 1), (_depthwise_same, 1), (_separable_same, 1)],
    ids=["zero_padding", "depthwise_same", "separable_same"],
)
def test_inexact_paths_note_and_match_in_the_interior(build, border):
    model = prepared(functional(build, (10, 10, 3)))
    compact, reference, notes, _, _ = compact_and_reference(model)
    x = input_batch(model)
    got, expected = predict(compact, x), predict(reference, x)
    assert len(notes) == 1 and "'d'" in notes[0], notes
    b = border
    np.testing.assert_allclose(got[:, b:-b, b:-b], expected[:, b:-b, b:-b], atol=1e-5, rtol=0)
    compact, reference, _, _, _ = compact_and_reference(model, fold_constants="exact")
    np.testing.assert_allclose(predict(compact, x), predict(reference, x), atol=1e-5, rtol=0)


def test_undeterminable_constant_is_not_folded_and_noted():
    def build(x):
        x = L.LayerNormalization(name="ln")(L.Conv2D(8, 1, name="c")(x))
        return L.Conv2D(3, 1, name="d")(x)

    model = prepared(functional(build))
    graph = build_graph(model)
    keep = {graph.group_of_layer("c").id: np.array([0, 2, 3, 5])}
    notes = []
    compact = rebuild(model, graph, keep, notes=notes)
    dropped = rebuild(model, graph, keep, fold_constants=False)
    assert len(notes) == 2  # the fold's, then the LayerNormalization cut's (not output-exact)
    assert "normalizes over the channels" in notes[1]
    assert "'d'" in notes[0] and "'ln'" in notes[0] and "4 removed channel" in notes[0]
    assert "cannot" in notes[0] or "can determine" in notes[0]
    np.testing.assert_array_equal(
        compact.get_layer("d").bias.numpy(), dropped.get_layer("d").bias.numpy()
    )


# ------------------------------------------------------------ (c) activations, no BN
@pytest.mark.parametrize(
    "between",
    [
        lambda: L.ReLU(),
        lambda: L.Activation("sigmoid"),
        lambda: L.Activation("tanh"),
        lambda: L.Activation("gelu"),
        lambda: L.LeakyReLU(0.2),
        lambda: L.ELU(),
        lambda: L.PReLU(alpha_initializer=keras.initializers.RandomUniform(0.1, 0.5)),
        lambda: L.Dropout(0.5),
        lambda: L.MaxPooling2D(),
        lambda: L.AveragePooling2D(3, strides=1, padding="same"),
        lambda: L.UpSampling2D(),
        lambda: L.Cropping2D(1),
    ],
    ids=[
        "relu",
        "sigmoid",
        "tanh",
        "gelu",
        "leaky",
        "elu",
        "prelu",
        "dropout",
        "maxpool",
        "avgpool_same",
        "upsampling",
        "cropping",
    ],
)
def test_activations_without_batchnorm(between):
    def build(x):
        x = L.Conv2D(8, 3, padding="same", name="c")(x)
        x = between()(x)
        x = L.Activation("swish")(x)
        return L.Conv2D(3, 1, name="d")(x)

    model = prepared(functional(build))
    compact, reference, notes, _, _ = compact_and_reference(model)
    x = input_batch(model)
    assert notes == []
    np.testing.assert_allclose(predict(compact, x), predict(reference, x), atol=1e-5, rtol=0)


def test_fused_activation_of_the_producer():
    model = prepared(
        functional(lambda x: L.Conv2D(3, 1, name="d")(L.Conv2D(8, 1, activation="sigmoid")(x)))
    )
    compact, reference, notes, _, _ = compact_and_reference(model)
    x = input_batch(model)
    assert notes == []
    np.testing.assert_allclose(predict(compact, x), predict(reference, x), atol=1e-5, rtol=0)


def test_fold_value_is_the_bias_through_batchnorm_and_relu():
    model = prepared(functional(_one_by_one))
    graph = build_graph(model)
    keep = {graph.group_of_layer("c").id: np.array([0, 1, 2, 3, 4, 5, 6])}
    compact = rebuild(model, graph, keep)
    gamma, beta, mean, var = model.layers[2].get_weights()
    eps = model.layers[2].epsilon
    b = model.get_layer("c").bias.numpy()[7]
    k = max(0.0, (b - mean[7]) / np.sqrt(var[7] + eps) * gamma[7] + beta[7])
    d = model.get_layer("d")
    expected = d.bias.numpy() + k * d.kernel.numpy()[0, 0, 7]
    np.testing.assert_allclose(compact.get_layer("d").bias.numpy(), expected, atol=1e-6)


# ------------------------------------------------------------ (d) no mutation
def test_input_model_is_not_mutated():
    model = prepared(functional(_no_bias_consumer))
    before = [w.copy() for w in model.get_weights()]
    config = model.get_config()
    graph = build_graph(model)
    keep = random_keep(graph, 0.5)
    for mode in (True, "exact", False):
        rebuild(model, graph, keep, fold_constants=mode, notes=[])
        zeroed_copy(model, graph, keep, fold_constants=mode)
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    assert model.get_config() == config
    assert not model.get_layer("d").use_bias


def test_bad_fold_mode_is_refused():
    model = functional(_one_by_one)
    graph = build_graph(model)
    with pytest.raises(ValueError, match="fold_constants"):
        rebuild(model, graph, random_keep(graph), fold_constants="interior")


# ------------------------------------------------------------ consumer maps
def _group_id(graph, name):
    return graph.group_of_layer(name).id


@pytest.mark.parametrize("name", ["1x1", "flatten_dense", "concat_1x1", "squeeze_excite"])
def test_identity_map_is_selection(name):
    model = prepared(functional(EXACT[name]))
    graph = build_graph(model)
    keep = random_keep(graph, 0.5)
    size = {g.id: g.size for g in graph.groups()}
    maps = {gid: np.eye(size[gid])[idx] for gid, idx in keep.items()}
    plain = rebuild(model, graph, keep)
    mapped = rebuild(model, graph, keep, consumer_maps=maps)
    for a, b in zip(plain.get_weights(), mapped.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def _make_twins(model, conv_name, bn_name, src, dst):
    """Makes filter ``dst`` of ``conv_name`` identical to ``src`` (kernel, bias, BN)."""
    conv = model.get_layer(conv_name)
    kernel, bias = conv.get_weights()
    kernel[..., dst], bias[dst] = kernel[..., src], bias[src]
    conv.set_weights([kernel, bias])
    if bn_name is not None:
        bn = model.get_layer(bn_name)
        values = bn.get_weights()
        for v in values:
            v[dst] = v[src]
        bn.set_weights(values)


def _merge_map(keep, size, members):
    """Rows of the identity at ``keep``, with each member summed onto its representative."""
    matrix = np.eye(size)[keep]
    for rep, member in members.items():
        matrix[list(keep).index(rep), member] = 1.0
    return matrix


def _merge_model(consumer):
    def build(x):
        x = L.Conv2D(6, 3, padding="same", name="c")(x)
        x = L.ReLU()(L.BatchNormalization(name="bn")(x))
        if consumer == "conv_same":
            return L.Conv2D(3, 3, padding="same", name="d")(x)
        if consumer == "flatten_dense":
            return L.Dense(3, name="d")(L.Flatten()(x))
        other = L.Conv2D(2, 1, name="other")(x)
        return L.Conv2D(3, 1, name="d")(L.Concatenate()([other, x]))

    return build


@pytest.mark.parametrize("consumer", ["conv_same", "flatten_dense", "concat"])
def test_map_merging_identical_filters_is_exact(consumer):
    model = prepared(functional(_merge_model(consumer), (6, 6, 3)))
    _make_twins(model, "c", "bn", src=1, dst=4)
    graph = build_graph(model)
    gid = _group_id(graph, "c")
    keep = {gid: np.array([0, 1, 2, 3, 5])}
    maps = {gid: _merge_map(keep[gid], 6, {1: 4})}
    notes = []
    compact = rebuild(model, graph, keep, consumer_maps=maps, notes=notes)
    x = input_batch(model)
    assert compact.get_layer("c").filters == 5 and notes == []
    np.testing.assert_allclose(predict(compact, x), predict(model, x), atol=1e-5, rtol=0)
    # plain selection loses the member's contribution
    plain = rebuild(model, graph, keep)
    assert np.max(np.abs(predict(plain, x) - predict(model, x))) > 1e-3


def test_map_with_removed_channels_folds_only_zero_columns():
    model = prepared(functional(_merge_model("concat"), (6, 6, 3)))
    _make_twins(model, "c", "bn", src=1, dst=4)
    graph = build_graph(model)
    gid = _group_id(graph, "c")
    keep = {gid: np.array([0, 1, 3])}  # 4 merged onto 1; 2 and 5 removed (folded)
    maps = {gid: _merge_map(keep[gid], 6, {1: 4})}
    compact, reference, notes, _, _ = compact_and_reference(model, keep, consumer_maps=maps)
    x = input_batch(model)
    assert notes == []
    np.testing.assert_allclose(predict(compact, x), predict(reference, x), atol=1e-5, rtol=0)
    # the reference with the members merged is the original with 2 and 5 kernel-zeroed
    plain_ref = zeroed_copy(model, graph, {gid: np.array([0, 1, 3, 4])})
    np.testing.assert_allclose(predict(reference, x), predict(plain_ref, x), atol=1e-5, rtol=0)


def test_map_of_wrong_shape_names_the_producer():
    model = functional(_one_by_one)
    graph = build_graph(model)
    gid = _group_id(graph, "c")
    with pytest.raises(ValueError, match=r"'c'.*shape"):
        rebuild(model, graph, {gid: np.array([0, 1])}, consumer_maps={gid: np.ones((3, 8))})


def test_map_without_keep_is_refused():
    model = functional(_one_by_one)
    graph = build_graph(model)
    with pytest.raises(ValueError, match="no kept-index set"):
        rebuild(model, graph, {}, consumer_maps={_group_id(graph, "c"): np.ones((2, 8))})


@pytest.mark.parametrize("build", [_depthwise_valid, _separable_valid], ids=["dw", "sep"])
def test_map_into_a_per_channel_consumer_is_refused(build):
    model = functional(build)
    graph = build_graph(model)
    gid = _group_id(graph, "c")
    keep = np.array([0, 1, 2])
    matrix = _merge_map(keep, 8, {0: 5})
    with pytest.raises(ValueError, match="mixing consumers") as info:
        rebuild(model, graph, {gid: keep}, consumer_maps={gid: matrix})
    assert "'dw'" in str(info.value) or "'d'" in str(info.value)
    rebuild(model, graph, {gid: keep}, consumer_maps={gid: np.eye(8)[keep]})  # selection is fine


def test_prune_channels_takes_maps_by_layer_name():
    model = prepared(functional(_merge_model("conv_same"), (6, 6, 3)))
    _make_twins(model, "c", "bn", src=2, dst=0)
    keep = [1, 2, 3, 4, 5]
    notes = []
    compact = prune_channels(
        model, {"c": keep}, consumer_maps={"c": _merge_map(keep, 6, {2: 0})}, notes=notes
    )
    x = input_batch(model)
    np.testing.assert_allclose(predict(compact, x), predict(model, x), atol=1e-5, rtol=0)


def test_shared_consumer_seeing_two_constants_is_noted():
    shared = L.Conv2D(4, 1, name="shared")

    def build(x):
        a = L.Conv2D(8, 1, name="a")(x)
        b = L.Conv2D(8, 1, name="b")(x)
        return L.Add()([shared(a), shared(b)])

    model = prepared(functional(build))
    graph = build_graph(model)
    keep = {_group_id(graph, "a"): np.array([0, 2, 4])}
    x = input_batch(model)
    notes = []
    rebuild(model, graph, keep, notes=notes)
    assert len(notes) == 1 and "'shared'" in notes[0]
    compact, reference, _, _, _ = compact_and_reference(model, keep, fold_constants="exact")
    np.testing.assert_allclose(predict(compact, x), predict(reference, x), atol=1e-5, rtol=0)


def test_unknown_spatial_size_still_folds():
    def build(x):
        x = bn_relu(L.Conv2D(8, 3, padding="same", name="c")(x))
        x = bn_relu(L.Conv2D(6, 1, name="c2")(x))
        return L.Dense(3, name="d")(L.GlobalAveragePooling2D()(x))

    model = prepared(functional(build, (None, None, 3)))
    graph = build_graph(model)
    keep = random_keep(graph, 0.5)
    notes = []
    compact = rebuild(model, graph, keep, notes=notes)
    reference = zeroed_copy(model, graph, keep)
    x = [np.random.default_rng(0).normal(size=(2, 9, 7, 3)).astype("float32")]
    assert notes == []
    np.testing.assert_allclose(predict(compact, x), predict(reference, x), atol=1e-5, rtol=0)


def test_rebuild_keeps_the_initializers_in_the_compact_config():
    # The twins are built with zero initializers (their weights are copied), then
    # given back the originals': the compact model's config is the original's.
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 3, kernel_initializer="he_normal", bias_initializer="ones", name="c")(inp)
    x = L.BatchNormalization(gamma_initializer="ones", name="bn")(x)
    model = keras.Model(inp, L.Conv2D(2, 1, name="head")(x))
    graph = build_graph(model)
    compact = rebuild(model, graph, {graph.group_of_layer("c").id: np.array([0, 2, 4])})
    for name in ("c", "bn", "head"):
        original, cut = model.get_layer(name).get_config(), compact.get_layer(name).get_config()
        for key in original:
            if key.endswith("_initializer"):
                assert cut[key] == original[key], (name, key)
    assert compact.get_layer("c").filters == 3


def test_non_finite_channels_are_not_known_constants():
    from tf_filterprune.surgery.constants import _equal_channels

    out = np.array([[[1.0, np.inf, 2.0, np.nan]], [[1.0, np.inf, 3.0, np.nan]]], np.float32)
    assert _equal_channels(out).tolist() == [True, False, False, False]
