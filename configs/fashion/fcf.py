"""FCF on the reference Fashion-MNIST CNN at 50% fewer MACs (the benchmark's protocol)."""

from tf_filterprune.cli import config_lib


def get_config():
    config = config_lib.base_config()
    config.paper = "tools/benchmark.py protocol (ALGORITHMS.md, How we compare): not a paper table"
    config.note = (
        "The benchmark's row fcf (FCF.paced from scratch, rho at rho_max at half the run): tffp.models.fashion_cnn() from scratch, 50% fewer MACs, "
        "round_to 16 and conv1 kept whole (the headline setting), Adam lr 2e-3 with a cosine "
        "decay to 1%, batch 128, 5 epochs, no weight decay; the compact model's BN statistics "
        "re-estimated on 50 training batches before the evaluation on the test split."
    )
    config.model.name = "fashion_cnn"
    config.dataset.name = "fashion_mnist"
    config.method.name = "FCF"
    config.method.factory = "paced"
    config.method.kwargs = {"ramp": 0.5}
    config.pruning.target_macs_reduction = 0.5
    config.pruning.round_to = 16
    config.pruning.ignored_layers = ("conv1",)
    config.training.epochs = 5
    config.training.batch_size = 128
    config.training.optimizer = "adam"
    config.training.lr = 2e-3
    config.training.schedule = "cosine"
    config.training.lr_final_fraction = 0.01
    config.training.momentum = 0.0
    config.training.weight_decay = 0.0
    config.training.weight_decay_style = "keras"
    config.bn_steps = 50
    return config
