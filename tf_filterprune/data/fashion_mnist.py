"""Fashion-MNIST from local gzipped IDX files (Debian's ``dataset-fashion-mnist``).

No network access is needed: the files are looked up in ``data_dir``, then
``$FASHION_MNIST_DIR``, then :data:`DEFAULT_FASHION_MNIST_DIR`.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from tf_filterprune.data.augment import pad_crop_flip, with_example_seeds
from tf_filterprune.data.idx import read_idx

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
"""Where Debian's ``dataset-fashion-mnist`` package installs the IDX files."""

FASHION_MNIST_ENV = "FASHION_MNIST_DIR"
"""Environment variable naming a folder with the four IDX files."""

FASHION_MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
"""Image and label file names of each split."""

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
"""Class names, indexed by label."""


def load_fashion_mnist(
    split: str = "train", data_dir: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Loads a Fashion-MNIST split from gzipped IDX files.

    The files are searched in ``data_dir``, then the folder named by the
    ``FASHION_MNIST_DIR`` environment variable, then
    ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``);
    the first folder holding both files of the split is used.

    Args:
        split: ``"train"`` (60000 examples) or ``"test"`` (10000).
        data_dir: an optional folder holding the IDX files.

    Returns:
        ``(images, labels)``: uint8 ``[N, 28, 28]`` and uint8 ``[N]`` in 0..9.

    Raises:
        ValueError: unknown ``split``, or files that are not valid
            Fashion-MNIST IDX files.
        FileNotFoundError: no searched folder holds the files; the message
            says how to install them.

    Example:
        >>> images, labels = load_fashion_mnist("test")
        >>> images.shape, labels.shape
        ((10000, 28, 28), (10000,))
    """
    image_file, label_file = _split_files(split)
    folder = _find_folder(split, data_dir)
    images = read_idx(os.path.join(folder, image_file))
    labels = read_idx(os.path.join(folder, label_file))
    _validate(images, labels, folder)
    return images, labels


def fashion_mnist_dataset(
    split: str = "train",
    batch_size: int = 128,
    *,
    shuffle: bool | None = None,
    augment: bool = False,
    seed: int = 0,
    limit: int | None = None,
    data_dir: str | os.PathLike | None = None,
) -> tf.data.Dataset:
    """A batched, prefetching ``tf.data`` pipeline over Fashion-MNIST.

    Args:
        split: ``"train"`` or ``"test"``.
        batch_size: examples per batch (the last batch may be smaller).
        shuffle: reshuffle every epoch; defaults to True for ``"train"``.
        augment: random horizontal flip and a random 28x28 crop of the image
            zero-padded by 2 pixels per side.
        seed: seed of the shuffling and the augmentation.
        limit: keep only the first ``limit`` examples (quick tests and demos).
        data_dir: folder with the IDX files (see :func:`load_fashion_mnist`).

    Returns:
        A dataset of ``(images, labels)``: float32 ``[B, 28, 28, 1]`` in [0, 1]
        and int32 ``[B]``.

    Example:
        >>> ds = fashion_mnist_dataset("test", 32, limit=64)
        >>> [tuple(x.shape) for x, _ in ds]
        [(32, 28, 28, 1), (32, 28, 28, 1)]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be positive or None, got {limit}")
    images, labels = load_fashion_mnist(split, data_dir)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    dataset = tf.data.Dataset.from_tensor_slices((images[..., np.newaxis], labels))
    if _should_shuffle(split, shuffle):
        dataset = dataset.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    if augment:
        dataset = with_example_seeds(dataset, seed).map(
            _augment_example, num_parallel_calls=os.cpu_count() or 1
        )
        dataset = dataset.batch(batch_size)
    else:  # batch first, then convert whole batches: one map call per batch, not per image
        dataset = dataset.batch(batch_size).map(_to_float)
    return _without_autotune(dataset.prefetch(PREFETCH_BATCHES))


PREFETCH_BATCHES = 2
"""Batches prepared ahead of training by :func:`fashion_mnist_dataset`."""


def _without_autotune(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Turns tf.data's autotuner off for a small in-memory pipeline.

    Its background thread can hold up the end of each ``model.fit`` for seconds
    (measured here: half the one-epoch fits of the Fashion-MNIST CNN took 7-18 s
    longer, all of it after ``on_train_end``); this pipeline is cheap enough not
    to need tuning.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def _should_shuffle(split: str, shuffle: bool | None) -> bool:
    """``shuffle`` if given, else True for the training split."""
    return split == "train" if shuffle is None else bool(shuffle)


def _to_float(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """uint8 image to float32 in [0, 1]; label to int32."""
    return tf.cast(image, tf.float32) / 255.0, tf.cast(label, tf.int32)


def _augment_example(
    example: tuple[tf.Tensor, tf.Tensor], seed: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Scales the image to [0, 1], then flips and pad-2 crops it at random."""
    image, label = _to_float(*example)
    return pad_crop_flip(image, seed, pad=2), label


def _split_files(split: str) -> tuple[str, str]:
    """The (images, labels) file names of ``split``; ValueError when unknown."""
    if split not in FASHION_MNIST_FILES:
        raise ValueError(
            f"Unknown Fashion-MNIST split {split!r}; expected one of {sorted(FASHION_MNIST_FILES)}"
        )
    return FASHION_MNIST_FILES[split]


def _candidate_folders(data_dir: str | os.PathLike | None) -> list[str]:
    """Folders to search, in order: ``data_dir``, ``$FASHION_MNIST_DIR``, the default."""
    folders = [data_dir, os.environ.get(FASHION_MNIST_ENV), DEFAULT_FASHION_MNIST_DIR]
    return [os.fspath(f) for f in folders if f]


def _find_folder(split: str, data_dir: str | os.PathLike | None) -> str:
    """The first candidate folder holding both files of ``split``."""
    names = FASHION_MNIST_FILES[split]
    searched = _candidate_folders(data_dir)
    for folder in searched:
        if all(os.path.isfile(os.path.join(folder, name)) for name in names):
            return folder
    all_files = ", ".join(name for pair in FASHION_MNIST_FILES.values() for name in pair)
    raise FileNotFoundError(
        f"Fashion-MNIST {split!r} files ({', '.join(names)}) not found; searched: "
        f"{', '.join(searched)}. Install them with "
        "`apt-get update && apt-get install -y dataset-fashion-mnist` (Debian/Ubuntu, as "
        f"root; installs to {DEFAULT_FASHION_MNIST_DIR}), or set {FASHION_MNIST_ENV} to a "
        f"folder holding the four IDX files: {all_files}."
    )


def _validate(images: np.ndarray, labels: np.ndarray, folder: str) -> None:
    """Checks shapes, dtypes and label range of a loaded split."""
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(
            f"{folder}: Fashion-MNIST images must be uint8 [N, 28, 28], got "
            f"{images.dtype} {list(images.shape)}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(
            f"{folder}: Fashion-MNIST labels must be uint8 [N], got "
            f"{labels.dtype} {list(labels.shape)}"
        )
    if len(images) != len(labels):
        raise ValueError(f"{folder}: {len(images)} images but {len(labels)} labels")
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise ValueError(f"{folder}: label {labels.max()} out of range 0..9")
