"""Loaded by pytest before anything else: two logical CPU devices for MirroredStrategy tests.

Logical devices must be configured before TensorFlow initializes its devices (its
first op), so this runs at import time, before the tests and doctests import anything.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402

try:
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )
except RuntimeError:  # already initialized: the two-replica tests skip with a reason
    pass
