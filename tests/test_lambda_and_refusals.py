"""Models users really have: Python-lambda ``Lambda`` layers, and models with nothing to prune.

A Lambda the surgery does not change survives the rebuild (re-created around the
same Python function, never deserialized from its config); a Lambda on a channel
path leaves the groups it touches whole, with the reason; a model in which every
group is refused makes ``prune_once`` raise with the reasons per group.
"""

import keras
import numpy as np
import pytest
from helpers import assert_surgery_contract, input_batch, predict
from keras import layers as L

import tf_filterprune as tffp
from tf_filterprune.graph import build_graph
from tf_filterprune.surgery import rebuild, zeroed_copy


def lambda_cnn(**lambda_kwargs):
    """A CNN with a Python-lambda preprocessing Lambda right after the input."""
    inp = keras.Input((12, 12, 3), name="image")
    x = L.Lambda(lambda t: t / 255.0, name="scale", **lambda_kwargs)(inp)
    x = L.Conv2D(8, 3, padding="same", name="c1")(x)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU()(x)
    x = L.Conv2D(12, 3, padding="same", name="c2")(x)
    x = L.ReLU()(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inp, L.Dense(4, name="head")(x))


def test_lambda_after_input_prunes_with_prune_once():
    model = lambda_cnn()
    before = [w.copy() for w in model.get_weights()]
    compact = tffp.prune_once(model, "l1", keep_ratio=0.5)
    assert compact.get_layer("c1").filters == 4
    assert compact.get_layer("c2").filters == 6
    assert compact.output_shape == model.output_shape
    scale = compact.get_layer("scale")
    assert isinstance(scale, L.Lambda) and scale is not model.get_layer("scale")
    assert scale.function is model.get_layer("scale").function
    x = input_batch(model, n=3)
    assert predict(compact, x).shape == (3, 4)
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)  # the input model is not modified


def test_lambda_model_meets_the_surgery_contract():
    # rebuild and zeroed_copy both clone the Lambda; the compact model equals the reference
    assert_surgery_contract(lambda_cnn())


def test_prune_once_lambda_model_equals_zeroed_reference():
    model = lambda_cnn()
    graph = build_graph(model)
    keep = {
        graph.group_of_layer("c1").id: np.array([0, 2, 5]),
        graph.group_of_layer("c2").id: np.arange(0, 12, 2),
    }
    compact = rebuild(model, graph, keep, fold_constants="exact")
    reference = zeroed_copy(model, graph, keep, fold_constants="exact")
    x = [np.random.default_rng(1).uniform(0, 255, (2, 12, 12, 3)).astype("float32")]
    np.testing.assert_allclose(predict(compact, x), predict(reference, x), atol=1e-5, rtol=0)


