"""FCF on the reference Fashion-MNIST CNN at 50% fewer MACs (the benchmark's protocol)."""

from tf_filterprune.cli import config_lib


def get_config():
    return config_lib.fashion_benchmark_config(
        "FCF",
        "fcf (FCF.paced from scratch, rho at rho_max at half the run)",
        factory="paced",
        ramp=0.5,
    )
