r"""Training-time filter pruning under ``MultiWorkerMirroredStrategy``: train, checkpoint, strip.

Run on every worker of a cluster with ``TF_CONFIG`` set (the same command on each;
worker 0 is the chief), or let the tool start ``--local_workers`` workers on
127.0.0.1 itself. Each worker builds a small CNN in the strategy's scope, wraps it
for each ``--methods`` (``tffp.prune_filters``), trains it with the custom loop
:func:`train_loop` (below) and ``tffp.callbacks.UpdateFilterPruning`` on a synthetic
dataset sharded by the strategy (``--epochs``, ``--steps_per_epoch``), with
``tf.train.CheckpointManager`` checkpoints every epoch in ``--workdir/<method>/ckpt``
(a killed run resumes there), then strips
the wrapped model and checks the compact model against it. Every worker writes
``--workdir/<method>/worker<i>.json`` (widths, the strip's max difference, a
checksum of the compact weights, so the workers can be compared); the chief also
saves ``compact.keras``.

Keras 3's ``model.fit`` fails under ``MultiWorkerMirroredStrategy``
(keras-team/keras#20585, open), so :func:`train_loop` is the usual custom loop
(``strategy.run`` of a tape step) that calls the callbacks as ``fit`` does; the
methods need nothing else. The workers agree on every trainable variable and on
the method state; BatchNormalization's moving statistics follow each worker's own
batches (Keras's default, ``synchronized=False``), so the workers' compact models
differ there, and the chief's is the one saved.

Usage:

    # two local workers (what tests/test_multi_worker.py runs)
    .venv/bin/python tools/multi_worker.py --local_workers 2 --workdir /tmp/mw

    # a real cluster: on each machine i, with the same worker list
    export TF_CONFIG='{"cluster": {"worker": ["host0:12345", "host1:12345"]},
                       "task": {"type": "worker", "index": i}}'
    .venv/bin/python tools/multi_worker.py --workdir /shared/mw --methods dcff,fcf
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("methods", ["dcff", "fcf", "dpfps", "clustering"], "Methods to train.")
flags.DEFINE_string("workdir", None, "Checkpoints and results (shared by the workers).")
flags.DEFINE_integer("local_workers", 0, "Start this many workers on 127.0.0.1 (0: use TF_CONFIG).")
flags.DEFINE_integer("epochs", 2, "Epochs per method.")
flags.DEFINE_integer("steps_per_epoch", 4, "Steps per epoch.")
flags.DEFINE_integer("global_batch_size", 16, "Batch size over all workers.")
flags.DEFINE_integer(
    "kill_after_epoch", 0, "Testing: every worker exits (code 3) after saving this epoch."
)
flags.DEFINE_integer("timeout", 600, "--local_workers: seconds before the workers are killed.")

METHODS = ("dcff", "fcf", "dpfps", "clustering")


def make_method(name: str, epochs: int):
    """The method ``name`` at half the filters, paced for ``epochs`` where it has a pace."""
    import tf_filterprune as tffp

    if name == "dcff":
        return tffp.DCFF(keep_ratio=0.5, updates_per_epoch=2)
    if name == "fcf":
        return tffp.FCF.paced(epochs, keep_ratio=0.5)
    if name == "dpfps":
        return tffp.DPFPS(0.5, lam=10.0)
    if name == "clustering":
        return tffp.FilterClustering(keep_ratio=0.5)
    raise app.UsageError(f"--methods: unknown method {name!r}; choose from {', '.join(METHODS)}")


def small_cnn():
    import keras
    from keras import layers as L

    inputs = keras.Input((12, 12, 3))
    x = inputs
    for i, filters in enumerate((8, 16, 16), start=1):
        x = L.Conv2D(filters, 3, padding="same", name=f"conv{i}")(x)
        x = L.BatchNormalization(name=f"bn{i}")(x)
        x = L.ReLU(name=f"relu{i}")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, L.Dense(4, name="head")(x), name="small_cnn")


def dataset(global_batch_size: int):
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 12, 12, 3)).astype("float32")
    y = rng.integers(0, 4, size=(256,)).astype("int32")
    return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(global_batch_size)


def train_loop(
    strategy, model, data, epochs: int, steps_per_epoch: int, callbacks, initial_epoch: int = 0
) -> list:
    """``model.fit`` for ``MultiWorkerMirroredStrategy``: a step per batch, the callbacks by hand.

    Keras 3's ``fit`` fails under this strategy (keras-team/keras#20585: the
    symbolic build and the loss reduction both reduce per-replica values with
    ``axis=0``), so the step is the usual ``strategy.run`` of a tape step, and
    the callbacks (the method's ``UpdateFilterPruning`` among them) get the same
    calls ``fit`` makes. Returns the mean loss of each epoch.
    """
    import keras
    import tensorflow as tf

    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    global_batch = FLAGS.global_batch_size

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            per_example = loss_fn(y, model(x, training=True))
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses or [0.0]))
        grads = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    @tf.function
    def step(iterator):
        loss = strategy.run(replica_step, args=next(iterator))
        return strategy.reduce("SUM", loss, axis=None)

    callback_list = keras.callbacks.CallbackList(
        callbacks, model=model, epochs=epochs, steps=steps_per_epoch, verbose=0
    )
    iterator = iter(strategy.experimental_distribute_dataset(data))
    callback_list.on_train_begin()
    losses = []
    for epoch in range(initial_epoch, epochs):
        callback_list.on_epoch_begin(epoch)
        total = 0.0
        for batch in range(steps_per_epoch):
            callback_list.on_train_batch_begin(batch)
            loss = float(step(iterator))
            total += loss
            callback_list.on_train_batch_end(batch, {"loss": loss})
        losses.append(total / steps_per_epoch)
        callback_list.on_epoch_end(epoch, {"loss": losses[-1]})
    callback_list.on_train_end()
    return losses


def checkpointed(model, out: Path, task_index: int):
    """``(save, epoch)``: a collective checkpoint save and the epochs done (restored).

    Every worker must save (the save is collective); only the chief's copy
    (``out/ckpt``) is kept, the others write to a scratch folder and delete it, as
    TensorFlow's multi-worker recipe does. Every worker restores the chief's latest
    checkpoint (the folder is on a shared file system in a real cluster).
    """
    import shutil

    import tensorflow as tf

    epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, epoch=epoch)
    latest = tf.train.latest_checkpoint(str(out / "ckpt"))
    if latest:
        checkpoint.restore(latest)
    folder = out / "ckpt" if task_index == 0 else out / f"scratch_worker{task_index}"
    manager = tf.train.CheckpointManager(checkpoint, str(folder), max_to_keep=1)

    def save() -> None:
        manager.save()
        if task_index != 0:
            shutil.rmtree(folder, ignore_errors=True)

    return save, epoch


def train_one(strategy, name: str, workdir: Path, task_index: int) -> dict:
    """Trains, checkpoints and strips one method on this worker; returns its record."""
    import hashlib

    import keras
    import numpy as np

    import tf_filterprune as tffp

    keras.utils.set_random_seed(0)
    with strategy.scope():
        wrapped = tffp.prune_filters(small_cnn(), make_method(name, FLAGS.epochs))
        wrapped.optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
        wrapped.optimizer.build(wrapped.trainable_variables)
    out = workdir / name
    out.mkdir(parents=True, exist_ok=True)
    save, done_epochs = checkpointed(wrapped, out, task_index)
    start = time.perf_counter()
    first_epoch = int(done_epochs.numpy())

    class SaveEachEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            done_epochs.assign(epoch + 1)
            save()
            if epoch + 1 == FLAGS.kill_after_epoch:
                os._exit(3)  # as if killed right after the checkpoint

    losses = train_loop(
        strategy,
        wrapped,
        dataset(FLAGS.global_batch_size).skip(first_epoch * FLAGS.steps_per_epoch),
        FLAGS.epochs,
        FLAGS.steps_per_epoch,
        [tffp.callbacks.UpdateFilterPruning(), SaveEachEpoch()],
        initial_epoch=first_epoch,
    )
    x = next(iter(dataset(8)))[0].numpy()
    compact, diff = tffp.strip_filter_pruning(wrapped, verify_data=x)
    digest = hashlib.sha256()
    for weight in compact.trainable_weights:
        digest.update(np.round(weight.numpy(), 4).tobytes())
    record = {
        "method": name,
        "worker": task_index,
        "replicas": strategy.num_replicas_in_sync,
        "widths": [layer.filters for layer in compact.layers if hasattr(layer, "filters")],
        "strip_max_abs_diff": float(diff),
        "loss": losses,
        "trainable_weights_sha256": digest.hexdigest(),
        "moving_mean_sum": float(
            sum(np.sum(v.numpy()) for v in compact.non_trainable_weights if "moving_mean" in v.path)
        ),
        "resumed_at_epoch": first_epoch,
        "seconds": round(time.perf_counter() - start, 1),
    }
    if task_index == 0:
        compact.save(out / "compact.keras")
    (out / f"worker{task_index}.json").write_text(json.dumps(record, indent=1))
    return record


def run_worker(workdir: Path) -> None:
    import tensorflow as tf

    task_index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    for name in FLAGS.methods:
        record = train_one(strategy, name, workdir, task_index)
        print(f"worker {task_index}: {name}: {json.dumps(record)}", flush=True)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def launch_local(count: int, argv: list[str]) -> int:
    """Starts ``count`` workers of this tool on 127.0.0.1 and waits for them all."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(count)]}
    procs = []
    for index in range(count):
        env = dict(os.environ)
        env["TF_CONFIG"] = json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}
        )
        env["CUDA_VISIBLE_DEVICES"] = ""
        args = [sys.executable, __file__, *[a for a in argv if not a.startswith("--local_workers")]]
        procs.append(subprocess.Popen([*args, "--local_workers=0"], env=env))
    deadline = time.monotonic() + FLAGS.timeout
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            print(
                f"multi_worker: error: workers still running after {FLAGS.timeout} s",
                file=sys.stderr,
            )
            return 1
    if any(codes):
        print(f"multi_worker: error: worker exit codes {codes}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required")
    unknown = [m for m in FLAGS.methods if m not in METHODS]
    if unknown:
        raise app.UsageError(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    if FLAGS.local_workers:
        return launch_local(FLAGS.local_workers, sys.argv[1:])
    if "TF_CONFIG" not in os.environ:
        raise app.UsageError("set TF_CONFIG on every worker, or pass --local_workers N")
    run_worker(Path(FLAGS.workdir))
    return 0


if __name__ == "__main__":
    app.run(main)
