r"""Engine coverage on model zoos: prune_once on every keras.applications CNN.

For each model (``weights=None``, a small input, ``include_top`` with 10
classes; keras_hub image backbones, when keras_hub is installed, get a global
pooling + Dense head): ``tffp.prune_once(model, "l1", keep_ratio=0.6)``, then
check that the output shape is kept, that at least ``--min_macs_cut`` of the
MACs are gone (``tffp.profile``), and that the compact model converts to TFLite.
Each row says ok / weak (fewer MACs cut than asked) / refused (no channel group
can be pruned: a clean refusal with reasons, not a crash) / error, the MACs ratio,
how many channel groups were refused (and the first reason), and the seconds
taken. Writes ``coverage.md`` (a table) and ``coverage.json`` to ``--output_dir``.

Usage:

    .venv/bin/python tools/coverage.py                    # every model (~15-30 min)
    .venv/bin/python tools/coverage.py --models MobileNetV3Small,ConvNeXtTiny
    .venv/bin/python tools/coverage.py --nohub --notflite --output_dir /tmp/coverage

``tests/test_applications_coverage.py`` runs the same :func:`check` on a few
models in CI (all of them with ``TFFP_ALL_APPLICATIONS=1``).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import tf_filterprune as tffp  # noqa: E402
from tf_filterprune.pruner import MacsModel  # noqa: E402

CLASSES = 10
KEEP_RATIO = 0.6
MIN_MACS_CUT = 0.3
# Inputs smaller than the default 32 px are refused by these constructors.
_MIN_SIZE = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71}


@dataclass(frozen=True)
class Spec:
    """A model to check: where it comes from and how to build it."""

    name: str
    source: str  # "keras.applications" or "keras_hub"
    build: Callable[[], keras.Model]
    size: int


@dataclass
class Row:
    """The outcome of one model's check."""

    name: str
    source: str
    size: int
    status: str = "error"  # ok / weak (cut too little) / refused (nothing prunable) / error
    params: int = 0
    macs: int = 0
    compact_macs: int = 0
    macs_ratio: float | None = None
    shape_kept: bool | None = None
    tflite_bytes: int | None = None
    refused_groups: int = 0
    first_refusal: str = ""
    prune_seconds: float | None = None
    seconds: float = 0.0
    error: str = ""


def application_specs() -> list[Spec]:
    """Every model constructor of ``keras.applications`` (all are CNNs), at a small size."""
    specs = []
    for name, build in inspect.getmembers(keras.applications, inspect.isfunction):
        if not name[0].isupper():
            continue
        size = _MIN_SIZE.get(name, 32)
        specs.append(Spec(name, "keras.applications", _application(build, size), size))
    return specs


def _application(build: Callable, size: int) -> Callable[[], keras.Model]:
    return lambda: build(weights=None, input_shape=(size, size, 3), classes=CLASSES)


def hub_specs(size: int = 64) -> list[Spec]:
    """keras_hub CNN image backbones with small configs (none if keras_hub is missing).

    Every CNN image family of keras_hub, built from constructor arguments (random
    weights, no presets), at ``size`` x ``size`` pixels. The families whose convs
    live in custom layers (EfficientNet's MBConv / FusedMBConv blocks, HGNetV2's,
    MobileNet's and MobileNetV5's blocks) are pruned through traced sub-graphs.
    """
    try:
        import keras_hub
    except ImportError:
        return []
    models = keras_hub.models
    configs = {
        "ResNetBackbone_basic": (models.ResNetBackbone, _hub_resnet("basic_block")),
        "ResNetBackbone_bottleneck": (models.ResNetBackbone, _hub_resnet("bottleneck_block")),
        "ResNetBackbone_v2": (models.ResNetBackbone, _hub_resnet("bottleneck_block", True)),
        "ResNetBackbone_vd": (
            models.ResNetBackbone,
            dict(
                _hub_resnet("bottleneck_block_vd"),
                input_conv_filters=[32, 32, 64],
                input_conv_kernel_sizes=[3, 3, 3],
            ),
        ),
        "CSPNetBackbone": (models.CSPNetBackbone, _HUB_CSPNET),
        "DenseNetBackbone": (models.DenseNetBackbone, {"stackwise_num_repeats": [2, 4, 6, 4]}),
        "VGGBackbone": (
            models.VGGBackbone,
            {"stackwise_num_repeats": [2, 2, 3], "stackwise_num_filters": [16, 32, 64]},
        ),
        "XceptionBackbone": (
            models.XceptionBackbone,
            {
                "stackwise_conv_filters": [[32, 64], [64, 128], [256, 256]],
                "stackwise_pooling": [True, True, False],
            },
        ),
        "HGNetV2Backbone": (models.HGNetV2Backbone, _HUB_HGNETV2),
        "MobileNetBackbone": (models.MobileNetBackbone, _HUB_MOBILENET),
        "EfficientNetBackbone": (models.EfficientNetBackbone, _HUB_EFFICIENTNET),
        "EfficientNetBackbone_v1": (models.EfficientNetBackbone, _HUB_EFFICIENTNET_V1),
    }
    if hasattr(models, "MobileNetV5Backbone"):
        configs["MobileNetV5Backbone"] = (models.MobileNetV5Backbone, _HUB_MOBILENETV5)
    return [
        Spec(name, "keras_hub", _hub_classifier(cls, kwargs, size), size)
        for name, (cls, kwargs) in configs.items()
    ]


