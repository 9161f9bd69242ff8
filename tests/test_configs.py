"""The paper configs: rate lists map onto our reference models at the published FLOPs."""

import json
from pathlib import Path

import pytest

import tf_filterprune as tffp

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
PUBLISHED_MACS = {"dcff/vgg16_cifar10.json": 72.77e6, "dcff/resnet56_cifar10.json": 55.84e6}


@pytest.mark.parametrize("name", sorted(PUBLISHED_MACS))
def test_dcff_config_lands_near_published_flops(name):
    config = json.loads((CONFIGS / name).read_text())
    model = getattr(tffp.models, config["model"])()
    per_layer = tffp.per_layer_from_rates(model, config["prune_rates"])
    wrapped = tffp.prune_filters(model, tffp.DCFF(keep_ratio=1.0), per_layer=per_layer)
    macs = tffp.profile(tffp.strip_filter_pruning(wrapped)).total_macs
    assert abs(macs - PUBLISHED_MACS[name]) <= 0.02 * PUBLISHED_MACS[name], macs


def test_rates_length_is_checked():
    with pytest.raises(ValueError, match="13 layers to prune"):
        tffp.per_layer_from_rates(tffp.models.vgg16_cifar(), [0.5] * 3)


def test_resnet_wrappable_layers_are_block_first_convs():
    names = tffp.wrappable_layers(tffp.models.resnet20())
    assert names == [f"block{s}_{b}_conv1" for s in (1, 2, 3) for b in (1, 2, 3)]


def test_dpfps_config_allocates_the_published_reduction():
    config = json.loads((CONFIGS / "dpfps/resnet56_cifar10.json").read_text())
    settings = {k: v for k, v in config["method"].items() if k != "name"}
    method = tffp.DPFPS(**settings)
    model = getattr(tffp.models, config["model"])()
    wrapped = tffp.prune_filters(model, method, prune_residual=config["prune_residual"])
    assert [w.name for w in tffp.methods.base.wrappers_of(wrapped)] == tffp.wrappable_layers(model)
    context = tffp.api.method_contexts(wrapped, with_macs=True)[0]
    macs = context.macs.estimate(method.allocate(context))
    reduction = 1.0 - macs / tffp.profile(model).total_macs
    assert config["method"]["target_macs_reduction"] - 0.01 <= reduction <= 0.5386
