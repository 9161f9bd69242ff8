"""Filter clustering with feature diversity, ResNet-56 on CIFAR-10 (TCSVT 2023)."""

from tf_filterprune.cli import config_lib


def get_config():
    config = config_lib.base_config()
    config.paper = (
        "Filter clustering with feature diversity (TCSVT 2023), CIFAR-10 experiments: ResNet-56; "
        "the paper claims 1%-15% more computation removed than previous methods at equal accuracy"
    )
    config.note = (
        "No public code and no per-layer widths in the seed text: the widths are DCFF's "
        "published ones (its rate list), so the two compare at equal FLOPs, and the recipe is "
        "the seeds' CIFAR one (SGD 0.9, lr 0.1 x0.1 at 150/225, 300 epochs, batch 256, wd "
        "5e-4), from scratch with 10 warm-up epochs before the first clustering, re-clustering "
        "every epoch, the anti-blocking branch on, the clusters frozen and merged over the last "
        "20% of the run (ALGORITHMS.md section 4)."
    )
    config.model.name = "resnet56"
    config.dataset.name = "cifar10"
    config.method.name = "FilterClustering"
    config.method.kwargs = {
        "period_epochs": 1,
        "pull": 0.1,
        "anti_blocking": True,
        "merge_fraction": 0.2,
        "warmup_epochs": 10,
    }
    config.pruning.prune_rates = (0.56,) * 27
    return config
