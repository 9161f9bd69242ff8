"""CNN-FCF: its math alone (projections, ADMM, gate step), then the method on the protocol
(binary gates, exact strip, save/resume, two replicas, mixed precision, coupled groups, errors)."""

import functools

import helpers
import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import compiled

import tf_filterprune as tffp
from tf_filterprune.api import method_contexts
from tf_filterprune.methods import fcf
from tf_filterprune.methods.base import wrappers_of
from tf_filterprune.methods.fcf import FCF

tiny_data = functools.partial(helpers.tiny_data, n=64)
small_cnn = functools.partial(helpers.small_cnn, padding="valid")  # exact folds, see helpers
fit = functools.partial(helpers.fit_pruning, epochs=8, batch_size=4)


def gates(wrapper):
    return wrapper.fcf_gate.numpy()


def assert_binary_with_k_ones(wrapped):
    for wrapper in wrappers_of(wrapped):
        v = gates(wrapper)
        assert fcf.gate_gap(v) <= 1e-3, (wrapper.name, v)
        assert int(np.sum(np.round(v))) == wrapper.kept_channels, (wrapper.name, v)


def context_of(wrapped):
    return method_contexts(wrapped, with_macs=True)[0]


# --------------------------------------------------------------------------- math


def exact_box_sum_projection(x, k):
    """Reference: the sum of clip(x - tau, 0, 1) is piecewise linear in tau with breaks at
    x_i and x_i - 1; find the piece where it crosses k and solve it."""
    x = np.asarray(x, np.float64)
    total = lambda tau: np.clip(x - tau, 0, 1).sum()  # noqa: E731
    breaks = np.sort(np.concatenate([x, x - 1.0]))
    for lo, hi in zip(breaks[:-1], breaks[1:], strict=True):
        s_lo, s_hi = total(lo), total(hi)  # s_lo >= s_hi
        if s_hi <= k <= s_lo:
            tau = lo if s_lo == s_hi else lo + (s_lo - k) / (s_lo - s_hi) * (hi - lo)
            return np.clip(x - tau, 0, 1)
    raise AssertionError("k out of range")


@pytest.mark.parametrize("seed", range(6))
def test_box_sum_projection_matches_exact_references(seed):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(2, 40))
    x = rng.normal(scale=[0.3, 1.0, 3.0][seed % 3], size=size) + 0.5
    k = int(rng.integers(1, size))
    z = fcf.project_box_sum(x, k).numpy()
    assert z.dtype == np.float64
    np.testing.assert_allclose(z, exact_box_sum_projection(x, k), atol=1e-9)
    assert z.min() >= 0 and z.max() <= 1 and z.sum() == pytest.approx(k, abs=1e-9)
    # optimality: no feasible point is nearer (random feasible points, the projection's
    # neighbours along feasible directions)
    for _ in range(50):
        other = fcf.project_box_sum(rng.normal(size=size), k).numpy()
        assert np.sum((x - z) ** 2) <= np.sum((x - other) ** 2) + 1e-9
    optimize = pytest.importorskip("scipy.optimize")
    if size <= 12:
        result = optimize.minimize(
            lambda u: np.sum((u - x) ** 2), np.full(size, k / size),
            jac=lambda u: 2 * (u - x), bounds=[(0, 1)] * size, method="SLSQP",
            constraints=[{"type": "eq", "fun": lambda u: u.sum() - k}],
            options={"ftol": 1e-12, "maxiter": 500},
        )  # fmt: skip
        np.testing.assert_allclose(z, result.x, atol=1e-5)


def test_box_sum_projection_edge_cases_and_float32():
    binary = np.array([1.0, 0.0, 1.0, 0.0, 0.0])
    np.testing.assert_array_equal(fcf.project_box_sum(binary, 2).numpy(), binary)
    np.testing.assert_allclose(fcf.project_box_sum(np.ones(4), 1).numpy(), [0.25] * 4)
    np.testing.assert_array_equal(fcf.project_box_sum([0.3, -2.0, 9.0], 3).numpy(), [1, 1, 1])
    np.testing.assert_array_equal(fcf.project_box_sum([0.3, -2.0, 9.0], 0).numpy(), [0, 0, 0])
    z = fcf.project_box_sum(np.array([0.9, 0.8, 0.1, -0.2], np.float32), 2)
    assert z.dtype == tf.float32
    np.testing.assert_allclose(
        z.numpy(), [0.9 + 1 / 15, 0.8 + 1 / 15, 0.1 + 1 / 15, 0.0], atol=1e-6
    )


