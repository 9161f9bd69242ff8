"""DPFPS: its math alone, then the method on the protocol (allocation, shrink, strip,
save/resume, two replicas, mixed precision, errors)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import compiled, fit_pruning, small_cnn, tiny_data

import tf_filterprune as tffp
from tf_filterprune.api import method_contexts
from tf_filterprune.methods import dpfps
from tf_filterprune.methods.base import wrappers_of

fit = fit_pruning


def context_of(wrapped):
    return method_contexts(wrapped, with_macs=True)[0]


# --------------------------------------------------------------------------- math


def test_progressive_factor_follows_the_paper_curve():
    values = [dpfps.progressive_factor(t, 10) for t in np.linspace(0, 10, 21)]
    assert values == sorted(values)
    assert values[0] < 1e-6 and values[-1] > 1 - 1e-6
    assert dpfps.progressive_factor(5, 10) == pytest.approx(0.5)
    # the paper's (e + 1) / E1 at whole epochs is the same curve
    assert dpfps.progressive_factor(3 + 1, 8) == pytest.approx(1 / (1 + np.exp(15 - 30 * 4 / 8)))


def test_nonzero_count_and_width_rounding():
    norms = np.array([2.0, 1.0, 0.019, 0.021, 0.0])
    assert dpfps.nonzero_count(norms, 0.01) == 3
    assert dpfps.nonzero_count(np.zeros(4), 0.01) == 1
    assert dpfps.width_at_scale(0.74, 64, 64, 16, 1) == 32  # floor(47.4) -> 32
    assert dpfps.width_at_scale(0.1, 64, 64, 16, 1) == 16  # never below round_to
    assert dpfps.width_at_scale(2.0, 64, 64, 1, 1) == 64  # never above the size
    assert dpfps.width_at_scale(0.01, 64, 64, 1, 5) == 5  # min_filters


def test_taylor_selection_and_proximal_step_by_hand():
    kernel = np.array([[1.0, 2.0, -1.0, 0.5]])
    grad = np.array([[0.1, -0.3, 0.2, 0.0]])
    sensitivity = dpfps.taylor_sensitivity([kernel], [grad], [1])
    np.testing.assert_allclose(sensitivity, [0.1, 0.6, 0.2, 0.0])
    mask = dpfps.expected_pruned(sensitivity, 2)
    np.testing.assert_array_equal(mask, [True, False, False, True])
    factors = dpfps.proximal_factors(np.array([1.0, 2.0, 1.0, 0.1]), mask, tau=0.25)
    np.testing.assert_allclose(factors, [0.75, 1.0, 1.0, 0.0])


def test_allocation_meets_the_macs_target_within_one_channel_per_layer():
    model = tffp.models.fashion_cnn()
    for round_to in (1, 8):
        method = tffp.DPFPS(target_macs_reduction=0.5)
        context = context_of(tffp.prune_filters(model, method, round_to=round_to))
        widths = method.allocate(context)
        goal = context.macs.total * 0.5
        assert context.macs.estimate(widths) <= goal
        for group in context.groups:
            if widths[group.id] < group.size:
                more = {**widths, group.id: min(group.size, widths[group.id] + round_to)}
                assert context.macs.estimate(more) > goal, (round_to, group.name)
            assert widths[group.id] % round_to == 0 or widths[group.id] == group.size


def test_allocation_follows_the_nonzero_counts():
    sizes = {0: 10, 1: 10}
    macs = lambda counts: counts[0] * 10 + counts[1] * 10  # noqa: E731
    widths = dpfps.allocate_widths({0: 10, 1: 4}, sizes, macs, 100, {0: 1, 1: 1}, {0: 1, 1: 1})
    assert sum(widths.values()) == 10 and widths[1] <= widths[0]
    with pytest.raises(ValueError):
        dpfps.allocate_widths({0: 10, 1: 10}, sizes, macs, 5, {0: 1, 1: 1}, {0: 1, 1: 1})


# ------------------------------------------------------------------- the method


def test_groups_span_filter_batchnorm_and_the_consumer_slice():
    context = context_of(tffp.prune_filters(small_cnn(), tffp.DPFPS(0.5)))
    group = next(g for g in context.groups if g.name == "conv2")
    trainable = {(m.path, m.name, m.axis) for m in group.trainable_members()}
    assert trainable == {
        ("conv2", "kernel", -1),
        ("conv2", "bias", 0),
        ("bn2", "gamma", 0),
        ("bn2", "beta", 0),
        ("conv3", "kernel", -2),
    }


def test_step_shrinks_exactly_the_expected_pruned_groups():
    method = tffp.DPFPS(target_macs_reduction=0.5, lam=1.0, first_milestone=1.0)
    wrapped = compiled(tffp.prune_filters(small_cnn(), method))
    x, y = tiny_data()
    fit(wrapped, x, y, epochs=1)  # builds everything and fills the gradient buffers
    context = context_of(wrapped)
    context.optimizer = wrapped.optimizer
    context.progress = tffp.TrainingProgress(epoch=1, batch=0, steps_per_epoch=4, total_epochs=2)
    before = {id(m): keras.ops.convert_to_numpy(m.variable) for g in context.groups
              for m in g.trainable_members()}  # fmt: skip
    expected = {}
    tau = 0.05 * 1.0 * dpfps.progressive_factor(1.25, 1.0)
    for group in context.groups:
        values, grads, axes = [], [], []
        for wrapper in group.wrappers:
            values += [wrapper.layer.kernel.numpy(), wrapper.layer.bias.numpy()]
            grads += [wrapper.kernel_gradient.numpy(), wrapper.bias_gradient.numpy()]
            axes += [-1, 0]
        sensitivity = dpfps.taylor_sensitivity(values, grads, axes)
        count = group.size - int(group.leader.dpfps_width.numpy())
        mask = dpfps.expected_pruned(sensitivity, count)
        expected[group.id] = dpfps.proximal_factors(group.channel_norms(), mask, tau)
        assert 0 < count < group.size and mask.sum() == count
    method.on_step_end(context)
    wanted = {}  # a conv's kernel is scaled by its own group and by the previous one's
    for group in context.groups:
        for member in group.trainable_members():
            value = wanted.get(member.variable.path, before[id(member)])
            shape = [1] * value.ndim
            shape[member.axis] = -1
            factor = expected[group.id][np.argsort(member.positions[:, 0])]
            wanted[member.variable.path] = value * factor.reshape(shape)
    moved = 0
    for group in context.groups:
        for member in group.trainable_members():
            new = keras.ops.convert_to_numpy(member.variable)
            np.testing.assert_allclose(new, wanted[member.variable.path], rtol=1e-5, atol=1e-7)
            moved += int(np.any(new != before[id(member)]))
    assert moved > 0


def test_training_zeroes_the_removed_groups_and_strips_exactly_at_the_target():
    keras.utils.set_random_seed(3)
    model = small_cnn()
    method = tffp.DPFPS(target_macs_reduction=0.5, lam=20.0)
    wrapped = compiled(tffp.prune_filters(model, method))
    x, y = tiny_data(n=64)
    fit(wrapped, x, y, epochs=4)
    context = context_of(wrapped)
    widths = method.widths(context)
    for group in context.groups:
        norms = np.sort(group.channel_norms())
        removed = group.size - widths[group.id]
        assert removed > 0 and np.all(norms[:removed] == 0.0), (group.name, norms)
        assert np.all(norms[removed:] > 0.0)
    notes = []
    compact, diff = tffp.strip_filter_pruning(wrapped, verify_data=x[:16], notes=notes)
    assert diff <= 1e-4 and not [n for n in notes if "DPFPS" in n]
    full = tffp.profile(model).total_macs
    assert tffp.profile(compact).total_macs <= 0.5 * full * 1.02
    assert tffp.profile(compact).total_macs >= 0.5 * full * 0.9
    for group in context.groups:
        assert compact.get_layer(group.leader.name).filters == widths[group.id]


def test_strip_before_zero_reports_the_measured_difference():
    model = small_cnn()
    wrapped = compiled(tffp.prune_filters(model, tffp.DPFPS(0.5, lam=0.0)))
    x, y = tiny_data()
    fit(wrapped, x, y, epochs=1)
    notes = []
    compact, diff = tffp.strip_filter_pruning(wrapped, verify_data=x[:8], notes=notes)
    measured = np.max(np.abs(wrapped.predict(x[:8], verbose=0) - compact.predict(x[:8], verbose=0)))
    assert diff == pytest.approx(float(measured), rel=1e-5, abs=1e-6) and diff > 1e-3
    assert any("not all zero" in note for note in notes)
    ratio = tffp.profile(compact).total_macs / tffp.profile(model).total_macs
    assert 0.45 <= ratio <= 0.5 * 1.02


def test_save_mid_training_and_resume_is_identical(tmp_path):
    x, y = tiny_data()
    wrapped = compiled(tffp.prune_filters(small_cnn(), tffp.DPFPS(0.5, lam=5.0)))
    fit(wrapped, x, y, epochs=1)
    wrapped.save(tmp_path / "wrapped.keras")
    with tffp.prune_scope():
        loaded = keras.models.load_model(tmp_path / "wrapped.keras")
    for model in (wrapped, loaded):
        fit(model, x, y, epochs=3, initial_epoch=1)
    for a, b in zip(wrapped.weights, loaded.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, err_msg=a.path)
    widths = [int(w.dpfps_width.numpy()) for w in wrappers_of(loaded)]
    assert widths == [int(w.dpfps_width.numpy()) for w in wrappers_of(wrapped)]
    assert tffp.DPFPS.from_config(tffp.DPFPS(0.4, lam=2.0).get_config()).lam == 2.0


def _replica_values(variable):
    return [v.numpy() for v in variable.value.values]


def test_two_replicas_keep_method_state_equal_and_match_one_device(two_replicas):
    x, y = tiny_data(n=32)

    def train(strategy):
        keras.utils.set_random_seed(1)
        with strategy.scope():
            wrapped = compiled(tffp.prune_filters(small_cnn(bn=False), tffp.DPFPS(0.5, lam=10.0)))
        fit(wrapped, x, y, epochs=3, batch_size=16)
        return wrapped

    mirrored, single = train(two_replicas), train(tf.distribute.get_strategy())
    for wrapper in wrappers_of(mirrored):
        for variable in (wrapper.dpfps_width, wrapper.layer.kernel, wrapper.step):
            first, *others = _replica_values(variable)
            for other in others:
                np.testing.assert_array_equal(first, other)
    for a, b in zip(mirrored.weights, single.weights, strict=True):
        if "gradient" not in a.path:
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=2e-5, err_msg=a.path)
    c1, d1 = tffp.strip_filter_pruning(mirrored, verify_data=x[:8])
    c2, d2 = tffp.strip_filter_pruning(single, verify_data=x[:8])
    assert [layer.get_config().get("filters") for layer in c1.layers] == [
        layer.get_config().get("filters") for layer in c2.layers
    ]
    assert abs(d1 - d2) <= 1e-4


def test_mixed_float16_keeps_method_state_in_float32():
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        wrapped = compiled(tffp.prune_filters(small_cnn(), tffp.DPFPS(0.5, lam=5.0)))
        x, y = tiny_data()
        fit(wrapped, x, y, epochs=2)
        for wrapper in wrappers_of(wrapped):
            assert wrapper.kernel_gradient.dtype == "float32"
            assert wrapper.layer.kernel.dtype == "float32"
            assert int(wrapper.dpfps_width.numpy()) >= 1
        compact = tffp.strip_filter_pruning(wrapped)
        assert tffp.profile(compact).total_macs < tffp.profile(small_cnn()).total_macs * 0.55
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def test_residual_streams_prune_together():
    model = tffp.models.resnet20(num_classes=4, input_shape=(16, 16, 3))
    wrapped = tffp.prune_filters(model, tffp.DPFPS(0.5, lam=5.0), prune_residual=True)
    context = context_of(wrapped)
    assert any(len(g.wrappers) > 1 for g in context.groups)
    x, y = tiny_data(shape=(16, 16, 3), n=16)
    fit(compiled(wrapped), x, y, epochs=1)
    compact = tffp.strip_filter_pruning(wrapped)
    assert compact.output_shape == model.output_shape
    ratio = tffp.profile(compact).total_macs / tffp.profile(model).total_macs
    assert ratio <= 0.5 * 1.02


# ----------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"lam": -0.1}, "lam"),
        ({"norm_threshold": 0.0}, "norm_threshold"),
        ({"norm_threshold": 1.0}, "norm_threshold"),
        ({"target_macs_reduction": 1.0}, "target_macs_reduction"),
        ({"first_milestone": 0}, "first_milestone"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        tffp.DPFPS(**kwargs)


def test_unreachable_target_names_the_argument():
    with pytest.raises(ValueError, match="target_macs_reduction=0.999"):
        tffp.prune_filters(small_cnn(), tffp.DPFPS(target_macs_reduction=0.999), min_filters=1)


def test_budget_belongs_to_the_method():
    with pytest.raises(ValueError, match="allocates the widths itself"):
        tffp.prune_filters(small_cnn(), tffp.DPFPS(0.5), target_macs_reduction=0.5)


def test_steps_per_execution_is_refused():
    wrapped = compiled(tffp.prune_filters(small_cnn(), tffp.DPFPS(0.5)), steps_per_execution=2)
    x, y = tiny_data(n=16)
    with pytest.raises(ValueError, match="steps_per_execution=1"):
        fit(wrapped, x, y, epochs=1)
