"""Grouped Conv2D (``groups > 1``): pruned within its groups, the same count kept in each.

- ``1 < groups < in_channels``: output group ``g`` reads input group ``g`` only.
  Both the conv's output channels and its input channels (its producer's) are
  cut with the same number kept in every group (``ChannelGroup.blocks``);
  ``groups`` stays.
- ``groups == in_channels`` (ConvNeXt's depthwise ``Conv2D``): handled as a
  DepthwiseConv2D; input and output are one group and ``groups`` follows the cut.

Every model is checked against the surgery contract (compact == kernel-zeroed
reference, ``tests/helpers.py``).
"""

import keras
import numpy as np
import pytest
from helpers import assert_surgery_contract, input_batch, predict
from keras import layers as L

import tf_filterprune as tffp
from tf_filterprune.graph import build_graph
from tf_filterprune.graph.registry import conv_grouping
from tf_filterprune.pruner import kept_count, top_channels
from tf_filterprune.surgery import rebuild, zeroed_copy
from tf_filterprune.surgery.cut import regroup_kernel, ungroup_kernel


def grouped_model(groups=4, width=16, out=16, bn=True) -> keras.Model:
    """conv 'a' (width) -> grouped 'g' (out, groups) [-> BN] -> ReLU -> conv 'b' -> head."""
    inp = keras.Input((8, 8, 3), name="image")
    x = L.Conv2D(width, 3, padding="same", name="a")(inp)
    x = L.ReLU(name="ra")(x)
    x = L.Conv2D(out, 3, padding="same", groups=groups, name="g")(x)
    if bn:
        x = L.BatchNormalization(name="gbn")(x)
    x = L.ReLU(name="rg")(x)
    x = L.Conv2D(6, 1, name="b")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, L.Dense(3, name="head")(x), name="grouped")


def depthwise_model(multiplier=1) -> keras.Model:
    """conv 'a' -> Conv2D(groups=channels) 'dw' -> LayerNorm-free pointwise 'pw'."""
    inp = keras.Input((8, 8, 3), name="image")
    x = L.Conv2D(8, 3, padding="same", name="a")(inp)
    x = L.BatchNormalization(name="abn")(x)
    x = L.Conv2D(8 * multiplier, 3, padding="same", groups=8, name="dw")(x)
    x = L.ReLU(name="r")(x)
    x = L.Conv2D(6, 1, name="pw")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, L.Dense(3, name="head")(x), name="depthwise_via_groups")


# ------------------------------------------------------------------ the graph


def test_grouped_conv_groups_record_their_blocks():
    graph = build_graph(grouped_model(groups=4))
    a, g = graph.group_of_layer("a"), graph.group_of_layer("g")
    assert a.prunable and g.prunable
    assert (a.blocks, g.blocks) == (4, 4)
    assert a.blocked_by == ["g"] and g.blocked_by == ["g"]
    assert graph.group_of_layer("b").blocks == 1


def test_one_channel_per_group_is_left_whole_with_the_reason():
    graph = build_graph(grouped_model(groups=4, width=16, out=4))  # g: one filter per group
    g = graph.group_of_layer("g")
    assert not g.prunable
    assert "one of these 4 channels in each group" in g.reasons[0]
    assert graph.group_of_layer("a").prunable  # 4 inputs per group: still cut within groups


def test_depthwise_via_groups_is_classified():
    model = depthwise_model()
    assert conv_grouping(model.get_layer("dw")) == "depthwise"
    assert conv_grouping(grouped_model().get_layer("g")) == "grouped"
    assert conv_grouping(model.get_layer("a")) == "plain"
    graph = build_graph(model)
    assert graph.group_of_layer("a").blocks == 1  # a depthwise conv takes any cut


def test_concatenated_input_is_left_whole_but_the_output_prunes():
    inp = keras.Input((8, 8, 3))
    x = L.Concatenate()([L.Conv2D(4, 1, name="p")(inp), L.Conv2D(4, 1, name="q")(inp)])
    x = L.Conv2D(8, 3, padding="same", groups=2, name="g")(x)
    model = keras.Model(inp, L.Dense(2)(L.GlobalAveragePooling2D()(L.Conv2D(4, 1)(x))))
    graph = build_graph(model)
    p = graph.group_of_layer("p")
    assert not p.prunable and "grouped convolution (groups=2)" in p.reasons[0]
    assert graph.group_of_layer("g").prunable
    compact = tffp.prune_once(model, keep_ratio=0.5)
    assert compact.get_layer("p").filters == 4
    assert (compact.get_layer("g").filters, compact.get_layer("g").groups) == (4, 2)


# --------------------------------------------------------------- the surgery


@pytest.mark.parametrize("groups, width, out", [(2, 8, 8), (4, 16, 16), (4, 8, 12), (3, 12, 6)])
@pytest.mark.parametrize("fold", ["exact", False])
def test_grouped_conv_meets_the_surgery_contract(groups, width, out, fold):
    model = grouped_model(groups, width, out)
    compact = assert_surgery_contract(model, ratio=0.5, fold_constants=fold)
    g = compact.get_layer("g")
    assert g.groups == groups
    assert g.kernel.shape[-2] * groups == compact.get_layer("a").filters
    assert g.kernel.shape[-1] == g.filters


