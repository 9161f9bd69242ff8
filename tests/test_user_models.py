"""Models users really have: Python lambdas and functions in layers, nothing to prune.

- A ``Lambda`` anywhere (preprocessing right after the input, post-processing far
  from any cut) and Python functions in other layers' configs (a lambda
  ``Activation``, an unregistered activation function, a lambda regularizer)
  survive the rebuild: the surgery re-creates them around the user's live
  objects, never deserializing them (Keras refuses lambdas in safe mode).
- The compact model shares no layer or variable with the original, which is
  never modified.
- A Lambda on a channel path leaves that group whole, with the reason.
- When no group at all can be pruned, ``prune_once`` and ``prune_filters`` raise
  a ValueError listing every group's layers and reasons; ``keep_ratio=1.0`` on a
  prunable model is not that case.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import assert_surgery_contract, input_batch, predict
from keras import layers as L

import tf_filterprune as tffp
from tf_filterprune.graph import build_graph
from tf_filterprune.surgery import rebuild, zeroed_copy
from tf_filterprune.surgery.cut import layer_from_config


def doubled_relu(t):
    """An activation function that is not registered with Keras serialization."""
    return tf.nn.relu(t) * 2.0


def preprocessing_model() -> keras.Model:
    """``Lambda(x / 255)`` after the input, then a small CNN."""
    inp = keras.Input((12, 12, 3), name="image")
    x = L.Lambda(lambda t: t / 255.0, name="rescale")(inp)
    x = L.Conv2D(8, 3, padding="same", name="c1")(x)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU(name="r1")(x)
    x = L.Conv2D(12, 3, padding="same", name="c2")(x)
    x = L.ReLU(name="r2")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, L.Dense(4, name="head")(x), name="preprocessing")


def python_functions_model() -> keras.Model:
    """Python functions everywhere: lambda Activation, unregistered activation, lambda
    regularizer, a two-input Lambda and a Lambda after the head (far from any cut)."""
    inp = keras.Input((12, 12, 3), name="image")
    other = keras.Input((4,), name="prior")
    x = L.Activation(lambda t: t * 0.5, name="halve")(inp)
    x = L.Conv2D(8, 3, padding="same", activation=doubled_relu, name="c1")(x)
    x = L.Activation(lambda t: tf.nn.relu(t) - 0.1, name="shifted_relu")(x)
    x = L.Conv2D(
        8,
        3,
        padding="same",
        kernel_regularizer=lambda w: 1e-4 * tf.reduce_sum(w**2),
        name="c2",
    )(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(6, activation=lambda t: tf.nn.elu(t), name="d1")(x)
    logits = L.Dense(4, name="head")(x)
    out = L.Lambda(lambda ts: tf.nn.softmax(ts[0] + ts[1]), name="post")([logits, other])
    return keras.Model([inp, other], out, name="python_functions")


def all_layers(model: keras.Model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from all_layers(layer)


def assert_independent(original: keras.Model, compact: keras.Model) -> None:
    """No layer object and no variable of ``compact`` belongs to ``original``."""
    assert not {id(x) for x in all_layers(original)} & {id(x) for x in all_layers(compact)}
    assert not {id(v) for v in original.weights} & {id(v) for v in compact.weights}


# --------------------------------------------------------------------- Lambda layers


def test_preprocessing_lambda_prunes_with_prune_once():
    model = preprocessing_model()
    before = [w.copy() for w in model.get_weights()]
    compact = tffp.prune_once(model, "l1", keep_ratio=0.5)
    assert compact.get_layer("c1").filters == 4
    assert compact.get_layer("c2").filters == 6
    assert compact.get_layer("rescale").function is model.get_layer("rescale").function
    x = [np.random.default_rng(0).uniform(0, 255, (3, 12, 12, 3)).astype("float32")]
    assert predict(compact, x).shape == (3, 4)
    assert_independent(model, compact)
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)


def test_preprocessing_lambda_meets_the_surgery_contract():
    assert_surgery_contract(preprocessing_model(), ratio=0.5)


def test_python_functions_survive_and_meet_the_contract():
    model = python_functions_model()
    compact = assert_surgery_contract(model, ratio=0.5)
    for name in ("halve", "shifted_relu", "c1", "d1"):
        assert compact.get_layer(name).activation is model.get_layer(name).activation
    assert compact.get_layer("post").function is model.get_layer("post").function
    c2 = compact.get_layer("c2")
    assert c2.kernel_regularizer is model.get_layer("c2").kernel_regularizer
    assert len(compact.losses) == 1  # the lambda regularizer still regularizes
    assert_independent(model, compact)


def test_python_functions_model_prunes_once_and_with_a_macs_target():
    model = python_functions_model()
    compact = tffp.prune_once(model, "l2", keep_ratio=0.5)
    assert compact.get_layer("c1").filters == 4
    assert compact.get_layer("c2").filters == 4
    assert compact.output_shape == model.output_shape
    x = input_batch(model)
    np.testing.assert_allclose(predict(compact, x).sum(axis=-1), 1.0, atol=1e-5)
    smaller = tffp.prune_once(model, target_macs_reduction=0.4)
    assert tffp.profile(smaller).total_macs <= 0.6 * tffp.profile(model).total_macs


def test_python_functions_model_wraps_and_strips():
    model = python_functions_model()
    compact = tffp.strip_filter_pruning(tffp.prune_filters(model, tffp.DCFF(keep_ratio=0.5)))
    assert compact.get_layer("c1").filters == 4
    assert compact.get_layer("c1").activation is doubled_relu
    assert predict(compact, input_batch(model)).shape == (2, 4)


def test_training_the_compact_model_leaves_the_original_alone():
    model = preprocessing_model()
    before = [w.copy() for w in model.get_weights()]
    compact = tffp.prune_once(model, keep_ratio=0.5)
    compact.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).uniform(0, 255, (8, 12, 12, 3)).astype("float32")
    compact.fit(x, np.zeros(8, "int32"), epochs=1, verbose=0)
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)


def test_lambda_on_the_channel_path_leaves_that_group_whole():
    inp = keras.Input((10, 10, 3))
    x = L.Conv2D(8, 3, padding="same", name="c1")(inp)
    x = L.Lambda(lambda t: tf.reverse(t, axis=[-1]), name="flip")(x)  # channels reordered
    x = L.Conv2D(8, 3, padding="same", name="c2")(x)
    x = L.Conv2D(6, 1, name="c3")(L.ReLU()(x))
    model = keras.Model(inp, L.Dense(3, name="head")(L.GlobalAveragePooling2D()(x)))
    graph = build_graph(model)
    c1 = graph.group_of_layer("c1")
    assert not c1.prunable
    assert any("'flip' is a Lambda layer" in reason for reason in c1.reasons)
    compact = tffp.prune_once(model, keep_ratio=0.5)
    assert compact.get_layer("c1").filters == 8  # never a wrong cut
    assert (compact.get_layer("c2").filters, compact.get_layer("c3").filters) == (4, 3)
    keep = {graph.group_of_layer("c2").id: np.array([1, 2, 5, 7])}
    x = input_batch(model)
    np.testing.assert_allclose(
        predict(rebuild(model, graph, keep, fold_constants="exact"), x),
        predict(zeroed_copy(model, graph, keep, fold_constants="exact"), x),
        atol=1e-5,
    )


def test_lambda_with_closure_arguments_and_output_shape():
    offset = np.float32(0.5)  # a closure over a local: its bytecode config would not load
    inp = keras.Input((8, 8, 3))
    x = L.Lambda(lambda t, k: t * k + offset, arguments={"k": 2.0}, output_shape=(8, 8, 3))(inp)
    x = L.Conv2D(6, 3, padding="same", name="c")(x)
    model = keras.Model(inp, L.Dense(2, name="head")(L.GlobalAveragePooling2D()(x)))
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
    out = L.Dense(2, name="outer_head")(preprocessing_model()(inp))
    nested = tffp.prune_once(keras.Model(inp, out), keep_ratio=0.5)
    assert nested.layers[1].get_layer("c1").filters == 4
    assert nested.output_shape == (None, 2)


def test_a_lambda_before_a_batchnorm_leaves_both_sides_whole():
    inp = keras.Input((10, 10, 3))
    x = L.Conv2D(8, 3, padding="same", name="c1")(inp)
    x = L.Lambda(lambda t: t * 2.0, name="double")(x)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.Conv2D(8, 3, padding="same", name="c2")(L.ReLU()(x))
    model = keras.Model(inp, L.Dense(3, name="head")(L.GlobalAveragePooling2D()(x)))
    groups = build_graph(model).groups()
    (c1,) = [g for g in groups if g.producers == ["c1"]]
    assert any("'double' is a Lambda layer" in r and "unknown" in r for r in c1.reasons)
    (after,) = [g for g in groups if any("'double':" in r for r in g.reasons)]
    assert not c1.prunable and not after.prunable  # the Lambda's output (BN's input) too
    compact = tffp.prune_once(model, keep_ratio=0.5)
    assert compact.get_layer("c1").filters == 8
    assert compact.get_layer("bn1").get_weights()[0].shape == (8,)
    assert compact.get_layer("c2").filters == 4  # the rest still prunes
    with pytest.raises(ValueError, match="Lambda layer"):
        tffp.prune_channels(model, {"c1": [0, 1]})


class Shift(L.Layer):
    """A custom layer whose get_config forgets its constructor argument."""

    def __init__(self, amount, **kwargs):
        super().__init__(**kwargs)
        self.amount = amount

    def call(self, x):
        return x + self.amount

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable}


def test_a_layer_whose_config_does_not_load_is_named():
    with pytest.raises(ValueError, match="Layer 'shift' \\(Shift\\) cannot be re-created"):
        layer_from_config(Shift(1.0, name="shift"))


# ---------------------------------------------------------------- nothing to prune


def channels_first_model() -> keras.Model:
    inp = keras.Input((3, 8, 8))
    x = L.Conv2D(8, 3, padding="same", data_format="channels_first", name="c1")(inp)
    x = L.Conv2D(6, 3, padding="same", data_format="channels_first", name="c2")(x)
    x = L.GlobalAveragePooling2D(data_format="channels_first", name="gap")(x)
    return keras.Model(inp, L.Dense(2, name="head")(x), name="nchw")


def _group_lines(message: str) -> list[str]:
    return [line for line in message.splitlines() if line.startswith("- ")]


def test_prune_once_raises_when_nothing_can_be_pruned():
    with pytest.raises(ValueError, match="Nothing in model 'nchw' can be pruned") as info:
        tffp.prune_once(channels_first_model(), "l1", keep_ratio=0.5)
    lines = _group_lines(str(info.value))
    assert len(lines) == len(build_graph(channels_first_model()).groups())
    assert any("'c2' uses data_format='channels_first'" in line for line in lines)
    assert any(line.startswith("- 'head' (2 channels): model output") for line in lines)


def test_prune_filters_raises_when_nothing_can_be_wrapped():
    with pytest.raises(ValueError, match="Nothing in model 'nchw' can be wrapped") as info:
        tffp.prune_filters(channels_first_model(), tffp.DCFF(keep_ratio=0.5))
    lines = _group_lines(str(info.value))
    assert any("'c1' uses data_format='channels_first'" in line for line in lines)
    assert any("'head'" in line for line in lines)


def test_prune_filters_names_prunable_groups_it_cannot_wrap():
    inp = keras.Input((8, 8, 3))
    x = L.SeparableConv2D(8, 3, name="sep")(inp)
    x = L.ReLU()(x)
    model = keras.Model(inp, L.Dense(2, name="head")(L.GlobalAveragePooling2D()(x)))
    assert tffp.prune_once(model, keep_ratio=0.5).get_layer("sep").filters == 4
    with pytest.raises(ValueError, match="'sep' is a SeparableConv2D, not a plain Conv2D"):
        tffp.prune_filters(model, tffp.DCFF(keep_ratio=0.5))


def test_keep_ratio_one_is_a_no_op_not_an_error():
    model = preprocessing_model()
    compact = tffp.prune_once(model, keep_ratio=1.0)
    assert compact is not model
    assert [compact.get_layer(n).filters for n in ("c1", "c2")] == [8, 12]
    x = input_batch(model)
    np.testing.assert_allclose(predict(compact, x), predict(model, x), atol=1e-6)


def test_nothing_left_after_ignored_layers_raises():
    model = keras.Sequential(
        [keras.Input((8, 8, 3)), L.Conv2D(8, 3, name="a"), L.Conv2D(4, 1, name="b")]
    )
    with pytest.raises(ValueError, match="'a' \\(8 channels\\): its producer is in ignored"):
        tffp.prune_once(model, ignored_layers=["a"])
    assert tffp.prune_once(model).get_layer("a").filters == 4  # something left: no error


def test_only_a_single_filter_layer_raises():
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(1, 3, name="one")(inp)
    model = keras.Model(inp, L.Conv2D(2, 1)(x))
    with pytest.raises(ValueError, match="'one' \\(1 channel\\): has a single filter"):
        tffp.prune_once(model)
