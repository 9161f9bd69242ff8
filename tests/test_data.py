"""Fashion-MNIST IDX loading and the tf.data / tensorflow-datasets pipelines.

The tfds tests run offline on ``tfds.testing.mock_data`` with
``MockPolicy.USE_CODE``: the builders' code gives the features and random
examples are generated from them, so nothing is downloaded.
"""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tf_filterprune.data import (
    CIFAR10_MEAN_STD,
    IMAGENET_MEAN_STD,
    fashion_mnist_dataset,
    load_fashion_mnist,
    parse_idx,
    read_idx,
    tfds_pipeline,
)
from tf_filterprune.data import fashion_mnist as fashion_module

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
IDX_CODES = {np.dtype("uint8"): 0x08, np.dtype("int32"): 0x0C, np.dtype("float32"): 0x0D}


def write_idx(path: str, array: np.ndarray) -> None:
    """Writes ``array`` as a gzipped IDX file (independent of the reader)."""
    header = bytes([0, 0, IDX_CODES[array.dtype], array.ndim])
    header += struct.pack(f">{array.ndim}I", *array.shape)
    payload = array.astype(array.dtype.newbyteorder(">")).tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + payload)


def write_fashion_split(folder, split: str, n: int, seed: int = 0):
    """Writes a tiny split of random images and labels; returns the arrays."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    image_file, label_file = fashion_module.FASHION_MNIST_FILES[split]
    write_idx(os.path.join(folder, image_file), images)
    write_idx(os.path.join(folder, label_file), labels)
    return images, labels


@pytest.fixture
def no_default_data(monkeypatch, tmp_path):
    """Hides the Debian folder and $FASHION_MNIST_DIR from the search."""
    monkeypatch.delenv(fashion_module.FASHION_MNIST_ENV, raising=False)
    monkeypatch.setattr(fashion_module, "DEFAULT_FASHION_MNIST_DIR", str(tmp_path / "absent"))


@pytest.fixture
def tiny_fashion(tmp_path, no_default_data):
    """A folder with a 40-example train and a 20-example test split."""
    folder = tmp_path / "fashion"
    folder.mkdir()
    train = write_fashion_split(folder, "train", 40, seed=1)
    test = write_fashion_split(folder, "test", 20, seed=2)
    return folder, train, test


def mock_tfds(num_examples: int = 8):
    return tfds.testing.mock_data(
        num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE
    )


def collect(dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """One pass over a batched dataset as (images, labels) arrays."""
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in dataset], strict=True)
    return np.concatenate(images), np.concatenate(labels)


def normalization_bounds(mean_std) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel values of black and white pixels after normalization."""
    mean, std = (np.array(v, np.float32) for v in mean_std)
    return (0 - mean) / std, (1 - mean) / std


# IDX parsing


@pytest.mark.parametrize("dtype", ["uint8", "int32", "float32"])
def test_idx_round_trip(tmp_path, dtype):
    array = (np.arange(24).reshape(2, 3, 4) * 3 + 1).astype(dtype)
    path = str(tmp_path / "a-idx3-ubyte.gz")
    write_idx(path, array)
    result = read_idx(path)
    assert result.dtype == np.dtype(dtype) and result.dtype.isnative
    np.testing.assert_array_equal(result, array)
    result[0, 0, 0] = 1  # writable


def test_idx_uncompressed(tmp_path):
    path = tmp_path / "plain-idx1-ubyte"
    path.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 3]))
    assert read_idx(str(path)).tolist() == [1, 2, 3]


def test_idx_bad_magic(tmp_path):
    path = str(tmp_path / "bad-idx1-ubyte.gz")
    with gzip.open(path, "wb") as f:
        f.write(b"\x1f\x8b\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="bad magic number"):
        read_idx(path)


def test_idx_truncated_payload_and_header():
    with pytest.raises(ValueError, match="announces shape"):
        parse_idx(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))
    with pytest.raises(ValueError, match="truncated IDX header"):
        parse_idx(bytes([0, 0, 8, 3, 0, 0]))


def test_idx_corrupt_gzip(tmp_path):
    path = tmp_path / "corrupt-idx1-ubyte.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="cannot read"):
        read_idx(str(path))


# load_fashion_mnist


def test_load_from_data_dir(tiny_fashion):
    folder, (train_x, train_y), (test_x, test_y) = tiny_fashion
    images, labels = load_fashion_mnist("train", data_dir=folder)
    np.testing.assert_array_equal(images, train_x)
    np.testing.assert_array_equal(labels, train_y)
    images, labels = load_fashion_mnist("test", data_dir=str(folder))
    assert images.shape == (20, 28, 28) and labels.dtype == np.uint8
    np.testing.assert_array_equal(images, test_x)


