"""Install tf_filterprune: structured filter pruning for Keras 3 on TensorFlow."""

from setuptools import find_packages, setup

setup(
    name="tf_filterprune",
    version="0.1.0",
    description="Structured (filter) pruning for Keras 3 on TensorFlow: DCFF, filter "
    "clustering, CNN-FCF, DPFPS and one-shot criteria, with physical model shrinking.",
    packages=find_packages(include=["tf_filterprune", "tf_filterprune.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.16,<2.22",
        "keras>=3.4,<4",
        "tensorflow-model-optimization>=0.8",
        "tensorflow-datasets>=4.9",
        "absl-py",
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
            "tf-keras",
            "ruff",
        ],
        "bench": ["ai-edge-litert", "tf-keras", "matplotlib"],
    },
)