def _hub_resnet(block_type: str, pre_activation: bool = False) -> dict:
    return {
        "input_conv_filters": [64],
        "input_conv_kernel_sizes": [7],
        "stackwise_num_filters": [64, 64, 64],
        "stackwise_num_blocks": [2, 2, 2],
        "stackwise_num_strides": [1, 2, 2],
        "block_type": block_type,
        "use_pre_activation": pre_activation,
    }


_HUB_CSPNET = {  # keras_hub's own test config
    "stem_filters": 32,
    "stem_kernel_size": 3,
    "stem_strides": 1,
    "stackwise_strides": 2,
    "stackwise_depth": [1, 2, 8],
    "stackwise_num_filters": [16, 24, 48],
    "down_growth": True,
    "bottle_ratio": (0.5, 1.0),
    "block_ratio": (1.0, 0.5),
    "expand_ratio": (2.0, 1.0),
    "block_type": "dark_block",
    "stage_type": "csp",
    "stem_padding": "same",
}
_HUB_HGNETV2 = {  # the docstring example
    "depths": [1, 2, 4],
    "embedding_size": 32,
    "hidden_sizes": [64, 128, 256],
    "stem_channels": [3, 16, 32],
    "hidden_act": "relu",
    "use_learnable_affine_block": False,
    "stackwise_stage_filters": [
        (32, 16, 64, 1, 1, 3),
        (64, 32, 128, 2, 1, 3),
        (128, 64, 256, 4, 1, 3),
    ],
    "apply_downsample": [False, True, True],
    "use_lightweight_conv_block": [False, False, False],
}
_HUB_MOBILENET = {  # the docstring example (MobileNetV3-small-like)
    "stackwise_expansion": [[40, 56], [64, 144, 144], [72, 72], [144, 288, 288]],
    "stackwise_num_blocks": [2, 3, 2, 3],
    "stackwise_num_filters": [[16, 16], [24, 24, 24], [24, 24], [48, 48, 48]],
    "stackwise_kernel_size": [[3, 3], [5, 5, 5], [5, 5], [5, 5, 5]],
    "stackwise_num_strides": [[2, 1], [2, 1, 1], [1, 1], [2, 1, 1]],
    "stackwise_se_ratio": [[None, None], [0.25] * 3, [0.3, 0.3], [0.3, 0.25, 0.25]],
    "stackwise_activation": [["relu", "relu"], ["hard_swish"] * 3, ["hard_swish"] * 2]
    + [["hard_swish"] * 3],
    "stackwise_padding": [[1, 1], [2, 2, 2], [2, 2], [2, 2, 2]],
    "output_num_filters": 288,
    "depthwise_filters": 8,
    "depthwise_stride": 2,
    "depthwise_residual": False,
    "last_layer_filter": 288,
    "input_num_filters": 16,
    "squeeze_and_excite": 0.5,
}
# EfficientNetV2-style: FusedMBConv then MBConv blocks (keras_hub custom layers)
_HUB_EFFICIENTNET = {  # keras_hub's test config, fewer repeats
    "stackwise_kernel_sizes": [3, 3, 3, 3, 3, 3],
    "stackwise_num_repeats": [1, 2, 2, 2, 2, 2],
    "stackwise_input_filters": [24, 24, 48, 64, 128, 160],
    "stackwise_output_filters": [24, 48, 64, 128, 160, 256],
    "stackwise_expansion_ratios": [1, 4, 4, 4, 6, 6],
    "stackwise_squeeze_and_excite_ratios": [0.0, 0.0, 0, 0.25, 0.25, 0.25],
    "stackwise_strides": [1, 2, 2, 2, 1, 2],
    "stackwise_block_types": ["fused"] * 3 + ["unfused"] * 3,
    "width_coefficient": 1.0,
    "depth_coefficient": 1.0,
}
_HUB_EFFICIENTNET_V1 = {  # EfficientNet-B0's stages ("v1" blocks), fewer repeats
    "stackwise_kernel_sizes": [3, 3, 5, 3, 5, 5, 3],
    "stackwise_num_repeats": [1, 1, 1, 2, 1, 2, 1],
    "stackwise_input_filters": [32, 16, 24, 40, 80, 112, 192],
    "stackwise_output_filters": [16, 24, 40, 80, 112, 192, 320],
    "stackwise_expansion_ratios": [1, 6, 6, 6, 6, 6, 6],
    "stackwise_squeeze_and_excite_ratios": [0.25] * 7,
    "stackwise_strides": [1, 2, 2, 2, 1, 2, 1],
    "stackwise_block_types": ["v1"] * 7,
    "width_coefficient": 0.5,
    "depth_coefficient": 1.0,
    "num_features": 320,
}
_HUB_MOBILENETV5 = {  # the docstring example (edge-residual and universal inverted residual)
    "stackwise_block_types": [["er"], ["uir", "uir"]],
    "stackwise_num_blocks": [1, 2],
    "stackwise_num_filters": [[24], [48, 48]],
    "stackwise_strides": [[2], [2, 1]],
    "stackwise_act_layers": [["relu"], ["relu", "relu"]],
    "stackwise_exp_ratios": [[4.0], [6.0, 6.0]],
    "stackwise_se_ratios": [[0.0], [0.0, 0.0]],
    "stackwise_dw_kernel_sizes": [[0], [5, 5]],
    "stackwise_dw_start_kernel_sizes": [[0], [0, 0]],
    "stackwise_dw_end_kernel_sizes": [[0], [0, 0]],
    "stackwise_exp_kernel_sizes": [[3], [0, 0]],
    "stackwise_pw_kernel_sizes": [[1], [0, 0]],
    "stackwise_num_heads": [[0], [0, 0]],
    "stackwise_key_dims": [[0], [0, 0]],
    "stackwise_value_dims": [[0], [0, 0]],
    "stackwise_kv_strides": [[0], [0, 0]],
    "stackwise_use_cpe": [[False], [False, False]],
    "use_msfa": False,
}