def test_sphere_projection_on_known_points():
    for binary in ([1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0]):
        np.testing.assert_allclose(fcf.project_sphere(binary).numpy(), binary, atol=1e-12)
    # points on the ray from the centre through a binary point project onto it
    b = np.array([1.0, 0.0, 0.0, 1.0, 1.0])
    for t in (0.01, 0.7, 5.0):
        np.testing.assert_allclose(fcf.project_sphere(0.5 + t * (b - 0.5)).numpy(), b, atol=1e-12)
    np.testing.assert_allclose(
        fcf.project_sphere([0.6, 0.5, 0.5, 0.5]).numpy(), [1.5, 0.5, 0.5, 0.5]
    )
    z = fcf.project_sphere(np.random.default_rng(0).normal(size=9)).numpy()
    assert np.sum((z - 0.5) ** 2) == pytest.approx(9 / 4)
    np.testing.assert_allclose(fcf.project_sphere([0.5, 0.5]).numpy(), [1.0, 1.0])  # the centre


def test_admm_updates_and_gate_step_by_hand():
    v, z1, z2 = np.array([0.8, 0.1]), np.array([1.0, 0.0]), np.array([0.9, 0.2])
    y1, y2, rho, g = np.array([0.1, -0.1]), np.array([0.0, 0.3]), 2.0, np.array([5.0, -5.0])
    direction = y1 + y2 + rho * (2 * v - z1 - z2)
    np.testing.assert_allclose(fcf.admm_direction(v, z1, z2, y1, y2, rho).numpy(), direction)
    mixed = 0.9 * direction + 0.1 * g
    np.testing.assert_allclose(fcf.gate_gradient(v, z1, z2, y1, y2, rho, g, 0.9).numpy(), mixed)
    step = 0.5 / (1 + 2 * 0.5 * 0.9 * rho)
    new_v = fcf.gate_step(v, z1, z2, y1, y2, rho, g, 0.9, 0.5).numpy()
    np.testing.assert_allclose(new_v, v - step * mixed)

    # the proximal step is the minimizer of the linearized, augmented Lagrangian
    def objective(u):
        admm = (y1 + y2) @ u + rho / 2 * (np.sum((u - z1) ** 2) + np.sum((u - z2) ** 2))
        return 0.1 * g @ u + 0.9 * admm + np.sum((u - v) ** 2) / (2 * 0.5)

    for delta in np.random.default_rng(0).normal(scale=1e-3, size=(20, 2)):
        assert objective(new_v) <= objective(new_v + delta)
    nz1, nz2, ny1, ny2 = (t.numpy() for t in fcf.admm_update(v, z1, z2, y1, y2, rho, 3.0, 1))
    np.testing.assert_allclose(ny1, y1 + rho * (v - z1))
    np.testing.assert_allclose(ny2, y2 + rho * (v - z2))
    np.testing.assert_allclose(nz1, exact_box_sum_projection(v + ny1 / 3.0, 1), atol=1e-9)
    np.testing.assert_allclose(nz2, fcf.project_sphere(v + ny2 / 3.0).numpy())


def test_snap_and_rho_schedules():
    np.testing.assert_array_equal(fcf.snap_binary([0.995, 0.004, 1.0], 2, 0.01).numpy(), [1, 0, 1])
    kept = fcf.snap_binary([0.995, 0.004, 1.0], 1, 0.01).numpy()  # 2 ones, not 1
    np.testing.assert_allclose(kept, [0.995, 0.004, 1.0])
    np.testing.assert_allclose(fcf.snap_binary([0.9, 0.0], 1, 0.01).numpy(), [0.9, 0.0])
    assert fcf.ramped_rho(0, 0.01, 6.0, 3.0) == pytest.approx(0.01)
    assert fcf.ramped_rho(1.5, 0.01, 6.0, 3.0) == pytest.approx(np.sqrt(0.06))
    assert fcf.ramped_rho(3.0, 0.01, 6.0, 3.0) == fcf.ramped_rho(7.0, 0.01, 6.0, 3.0) == 6.0
    method = FCF.paced(8, keep_ratio=0.25, gate_lr=0.5)
    assert method.rho_epochs == 6.0 and method.keep_ratio == 0.25 and method.gate_lr == 0.5
    assert FCF.paced(4, ramp=0.5).rho_epochs == 2.0


