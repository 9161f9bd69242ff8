"""DPFPS, ResNet-56 on CIFAR-10: 93.81% -> 93.20% top-1 at 52.86% fewer FLOPs (Ruan et al. 2021)."""

from tf_filterprune.cli import config_lib


def get_config():
    config = config_lib.base_config()
    config.paper = (
        "DPFPS (Ruan et al. 2021), CIFAR-10 table: ResNet-56, 93.81% -> 93.20% top-1 at 52.86% "
        "fewer FLOPs, trained from scratch"
    )
    config.note = (
        "Block-internal convs only (the first conv of each of the 27 blocks; block outputs are "
        "tied by the residual Adds), as the paper does. The seed text gives no training "
        "schedule: this is the usual CIFAR recipe of the seeds (the DCFF config's), with the "
        "first milestone as the progressive factor's E1; lambda 0.01 as published."
    )
    config.model.name = "resnet56"
    config.dataset.name = "cifar10"
    config.method.name = "DPFPS"
    config.method.kwargs = {"lam": 0.01, "norm_threshold": 0.01, "first_milestone": 150}
    config.pruning.target_macs_reduction = 0.5286
    config.pruning.prune_residual = False
    return config
