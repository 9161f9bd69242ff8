"""CNN-FCF, ResNet-56 on CIFAR-10: 93.14% -> 93.38% top-1 at 42.8% fewer FLOPs (Li et al. 2019)."""

from tf_filterprune.cli import config_lib


def get_config():
    config = config_lib.base_config()
    config.paper = (
        "CNN-FCF (Li et al. 2019), CIFAR-10 table: ResNet-56, 93.14% -> 93.38% top-1 at 42.8% "
        "fewer FLOPs"
    )
    config.note = (
        "The FCF stage of ALGORITHMS.md section 2: plain SGD (no momentum, no weight decay), 30 "
        "epochs, lr 0.1 x0.1 at 10 and 20, ADMM alpha 0.99, rho 0.01 x1.01 up to 6; block-"
        "internal convs, the 42.8% MACs reduction allocated by prune_filters. The paper starts "
        "from a pretrained ResNet-56 (set init_weights to its .keras; None: from scratch) and "
        "fine-tunes the stripped model 150 epochs at lr 0.01 afterwards, which this tool does "
        "not run (train compact.keras further with model.fit)."
    )
    config.model.name = "resnet56"
    config.dataset.name = "cifar10"
    config.method.name = "FCF"
    config.method.kwargs = {"alpha": 0.99, "rho": 0.01, "mu": 1.01, "rho_max": 6.0}
    config.pruning.target_macs_reduction = 0.428
    config.training.epochs = 30
    config.training.lr_milestones = (10, 20)
    config.training.momentum = 0.0
    config.training.weight_decay = 0.0
    return config
