"""Model surgery: physically remove channels, every coupled layer cut to match."""

from tf_filterprune.surgery.cut import (
    LayerCut,
    plan_cuts,
    prune_channels,
    rebuild,
    resolve_keep,
    slice_weights,
    zeroed_copy,
)

__all__ = [
    "LayerCut",
    "plan_cuts",
    "prune_channels",
    "rebuild",
    "resolve_keep",
    "slice_weights",
    "zeroed_copy",
]
