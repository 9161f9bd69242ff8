"""Test helpers: random keep sets and the surgery contract check."""

from __future__ import annotations

import subprocess

import keras
import numpy as np

import tf_filterprune as tffp
from tf_filterprune.graph import build_graph
from tf_filterprune.surgery import rebuild, zeroed_copy


def randomize_batchnorm(model: keras.Model, seed: int = 0) -> None:
    """Gives every BatchNormalization layer non-trivial statistics and affine terms."""
    rng = np.random.default_rng(seed)
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape).astype("float32"),
                    rng.normal(0, 0.2, beta.shape).astype("float32"),
                    rng.normal(0, 0.2, mean.shape).astype("float32"),
                    rng.uniform(0.5, 1.5, var.shape).astype("float32"),
                ]
            )


def randomize_biases(model: keras.Model, seed: int = 0) -> None:
    """Gives every layer with a ``bias`` weight (convs, Dense...) a nonzero bias."""
    rng = np.random.default_rng(seed + 1)
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            continue
        for variable in layer.weights:
            if variable.name == "bias":
                variable.assign(rng.normal(0, 0.3, variable.shape).astype("float32"))


def _all_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
        else:
            yield layer


def random_keep(graph, ratio: float = 0.6, seed: int = 0) -> dict[int, np.ndarray]:
    """A random kept subset of every prunable group (as many per block of a grouped conv)."""
    rng = np.random.default_rng(seed)
    keep = {}
    for group in graph.groups():
        if group.prunable:
            per_block = group.size // group.blocks
            n = max(1, int(round(per_block * ratio)))
            keep[group.id] = np.sort(
                np.concatenate(
                    [
                        b * per_block + rng.choice(per_block, n, replace=False)
                        for b in range(group.blocks)
                    ]
                )
            )
    return keep


def input_batch(model: keras.Model, n: int = 2, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, *t.shape[1:])).astype("float32") for t in model.inputs]


def predict(model: keras.Model, x: list[np.ndarray]) -> np.ndarray:
    """The model's inference output on ``x`` (a list of input arrays) as numpy."""
    return keras.ops.convert_to_numpy(model(x if len(x) > 1 else x[0], training=False))


def assert_surgery_contract(
    model: keras.Model,
    ratio: float = 0.6,
    seed: int = 0,
    atol: float = 1e-5,
    fold_constants="exact",
) -> keras.Model:
    """The compact model equals the kernel-zeroed reference (:func:`zeroed_copy`).

    BatchNormalization statistics and affine terms and every bias are made
    random and nonzero first, so the removed channels carry constants that the
    surgery must fold (with ``fold_constants="exact"`` the reference also drops
    the constants at the consumers where a bias cannot represent them, so the
    check is exact on every model). Returns the compact model. Also checks the
    input model is unchanged and that every producer's width equals the number
    of kept channels.
    """
    randomize_batchnorm(model, seed)
    randomize_biases(model, seed)
    before = [w.copy() for w in model.get_weights()]
    graph = build_graph(model)
    keep = random_keep(graph, ratio, seed)
    assert keep, "the model has no prunable group"
    compact = rebuild(model, graph, keep, fold_constants=fold_constants)
    reference = zeroed_copy(model, graph, keep, fold_constants=fold_constants)
    x = input_batch(model, seed=seed)
    expected, got = predict(reference, x), predict(compact, x)
    assert expected.shape == got.shape
    np.testing.assert_allclose(got, expected, atol=atol, rtol=0)
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    for path, width in _expected_producer_widths(graph, keep).items():
        layer = _get(compact, path)
        got = getattr(layer, "filters", None) or getattr(layer, "units", None)
        assert got == width, (path, got, width)
    assert [layer.name for layer in compact.layers] == [layer.name for layer in model.layers]
    return compact


def _expected_producer_widths(graph, keep) -> dict[str, int]:
    """Producer path -> its compact width, for producers of a cut group.

    Read from the producer's output layout: its output may span several groups
    (a Dense that gates a Concatenate of two convs in a squeeze-excite block),
    hold several spaces of one group (a conv whose halves are tied by a split),
    or be one space listed once per call (a shared sub-model's conv).
    """
    keep_of = graph.keep_function(dict(keep))
    cut = {path for group in graph.groups() if group.id in keep for path in group.producers}
    return {
        path: graph.first_call(graph.layers[path]).out_layouts[0].cut_width(keep_of) for path in cut
    }


def _get(model, path):
    layer = model
    for part in path.split("/"):
        layer = layer.get_layer(part)
    return layer


# ------------------------------------------------- training-time method tests


def tiny_data(shape=(12, 12, 3), n=32, classes=4, seed=0):
    """Random images and integer labels."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *shape)).astype("float32")
    return x, rng.integers(0, classes, size=(n,)).astype("int32")


def small_cnn(bn=True, padding="same", classes=4, shape=(12, 12, 3)):
    """Three 3x3 convs (8, 16, 16 filters; BN and ReLU), global pooling, Dense head.

    With ``padding="valid"`` a removed channel's constant reaches every position of
    the next conv alike, so the surgery folds it exactly.
    """
    inputs = keras.Input(shape, name="input")
    x = inputs
    for i, width in enumerate((8, 16, 16), start=1):
        x = keras.layers.Conv2D(width, 3, padding=padding, name=f"conv{i}")(x)
        if bn:
            x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(classes, name="fc")(x)
    return keras.Model(inputs, outputs, name="small_cnn")


def compiled(model, optimizer=None, **kwargs):
    """``model`` compiled with SGD(0.05) (or ``optimizer``) and a logits cross-entropy."""
    model.compile(
        optimizer or keras.optimizers.SGD(0.05),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        **kwargs,
    )
    return model


def fit_pruning(model, x, y, epochs=2, batch_size=8, **kwargs):
    """``model.fit`` with the pruning callback, unshuffled and silent."""
    model.fit(
        x, y, epochs=epochs, batch_size=batch_size, verbose=0, shuffle=False,
        callbacks=[tffp.callbacks.UpdateFilterPruning()], **kwargs,
    )  # fmt: skip
    return model


def fashion_mnist_present() -> bool:
    """Whether the Fashion-MNIST IDX files are installed (tests skip without them)."""
    try:
        tffp.data.load_fashion_mnist("test")
    except FileNotFoundError:
        return False
    return True


def finish_processes(*procs: subprocess.Popen, timeout: float = 300) -> list:
    """Waits for every process (in order); their ``CompletedProcess`` results."""
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done
