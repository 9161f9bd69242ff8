"""Input pipelines over tensorflow-datasets with the usual papers' augmentation.

* ``cifar10`` / ``cifar100``: per-channel mean/std normalization; training
  adds a 4-pixel zero padding, a random 32x32 crop and a random flip.
* ``mnist`` / ``fashion_mnist``: scaled to [0, 1], no augmentation.
* ``imagenet2012`` and any other dataset with ``image`` and ``label``
  features: training uses an Inception-style random resized crop (area
  0.08-1, aspect 3/4-4/3) and a random flip; evaluation resizes the shorter
  side to 256 and takes the central 224 crop (both scaled with
  ``image_size``); ImageNet mean/std normalization.

tensorflow_datasets is imported lazily, so importing this module is cheap.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import tensorflow as tf

from tf_filterprune.data.augment import (
    pad_crop_flip,
    random_resized_crop,
    resize_shorter_center_crop,
    with_example_seeds,
)

CIFAR10_MEAN_STD = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
"""Per-channel RGB mean and std of the CIFAR-10 training images (in [0, 1])."""

CIFAR100_MEAN_STD = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
"""Per-channel RGB mean and std of the CIFAR-100 training images (in [0, 1])."""

IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
"""Per-channel RGB mean and std of the ImageNet training images (in [0, 1])."""

CIFAR_DATASETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": CIFAR10_MEAN_STD,
    "cifar100": CIFAR100_MEAN_STD,
}
GRAYSCALE_DATASETS = frozenset({"mnist", "fashion_mnist"})

_Preprocess = Callable[[tf.Tensor, tf.Tensor | None], tf.Tensor]
"""Maps a decoded uint8 image and a stateless seed (None in eval) to a float image."""


def tfds_pipeline(
    name: str,
    split: str,
    batch_size: int,
    *,
    train: bool,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    shuffle_buffer: int = 10000,
    image_size: int | None = None,
) -> tf.data.Dataset:
    """A batched, prefetching pipeline over a tensorflow-datasets image dataset.

    The dataset is prepared (downloaded) by tfds if needed, like ``tfds.load``.
    With ``train``, input files and examples are shuffled and augmented (see
    the module docstring); otherwise the order and the preprocessing are
    deterministic. Images are decoded after shuffling, so the shuffle buffer
    holds encoded images.

    Args:
        name: a tfds name such as ``"cifar10"``, ``"imagenet2012"`` or
            ``"fashion_mnist:3.*.*"``; the part before ``:`` and ``/`` selects
            the preprocessing.
        split: a tfds split such as ``"train"`` or ``"validation[:10%]"``.
        batch_size: examples per batch (the last batch may be smaller).
        train: shuffle and augment (training) or not (evaluation).
        data_dir: tfds data folder (tfds's default when None).
        seed: seed of the file and example shuffling and of the augmentation.
        shuffle_buffer: examples in the shuffle buffer (training only).
        image_size: output side; defaults to 32 for CIFAR, 28 for (Fashion-)
            MNIST and 224 otherwise.

    Returns:
        A dataset of ``(images, labels)``: float32 ``[B, S, S, C]`` and int32
        ``[B]`` (C is 1 for (Fashion-)MNIST, else 3).

    Raises:
        ValueError: ``name`` is not a tfds dataset, or has no ``image`` and
            ``label`` features.

    Example:
        >>> import tensorflow_datasets as tfds
        >>> with tfds.testing.mock_data(num_examples=4):
        ...     ds = tfds_pipeline("cifar10", "test", 2, train=False)
        ...     images, labels = next(iter(ds))
        >>> images.shape, labels.dtype
        (TensorShape([2, 32, 32, 3]), tf.int32)
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    builder = _builder(name, data_dir)
    decode = _image_decoder(builder.info.features)
    preprocess = _preprocessor(_base_name(name), train, image_size)
    dataset = _examples(builder, split, train, seed, decode is not None)
    if train and shuffle_buffer > 1:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

    def prepare(example: tuple[tf.Tensor, tf.Tensor], example_seed: tf.Tensor | None):
        image, label = example
        if decode is not None:
            image = decode(image)
        return preprocess(image, example_seed), tf.cast(label, tf.int32)

    if train:
        dataset = with_example_seeds(dataset, seed).map(
            prepare, num_parallel_calls=tf.data.AUTOTUNE
        )
    else:
        dataset = dataset.map(
            lambda image, label: prepare((image, label), None),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _base_name(name: str) -> str:
    """``"cifar10:3.0.2"`` or ``"imagenet2012/subset"`` -> ``"cifar10"`` / ``"imagenet2012"``."""
    return name.split(":")[0].split("/")[0].strip().lower()


def _builder(name: str, data_dir: str | os.PathLike | None):
    """The tfds builder of ``name``, prepared; a clear ValueError for unknown names."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=os.fspath(data_dir) if data_dir else None)
    except tfds.core.registered.DatasetNotFoundError as err:
        raise ValueError(
            f"tfds_pipeline: tensorflow-datasets has no dataset {name!r} (see "
            "tfds.list_builders() for the names; CIFAR and ImageNet are 'cifar10', "
            f"'cifar100' and 'imagenet2012'). tfds said: {str(err).splitlines()[0]}"
        ) from err
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise ValueError(
            f"tfds_pipeline: dataset {name!r} has no 'image' and 'label' features "
            f"(it has {sorted(features.keys())})"
        )
    builder.download_and_prepare()
    return builder


def _image_decoder(features) -> Callable[[tf.Tensor], tf.Tensor] | None:
    """Decodes an encoded tfds ``Image`` feature; None for other image features."""
    import tensorflow_datasets as tfds

    image_feature = features["image"]
    if not isinstance(image_feature, tfds.features.Image):
        return None
    channels = image_feature.shape[-1] or 0

    def decode(encoded: tf.Tensor) -> tf.Tensor:
        return tf.io.decode_image(encoded, channels=channels, expand_animations=False)

    return decode


def _examples(builder, split: str, train: bool, seed: int, skip_decoding: bool) -> tf.data.Dataset:
    """``(image, label)`` pairs of ``split``; images still encoded when ``skip_decoding``."""
    import tensorflow_datasets as tfds

    decoders = {"image": tfds.decode.SkipDecoding()} if skip_decoding else None
    dataset = builder.as_dataset(
        split=split,
        shuffle_files=train,
        decoders=decoders,
        read_config=tfds.ReadConfig(shuffle_seed=seed),
    )
    return dataset.map(lambda ex: (ex["image"], ex["label"]))


def _preprocessor(base_name: str, train: bool, image_size: int | None) -> _Preprocess:
    """The per-example preprocessing of a dataset family."""
    if base_name in CIFAR_DATASETS:
        mean, std = CIFAR_DATASETS[base_name]
        return _cifar_preprocessor(train, image_size or 32, mean, std)
    if base_name in GRAYSCALE_DATASETS:
        return _grayscale_preprocessor(image_size or 28)
    return _imagenet_preprocessor(train, image_size or 224, *IMAGENET_MEAN_STD)


def _cifar_preprocessor(
    train: bool, size: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> _Preprocess:
    """CIFAR: (train) pad 4, random crop, random flip; scale; normalize."""

    def preprocess(image: tf.Tensor, seed: tf.Tensor | None) -> tf.Tensor:
        if train:
            image = pad_crop_flip(image, seed, pad=4)
        image = tf.cast(image, tf.float32) / 255.0
        image = _resize_if_needed(image, size)
        return _normalize(image, mean, std)

    return preprocess


def _grayscale_preprocessor(size: int) -> _Preprocess:
    """(Fashion-)MNIST: scale to [0, 1], no augmentation."""

    def preprocess(image: tf.Tensor, seed: tf.Tensor | None) -> tf.Tensor:
        del seed
        return _resize_if_needed(tf.cast(image, tf.float32) / 255.0, size)

    return preprocess


def _imagenet_preprocessor(
    train: bool, size: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> _Preprocess:
    """ImageNet: (train) random resized crop + flip, (eval) resize + center crop; normalize."""
    resize_to = int(round(size * 256 / 224))

    def preprocess(image: tf.Tensor, seed: tf.Tensor | None) -> tf.Tensor:
        image = _to_rgb(image)
        if train:
            crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
            image = random_resized_crop(image, crop_seed, size)
            image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        else:
            image = resize_shorter_center_crop(image, resize_to, size)
        return _normalize(image / 255.0, mean, std)

    return preprocess


def _to_rgb(image: tf.Tensor) -> tf.Tensor:
    """Grayscale to RGB, RGBA to RGB; RGB unchanged."""
    channels = image.shape[-1]
    if channels == 1:
        return tf.image.grayscale_to_rgb(image)
    if channels == 4:
        return image[..., :3]
    return image


def _resize_if_needed(image: tf.Tensor, size: int) -> tf.Tensor:
    """Bilinear resize to ``size`` x ``size`` unless the static size already matches."""
    if tuple(image.shape[:2]) == (size, size):
        return image
    return tf.image.resize(image, [size, size], method="bilinear", antialias=True)


def _normalize(image: tf.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> tf.Tensor:
    """``(image - mean) / std`` per channel, float32."""
    return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)
