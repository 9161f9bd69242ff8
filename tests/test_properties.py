"""Property tests: randomly generated Functional CNNs satisfy the surgery contract.

Each example is a random stack of blocks (``tests/model_gen.py``: convs, residual
chains, Concatenate and split branches, depthwise, separable, grouped convs
(``groups`` 2 or 4, including groups == channels), squeeze-excite, keras.ops nodes
(``x + 3.0``, relu6, sigmoid gates, split / slice + concatenate on channels, spatial
pad, spatial mean), nested Functional sub-models (also called twice), and a GAP,
Flatten or ``keras.ops.mean`` head). For each, the surgery with a random keep set
equals the kernel-zeroed reference (:func:`tests.helpers.assert_surgery_contract`),
``prune_channels`` by layer name with another random keep set does too, and
``prune_once`` with a random criterion and ratio keeps the output shape and never
adds MACs. Four block families, one test each, with ``EXAMPLES`` examples (210 in
all, about 4 minutes on 2 shared cores), derandomized so CI is reproducible; for
longer runs set ``TFFP_PROPERTY_EXAMPLES`` (per family) and ``TFFP_PROPERTY_RANDOM=1``
(new examples each run), or use ``tools/property_tests.py``.

A failing example prints its specs: rebuild it with ``model_gen.build_model(specs,
head)`` and add it to ``REGRESSIONS`` below.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tf_filterprune as tffp
from tests import model_gen
from tests.helpers import assert_surgery_contract, input_batch, predict, random_keep
from tf_filterprune.graph import build_graph
from tf_filterprune.surgery import zeroed_copy

EXAMPLES = {"chains": 50, "branches": 50, "depthwise": 50, "ops": 60}
"""Examples per family in CI (210 in all)."""
if os.environ.get("TFFP_PROPERTY_EXAMPLES"):  # long runs: tools/property_tests.py
    EXAMPLES = dict.fromkeys(EXAMPLES, int(os.environ["TFFP_PROPERTY_EXAMPLES"]))
RANDOM = os.environ.get("TFFP_PROPERTY_RANDOM", "") not in ("", "0")
"""Draw new examples each run (not derandomized) instead of CI's fixed ones."""

width = st.integers(2, 8)
conv = st.tuples(
    st.just("conv"), width, st.sampled_from([1, 3]), st.sampled_from([1, 2]), st.booleans()
)
residual = st.tuples(st.just("residual"), st.sampled_from([1, 3]), st.booleans())
concat = st.tuples(st.just("concat"), width, width)
depthwise = st.tuples(st.just("depthwise"), st.sampled_from([1, 2]), st.booleans())
separable = st.tuples(st.just("separable"), width)
se = st.tuples(st.just("se"), st.sampled_from([1, 2, 4]))
grouped = st.tuples(st.just("grouped"), st.sampled_from([2, 4]), st.integers(1, 3))
pool = st.tuples(st.just("pool"))
ops = st.tuples(st.just("ops"), st.sampled_from(model_gen.OPS_KINDS))

nested = st.tuples(
    st.just("nested"), st.lists(st.one_of(conv, residual, ops), max_size=2).map(tuple)
)
# a shared sub-model that permutes channels ("slice" swaps the halves) ties each channel
# to its image, and at odd widths to every channel: the engine then leaves the group
# whole (spaces of one channel), so the model has no prunable group; not generated
shared_ops = st.tuples(st.just("ops"), st.sampled_from(model_gen.SHARED_OPS_KINDS))
shared = st.tuples(
    st.just("shared"), st.lists(st.one_of(residual, shared_ops), max_size=2).map(tuple)
)

FAMILIES = {
    "chains": st.one_of(conv, residual, pool, nested, shared),
    "branches": st.one_of(conv, concat, se, pool),
    "depthwise": st.one_of(conv, depthwise, separable, residual, grouped),
    "ops": st.one_of(conv, ops, residual, concat, nested),
}
"""Block mixes, one test each (so pytest-xdist spreads them over the workers)."""


def _model(first, rest, head):
    return model_gen.build_model([first, *rest], head)


def _property_settings(examples: int):
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=not RANDOM,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
        database=None,
    )


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_random_models_satisfy_the_surgery_contract(family):
    blocks = FAMILIES[family]

    @_property_settings(EXAMPLES[family])
    @given(
        first=conv,  # a plain conv first: every model has a prunable group
        rest=st.lists(blocks, min_size=1, max_size=4),
        head=st.sampled_from(["gap", "flatten", "mean"]),
        ratio=st.sampled_from([0.3, 0.5, 0.75]),
        seed=st.integers(0, 3),
        criterion=st.sampled_from(["l1", "l2", "bn_gamma", "fpgm", "random"]),
    )
    def check(first, rest, head, ratio, seed, criterion):
        keras.backend.clear_session()
        model = _model(first, rest, head)
        assert_surgery_contract(model, ratio=ratio, seed=seed)
        _check_prune_channels(model, ratio, seed)
        _check_prune_once(model, criterion, ratio)

    check()


