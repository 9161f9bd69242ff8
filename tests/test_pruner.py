"""prune_once: criteria, budgets, rounding, ignored layers, errors; the model is never mutated."""

import keras
import numpy as np
import pytest
from helpers import input_batch
from keras import layers as L

import tf_filterprune as tffp
from tf_filterprune.graph import build_graph
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
    gamma = np.arange(24, dtype="float32")[::-1].copy()
    bn = model.get_layer("bn1")
    bn.set_weights([gamma, *bn.get_weights()[1:]])
    compact = tffp.prune_once(model, "bn_gamma", per_layer={"conv1": 0.5}, keep_ratio=1.0)
    np.testing.assert_array_equal(compact.get_layer("bn1").gamma.numpy(), gamma[:12])


def test_random_is_seeded():
    model = small_cnn()
    a = tffp.prune_once(model, "random", seed=3).get_layer("conv1").get_weights()[0]
    b = tffp.prune_once(model, "random", seed=3).get_layer("conv1").get_weights()[0]
    c = tffp.prune_once(model, "random", seed=4).get_layer("conv1").get_weights()[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_taylor_needs_data_and_uses_gradients():
    model = small_cnn()
    with pytest.raises(ValueError, match="needs `data`"):
        tffp.prune_once(model, "taylor")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 12, 12, 3)).astype("float32")
    y = rng.integers(0, 5, size=(16,))
    data = [(x[:8], y[:8]), (x[8:], y[8:])]
    compact = tffp.prune_once(model, "taylor", data=data, keep_ratio=0.5)
    assert compact.get_layer("conv2").filters == 16


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
    assert tffp.prune_once(model).get_layer("one").filters == 1


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
