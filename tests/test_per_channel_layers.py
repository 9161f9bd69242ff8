"""Per-channel layers: ConvNeXt's LayerScale and the like, and normalizations over channels.

A layer whose weights hold one value per channel (``x * gamma``) passes the
channels through and has its weights sliced (``registry.PerChannelRule``);
the surgery contract holds through it. A normalization over the channels
(LayerNormalization, RMSNormalization on the last axis) has per-channel
gamma/beta too, but its statistics mix the channels: its groups are cut
structurally and recorded as not output-exact, while the contract holds for
every other group of the model.
"""

import keras
import numpy as np
import pytest
from helpers import input_batch, predict, random_keep, randomize_batchnorm, randomize_biases
from keras import layers as L
from keras.src.applications.convnext import LayerScale, StochasticDepth
from keras.src.applications.inception_resnet_v2 import CustomScaleLayer

import tf_filterprune as tffp
from tf_filterprune.graph import build_graph, registry
from tf_filterprune.surgery import rebuild, zeroed_copy


def functional(build, shape=(8, 8, 3)):
    inp = keras.Input(shape, name="input")
    return keras.Model(inp, build(inp))


def bn(x):
    return L.BatchNormalization()(x)


def randomize(model, seed=0):
    """Random BN statistics, biases and per-channel weights (gamma, beta, scale)."""
    randomize_batchnorm(model, seed)
    randomize_biases(model, seed)
    rng = np.random.default_rng(seed + 7)
    for layer in model.layers:
        if isinstance(layer, LayerScale | L.LayerNormalization | L.GroupNormalization):
            for variable in layer.weights:
                variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype("float32"))


def assert_contract(model, ratio=0.5, seed=0, atol=1e-5):
    """The surgery contract on every prunable group whose cut is output-exact."""
    randomize(model, seed)
    graph = build_graph(model)
    exact = {g.id for g in graph.groups() if not g.inexact}
    keep = {g: k for g, k in random_keep(graph, ratio, seed).items() if g in exact}
    assert keep, "no prunable exact group"
    compact = rebuild(model, graph, keep, fold_constants="exact")
    reference = zeroed_copy(model, graph, keep, fold_constants="exact")
    x = input_batch(model, seed=seed)
    np.testing.assert_allclose(predict(compact, x), predict(reference, x), atol=atol, rtol=0)
    return compact, graph, keep


# ------------------------------------------------------------------ LayerScale
def _layer_scale(x):
    y = bn(L.Conv2D(8, 1, name="c")(x))
    y = LayerScale(0.5, 8, name="scale")(y)
    return L.Conv2D(3, 3, name="head")(StochasticDepth(0.1, name="drop")(y))


def test_layer_scale_is_cut_with_its_channels():
    model = functional(_layer_scale)
    graph = build_graph(model)
    assert graph.group_of_layer("c").prunable
    compact, _, _ = assert_contract(model)
    kept = compact.get_layer("c").filters
    assert compact.get_layer("scale").projection_dim == kept
    assert compact.get_layer("scale").gamma.shape == (kept,)


def test_layer_scale_slices_the_kept_gammas():
    model = functional(_layer_scale)
    randomize(model)
    compact = tffp.prune_channels(model, {"c": [1, 4, 6]})
    np.testing.assert_array_equal(
        compact.get_layer("scale").gamma.numpy(), model.get_layer("scale").gamma.numpy()[[1, 4, 6]]
    )


def test_convnext_block_prunes_and_keeps_the_output_shape():
    def block(x):
        x = L.Conv2D(8, 2, strides=2, name="stem")(x)
        y = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
        y = L.LayerNormalization(epsilon=1e-6, name="ln")(y)
        y = L.Dense(32, name="pw1")(y)
        y = L.Activation("gelu")(y)
        y = L.Dense(8, name="pw2")(y)
        y = LayerScale(1e-6, 8, name="scale")(y)
        x = x + y
        return L.Dense(3, name="head")(L.GlobalAveragePooling2D()(x))

    model = functional(block)
    graph = build_graph(model)
    assert graph.group_of_layer("pw1").prunable and not graph.group_of_layer("pw1").inexact
    assert graph.group_of_layer("stem").inexact  # the residual stream passes the LayerNorm
    assert_contract(model)
    compact = tffp.prune_once(model, "l1", keep_ratio=0.5)
    assert compact.get_layer("pw1").units == 16
    assert compact.get_layer("scale").projection_dim == compact.get_layer("stem").filters == 4
    assert predict(compact, input_batch(model)).shape == (2, 3)


def test_inception_resnet_scale_layer_ties_its_inputs():
    def build(x):
        x = bn(L.Conv2D(8, 1, name="stem")(x))
        r = bn(L.Conv2D(8, 3, padding="same", name="branch")(L.ReLU()(x)))
        x = CustomScaleLayer(0.17, name="scale")([x, r])
        return L.Conv2D(3, 1, name="head")(L.ReLU()(x))

    model = functional(build)
    graph = build_graph(model)
    group = graph.group_of_layer("stem")
    assert group.id == graph.group_of_layer("branch").id and group.residual
    assert_contract(model)


# --------------------------------------------------------- user's own layers
class ChannelScale(keras.layers.Layer):
    """A learned per-channel scale and shift, with weights created without names."""

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(self.channels,), initializer="ones")
        self.shift = self.add_weight(shape=(1, 1, self.channels), initializer="zeros")

    def call(self, x):
        return x * self.scale + self.shift

    def get_config(self):
        return dict(super().get_config(), channels=self.channels)


def _channel_scale(x):
    y = ChannelScale(8, name="cs")(bn(L.Conv2D(8, 1, name="c")(x)))
    return L.Conv2D(3, 1, name="head")(y)