@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_via_groups_meets_the_surgery_contract(multiplier):
    model = depthwise_model(multiplier)
    compact = assert_surgery_contract(model, ratio=0.5)
    a, dw = compact.get_layer("a"), compact.get_layer("dw")
    assert dw.groups == a.filters == 4  # random_keep keeps round(8 * 0.5)
    assert dw.filters == a.filters * multiplier
    assert dw.kernel.shape == (3, 3, 1, dw.filters)


def test_prune_once_keeps_the_same_count_in_each_group():
    model = grouped_model(groups=4, width=16, out=16)
    compact = tffp.prune_once(model, "l1", keep_ratio=0.5)
    a, g = compact.get_layer("a"), compact.get_layer("g")
    assert (a.filters, g.filters, g.groups) == (8, 8, 4)
    assert g.kernel.shape == (3, 3, 2, 8)
    graph = build_graph(model)
    scores = tffp.pruner.score_channels(graph, graph.group_of_layer("g"), "l1")
    kept = top_channels(scores, 8, blocks=4)
    assert graph.group_of_layer("g").block_counts(kept).tolist() == [2, 2, 2, 2]
    np.testing.assert_allclose(
        compact.get_layer("g").bias.numpy(), model.get_layer("g").bias.numpy()[kept]
    )


def test_prune_once_rounds_to_the_groups_and_round_to():
    model = grouped_model(groups=4, width=16, out=16)
    compact = tffp.prune_once(model, "l2", keep_ratio=0.5, round_to=3)  # lcm(3, 4) = 12
    assert compact.get_layer("g").filters == 12
    macs = tffp.prune_once(model, target_macs_reduction=0.5)
    assert tffp.profile(macs).total_macs <= 0.5 * tffp.profile(model).total_macs
    assert macs.get_layer("g").filters % 4 == 0 and macs.get_layer("a").filters % 4 == 0


def test_kept_count_and_top_channels_respect_blocks():
    assert kept_count(16, 0.3, blocks=4) == 4
    assert kept_count(16, 0.3, min_filters=6, blocks=4) == 8
    assert kept_count(8, 0.5, round_to=8, blocks=4) == 8  # nothing to cut
    scores = np.array([3.0, 1, 2, 9, 8, 7])
    assert top_channels(scores, 4, blocks=2).tolist() == [0, 2, 3, 4]


def test_prune_channels_refuses_unequal_groups_and_takes_equal_ones():
    model = grouped_model(groups=2, width=8, out=8)
    with pytest.raises(ValueError, match=r"same number in each of their 2 groups.*\[3, 1\]"):
        tffp.prune_channels(model, {"a": [0, 1, 2, 5]})
    compact = tffp.prune_channels(model, {"a": [0, 3, 5, 6], "g": [1, 2, 4, 7]})
    assert compact.get_layer("g").kernel.shape == (3, 3, 2, 4)
    graph = build_graph(model)
    keep = {
        graph.group_of_layer("a").id: np.array([0, 3, 5, 6]),
        graph.group_of_layer("g").id: np.array([1, 2, 4, 7]),
    }
    x = input_batch(model)
    reference = zeroed_copy(model, graph, keep, fold_constants="exact")
    exact = rebuild(model, graph, keep, fold_constants="exact")
    np.testing.assert_allclose(predict(exact, x), predict(reference, x), atol=1e-5)


def test_grouped_kernel_round_trip_and_cross_group_refusal():
    kernel = np.random.default_rng(0).normal(size=(3, 3, 2, 6)).astype("float32")
    full = ungroup_kernel(kernel, 3)
    assert full.shape == (3, 3, 6, 6)
    np.testing.assert_array_equal(regroup_kernel(full, 3), kernel)
    full[..., 0, 5] = 1.0  # input of group 0 feeding an output of group 2
    with pytest.raises(ValueError, match="mixes channels across its groups"):
        regroup_kernel(full, 3, "g")


def test_grouped_groups_are_not_wrapped_for_training():
    model = grouped_model(groups=4)
    wrapped = tffp.prune_filters(model, tffp.DCFF(keep_ratio=0.5))
    names = [w.layer.name for w in tffp.methods.base.wrappers_of(wrapped)]
    assert names == ["b"]  # 'a' feeds the grouped conv: prune_once cuts it


# ------------------------------------------------------------------ ConvNeXt


@pytest.fixture(scope="module")
def convnext():
    return keras.applications.ConvNeXtTiny(
        weights=None, input_shape=(32, 32, 3), classes=10, include_preprocessing=False
    )


def test_convnext_depthwise_blocks_are_cut(convnext):
    compact = tffp.prune_once(convnext, "l1", keep_ratio=0.5)
    name = "convnext_tiny_stage_0_block_0_depthwise_conv"
    dw, original = compact.get_layer(name), convnext.get_layer(name)
    assert original.groups == 96 and dw.groups == dw.filters == 48
    assert dw.kernel.shape == (7, 7, 1, 48)
    assert compact.output_shape == convnext.output_shape
    assert tffp.profile(compact).total_macs < 0.4 * tffp.profile(convnext).total_macs
    x = np.random.default_rng(0).normal(size=(1, 32, 32, 3)).astype("float32")
    assert np.all(np.isfinite(predict(compact, [x])))
