"""keras_hub coverage: every CNN image backbone family prunes, keeps its output, converts.

Each family is built from constructor arguments (random weights, no presets) at
32 x 32 px inside Input -> backbone -> pooling -> Dense, then the coverage
tool's check runs: ``prune_once(model, "l1", keep_ratio=0.6)`` keeps the output
shape, removes >= 30% of the MACs (counted inside custom layers too) and the
compact model converts to TFLite. EfficientNet's MBConv / FusedMBConv blocks,
HGNetV2's, MobileNet's and MobileNetV5's blocks are custom layers: they are
traced into Functional sub-graphs and pruned inside.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

keras_hub = pytest.importorskip("keras_hub")

_PATH = Path(__file__).resolve().parents[1] / "tools" / "coverage.py"
_SPEC = importlib.util.spec_from_file_location("tffp_coverage_tool_hub", _PATH)
coverage_tool = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = coverage_tool  # dataclasses look their module up
_SPEC.loader.exec_module(coverage_tool)

SIZE = 32
SPECS = {spec.name: spec for spec in coverage_tool.hub_specs(size=SIZE)}
FAMILIES = {
    "ResNetBackbone_basic",
    "ResNetBackbone_bottleneck",
    "ResNetBackbone_vd",
    "ResNetBackbone_v2",
    "CSPNetBackbone",
    "DenseNetBackbone",
    "VGGBackbone",
    "XceptionBackbone",
    "HGNetV2Backbone",
    "MobileNetBackbone",
    "EfficientNetBackbone",  # V2-style: FusedMBConv and MBConv custom layers
    "EfficientNetBackbone_v1",
    "MobileNetV5Backbone",
}


def test_every_cnn_family_is_listed():
    assert FAMILIES <= set(SPECS), FAMILIES - set(SPECS)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_hub_family_prunes_and_converts(name, tmp_path):
    row = coverage_tool.check(SPECS[name], tflite_dir=tmp_path)
    assert row.status == "ok", (row.name, row.status, row.macs_ratio, row.error)
    assert row.shape_kept
    assert row.macs_ratio <= 1.0 - coverage_tool.MIN_MACS_CUT, row.macs_ratio
    assert row.tflite_bytes > 0


@pytest.mark.parametrize(
    "name, block",
    [
        ("EfficientNetBackbone", "MBConvBlock"),
        ("EfficientNetBackbone", "FusedMBConvBlock"),
        ("HGNetV2Backbone", "HGNetV2ConvLayer"),
        ("MobileNetBackbone", "InvertedResidualBlock"),
    ],
)
def test_blocks_in_custom_layers_are_traced_and_cut(name, block):
    import keras

    import tf_filterprune as tffp

    model = SPECS[name].build()
    graph = tffp.build_graph(model)
    traced = [p for p in graph.traced_paths if type(_layer_at(model, p)).__name__ == block]
    assert traced, graph.traced_paths
    inside = {
        p for g in graph.groups() if g.prunable for p in g.producers if p.startswith(traced[0])
    }
    assert inside, traced[0]
    compact = tffp.prune_once(model, "l1", keep_ratio=0.6)
    sub = _layer_at(compact, traced[0])
    assert isinstance(sub, keras.Model) and type(sub).__name__ == "Functional"
    assert type(_layer_at(model, traced[0])).__name__ == block  # the user's model is unchanged


def _layer_at(model, path):
    """The layer at a graph path (inside models by name, inside custom layers by sublayer)."""
    layer = model
    for part in path.split("/"):
        if hasattr(layer, "get_layer"):
            layer = layer.get_layer(part)
        else:
            layer = next(s for s in layer._flatten_layers(include_self=False) if s.name == part)
    return layer
