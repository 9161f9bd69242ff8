"""The tf_filterprune side of the peers run; runs in ``.venv`` (TensorFlow, Keras 3).

Commands (``python -m peers.keras_side COMMAND --request req.json --response out.json``,
with ``tools/`` on ``PYTHONPATH``):

- ``prepare``: what the PyTorch side needs for part (b): the reference CNN's layers
  (for the port's layer-by-layer check), its parameter counts and MACs, the widths of
  our headline L1 cut (``tffp.prune_once(fashion_cnn(), "l1",
  target_macs_reduction=..., round_to=..., ignored_layers=...)``), and, per seed, the
  exact order of the training examples that the ``l1_finetune`` row of
  ``tools/benchmark.py`` feeds its model in every epoch (recorded from the real
  ``tf.data`` pipeline and ``model.fit``, see :func:`record_orders`).
- ``resnet50``: times ``tffp.prune_once(keras.applications.ResNet50(weights=None,
  input_shape=(224, 224, 3)), "l1", keep_ratio=...)`` (part (a)).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
TOOLS = Path(__file__).resolve().parents[1]
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_filterprune as tffp  # noqa: E402
from peers.config import CnnConfig, ResNetConfig, widths_from_profile  # noqa: E402


def layer_specs(model: keras.Model) -> list[dict[str, Any]]:
    """Every layer's class and the settings the PyTorch port must match."""
    specs = []
    for layer in model.layers:
        config = layer.get_config()
        spec: dict[str, Any] = {"name": layer.name, "class_name": type(layer).__name__}
        for key in (
            "filters",
            "kernel_size",
            "strides",
            "padding",
            "use_bias",
            "units",
            "momentum",
            "epsilon",
            "center",
            "scale",
            "pool_size",
            "activation",
            "data_format",
        ):
            if key in config:
                value = config[key]
                spec[key] = list(value) if isinstance(value, tuple) else value
        for key in ("kernel_initializer", "bias_initializer"):
            if key in config:
                spec[key] = config[key]["class_name"]
        spec["params"] = int(layer.count_params())
        specs.append(spec)
    return specs


def benchmark_config(config: CnnConfig, output_dir: Path):
    """The ``tools/benchmark.py`` configuration of the ``l1_finetune`` row at ``config``."""
    from bench.config import BenchmarkConfig

    return BenchmarkConfig(
        output_dir=output_dir,
        rows=("l1_finetune",),
        seeds=config.seeds,
        epochs=config.epochs,
        pretrain_epochs=config.pretrain_epochs,
        macs_reduction=config.macs_reduction,
        round_to=config.round_to,
        ignored_layers=config.ignored_layers,
        lr=config.lr,
        batch_size=config.batch_size,
        bn_steps=config.bn_steps,
        train_limit=config.train_limit,
        test_limit=config.test_limit,
        verbose=0,
    )


def _probe_model() -> keras.Model:
    """A tiny model with the CNN's input and output, standing in for it in ``fit``."""
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


