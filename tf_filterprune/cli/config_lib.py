"""The experiment configs of ``configs/`` (ml_collections): structure, checks, and what they build.

Every file of ``configs/`` is a Python file whose ``get_config()`` returns an
``ml_collections.ConfigDict`` started from :func:`base_config`, so all experiments
share one structure (every field below exists in every config):

* ``paper`` / ``note``: the table row the config reproduces, and the choices of ours.
* ``model``: ``name`` (a function of ``tffp.models``, e.g. ``resnet56``, or
  ``keras.applications.<Name>``, e.g. ``keras.applications.ResNet50``, built with
  ``weights=None`` and logits out) and ``kwargs`` passed to it.
* ``dataset``: ``name`` (``fashion_mnist``: the local IDX files of ``tffp.data``; else a
  tensorflow-datasets name: ``cifar10``, ``cifar100``, ``imagenet2012``), ``train_split``,
  ``eval_split``, ``shuffle_buffer`` (tfds datasets).
* ``image_size``: None for the dataset's own (28, 32 or 224); an int resizes the images
  and builds the model at that input size (the tests run ImageNet configs at 32).
* ``method``: ``name`` (``DCFF``, ``DPFPS``, ``FCF``, ``FilterClustering``), ``factory``
  (None for the constructor, ``paced`` for ``DCFF.paced`` / ``FCF.paced`` over
  ``training.epochs``) and ``kwargs`` of the constructor (a ``temperature`` dict of
  DCFF's is the arguments of ``tffp.schedules.SigmoidTemperature``).
* ``pruning``: ``prune_rates`` (a paper's per-layer tuple, in ``tffp.wrappable_layers``
  order; tuples, not lists, so that ``--config.pruning.prune_rates='(0.5, 0.4)'`` works) or ``target_macs_reduction`` (allocated by ``prune_filters``, or by the method
  itself when its constructor takes it: DPFPS) or ``keep_ratio``; ``round_to``,
  ``prune_residual``, ``ignored_layers``, ``min_filters``.
* ``training``: ``epochs``, ``batch_size``, ``optimizer`` (``sgd`` / ``adam``), ``lr``,
  ``schedule`` (``step`` with ``lr_milestones`` and ``lr_gamma``, ``cosine`` down to
  ``lr_final_fraction`` of ``lr``, or ``constant``), ``momentum``, ``nesterov``,
  ``weight_decay`` and ``weight_decay_style`` (see :func:`make_optimizer`).
* ``steps_per_epoch`` / ``eval_steps``: None for the full splits; ints for a quick run.
* ``eval_batch_size``, ``bn_steps`` (training batches re-estimating the compact model's
  BN statistics before the final evaluation; 0: none), ``seed``, ``init_weights``
  (a ``.keras`` / ``.weights.h5`` of the dense model to start from; None: random init).

Example:

>>> from tf_filterprune.cli import config_lib
>>> config = config_lib.base_config()
>>> config.model.name, config.training.optimizer, config.steps_per_epoch
('resnet56', 'sgd', None)
>>> config_lib.check_config(config)
>>> config.method.name = "Magic"
>>> try:
...     config_lib.check_config(config)
... except config_lib.CliError as error:
...     print(error)
--config.method.name: unknown method 'Magic'; choose one of DCFF, DPFPS, FCF, FilterClustering
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import os
from dataclasses import dataclass
from typing import Any

import ml_collections
from ml_collections import config_dict

from tf_filterprune.cli.common import CliError, UsageError

METHODS = ("DCFF", "DPFPS", "FCF", "FilterClustering")
"""The training-time methods a config may name (classes of ``tffp``)."""

FACTORIES = ("paced",)
"""``method.factory`` values besides None: classmethods taking ``epochs`` first."""

KERAS_APPLICATIONS = "keras.applications."
"""Prefix of ``model.name`` for a ``keras.applications`` model (ImageNet shapes)."""

LOCAL_FASHION_MNIST = "fashion_mnist"
"""``dataset.name`` read from the local IDX files by ``tffp.data`` (no tfds)."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know of a dataset."""

    num_classes: int
    channels: int
    image_size: int


DATASETS = {
    "fashion_mnist": DatasetInfo(10, 1, 28),
    "mnist": DatasetInfo(10, 1, 28),
    "cifar10": DatasetInfo(10, 3, 32),
    "cifar100": DatasetInfo(100, 3, 32),
    "imagenet2012": DatasetInfo(1000, 3, 224),
}
"""The datasets a config may name (``fashion_mnist``: local IDX files; others: tfds)."""

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("step", "cosine", "constant")
WEIGHT_DECAY_STYLES = ("pytorch", "keras")


