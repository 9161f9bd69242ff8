"""Channel dependency graph: which channels of which layers must be cut together.

Layers and ``keras.ops`` operations map channels through the rules of one
registry (:mod:`tf_filterprune.graph.registry`); :func:`register_layer` adds a
rule for a class of your own (see its docstring for which rule fits which layer).
"""

from tf_filterprune.graph.dependency import (
    ChannelGraph,
    ChannelGroup,
    LayerCall,
    build_graph,
)
from tf_filterprune.graph.layout import Layout, Segment
from tf_filterprune.graph.registry import (
    ChannelNormRule,
    ElementwiseRule,
    LayerRule,
    MergeRule,
    PerChannelRule,
    ProducerRule,
    register_layer,
    rule_for,
)

__all__ = [
    "ChannelGraph",
    "ChannelGroup",
    "ChannelNormRule",
    "ElementwiseRule",
    "LayerCall",
    "Layout",
    "LayerRule",
    "MergeRule",
    "PerChannelRule",
    "ProducerRule",
    "Segment",
    "build_graph",
    "register_layer",
    "rule_for",
]
