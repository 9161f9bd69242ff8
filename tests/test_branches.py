"""RepVGG-style parallel branches: centre-tap convs, BN folding and the model-level fold."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import predict, randomize_biases

from tf_filterprune.surgery.branches import (
    center_tap_conv,
    center_tap_input,
    fold_batchnorm,
    fold_parallel_branch,
    identity_kernel,
    pad_kernel,
    parallel_branch_kernel,
)


def _normal(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def randomize_batchnorm(model: keras.Model, seed: int = 0) -> None:
    """Random statistics and affine terms for every BN, also with scale/center off
    (tests.helpers.randomize_batchnorm expects all four weights)."""
    rng = np.random.default_rng(seed)
    draw = {
        "gamma": lambda n: rng.uniform(0.5, 1.5, n),
        "beta": lambda n: rng.normal(0, 0.2, n),
        "moving_mean": lambda n: rng.normal(0, 0.2, n),
        "moving_variance": lambda n: rng.uniform(0.5, 1.5, n),
    }
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            for variable in layer.weights:
                variable.assign(draw[variable.name](variable.shape).astype("float32"))


def _padded_conv(x, kernel_1x1, kernel_size, strides, padding, dilation, bias=None):
    """The reference: the kxk conv whose only nonzero tap is the centre one."""
    y = keras.ops.conv(
        x,
        pad_kernel(kernel_1x1, kernel_size),
        strides=strides,
        padding=padding,
        dilation_rate=dilation,
    )
    y = keras.ops.convert_to_numpy(y)
    return y if bias is None else y + bias


# ---------------------------------------------------------------- kernel helpers


def test_pad_kernel_places_the_centre_tap():
    kernel = _normal(1, 1, 2, 3)
    padded = pad_kernel(kernel, (3, 5))
    assert padded.shape == (3, 5, 2, 3)
    np.testing.assert_array_equal(padded[1, 2], kernel[0, 0])
    assert np.count_nonzero(padded) == np.count_nonzero(kernel)
    asym = pad_kernel(_normal(1, 3, 2, 3), (3, 3))  # a 1x3 kernel: the middle row
    np.testing.assert_array_equal(asym[0], 0)
    np.testing.assert_array_equal(asym[2], 0)


@pytest.mark.parametrize("size", [(2, 2), (3, 4), (4, 3)])
def test_pad_kernel_refuses_even_sizes(size):
    with pytest.raises(ValueError, match="centre tap"):
        pad_kernel(np.ones((1, 1, 1, 1)), size)


def test_pad_kernel_refuses_a_larger_kernel():
    with pytest.raises(ValueError, match="does not fit"):
        pad_kernel(np.ones((5, 5, 1, 1)), (3, 3))


def test_identity_kernel_is_the_identity_conv():
    x = _normal(2, 6, 7, 4)
    kernel = identity_kernel(4, (3, 3))
    assert kernel.shape == (3, 3, 4, 4) and kernel.dtype == np.float32
    y = keras.ops.conv(x, kernel, padding="same")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(y), x, atol=1e-6)


def test_parallel_branch_kernel_adds_the_padded_branch():
    main, branch = _normal(3, 3, 2, 4, seed=1), _normal(1, 1, 2, 4, seed=2)
    bias_a, bias_b = _normal(4, seed=3), _normal(4, seed=4)
    kernel, bias = parallel_branch_kernel(main, bias_a, branch, bias_b)
    x = _normal(1, 7, 7, 2)
    ref = keras.ops.conv(x, main, padding="same") + bias_a
    ref = ref + keras.ops.conv(x, branch, padding="same") + bias_b
    got = keras.ops.conv(x, kernel, padding="same") + bias
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got), ref, atol=1e-5)
    _, no_bias = parallel_branch_kernel(main, None, branch, None)
    np.testing.assert_array_equal(no_bias, np.zeros(4, np.float32))


# ---------------------------------------------------------------- fold_batchnorm


@pytest.mark.parametrize(
    "scale,center,use_bias",
    [(True, True, True), (True, True, False), (False, True, True), (True, False, False)],
)
def test_fold_batchnorm_matches_conv_then_bn(scale, center, use_bias):
    inp = keras.Input((7, 7, 3))
    conv = keras.layers.Conv2D(5, 3, padding="same", use_bias=use_bias)
    bn = keras.layers.BatchNormalization(scale=scale, center=center, epsilon=1e-3)
    model = keras.Model(inp, bn(conv(inp)))
    randomize_batchnorm(model, seed=1)
    randomize_biases(model, seed=1)
    kernel, bias = fold_batchnorm(
        conv.kernel.numpy(),
        conv.bias.numpy() if use_bias else None,
        bn.gamma.numpy() if scale else None,
        bn.beta.numpy() if center else None,
        bn.moving_mean.numpy(),
        bn.moving_variance.numpy(),
        bn.epsilon,
    )
    assert kernel.dtype == np.float32 and bias.shape == (5,)
    x = _normal(2, 7, 7, 3)
    folded = keras.ops.conv(x, kernel, padding="same") + bias
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(folded), predict(model, [x]), atol=1e-5, rtol=1e-5
    )


def test_fold_batchnorm_checks_shapes():
    with pytest.raises(ValueError, match="moving_variance"):
        fold_batchnorm(np.ones((1, 1, 2, 3)), None, None, None, np.zeros(3), np.ones(2), 1e-3)


# ---------------------------------------------------------------- center_tap_conv


@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("strides", [1, 2])
def test_center_tap_conv_equals_the_padded_conv(strides, padding, dilation):
    """For kernels 3 and 5, odd, even and mixed input sizes, with and without bias.

    (The inner combinations loop rather than parametrize: the shared fixture's
    clear_session costs ~0.25 s per test.)"""
    kernel_1x1 = _normal(1, 1, 3, 4, seed=6)
    for kernel in (3, 5):
        for size in [(11, 11), (10, 10), (10, 13)]:
            for bias in (None, _normal(4, seed=7)):
                x = _normal(2, *size, 3, seed=size[1])
                args = dict(kernel_size=(kernel, kernel), strides=strides, padding=padding)
                if strides > 1 and dilation > 1:  # keras.ops.conv refuses it too
                    with pytest.raises(ValueError, match="dilation_rate"):
                        center_tap_conv(x, kernel_1x1, dilation_rate=dilation, bias=bias, **args)
                    continue
                ref = _padded_conv(
                    x, kernel_1x1, (kernel, kernel), strides, padding, dilation, bias
                )
                got = center_tap_conv(x, kernel_1x1, dilation_rate=dilation, bias=bias, **args)
                case = f"kernel={kernel} size={size} bias={bias is not None}"
                assert tuple(got.shape) == ref.shape, case
                np.testing.assert_allclose(
                    keras.ops.convert_to_numpy(got), ref, atol=1e-5, err_msg=case
                )


def test_center_tap_input_on_every_small_size():
    """Every size 1..17 along one axis, kernels 1..7, strides 1..3, dilations 1..3: the
    centre taps never fall into TensorFlow's 'same' padding (no zero-padding needed)."""
    kernel_1x1 = np.ones((1, 1, 1, 1), np.float32)
    checked = 0
    for n in range(1, 18):
        x = np.arange(1.0, n + 1, dtype=np.float32).reshape(1, 1, n, 1)
        for k in (1, 3, 5, 7):
            for s, d in [(1, 1), (2, 1), (3, 1), (1, 2), (1, 3)]:
                for padding in ("same", "valid"):
                    if padding == "valid" and (k - 1) * d + 1 > n:
                        continue
                    ref = _padded_conv(x, kernel_1x1, (1, k), (1, s), padding, (1, d))
                    got = center_tap_input(
                        x, kernel_size=(1, k), strides=(1, s), padding=padding, dilation_rate=d
                    )
                    np.testing.assert_array_equal(keras.ops.convert_to_numpy(got), ref)
                    checked += 1
    assert checked > 500


