"""recalibrate_batchnorm: exact cumulative BN statistics, nothing else touched."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_filterprune.batchnorm import batchnorm_layers, recalibrate_batchnorm

STATS = ("moving_mean", "moving_variance", "moving_stddev")


def conv_bn_model(momentum: float = 0.99) -> keras.Model:
    """input -> conv1 -> bn1 -> relu -> conv2 -> bn2 -> gap -> fc."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.BatchNormalization(momentum=momentum, name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(5, 3, name="conv2")(x)
    x = keras.layers.BatchNormalization(momentum=momentum, name="bn2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(4, name="fc")(x)
    return keras.Model(inputs, outputs)


def random_batches(n: int = 4, batch: int = 16, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.normal(1.5, 2.0, (batch, 8, 8, 3)).astype("float32") + rng.normal(0, 0.5, 3)
        for _ in range(n)
    ]


def scramble_stats(model: keras.Model, value: float = 50.0) -> None:
    """Garbage moving statistics, so a stale value would be noticed."""
    for layer in batchnorm_layers(model):
        layer.moving_mean.assign(np.full(layer.moving_mean.shape, value, "float32"))
        layer.moving_variance.assign(np.full(layer.moving_variance.shape, value, "float32"))


def expected_stats(model: keras.Model, bn_name: str, batches) -> tuple[np.ndarray, np.ndarray]:
    """Mean over batches of the per-batch mean / biased variance of a BN's input.

    The input is computed by a training-mode forward pass of a copy of the
    model cut at the BN, independently of the function under test.
    """
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    bn = copy.get_layer(bn_name)
    feature = keras.Model(copy.input, bn.input)
    means, variances = [], []
    for x in batches:
        values = np.asarray(feature(x, training=True), np.float64)
        axes = tuple(range(values.ndim - 1))
        means.append(values.mean(axis=axes))
        variances.append(values.var(axis=axes))
    return np.mean(means, axis=0), np.mean(variances, axis=0)


def non_stat_weights(model: keras.Model) -> dict[str, np.ndarray]:
    return {
        w.path: np.array(w.numpy()) for w in model.weights if w.path.rsplit("/", 1)[-1] not in STATS
    }


def assert_stats(layer, mean, variance, atol: float = 1e-4) -> None:
    np.testing.assert_allclose(layer.moving_mean.numpy(), mean, rtol=1e-4, atol=atol)
    np.testing.assert_allclose(layer.moving_variance.numpy(), variance, rtol=1e-4, atol=atol)


def test_exact_cumulative_average_on_dataset():
    model = conv_bn_model()
    batches = random_batches(5)
    expected = {name: expected_stats(model, name, batches) for name in ("bn1", "bn2")}
    scramble_stats(model)
    before = non_stat_weights(model)
    dataset = tf.data.Dataset.from_tensor_slices(np.concatenate(batches)).batch(16)

    result = recalibrate_batchnorm(model, dataset.repeat(), steps=5)

    assert result is model
    for name, (mean, variance) in expected.items():
        assert_stats(model.get_layer(name), mean, variance)
    after = non_stat_weights(model)
    assert after.keys() == before.keys()
    for path, value in before.items():
        np.testing.assert_array_equal(after[path], value, err_msg=path)
    assert all(layer.momentum == 0.99 for layer in batchnorm_layers(model))


def test_steps_limit_and_tuple_batches():
    model = conv_bn_model()
    batches = random_batches(4)
    mean, variance = expected_stats(model, "bn1", batches[:2])
    labels = np.zeros((64,), "int32")
    weights = np.ones((64,), "float32")
    for elements in ((np.concatenate(batches), labels), (np.concatenate(batches), labels, weights)):
        scramble_stats(model)
        dataset = tf.data.Dataset.from_tensor_slices(elements).batch(16)
        recalibrate_batchnorm(model, dataset, steps=2)
        assert_stats(model.get_layer("bn1"), mean, variance)


def test_numpy_array_is_batched_by_128_and_steps_none_uses_all():
    model = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization()]
    )
    x = np.concatenate(random_batches(19, batch=16))  # 304 = 128 + 128 + 48
    feature = keras.Sequential([model.layers[0]])
    chunks = [x[:128], x[128:256], x[256:]]
    outputs = [np.asarray(feature(c), np.float64) for c in chunks]
    mean = np.mean([o.mean(axis=(0, 1, 2)) for o in outputs], axis=0)
    variance = np.mean([o.var(axis=(0, 1, 2)) for o in outputs], axis=0)

    recalibrate_batchnorm(model, x, steps=None)

    assert_stats(model.layers[1], mean, variance)


