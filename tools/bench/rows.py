"""The rows of the comparison: one registry entry each, in table order.

Adding a training-time method is one entry::

    register(MethodRow("name", lambda config: tffp.SomeMethod(...)))

with ``recipe=pretrain_then_method(method_epochs=...)`` for methods applied to a
pretrained model, ``allocates_itself=True`` for methods that take the MACs target
in their own constructor, and ``default=False`` to keep it out of the default
``--rows`` (the table). Method factories run only when the row runs.
"""

from __future__ import annotations

import math

import keras

import tf_filterprune as tffp
from bench.protocol import (
    Data,
    RowResult,
    compact_architecture,
    evaluate,
    l1_cut,
    reference_model,
    train,
)
from bench.row_types import FunctionRow, MethodRow, Row, from_scratch, pretrain_then_method
from bench.tfmot_row import TfmotRow
from tf_filterprune.methods.base import wrappers_of

__all__ = [
    "DCFF_STEP_UPDATES",
    "DPFPS_LAM",
    "PAPER_EPOCHS",
    "ROWS",
    "default_names",
    "from_scratch",
    "get",
    "method_rows",
    "names",
    "pretrain_then_method",
    "register",
]

DCFF_STEP_UPDATES = 10
"""``updates_per_epoch`` of the ``dcff_steps`` row (and of the experiments built on it)."""

PAPER_EPOCHS = 300
"""Length of the DCFF paper's CIFAR runs, the pace of the ``dcff_paced`` temperature."""

DPFPS_LAM = 30.0
"""DPFPS's ``lam`` in the ``dpfps`` row: ``tau = lr * lam * p`` must outpace Adam's steps of
~lr per weight for the expected-pruned groups to reach exactly zero in 5 epochs at lr 2e-3
(the paper's 0.01 is for SGD at lr 0.1 over hundreds of epochs); measured, README."""

FCF_RAMP = 0.5
"""The ``fcf`` row: FCF from scratch over the run's 5 epochs, rho at rho_max (the gates binary
and decided) at half of them, the rest training the weights under the final mask while
the learning rate decays, then the strip (no fine-tune). Measured against the two-stage
forms in the same protocol: 1 dense + 4 FCF (``fcf_p1m4``, 3 seeds) 0.9154, 2 + 2 + 1
fine-tune (``fcf_p2m2``, seed 0) 0.9144, 3 + 1 + 1 (``fcf_p3m1``, seed 0) 0.9135 (README):
the longer the gates and weights train together, the better."""

FCF_P1M4_PRETRAIN_EPOCHS = 1
"""``fcf_p1m4``: the dense epochs before FCF (the ``fcf`` row until 2026-12-02)."""

DCFF_T_START = 100.0
"""The ``dcff_t100`` experiment's starting temperature (1 in the paper)."""

ROWS: dict[str, Row] = {}
"""Row name -> entry, in table order (the summaries follow it)."""

RESERVED = frozenset({"plain"})
"""Names used elsewhere (``step_time.json`` keys the plain compact model "plain")."""


def register(row: Row) -> Row:
    """Adds ``row`` to the registry (after the others); returns it."""
    if row.name in ROWS or row.name in RESERVED:
        raise ValueError(f"row name {row.name!r} is already taken")
    ROWS[row.name] = row
    return row


def get(name: str) -> Row:
    """The entry of ``name``."""
    try:
        return ROWS[name]
    except KeyError:
        raise ValueError(f"unknown row {name!r}; expected one of {list(ROWS)}") from None


def names() -> tuple[str, ...]:
    """Every registered row, in table order."""
    return tuple(ROWS)


def default_names() -> tuple[str, ...]:
    """The rows run when ``--rows`` is not given."""
    return tuple(name for name, row in ROWS.items() if row.default)


def method_rows(requested: tuple[str, ...]) -> list[MethodRow]:
    """The training-time method rows among ``requested``, in that order."""
    return [row for row in map(get, requested) if isinstance(row, MethodRow)]


# --------------------------------------------------------------------------- #
# Baselines
# --------------------------------------------------------------------------- #


def run_unpruned(data: Data, seed: int) -> RowResult:
    """The dense CNN trained for all epochs."""
    model = reference_model(data.config)
    train(model, data.train(seed), data.config.epochs, data.config)
    return RowResult({"accuracy": evaluate(model, data)}, model=model)


def run_l1_finetune(data: Data, seed: int) -> RowResult:
    """Pretrain, cut once by L1 norm, fine-tune the remaining epochs."""
    config = data.config
    dataset = data.train(seed)
    model = reference_model(data.config)
    train(model, dataset, config.pretrain_epochs, config)
    compact = l1_cut(model, config)
    after_cut = evaluate(compact, data)
    train(compact, dataset, config.epochs - config.pretrain_epochs, config)
    return RowResult(
        {"accuracy": evaluate(compact, data), "accuracy_after_cut": after_cut}, model=compact
    )


