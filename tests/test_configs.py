"""The experiment configs of configs/: they load, check, land at the published budgets, and run.

The budgets: the DCFF rate lists map onto our reference models at the published FLOPs,
and DPFPS's allocation reaches the published reduction. The runs: every config trains
for two steps end to end through tffp-train-prune (in this process) on tfds mock data
(random images; no network) or, for Fashion-MNIST, the local IDX files, with the
ImageNet configs at a 32-pixel input.
"""

import json
from pathlib import Path

import pytest
from helpers import fashion_mnist_present

import tf_filterprune as tffp
from tf_filterprune.cli import config_lib

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
ALL_CONFIGS = sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.py"))
PUBLISHED_MACS = {
    "dcff/vgg16_cifar10.py": 72.77e6,
    "dcff/resnet56_cifar10.py": 55.84e6,
    "dcff/resnet110_cifar10.py": 85.30e6,
}


def load(name: str):
    return config_lib.load_config_file(str(CONFIGS / name))


def test_one_config_per_experiment_of_the_papers():
    expected = {
        "dcff/vgg16_cifar10.py", "dcff/resnet56_cifar10.py", "dcff/resnet110_cifar10.py",
        "dcff/resnet50_imagenet.py", "fcf/resnet56_cifar10.py", "dpfps/resnet56_cifar10.py",
        "dpfps/resnet50_imagenet.py", "clustering/vgg16_cifar10.py",
        "clustering/resnet56_cifar10.py", "fashion/dcff.py", "fashion/dpfps.py",
        "fashion/fcf.py", "fashion/clustering.py",
    }  # fmt: skip
    assert set(ALL_CONFIGS) == expected
    assert not list(CONFIGS.rglob("*.json"))  # one format everywhere


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_config_is_complete_and_valid(name):
    config = load(name)
    config_lib.check_config(config)
    assert set(config) == set(config_lib.base_config())  # one structure everywhere
    assert config.paper and config.note
    training = config.training
    assert training.epochs >= 1 and training.batch_size >= 1 and training.lr > 0
    if name.startswith("fashion/"):
        assert (training.optimizer, training.lr, training.schedule) == ("adam", 2e-3, "cosine")
        assert (training.batch_size, training.epochs) == (128, 5)
        assert config.pruning.target_macs_reduction == 0.5
    else:
        assert training.optimizer == "sgd" and training.schedule == "step"


@pytest.mark.parametrize("name", sorted(PUBLISHED_MACS))
def test_dcff_config_lands_near_published_flops(name):
    config = load(name)
    model = getattr(tffp.models, config.model.name)()
    per_layer = tffp.per_layer_from_rates(model, config.pruning.prune_rates)
    wrapped = tffp.prune_filters(model, tffp.DCFF(keep_ratio=1.0), per_layer=per_layer)
    macs = tffp.profile(tffp.strip_filter_pruning(wrapped)).total_macs
    assert abs(macs - PUBLISHED_MACS[name]) <= 0.02 * PUBLISHED_MACS[name], macs


def test_config_lib_wraps_at_the_published_flops():
    config = load("dcff/vgg16_cifar10.py")
    wrapped = config_lib.wrap(config, config_lib.build_model(config))
    macs = tffp.profile(tffp.strip_filter_pruning(wrapped)).total_macs
    assert abs(macs - 72.77e6) <= 0.02 * 72.77e6, macs


def test_rates_length_is_checked():
    with pytest.raises(ValueError, match="13 layers to prune"):
        tffp.per_layer_from_rates(tffp.models.vgg16_cifar(), [0.5] * 3)


def test_resnet_wrappable_layers_are_block_first_convs():
    names = tffp.wrappable_layers(tffp.models.resnet20())
    assert names == [f"block{s}_{b}_conv1" for s in (1, 2, 3) for b in (1, 2, 3)]


def test_dpfps_config_allocates_the_published_reduction():
    config = load("dpfps/resnet56_cifar10.py")
    method = config_lib.build_method(config)
    assert isinstance(method, tffp.DPFPS) and method.lam == 0.01
    model = config_lib.build_model(config)
    wrapped = config_lib.wrap(config, model)
    assert [w.name for w in tffp.methods.base.wrappers_of(wrapped)] == tffp.wrappable_layers(model)
    context = tffp.api.method_contexts(wrapped, with_macs=True)[0]
    macs = context.macs.estimate(method.allocate(context))
    reduction = 1.0 - macs / tffp.profile(model).total_macs
    target = config.pruning.target_macs_reduction
    assert target == 0.5286
    assert target - 0.01 <= reduction <= target + 0.01


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_config_runs_two_steps_end_to_end(tmp_path, name):
    """Each config trains 2 steps of 4 examples, strips and writes its results."""
    import tensorflow_datasets as tfds

    from tf_filterprune.cli import train_prune

    if name.startswith("fashion/") and not fashion_mnist_present():
        pytest.skip("Fashion-MNIST IDX files are not installed")
    config = load(name)
    small = ["--config.image_size=32"] if "imagenet" in name else []
    workdir = tmp_path / "run"
    with tfds.testing.mock_data(num_examples=8):
        result = train_prune.run_in_process(
            [
                f"--config={CONFIGS / name}", f"--workdir={workdir}",
                "--config.training.epochs=1", "--config.steps_per_epoch=2",
                "--config.eval_steps=1", "--config.training.batch_size=4",
                "--config.eval_batch_size=4", "--config.bn_steps=1", "--verbose=0", "--run_eagerly",
                *small,
            ]
        )  # fmt: skip
    for file in ("wrapped.keras", "compact.keras", "result.json", "config.json"):
        assert (workdir / file).is_file(), file
    assert json.loads((workdir / "result.json").read_text()).keys() == result.keys()
    assert result["method"] == config.method.name
    assert 0.0 <= result["accuracy"] <= 1.0
    assert result["macs"]["compact"] < result["macs"]["original"]
    assert result["widths"] and (workdir / "tensorboard").is_dir()