def base_config() -> ml_collections.ConfigDict:
    """The shared structure with defaults (a CIFAR-10 ResNet-56 DCFF run, SGD 300 epochs)."""
    return ml_collections.ConfigDict(
        {
            "paper": "",
            "note": "",
            "model": {"name": "resnet56", "kwargs": {}},
            "dataset": {
                "name": "cifar10",
                "train_split": "train",
                "eval_split": "test",
                "shuffle_buffer": 10000,
            },
            "image_size": config_dict.placeholder(int),
            "method": {"name": "DCFF", "factory": config_dict.placeholder(str), "kwargs": {}},
            "pruning": {
                "prune_rates": config_dict.placeholder(tuple),
                "target_macs_reduction": config_dict.placeholder(float),
                "keep_ratio": config_dict.placeholder(float),
                "round_to": 1,
                "prune_residual": False,
                "ignored_layers": (),
                "min_filters": 1,
            },
            "training": {
                "epochs": 300,
                "batch_size": 256,
                "optimizer": "sgd",
                "lr": 0.1,
                "schedule": "step",
                "lr_milestones": (150, 225),
                "lr_gamma": 0.1,
                "lr_final_fraction": 0.01,
                "momentum": 0.9,
                "nesterov": False,
                "weight_decay": 5e-4,
                "weight_decay_style": "pytorch",
            },
            "steps_per_epoch": config_dict.placeholder(int),
            "eval_steps": config_dict.placeholder(int),
            "eval_batch_size": 256,
            "bn_steps": 0,
            "seed": 0,
            "init_weights": config_dict.placeholder(str),
        }
    )


FASHION_PROTOCOL_NOTE = (
    "tffp.models.fashion_cnn() from scratch, 50% fewer MACs, round_to 16 and conv1 kept "
    "whole (the headline setting), Adam lr 2e-3 with a cosine decay to 1%, batch 128, "
    "5 epochs, no weight decay; the compact model's BN statistics re-estimated on 50 "
    "training batches before the evaluation on the test split."
)


