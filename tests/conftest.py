"""Shared test setup: quiet TensorFlow, deterministic seeds, a two-replica strategy.

The two logical CPU devices are configured in the repository's root conftest.py."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

TWO_DEVICES = ["/cpu:0", "/cpu:1"]


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
    yield
    keras.backend.clear_session()


@pytest.fixture(scope="session")
def two_replicas():
    """A MirroredStrategy over two logical CPU devices, one per test process.

    Several MirroredStrategy objects in one process reuse collective instance keys
    ("Shape mismatch in the collective instance"), so the tests share one, and it
    reduces through one device rather than with collective ops.
    """
    if len(tf.config.list_logical_devices("CPU")) < 2:
        pytest.skip(
            "needs two logical CPU devices (configured in the root conftest.py before TF starts)"
        )
    return tf.distribute.MirroredStrategy(
        TWO_DEVICES, cross_device_ops=tf.distribute.ReductionToOneDevice()
    )
