"""DCFF on the reference Fashion-MNIST CNN at 50% fewer MACs (the benchmark's protocol)."""

from tf_filterprune.cli import config_lib


def get_config():
    return config_lib.fashion_benchmark_config(
        "DCFF",
        "dcff_paced (DCFF.paced: the paper's 300 updates and temperatures spread over the run)",
        factory="paced",
        reference_epochs=300,
    )
