"""``import tf_filterprune`` needs only the install requirements; LiteRT is the `export` extra.

Each check runs in a fresh interpreter in which ``ai_edge_litert`` cannot be
imported (a ``sys.meta_path`` finder refuses it), as in a venv without the extra.
"""

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BLOCK_LITERT = """
import importlib.abc, sys

class _NoLiteRT(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "ai_edge_litert" or name.startswith("ai_edge_litert."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoLiteRT())
for name in [m for m in sys.modules if m.split(".")[0] == "ai_edge_litert"]:
    del sys.modules[name]
"""


def run_without_litert(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", BLOCK_LITERT + textwrap.dedent(code)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_import_and_export_helpers_without_litert():
    result = run_without_litert(
        """
        import sys
        import keras, numpy as np
        import tf_filterprune as tffp
        from tf_filterprune import export

        assert "ai_edge_litert" not in sys.modules
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        flat = export.to_tflite(model)  # conversion needs TensorFlow only
        assert tffp.models.fashion_cnn() is not None
        calls = {
            "tflite_ops": lambda: export.tflite_ops(flat),
            "tflite_op_counts": lambda: export.tflite_op_counts(flat),
            "predict_tflite": lambda: export.predict_tflite(flat, np.zeros((1, 4), "float32")),
            "evaluate_tflite": lambda: export.evaluate_tflite(flat, [(np.zeros((1, 4)), [0])]),
            "measure_latency": lambda: export.measure_latency(flat, repeats=1),
            "compare_latency": lambda: export.compare_latency({"m": flat}, rounds=1),
        }
        for name, call in calls.items():
            try:
                call()
            except ImportError as err:
                assert "tf_filterprune[export]" in str(err), (name, str(err))
            else:
                raise AssertionError(f"{name} ran without ai_edge_litert")
        print("OK")
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("OK")


def test_setup_declares_the_export_extra():
    tree = ast.parse((ROOT / "setup.py").read_text())
    (call,) = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup"
    ]
    kwargs = {
        k.arg: ast.literal_eval(k.value)
        for k in call.keywords
        if k.arg in ("extras_require", "install_requires")
    }
    extras = kwargs["extras_require"]
    assert extras["export"] == ["ai-edge-litert"]
    assert all("ai-edge-litert" in extras[name] for name in ("test", "bench"))
    assert not any("litert" in req for req in kwargs["install_requires"])
