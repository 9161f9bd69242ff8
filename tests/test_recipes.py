"""tffp.prune_and_finetune: the two-stage recipe (method, strip, fine-tune) in one call."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import tf_filterprune as tffp
from tests.helpers import compiled, small_cnn, tiny_data
from tf_filterprune.methods.fcf import gate_gap


def _data(n=32, batch=8):
    x, y = tiny_data(n=n)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


def _compile(calls):
    def compile_fn(model, steps):
        calls.append((model.name, steps))
        compiled(model)

    return compile_fn


def test_fcf_two_stage_gives_k_filters_and_leaves_the_model_alone():
    model = small_cnn(padding="valid")  # a removed channel's constant folds exactly
    before = [w.copy() for w in model.get_weights()]
    calls, seen = [], []
    result = tffp.prune_and_finetune(
        model,
        tffp.FCF.paced(epochs=8),
        _data(batch=4),
        method_epochs=8,
        finetune_epochs=1,
        compile_fn=_compile(calls),
        verify_data=tiny_data(n=4, seed=1)[0],
        after_strip=lambda compact: seen.append(compact) or "evaluated",
        verbose=0,
    )
    assert [steps for _, steps in calls] == [64, 8]  # 8 batches per epoch, per phase
    assert [result.model.get_layer(f"conv{i}").filters for i in (1, 2, 3)] == [4, 8, 8]
    assert seen == [result.model] and result.after_strip == "evaluated"
    assert sorted(result.histories) == ["finetune", "method"]
    for wrapper in tffp.methods.base.wrappers_of(result.wrapped):
        assert gate_gap(wrapper.fcf_gate) <= 1e-3
    assert result.strip_difference <= 1e-4 and not result.notes  # binary gates: exact
    for got, want in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(got, want)
    assert not tffp.methods.base.wrappers_of(model)


def test_no_finetune_phase_and_prune_filters_arguments_pass_through():
    result = tffp.prune_and_finetune(
        small_cnn(),
        tffp.FCF.paced(epochs=1),
        _data(),
        method_epochs=1,
        finetune_epochs=0,
        compile_fn=_compile([]),
        per_layer={"conv1": 0.25},
        ignored_layers=("conv3",),
        verbose=0,
    )
    assert list(result.histories) == ["method"]
    assert result.model.get_layer("conv1").filters == 2
    assert result.model.get_layer("conv3").filters == 16
    assert result.strip_difference is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method_epochs=0, finetune_epochs=1), "method_epochs must be an int >= 1"),
        (dict(method_epochs=1, finetune_epochs=-1), "finetune_epochs must be an int >= 0"),
        (dict(method_epochs=1.5, finetune_epochs=1), "method_epochs"),
    ],
)
def test_bad_epochs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tffp.prune_and_finetune(small_cnn(), tffp.FCF(), _data(), compile_fn=_compile([]), **kwargs)


def test_a_dataset_of_unknown_length_needs_steps_per_epoch():
    endless = _data().repeat()
    with pytest.raises(ValueError, match="pass steps_per_epoch"):
        tffp.prune_and_finetune(
            small_cnn(), tffp.FCF(), endless, method_epochs=1, finetune_epochs=0,
            compile_fn=_compile([]),
        )  # fmt: skip
    calls = []
    tffp.prune_and_finetune(
        small_cnn(), tffp.FCF.paced(1), endless, method_epochs=1, finetune_epochs=1,
        steps_per_epoch=2, compile_fn=_compile(calls), verbose=0,
    )  # fmt: skip
    assert [steps for _, steps in calls] == [2, 2]
    with pytest.raises(ValueError, match="tf.data.Dataset"):
        tffp.prune_and_finetune(
            small_cnn(), tffp.FCF(), tiny_data(), method_epochs=1, finetune_epochs=0,
            compile_fn=_compile([]),
        )  # fmt: skip