def test_load_from_environment(tiny_fashion, monkeypatch, tmp_path):
    folder, (train_x, _), _ = tiny_fashion
    monkeypatch.setenv("FASHION_MNIST_DIR", str(folder))
    np.testing.assert_array_equal(load_fashion_mnist("train")[0], train_x)
    # data_dir comes first; a folder without the files is skipped.
    other = tmp_path / "other"
    other.mkdir()
    other_x, _ = write_fashion_split(other, "train", 10, seed=9)
    np.testing.assert_array_equal(load_fashion_mnist("train", data_dir=other)[0], other_x)
    empty = tmp_path / "empty"
    empty.mkdir()
    np.testing.assert_array_equal(load_fashion_mnist("train", data_dir=empty)[0], train_x)


def test_missing_files_say_how_to_install(tmp_path, no_default_data):
    with pytest.raises(FileNotFoundError) as info:
        load_fashion_mnist("test", data_dir=tmp_path / "nowhere")
    message = str(info.value)
    assert "apt-get install -y dataset-fashion-mnist" in message
    assert "FASHION_MNIST_DIR" in message and "t10k-images-idx3-ubyte.gz" in message


def test_bad_split(tiny_fashion):
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation", data_dir=tiny_fashion[0])


def test_wrong_image_shape_is_rejected(tmp_path, no_default_data):
    write_idx(str(tmp_path / "t10k-images-idx3-ubyte.gz"), np.zeros((2, 27, 27), np.uint8))
    write_idx(str(tmp_path / "t10k-labels-idx1-ubyte.gz"), np.zeros(2, np.uint8))
    with pytest.raises(ValueError, match=r"uint8 \[N, 28, 28\]"):
        load_fashion_mnist("test", data_dir=tmp_path)


