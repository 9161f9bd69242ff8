"""DPFPS, ResNet-50 on ImageNet: 76.15% -> 75.55% top-1 at 46.20% fewer FLOPs (Ruan et al. 2021)."""

from tf_filterprune.cli import config_lib


def get_config():
    config = config_lib.base_config()
    config.paper = (
        "DPFPS (Ruan et al. 2021), ImageNet table: ResNet-50, 76.15% -> 75.55% top-1 at 46.20% "
        "fewer FLOPs, trained from scratch"
    )
    config.note = (
        "keras.applications.ResNet50, block-internal convs only. The ImageNet recipe is not in "
        "the seed text: SGD momentum 0.9, lr 0.1 x0.1 at epochs 30 and 60, 90 epochs, batch "
        "256, weight decay 1e-4, E1 = 30 (the first milestone); lambda 0.01. ImageNet "
        "(imagenet2012) must be downloaded by hand into --data_dir."
    )
    config.model.name = "keras.applications.ResNet50"
    config.dataset.name = "imagenet2012"
    config.dataset.eval_split = "validation"
    config.method.name = "DPFPS"
    config.method.kwargs = {"lam": 0.01, "norm_threshold": 0.01, "first_milestone": 30}
    config.pruning.target_macs_reduction = 0.462
    config.pruning.prune_residual = False
    config.training.epochs = 90
    config.training.lr_milestones = (30, 60)
    config.training.weight_decay = 1e-4
    return config
