"""Channel dependency graph: which channels of which layers must be cut together."""

from tf_filterprune.graph.dependency import (
    ChannelGraph,
    ChannelGroup,
    LayerCall,
    build_graph,
)
from tf_filterprune.graph.layout import Layout, Segment
from tf_filterprune.graph.registry import LayerRule, register_layer, rule_for

__all__ = [
    "ChannelGraph",
    "ChannelGroup",
    "LayerCall",
    "Layout",
    "LayerRule",
    "Segment",
    "build_graph",
    "register_layer",
    "rule_for",
]