def _check_prune_channels(model: keras.Model, ratio: float, seed: int) -> None:
    """``prune_channels`` by layer name, with a random keep set, equals the zeroed reference.

    Each prunable group is named by one producer whose whole output it is (a group
    reached only through a split or a gate spanning several groups stays whole).
    """
    graph = build_graph(model)
    by_name, by_group = {}, {}
    for gid, kept in random_keep(graph, ratio, seed + 7).items():
        group = next(g for g in graph.groups() if g.id == gid)
        for path in group.producers:
            try:
                if graph.group_of_layer(path).id != gid:
                    continue
            except ValueError:
                continue
            by_name[path], by_group[gid] = kept.tolist(), kept
            break
    if not by_name:
        return
    compact = tffp.prune_channels(model, by_name, fold_constants="exact")
    reference = zeroed_copy(model, graph, by_group, fold_constants="exact")
    x = input_batch(model, seed=seed)
    np.testing.assert_allclose(predict(compact, x), predict(reference, x), atol=1e-5, rtol=0)


def _check_prune_once(model: keras.Model, criterion: str, ratio: float) -> None:
    compact = tffp.prune_once(model, criterion, keep_ratio=ratio)
    assert compact.output_shape == model.output_shape
    assert tffp.profile(compact).total_macs <= tffp.profile(model).total_macs
    x = np.zeros((1, *model_gen.INPUT_SHAPE), "float32")
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(compact(x, training=False))))


REGRESSIONS: list[tuple[list[tuple], str]] = [
    # failing examples found by the property tests, kept as fixed cases
    ([("conv", 2, 1, 1, False), ("se", 4)], "gap"),
    # a squeeze-excite Dense gating a Concatenate spans both convs' groups
    ([("conv", 2, 1, 1, False), ("concat", 2, 2), ("se", 1)], "gap"),
    ([("conv", 2, 3, 2, True), ("residual", 1, False), ("pool",)], "flatten"),
    # a sub-model called twice lists its conv once per call in group.producers: the
    # helper's expected widths summed the conv's kept count twice (now from the layouts)
    ([("conv", 4, 3, 1, True), ("shared", ())], "gap"),
    # the halves of b0 swapped by a shared slice-and-concatenate tie into one group; b0's
    # width is twice that group's kept count
    ([("conv", 4, 1, 2, False), ("shared", (("ops", "slice"),)), ("pool",)], "flatten"),
    ([("conv", 4, 1, 1, False), ("shared", (("ops", "gate"), ("residual", 3, True)))], "mean"),
    ([("conv", 6, 3, 1, True), ("nested", (("ops", "split"), ("ops", "pad"))), ("pool",)], "mean"),
]


@pytest.mark.parametrize("specs, head", REGRESSIONS)
def test_regressions(specs, head):
    model = model_gen.build_model(specs, head)
    assert_surgery_contract(model, ratio=0.5, seed=0)
    _check_prune_channels(model, 0.5, 0)
    _check_prune_once(model, "l1", 0.5)


def _block(name: str, channels: int, sequential: bool) -> keras.Model:
    """A conv-BN-ReLU sub-model (4 filters), Sequential or Functional."""
    layers = [
        keras.layers.Conv2D(4, 3, padding="same", name=f"{name}_conv"),
        keras.layers.BatchNormalization(name=f"{name}_bn"),
        keras.layers.ReLU(name=f"{name}_relu"),
    ]
    inp = keras.Input((8, 8, channels), name=f"{name}_in")
    if sequential:
        return keras.Sequential([inp, *layers], name=name)
    y = inp
    for layer in layers:
        y = layer(y)
    return keras.Model(inp, y, name=name)


@pytest.mark.parametrize("sequential_block", [False, True], ids=["functional", "sequential"])
def test_model_nested_in_a_sequential_whose_input_is_cut(sequential_block):
    """An outer Sequential cloned its sub-models at their original input width.

    ``clone`` used ``keras.models.clone_model(recursive=True)`` for Sequential
    models, which re-creates a nested model on its own ``keras.Input`` shape, so
    a cut of the conv before it ("c0") failed with "expected shape=(None, 8, 8,
    6), found shape=(None, 8, 8, 3)". Sub-models are now cloned in order at the
    width of the running tensor, as in Functional models.
    """
    model = keras.Sequential(
        [
            keras.Input(model_gen.INPUT_SHAPE),
            keras.layers.Conv2D(6, 3, padding="same", name="c0"),
            keras.layers.BatchNormalization(name="c0_bn"),
            _block("blk", 6, sequential_block),
            keras.layers.Conv2D(5, 3, name="c1"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(model_gen.CLASSES, name="fc"),
        ]
    )
    compact = assert_surgery_contract(model, ratio=0.5, seed=0)
    assert isinstance(compact, keras.Sequential)
    assert compact.get_layer("c0").filters == 3
    assert compact.get_layer("blk").get_layer("blk_conv").filters == 2
    _check_prune_channels(model, 0.5, 0)
    _check_prune_once(model, "l1", 0.5)
