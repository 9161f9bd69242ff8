"""Model surgery: physically remove channels, every coupled layer cut to match."""

from tf_filterprune.surgery.branches import fold_parallel_branch
from tf_filterprune.surgery.constants import ConsumerFold, analyze_folds
from tf_filterprune.surgery.cut import (
    LayerCut,
    compact_weights,
    plan_cuts,
    prune_channels,
    rebuild,
    resolve_keep,
    slice_weights,
    zeroed_copy,
)
from tf_filterprune.surgery.plan import GroupPlan, SurgeryPlan, make_plan, remap_axis

__all__ = [
    "ConsumerFold",
    "GroupPlan",
    "LayerCut",
    "SurgeryPlan",
    "analyze_folds",
    "compact_weights",
    "fold_parallel_branch",
    "make_plan",
    "plan_cuts",
    "prune_channels",
    "rebuild",
    "remap_axis",
    "resolve_keep",
    "slice_weights",
    "zeroed_copy",
]
