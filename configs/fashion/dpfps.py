"""DPFPS on the reference Fashion-MNIST CNN at 50% fewer MACs (the benchmark's protocol)."""

from tf_filterprune.cli import config_lib


def get_config():
    return config_lib.fashion_benchmark_config(
        "DPFPS",
        "dpfps (lam 30: tau = lr * lam * p must outpace Adam's steps at lr 2e-3 for the groups to reach zero in 5 epochs)",
        lam=30.0,
    )
