"""``import tf_filterprune`` needs only the install requirements; LiteRT is the `export` extra.

Each check runs in a fresh interpreter in which ``ai_edge_litert`` cannot be
imported (a ``sys.meta_path`` finder refuses it), as in a venv without the extra.
:func:`test_every_submodule_imports_without_any_extra` refuses every module that
only an extra provides (read from setup.py), plus tfmot and tensorflow_datasets.
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


#: Import names of the distributions that setup.py lists only as extras.
EXTRA_MODULES = {
    "keras-hub": "keras_hub",
    "ai-edge-litert": "ai_edge_litert",
    "tf-keras": "tf_keras",
    "matplotlib": "matplotlib",
    "hypothesis": "hypothesis",
    "pytest": "pytest",
    "pytest-xdist": "xdist",
    "ruff": "ruff",
    "torch": "torch",
    "torchvision": "torchvision",
    "torch-pruning": "torch_pruning",
}
#: Install requirements that ``import tf_filterprune`` must still not import:
#: tfmot switches the process to the legacy tf_keras; tfds is imported lazily.
NEVER_IMPORTED = ("tensorflow_model_optimization", "tf_keras", "tensorflow_datasets")


def _setup_kwargs() -> dict:
    tree = ast.parse((ROOT / "setup.py").read_text())
    (call,) = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup"
    ]
    return {
        k.arg: ast.literal_eval(k.value)
        for k in call.keywords
        if k.arg in ("extras_require", "install_requires")
    }


def _distribution_name(requirement: str) -> str:
    """``"torch==2.9.1; platform_machine=='x86_64'"`` -> ``"torch"``."""
    for stop in ";=<>!~[ ":
        requirement = requirement.split(stop)[0]
    return requirement.strip().lower()


def _extra_only_modules() -> set[str]:
    kwargs = _setup_kwargs()
    required = {_distribution_name(r) for r in kwargs["install_requires"]}
    extras = {_distribution_name(r) for reqs in kwargs["extras_require"].values() for r in reqs}
    extra_only = extras - required
    unknown = extra_only - set(EXTRA_MODULES)
    assert not unknown, f"name the import module of the new extra(s) {unknown} in EXTRA_MODULES"
    return {EXTRA_MODULES[name] for name in extra_only}


def test_every_submodule_imports_without_any_extra():
    blocked = sorted(_extra_only_modules() | set(NEVER_IMPORTED))
    code = textwrap.dedent(
        f"""
        import importlib, importlib.abc, pkgutil, sys

        BLOCKED = {blocked!r}
        attempts = []

        class _Refuse(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    attempts.append(name)
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None

        sys.meta_path.insert(0, _Refuse())
        import tf_filterprune

        for info in pkgutil.walk_packages(tf_filterprune.__path__, "tf_filterprune."):
            importlib.import_module(info.name)
        tried = sorted({{a.split(".")[0] for a in attempts}} & set({NEVER_IMPORTED!r}))
        assert not tried, f"import tf_filterprune tried to import {{tried}}"
        print("OK")
        """
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("OK")


def test_export_error_names_the_real_extra():
    from tf_filterprune import export

    assert "export" in _setup_kwargs()["extras_require"]
    assert "tf_filterprune[export]" in export.EXPORT_EXTRA


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
