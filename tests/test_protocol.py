"""The method protocol itself: module layering, a toy method's plan through the strip,
consumer maps, hooks and their context, steps_per_execution."""

import ast
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers as L

import tf_filterprune as tffp
from tf_filterprune.methods.base import wrappers_of

METHODS = Path(tffp.__file__).resolve().parent / "methods"


@pytest.mark.parametrize("module", ["dcff.py", "dpfps.py", "fcf.py", "clustering.py"])
def test_a_method_module_imports_only_base_graph_and_schedules(module):
    """Methods sit above the graph and the surgery's pure kernel math (branch folds),
    never the cutting code: they say what to keep, the surgery cuts."""
    tree = ast.parse((METHODS / module).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and "tf_filterprune" in node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names if "tf_filterprune" in a.name)
    allowed = {
        "tf_filterprune.methods.base",
        "tf_filterprune.schedules",
        "tf_filterprune.surgery.branches",
    }
    assert {m for m in imported if not m.startswith("tf_filterprune.graph")} <= allowed
    source = (METHODS / module).read_text()
    for slicing in ("np.take(", "tf.gather(kernel", "set_weights("):
        assert slicing not in source, slicing


def small_cnn():
    inputs = keras.Input((10, 10, 3))
    x = L.Conv2D(6, 3, padding="same", name="a")(inputs)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU()(x)
    x = L.Conv2D(4, 1, name="b")(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(3, name="fc")(x))


class MergePairs(tffp.PruningMethod):
    """Keeps channel 2i of each pair (2i, 2i+1) and sums both consumer slices onto it."""

    def plan(self, group, context):
        keep = np.arange(0, group.size, 2)
        merge = np.zeros((len(keep), group.size))
        for row, channel in enumerate(keep):
            merge[row, channel : channel + 2] = 1.0
        return tffp.ChannelPlan(keep, consumer_map=merge)


def test_consumer_map_merges_identical_channels_exactly():
    model = small_cnn()
    kernel, bias = model.get_layer("a").get_weights()
    kernel[..., 1::2], bias[1::2] = kernel[..., 0::2], bias[0::2]  # pairs of equal filters
    model.get_layer("a").set_weights([kernel, bias])
    wrapped = tffp.prune_filters(model, MergePairs(), ignored_layers=["b"])
    x = np.random.default_rng(0).normal(size=(4, 10, 10, 3)).astype("float32")
    compact, diff = tffp.strip_filter_pruning(wrapped, verify_data=x)
    assert compact.get_layer("a").filters == 3 and compact.get_layer("b").kernel.shape[2] == 3
    assert diff <= 1e-5


class Recorder(tffp.PruningMethod):
    calls: list = []

    def plan(self, group, context):
        return tffp.ChannelPlan(np.arange(group.target))

    def on_train_begin(self, context):
        Recorder.calls.append(("begin", [g.name for g in context.groups], context.macs.total))

    def on_step_end(self, context):
        p = context.progress
        Recorder.calls.append(("step", p.epoch, p.batch, p.steps_run, context.learning_rate()))


def test_hooks_get_groups_macs_learning_rate_and_progress():
    Recorder.calls = []
    model = small_cnn()
    wrapped = tffp.prune_filters(model, Recorder(0.5))
    wrapped.compile(keras.optimizers.SGD(0.125), "mse", steps_per_execution=2)
    x = np.zeros((16, 10, 10, 3), "float32")
    y = np.zeros((16, 3), "float32")
    wrapped.fit(x, y, batch_size=4, epochs=1, verbose=0,
                callbacks=[tffp.callbacks.UpdateFilterPruning()])  # fmt: skip
    begin, *steps = Recorder.calls
    assert begin == ("begin", ["a", "b"], tffp.profile(model).total_macs)
    assert steps == [("step", 0, 1, 2, 0.125), ("step", 0, 3, 2, 0.125)]  # 2 steps per call
    assert int(wrappers_of(wrapped)[0].step.numpy()) == 4
    compact = tffp.strip_filter_pruning(wrapped)
    assert [compact.get_layer(n).filters for n in ("a", "b")] == [3, 2]


def test_dcff_updates_within_the_epoch_with_several_steps_per_execution():
    method = tffp.DCFF(0.5, temperature=tffp.schedules.SigmoidTemperature(2), updates_per_epoch=4)
    wrapped = tffp.prune_filters(small_cnn(), method)
    wrapped.compile("sgd", "mse", steps_per_execution=3)
    x, y = np.ones((32, 10, 10, 3), "float32"), np.zeros((32, 3), "float32")
    wrapped.fit(x, y, batch_size=4, epochs=1, verbose=0,
                callbacks=[tffp.callbacks.UpdateFilterPruning()])  # fmt: skip
    # 8 steps; executions end after steps 3, 6 and 8. The first two each pass an update
    # point (2, then 4 and 6) and update once, at their end; the last at epoch 6/8
    expected = tffp.schedules.SigmoidTemperature(2)(0.75)
    assert float(wrapped.get_layer("a").temperature.numpy()) == pytest.approx(expected)


def test_plans_that_keep_nothing_are_refused():
    class Empty(tffp.PruningMethod):
        def plan(self, group, context):
            return tffp.ChannelPlan(np.array([], dtype=int))

    wrapped = tffp.prune_filters(small_cnn(), Empty())
    with pytest.raises(ValueError, match="at least one"):
        tffp.strip_filter_pruning(wrapped)