def test_label_count_mismatch_is_rejected(tmp_path, no_default_data):
    write_idx(str(tmp_path / "t10k-images-idx3-ubyte.gz"), np.zeros((2, 28, 28), np.uint8))
    write_idx(str(tmp_path / "t10k-labels-idx1-ubyte.gz"), np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        load_fashion_mnist("test", data_dir=tmp_path)


@pytest.mark.skipif(
    not os.path.isfile(os.path.join(DEBIAN_DIR, "t10k-labels-idx1-ubyte.gz")),
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_real_debian_files(monkeypatch):
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    for split, n in (("train", 60000), ("test", 10000)):
        images, labels = load_fashion_mnist(split)
        assert images.shape == (n, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (n,) and labels.dtype == np.uint8
        np.testing.assert_array_equal(np.bincount(labels, minlength=10), [n // 10] * 10)
        assert images.max() == 255
    ds = fashion_mnist_dataset("test", 256, shuffle=False, limit=1000)
    assert int(ds.cardinality()) == 4
    x, y = next(iter(ds))
    assert x.shape == (256, 28, 28, 1) and y.dtype == tf.int32


# fashion_mnist_dataset


def test_fashion_dataset_shapes_and_range(tiny_fashion):
    folder, (_, train_y), _ = tiny_fashion
    ds = fashion_mnist_dataset("train", 16, data_dir=folder)
    assert int(ds.cardinality()) == 3
    x, y = next(iter(ds))
    assert x.shape == (16, 28, 28, 1) and x.dtype == tf.float32
    assert y.shape == (16,) and y.dtype == tf.int32
    images, labels = collect(ds)
    assert images.shape == (40, 28, 28, 1)
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert sorted(labels.tolist()) == sorted(train_y.tolist())
    assert labels.tolist() != train_y.tolist()  # shuffled by default for train


def test_fashion_dataset_test_split_is_ordered_and_exact(tiny_fashion):
    folder, _, (test_x, test_y) = tiny_fashion
    images, labels = collect(fashion_mnist_dataset("test", 8, data_dir=folder))
    np.testing.assert_array_equal(labels, test_y)
    np.testing.assert_allclose(images[..., 0], test_x / 255.0, atol=1e-7)


def test_fashion_dataset_limit_and_no_shuffle(tiny_fashion):
    folder, (train_x, train_y), _ = tiny_fashion
    ds = fashion_mnist_dataset("train", 4, shuffle=False, limit=10, data_dir=folder)
    images, labels = collect(ds)
    np.testing.assert_array_equal(labels, train_y[:10])
    np.testing.assert_allclose(images[..., 0], train_x[:10] / 255.0, atol=1e-7)


@pytest.mark.parametrize("augment", [False, True])
def test_fashion_dataset_runs_without_the_autotuner(tiny_fashion, augment):
    """tf.data's autotuner can stall the end of model.fit; these pipelines turn it off."""
    folder, _, _ = tiny_fashion
    ds = fashion_mnist_dataset("train", 4, augment=augment, limit=8, data_dir=folder)
    assert ds.options().autotune.enabled is False
    assert [tuple(x.shape) for x, _ in ds] == [(4, 28, 28, 1)] * 2


def test_fashion_dataset_augmentation(tiny_fashion):
    folder, (train_x, _), _ = tiny_fashion
    ds = fashion_mnist_dataset("train", 40, shuffle=False, augment=True, seed=3, data_dir=folder)
    first, _ = collect(ds)
    second, _ = collect(ds)
    assert first.shape == (40, 28, 28, 1) and first.dtype == np.float32
    assert not np.array_equal(first, second)  # new augmentation every epoch
    again, _ = collect(
        fashion_mnist_dataset("train", 40, shuffle=False, augment=True, seed=3, data_dir=folder)
    )
    np.testing.assert_array_equal(first, again)  # reproducible from the seed
    # Every output is a flip and/or shift by at most 2 pixels of its input.
    original = train_x / np.float32(255.0)
    for out, src in zip(first[..., 0], original, strict=True):
        assert any(
            np.array_equal(out, _shifted(candidate, dy, dx))
            for candidate in (src, src[:, ::-1])
            for dy in range(-2, 3)
            for dx in range(-2, 3)
        )


def _shifted(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``image`` moved by (dy, dx) with zeros coming in."""
    padded = np.pad(image, 2)
    return padded[2 + dy : 30 + dy, 2 + dx : 30 + dx]


def test_fashion_dataset_bad_arguments(tiny_fashion):
    with pytest.raises(ValueError, match="batch_size"):
        fashion_mnist_dataset("train", 0, data_dir=tiny_fashion[0])
    with pytest.raises(ValueError, match="limit"):
        fashion_mnist_dataset("train", 4, limit=0, data_dir=tiny_fashion[0])


# tensorflow-datasets pipelines (offline, mocked)


def test_cifar10_eval_is_normalized_and_deterministic():
    with mock_tfds():
        raw = tfds.load("cifar10", split="test")
        raw_images = np.stack([ex["image"].numpy() for ex in raw])
        raw_labels = np.array([int(ex["label"]) for ex in raw])
        ds = tfds_pipeline("cifar10", "test", 4, train=False)
        images, labels = collect(ds)
        again, _ = collect(ds)
    assert images.shape == (8, 32, 32, 3) and images.dtype == np.float32
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, raw_labels)
    mean, std = (np.array(v, np.float32) for v in CIFAR10_MEAN_STD)
    np.testing.assert_allclose(images, (raw_images / 255.0 - mean) / std, atol=1e-5)
    np.testing.assert_array_equal(images, again)


def test_cifar10_train_augmentation_is_random_and_reproducible():
    low, high = normalization_bounds(CIFAR10_MEAN_STD)
    with mock_tfds():
        ds = tfds_pipeline("cifar10", "train", 4, train=True, seed=1)
        first, first_labels = collect(ds)
        second, _ = collect(ds)
        again, again_labels = collect(tfds_pipeline("cifar10", "train", 4, train=True, seed=1))
    assert first.shape == (8, 32, 32, 3) and first.dtype == np.float32
    assert first_labels.dtype == np.int32
    assert np.all(first >= low - 1e-5) and np.all(first <= high + 1e-5)
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first_labels, again_labels)


def test_imagenet_eval_center_crop_is_deterministic():
    low, high = normalization_bounds(IMAGENET_MEAN_STD)
    with mock_tfds():
        ds = tfds_pipeline("imagenet2012", "validation", 4, train=False)
        images, labels = collect(ds)
        again, _ = collect(ds)
    assert images.shape == (8, 224, 224, 3) and images.dtype == np.float32
    assert labels.dtype == np.int32 and labels.min() >= 0 and labels.max() < 1000
    assert np.all(images >= low - 1e-4) and np.all(images <= high + 1e-4)
    np.testing.assert_array_equal(images, again)


def test_imagenet_train_random_resized_crop():
    low, high = normalization_bounds(IMAGENET_MEAN_STD)
    with mock_tfds():
        ds = tfds_pipeline("imagenet2012", "train", 4, train=True, shuffle_buffer=1)
        first, first_labels = collect(ds)
        second, second_labels = collect(ds)
    assert first.shape == (8, 224, 224, 3) and first.dtype == np.float32
    assert first_labels.dtype == np.int32
    assert np.all(first >= low - 1e-4) and np.all(first <= high + 1e-4)
    np.testing.assert_array_equal(first_labels, second_labels)  # no shuffling: same order
    assert not np.array_equal(first, second)


def test_imagenet_style_image_size():
    with mock_tfds(num_examples=2):
        for train in (True, False):
            ds = tfds_pipeline("imagenet2012", "train", 2, train=train, image_size=64)
            assert next(iter(ds))[0].shape == (2, 64, 64, 3)


def test_fashion_mnist_via_tfds():
    with mock_tfds(num_examples=4):
        images, labels = collect(tfds_pipeline("fashion_mnist", "train", 2, train=True))
    assert images.shape == (4, 28, 28, 1) and images.dtype == np.float32
    assert labels.dtype == np.int32
    assert 0.0 <= images.min() and images.max() <= 1.0


def test_unknown_tfds_name():
    with mock_tfds(), pytest.raises(ValueError, match="no dataset 'no_such_dataset_xyz'"):
        tfds_pipeline("no_such_dataset_xyz", "train", 4, train=False)


def test_tfds_dataset_without_image_label():
    with mock_tfds(), pytest.raises(ValueError, match="no 'image' and 'label' features"):
        tfds_pipeline("imdb_reviews", "train", 4, train=False)