def test_unregistered_per_channel_layer_is_refused():
    group = build_graph(functional(_channel_scale)).group_of_layer("c")
    assert not group.prunable
    assert any("'cs' is a ChannelScale" in r and "register" in r for r in group.reasons)


def test_registered_per_channel_layer_is_cut(monkeypatch):
    rule = registry.PerChannelRule({"scale": {0: "in"}, "shift": {-1: "in"}}, "channels")
    monkeypatch.setitem(registry._REGISTRY, ChannelScale, rule)
    model = functional(_channel_scale)
    for variable in model.get_layer("cs").weights:
        variable.assign(np.random.default_rng(1).normal(size=variable.shape))
    compact, _, _ = assert_contract(model)
    layer = compact.get_layer("cs")
    assert layer.channels == compact.get_layer("c").filters == layer.shift.shape[-1]


def test_registration_by_dotted_path(monkeypatch):
    path = f"{ChannelScale.__module__}.{ChannelScale.__qualname__}"
    rule = registry.PerChannelRule({"scale": {0: "in"}, "shift": {-1: "in"}}, "channels")
    monkeypatch.setitem(registry._BY_NAME, path, rule)
    assert registry.rule_for(ChannelScale(4)) is rule
    assert build_graph(functional(_channel_scale)).group_of_layer("c").prunable


def test_per_channel_rule_refuses_a_weight_it_does_not_name(monkeypatch):
    monkeypatch.setitem(
        registry._REGISTRY, ChannelScale, registry.PerChannelRule({"scale": {0: "in"}})
    )
    group = build_graph(functional(_channel_scale)).group_of_layer("c")
    assert any("does not name" in r for r in group.reasons)


# ----------------------------------------------------- normalization over channels
NORMS = {
    "layer_norm": lambda: L.LayerNormalization(name="norm"),
    "layer_norm_no_center": lambda: L.LayerNormalization(center=False, name="norm"),
    "rms_norm": lambda: L.RMSNormalization(name="norm"),
    "group_norm_one_group": lambda: L.GroupNormalization(groups=1, name="norm"),
}


def _normalized_mlp(make_norm):
    def build(x):
        y = make_norm()(L.Conv2D(8, 1, name="c")(x))
        y = L.Dense(16, activation="gelu", name="hidden")(y)
        return L.Dense(3, name="head")(y)

    return build


@pytest.mark.parametrize("name", list(NORMS))
def test_normalization_over_channels(name, tmp_path):
    model = functional(_normalized_mlp(NORMS[name]))
    graph = build_graph(model)
    normalized = graph.group_of_layer("c")
    assert normalized.prunable and normalized.inexact
    assert "'norm'" in normalized.inexact[0] and "not output-exact" in normalized.inexact[0]
    assert not graph.group_of_layer("hidden").inexact
    compact, _, keep = assert_contract(model)  # the exact groups: the hidden layer
    assert compact.get_layer("hidden").units == len(keep[graph.group_of_layer("hidden").id])

    randomize(model)
    compact = tffp.prune_channels(model, {"c": [0, 3, 5, 6]})
    pairs = zip(model.get_layer("norm").weights, compact.get_layer("norm").weights, strict=True)
    for original, cut in pairs:
        np.testing.assert_array_equal(cut.numpy(), original.numpy()[[0, 3, 5, 6]])
    assert predict(compact, input_batch(model)).shape == (2, 8, 8, 3)
    compact.save(tmp_path / "m.keras")


def test_instance_normalization_is_exact_and_resized():
    model = functional(_normalized_mlp(lambda: L.GroupNormalization(groups=-1, name="norm")))
    graph = build_graph(model)
    group = graph.group_of_layer("c")
    assert group.prunable and not group.inexact
    compact, _, keep = assert_contract(model)
    assert compact.get_layer("norm").groups == len(keep[group.id])


def test_group_normalization_with_channel_groups_is_refused():
    model = functional(_normalized_mlp(lambda: L.GroupNormalization(groups=2, name="norm")))
    group = build_graph(model).group_of_layer("c")
    assert not group.prunable and any("2 groups" in r for r in group.reasons)


def test_layer_normalization_over_space_is_refused():
    model = functional(_normalized_mlp(lambda: L.LayerNormalization(axis=(1, 2, 3), name="norm")))
    group = build_graph(model).group_of_layer("c")
    assert not group.prunable and any("normalizes over axis" in r for r in group.reasons)


# ----------------------------------------------------------- keras_hub, by name
def test_keras_hub_per_channel_layers_registered_by_name():
    pytest.importorskip("keras_hub")
    from keras_hub.src.models.dinov2.dinov2_layers import DINOV2DropPath, DINOV2LayerScale
    from keras_hub.src.models.hgnetv2.hgnetv2_layers import HGNetV2LearnableAffineBlock
    from keras_hub.src.models.mobilenetv5.mobilenetv5_layers import LayerScale2d

    def build(x):
        y = bn(L.Conv2D(8, 1, name="c")(x))
        y = DINOV2DropPath(0.1)(DINOV2LayerScale(8, 0.5, name="dino_scale")(y))
        y = LayerScale2d(8, 0.3, name="scale2d")(HGNetV2LearnableAffineBlock(1.5, 0.2)(y))
        return L.Conv2D(3, 1, name="head")(y)

    model = functional(build)
    for layer in model.layers[3:]:
        for variable in layer.weights:
            variable.assign(np.random.default_rng(2).uniform(0.5, 1.5, variable.shape))
    compact, graph, keep = assert_contract(model)
    kept = len(keep[graph.group_of_layer("c").id])
    assert compact.get_layer("dino_scale").hidden_dim == compact.get_layer("scale2d").dim == kept
