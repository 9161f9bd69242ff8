"""FilterClustering on the reference Fashion-MNIST CNN at 50% fewer MACs (the benchmark's protocol)."""

from tf_filterprune.cli import config_lib


def get_config():
    return config_lib.fashion_benchmark_config(
        "FilterClustering", "clustering (FilterClustering over the run's epochs)"
    )
