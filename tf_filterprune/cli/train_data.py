"""The input pipelines of ``tffp-train-prune``: epoch ``e``'s batches depend on ``e`` alone.

A run that resumes at epoch ``k`` must see the batches the uninterrupted run saw
from epoch ``k`` on. A ``tf.data`` shuffle with ``reshuffle_each_iteration`` reorders
by the number of passes made over that dataset object, which a new process starts
again from zero; here the training stream is the concatenation of one pipeline per
epoch, ``epoch(first_epoch) + ... + epoch(epochs - 1)``, where ``epoch(e)`` shuffles
and augments with the seed :func:`epoch_seed` ``(seed, e)`` only (tf.data takes
shuffle seeds as Python ints, not tensors: hence one pipeline per epoch) and holds
exactly ``steps_per_epoch`` batches (``model.fit`` with ``steps_per_epoch`` keeps
one iterator over the whole stream).

The preprocessing is ``tffp.data``'s: the local Fashion-MNIST IDX files scaled to
[0, 1]; tfds datasets through the per-family preprocessing of
``tffp.data.tfds_pipeline`` (CIFAR pad-crop-flip, ImageNet random resized crop), and
the evaluation pipelines are ``tffp.data``'s own, unshuffled.

Example:

>>> ds = epoch_stream(lambda e: tf.data.Dataset.range(10 * e, 10 * e + 5).batch(2), 1, 4, steps=2)
>>> [b.numpy().tolist() for b in ds]
[[10, 11], [12, 13], [20, 21], [22, 23], [30, 31], [32, 33]]
"""

from __future__ import annotations

import os
from collections.abc import Callable

import ml_collections
import numpy as np
import tensorflow as tf

from tf_filterprune.cli.common import CliError
from tf_filterprune.cli.config_lib import LOCAL_FASHION_MNIST, dataset_info, steps_of
from tf_filterprune.data import fashion_mnist, tfds_pipelines


def epoch_stream(
    make_epoch: Callable[[int], tf.data.Dataset], first_epoch: int, epochs: int, steps: int
) -> tf.data.Dataset:
    """The batches of epochs ``first_epoch .. epochs - 1``, ``steps`` of each, in order.

    One pipeline per epoch, concatenated as a balanced tree (depth log2 of the epochs);
    ``concatenate`` starts an epoch's pipeline only when the previous one is exhausted,
    so one epoch's shuffle buffer is filled at a time.
    """
    parts = [make_epoch(e).take(steps) for e in range(first_epoch, epochs)]
    if not parts:
        raise ValueError(f"no epochs to train: first_epoch {first_epoch} >= epochs {epochs}")
    while len(parts) > 1:
        paired = [a.concatenate(b) for a, b in zip(parts[::2], parts[1::2], strict=False)]
        parts = paired + ([parts[-1]] if len(parts) % 2 else [])
    return parts[0].prefetch(2)


def epoch_seed(seed: int, epoch: int) -> int:
    """The data seed of ``epoch`` of a run seeded ``seed`` (shuffling and augmentation)."""
    return (int(seed) * 1_000_003 + int(epoch)) % (2**31 - 1)


def _dataset_error(name: str, error: BaseException) -> CliError:
    text = str(error).strip().splitlines()
    reason = text[0] if text else type(error).__name__
    return CliError(f"--config.dataset.name {name}: cannot read it: {reason}")


