r"""tfmot baseline: unstructured magnitude pruning of the Fashion-MNIST CNN, in tf_keras.

Run by ``tools/benchmark.py`` in a subprocess (tfmot switches the whole process
to the legacy ``tf_keras``, so the parent never imports it). This script does
not import ``tf_filterprune`` either: it rebuilds the reference CNN
(3x3 'same' convs with bias of widths 32, 32, M, 64, 64, M, 128, each followed
by BatchNormalization and ReLU, global average pooling, Dense 10 logits) in
tf_keras, trains it for ``--epochs`` with ``prune_low_magnitude`` reaching
``--sparsity``, strips the pruning wrappers, re-estimates the BatchNorm
statistics on fixed training batches, evaluates, converts to a float TFLite
model with batch 1, and writes a JSON result.

The data come from an ``.npz`` written by the parent with uint8 arrays
``x_train [N, 28, 28]``, ``y_train [N]``, ``x_test``, ``y_test``.

Usage:

    TF_USE_LEGACY_KERAS=1 python tools/tfmot_baseline.py --data data.npz \
        --sparsity 0.56 --output_json tfmot.json --output_tflite tfmot.tflite
"""

from __future__ import annotations

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tfmot needs tf_keras; set before TF loads
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

TOOLS = Path(__file__).resolve().parent
if str(TOOLS) not in sys.path:  # for bench.timing (no Keras import) when not run as a script
    sys.path.insert(0, str(TOOLS))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from bench.timing import StepTimerMixin, ratio  # noqa: E402  (stdlib only)

