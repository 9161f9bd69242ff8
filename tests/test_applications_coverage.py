"""keras.applications coverage: prune_once runs, keeps the output, cuts MACs, converts.

The networks whose Functional graphs hold ``keras.ops`` nodes (MobileNetV3's
hard-swish is ``x * relu6(x + 3) / 6`` in ops; ConvNeXt's residual joins are
``x + y``) and per-channel layers (ConvNeXt's LayerScale) run in CI, and so does
the smallest constructor of every other family; every other keras.applications
CNN (and keras_hub's image backbones) runs from
``tools/coverage.py``, or here with ``TFFP_ALL_APPLICATIONS=1``. The check is
the tool's: ``prune_once(model, "l1", keep_ratio=0.6)`` keeps the output shape,
removes >= 30% of the MACs and converts to TFLite.
"""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "tools" / "coverage.py"
_SPEC = importlib.util.spec_from_file_location("tffp_coverage_tool", _PATH)
coverage_tool = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = coverage_tool  # dataclasses look their module up
_SPEC.loader.exec_module(coverage_tool)

CI_MODELS = ("MobileNetV3Small", "MobileNetV3Large", "ConvNeXtTiny")
FAMILY_MODELS = (  # the smallest constructor of every other keras.applications family
    "DenseNet121",
    "EfficientNetB0",
    "EfficientNetV2B0",
    "InceptionV3",
    "InceptionResNetV2",
    "MobileNet",
    "MobileNetV2",
    "NASNetMobile",
    "ResNet50",
    "ResNet50V2",
    "VGG16",
    "Xception",
)
ALL = os.environ.get("TFFP_ALL_APPLICATIONS") == "1"


def _assert_covered(row) -> None:
    assert row.status == "ok", (row.name, row.status, row.macs_ratio, row.error)
    assert row.shape_kept
    assert row.macs_ratio <= 1.0 - coverage_tool.MIN_MACS_CUT, row.macs_ratio
    assert row.tflite_bytes > 0


@pytest.mark.parametrize("name", CI_MODELS + FAMILY_MODELS)
def test_application_prunes_and_converts(name, tmp_path):
    _assert_covered(
        coverage_tool.check(coverage_tool.spec_by_name(name, hub=False), tflite_dir=tmp_path)
    )


def test_mobilenet_v3_hard_swish_ops_are_pruned():
    import keras

    import tf_filterprune as tffp

    model = keras.applications.MobileNetV3Small(weights=None, input_shape=(32, 32, 3), classes=10)
    graph = tffp.build_graph(model)
    refused = [g for g in graph.groups() if g.reasons and g.producers]
    assert [g.producers for g in refused] == [["logits"]]  # before the softmax output


@pytest.mark.skipif(not ALL, reason="large: run tools/coverage.py (or TFFP_ALL_APPLICATIONS=1)")
@pytest.mark.parametrize(
    "name",
    [s.name for s in coverage_tool.all_specs() if s.name not in CI_MODELS + FAMILY_MODELS],
)
def test_every_model_of_the_zoos(name, tmp_path):
    _assert_covered(coverage_tool.check(coverage_tool.spec_by_name(name), tflite_dir=tmp_path))