def training_stream(
    config: ml_collections.ConfigDict, data_dir: str | None, first_epoch: int
) -> tuple[tf.data.Dataset, int]:
    """The training batches from ``first_epoch`` on, and the steps per epoch."""
    name, batch_size = config.dataset.name, int(config.training.batch_size)
    seed, epochs = int(config.seed), int(config.training.epochs)
    if name == LOCAL_FASHION_MNIST:
        try:
            images, labels = fashion_mnist.load_fashion_mnist(config.dataset.train_split, data_dir)
        except (FileNotFoundError, OSError, ValueError) as error:
            raise _dataset_error(name, error) from error
        steps = steps_of(len(labels), batch_size, config.steps_per_epoch)
        base = tf.data.Dataset.from_tensor_slices((images[..., np.newaxis], labels))

        def make_epoch(epoch: int) -> tf.data.Dataset:
            shuffled = base.shuffle(len(labels), seed=epoch_seed(seed, epoch))
            return shuffled.batch(batch_size).map(fashion_mnist._to_float)

        return epoch_stream(make_epoch, first_epoch, epochs, steps), steps

    _tfds_builder(name, data_dir)
    split = config.dataset.train_split

    def make_epoch(epoch: int) -> tf.data.Dataset:
        return tfds_pipelines.tfds_pipeline(
            name,
            split,
            batch_size,
            train=True,
            data_dir=data_dir,
            seed=epoch_seed(seed, epoch),
            shuffle_buffer=int(config.dataset.shuffle_buffer),
            image_size=dataset_info(config).image_size,
        )

    try:
        batches = int(make_epoch(first_epoch).cardinality())
    except (AssertionError, ValueError, KeyError) as error:  # e.g. an unknown split
        raise _dataset_error(name, error) from error
    if batches == 0:
        raise CliError(f"--config.dataset.train_split {split} of {name} has no examples")
    if batches < 0:  # unknown: count the batches once (cheap next to an epoch of training)
        batches = config.steps_per_epoch or sum(1 for _ in make_epoch(first_epoch))
    steps = min(batches, config.steps_per_epoch or batches)
    return epoch_stream(make_epoch, first_epoch, epochs, steps), steps


def _tfds_builder(name: str, data_dir: str | None):
    """The prepared tfds builder; :class:`CliError` on one line when tfds cannot give it."""
    try:
        return tfds_pipelines._builder(name, data_dir)
    except (AssertionError, ValueError, OSError, KeyError, ImportError) as error:
        raise _missing_manual_dataset(name, data_dir) or _dataset_error(name, error) from error
    except Exception as error:  # tfds' download errors have no common base class
        if type(error).__module__.startswith("tensorflow_datasets"):
            raise _missing_manual_dataset(name, data_dir) or _dataset_error(name, error) from error
        raise


def _missing_manual_dataset(name: str, data_dir: str | None) -> CliError | None:
    """The error of a dataset tfds cannot download (ImageNet) and that is not prepared."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception:  # noqa: BLE001  (the caller reports the original error)
        return None
    if not getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None) or builder.is_prepared():
        return None
    manual = os.path.join(data_dir or tfds.core.constants.DATA_DIR, "downloads", "manual")
    return CliError(
        f"--config.dataset.name {name}: not prepared in --data_dir "
        f"{data_dir or tfds.core.constants.DATA_DIR}, and tensorflow-datasets cannot download "
        f"it: put its archives into {manual} (see the tfds catalog page of {name})"
    )


def eval_dataset(
    config: ml_collections.ConfigDict,
    data_dir: str | None,
    split: str | None = None,
    limit: bool = True,
) -> tf.data.Dataset:
    """Unshuffled, unaugmented batches of ``split`` (default: the evaluation split).

    With ``limit``, only the first ``config.eval_steps`` batches (when set).
    """
    name, batch_size = config.dataset.name, int(config.eval_batch_size)
    split = split or config.dataset.eval_split
    if name == LOCAL_FASHION_MNIST:
        try:
            dataset = fashion_mnist.fashion_mnist_dataset(
                split, batch_size, shuffle=False, data_dir=data_dir
            )
        except (FileNotFoundError, OSError, ValueError) as error:
            raise _dataset_error(name, error) from error
    else:
        _tfds_builder(name, data_dir)
        try:
            dataset = tfds_pipelines.tfds_pipeline(
                name,
                split,
                batch_size,
                train=False,
                data_dir=os.fspath(data_dir) if data_dir else None,
                image_size=dataset_info(config).image_size,
            )
        except (AssertionError, ValueError, KeyError) as error:
            raise _dataset_error(name, error) from error
    if limit and config.eval_steps:
        dataset = dataset.take(int(config.eval_steps))
    return dataset
