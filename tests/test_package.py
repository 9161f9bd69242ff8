"""The package imports cleanly: Keras 3 stays Keras 3, tfmot is never imported."""

import subprocess
import sys

CHECK = """
import sys
import tf_filterprune as tffp
import tensorflow as tf
assert "tensorflow_model_optimization" not in sys.modules, "tfmot was imported"
assert "tf_keras" not in sys.modules, "legacy tf_keras was imported"
assert "tensorflow_datasets" not in sys.modules, "tfds should load lazily"
assert tf.keras.__version__.startswith("3."), tf.keras.__version__
for name in ("prune_once", "prune_channels", "profile", "recalibrate_batchnorm", "build_graph"):
    assert callable(getattr(tffp, name)), name
assert callable(tffp.export.to_tflite) and callable(tffp.models.resnet56)
print("ok")
"""


def test_import_keeps_keras3_and_never_imports_tfmot():
    out = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")