def fashion_benchmark_config(
    method: str, row: str, *, factory: str | None = None, **kwargs: Any
) -> ml_collections.ConfigDict:
    """The benchmark protocol on Fashion-MNIST (``tools/benchmark.py``) with one method.

    Args:
        method: the method's class name in ``tffp`` (``"DCFF"``, ``"DPFPS"``...).
        row: what the benchmark row does, for the config's ``note``.
        factory: ``"paced"`` for ``DCFF.paced`` / ``FCF.paced``, else the constructor.
        **kwargs: the method's keyword arguments.

    Example:

    >>> config = fashion_benchmark_config("DPFPS", "dpfps", lam=30.0)
    >>> config.method.name, config.training.epochs, config.pruning.round_to
    ('DPFPS', 5, 16)
    """
    config = base_config()
    config.paper = "tools/benchmark.py protocol (ALGORITHMS.md, How we compare): not a paper table"
    config.note = f"The benchmark's row {row}: {FASHION_PROTOCOL_NOTE}"
    config.model.name = "fashion_cnn"
    config.dataset.name = "fashion_mnist"
    config.method.name = method
    if factory is not None:
        config.method.factory = factory
    config.method.kwargs = dict(kwargs)
    config.pruning.target_macs_reduction = 0.5
    config.pruning.round_to = 16
    config.pruning.ignored_layers = ("conv1",)
    training = config.training
    training.epochs, training.batch_size, training.optimizer = 5, 128, "adam"
    training.lr, training.schedule, training.lr_final_fraction = 2e-3, "cosine", 0.01
    training.momentum, training.weight_decay, training.weight_decay_style = 0.0, 0.0, "keras"
    config.bn_steps = 50
    return config


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """``get_config()`` of the Python config file at ``path`` (outside absl flags).

    Raises:
        UsageError: no such file, or no ``get_config`` in it.
    """
    if not path or not os.path.isfile(path):
        raise UsageError(f"--config: no such config file: {path}")
    spec = importlib.util.spec_from_file_location("_tffp_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise UsageError(f"--config {path}: the file has no get_config() function")
    return module.get_config()


# --------------------------------------------------------------------------- #
# Checks: every mistake is a CliError / UsageError naming the field and the choices
# --------------------------------------------------------------------------- #


def _choice(field: str, value: Any, choices: tuple[str, ...] | list[str], what: str) -> None:
    if value not in choices:
        raise CliError(
            f"--config.{field}: unknown {what} {value!r}; choose one of {', '.join(choices)}"
        )


def model_names() -> list[str]:
    """The ``model.name`` choices: functions of ``tffp.models`` (and keras.applications.*)."""
    import tf_filterprune as tffp

    return sorted(tffp.models.__all__)


def _ratio(field: str, value: float | None, *, low: float, high: float, closed_high: bool) -> None:
    if value is None:
        return
    ok = (
        isinstance(value, int | float)
        and low < value
        and (value <= high if closed_high else value < high)
    )
    if not ok:
        bounds = f"({low:g}, {high:g}{']' if closed_high else ')'}"
        raise UsageError(f"--config.{field} must be in {bounds}, got {value}")


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises :class:`CliError` (or :class:`UsageError`) on one line for a bad config."""
    name = config.model.name
    if name.startswith(KERAS_APPLICATIONS):
        import keras

        if not callable(getattr(keras.applications, name[len(KERAS_APPLICATIONS) :], None)):
            raise CliError(
                f"--config.model.name: keras.applications has no model {name!r} (e.g. "
                "keras.applications.ResNet50)"
            )
    else:
        _choice(
            "model.name",
            name,
            [*model_names(), "keras.applications.<Name>"],
            "model",
        )
    _choice("dataset.name", config.dataset.name, tuple(DATASETS), "dataset")
    _choice("method.name", config.method.name, METHODS, "method")
    if config.method.factory is not None:
        _choice("method.factory", config.method.factory, FACTORIES, "factory")
    training = config.training
    _choice("training.optimizer", training.optimizer, OPTIMIZERS, "optimizer")
    _choice("training.schedule", training.schedule, SCHEDULES, "schedule")
    _choice(
        "training.weight_decay_style",
        training.weight_decay_style,
        WEIGHT_DECAY_STYLES,
        "weight decay style",
    )
    pruning = config.pruning
    budgets = [
        key
        for key in ("prune_rates", "target_macs_reduction", "keep_ratio")
        if pruning[key] is not None
    ]
    if len(budgets) > 1:
        raise UsageError(
            f"--config.pruning: give one of prune_rates, target_macs_reduction and keep_ratio, "
            f"got {', '.join(budgets)}"
        )
    _ratio(
        "pruning.target_macs_reduction",
        pruning.target_macs_reduction,
        low=0.0,
        high=1.0,
        closed_high=False,
    )
    _ratio("pruning.keep_ratio", pruning.keep_ratio, low=0.0, high=1.0, closed_high=True)
    for i, rate in enumerate(pruning.prune_rates or ()):
        if not (isinstance(rate, int | float) and 0.0 <= rate < 1.0):
            raise UsageError(f"--config.pruning.prune_rates[{i}] must be in [0, 1), got {rate}")
    for field, value in (
        ("training.epochs", training.epochs),
        ("training.batch_size", training.batch_size),
        ("eval_batch_size", config.eval_batch_size),
        ("steps_per_epoch", config.steps_per_epoch),
        ("eval_steps", config.eval_steps),
        ("image_size", config.image_size),
    ):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise UsageError(f"--config.{field} must be a positive integer, got {value}")
    if not (isinstance(training.lr, int | float) and training.lr > 0):
        raise UsageError(f"--config.training.lr must be > 0, got {training.lr}")
    if not 0.0 <= training.momentum < 1.0:
        raise UsageError(f"--config.training.momentum must be in [0, 1), got {training.momentum}")
    if training.weight_decay < 0:
        raise UsageError(
            f"--config.training.weight_decay must be >= 0, got {training.weight_decay}"
        )
    if config.bn_steps < 0:
        raise UsageError(f"--config.bn_steps must be >= 0, got {config.bn_steps}")


# --------------------------------------------------------------------------- #
# What a config builds
# --------------------------------------------------------------------------- #


def dataset_info(config: ml_collections.ConfigDict) -> DatasetInfo:
    """Classes, channels and image side of the config's dataset (``image_size`` applied)."""
    info = DATASETS[config.dataset.name]
    if config.image_size is not None:
        info = DatasetInfo(info.num_classes, info.channels, int(config.image_size))
    return info


def build_model(config: ml_collections.ConfigDict):
    """The dense model of ``config.model`` at the dataset's input shape, outputting logits."""
    import keras

    import tf_filterprune as tffp

    info = dataset_info(config)
    shape = (info.image_size, info.image_size, info.channels)
    kwargs = dict(config.model.kwargs)
    name = config.model.name
    if name.startswith(KERAS_APPLICATIONS):
        builder = getattr(keras.applications, name[len(KERAS_APPLICATIONS) :])
        kwargs = {"weights": None, "classifier_activation": None, **kwargs}
        model = builder(input_shape=shape, classes=info.num_classes, **kwargs)
    else:
        model = getattr(tffp.models, name)(
            num_classes=info.num_classes, input_shape=shape, **kwargs
        )
    if config.init_weights:
        path = config.init_weights
        if not os.path.exists(path):
            raise UsageError(f"--config.init_weights: no such file: {path}")
        if path.endswith(".keras"):
            model.set_weights(keras.models.load_model(path, compile=False).get_weights())
        else:
            model.load_weights(path)
    return model


def _takes(cls: type, argument: str) -> bool:
    return argument in inspect.signature(cls.__init__).parameters


def build_method(config: ml_collections.ConfigDict):
    """The ``tffp`` method object of ``config.method`` (and the pruning target it takes)."""
    import tf_filterprune as tffp

    cls = getattr(tffp, config.method.name)
    kwargs = config.method.kwargs.to_dict()
    temperature = kwargs.get("temperature")
    if isinstance(temperature, dict) and "class_name" not in temperature:
        kwargs["temperature"] = tffp.schedules.SigmoidTemperature(**temperature)
    pruning = config.pruning
    if pruning.keep_ratio is not None and _takes(cls, "keep_ratio"):
        kwargs.setdefault("keep_ratio", pruning.keep_ratio)
    if allocates_itself(config):
        kwargs["target_macs_reduction"] = pruning.target_macs_reduction
    try:
        if config.method.factory == "paced":
            return cls.paced(int(config.training.epochs), **kwargs)
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise CliError(f"--config.method: {config.method.name}: {error}") from error


def allocates_itself(config: ml_collections.ConfigDict) -> bool:
    """Whether the method takes ``target_macs_reduction`` in its constructor (DPFPS)."""
    import tf_filterprune as tffp

    cls = getattr(tffp, config.method.name)
    return config.pruning.target_macs_reduction is not None and _takes(cls, "target_macs_reduction")


def wrap_kwargs(config: ml_collections.ConfigDict, model) -> dict[str, Any]:
    """Keyword arguments of ``tffp.prune_filters`` for ``model`` (the dense model)."""
    import tf_filterprune as tffp

    pruning = config.pruning
    kwargs: dict[str, Any] = {
        "round_to": pruning.round_to,
        "prune_residual": bool(pruning.prune_residual),
        "ignored_layers": list(pruning.ignored_layers),
        "min_filters": int(pruning.min_filters),
    }
    if pruning.prune_rates is not None:
        try:
            kwargs["per_layer"] = tffp.per_layer_from_rates(model, list(pruning.prune_rates))
        except ValueError as error:
            raise CliError(f"--config.pruning.prune_rates: {error}") from error
    elif pruning.target_macs_reduction is not None and not allocates_itself(config):
        kwargs["target_macs_reduction"] = pruning.target_macs_reduction
    return kwargs


def wrap(config: ml_collections.ConfigDict, model):
    """``tffp.prune_filters(model, method, ...)`` as the config says."""
    import tf_filterprune as tffp

    method = build_method(config)
    try:
        return tffp.prune_filters(model, method, **wrap_kwargs(config, model))
    except ValueError as error:
        raise CliError(f"--config.pruning: {error}") from error


def lr_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int):
    """The learning rate of ``config.training``: a float or a Keras schedule over steps."""
    import keras

    training = config.training
    lr = float(training.lr)
    if training.schedule == "constant":
        return lr
    if training.schedule == "cosine":
        total = max(1, int(training.epochs) * steps_per_epoch)
        return keras.optimizers.schedules.CosineDecay(
            lr, total, alpha=float(training.lr_final_fraction)
        )
    milestones = sorted(int(m) for m in training.lr_milestones)
    if not milestones:
        return lr
    boundaries = [m * steps_per_epoch for m in milestones]
    values = [lr * float(training.lr_gamma) ** i for i in range(len(milestones) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int):
    """The optimizer of ``config.training``.

    Weight decay: Keras optimizers decay decoupled from the gradient
    (``w -= lr * wd * w`` each step); the papers' PyTorch SGD adds ``wd * w`` to the
    gradient, which the momentum then accumulates, a decay ``1 / (1 - momentum)``
    times stronger in the steady state. ``weight_decay_style="pytorch"`` (the paper
    configs) passes ``wd / (1 - momentum)`` to Keras to match it; ``"keras"`` passes
    ``weight_decay`` as it is.
    """
    import keras

    training = config.training
    lr = lr_schedule(config, steps_per_epoch)
    decay = float(training.weight_decay)
    if training.optimizer == "sgd":
        if training.weight_decay_style == "pytorch":
            decay = decay / (1.0 - float(training.momentum))
        return keras.optimizers.SGD(
            lr,
            momentum=float(training.momentum),
            nesterov=bool(training.nesterov),
            weight_decay=decay or None,
        )
    return keras.optimizers.Adam(lr, weight_decay=decay or None)


def steps_of(total_examples: int, batch_size: int, limit: int | None) -> int:
    """Batches per epoch: all of them (the last one partial) or ``limit``."""
    steps = max(1, math.ceil(total_examples / batch_size))
    return min(steps, limit) if limit else steps
