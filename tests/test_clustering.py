"""Filter clustering on the protocol: exact merges, the pull, the anti-blocking branch
folded at strip, save/resume, two replicas, mixed precision, residual streams, errors."""

import functools

import helpers
import keras
import numpy as np
import pytest
from helpers import compiled

import tf_filterprune as tffp
from tf_filterprune.api import method_contexts
from tf_filterprune.methods import clustering
from tf_filterprune.methods.base import wrappers_of
from tf_filterprune.methods.clustering import FilterClustering
from tf_filterprune.surgery.branches import pad_kernel

tiny_data = functools.partial(helpers.tiny_data, n=32)
fit = functools.partial(helpers.fit_pruning, epochs=4, batch_size=8)


def context_of(wrapped):
    return method_contexts(wrapped, with_macs=True)[0]


def hooks_at(context, epoch, batch=None, steps=4, total=4, steps_run=1):
    context.progress = tffp.TrainingProgress(epoch, batch, steps, total, steps_run=steps_run)
    return context


def assignment(wrapper):
    return wrapper.cluster_assignment.numpy()


def randomize_branches(wrapped, seed=0):
    """Nonzero branch kernels and BN terms (gamma starts at 0: the branch would be inert)."""
    rng = np.random.default_rng(seed)
    for wrapper in wrappers_of(wrapped):
        if wrapper.branch_kernel is not None:
            wrapper.branch_kernel.assign(rng.normal(size=wrapper.branch_kernel.shape) * 0.3)
            c = wrapper.out_channels
            wrapper.branch_gamma.assign(rng.uniform(0.5, 1.5, c))
            wrapper.branch_variance.assign(rng.uniform(0.5, 1.5, c))