def test_center_tap_input_is_the_identity_branch():
    x = _normal(2, 8, 8, 3)
    got = center_tap_input(x, kernel_size=3, strides=2, padding="same")
    ref = keras.ops.conv(x, identity_kernel(3, (3, 3)), strides=2, padding="same")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(ref))
    # one pixel later than a plain 1x1 strided conv on an even size
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(got), x[:, 1::2, 1::2])


def test_center_tap_conv_under_tf_function_with_unknown_sizes():
    kernel_1x1, bias = _normal(1, 1, 3, 4, seed=1), _normal(4, seed=2)

    @tf.function(input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)])
    def branch(x):
        return center_tap_conv(
            x, kernel_1x1, kernel_size=(3, 5), strides=2, padding="same", bias=bias
        )

    for size in [(8, 8), (9, 9), (7, 10)]:
        x = _normal(2, *size, 3, seed=size[0])
        ref = _padded_conv(x, kernel_1x1, (3, 5), 2, "same", 1, bias)
        np.testing.assert_allclose(branch(x).numpy(), ref, atol=1e-5)


def test_center_tap_refusals():
    x, kernel = _normal(1, 8, 8, 3), _normal(1, 1, 3, 2)
    with pytest.raises(ValueError, match="centre tap"):
        center_tap_conv(x, kernel, kernel_size=2, padding="same")
    with pytest.raises(ValueError, match="channels_last"):
        center_tap_conv(x, kernel, kernel_size=3, data_format="channels_first")
    with pytest.raises(ValueError, match="padding"):
        center_tap_conv(x, kernel, kernel_size=3, padding="causal")
    with pytest.raises(ValueError, match=r"\(1, 1, in, out\)"):
        center_tap_conv(x, _normal(3, 3, 3, 2), kernel_size=3)