def test_lambda_with_closure_arguments_and_output_shape():
    offset = np.float32(0.5)  # a closure over a local: its bytecode config would not load
    inp = keras.Input((8, 8, 3))
    x = L.Lambda(lambda t, k: t * k + offset, arguments={"k": 2.0}, output_shape=(8, 8, 3))(inp)
    x = L.Conv2D(6, 3, padding="same", name="c")(x)
    out = L.Dense(2, name="head")(L.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, out)
    compact = tffp.prune_once(model, "l2", keep_ratio=0.5)
    assert compact.get_layer("c").filters == 3
    twin = compact.layers[1]
    assert isinstance(twin, L.Lambda) and twin.arguments == {"k": 2.0}
    x = np.ones((1, 8, 8, 3), "float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(twin(x)), 2.5)
    assert predict(compact, [x]).shape == (1, 2)


def test_lambda_in_sequential_and_nested_models():
    seq = keras.Sequential(
        [
            keras.Input((10, 10, 3)),
            L.Lambda(lambda t: t - 0.5, name="centre"),
            L.Conv2D(8, 3, name="c"),
            L.GlobalAveragePooling2D(),
            L.Dense(3, name="head"),
        ]
    )
    assert tffp.prune_once(seq, keep_ratio=0.5).get_layer("c").filters == 4
    inp = keras.Input((12, 12, 3))
    out = L.Dense(2, name="outer_head")(lambda_cnn()(inp))
    nested = tffp.prune_once(keras.Model(inp, out), keep_ratio=0.5)
    assert nested.layers[1].get_layer("c1").filters == 4
    assert nested.output_shape == (None, 2)


def test_lambda_model_with_macs_target():
    model = lambda_cnn()
    compact = tffp.prune_once(model, target_macs_reduction=0.5)
    assert tffp.profile(compact).total_macs <= 0.5 * tffp.profile(model).total_macs


def test_lambda_model_wraps_and_strips():
    # prune_filters (rebuild with wrappers) and strip_filter_pruning (clone) keep the Lambda
    wrapped = tffp.prune_filters(lambda_cnn(), tffp.DCFF(keep_ratio=0.5))
    compact = tffp.strip_filter_pruning(wrapped)
    assert compact.get_layer("c1").filters == 4
    assert isinstance(compact.get_layer("scale"), L.Lambda)
    assert predict(compact, input_batch(compact)).shape == (2, 4)


def lambda_on_channel_path():
    """A Lambda between conv 'c1' and its BN: c1's channels go through unknown code."""
    inp = keras.Input((10, 10, 3))
    x = L.Conv2D(8, 3, padding="same", name="c1")(inp)
    x = L.Lambda(lambda t: t * 2.0, name="double")(x)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.Conv2D(8, 3, padding="same", name="c2")(L.ReLU()(x))
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inp, L.Dense(3, name="head")(x))


def test_lambda_on_channel_path_leaves_its_groups_whole():
    model = lambda_on_channel_path()
    groups = tffp.build_graph(model).groups()
    (c1,) = [g for g in groups if g.producers == ["c1"]]
    assert not c1.prunable
    assert any("'double' is a Lambda layer" in r and "unknown" in r for r in c1.reasons)
    (after,) = [g for g in groups if any("'double':" in r for r in g.reasons)]
    assert not after.prunable  # the Lambda's output (the BN's input) is whole too
    compact = tffp.prune_once(model, keep_ratio=0.5)
    assert compact.get_layer("c1").filters == 8  # never a wrong cut
    assert compact.get_layer("bn1").get_weights()[0].shape == (8,)
    assert compact.get_layer("c2").filters == 4  # the rest still prunes
    x = input_batch(model)
    assert predict(compact, x).shape == (2, 3)
    with pytest.raises(ValueError, match="Lambda layer"):
        tffp.prune_channels(model, {"c1": [0, 1]})


def channels_first_model():
    inp = keras.Input((3, 8, 8))
    x = L.Conv2D(8, 3, padding="same", data_format="channels_first", name="c1")(inp)
    x = L.Conv2D(8, 3, padding="same", data_format="channels_first", name="c2")(x)
    x = L.GlobalAveragePooling2D(data_format="channels_first")(x)
    return keras.Model(inp, L.Dense(2, name="head")(x))


def test_nothing_prunable_raises_with_reasons_per_group():
    model = channels_first_model()
    with pytest.raises(ValueError, match="Nothing in model") as info:
        tffp.prune_once(model, "l1", keep_ratio=0.5)
    message = str(info.value)
    assert "'c1' uses data_format='channels_first'" in message
    assert "'c2' uses data_format='channels_first'" in message
    assert "'head' (2 channels): model output" in message
    assert len(message.splitlines()) >= 4  # a line per group


def test_nothing_left_after_ignored_layers_raises():
    model = keras.Sequential(
        [keras.Input((8, 8, 3)), L.Conv2D(8, 3, name="a"), L.Conv2D(4, 1, name="b")]
    )
    with pytest.raises(ValueError, match="'a' \\(8 channels\\): its producer is in ignored"):
        tffp.prune_once(model, ignored_layers=["a"])
    # with something left to prune, nothing is raised
    assert tffp.prune_once(model).get_layer("a").filters == 4


def test_only_a_single_filter_layer_raises():
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(1, 3, name="one")(inp)
    model = keras.Model(inp, L.Conv2D(2, 1)(x))
    with pytest.raises(ValueError, match="'one' \\(1 channel\\): has a single filter"):
        tffp.prune_once(model)