def test_frozen_and_nested_batchnorm_is_recalibrated_and_stays_frozen():
    inner = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(6, 3, padding="same", name="inner_conv"),
            keras.layers.BatchNormalization(momentum=0.9, name="inner_bn"),
        ],
        name="inner",
    )
    inputs = keras.Input((8, 8, 3))
    x = inner(inputs)
    x = keras.layers.BatchNormalization(momentum=0.8, name="outer_bn")(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    inner.trainable = False
    model.get_layer("outer_bn").trainable = False
    batches = random_batches(3)
    inner_bn = inner.get_layer("inner_bn")
    inner_feature = keras.Sequential([inner.get_layer("inner_conv")])
    inner_out = [np.asarray(inner_feature(b), np.float64) for b in batches]
    inner_mean = np.mean([o.mean(axis=(0, 1, 2)) for o in inner_out], axis=0)
    inner_var = np.mean([o.var(axis=(0, 1, 2)) for o in inner_out], axis=0)
    # outer_bn's input is inner_bn's training-mode output: per batch, mean beta=0
    # and variance var / (var + eps) per channel.
    eps = inner_bn.epsilon
    outer_var = np.mean(
        [o.var(axis=(0, 1, 2)) / (o.var(axis=(0, 1, 2)) + eps) for o in inner_out], 0
    )
    scramble_stats(model)
    trainable_before = [w.path for w in model.trainable_weights]

    recalibrate_batchnorm(model, batches, steps=10)

    assert_stats(inner_bn, inner_mean, inner_var)
    assert_stats(model.get_layer("outer_bn"), np.zeros(6), outer_var)
    assert not inner_bn.trainable and not inner.trainable
    assert not model.get_layer("outer_bn").trainable
    assert [w.path for w in model.trainable_weights] == trainable_before == []
    assert inner_bn.momentum == 0.9 and model.get_layer("outer_bn").momentum == 0.8


def test_garbage_statistics_recover_training_mode_outputs():
    model = conv_bn_model()
    rng = np.random.default_rng(1)
    for layer in batchnorm_layers(model):
        layer.moving_mean.assign(rng.normal(0, 30, layer.moving_mean.shape).astype("float32"))
        layer.moving_variance.assign(np.full(layer.moving_variance.shape, np.nan, "float32"))
    x = rng.normal(1.5, 2.0, (512, 8, 8, 3)).astype("float32")
    train_out = np.asarray(model(x, training=True))
    for layer in batchnorm_layers(model):  # undo the forward pass's updates
        layer.moving_variance.assign(np.full(layer.moving_variance.shape, np.nan, "float32"))
    assert np.isnan(np.asarray(model(x, training=False))).all()

    recalibrate_batchnorm(model, tf.data.Dataset.from_tensor_slices(x).batch(64), steps=8)

    infer_out = np.asarray(model(x, training=False))
    scale = np.abs(train_out).max()
    np.testing.assert_allclose(infer_out, train_out, atol=0.01 * scale)
    agreement = np.mean(infer_out.argmax(axis=1) == train_out.argmax(axis=1))
    assert agreement > 0.95


def test_reset_false_is_an_exponential_update():
    model = conv_bn_model(momentum=0.75)
    batches = random_batches(1)
    mean, variance = expected_stats(model, "bn1", batches)
    scramble_stats(model, value=2.0)

    recalibrate_batchnorm(model, batches, steps=1, reset=False)

    assert_stats(model.get_layer("bn1"), 0.75 * 2.0 + 0.25 * mean, 0.75 * 2.0 + 0.25 * variance)
    assert model.get_layer("bn1").momentum == 0.75


def test_dropout_is_active_like_a_training_step():
    inputs = keras.Input((64,))
    x = keras.layers.Dropout(0.5)(inputs)
    model = keras.Model(inputs, keras.layers.BatchNormalization(name="bn")(x))
    x = np.random.default_rng(0).normal(3.0, 1.0, (512, 64)).astype("float32")
    before = non_stat_weights(model)

    recalibrate_batchnorm(model, x, steps=4)

    bn = model.get_layer("bn")
    # Inverted dropout keeps the mean (3) but doubles x: variance ~ 0.5 * 4 * 10 - 9 = 11.
    np.testing.assert_allclose(bn.moving_mean.numpy().mean(), 3.0, atol=0.15)
    assert 9.0 < bn.moving_variance.numpy().mean() < 13.0
    for path, value in before.items():
        np.testing.assert_array_equal(non_stat_weights(model)[path], value)


def test_renorm_layers_keep_their_renorm_statistics():
    inputs = keras.Input((8,))
    bn = keras.layers.BatchNormalization(renorm=True, name="bn")
    model = keras.Model(inputs, bn(inputs))
    x = np.random.default_rng(0).normal(2.0, 3.0, (4, 32, 8)).astype("float32")
    renorm_before = {w.path: np.array(w.numpy()) for w in bn.weights if "renorm" in w.path}

    recalibrate_batchnorm(model, list(x))

    mean = np.mean([b.mean(axis=0) for b in x.astype(np.float64)], axis=0)
    variance = np.mean([b.var(axis=0) for b in x.astype(np.float64)], axis=0)
    assert_stats(bn, mean, variance)
    np.testing.assert_allclose(bn.moving_stddev.numpy(), np.sqrt(variance + bn.epsilon), rtol=1e-4)
    for w in bn.weights:
        if w.path in renorm_before:
            np.testing.assert_array_equal(w.numpy(), renorm_before[w.path])


def test_model_without_batchnorm_warns_and_is_unchanged():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    before = model.get_weights()
    with pytest.warns(UserWarning, match="no BatchNormalization"):
        assert recalibrate_batchnorm(model, np.ones((4, 3), "float32")) is model
    for a, b in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_empty_data_raises_and_restores_the_model():
    model = conv_bn_model(momentum=0.9)
    model.get_layer("bn2").trainable = False
    scramble_stats(model, value=7.0)
    empty = tf.data.Dataset.from_tensor_slices(np.zeros((0, 8, 8, 3), "float32")).batch(4)

    with pytest.raises(ValueError, match="no batch"):
        recalibrate_batchnorm(model, empty)

    for layer in batchnorm_layers(model):
        np.testing.assert_array_equal(layer.moving_mean.numpy(), 7.0)
        np.testing.assert_array_equal(layer.moving_variance.numpy(), 7.0)
        assert layer.momentum == 0.9
    assert model.get_layer("bn1").trainable and not model.get_layer("bn2").trainable


def test_bad_steps():
    with pytest.raises(ValueError, match="steps"):
        recalibrate_batchnorm(conv_bn_model(), random_batches(1), steps=0)


def test_verbose_shows_a_progress_bar(capsys):
    recalibrate_batchnorm(conv_bn_model(), random_batches(3), steps=3, verbose=True)
    assert "3/3" in capsys.readouterr().out
