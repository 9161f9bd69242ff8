"""The tfmot-shaped training API with DCFF: wrap -> fit -> strip, save/resume, errors."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers as L

import tf_filterprune as tffp
from tf_filterprune.methods import dcff


def tiny_data(shape, n=32, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *shape)).astype("float32")
    return x, rng.integers(0, classes, size=(n,)).astype("int32")


def compile_model(model):
    model.compile(
        keras.optimizers.SGD(0.01, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def vgg_sequential():
    return keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            L.Conv2D(16, 3, padding="same", name="c1"),
            L.BatchNormalization(),
            L.ReLU(),
            L.Conv2D(16, 3, padding="same", name="c2"),
            L.BatchNormalization(),
            L.ReLU(),
            L.MaxPooling2D(),
            L.Conv2D(32, 3, padding="same", name="c3"),
            L.BatchNormalization(),
            L.ReLU(),
            L.Flatten(),
            L.Dense(10, name="fc"),
        ]
    )


def fit_and_strip(model, shape, epochs=2, **kwargs):
    wrapped = compile_model(tffp.prune_filters(model, tffp.DCFF(keep_ratio=0.5), **kwargs))
    x, y = tiny_data(shape)
    wrapped.fit(
        x, y, batch_size=8, epochs=epochs, verbose=0,
        callbacks=[tffp.callbacks.UpdateFilterPruning()],
    )  # fmt: skip
    compact, diff = tffp.strip_filter_pruning(wrapped, verify_data=x[:8])
    assert diff <= 1e-4, diff
    assert not any(isinstance(layer, tffp.FilterPruningWrapper) for layer in compact.layers)
    return wrapped, compact


def test_vgg_sequential_wrap_fit_strip():
    model = vgg_sequential()
    wrapped, compact = fit_and_strip(model, (16, 16, 3))
    assert [compact.get_layer(n).filters for n in ("c1", "c2", "c3")] == [8, 8, 16]
    assert compact.get_layer("fc").kernel.shape == (8 * 8 * 16, 10)
    assert model.get_layer("c1").filters == 16  # the input model is untouched
    temperatures = [float(w.temperature.numpy()) for w in tffp.methods.base.wrappers_of(wrapped)]
    assert all(t > 1.0 for t in temperatures)


def test_resnet20_wrap_fit_strip():
    model = tffp.models.resnet20()
    wrapped, compact = fit_and_strip(model, (32, 32, 3), epochs=1)
    assert compact.get_layer("block1_1_conv1").filters == 8
    assert compact.get_layer("block1_1_conv2").filters == 16  # the residual stream stays
    assert compact.get_layer("block3_3_conv1").filters == 32


def test_keras_application_wrap_fit_strip():
    model = keras.applications.MobileNetV2(
        weights=None, input_shape=(32, 32, 3), classes=10, alpha=0.35, classifier_activation=None
    )
    wrapped, compact = fit_and_strip(model, (32, 32, 3), epochs=1, round_to=8)
    full = tffp.profile(model).total_macs
    assert tffp.profile(compact).total_macs < full
    for layer in compact.layers:
        if isinstance(layer, L.Conv2D) and not isinstance(layer, L.DepthwiseConv2D):
            original = model.get_layer(layer.name).filters
            assert layer.filters in (original, max(8, int(round(original * 0.5 / 8)) * 8))


def test_per_layer_and_round_to():
    wrapped = tffp.prune_filters(vgg_sequential(), tffp.DCFF(0.5), per_layer={"c3": 0.25})
    widths = {w.name: w.out_channels for w in tffp.methods.base.wrappers_of(wrapped)}
    assert widths == {"c1": 8, "c2": 8, "c3": 8}


def test_save_mid_training_and_resume_is_identical(tmp_path):
    keras.utils.set_random_seed(1)
    x, y = tiny_data((16, 16, 3), n=16)
    wrapped = compile_model(tffp.prune_filters(vgg_sequential(), tffp.DCFF(keep_ratio=0.5)))
    callback = tffp.callbacks.UpdateFilterPruning()
    wrapped.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[callback], shuffle=False)
    path = tmp_path / "wrapped.keras"
    wrapped.save(path)
    with tffp.prune_scope():
        loaded = keras.models.load_model(path)
    for model in (wrapped, loaded):
        model.fit(
            x, y, batch_size=8, epochs=3, initial_epoch=2, verbose=0, shuffle=False,
            callbacks=[tffp.callbacks.UpdateFilterPruning()],
        )  # fmt: skip
    for a, b in zip(wrapped.weights, loaded.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, err_msg=a.path)
    w = tffp.methods.base.wrappers_of(loaded)[0]
    assert int(w.epoch.numpy()) == 2 and int(w.step.numpy()) == 6


def test_loading_without_scope_works_once_registered(tmp_path):
    # Every wrapper, method and schedule registers with Keras' serialization under
    # the "tf_filterprune" package, so importing tf_filterprune is enough to load.
    wrapped = tffp.prune_filters(vgg_sequential(), tffp.DCFF(keep_ratio=0.5))
    path = tmp_path / "wrapped.keras"
    wrapped.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.get_layer("c1"), tffp.FilterPruningWrapper)
    assert loaded.get_layer("c1").method.get_config() == wrapped.get_layer("c1").method.get_config()


def test_stripped_model_loads_without_custom_objects(tmp_path):
    _, compact = fit_and_strip(vgg_sequential(), (16, 16, 3), epochs=1)
    compact.save(tmp_path / "compact.keras")
    keras.models.load_model(tmp_path / "compact.keras")


def test_inside_clone_model_clone_function():
    model = vgg_sequential()
    method = tffp.DCFF(keep_ratio=0.5)

    def clone_function(layer):
        if isinstance(layer, L.Conv2D):
            return tffp.prune_filters(layer.__class__.from_config(layer.get_config()), method)
        return layer.__class__.from_config(layer.get_config())

    wrapped = keras.models.clone_model(model, clone_function=clone_function)
    widths = [w.out_channels for w in tffp.methods.base.wrappers_of(wrapped)]
    assert widths == [8, 8, 16]  # pruned at wrap time: the clone's next layers build narrow
    assert wrapped.get_layer("fc").kernel.shape == (8 * 8 * 16, 10)
    compile_model(wrapped)
    x, y = tiny_data((16, 16, 3), n=8)
    wrapped.fit(x, y, epochs=1, verbose=0, callbacks=[tffp.callbacks.UpdateFilterPruning()])
    compact, diff = tffp.strip_filter_pruning(wrapped, verify_data=x)
    assert diff <= 1e-4
    assert [compact.get_layer(n).filters for n in ("c1", "c2", "c3")] == [8, 8, 16]


def test_fit_without_callback_raises():
    wrapped = compile_model(tffp.prune_filters(vgg_sequential(), tffp.DCFF(keep_ratio=0.5)))
    x, y = tiny_data((16, 16, 3), n=8)
    with pytest.raises(tf.errors.InvalidArgumentError, match="UpdateFilterPruning"):
        wrapped.fit(x, y, epochs=1, verbose=0)


@pytest.mark.parametrize("ratio", [0.0, 1.5, -1])
def test_bad_keep_ratio(ratio):
    with pytest.raises(ValueError, match="keep_ratio"):
        tffp.DCFF(keep_ratio=ratio)


def test_config_round_trips():
    method = tffp.DCFF(
        keep_ratio=0.3,
        temperature=tffp.schedules.SigmoidTemperature(10, t_end=50),
        updates_per_epoch=4,
    )
    again = tffp.DCFF.from_config(method.get_config())
    assert (
        again.keep_ratio == 0.3
        and again.updates_per_epoch == 4
        and again.temperature.get_config() == method.temperature.get_config()
    )
    wrapper = tffp.FilterPruningWrapper(L.Conv2D(8, 3, name="c"), method, out_channels=3)
    clone = tffp.FilterPruningWrapper.from_config(wrapper.get_config())
    assert clone.out_channels == 3 and clone.method.keep_ratio == 0.3
    assert clone.layer.get_config() == wrapper.layer.get_config()


def test_temperature_schedule_endpoints():
    schedule = tffp.schedules.SigmoidTemperature(total_epochs=20)
    assert schedule(0) == pytest.approx(1.0)
    assert schedule(20) == pytest.approx(1e4)
    values = [schedule(e) for e in range(21)]
    assert values == sorted(values)


def test_paced_temperature_reads_the_reference_run_at_the_same_fraction():
    paper = tffp.schedules.SigmoidTemperature(total_epochs=300)
    paced = tffp.schedules.SigmoidTemperature(reference_epochs=300)
    for fraction in (0.0, 0.002, 0.01, 0.5, 1.0):
        assert paced(5 * fraction, total_epochs=5) == pytest.approx(paper(300 * fraction))
    assert paced(0.1, total_epochs=5) > 0.99e4  # the paper's soft phase ends within 1/50
    clone = tffp.schedules.SigmoidTemperature.from_config(paced.get_config())
    assert clone.reference_epochs == 300 and clone(1, total_epochs=5) == paced(1, total_epochs=5)
    with pytest.raises(ValueError, match="reference_epochs"):
        tffp.schedules.SigmoidTemperature(reference_epochs=0)


def test_paced_dcff_spreads_the_reference_updates_over_the_run():
    method = tffp.DCFF.paced(epochs=5, keep_ratio=0.4)
    assert (method.updates_per_epoch, method.keep_ratio) == (60, 0.4)
    assert method.temperature(0.1, 5) == pytest.approx(
        tffp.schedules.SigmoidTemperature(total_epochs=300)(6)
    )
    clone = tffp.DCFF.from_config(method.get_config())
    assert clone.updates_per_epoch == 60 and clone.temperature.reference_epochs == 300
    assert tffp.DCFF.paced(epochs=1000).updates_per_epoch == 1
    with pytest.raises(ValueError, match="epochs"):
        tffp.DCFF.paced(epochs=0)


def test_selection_stays_finite_and_changes_when_filters_change():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 3, 4, 16))
    for temperature in (1.0, 1e2, 1e4):
        probs, log_probs = dcff.coding_distributions(dcff.filter_distances(kernel), temperature)
        assert np.isfinite(dcff.kl_scores(probs, log_probs)).all()
    first, p_sel = dcff.select_filters(kernel, 8, 1e4)
    np.testing.assert_allclose(p_sel.sum(axis=1), 1.0, rtol=1e-5)
    assert np.allclose(p_sel[np.arange(8), first], 1.0, atol=1e-3)  # one-hot at high T
    changed = kernel.copy()
    changed[..., first] *= 1e-3  # the selected filters become near-duplicates of each other
    second, _ = dcff.select_filters(changed, 8, 1e4)
    assert not np.array_equal(first, second)


def test_summaries_callback_writes_events(tmp_path):
    wrapped = compile_model(tffp.prune_filters(vgg_sequential(), tffp.DCFF(keep_ratio=0.5)))
    x, y = tiny_data((16, 16, 3), n=8)
    wrapped.fit(
        x, y, epochs=2, verbose=0,
        callbacks=[
            tffp.callbacks.UpdateFilterPruning(),
            tffp.callbacks.FilterPruningSummaries(str(tmp_path)),
        ],
    )  # fmt: skip
    events = list(tmp_path.glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    tags = set()
    for event in tf.compat.v1.train.summary_iterator(str(events[0])):
        tags.update(value.tag for value in event.summary.value)
    assert {"c1/kept_width", "c1/temperature", "c1/fusion_max"} <= tags


def test_update_callback_needs_wrappers():
    model = compile_model(vgg_sequential())
    x, y = tiny_data((16, 16, 3), n=8)
    with pytest.raises(ValueError, match="no filter-pruning wrapper"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[tffp.callbacks.UpdateFilterPruning()])


def test_mirrored_strategy_two_replicas(two_replicas):
    with two_replicas.scope():
        method = tffp.DCFF(keep_ratio=0.5, updates_per_epoch=2)
        wrapped = compile_model(tffp.prune_filters(vgg_sequential(), method))
    assert two_replicas.num_replicas_in_sync == 2
    x, y = tiny_data((16, 16, 3), n=32)
    wrapped.fit(
        x, y, batch_size=8, epochs=2, verbose=0, callbacks=[tffp.callbacks.UpdateFilterPruning()]
    )
    for wrapper in tffp.methods.base.wrappers_of(wrapped):
        for variable in (
            wrapper.fusion,
            wrapper.selected,
            wrapper.temperature,
            wrapper.layer.kernel,
        ):
            first, *others = [v.numpy() for v in variable.value.values]
            assert others, "the variable should be mirrored on two replicas"
            for other in others:
                np.testing.assert_array_equal(first, other)
    _, diff = tffp.strip_filter_pruning(wrapped, verify_data=x[:4])
    assert diff <= 1e-4


def test_mixed_float16_trains_and_strips_exactly():
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        wrapped = compile_model(tffp.prune_filters(vgg_sequential(), tffp.DCFF(keep_ratio=0.5)))
        x, y = tiny_data((16, 16, 3), n=16)
        wrapped.fit(x, y, epochs=1, verbose=0, callbacks=[tffp.callbacks.UpdateFilterPruning()])
        wrapper = tffp.methods.base.wrappers_of(wrapped)[0]
        assert wrapper.fusion.dtype == "float32" and wrapper.compute_dtype == "float16"
        compact, diff = tffp.strip_filter_pruning(wrapped, verify_data=x[:4])
        assert diff <= 1e-2  # float16 compute on both sides
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def test_profile_counts_wrapped_convs_at_their_width():
    model = tffp.models.fashion_cnn()
    wrapped = tffp.prune_filters(model, tffp.DCFF(keep_ratio=0.5))
    compact = tffp.strip_filter_pruning(wrapped)
    assert tffp.profile(wrapped).total_macs == tffp.profile(compact).total_macs
    full = tffp.prune_filters(model, tffp.DPFPS(0.5))
    assert tffp.profile(full).total_macs == tffp.profile(model).total_macs


def test_custom_objects_come_from_the_keras_registry():
    objects = tffp.custom_objects()
    for name in ("FilterPruningWrapper", "DCFF", "DPFPS", "SigmoidTemperature"):
        assert objects[name] is getattr(tffp, name, None) or name == "SigmoidTemperature"
    assert objects["SigmoidTemperature"] is tffp.schedules.SigmoidTemperature


def test_strip_re_estimates_batchnorm_on_calibration_data():
    wrapped = compile_model(tffp.prune_filters(vgg_sequential(), tffp.DCFF(keep_ratio=0.5)))
    x, y = tiny_data((16, 16, 3), n=32)
    wrapped.fit(x, y, epochs=1, verbose=0, callbacks=[tffp.callbacks.UpdateFilterPruning()])
    plain = tffp.strip_filter_pruning(wrapped)
    calibrated = tffp.strip_filter_pruning(wrapped, calibration_data=x, calibration_steps=2)
    before = plain.get_layer(index=1).moving_mean.numpy()
    after = calibrated.get_layer(index=1).moving_mean.numpy()
    reference = tffp.recalibrate_batchnorm(plain, x, steps=2).get_layer(index=1).moving_mean
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, reference.numpy(), rtol=1e-5, atol=1e-6)


def test_target_macs_reduction_allocates_wrapped_widths():
    model = tffp.models.fashion_cnn()
    wrapped = tffp.prune_filters(model, tffp.DCFF(), target_macs_reduction=0.5, round_to=8)
    ratio = (
        tffp.profile(tffp.strip_filter_pruning(wrapped)).total_macs / tffp.profile(model).total_macs
    )
    assert 0.42 <= ratio <= 0.5
    with pytest.raises(ValueError, match="target_macs_reduction"):
        tffp.prune_filters(model, tffp.DCFF(), target_macs_reduction=1.2)


class StepRecordingDCFF(tffp.DCFF):
    seen: list = []

    def has_step_updates(self):
        return True

    def layer_step_end(self, wrapper, progress):
        step = int(wrapper.step.numpy())
        StepRecordingDCFF.seen.append((wrapper.name, step, progress.epoch_fraction))


def test_per_step_hook_sees_the_graph_step_counter():
    StepRecordingDCFF.seen = []
    wrapped = compile_model(tffp.prune_filters(vgg_sequential(), StepRecordingDCFF(0.5)))
    x, y = tiny_data((16, 16, 3), n=16)
    wrapped.fit(
        x, y, batch_size=8, epochs=2, verbose=0, callbacks=[tffp.callbacks.UpdateFilterPruning()]
    )
    seen = [(step, fraction) for name, step, fraction in StepRecordingDCFF.seen if name == "c1"]
    assert seen == [(1, 0.5), (2, 1.0), (3, 1.5), (4, 2.0)]
    assert not tffp.DCFF().has_step_updates()


def test_updates_within_the_epoch_use_the_fractional_epoch():
    schedule = tffp.schedules.SigmoidTemperature(total_epochs=2)
    method = tffp.DCFF(0.5, temperature=schedule, updates_per_epoch=4)
    assert method.has_step_updates()
    wrapped = compile_model(tffp.prune_filters(vgg_sequential(), method))
    x, y = tiny_data((16, 16, 3), n=64)  # 8 steps per epoch: updates after steps 2, 4, 6
    kernels = {}

    class KernelAfterUpdates(keras.callbacks.Callback):  # runs after UpdateFilterPruning
        def on_train_batch_end(self, batch, logs=None):
            kernels[batch] = wrapped.get_layer("c1").layer.kernel.numpy()

    wrapped.fit(
        x, y, batch_size=8, epochs=1, verbose=0, shuffle=False,
        callbacks=[tffp.callbacks.UpdateFilterPruning(), KernelAfterUpdates()],
    )  # fmt: skip
    c1 = wrapped.get_layer("c1")
    assert float(c1.temperature.numpy()) == pytest.approx(schedule(0.75), rel=1e-6)
    # the last update ran after step 6 of 8, on the kernel as it was then
    expected, p_sel = dcff.select_filters(kernels[5], 8, schedule(0.75))
    np.testing.assert_array_equal(c1.selected.numpy(), expected)
    np.testing.assert_allclose(c1.fusion.numpy(), p_sel, rtol=1e-5, atol=1e-6)
    assert not np.allclose(kernels[5], kernels[7])  # steps 7 and 8 trained on, unselected
    compact, diff = tffp.strip_filter_pruning(wrapped, verify_data=x[:8])
    assert diff <= 1e-4


@pytest.mark.parametrize("value", [0, -1, 1.5])
def test_bad_updates_per_epoch(value):
    with pytest.raises(ValueError, match="updates_per_epoch"):
        tffp.DCFF(updates_per_epoch=value)


def test_updates_within_the_epoch_need_its_length():
    wrapped = compile_model(
        tffp.prune_filters(vgg_sequential(), tffp.DCFF(0.5, updates_per_epoch=2))
    )
    x, y = tiny_data((16, 16, 3), n=16)
    unknown_length = tf.data.Dataset.from_tensor_slices((x, y)).filter(lambda a, b: True).batch(8)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        wrapped.fit(
            unknown_length,
            epochs=1,
            verbose=0,
            shuffle=False,
            callbacks=[tffp.callbacks.UpdateFilterPruning()],
        )


def test_strip_without_calibration_says_to_re_estimate_batchnorm(monkeypatch):
    monkeypatch.setattr(tffp.strip, "_WARNED", [])
    wrapped = tffp.prune_filters(vgg_sequential(), tffp.DCFF(keep_ratio=0.5))
    with pytest.warns(UserWarning, match="recalibrate_batchnorm"):
        tffp.strip_filter_pruning(wrapped)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per process; calibration: never
        tffp.strip_filter_pruning(wrapped)
        monkeypatch.setattr(tffp.strip, "_WARNED", [])
        tffp.strip_filter_pruning(wrapped, calibration_data=np.zeros((4, 16, 16, 3), "float32"))