def _hub_classifier(cls: type, kwargs: dict, size: int) -> Callable[[], keras.Model]:
    """A backbone (image_shape ``size``) inside Input -> backbone -> pooling -> Dense."""

    def build() -> keras.Model:
        shape_key = "input_shape" if "input_shape" in inspect.signature(cls).parameters else None
        backbone = cls(**kwargs, **{shape_key or "image_shape": (size, size, 3)})
        inputs = keras.Input((size, size, 3), name="image")
        features = backbone(inputs)
        if isinstance(features, list | tuple | dict):
            flat = keras.tree.flatten(features)
            features = min(flat, key=lambda t: t.shape[1])  # the deepest feature map
        x = keras.layers.GlobalAveragePooling2D(name="pool")(features)
        outputs = keras.layers.Dense(CLASSES, name="predictions")(x)
        return keras.Model(inputs, outputs, name=cls.__name__)

    return build


def all_specs(hub: bool = True) -> list[Spec]:
    return application_specs() + (hub_specs() if hub else [])


def spec_by_name(name: str, hub: bool = True) -> Spec:
    for spec in all_specs(hub):
        if spec.name == name:
            return spec
    raise ValueError(f"No model named {name!r}; choose from {[s.name for s in all_specs(hub)]}.")


def check(
    spec: Spec,
    keep_ratio: float = KEEP_RATIO,
    min_macs_cut: float = MIN_MACS_CUT,
    tflite_dir: str | Path | None = None,
) -> Row:
    """Builds, prunes and converts one model; never raises (errors go in the row)."""
    row = Row(spec.name, spec.source, spec.size)
    start = time.perf_counter()
    try:
        _run(spec, row, keep_ratio, tflite_dir)
        cut_enough = row.macs_ratio is not None and row.macs_ratio <= 1.0 - min_macs_cut
        converted = tflite_dir is None or bool(row.tflite_bytes)
        row.status = "ok" if row.shape_kept and cut_enough and converted else "weak"
    except ValueError as err:
        if not str(err).startswith("Nothing in model"):
            _failed(row, err)
        else:  # a clean refusal, with the reasons recorded: not a crash
            row.status = "refused"
    except Exception as err:  # noqa: BLE001 - the report lists every failure
        _failed(row, err)
    row.seconds = round(time.perf_counter() - start, 1)
    keras.backend.clear_session()
    return row


def _failed(row: Row, err: Exception) -> None:
    """Records an unexpected error (a crash) with the end of its traceback."""
    row.status = "error"
    row.error = f"{type(err).__name__}: {err}"[:500]
    row.error += "\n" + "".join(traceback.format_tb(err.__traceback__)[-3:])[-1500:]


