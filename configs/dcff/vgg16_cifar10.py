"""DCFF, VGG-16 on CIFAR-10: 93.47% top-1 at 72.77M FLOPs, 1.06M params (Lin et al. 2021)."""

from tf_filterprune.cli import config_lib


def get_config():
    config = config_lib.base_config()
    config.paper = (
        "DCFF (Lin et al. 2021), CIFAR-10 table: VGG-16, 72.77M FLOPs, 1.06M params, 93.47% top-1"
    )
    config.note = (
        "The paper's per-conv rates and its CIFAR recipe (ALGORITHMS.md section 1): SGD momentum "
        "0.9, lr 0.1 x0.1 at epochs 150 and 225, 300 epochs, batch 256, weight decay 5e-4, "
        "trained from scratch; temperature 1 -> 1e4 (k = 1)."
    )
    config.model.name = "vgg16_cifar"
    config.dataset.name = "cifar10"
    config.method.name = "DCFF"
    config.method.kwargs = {"temperature": {"t_start": 1.0, "t_end": 1e4, "k": 1.0}}
    config.pruning.prune_rates = (0.5,) * 2 + (0.4,) * 2 + (0.35,) * 3 + (0.85,) * 6
    return config
