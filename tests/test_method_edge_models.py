"""Training-time methods on models with keras.ops nodes, unnamed per-channel weights,
grouped-conv consumers and channel-mixing fused activations (regressions).

Each method must train a wrapped model whose graph holds ``keras.ops`` Operation
nodes (which have no weights) and strip it; FilterClustering must refuse a group
consumed by ``Conv2D(groups=channels)`` before training, not at the strip; a conv
fused with ``activation="softmax"`` must keep its outputs whole.
"""

import subprocess
import sys

import keras
import numpy as np
import pytest
from helpers import compiled, fit_pruning, tiny_data
from keras import layers as L
from keras import ops

import tf_filterprune as tffp
from tf_filterprune.graph import build_graph, registry
from tf_filterprune.methods.base import wrappers_of

METHODS = {
    "dcff": lambda: tffp.DCFF(),
    "dpfps": lambda: tffp.DPFPS(target_macs_reduction=0.3),
    "fcf": lambda: tffp.FCF(),
    "clustering": lambda: tffp.FilterClustering(epochs=2),
}


def ops_cnn(shape=(12, 12, 3)):
    """Convs whose outputs pass through keras.ops nodes (relu, a scalar add, a multiply)."""
    inputs = keras.Input(shape, name="input")
    x = L.Conv2D(8, 3, padding="same", name="conv1")(inputs)
    x = ops.relu(L.BatchNormalization(name="bn1")(x))
    x = L.Conv2D(16, 3, padding="same", name="conv2")(x)
    x = ops.relu(L.BatchNormalization(name="bn2")(x)) + 1.0
    x = L.Conv2D(16, 3, padding="same", name="conv3")(x * 0.5)
    x = L.GlobalAveragePooling2D(name="gap")(ops.relu(x))
    return keras.Model(inputs, L.Dense(4, name="fc")(x))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_trains_and_strips_a_model_with_keras_ops_nodes(name):
    keras.utils.set_random_seed(0)
    x, y = tiny_data()
    kwargs = {} if name == "dpfps" else {"target_macs_reduction": 0.3}
    wrapped = tffp.prune_filters(ops_cnn(), METHODS[name](), **kwargs)
    assert wrappers_of(wrapped), "nothing wrapped"
    fit_pruning(compiled(wrapped), x, y, epochs=2)
    compact, _ = tffp.strip_filter_pruning(wrapped, x[:4], notes=[])
    assert compact.output.shape == wrapped.output.shape
    assert tffp.profile(compact).total_macs < tffp.profile(ops_cnn()).total_macs


class ChannelScale(L.Layer):
    """A per-channel scale whose weight has no name (``add_weight(shape=...)``)."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.scale


def test_an_unnamed_per_channel_weight_is_a_member_of_its_group():
    tffp.register_layer(ChannelScale, registry.PerChannelRule({"scale": {0: "in"}}))
    inputs = keras.Input((8, 8, 3))
    x = ChannelScale(name="scale")(L.Conv2D(8, 3, padding="same", name="conv1")(inputs))
    x = L.Conv2D(8, 3, padding="same", name="conv2")(x)
    model = keras.Model(inputs, L.Dense(2)(L.GlobalAveragePooling2D()(x)))
    wrapped = tffp.prune_filters(model, tffp.DPFPS(target_macs_reduction=0.2))
    context = tffp.api.method_contexts(wrapped)[0]
    conv1 = next(g for g in context.groups if "conv1" in g.name)
    owners = {m.path.split("/")[-1] for m in conv1.members}
    assert "scale" in owners, owners


def depthwise_by_groups_cnn(shape=(10, 10, 3)):
    """conv1 -> Conv2D(groups=8) (ConvNeXt's depthwise conv) -> conv3."""
    inputs = keras.Input(shape)
    x = L.Conv2D(8, 1, name="conv1")(inputs)
    x = L.Conv2D(8, 3, padding="same", groups=8, name="dw")(x)
    x = L.Conv2D(8, 1, name="conv3")(x)
    return keras.Model(inputs, L.Dense(2)(L.GlobalAveragePooling2D()(x)))


def test_clustering_refuses_a_group_read_by_a_conv_with_groups_when_wrapping():
    model = depthwise_by_groups_cnn()
    method = tffp.FilterClustering(epochs=1)
    with pytest.raises(ValueError, match="'dw' \\(Conv2D\\) applies a per-channel kernel"):
        tffp.prune_filters(model, method, target_macs_reduction=0.3)


def test_a_producer_fused_with_softmax_keeps_its_outputs_whole():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", name="conv1")(inputs)
    x = L.Conv2D(6, 1, activation="softmax", name="attention")(x)
    model = keras.Model(inputs, L.Conv2D(2, 1, name="head")(x))
    graph = build_graph(model)
    attention = graph.group_of_layer("attention")
    assert not attention.prunable
    assert any("activation='softmax'" in reason for reason in attention.reasons)
    compact = tffp.prune_once(model, "l1", keep_ratio=0.5)
    assert compact.get_layer("attention").filters == 6
    assert compact.get_layer("conv1").filters == 4
    batch = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    assert np.all(np.isfinite(compact.predict(batch, verbose=0)))


def test_prune_filters_refuses_unknown_spatial_sizes_before_wrapping():
    inputs = keras.Input((None, None, 3), name="image")
    x = L.Conv2D(8, 3, padding="same", name="conv1")(inputs)
    model = keras.Model(inputs, L.Dense(2)(L.GlobalAveragePooling2D()(x)))
    with pytest.raises(ValueError, match=r"fixed input sizes.*'image'.*\(None, None, None, 3\)"):
        tffp.prune_filters(model, tffp.DCFF(keep_ratio=0.5))


def test_a_legacy_tf_keras_model_is_named_as_such():
    pytest.importorskip("tf_keras")
    script = """
import tf_keras, tf_filterprune as tffp
inputs = tf_keras.Input((8, 8, 3))
model = tf_keras.Model(inputs, tf_keras.layers.Conv2D(4, 3)(inputs))
for call in (lambda: tffp.prune_filters(model, tffp.DCFF(keep_ratio=0.5)),
             lambda: tffp.build_graph(model)):
    try:
        call()
    except ValueError as error:
        print(error)
"""
    # its own process: tf_keras is never imported into the test process (test_package.py)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    lines = [line for line in done.stdout.splitlines() if "legacy tf_keras" in line]
    assert len(lines) == 2 and all("Keras 3" in line for line in lines), done.stdout


def test_a_layer_norm_cut_is_reported_in_the_notes():
    inputs = keras.Input((8, 8, 3))
    x = L.LayerNormalization(name="ln")(L.Conv2D(8, 3, padding="same", name="conv1")(inputs))
    model = keras.Model(inputs, L.Conv2D(2, 1, name="head")(x))
    graph = build_graph(model)
    keep = {graph.group_of_layer("conv1").id: np.arange(4)}
    notes = []
    tffp.surgery.rebuild(model, graph, keep, notes=notes)
    assert any("normalizes over the channels" in note for note in notes), notes
