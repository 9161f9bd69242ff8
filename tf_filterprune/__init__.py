"""tf_filterprune: structured (filter) pruning for Keras 3 on TensorFlow.

Removes whole convolution filters, cuts every dependent layer to match, and
returns physically smaller Keras models that export to SavedModel and
TFLite/LiteRT and run faster.

Example:

>>> import keras, tf_filterprune as tffp
>>> model = tffp.models.fashion_cnn()
>>> compact = tffp.prune_once(model, "l1", target_macs_reduction=0.5, round_to=8)
>>> tffp.profile(compact).total_macs < 0.5 * tffp.profile(model).total_macs
True

tfmot is never imported here: it forces the legacy tf_keras process-wide.
"""

from tf_filterprune import callbacks, data, export, models, qat, schedules
from tf_filterprune.api import (
    custom_objects,
    per_layer_from_rates,
    prune_filters,
    prune_scope,
    wrappable_layers,
)
from tf_filterprune.batchnorm import recalibrate_batchnorm
from tf_filterprune.graph import build_graph, register_layer
from tf_filterprune.methods.base import (
    ChannelPlan,
    FilterPruningWrapper,
    PrunedGroup,
    PruningContext,
    PruningMethod,
    TrainingProgress,
)
from tf_filterprune.methods.clustering import FilterClustering
from tf_filterprune.methods.dcff import DCFF
from tf_filterprune.methods.dpfps import DPFPS
from tf_filterprune.methods.fcf import FCF
from tf_filterprune.profiling import profile
from tf_filterprune.pruner import prune_once
from tf_filterprune.recipes import PruneResult, prune_and_finetune
from tf_filterprune.strip import strip_filter_pruning
from tf_filterprune.surgery import fold_parallel_branch, prune_channels

__version__ = "0.1.0"

__all__ = [
    "ChannelPlan",
    "DCFF",
    "DPFPS",
    "FCF",
    "FilterClustering",
    "PrunedGroup",
    "PruneResult",
    "PruningContext",
    "FilterPruningWrapper",
    "PruningMethod",
    "TrainingProgress",
    "build_graph",
    "callbacks",
    "custom_objects",
    "per_layer_from_rates",
    "prune_filters",
    "prune_scope",
    "schedules",
    "strip_filter_pruning",
    "wrappable_layers",
    "data",
    "export",
    "fold_parallel_branch",
    "models",
    "qat",
    "profile",
    "prune_channels",
    "prune_once",
    "prune_and_finetune",
    "recalibrate_batchnorm",
    "register_layer",
]