# ------------------------------------------------------------------- the method


def test_backward_pass_records_the_task_gradient_of_the_gates():
    model = small_cnn()
    wrapped = tffp.prune_filters(model, FCF(0.5))
    x, y = tiny_data(n=8)
    rng = np.random.default_rng(1)
    for wrapper in wrappers_of(wrapped):
        wrapper.fcf_gate.assign(rng.uniform(0.2, 1.5, size=wrapper.out_channels))
        wrapper.epoch.assign(0)  # as the callback does in fit
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        loss = loss_fn(y, wrapped(x, training=True))
    tape.gradient(loss, wrapped.trainable_weights)
    # reference: the plain model with W * v, and dL/dv_j = sum W_j * dL/d(W v)_j
    plain = tffp.strip.unwrap(wrapped)
    convs = [plain.get_layer(w.name) for w in wrappers_of(wrapped)]
    with tf.GradientTape() as tape:
        loss = loss_fn(y, plain(x, training=True))
    grads = tape.gradient(loss, [c.kernel for c in convs])
    for wrapper, grad in zip(wrappers_of(wrapped), grads, strict=True):
        kernel = wrapper.layer.kernel.numpy()
        expected = np.sum(kernel * grad.numpy(), axis=(0, 1, 2))
        np.testing.assert_allclose(
            wrapper.fcf_task_gradient.numpy(), expected, rtol=1e-4, atol=1e-6
        )
    assert not any(w.trainable for w in wrapped.weights if "fcf" in w.path)


def test_step_hook_applies_the_gate_step_then_the_admm_update():
    method = FCF(0.5, rho_epochs=None, mu=1.5, gate_lr=0.3)
    wrapped = compiled(tffp.prune_filters(small_cnn(), method))
    x, y = tiny_data(n=8)
    fit(wrapped, x, y, epochs=1, batch_size=8)  # one step: state moved, buffers filled
    context = context_of(wrapped)
    context.progress = tffp.TrainingProgress(epoch=1, batch=0, steps_per_epoch=1, total_epochs=2)
    before = {}
    for w in context.wrappers:
        before[w.name] = {n: getattr(w, f"fcf_{n}").numpy() for n in
                          ("gate", "z1", "z2", "y1", "y2", "rho", "task_gradient")}  # fmt: skip
    assert before["conv1"]["rho"] == pytest.approx(0.01 * 1.5)
    method.on_step_end(context)
    for w in context.wrappers:
        b = before[w.name]
        state = (b["z1"], b["z2"], b["y1"], b["y2"], b["rho"])
        v = fcf.gate_step(b["gate"], *state, b["task_gradient"], 0.99, 0.3).numpy()
        rho = min(b["rho"] * 1.5, 6.0)
        z1, z2, y1, y2 = (t.numpy() for t in fcf.admm_update(v, *state, rho, w.kept_channels))
        for name, want in (("gate", v), ("z1", z1), ("z2", z2), ("y1", y1), ("y2", y2)):
            np.testing.assert_allclose(getattr(w, f"fcf_{name}").numpy(), want, atol=1e-5)
        assert w.fcf_rho.numpy() == pytest.approx(rho)


def test_admm_run_ends_binary_with_k_ones_and_strips_exactly():
    model = small_cnn()
    wrapped = compiled(tffp.prune_filters(model, FCF.paced(8)))
    x, y = tiny_data()
    fit(wrapped, x, y, epochs=8)
    assert_binary_with_k_ones(wrapped)
    for wrapper in wrappers_of(wrapped):
        assert float(wrapper.fcf_rho.numpy()) == pytest.approx(6.0)
    notes = []
    compact, diff = tffp.strip_filter_pruning(wrapped, verify_data=x[:16], notes=notes)
    assert diff <= 1e-4 and not notes
    for wrapper in wrappers_of(wrapped):
        assert (
            compact.get_layer(wrapper.name).filters
            == wrapper.kept_channels
            == wrapper.out_channels // 2
        )
    assert tffp.profile(compact).total_macs < tffp.profile(model).total_macs * 0.4