def tiny_resnet(shape=(10, 10, 3), width=8, blocks=2):
    """A stem conv and residual blocks (conv-BN-ReLU-conv-BN + identity), GAP, Dense."""
    inputs = keras.Input(shape)
    x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(name="stem_bn")(x))
    for b in range(blocks):
        h = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"b{b}_c1")(x)
        h = keras.layers.ReLU()(keras.layers.BatchNormalization(name=f"b{b}_bn1")(h))
        h = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"b{b}_c2")(h)
        h = keras.layers.BatchNormalization(name=f"b{b}_bn2")(h)
        x = keras.layers.ReLU()(keras.layers.Add()([x, h]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(4, name="fc")(x))


def compact_twin(model, wrapped):
    """The plain model cut to the same widths without any method (for parameter counts)."""
    keep = {w.name: list(range(w.kept_channels)) for w in wrappers_of(wrapped)}
    return tffp.prune_channels(model, keep, fold_constants=False)


# ------------------------------------------------------------------ exact merges


def test_clusters_of_identical_filters_merge_with_the_output_unchanged():
    model = helpers.small_cnn()
    helpers.randomize_batchnorm(model)
    helpers.randomize_biases(model)
    wrapped = tffp.prune_filters(model, FilterClustering(0.5))
    randomize_branches(wrapped)
    rng = np.random.default_rng(3)
    planted = {}
    for wrapper in wrappers_of(wrapped):
        c, k = wrapper.out_channels, wrapper.kept_channels
        labels = rng.permutation(np.arange(c) % k)  # k clusters of 2
        planted[wrapper.name] = labels
        source = np.array([np.flatnonzero(labels == labels[i])[0] for i in range(c)])
        conv = wrapper.layer
        bn = wrapped.get_layer(wrapper.name.replace("conv", "bn"))
        branch = [
            (wrapper.branch_kernel, 3),
            (wrapper.branch_gamma, 0),
            (wrapper.branch_variance, 0),
        ]
        for variable, axis in (
            [(conv.kernel, 3), (conv.bias, 0)] + branch + [(v, 0) for v in bn.weights]
        ):
            variable.assign(np.take(variable.numpy(), source, axis=axis))
    notes = []
    x = tiny_data(n=8)[0]
    compact, diff = tffp.strip_filter_pruning(wrapped, verify_data=x, notes=notes)
    assert diff <= 1e-4
    for wrapper in wrappers_of(wrapped):
        assert compact.get_layer(wrapper.name).filters == wrapper.kept_channels
        plan = wrapper.method.plan(
            next(g for g in context_of(wrapped).groups if g.leader is wrapper), context_of(wrapped)
        )
        clusters = np.argmax(plan.consumer_map, axis=0)
        same = planted[wrapper.name][:, None] == planted[wrapper.name][None]
        np.testing.assert_array_equal(clusters[:, None] == clusters[None], same)
        assert "never clustered" in plan.note and "not converged" not in plan.note
    assert all(type(layer) is not tffp.FilterPruningWrapper for layer in compact.layers)


def test_a_run_with_strong_pull_strips_exactly_to_k_plain_filters():
    model = helpers.small_cnn()
    wrapped = compiled(tffp.prune_filters(model, FilterClustering(0.5, pull=0.2)))
    x, y = tiny_data()
    fit(wrapped, x, y)
    notes = []
    compact, diff = tffp.strip_filter_pruning(wrapped, verify_data=x[:16], notes=notes)
    assert diff <= 1e-4, diff
    assert not [n for n in notes if n.startswith("FilterClustering")]
    for wrapper in wrappers_of(wrapped):
        layer = compact.get_layer(wrapper.name)
        assert type(layer) is keras.layers.Conv2D
        assert layer.filters == wrapper.kept_channels == wrapper.out_channels // 2
        assert [w.name for w in layer.weights] == ["kernel", "bias"]
        # the members are identical, the clusters have k labels
        a = assignment(wrapper)
        assert sorted(set(a.tolist())) == list(range(wrapper.kept_channels))
        kernel = wrapper.layer.kernel.numpy()
        for c in range(wrapper.kept_channels):
            members = kernel[..., a == c]
            np.testing.assert_array_equal(members, np.broadcast_to(members[..., :1], members.shape))
    assert compact.count_params() == compact_twin(model, wrapped).count_params()
    assert tffp.profile(compact).total_macs < 0.4 * tffp.profile(model).total_macs


def test_steps_per_execution_runs_and_still_merges_exactly():
    wrapped = compiled(
        tffp.prune_filters(helpers.small_cnn(), FilterClustering(0.5)), steps_per_execution=2
    )
    x, y = tiny_data()
    fit(wrapped, x, y, epochs=2)
    _, diff = tffp.strip_filter_pruning(wrapped, verify_data=x[:8])
    assert diff <= 1e-4


def test_per_channel_weights_between_the_conv_and_its_consumers_are_pulled_too():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(inputs)
    x = keras.layers.PReLU(shared_axes=[1, 2], name="prelu")(x)
    x = keras.layers.Conv2D(4, 3, name="next")(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    prelu = model.get_layer("prelu")
    prelu.alpha.assign(np.random.default_rng(0).uniform(0, 0.5, prelu.alpha.shape))
    method = FilterClustering(0.5)
    wrapped = tffp.prune_filters(model, method)
    context = context_of(wrapped)
    method.on_train_begin(hooks_at(context, 0, total=1))
    method.on_epoch_begin(context)  # clusters
    method.on_epoch_end(context)  # the last epoch: members set to their cluster's mean
    alpha = wrapped.get_layer("prelu").alpha.numpy().reshape(-1)
    a = assignment(wrappers_of(wrapped)[0])
    for c in range(4):
        assert np.ptp(alpha[a == c]) == 0
    notes = []
    x = tiny_data(shape=(8, 8, 3), n=8)[0]
    _, diff = tffp.strip_filter_pruning(wrapped, verify_data=x, notes=notes)
    assert diff <= 1e-4 and not notes


def test_an_unfinished_run_reports_the_measured_difference_and_a_note():
    wrapped = compiled(tffp.prune_filters(helpers.small_cnn(), FilterClustering(0.5, epochs=10)))
    x, y = tiny_data()
    fit(wrapped, x, y, epochs=2)  # 2 of 10 epochs: the pull has not converged
    notes = []
    compact, diff = tffp.strip_filter_pruning(wrapped, verify_data=x[:8], notes=notes)
    measured = np.max(np.abs(helpers.predict(wrapped, [x[:8]]) - helpers.predict(compact, [x[:8]])))
    assert diff == pytest.approx(float(measured), rel=1e-5, abs=1e-7)
    assert diff > 1e-4
    ours = [n for n in notes if n.startswith("FilterClustering")]
    assert len(ours) == 3 and all("not converged" in n and "verify_data" in n for n in ours)


def test_the_branch_is_folded_exactly_into_a_strided_dilated_conv():
    inputs = keras.Input((23, 21, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="a")(inputs)
    x = keras.layers.BatchNormalization(name="bn_a")(x)
    x = keras.layers.Conv2D(8, 5, dilation_rate=2, padding="valid", use_bias=False,
                            activation="relu", name="b")(x)  # fmt: skip
    x = keras.layers.Conv2D(6, 3, padding="same", name="c")(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    helpers.randomize_batchnorm(model)
    wrapped = tffp.prune_filters(model, FilterClustering(0.5))
    randomize_branches(wrapped)
    x = np.random.default_rng(0).normal(size=(2, 23, 21, 3)).astype("float32")
    # training: the branch is gamma * u / sqrt(var + eps), u = conv(x, pad(K1x1)) with a's
    # geometry, var the moving variance after this batch's update (one kernel, one conv)
    a = wrapped.get_layer("a")
    a.epoch.assign(0)
    u = keras.ops.conv(x, pad_kernel(a.branch_kernel.numpy(), (3, 3)), 2, "same").numpy()
    main = keras.ops.conv(x, a.layer.kernel, 2, "same").numpy() + a.layer.bias.numpy()
    moving = 0.99 * a.branch_variance.numpy() + 0.01 * u.reshape(-1, 8).var(0)
    want = main + a.branch_gamma.numpy() * u / np.sqrt(moving + 1e-3)
    np.testing.assert_allclose(a(x, training=True).numpy(), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(a.branch_variance.numpy(), moving, rtol=1e-5)
    plain = tffp.strip.unwrap(wrapped)  # full width: only the branch folded
    assert all(not isinstance(layer, tffp.FilterPruningWrapper) for layer in plain.layers)
    np.testing.assert_allclose(
        plain(x, training=False).numpy(), wrapped(x, training=False).numpy(), atol=1e-5
    )
    assert plain.count_params() == model.count_params()
    assert not plain.get_layer("b").use_bias  # the branch folds into the kernel alone
    compact = tffp.strip_filter_pruning(wrapped)
    assert compact.count_params() == compact_twin(model, wrapped).count_params()


def test_anti_blocking_off_leaves_no_branch_and_whole_layers_have_none():
    wrapped = tffp.prune_filters(
        helpers.small_cnn(), FilterClustering(0.5, anti_blocking=False), per_layer={"conv2": 1.0}
    )
    assert all(w.branch_kernel is None for w in wrappers_of(wrapped))
    wrapped = tffp.prune_filters(
        helpers.small_cnn(), FilterClustering(0.5), per_layer={"conv2": 1.0}
    )
    kinds = {w.name: w.branch_kernel is not None for w in wrappers_of(wrapped)}
    assert kinds == {"conv1": True, "conv2": False, "conv3": True}


# ------------------------------------------------------------------- the schedule


def test_the_step_hook_pulls_every_member_toward_its_cluster_mean():
    method = FilterClustering(0.5, pull=0.3, epochs=10)
    wrapped = tffp.prune_filters(helpers.small_cnn(), method)
    helpers.randomize_batchnorm(wrapped)
    randomize_branches(wrapped)
    context = context_of(wrapped)
    method.on_train_begin(hooks_at(context, 0))
    method.on_epoch_begin(context)  # clusters
    wrapper = wrappers_of(wrapped)[1]
    a, k = assignment(wrapper), wrapper.kept_channels
    assert sorted(set(a.tolist())) == list(range(k))
    bn = wrapped.get_layer("bn2")
    tracked = [(wrapper.layer.kernel, 3), (wrapper.layer.bias, 0), (wrapper.branch_kernel, 3),
               (bn.moving_variance, 0), (bn.beta, 0), (wrapper.branch_gamma, 0),
               (wrapper.branch_variance, 0)]  # fmt: skip
    before = [v.numpy() for v, _ in tracked]
    method.on_step_end(hooks_at(context, 0, batch=0))
    for (variable, axis), old in zip(tracked, before, strict=True):
        want = clustering.pull_toward_centres(old, a, k, 0.3, axis=axis).numpy()
        np.testing.assert_allclose(variable.numpy(), want, atol=1e-6)
    # two steps run at once (steps_per_execution=2) pull by 1 - (1 - p)^2
    before = wrapper.layer.kernel.numpy()
    method.on_step_end(hooks_at(context, 0, batch=2, steps_run=2))
    want = clustering.pull_toward_centres(before, a, k, 1 - 0.7**2).numpy()
    np.testing.assert_allclose(wrapper.layer.kernel.numpy(), want, atol=1e-6)
    # the merge phase (the last 20% of the 10 epochs) and the end: members identical
    before = wrapper.layer.kernel.numpy()
    method.on_step_end(hooks_at(context, 8, batch=1, total=10))  # 8.5 of 10 epochs
    pull = clustering.pull_at(8.5 / 10, 0.3, 0.2)
    assert 0.3 < pull < 1
    want = clustering.pull_toward_centres(before, a, k, pull).numpy()
    np.testing.assert_allclose(wrapper.layer.kernel.numpy(), want, atol=1e-6)
    method.on_epoch_end(hooks_at(context, 9, total=10))
    for variable, axis in tracked:
        value = np.moveaxis(variable.numpy(), axis, -1)
        for c in range(k):
            members = value[..., a == c]
            np.testing.assert_allclose(members, members[..., :1].repeat(members.shape[-1], -1),
                                       atol=1e-6)  # fmt: skip


@pytest.mark.parametrize(
    "period, merge, warmup, clustered",
    [(1, 0.2, 0, [0, 1, 2, 3]), (2, 0.2, 0, [0, 0, 2, 2]), (1, 0.25, 0, [0, 1, 2, 2]),
     (1, 0.2, 3, [-1, -1, -1, 3]), (2, 0.0, 1, [-1, 1, 1, 3])],
)  # fmt: skip
def test_reclustering_every_period_until_the_merge_phase(period, merge, warmup, clustered):
    method = FilterClustering(0.5, period_epochs=period, merge_fraction=merge, warmup_epochs=warmup)
    wrapped = tffp.prune_filters(helpers.small_cnn(), method)
    context = context_of(wrapped)
    method.on_train_begin(hooks_at(context, 0))
    seen = []
    for epoch in range(4):
        method.on_epoch_begin(hooks_at(context, epoch))
        seen.append(int(wrappers_of(wrapped)[0].cluster_epoch.numpy()))
        for wrapper in wrappers_of(wrapped)[1:]:
            assert int(wrapper.cluster_epoch.numpy()) == seen[-1]
    assert seen == clustered
    summary = method.summaries(wrappers_of(wrapped)[0])
    assert summary["cluster_sizes"].sum() == 8 and summary["clustered_epoch"] == clustered[-1]


def test_no_pull_before_clustering_and_during_warmup():
    method = FilterClustering(0.5, warmup_epochs=2, epochs=4)
    wrapped = compiled(tffp.prune_filters(helpers.small_cnn(), method))
    x, y = tiny_data(n=8)
    before = [w.numpy() for w in wrapped.weights]
    fit(wrapped, x, y, epochs=1, batch_size=8)  # one SGD step, no pull
    assert all(int(w.cluster_epoch.numpy()) == -1 for w in wrappers_of(wrapped))
    assert all(assignment(w).min() == -1 for w in wrappers_of(wrapped))
    kernel = wrappers_of(wrapped)[0].layer.kernel
    assert np.unique(kernel.numpy().reshape(-1, 8), axis=1).shape[1] == 8
    assert any(
        not np.array_equal(a, w.numpy()) for a, w in zip(before, wrapped.weights, strict=True)
    )


# ------------------------------------------------------------- save, replicas, fp16


def test_save_mid_run_and_resume_is_identical_to_an_uninterrupted_run(tmp_path):
    x, y = tiny_data()

    def start():
        keras.utils.set_random_seed(3)
        method = FilterClustering(0.5, pull=0.05, epochs=4)
        return compiled(tffp.prune_filters(helpers.small_cnn(), method))

    straight = fit(start(), x, y, epochs=4)
    first = fit(start(), x, y, epochs=2)
    first.save(tmp_path / "wrapped.keras")
    with tffp.prune_scope():
        loaded = keras.models.load_model(tmp_path / "wrapped.keras")
    method = wrappers_of(loaded)[0].method
    assert isinstance(method, FilterClustering) and method.get_config()["epochs"] == 4.0
    for a, b in zip(first.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    assert any("branch_moving_variance" in w.path for w in loaded.weights)
    fit(loaded, x, y, epochs=4, initial_epoch=2)
    for a, b in zip(straight.weights, loaded.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, err_msg=a.path)
    for w_straight, w_loaded in zip(wrappers_of(straight), wrappers_of(loaded), strict=True):
        np.testing.assert_array_equal(assignment(w_straight), assignment(w_loaded))
    _, diff = tffp.strip_filter_pruning(loaded, verify_data=x[:8])
    assert diff <= 1e-4


def test_config_round_trips():
    method = FilterClustering(0.25, period_epochs=2, pull=0.1, anti_blocking=False,
                              merge_fraction=0.3, warmup_epochs=1, epochs=6)  # fmt: skip
    assert FilterClustering.from_config(method.get_config()).get_config() == method.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(method))
    assert isinstance(restored, FilterClustering) and restored.get_config() == method.get_config()
    assert "FilterClustering" in tffp.custom_objects()


def _replica_values(variable):
    return [v.numpy() for v in variable.value.values]


def test_two_replicas_agree_on_the_clusters(two_replicas):
    x, y = tiny_data(n=16)
    with two_replicas.scope():
        wrapped = compiled(tffp.prune_filters(helpers.small_cnn(), FilterClustering(0.5)))
    fit(wrapped, x, y, epochs=2, batch_size=8)
    for wrapper in wrappers_of(wrapped):
        for variable in (wrapper.cluster_assignment, wrapper.cluster_representatives,
                         wrapper.layer.kernel, wrapper.branch_variance):  # fmt: skip
            first, *others = _replica_values(variable)
            for other in others:
                np.testing.assert_array_equal(first, other, err_msg=variable.path)
        assert assignment(wrapper).min() == 0
    for layer in ("bn1", "bn2"):
        first, *others = _replica_values(wrapped.get_layer(layer).moving_mean)
        for other in others:
            np.testing.assert_array_equal(first, other)
    compact, diff = tffp.strip_filter_pruning(wrapped, verify_data=x[:8])
    assert diff <= 1e-4
    assert compact.get_layer("conv2").filters == 8


def test_mixed_float16_keeps_the_state_in_float32():
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        wrapped = compiled(tffp.prune_filters(helpers.small_cnn(), FilterClustering(0.5)))
        x, y = tiny_data(n=16)
        fit(wrapped, x, y, epochs=2)
        for wrapper in wrappers_of(wrapped):
            assert wrapper.cluster_assignment.dtype == "int32"
            assert wrapper.branch_kernel.dtype == "float32"
            assert wrapper.branch_variance.dtype == wrapper.branch_gamma.dtype == "float32"
            assert assignment(wrapper).min() == 0
        compact, diff = tffp.strip_filter_pruning(wrapped, verify_data=x[:8])
        for wrapper in wrappers_of(wrapped):
            assert compact.get_layer(wrapper.name).filters == wrapper.kept_channels
        assert diff < 2e-2  # float16 round-off of the wrapped model
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def test_residual_streams_share_one_clustering():
    model = tiny_resnet()
    wrapped = tffp.prune_filters(model, FilterClustering(0.5), prune_residual=True)
    context = context_of(wrapped)
    coupled = [g for g in context.groups if len(g.wrappers) > 1]
    assert [g.name for g in coupled] == ["stem+b0_c2+b1_c2"]
    x, y = tiny_data(shape=(10, 10, 3), n=16)
    fit(compiled(wrapped), x, y, epochs=2)
    for group in coupled:
        first = assignment(group.leader)
        assert first.min() == 0 and len(set(first.tolist())) == group.target
        for wrapper in group.wrappers[1:]:
            np.testing.assert_array_equal(assignment(wrapper), first)
    compact, diff = tffp.strip_filter_pruning(wrapped, verify_data=x[:4])
    assert diff <= 1e-4
    assert compact.output_shape == model.output_shape
    for group in coupled:
        for path in group.paths:
            assert compact.get_layer(path).filters == group.target
    assert compact.count_params() == compact_twin(model, wrapped).count_params()


# ----------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"keep_ratio": 0.0}, "keep_ratio"),
        ({"keep_ratio": 1.5}, "keep_ratio"),
        ({"period_epochs": 0}, "period_epochs"),
        ({"period_epochs": 1.5}, "period_epochs"),
        ({"pull": -0.1}, "pull"),
        ({"pull": 1.1}, "pull"),
        ({"anti_blocking": 1}, "anti_blocking"),
        ({"merge_fraction": 1.0}, "merge_fraction"),
        ({"merge_fraction": -0.1}, "merge_fraction"),
        ({"warmup_epochs": -1}, "warmup_epochs"),
        ({"epochs": 0}, "epochs"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        FilterClustering(**kwargs)


def test_a_depthwise_consumer_is_refused_when_wrapping():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    x = keras.layers.DepthwiseConv2D(3, name="dw")(x)
    model = keras.Model(inputs, keras.layers.Conv2D(4, 1, name="head")(x))
    with pytest.raises(ValueError, match="'dw' \\(DepthwiseConv2D\\) applies a per-channel"):
        tffp.prune_filters(model, FilterClustering(0.5), ignored_layers=["head"])


def test_a_branch_on_an_even_kernel_names_the_layer():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 2, name="even")(inputs)
    model = keras.Model(inputs, keras.layers.Conv2D(4, 1, name="head")(x))
    with pytest.raises(ValueError, match="'even'.*odd kernel size"):
        tffp.prune_filters(model, FilterClustering(0.5), ignored_layers=["head"])
    wrapped = tffp.prune_filters(
        model, FilterClustering(0.5, anti_blocking=False), ignored_layers=["head"]
    )
    assert tffp.strip_filter_pruning(wrapped).get_layer("even").filters == 4