def record_orders(config: CnnConfig, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """The training examples' order in each epoch of ``l1_finetune`` at ``seed``.

    Replays the row exactly (``tools/bench/row_types.run_pair`` seeds with
    ``keras.utils.set_random_seed(seed)``; ``run_l1_finetune`` builds one
    ``data.train(seed)`` pipeline and fits ``pretrain_epochs`` on it, then the compact
    model ``epochs - pretrain_epochs`` on the same pipeline, each ``fit`` with a fresh
    compile), with a tiny stand-in model and the pipeline followed by an identity map
    that looks every batch's examples up (by pixels and label) and records their
    indices. ``fit`` pulls one extra batch of a fresh iterator per call to build its
    metrics (the shuffle then moves on); the callback's epoch markers separate what the
    epochs train on from those.

    Returns:
        ``(orders, info)``: int32 ``[epochs, examples]`` and what was seen.
    """
    from bench.protocol import load_data, train

    bench_config = benchmark_config(config, Path(tempfile.mkdtemp(prefix="peers_")))
    data = load_data(bench_config)
    images, labels = tffp.data.load_fashion_mnist("train")
    if config.train_limit is not None:
        images, labels = images[: config.train_limit], labels[: config.train_limit]
    index: dict[bytes, int] = {}
    for i in range(len(labels)):
        index.setdefault(images[i].tobytes() + bytes([labels[i]]), i)
    events: list[Any] = []

    def look_up(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        pixels = np.rint(np.asarray(x) * 255.0).astype(np.uint8)
        found = [index[pixels[i, ..., 0].tobytes() + bytes([int(y[i])])] for i in range(len(y))]
        events.append(np.asarray(found, np.int64))
        return np.zeros((), np.int32)

    def tap(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        token = tf.numpy_function(look_up, [x, y], tf.int32, stateful=True)
        with tf.control_dependencies([token]):
            return tf.identity(x), tf.identity(y)

    class Markers(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            events.append("epoch")

    keras.utils.set_random_seed(seed)  # as run_pair
    dataset = data.train(seed).map(tap)
    train(_probe_model(), dataset, config.pretrain_epochs, bench_config, callbacks=[Markers()])
    train(_probe_model(), dataset, config.finetune_epochs, bench_config, callbacks=[Markers()])

    epochs: list[list[np.ndarray]] = []
    outside = 0
    for event in events:
        if isinstance(event, str):
            epochs.append([])
        elif epochs and len(np.concatenate(epochs[-1] or [np.zeros(0, np.int64)])) < len(labels):
            epochs[-1].append(event)
        else:
            outside += 1  # a batch pulled to build the metrics, before the epoch marker
    orders = np.stack([np.concatenate(batches) for batches in epochs]).astype(np.int32)
    if orders.shape != (config.epochs, len(labels)):
        raise AssertionError(f"recorded orders of shape {orders.shape}")
    for row in orders:
        if not np.array_equal(np.sort(row), np.arange(len(labels))):
            raise AssertionError("an epoch's order is not a permutation of the examples")
    return orders, {"batches_pulled_outside_epochs": outside, "examples": len(labels)}


def bn_batches_check(config: CnnConfig) -> dict[str, Any]:
    """Checks that the fixed BN batches are the first ``bn_steps`` unshuffled batches."""
    from bench.protocol import load_data

    data = load_data(benchmark_config(config, Path(tempfile.mkdtemp(prefix="peers_"))))
    images, _ = tffp.data.load_fashion_mnist("train")
    if config.train_limit is not None:
        images = images[: config.train_limit]
    start = 0
    for batch in data.bn_batches:
        batch = np.asarray(batch)
        expected = images[start : start + len(batch)].astype(np.float32)[..., None] / 255.0
        if not np.array_equal(batch, expected):
            raise AssertionError(f"BN batch at example {start} differs from the IDX file")
        start += len(batch)
    return {"bn_batches": len(data.bn_batches), "bn_examples": start}


def prepare(request: dict[str, Any]) -> dict[str, Any]:
    config = CnnConfig.from_json(request["config"])
    dense = tffp.models.fashion_cnn()
    compact = tffp.prune_once(
        dense,
        "l1",
        target_macs_reduction=config.macs_reduction,
        round_to=config.round_to,
        ignored_layers=config.ignored_layers,
    )
    dense_prof, compact_prof = tffp.profile(dense), tffp.profile(compact)
    specs = layer_specs(dense)
    response: dict[str, Any] = {
        "layers": specs,
        "dense_widths": widths_from_profile(specs),
        "target_widths": widths_from_profile(layer_specs(compact)),
        "dense": {
            "params": dense_prof.total_params,
            "trainable_params": dense_prof.trainable_params,
            "macs": dense_prof.total_macs,
        },
        "compact": {
            "params": compact_prof.total_params,
            "trainable_params": compact_prof.trainable_params,
            "macs": compact_prof.total_macs,
            "macs_ratio": compact_prof.total_macs / dense_prof.total_macs,
        },
        "bn": bn_batches_check(config),
        "orders": {},
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }
    orders_dir = Path(request["orders_dir"])
    orders_dir.mkdir(parents=True, exist_ok=True)
    for seed in request.get("order_seeds", config.seeds):
        started = time.time()
        orders, info = record_orders(config, int(seed))
        path = orders_dir / f"orders_seed{seed}.npy"
        np.save(path, orders)
        info.update(path=str(path), seconds=round(time.time() - started, 1))
        response["orders"][str(seed)] = info
    return response


def resnet50(request: dict[str, Any]) -> dict[str, Any]:
    """Times ``prune_once`` on ResNet-50 (one untimed warm-up call, then ``repeats``)."""
    config = ResNetConfig(**request["config"])
    tf.config.threading.set_intra_op_parallelism_threads(config.threads)
    tf.config.threading.set_inter_op_parallelism_threads(config.threads)
    started = time.perf_counter()
    model = keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3))
    build_s = time.perf_counter() - started
    warm = time.perf_counter()
    compact = tffp.prune_once(model, "l1", keep_ratio=config.keep_ratio)
    warmup_s = time.perf_counter() - warm
    seconds = []
    for _ in range(config.repeats):
        start = time.perf_counter()
        compact = tffp.prune_once(model, "l1", keep_ratio=config.keep_ratio)
        seconds.append(time.perf_counter() - start)
    before, after = tffp.profile(model), tffp.profile(compact)
    return {
        "seconds": seconds,
        "warmup_s": warmup_s,
        "build_s": build_s,
        "macs_before": before.total_macs,
        "macs_after": after.total_macs,
        "macs_ratio": after.total_macs / before.total_macs,
        "params_before": before.trainable_params,
        "params_after": after.trainable_params,
        "params_ratio": after.trainable_params / before.trainable_params,
        "call": f'tffp.prune_once(ResNet50(weights=None), "l1", keep_ratio={config.keep_ratio})',
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }


COMMANDS = {"prepare": prepare, "resnet50": resnet50}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("--request", required=True, help="JSON file with the arguments")
    parser.add_argument("--response", required=True, help="where to write the JSON result")
    args = parser.parse_args(argv)
    request = json.loads(Path(args.request).read_text())
    response = COMMANDS[args.command](request)
    Path(args.response).write_text(json.dumps(response, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