def test_same_padding_leaves_a_border_constant_that_the_strip_reports():
    x, y = tiny_data()
    wrapped = fit(compiled(tffp.prune_filters(small_cnn(padding="same"), FCF.paced(8))), x, y)
    assert_binary_with_k_ones(wrapped)
    notes = []
    compact, diff = tffp.strip_filter_pruning(wrapped, verify_data=x[:8], notes=notes)
    measured = np.max(np.abs(wrapped.predict(x[:8], verbose=0) - compact.predict(x[:8], verbose=0)))
    assert diff == pytest.approx(float(measured), rel=1e-5, abs=1e-7)
    assert any("padding or borders" in note for note in notes)  # the surgery says so
    assert not [note for note in notes if note.startswith("FCF")]  # the gates are binary


def test_plan_keeps_the_k_largest_gates_and_says_when_the_gates_are_not_binary():
    wrapped = tffp.prune_filters(small_cnn(), FCF(0.5))
    wrapper = wrapped.get_layer("conv1")
    wrapper.fcf_gate.assign([0.9, 0.05, 0.5, 0.2, 0.0, 0.15, 1.0, 0.3])  # 6 gates >= 0.1, k = 4
    context = context_of(wrapped)
    group = next(g for g in context.groups if g.name == "conv1")
    plan = wrapper.method.plan(group, context)
    np.testing.assert_array_equal(plan.keep, [0, 2, 6, 7])
    assert "6 gates are >= prune_threshold=0.1, not k=4" in plan.note
    assert "not all zero (largest 0.2)" in plan.note
    wrapper.fcf_gate.assign([1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    plan = wrapper.method.plan(group, context)
    np.testing.assert_array_equal(plan.keep, [0, 2, 6, 7])
    assert plan.note is None


def test_save_mid_admm_and_resume_is_identical(tmp_path):
    x, y = tiny_data(n=32)
    method = FCF.paced(4)
    wrapped = compiled(tffp.prune_filters(small_cnn(), method))
    fit(wrapped, x, y, epochs=2)
    rho = float(wrappers_of(wrapped)[0].fcf_rho.numpy())
    assert 0.01 < rho < 6.0  # mid-ADMM
    wrapped.save(tmp_path / "wrapped.keras")
    with tffp.prune_scope():
        loaded = keras.models.load_model(tmp_path / "wrapped.keras")
    assert isinstance(wrappers_of(loaded)[0].method, FCF)
    assert wrappers_of(loaded)[0].method.get_config() == method.get_config()
    for a, b in zip(wrapped.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    for model in (wrapped, loaded):
        fit(model, x, y, epochs=4, initial_epoch=2)
    for a, b in zip(wrapped.weights, loaded.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, err_msg=a.path)
    assert FCF.from_config(FCF(0.25, alpha=0.9, rho_epochs=2.0).get_config()).get_config() == (
        FCF(0.25, alpha=0.9, rho_epochs=2.0).get_config()
    )
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(method))
    assert isinstance(restored, FCF) and restored.get_config() == method.get_config()


def _replica_values(variable):
    return [v.numpy() for v in variable.value.values]


def test_two_replicas_keep_gates_and_duals_equal_and_match_one_device(two_replicas):
    x, y = tiny_data(n=64)

    def train(strategy):
        keras.utils.set_random_seed(1)
        with strategy.scope():
            wrapped = compiled(tffp.prune_filters(small_cnn(bn=False), FCF.paced(8)))
        fit(wrapped, x, y, epochs=8, batch_size=4)
        return wrapped

    mirrored, single = train(two_replicas), train(tf.distribute.get_strategy())
    for wrapper in wrappers_of(mirrored):
        for name in ("gate", "z1", "z2", "y1", "y2", "rho"):
            first, *others = _replica_values(getattr(wrapper, f"fcf_{name}"))
            for other in others:
                np.testing.assert_array_equal(first, other, err_msg=name)
    for a, b in zip(mirrored.weights, single.weights, strict=True):
        if "gradient" not in a.path:
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=2e-3, err_msg=a.path)  # round-off
    assert_binary_with_k_ones(mirrored)
    c1, d1 = tffp.strip_filter_pruning(mirrored, verify_data=x[:8])
    c2, d2 = tffp.strip_filter_pruning(single, verify_data=x[:8])
    assert [layer.get_config().get("filters") for layer in c1.layers] == [
        layer.get_config().get("filters") for layer in c2.layers
    ]
    assert d1 <= 1e-4 and d2 <= 1e-4


def test_mixed_float16_trains_the_gates_in_float32():
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        wrapped = compiled(tffp.prune_filters(small_cnn(), FCF.paced(8)))
        x, y = tiny_data()
        fit(wrapped, x, y, epochs=8)
        for wrapper in wrappers_of(wrapped):
            for name in ("gate", "z1", "z2", "y1", "y2", "rho", "task_gradient"):
                assert getattr(wrapper, f"fcf_{name}").dtype == "float32", name
        assert_binary_with_k_ones(wrapped)
        compact = tffp.strip_filter_pruning(wrapped)
        for wrapper in wrappers_of(wrapped):
            assert compact.get_layer(wrapper.name).filters == wrapper.kept_channels
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def test_residual_streams_share_one_gate_vector():
    model = tffp.models.resnet20(num_classes=4, input_shape=(16, 16, 3))
    wrapped = tffp.prune_filters(model, FCF.paced(2), prune_residual=True)
    context = context_of(wrapped)
    coupled = [g for g in context.groups if len(g.wrappers) > 1]
    assert coupled
    x, y = tiny_data(shape=(16, 16, 3), n=16)
    fit(compiled(wrapped), x, y, epochs=2, batch_size=8)
    for group in coupled:
        first = gates(group.leader)
        assert np.any(first != 1.0)
        for wrapper in group.wrappers[1:]:
            np.testing.assert_array_equal(gates(wrapper), first)
            np.testing.assert_array_equal(wrapper.fcf_y1.numpy(), group.leader.fcf_y1.numpy())
    compact = tffp.strip_filter_pruning(wrapped)
    assert compact.output_shape == model.output_shape
    group = coupled[0]
    assert compact.get_layer(group.leader.name).filters == group.target


def test_paper_schedule_multiplies_rho_by_mu_per_step():
    wrapped = compiled(tffp.prune_filters(small_cnn(), FCF(0.5, mu=1.25, rho_max=0.02)))
    x, y = tiny_data(n=8)
    fit(wrapped, x, y, epochs=1, batch_size=4)  # 2 steps
    assert float(wrappers_of(wrapped)[0].fcf_rho.numpy()) == pytest.approx(0.01 * 1.25**2)
    fit(wrapped, x, y, epochs=2, batch_size=4)  # capped
    assert float(wrappers_of(wrapped)[0].fcf_rho.numpy()) == pytest.approx(0.02)


# ----------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"keep_ratio": 0.0}, "keep_ratio"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.0}, "alpha"),
        ({"rho": 0.0}, "rho"),
        ({"rho": 1.0, "rho_max": 0.5}, "rho_max"),
        ({"mu": 0.9}, "mu"),
        ({"prune_threshold": 1.0}, "prune_threshold"),
        ({"rho_epochs": 0}, "rho_epochs"),
        ({"snap_tolerance": 0.5}, "snap_tolerance"),
        ({"gate_lr": 0.0}, "gate_lr"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        FCF(**kwargs)


def test_bad_paced_arguments_name_the_argument():
    with pytest.raises(ValueError, match="epochs"):
        FCF.paced(0)
    with pytest.raises(ValueError, match="ramp"):
        FCF.paced(5, ramp=1.5)


def test_steps_per_execution_is_refused():
    wrapped = compiled(tffp.prune_filters(small_cnn(), FCF(0.5)), steps_per_execution=2)
    x, y = tiny_data(n=16)
    with pytest.raises(ValueError, match="steps_per_execution=1"):
        fit(wrapped, x, y, epochs=1)
