"""Latency-targeted budgets (``target_latency_reduction``, ``round_to="auto"``).

Nothing is timed here: the timer is replaced by a deterministic fake latency,
a cost per MAC with output widths rounded up to a tile of 8, plus a cost per
element of the other layers and a fixed overhead.
"""

import math

import keras
import numpy as np
import pytest

import tf_filterprune as tffp
from tf_filterprune import latency

FAKE_TILE = 8


def fake_ms(model: keras.Model) -> float:
    """The fake latency of a model: what the latency model is built to fit."""
    ms = 0.01
    for row in tffp.profile(model).layers:
        if row.class_name in ("Conv2D", "Dense"):
            ms += 1e-6 * row.macs * math.ceil(row.width / FAKE_TILE) * FAKE_TILE / row.width
        elif isinstance(row.output_shape, tuple):
            ms += 1e-7 * math.prod(row.output_shape[1:])
    return ms


class FakeTimer:
    """Stands in for ``latency.measure_probes``; counts the probes it is asked to time."""

    def __init__(self):
        self.calls = 0
        self.probes = 0

    def __call__(self, probes, num_threads=1, verbose=1):
        self.calls += 1
        self.probes += len(probes)
        return {p.name: fake_ms(p.model) for p in probes}


def timed_by_measure_probes(model, reference, num_threads=1):
    """Stands in for ``latency.timed_ratio``: asks the (patched) ``measure_probes``."""
    probes = [
        latency.Probe("model/full", "model", reference),
        latency.Probe("model/compact", "model", model),
    ]
    ms = latency.measure_probes(probes, num_threads)
    return ms["model/compact"] / ms["model/full"]


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One cache for the module's tests (each test's own model measured once)."""
    return tmp_path_factory.mktemp("latency_cache")


@pytest.fixture
def timer(monkeypatch, shared_cache):
    fake = FakeTimer()
    monkeypatch.setattr(latency, "measure_probes", fake)
    monkeypatch.setattr(latency, "timed_ratio", timed_by_measure_probes)
    monkeypatch.setenv(latency.CACHE_ENV, str(shared_cache))
    return fake


def cnn() -> keras.Model:
    inputs = keras.Input((16, 16, 3), name="input")
    x = inputs
    for i, width in enumerate((32, 32, 64), start=1):
        x = keras.layers.Conv2D(width, 3, padding="same", name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
        if i == 2:
            x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(4, name="fc")(x), name="cnn")


def widths(model: keras.Model) -> dict[str, int]:
    return {f"conv{i}": model.get_layer(f"conv{i}").filters for i in (1, 2, 3)}


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_allocation_hits_the_target_on_the_fake_latency(timer, target):
    model = cnn()
    compact = tffp.prune_once(model, target_latency_reduction=target)
    ratio = fake_ms(compact) / fake_ms(model)
    assert abs(ratio - (1 - target)) < 0.03, (ratio, widths(compact))


def test_estimate_matches_the_fake_latency_of_the_compact_model(timer):
    model = cnn()
    lat = latency.measure(model, verbose=0)
    assert lat.total == pytest.approx(fake_ms(model))
    compact = tffp.prune_once(model, target_latency_reduction=0.5)
    graph = tffp.build_graph(model)
    counts = {
        graph.group_of_layer(name).id: width
        for name, width in widths(compact).items()
        if width < model.get_layer(name).filters
    }
    assert lat.estimate(counts) == pytest.approx(fake_ms(compact), rel=0.02)


def test_allocation_respects_round_to_and_ignored_layers(timer):
    model = cnn()
    compact = tffp.prune_once(
        model, target_latency_reduction=0.4, round_to=16, ignored_layers=["conv1"]
    )
    kept = widths(compact)
    assert kept["conv1"] == 32
    assert all(w % 16 == 0 for w in kept.values()), kept
    assert kept != widths(model)


def test_round_to_auto_is_the_measured_tile(timer):
    assert latency.resolve_round_to("auto") == FAKE_TILE
    compact = tffp.prune_once(cnn(), keep_ratio=0.4, round_to="auto")
    assert all(w % FAKE_TILE == 0 for w in widths(compact).values()), widths(compact)
    compact = tffp.prune_once(cnn(), target_macs_reduction=0.5, round_to="auto")
    assert all(w % FAKE_TILE == 0 for w in widths(compact).values()), widths(compact)


def test_detect_tile_finds_the_step_of_the_latency_jumps():
    w = list(range(4, 68, 4))
    assert latency.detect_tile(w, [1.0 + math.ceil(x / 16) for x in w]) == 16
    assert latency.detect_tile(w, [1.0 + math.ceil(x / 8) for x in w]) == 8
    assert latency.detect_tile(w, [1.0 + 0.1 * x for x in w]) == 4


def test_the_latency_model_is_cached(timer, monkeypatch, tmp_path):
    monkeypatch.setenv(latency.CACHE_ENV, str(tmp_path / "cache"))
    model = cnn()
    latency.measure(model, verbose=0)
    calls = timer.calls
    assert calls == 2  # the machine's tile, then the model
    again = latency.measure(cnn(), verbose=0)  # the same architecture, built again
    assert timer.calls == calls
    tffp.prune_once(model, target_latency_reduction=0.5)
    assert timer.calls == calls + 1  # not measured again; the compact model checked once
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(files) == 2 and files[1].startswith("tile-"), files
    assert again.total == pytest.approx(fake_ms(model))
    latency.measure(model, num_threads=2, verbose=0)  # another thread count: measured
    assert timer.calls == calls + 3


def test_cache_dir_argument_wins_over_the_environment(timer, shared_cache, tmp_path):
    before = sorted(shared_cache.iterdir())
    elsewhere = tmp_path / "elsewhere"
    tffp.prune_once(cnn(), target_latency_reduction=0.5, latency_cache_dir=str(elsewhere))
    assert len(list(elsewhere.iterdir())) == 2
    assert sorted(shared_cache.iterdir()) == before


@pytest.mark.parametrize("bad", [0, 0.0, 1, 1.5, -0.2, "half", True])
def test_target_outside_zero_one_raises(timer, bad):
    with pytest.raises(ValueError, match="target_latency_reduction"):
        tffp.prune_once(cnn(), target_latency_reduction=bad)
    with pytest.raises(ValueError, match="target_latency_reduction"):
        tffp.prune_filters(cnn(), tffp.DCFF(keep_ratio=0.5), target_latency_reduction=bad)
    assert timer.calls == 0


def test_combining_budgets_raises(timer):
    with pytest.raises(ValueError, match="target_latency_reduction.*target_macs_reduction"):
        tffp.prune_once(cnn(), target_latency_reduction=0.5, target_macs_reduction=0.5)
    with pytest.raises(ValueError, match="target_latency_reduction.*keep_ratio"):
        tffp.prune_once(cnn(), keep_ratio=0.5, target_latency_reduction=0.5)
    with pytest.raises(ValueError, match="target_latency_reduction.*target_macs_reduction"):
        tffp.prune_filters(
            cnn(), tffp.DCFF(), target_latency_reduction=0.5, target_macs_reduction=0.5
        )
    assert timer.calls == 0


def test_bad_round_to_and_threads_raise(timer):
    with pytest.raises(ValueError, match="round_to"):
        tffp.prune_once(cnn(), round_to="tile")
    with pytest.raises(ValueError, match="num_threads"):
        tffp.prune_once(cnn(), target_latency_reduction=0.5, num_threads=0)


def test_unreachable_target_names_the_argument(timer):
    with pytest.raises(ValueError, match="out of reach.*target_latency_reduction"):
        tffp.prune_once(cnn(), target_latency_reduction=0.95, min_filters=16)


def test_prune_filters_allocates_by_latency(timer):
    model = cnn()
    wrapped = tffp.prune_filters(model, tffp.DCFF(), target_latency_reduction=0.5)
    kept = [w.out_channels for w in tffp.methods.base.wrappers_of(wrapped)]
    compact = tffp.prune_once(model, target_latency_reduction=0.5)
    assert kept == list(widths(compact).values())
    assert np.all(np.array(kept) <= [32, 32, 64])


def test_per_layer_ratios_are_kept_under_a_latency_target(timer):
    compact = tffp.prune_once(cnn(), target_latency_reduction=0.4, per_layer={"conv3": 0.5})
    assert widths(compact)["conv3"] == 32


def test_widths_below_the_first_tile_are_candidates(timer):
    # an 8-wide group costs its producer one tile at every width, but narrower widths
    # still make its consumer cheaper: they are the only way to cut that group further
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="narrow")(inputs)
    x = keras.layers.Conv2D(32, 3, padding="same", name="wide")(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    graph = tffp.build_graph(model)
    lat = latency.measure(model, graph, verbose=0)
    budget = tffp.pruner.Budget(0.5, {}, 1, 1)
    by_size = {g.size: latency.steps(lat, g, budget) for g in graph.groups() if g.producers}
    assert by_size[8] == list(range(1, 9))
    compact = tffp.prune_once(model, "l1", target_latency_reduction=0.7)
    assert compact.get_layer("narrow").filters < 8


def test_the_allocation_is_corrected_by_timing_the_compact_model(timer, monkeypatch):
    # a machine where whole compact models run 15% slower than the latency model says:
    # the check times the compact model, scales the goal and allocates again
    def slow_compacts(probes, num_threads=1, verbose=1):
        ms = timer(probes, num_threads)
        return {k: v * (1.15 if k == "model/compact" else 1.0) for k, v in ms.items()}

    monkeypatch.setattr(latency, "measure_probes", slow_compacts)
    model = cnn()
    compact = tffp.prune_once(model, target_latency_reduction=0.5)
    measured = 1.15 * fake_ms(compact) / fake_ms(model)
    assert abs(measured - 0.5) <= 0.03, measured
    uncorrected = fake_ms(compact) / fake_ms(model)
    assert uncorrected < 0.47  # what the latency model alone would have aimed at: 0.5
