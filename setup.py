"""Install tf_filterprune: structured filter pruning for Keras 3 on TensorFlow."""

from setuptools import find_packages, setup

setup(
    name="tf_filterprune",
    version="0.1.0",
    description="Structured (filter) pruning for Keras 3 on TensorFlow: DCFF, filter "
    "clustering, CNN-FCF, DPFPS and one-shot criteria, with physical model shrinking.",
    packages=find_packages(include=["tf_filterprune", "tf_filterprune.*"]),
    python_requires=">=3.10",
    entry_points={
        # tools/<name>.py runs the same tools from a clone
        "console_scripts": [
            "tffp-strip = tf_filterprune.cli.strip:run",
            "tffp-export = tf_filterprune.cli.export:run",
            "tffp-evaluate = tf_filterprune.cli.evaluate:run",
            "tffp-profile = tf_filterprune.cli.profile:run",
            "tffp-benchmark = tf_filterprune.cli.benchmark:run",
            "tffp-train-prune = tf_filterprune.cli.train_prune:run",
        ],
    },
    install_requires=[
        "tensorflow>=2.16,<2.22",
        "keras>=3.4,<4",
        "tensorflow-model-optimization>=0.8",
        "tensorflow-datasets>=4.9",
        "absl-py",
        # the experiment configs of configs/ and tffp-train-prune's --config flag
        "ml_collections",
        "numpy",
        "tensorboard",
    ],
    extras_require={
        # ai-edge-litert runs and inspects TFLite models (tf_filterprune.export's
        # predict_tflite, measure_latency, tflite_ops...); conversion needs only TF.
        "export": ["ai-edge-litert"],
        "test": [
            "pytest",
            "pytest-xdist",
            "hypothesis",
            "ai-edge-litert",
            # keras_hub's image backbones in the coverage tests (needs Python >= 3.11)
            "keras-hub>=0.32; python_version>='3.11'",
            "tf-keras",
            "ruff",
        ],
        "bench": ["ai-edge-litert", "tf-keras", "matplotlib"],
        # Torch-Pruning, measured next to us by tools/peers.py. Install into a separate
        # venv (bash tools/setup_peers.sh), not into .venv beside TensorFlow.
        "peers": [
            "torch==2.14.1; platform_machine=='x86_64'",
            "torchvision==0.29.1; platform_machine=='x86_64'",
            "torch==2.9.1; platform_machine=='aarch64'",
            "torchvision==0.24.1; platform_machine=='aarch64'",
            "torch-pruning>=1.6",
            "numpy",
            "absl-py",
        ],
    },
)