class _ConvWithBranch(keras.layers.Layer):
    """A strided 3x3 conv plus a 1x1 anti-blocking branch computed by center_tap_conv."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters

    def build(self, input_shape):
        c = input_shape[-1]
        self.kernel = self.add_weight(shape=(3, 3, c, self.filters), name="kernel")
        self.branch = self.add_weight(shape=(1, 1, c, self.filters), name="branch")
        self.bias = self.add_weight(shape=(self.filters,), initializer="zeros", name="bias")

    def call(self, x):
        main = keras.ops.conv(x, self.kernel, strides=2, padding="same")
        side = center_tap_conv(
            x, self.branch, kernel_size=3, strides=2, padding="same", bias=self.bias
        )
        return main + side

    def folded_reference(self, x):
        kernel = self.kernel.numpy() + pad_kernel(self.branch.numpy(), (3, 3))
        y = keras.ops.conv(x, kernel, strides=2, padding="same")
        return keras.ops.convert_to_numpy(y) + self.bias.numpy()


def _branch_model():
    inp = keras.Input((None, None, 3))
    layer = _ConvWithBranch(4, name="branchy")
    out = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(layer(inp)))
    model = keras.Model(inp, out)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model, layer


def _fit_one_step(model, layer):
    x, y = _normal(4, 8, 8, 3, seed=3), _normal(4, 2, seed=4)
    before = layer.branch.numpy().copy()
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert not np.array_equal(before, layer.branch.numpy())  # the branch gets gradients


def test_layer_with_center_tap_conv_trains():
    model, layer = _branch_model()
    _fit_one_step(model, layer)
    for size in [(8, 8), (9, 9)]:
        x = _normal(2, *size, 3, seed=size[0])
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(layer(x)), layer.folded_reference(x), atol=1e-5
        )


@pytest.fixture
def mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_layer_with_center_tap_conv_under_mixed_precision(mixed_precision):
    model, layer = _branch_model()
    assert layer.compute_dtype == "float16"
    _fit_one_step(model, layer)
    x = _normal(2, 8, 8, 3, seed=8)
    y = layer(x)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(y).astype(np.float32),
        layer.folded_reference(x),
        atol=1e-2,
        rtol=1e-2,
    )


# ---------------------------------------------------------------- fold_parallel_branch


def _conv_bn(x, filters, kernel, name, *, strides=1, padding="same", dilation=1, bias=False):
    x = keras.layers.Conv2D(
        filters,
        kernel,
        strides=strides,
        padding=padding,
        dilation_rate=dilation,
        use_bias=bias,
        name=f"{name}_conv",
    )(x)
    return keras.layers.BatchNormalization(name=f"{name}_bn")(x)


def _repvgg(x, filters, name, *, strides=1, dilation=1, bias=False, identity=True):
    """RepVGG block: 3x3 conv+BN, 1x1 conv+BN, BN identity (when shapes allow), Add."""
    branches = [
        _conv_bn(x, filters, 3, f"{name}_3x3", strides=strides, dilation=dilation, bias=bias),
        _conv_bn(x, filters, 1, f"{name}_1x1", strides=strides, padding="valid", bias=bias),
    ]
    if identity:
        branches.append(keras.layers.BatchNormalization(name=f"{name}_id")(x))
    return keras.layers.Add(name=f"{name}_add")(branches)


def _finish(inp, x, seed=0):
    model = keras.Model(inp, x)
    randomize_batchnorm(model, seed=seed)
    randomize_biases(model, seed=seed)
    return model


def _types(model):
    return [type(layer).__name__ for layer in model.layers]


def _snapshot(model):
    return [layer.name for layer in model.layers], [w.copy() for w in model.get_weights()]


def _assert_unchanged(model, snapshot):
    names, weights = _snapshot(model)
    assert names == snapshot[0]
    assert len(weights) == len(snapshot[1])
    for a, b in zip(weights, snapshot[1], strict=True):
        np.testing.assert_array_equal(a, b)


def _assert_same_outputs(model, folded, x, atol=1e-5):
    np.testing.assert_allclose(predict(folded, [x]), predict(model, [x]), atol=atol, rtol=1e-5)


@pytest.mark.parametrize("bias", [False, True])
def test_fold_repvgg_block(bias):
    inp = keras.Input((9, 9, 4))
    model = _finish(inp, _repvgg(inp, 4, "b", bias=bias), seed=2)
    snapshot = _snapshot(model)
    calls_before = [len(layer._inbound_nodes) for layer in model.layers]
    folded = fold_parallel_branch(model)
    assert _types(folded) == ["InputLayer", "Conv2D"]
    conv = folded.get_layer("b_3x3_conv")  # the main conv's name
    assert conv.use_bias and tuple(conv.kernel_size) == (3, 3)
    assert folded.count_params() == 3 * 3 * 4 * 4 + 4
    _assert_same_outputs(model, folded, _normal(2, 9, 9, 4, seed=3))
    _assert_unchanged(model, snapshot)
    assert [len(layer._inbound_nodes) for layer in model.layers] == calls_before


def test_fold_stride_2_block_on_an_odd_size():
    inp = keras.Input((9, 9, 3))
    x = keras.layers.ReLU()(_repvgg(inp, 6, "down", strides=2, identity=False))
    model = _finish(inp, _repvgg(x, 6, "b"), seed=3)
    folded = fold_parallel_branch(model)
    assert _types(folded) == ["InputLayer", "Conv2D", "ReLU", "Conv2D"]
    assert folded.output.shape == (None, 5, 5, 6)
    _assert_same_outputs(model, folded, _normal(2, 9, 9, 3, seed=4))


def test_stride_2_on_an_even_size_is_refused():
    """A plain 1x1 stride-2 conv reads pixels 0, 2, ...; the 'same' 3x3 centre taps 1, 3, ..."""
    inp = keras.Input((8, 8, 3))
    model = _finish(inp, _repvgg(inp, 6, "down", strides=2, identity=False))
    with pytest.raises(ValueError, match=r"'down_add'.*down_1x1_conv.*not be exact"):
        fold_parallel_branch(model, ["down_add"])
    kept = fold_parallel_branch(model)  # default: left alone
    assert _types(kept) == _types(model)
    _assert_same_outputs(model, kept, _normal(2, 8, 8, 3))


def test_fold_dilated_block():
    inp = keras.Input((10, 10, 4))
    model = _finish(inp, _repvgg(inp, 4, "b", dilation=2, bias=True), seed=4)
    folded = fold_parallel_branch(model)
    conv = folded.get_layer("b_3x3_conv")
    assert tuple(conv.dilation_rate) == (2, 2) and _types(folded) == ["InputLayer", "Conv2D"]
    _assert_same_outputs(model, folded, _normal(2, 10, 10, 4, seed=5))


def test_fold_valid_padding_parallel_convs():
    """'valid' folds where the branches have the same output shape: two 3x3 'valid' convs."""
    inp = keras.Input((9, 8, 3))
    a = _conv_bn(inp, 5, 3, "a", padding="valid")
    b = keras.layers.Conv2D(5, 3, padding="valid", name="b")(inp)
    model = _finish(inp, keras.layers.Add(name="add")([a, b]), seed=5)
    folded = fold_parallel_branch(model, ["add"])
    assert _types(folded) == ["InputLayer", "Conv2D"] and folded.output.shape == (None, 7, 6, 5)
    _assert_same_outputs(model, folded, _normal(2, 9, 8, 3, seed=6))


def test_fold_mixed_kernel_sizes_and_identity():
    """5x5 + 3x3 + 1x3 + 3x1 + 1x1 + the identity itself: all centred in one 5x5 conv."""
    inp = keras.Input((7, 7, 4))
    branches = [
        _conv_bn(inp, 4, 3, "k3"),
        _conv_bn(inp, 4, 5, "k5", bias=True),
        _conv_bn(inp, 4, (1, 3), "k13"),
        keras.layers.Conv2D(4, (3, 1), padding="same", name="k31")(inp),
        keras.layers.Conv2D(4, 1, name="k1")(inputs=inp),  # called with a keyword
        inp,
    ]
    model = _finish(inp, keras.layers.Add(name="add")(inputs=branches), seed=6)
    folded = fold_parallel_branch(model)
    assert _types(folded) == ["InputLayer", "Conv2D"]
    assert tuple(folded.get_layer("k5_conv").kernel_size) == (5, 5)
    _assert_same_outputs(model, folded, _normal(2, 7, 7, 4, seed=7))


def test_fold_with_unknown_spatial_size_at_stride_1():
    inp = keras.Input((None, None, 4))
    model = _finish(inp, _repvgg(inp, 4, "b"), seed=7)
    folded = fold_parallel_branch(model)
    assert _types(folded) == ["InputLayer", "Conv2D"]
    for size in [(6, 6), (7, 9)]:
        _assert_same_outputs(model, folded, _normal(2, *size, 4, seed=size[1]))


def test_unknown_spatial_size_at_stride_2_is_refused():
    inp = keras.Input((None, None, 3))
    model = _finish(inp, _repvgg(inp, 4, "down", strides=2, identity=False))
    with pytest.raises(ValueError, match=r"'down_add'.*unknown size"):
        fold_parallel_branch(model, ["down_add"])


def test_only_foldable_adds_fold_in_a_larger_model():
    inp = keras.Input((8, 8, 3))
    x = keras.layers.ReLU()(_repvgg(inp, 8, "b1", identity=False))
    x = keras.layers.ReLU()(_repvgg(x, 8, "b2", bias=True))
    residual = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="res_conv")(x)
    x = keras.layers.Add(name="res_add")([x, residual])  # the conv has an activation
    x = keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling2D()(x))
    model = _finish(inp, x, seed=8)
    snapshot = _snapshot(model)
    folded = fold_parallel_branch(model)
    assert {layer.name for layer in folded.layers} >= {"b1_3x3_conv", "b2_3x3_conv", "res_add"}
    assert sum(type(layer) is keras.layers.Conv2D for layer in folded.layers) == 3
    assert not any(type(layer) is keras.layers.BatchNormalization for layer in folded.layers)
    np.testing.assert_array_equal(
        folded.get_layer("head").get_weights()[0], model.get_layer("head").get_weights()[0]
    )
    _assert_same_outputs(model, folded, _normal(2, 8, 8, 3, seed=9))
    _assert_unchanged(model, snapshot)
    only_b2 = fold_parallel_branch(model, ["b2_add"])
    assert "b1_add" in {layer.name for layer in only_b2.layers}
    assert "b2_add" not in {layer.name for layer in only_b2.layers}
    _assert_same_outputs(model, only_b2, _normal(2, 8, 8, 3, seed=9))
    with pytest.raises(ValueError, match=r"'res_add'.*'res_conv' has activation 'relu'"):
        fold_parallel_branch(model, ["res_add"])


def _two_branch_model(first, second):
    inp = keras.Input((8, 8, 4))
    return _finish(inp, keras.layers.Add(name="add")([first(inp), second(inp)]))


def test_refuses_branches_of_different_inputs():
    inp = keras.Input((8, 8, 4))
    other = keras.layers.ReLU(name="relu")(inp)
    a = keras.layers.Conv2D(4, 3, padding="same", name="a")(inp)
    b = keras.layers.Conv2D(4, 1, name="b")(other)
    model = _finish(inp, keras.layers.Add(name="add")([a, b]))
    with pytest.raises(ValueError, match=r"'add'.*not parallel branches of one tensor"):
        fold_parallel_branch(model, ["add"])


def test_refuses_an_even_kernel():
    model = _two_branch_model(
        keras.layers.Conv2D(4, 2, padding="same", name="even"), keras.layers.Conv2D(4, 1)
    )
    with pytest.raises(ValueError, match=r"'add'.*'even' has the even kernel size"):
        fold_parallel_branch(model, ["add"])


def test_refuses_grouped_and_shared_convs():
    grouped = _two_branch_model(
        keras.layers.Conv2D(4, 3, padding="same", groups=2, name="g"), keras.layers.Conv2D(4, 1)
    )
    with pytest.raises(ValueError, match="groups=2"):
        fold_parallel_branch(grouped, ["add"])
    inp = keras.Input((8, 8, 4))
    a = keras.layers.Conv2D(4, 3, padding="same", name="a")(inp)
    b = keras.layers.Conv2D(4, 1, name="b")(inp)
    tap = keras.layers.ReLU(name="tap")(a)  # 'a' feeds something else too
    model = _finish(inp, keras.layers.Add(name="add")([a, b, tap]))
    with pytest.raises(ValueError, match=r"'add'.*used only there.*input 0 from 'a'"):
        fold_parallel_branch(model, ["add"])


def test_refuses_names_that_are_not_foldable_adds():
    inp = keras.Input((8, 8, 4))
    model = _finish(inp, _repvgg(inp, 4, "b"))
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        fold_parallel_branch(model, ["nope"])
    with pytest.raises(ValueError, match="'b_id'.*not an Add"):
        fold_parallel_branch(model, ["b_id"])
    identities = _two_branch_model(
        keras.layers.BatchNormalization(name="bn1"), keras.layers.BatchNormalization(name="bn2")
    )
    with pytest.raises(ValueError, match="no Conv2D branch"):
        fold_parallel_branch(identities, ["add"])
    assert _types(fold_parallel_branch(identities)) == _types(identities)


def test_nothing_to_fold_returns_an_equivalent_copy():
    inp = keras.Input((8, 8, 3))
    x = _conv_bn(inp, 4, 3, "c")
    model = _finish(inp, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    copy = fold_parallel_branch(model)
    assert copy is not model and _types(copy) == _types(model)
    assert [v.name for v in copy.weights] == [v.name for v in model.weights]
    _assert_same_outputs(model, copy, _normal(2, 8, 8, 3))
    sequential = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization()]
    )
    randomize_batchnorm(sequential)
    seq_copy = fold_parallel_branch(sequential)
    assert isinstance(seq_copy, keras.Sequential) and seq_copy is not sequential
    _assert_same_outputs(sequential, seq_copy, _normal(2, 8, 8, 3))


def test_fold_under_mixed_precision(mixed_precision):
    inp = keras.Input((9, 9, 4))
    model = _finish(inp, _repvgg(inp, 4, "b", bias=True), seed=10)
    folded = fold_parallel_branch(model)
    conv = folded.get_layer("b_3x3_conv")
    assert conv.dtype_policy.name == "mixed_float16" and conv.kernel.dtype == "float32"
    x = _normal(2, 9, 9, 4, seed=11)
    np.testing.assert_allclose(
        predict(folded, [x]).astype(np.float32), predict(model, [x]).astype(np.float32), atol=3e-2
    )
