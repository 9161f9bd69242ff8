"""prune_once: criteria, budgets, rounding, ignored layers, errors; the model is never mutated."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import input_batch
from keras import layers as L

import tf_filterprune as tffp
from tf_filterprune.graph import build_graph
from tf_filterprune.methods import criteria
from tf_filterprune.pruner import kept_count


def small_cnn():
    inp = keras.Input((12, 12, 3))
    x = inp
    for i, width in enumerate((16, 24, 32)):
        x = L.Conv2D(width, 3, padding="same", name=f"conv{i}")(x)
        x = L.BatchNormalization(name=f"bn{i}")(x)
        x = L.ReLU()(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inp, L.Dense(5, name="head")(x))


def weights_of(model):
    return [w.copy() for w in model.get_weights()]


def kept_indices(original_kernel, compact_kernel):
    """Original output channels of a compact kernel, found by matching its filters."""
    original = original_kernel.reshape(-1, original_kernel.shape[-1]).T
    compact = compact_kernel.reshape(-1, compact_kernel.shape[-1]).T
    out = []
    for column in compact:
        (match,) = np.flatnonzero(np.all(np.isclose(original, column), axis=1))
        out.append(int(match))
    return out


def kept_by(model, criterion, layer="c", **kwargs):
    """Channels of ``layer`` that ``prune_once`` keeps (at keep_ratio 0.5 unless told)."""
    kwargs.setdefault("keep_ratio", 0.5)
    compact = tffp.prune_once(model, criterion, **kwargs)
    original = model.get_layer(layer).get_weights()[0]
    return kept_indices(original, compact.get_layer(layer).get_weights()[0])


def conv_with_filters(filters, kernel_size=3):
    """Conv ``c`` whose filters (rows, flattened HWI) are given, then a Dense head."""
    n, size = filters.shape
    in_ch = size // kernel_size**2
    inp = keras.Input((6, 6, in_ch))
    x = L.Conv2D(n, kernel_size, padding="same", name="c")(inp)
    model = keras.Model(inp, L.Dense(3, name="head")(L.GlobalAveragePooling2D()(x)))
    kernel = filters.T.reshape(kernel_size, kernel_size, in_ch, n).astype("float32")
    model.get_layer("c").set_weights([kernel, np.zeros(n, "float32")])
    np.testing.assert_allclose(criteria.filter_matrix(model.get_layer("c")), filters, atol=1e-6)
    return model


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn_gamma", "fpgm", "random"])
def test_criteria_give_configured_widths(criterion):
    model = small_cnn()
    before = weights_of(model)
    compact = tffp.prune_once(model, criterion, keep_ratio=0.5)
    assert [compact.get_layer(f"conv{i}").filters for i in range(3)] == [8, 12, 16]
    assert compact.get_layer("head").units == 5
    assert compact(input_batch(model)[0]).shape == (2, 5)
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert model.get_layer("conv0").filters == 16


def test_l1_keeps_largest_filters():
    model = small_cnn()
    kernel, bias = model.get_layer("conv0").get_weights()
    scale = np.linspace(0.1, 2.0, 16)[np.random.default_rng(1).permutation(16)]
    model.get_layer("conv0").set_weights([np.ones_like(kernel) * scale, bias])
    compact = tffp.prune_once(model, "l1", per_layer={"conv0": 0.25}, keep_ratio=1.0)
    expected = np.sort(np.argsort(-scale)[:4])
    kept_kernel = compact.get_layer("conv0").get_weights()[0]
    np.testing.assert_allclose(kept_kernel[0, 0, 0], scale[expected])


def test_bn_gamma_keeps_largest_gammas():
    model = small_cnn()
    gamma = (np.random.default_rng(2).permutation(24) - 6.0).astype("float32")  # some < 0
    bn = model.get_layer("bn1")
    bn.set_weights([gamma, *bn.get_weights()[1:]])
    expected = np.sort(np.argsort(-np.abs(gamma))[:12])
    kept = kept_by(model, "bn_gamma", "conv1", per_layer={"conv1": 0.5}, keep_ratio=1.0)
    assert kept == expected.tolist()
    assert kept != kept_by(model, "l1", "conv1", per_layer={"conv1": 0.5}, keep_ratio=1.0)
    compact = tffp.prune_once(model, "bn_gamma", per_layer={"conv1": 0.5}, keep_ratio=1.0)
    np.testing.assert_array_equal(compact.get_layer("bn1").gamma.numpy(), gamma[expected])


def test_bn_gamma_without_batchnorm_falls_back_to_l1():
    rng = np.random.default_rng(5)
    model = conv_with_filters(rng.normal(size=(8, 18)))
    assert kept_by(model, "bn_gamma") == kept_by(model, "l1")


def test_l2_and_l1_rank_spiky_and_flat_filters_differently():
    # spiky: one big weight (L1 = L2 = 3.0, 2.8); flat: nine medium weights
    # (L1 = 4.5, 4.05 but L2 = 1.5, 1.35).
    spike = np.eye(9)[4]
    filters = np.stack([np.full(9, 0.5), 3.0 * spike, np.full(9, 0.45), 2.8 * spike])
    model = conv_with_filters(filters, kernel_size=3)
    graph = build_graph(model)
    group = graph.group_of_layer("c")
    l1 = np.abs(filters).sum(axis=1)
    l2 = np.linalg.norm(filters, axis=1)
    np.testing.assert_allclose(criteria.score_group(graph, group, "l1"), l1 / l1.mean(), 1e-6)
    np.testing.assert_allclose(criteria.score_group(graph, group, "l2"), l2 / l2.mean(), 1e-6)
    assert kept_by(model, "l2") == [1, 3]
    assert kept_by(model, "l1") == [0, 2]


def test_fpgm_prunes_the_filters_nearest_the_geometric_median():
    # Four filters clustered around p (f4 nearest its centre, f1 the loosest),
    # one far below (f3, tiny norm) and one far above (f5 = 3p).
    p, e = np.full(18, 2.0), np.eye(18)
    filters = np.stack(
        [p + 0.05 * e[0], p + 0.4 * e[1], p - 0.1 * e[2], np.full(18, 0.1), p + 0.02 * e[3], 3 * p]
    )
    brute = np.array([sum(np.linalg.norm(a - b) for b in filters) for a in filters])
    np.testing.assert_allclose(criteria.fpgm_scores(filters), brute, rtol=1e-6)
    model = conv_with_filters(filters)
    graph = build_graph(model)
    scores = criteria.score_group(graph, graph.group_of_layer("c"), "fpgm")
    np.testing.assert_allclose(scores, brute / brute.mean(), rtol=1e-5)
    assert np.sort(np.argsort(-brute)[:3]).tolist() == [1, 3, 5]
    assert kept_by(model, "fpgm") == [1, 3, 5]
    assert kept_by(model, "l1") == [0, 1, 5]  # norms would keep a cluster member instead


def test_random_is_seeded():
    model = small_cnn()
    a = tffp.prune_once(model, "random", seed=3).get_layer("conv1").get_weights()[0]
    b = tffp.prune_once(model, "random", seed=3).get_layer("conv1").get_weights()[0]
    c = tffp.prune_once(model, "random", seed=4).get_layer("conv1").get_weights()[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_random_keep_sets_follow_the_seed():
    model = conv_with_filters(np.random.default_rng(0).normal(size=(16, 18)))
    sets = {seed: kept_by(model, "random", seed=seed) for seed in range(4)}
    assert all(len(k) == 8 == len(set(k)) for k in sets.values())
    assert all(kept_by(model, "random", seed=seed) == k for seed, k in sets.items())
    assert len({tuple(k) for k in sets.values()}) == 4  # each seed its own set
    assert kept_by(model, "l1") not in sets.values()


def test_taylor_needs_data():
    model = small_cnn()
    with pytest.raises(ValueError, match="needs `data`"):
        tffp.prune_once(model, "taylor")
    with pytest.raises(ValueError, match=r"\(x, y\) batches"):
        tffp.prune_once(model, "taylor", data=[input_batch(model)[0]])


def taylor_model():
    """Dense ``c`` (6 units, ReLU) -> Dense head, built so L1 and Taylor disagree.

    Unit j's kernel column is ``scale[j] * v``. Units 0 and 1 are large by norm
    but the loss cannot see them: unit 0's ReLU is dead on positive inputs, unit
    1's head weight is 0. Units 2-5 are small; for them the Taylor score is
    proportional to scale * head weight: 0.1, 0.015, 0.24, 0.16. Unit 3 also has
    +5/-5 on inputs 0 and 1, which are always equal: its largest weights cancel,
    so |sum W*G| ignores them while sum |W*G| (and L1) would not.
    """
    inp = keras.Input((4,))
    model = keras.Model(inp, L.Dense(1, name="head")(L.Dense(6, "relu", name="c")(inp)))
    v = np.array([1.0, 0.8, 1.2, 0.9])
    scale = np.array([-1.0, 1.0, 0.1, 0.3, 0.12, 0.2])
    kernel = np.outer(v, scale)
    kernel[:2, 3] += [5.0, -5.0]
    head = np.array([[1.0], [0.0], [1.0], [0.05], [2.0], [0.8]])
    model.get_layer("c").set_weights([kernel.astype("float32"), np.zeros(6, "float32")])
    model.get_layer("head").set_weights([head.astype("float32"), np.zeros(1, "float32")])
    x = np.random.default_rng(0).uniform(0.5, 1.5, (16, 4)).astype("float32")
    x[:, 1] = x[:, 0]
    y = np.full((16, 1), 20.0, "float32")  # far above every prediction
    return model, [(x[:8], y[:8]), (x[8:], y[8:])]


def test_taylor_scores_are_weight_times_gradient():
    model, data = taylor_model()
    kernel = model.get_layer("c").kernel
    grads = []
    for x, y in data:
        with tf.GradientTape() as tape:
            value = tf.reduce_mean(tf.square(y - model(x)))
        grads.append(tape.gradient(value, kernel.value).numpy())
    expected = np.abs((kernel.numpy() * np.mean(grads, axis=0)).sum(axis=0))
    assert expected[0] == expected[1] == 0.0 and np.all(expected[2:] > 0)

    loss = keras.losses.MeanSquaredError()
    gradients = criteria.taylor_gradients(model, [model.get_layer("c")], data, 10, loss)
    np.testing.assert_allclose(gradients[id(model.get_layer("c"))][0], np.mean(grads, axis=0))
    graph = build_graph(model)
    scores = criteria.score_group(graph, graph.group_of_layer("c"), "taylor", gradients=gradients)
    np.testing.assert_allclose(scores, expected / expected.mean(), rtol=1e-5)


def test_taylor_keeps_the_channels_the_loss_depends_on():
    model, data = taylor_model()
    loss = keras.losses.MeanSquaredError()
    assert kept_by(model, "taylor", data=data, loss=loss) == [2, 4, 5]
    assert kept_by(model, "taylor", data=data, loss="mse") == [2, 4, 5]
    assert kept_by(model, "l1") == [0, 1, 3]


def test_round_to_and_min_filters():
    model = small_cnn()
    compact = tffp.prune_once(model, "l1", keep_ratio=0.3, round_to=8)
    assert [compact.get_layer(f"conv{i}").filters for i in range(3)] == [8, 8, 8]
    compact = tffp.prune_once(model, "l1", keep_ratio=0.05, min_filters=3)
    assert compact.get_layer("conv0").filters == 3
    assert kept_count(64, 0.5, 8) == 32 and kept_count(6, 0.5, 8) == 6


def test_per_layer_and_ignored_layers():
    model = small_cnn()
    compact = tffp.prune_once(
        model, keep_ratio=0.5, per_layer={"conv2": 0.25}, ignored_layers=["conv0"]
    )
    assert [compact.get_layer(f"conv{i}").filters for i in range(3)] == [16, 12, 8]
    compact = tffp.prune_once(model, keep_ratio=0.5, ignored_layers=[model.get_layer("conv1")])
    assert compact.get_layer("conv1").filters == 24


def test_target_macs_reduction_is_met():
    model = small_cnn()
    full = tffp.profile(model).total_macs
    for target in (0.3, 0.5, 0.75):
        compact = tffp.prune_once(model, "l1", target_macs_reduction=target, round_to=4)
        macs = tffp.profile(compact).total_macs
        assert macs <= full * (1 - target)
        assert macs >= full * (1 - target) * 0.85  # the budget is used, not overshot
        assert all(compact.get_layer(f"conv{i}").filters % 4 == 0 for i in range(3))


def test_unreachable_target_raises():
    model = small_cnn()
    with pytest.raises(ValueError, match="out of reach"):
        tffp.prune_once(model, target_macs_reduction=0.99, min_filters=16)


@pytest.mark.parametrize("ratio", [0.0, -0.5, 1.5, "half"])
def test_bad_keep_ratio(ratio):
    with pytest.raises(ValueError, match="keep_ratio"):
        tffp.prune_once(small_cnn(), keep_ratio=ratio)


def test_bad_criterion_and_target():
    with pytest.raises(ValueError, match="Unknown criterion"):
        tffp.prune_once(small_cnn(), "l3")
    with pytest.raises(ValueError, match="target_macs_reduction"):
        tffp.prune_once(small_cnn(), target_macs_reduction=1.0)


def test_subclassed_model_is_refused():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = L.Conv2D(4, 3)

        def call(self, x):
            return self.conv(x)

    net = Net()
    net(np.zeros((1, 8, 8, 3), "float32"))
    with pytest.raises(ValueError, match="subclassed"):
        tffp.prune_once(net)
    with pytest.raises(ValueError, match="subclassed"):
        tffp.prune_channels(net, {"conv": [0]})


def test_unknown_layer_name_and_bad_indices():
    model = small_cnn()
    with pytest.raises(ValueError, match="No layer named 'conv9'.*conv0|conv1|conv2"):
        tffp.prune_channels(model, {"conv9": [0]})
    with pytest.raises(ValueError, match=r"in \[0, 16\)"):
        tffp.prune_channels(model, {"conv0": [0, 16]})
    with pytest.raises(ValueError, match="duplicates"):
        tffp.prune_channels(model, {"conv0": [1, 1]})
    with pytest.raises(ValueError, match="keep at least one"):
        tffp.prune_channels(model, {"conv0": []})
    with pytest.raises(ValueError, match="output shape is kept"):
        tffp.prune_channels(model, {"head": [0, 1]})


def test_single_filter_layer_is_refused():
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(1, 3, name="one")(inp)
    model = keras.Model(inp, L.Conv2D(2, 1)(x))
    with pytest.raises(ValueError, match="single filter"):
        tffp.prune_channels(model, {"one": [0]})
    with pytest.raises(ValueError, match="single filter"):
        tffp.prune_once(model, per_layer={"one": 0.5})
    with pytest.raises(ValueError, match="single filter"):  # nothing left to prune: said so
        tffp.prune_once(model)


def test_unbuilt_sequential_is_refused():
    model = keras.Sequential([L.Conv2D(4, 3), L.Conv2D(2, 1)])
    with pytest.raises(ValueError, match="not built"):
        tffp.prune_once(model)


def test_graph_groups_of_reference_resnet():
    model = tffp.models.resnet20()
    groups = [g for g in build_graph(model).groups() if g.prunable]
    # 9 free block-internal convs + 3 stage groups tied by the residual Adds
    assert len(groups) == 12


def test_prune_residual_false_prunes_block_internal_convs_only():
    model = tffp.models.resnet20()
    graph = build_graph(model)
    residual = [g for g in graph.groups() if g.prunable and g.residual]
    assert len(residual) == 3  # one residual stream per stage
    compact = tffp.prune_once(model, keep_ratio=0.5, prune_residual=False)
    assert compact.get_layer("conv1").filters == 16
    assert compact.get_layer("block1_1_conv2").filters == 16
    assert compact.get_layer("block1_1_conv1").filters == 8
    assert compact.get_layer("block3_3_conv1").filters == 32


def test_squeeze_excite_multiply_is_not_residual():
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", name="c")(inp)
    s = L.Conv2D(8, 1, activation="sigmoid")(L.GlobalAveragePooling2D(keepdims=True)(x))
    model = keras.Model(inp, L.Conv2D(2, 1)(L.Multiply()([x, s])))
    assert not build_graph(model).group_of_layer("c").residual
    assert tffp.prune_once(model, prune_residual=False).get_layer("c").filters == 4


def test_mixed_precision_model():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = small_cnn()
        compact = tffp.prune_once(model, keep_ratio=0.5)
        assert compact.get_layer("conv1").dtype_policy.name == "mixed_float16"
        assert compact(input_batch(model)[0]).shape == (2, 5)
    finally:
        keras.config.set_dtype_policy("float32")