def _run(spec: Spec, row: Row, keep_ratio: float, tflite_dir: str | Path | None) -> None:
    model = spec.build()
    row.params = int(model.count_params())
    graph = tffp.build_graph(model)
    # the engine's count sees inside traced custom layers (profile sees one opaque layer)
    row.macs = int(MacsModel(model, graph).total)
    reasons = refusal_reasons(graph)
    row.refused_groups = len(reasons)
    row.first_refusal = reasons[0][:300] if reasons else ""
    began = time.perf_counter()
    compact = tffp.prune_once(model, "l1", keep_ratio=keep_ratio)
    row.prune_seconds = round(time.perf_counter() - began, 1)
    row.compact_macs = int(tffp.profile(compact).total_macs)
    row.macs_ratio = round(row.compact_macs / row.macs, 4)
    row.shape_kept = tuple(compact.output_shape) == tuple(model.output_shape)
    if tflite_dir is not None:
        path = Path(tflite_dir) / f"{spec.name}.tflite"
        row.tflite_bytes = len(tffp.export.to_tflite(compact, str(path)))


def refusal_reasons(graph) -> list[str]:
    """The first reason of each refused channel group that prunable layers produce.

    Groups refused by design (the model's inputs and outputs) are left out; when
    no producing layer's group is refused, the groups made by unknown layers
    (outputs of composite custom layers, for instance) are listed instead.
    """
    by_design = ("model output", "model input")
    produced, other = [], []
    for group in graph.groups():
        if group.size <= 1 or any(d in r for r in group.reasons for d in by_design):
            continue
        if group.reasons:
            (produced if group.producers else other).append(group.reasons[0])
    return produced or other


def markdown(rows: list[Row], keep_ratio: float, min_macs_cut: float) -> str:
    """The coverage table."""
    ok = sum(r.status == "ok" for r in rows)
    lines = [
        f"# Engine coverage: prune_once(model, 'l1', keep_ratio={keep_ratio}) on model zoos",
        "",
        f"{ok} of {len(rows)} ok (ran, output shape kept, >= {min_macs_cut:.0%} of the MACs "
        "cut, converted to TFLite). `weak`: ran but cut less; `refused`: no channel group "
        "can be pruned (a clean ValueError with the reasons). The `refused` column counts "
        "the channel groups of prunable layers left whole (not the model's input and "
        "output), the note gives the first reason.",
        "",
        "| model | source | input | status | MACs | compact / original MACs | refused | "
        "prune s | total s | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = "" if r.macs_ratio is None else f"{r.macs_ratio:.3f}"
        note = r.error.splitlines()[0] if r.error else r.first_refusal
        note = note.replace("|", "\\|")[:160]
        lines.append(
            f"| {r.name} | {r.source} | {r.size} | {r.status} | {r.macs / 1e6:.1f}M | {ratio} | "
            f"{r.refused_groups} | {r.prune_seconds or ''} | {r.seconds} | {note} |"
        )
    return "\n".join(lines) + "\n"


def write_report(rows: list[Row], output_dir: str | Path, keep_ratio: float, cut: float) -> None:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "coverage.md").write_text(markdown(rows, keep_ratio, cut))
    payload = {
        "keep_ratio": keep_ratio,
        "min_macs_cut": cut,
        "keras": keras.__version__,
        "rows": [dataclasses.asdict(r) for r in rows],
    }
    (out / "coverage.json").write_text(json.dumps(payload, indent=1))


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_list("models", [], "Model names to check (default: all).")
    flags.DEFINE_bool("hub", True, "Also check keras_hub image backbones (if installed).")
    flags.DEFINE_bool("tflite", True, "Convert each compact model to TFLite.")
    flags.DEFINE_float("keep_ratio", KEEP_RATIO, "prune_once keep_ratio.")
    flags.DEFINE_float("min_macs_cut", MIN_MACS_CUT, "Fraction of MACs to cut for 'ok'.")
    flags.DEFINE_string(
        "output_dir", "benchmarks/results/coverage", "Where coverage.md / coverage.json go."
    )


def main(argv: list[str]) -> None:
    from absl import flags, logging

    del argv
    FLAGS = flags.FLAGS
    specs = all_specs(FLAGS.hub)
    if FLAGS.models:
        specs = [spec_by_name(name, FLAGS.hub) for name in FLAGS.models]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in specs:
            row = check(spec, FLAGS.keep_ratio, FLAGS.min_macs_cut, tmp if FLAGS.tflite else None)
            logging.info(
                "%s: %s ratio=%s %.1fs %s", row.name, row.status, row.macs_ratio, row.seconds,
                row.error.splitlines()[0] if row.error else "",
            )  # fmt: skip
            rows.append(row)
            write_report(rows, FLAGS.output_dir, FLAGS.keep_ratio, FLAGS.min_macs_cut)
    print(markdown(rows, FLAGS.keep_ratio, FLAGS.min_macs_cut))


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
