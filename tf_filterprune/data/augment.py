"""Reproducible per-example image augmentation for tf.data pipelines.

Every example gets its own stateless seed from ``tf.data.Dataset.random``
(re-randomized on each iteration), so augmentations differ between examples
and epochs yet are reproducible from the pipeline's ``seed``.
"""

from __future__ import annotations

import tensorflow as tf


def with_example_seeds(dataset: tf.data.Dataset, seed: int) -> tf.data.Dataset:
    """Zips ``dataset`` with a fresh int64 ``[2]`` stateless seed per element.

    Elements become ``(element, seed)``; the seeds change on every iteration
    over the dataset and are reproducible from ``seed``.

    Example:
        >>> ds = with_example_seeds(tf.data.Dataset.range(3), seed=0)
        >>> [tuple(s.shape) for _, s in ds]
        [(2,), (2,), (2,)]
    """
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip((dataset, seeds))


def pad_crop_flip(image: tf.Tensor, seed: tf.Tensor, pad: int) -> tf.Tensor:
    """Zero-pads ``pad`` pixels per side, random-crops back, random horizontal flip.

    Args:
        image: an ``[H, W, C]`` image with a static shape.
        seed: an int ``[2]`` stateless seed.
        pad: padding on each side before the crop.

    Returns:
        The augmented image, same shape and dtype as ``image``.

    Example:
        >>> x = tf.zeros([28, 28, 1])
        >>> pad_crop_flip(x, tf.constant([1, 2]), pad=2).shape
        TensorShape([28, 28, 1])
    """
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    cropped = tf.image.stateless_random_crop(padded, tf.shape(image), seed=crop_seed)
    flipped = tf.image.stateless_random_flip_left_right(cropped, seed=flip_seed)
    return tf.ensure_shape(flipped, image.shape)


def random_resized_crop(
    image: tf.Tensor,
    seed: tf.Tensor,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tf.Tensor:
    """Inception-style random crop (area ``scale``, aspect ``ratio``) resized to ``size``.

    The crop box comes from ``tf.image.stateless_sample_distorted_bounding_box``
    over the whole image; after 10 failed attempts the whole image is used.

    Args:
        image: an ``[H, W, C]`` image (any dtype, dynamic size allowed).
        seed: an int ``[2]`` stateless seed.
        size: output height and width.
        scale: range of the crop area as a fraction of the image area.
        ratio: range of the crop's width / height.

    Returns:
        A float32 ``[size, size, C]`` image in the input's value range.

    Example:
        >>> x = tf.zeros([40, 60, 3], tf.uint8)
        >>> random_resized_crop(x, tf.constant([0, 1]), size=24).shape
        TensorShape([24, 24, 3])
    """
    begin, box_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=ratio,
        area_range=scale,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, box_size)
    return tf.image.resize(crop, [size, size], method="bilinear", antialias=True)


def resize_shorter_center_crop(image: tf.Tensor, resize_to: int, size: int) -> tf.Tensor:
    """Resizes so the shorter side is ``resize_to``, then takes the central ``size`` crop.

    Args:
        image: an ``[H, W, C]`` image (any dtype, dynamic size allowed).
        resize_to: length of the shorter side after resizing (>= ``size``).
        size: output height and width.

    Returns:
        A float32 ``[size, size, C]`` image in the input's value range.

    Example:
        >>> x = tf.zeros([300, 400, 3], tf.uint8)
        >>> resize_shorter_center_crop(x, 256, 224).shape
        TensorShape([224, 224, 3])
    """
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    factor = resize_to / tf.reduce_min(hw)
    new_hw = tf.maximum(tf.cast(tf.round(hw * factor), tf.int32), size)
    resized = tf.image.resize(image, new_hw, method="bilinear", antialias=True)
    top = (new_hw[0] - size) // 2
    left = (new_hw[1] - size) // 2
    crop = resized[top : top + size, left : left + size, :]
    return tf.ensure_shape(crop, [size, size, image.shape[-1]])