def run_scratch(data: Data, seed: int) -> RowResult:
    """The L1 cut's compact architecture, re-initialized and trained for all epochs."""
    model = keras.models.clone_model(compact_architecture(data.config))  # fresh initializers
    train(model, data.train(seed), data.config.epochs, data.config)
    return RowResult({"accuracy": evaluate(model, data)}, model=model)


# --------------------------------------------------------------------------- #
# Experiment helpers
# --------------------------------------------------------------------------- #


def glorot_compact_scale(wrapped: keras.Model) -> None:
    """Scales each wrapped kernel from the full-width conv's Glorot range to the compact one's.

    The wrapped conv keeps all its filters, so a Glorot-style range computed for it
    uses the full fan-out ``kh * kw * filters``; the compact conv it becomes has
    ``kh * kw * out_channels``. Every wrapped kernel is multiplied by
    ``sqrt((fan_in + fan_out_full) / (fan_in + fan_out_compact))``, the ratio of
    the two Glorot limits (the fan-in, of the compact input, is the same).
    """
    for wrapper in wrappers_of(wrapped):
        kernel = wrapper.layer.kernel
        kh, kw, cin, filters = (int(d) for d in kernel.shape)
        fan_in = kh * kw * cin
        scale = math.sqrt((fan_in + kh * kw * filters) / (fan_in + kh * kw * wrapper.out_channels))
        kernel.assign(kernel * scale)


def _dcff_steps(config) -> tffp.DCFF:
    return tffp.DCFF(updates_per_epoch=DCFF_STEP_UPDATES)


# --------------------------------------------------------------------------- #
# The registry
# --------------------------------------------------------------------------- #

register(FunctionRow("unpruned", run_unpruned))
register(FunctionRow("l1_finetune", run_l1_finetune))
register(FunctionRow("scratch", run_scratch))
register(TfmotRow("tfmot"))  # at the compact model's parameter sparsity
register(MethodRow("dcff", lambda config: tffp.DCFF()))
register(MethodRow("dcff_steps", _dcff_steps))
register(
    MethodRow(
        "dcff_paced",
        lambda config: tffp.DCFF.paced(config.epochs, reference_epochs=PAPER_EPOCHS),
    )
)

register(
    MethodRow(
        "dpfps",
        lambda config: tffp.DPFPS(target_macs_reduction=config.macs_reduction, lam=DPFPS_LAM),
        recipe=from_scratch,
        allocates_itself=True,
    )
)

register(
    MethodRow(
        "fcf", lambda config: tffp.FCF.paced(config.epochs, ramp=FCF_RAMP), recipe=from_scratch
    )
)

register(MethodRow("clustering", lambda config: tffp.FilterClustering(epochs=config.epochs)))
register(
    MethodRow(
        "clustering_no_branch",
        lambda config: tffp.FilterClustering(anti_blocking=False, epochs=config.epochs),
    )
)

# Experiments: measured, not adopted (README "Tried and measured, not adopted").
register(MethodRow("dcff_glorot", _dcff_steps, after_wrap=glorot_compact_scale, default=False))
register(
    MethodRow(
        "dcff_t100",
        lambda config: tffp.DCFF(
            updates_per_epoch=DCFF_STEP_UPDATES,
            temperature=tffp.schedules.SigmoidTemperature(t_start=DCFF_T_START),
        ),
        default=False,
    )
)
register(
    MethodRow(
        "dcff_paced_u10",
        lambda config: tffp.DCFF(
            updates_per_epoch=DCFF_STEP_UPDATES,
            temperature=tffp.schedules.SigmoidTemperature(reference_epochs=PAPER_EPOCHS),
        ),
        default=False,
    )
)
register(
    MethodRow(
        "dpfps_lam10",
        lambda config: tffp.DPFPS(target_macs_reduction=config.macs_reduction, lam=10.0),
        allocates_itself=True,
        default=False,
    )
)
register(
    MethodRow(
        "fcf_p3m1",
        lambda config: tffp.FCF.paced(1),
        recipe=pretrain_then_method(1),
        default=False,
    )
)
register(
    MethodRow(
        "fcf_p2m2",
        lambda config: tffp.FCF.paced(2, ramp=0.5),
        recipe=pretrain_then_method(2, pretrain_epochs=2),
        default=False,
    )
)
register(
    MethodRow(
        "fcf_p1m4",
        lambda config: tffp.FCF.paced(config.epochs - FCF_P1M4_PRETRAIN_EPOCHS, ramp=FCF_RAMP),
        recipe=pretrain_then_method(None, pretrain_epochs=FCF_P1M4_PRETRAIN_EPOCHS),
        default=False,
    )
)
register(TfmotRow("tfmot_50", sparsity=0.5, default=False))
register(TfmotRow("tfmot_75", sparsity=0.75, default=False))