FLAGS = flags.FLAGS
flags.DEFINE_string("data", None, "An .npz with x_train, y_train, x_test, y_test (uint8).")
flags.DEFINE_float("sparsity", None, "Target sparsity of the pruned kernels, in [0, 1).")
flags.DEFINE_string("output_json", None, "Where the JSON result goes.")
flags.DEFINE_string("output_tflite", None, "Where the float TFLite model goes.")
flags.DEFINE_string("output_model", None, "Optional path of the stripped model (.keras).")
flags.DEFINE_enum("schedule", "polynomial", ["polynomial", "constant"], "Sparsity schedule.")
flags.DEFINE_float("schedule_end_fraction", 0.7, "Polynomial: fraction of steps to reach it.")
flags.DEFINE_integer("epochs", 5, "Training epochs.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_float("lr", 2e-3, "Peak learning rate (Adam, cosine decay to 1% of it).")
flags.DEFINE_integer("bn_steps", 50, "Batches used to re-estimate BatchNorm statistics.")
flags.DEFINE_integer("timing_steps", 100, "Timed steps of the plain model (step-time ratio).")
flags.DEFINE_integer("timing_skip", 10, "Untimed first steps of every timed fit.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_integer("verbose", 2, "Keras fit verbosity.")
flags.mark_flags_as_required(["data", "sparsity", "output_json", "output_tflite"])

CNN_CONFIG: tuple[int | str, ...] = (32, 32, "M", 64, 64, "M", 128)
"""Conv widths of the reference CNN (``tffp.models.fashion_cnn``); "M" is a 2x2 max pool."""

INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10


class StepTimer(StepTimerMixin, tf_keras.callbacks.Callback):
    """Records the seconds of every training step after the first ``skip`` ones."""


def build_cnn() -> tf_keras.Model:
    """The reference Fashion-MNIST CNN in tf_keras (same layers and names as tffp's)."""
    inputs = tf_keras.Input(shape=INPUT_SHAPE, name="input")
    x = inputs
    conv_index = pool_index = 0
    for item in CNN_CONFIG:
        if item == "M":
            pool_index += 1
            x = tf_keras.layers.MaxPooling2D(2, name=f"pool{pool_index}")(x)
            continue
        conv_index += 1
        x = tf_keras.layers.Conv2D(
            int(item), 3, padding="same", kernel_initializer="he_normal", name=f"conv{conv_index}"
        )(x)
        x = tf_keras.layers.BatchNormalization(name=f"bn{conv_index}")(x)
        x = tf_keras.layers.ReLU(name=f"relu{conv_index}")(x)
    x = tf_keras.layers.GlobalAveragePooling2D(name="avgpool")(x)
    outputs = tf_keras.layers.Dense(NUM_CLASSES, name="fc")(x)
    return tf_keras.Model(inputs, outputs, name="fashion_cnn")


def _to_float(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """uint8 [28, 28] image to float32 [28, 28, 1] in [0, 1]; label to int32."""
    return tf.cast(image[..., tf.newaxis], tf.float32) / 255.0, tf.cast(label, tf.int32)


def make_dataset(
    images: np.ndarray, labels: np.ndarray, batch_size: int, shuffle: bool, seed: int
) -> tf.data.Dataset:
    """Batched pipeline as ``tffp.data.fashion_mnist_dataset`` builds it (no augmentation)."""
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    if shuffle:
        dataset = dataset.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.map(_to_float, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def compile_model(model: tf_keras.Model, total_steps: int, lr: float) -> None:
    """Adam with a cosine decay over ``total_steps`` down to 1% of ``lr``."""
    schedule = tf_keras.optimizers.schedules.CosineDecay(lr, max(total_steps, 1), alpha=0.01)
    model.compile(
        optimizer=tf_keras.optimizers.Adam(schedule),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def pruning_schedule(
    kind: str, sparsity: float, total_steps: int, end_fraction: float
) -> tfmot.sparsity.keras.PruningSchedule:
    """A schedule reaching ``sparsity`` within the run (pruning every ~1/10 of the steps)."""
    frequency = max(1, min(100, total_steps // 10))
    if kind == "constant":
        return tfmot.sparsity.keras.ConstantSparsity(sparsity, begin_step=0, frequency=frequency)
    end_step = max(1, int(total_steps * end_fraction))
    return tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0,
        final_sparsity=sparsity,
        begin_step=0,
        end_step=end_step,
        frequency=min(frequency, end_step),
    )


def recalibrate_batchnorm(model: tf_keras.Model, batches: list[tf.Tensor]) -> None:
    """Sets every BN's moving statistics to the average per-batch mean / biased variance.

    The layers run one after the other in training mode (the CNN is a plain
    chain), so each BN sees what it sees in a training step, as
    ``tffp.recalibrate_batchnorm(model, data, steps)`` does.
    """
    layers = model.layers[1:]  # after the InputLayer
    norms = [layer for layer in layers if isinstance(layer, tf_keras.layers.BatchNormalization)]
    sums = {id(layer): [0.0, 0.0] for layer in norms}
    for x in batches:
        for layer in layers:
            if id(layer) in sums:
                mean, variance = tf.nn.moments(x, axes=[0, 1, 2])
                sums[id(layer)][0] += mean.numpy().astype(np.float64)
                sums[id(layer)][1] += variance.numpy().astype(np.float64)
            x = layer(x, training=True)
    for layer in norms:
        mean_sum, var_sum = sums[id(layer)]
        layer.moving_mean.assign((mean_sum / len(batches)).astype(np.float32))
        layer.moving_variance.assign((var_sum / len(batches)).astype(np.float32))


def sparsity_report(model: tf_keras.Model) -> dict[str, Any]:
    """Zero counts of the conv / dense kernels and of all trainable parameters."""
    kernels = [w.numpy() for w in model.trainable_weights if "kernel" in w.name]
    every = [w.numpy() for w in model.trainable_weights]
    kernel_total = sum(k.size for k in kernels)
    kernel_zeros = sum(int(np.sum(k == 0)) for k in kernels)
    total = sum(w.size for w in every)
    zeros = sum(int(np.sum(w == 0)) for w in every)
    return {
        "kernel_sparsity": kernel_zeros / kernel_total,
        "param_sparsity": zeros / total,
        "nonzero_params": total - zeros,
        "trainable_params": total,
        "params": int(model.count_params()),
    }


def to_tflite(model: tf_keras.Model, path: str) -> int:
    """Converts to a float TFLite model with a fixed batch of 1; returns its size."""
    forward = tf.function(lambda x: model(x, training=False))
    concrete = forward.get_concrete_function(tf.TensorSpec((1, *INPUT_SHAPE), tf.float32))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)
    flatbuffer = converter.convert()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(flatbuffer)
    return len(flatbuffer)


def plain_step_time(train: tf.data.Dataset, steps: int, skip: int, lr: float) -> float | None:
    """Mean step time of the unwrapped CNN over ``steps`` steps after ``skip`` warm-up ones."""
    model = build_cnn()
    compile_model(model, steps + skip, lr)
    timer = StepTimer(skip)
    model.fit(train.repeat(), steps_per_epoch=steps + skip, epochs=1, verbose=0, callbacks=[timer])
    return timer.mean()


def train_pruned(train: tf.data.Dataset, steps_per_epoch: int, timer: StepTimer) -> tf_keras.Model:
    """Builds, wraps with ``prune_low_magnitude`` and trains; returns the stripped model."""
    total_steps = FLAGS.epochs * steps_per_epoch
    schedule = pruning_schedule(
        FLAGS.schedule, FLAGS.sparsity, total_steps, FLAGS.schedule_end_fraction
    )
    pruned = tfmot.sparsity.keras.prune_low_magnitude(build_cnn(), pruning_schedule=schedule)
    compile_model(pruned, total_steps, FLAGS.lr)
    callbacks = [tfmot.sparsity.keras.UpdatePruningStep(), timer]
    pruned.fit(train, epochs=FLAGS.epochs, verbose=FLAGS.verbose, callbacks=callbacks)
    return tfmot.sparsity.keras.strip_pruning(pruned)


def evaluate(model: tf_keras.Model, bn_batches: list[tf.Tensor], test: tf.data.Dataset) -> float:
    """Test accuracy after re-estimating the BN statistics on the fixed training batches."""
    recalibrate_batchnorm(model, bn_batches)
    compile_model(model, 1, FLAGS.lr)
    return float(model.evaluate(test, verbose=0, return_dict=True)["accuracy"])


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    if not 0.0 <= FLAGS.sparsity < 1.0:
        raise app.UsageError(f"--sparsity must be in [0, 1), got {FLAGS.sparsity}")
    tf_keras.utils.set_random_seed(FLAGS.seed)
    started = time.time()
    arrays = np.load(FLAGS.data)
    x_train, y_train = arrays["x_train"], arrays["y_train"]
    train = make_dataset(x_train, y_train, FLAGS.batch_size, True, FLAGS.seed)
    bn_data = make_dataset(x_train, y_train, FLAGS.batch_size, False, FLAGS.seed)
    bn_batches = [x for x, _ in bn_data.take(FLAGS.bn_steps)]
    test = make_dataset(arrays["x_test"], arrays["y_test"], 256, False, FLAGS.seed)
    steps_per_epoch = int(train.cardinality())

    timer = StepTimer(FLAGS.timing_skip)
    stripped = train_pruned(train, steps_per_epoch, timer)
    train_seconds = time.time() - started
    accuracy = evaluate(stripped, bn_batches, test)
    tflite_bytes = to_tflite(stripped, FLAGS.output_tflite)
    if FLAGS.output_model:
        Path(FLAGS.output_model).parent.mkdir(parents=True, exist_ok=True)
        stripped.save(FLAGS.output_model)
    wrapped_step = timer.mean()
    plain_step = plain_step_time(train, FLAGS.timing_steps, FLAGS.timing_skip, FLAGS.lr)
    result = {
        "accuracy": accuracy,
        "target_sparsity": FLAGS.sparsity,
        **sparsity_report(stripped),
        "tflite_bytes": tflite_bytes,
        "tflite_path": FLAGS.output_tflite,
        "model_path": FLAGS.output_model,
        "schedule": FLAGS.schedule,
        "steps_per_epoch": steps_per_epoch,
        "step_time_wrapped_s": wrapped_step,
        "step_time_plain_s": plain_step,
        "step_time_ratio": ratio(wrapped_step, plain_step),
        "train_seconds": train_seconds,
        "seconds": time.time() - started,
        "versions": {"tf_keras": tf_keras.__version__, "tfmot": tfmot.__version__},
    }
    Path(FLAGS.output_json).parent.mkdir(parents=True, exist_ok=True)
    Path(FLAGS.output_json).write_text(json.dumps(result, indent=2))
    print(
        f"tfmot baseline: accuracy {accuracy:.4f}, kernel sparsity "
        f"{result['kernel_sparsity']:.3f}, wrote {FLAGS.output_json}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    app.run(main)
