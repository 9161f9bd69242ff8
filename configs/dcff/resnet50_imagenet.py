"""DCFF, ResNet-50 on ImageNet: 75.60% top-1 at 1.52B FLOPs, 63.8% fewer (Lin et al. 2021)."""

from tf_filterprune.cli import config_lib


def get_config():
    config = config_lib.base_config()
    config.paper = (
        "DCFF (Lin et al. 2021), ImageNet table: ResNet-50, 1.52B FLOPs (63.8% fewer), "
        "58.6% fewer params, 75.60% top-1"
    )
    config.note = (
        "keras.applications.ResNet50 from scratch; the 63.8% MACs reduction is allocated by "
        "prune_filters over the block-internal convs (the residual streams stay whole, as the "
        "paper's). The ImageNet recipe is not in the seed text: the published code's usual one, "
        "SGD momentum 0.9, lr 0.1 x0.1 at epochs 30 and 60, 90 epochs, batch 256, weight decay "
        "1e-4. ImageNet (imagenet2012) must be downloaded by hand into --data_dir."
    )
    config.model.name = "keras.applications.ResNet50"
    config.dataset.name = "imagenet2012"
    config.dataset.eval_split = "validation"
    config.method.name = "DCFF"
    config.method.kwargs = {"temperature": {"t_start": 1.0, "t_end": 1e4, "k": 1.0}}
    config.pruning.target_macs_reduction = 0.638
    config.training.epochs = 90
    config.training.lr_milestones = (30, 60)
    config.training.weight_decay = 1e-4
    return config
