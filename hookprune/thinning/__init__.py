"""Thinning: physically removing pruned filters and channels, so the model gets smaller and faster.

Dependencies come from ``torch.fx`` symbolic tracing (part of torch, maintained with it): the traced
graph says which convolution feeds which BatchNorm, where a residual ``add`` ties the channels of
several producers together, where ``torch.cat`` places them, and where ``flatten`` feeds a linear
layer, on any architecture and with no per-model tables (Distiller kept hand-written ones, then an
ONNX export). ``torch-pruning`` does the same job but would be a dependency for what fx already gives.
A model fx cannot trace (data-dependent control flow, say) raises one :class:`ThinningError` naming
the module where tracing failed, before anything changes; so does a recipe that does not fit.

Exactness. The thinned model computes what the masked model computes, in eval and in train mode.
A zeroed filter followed by BatchNorm does not give a zero channel (eval mode outputs
``beta - gamma * mean / sqrt(var + eps)``, train mode ``beta``), so ``remove_filters`` first masks
the dependents of every channel it removes (producer biases, BatchNorm scale and shift, depthwise
biases) in the scheduler's masks, an ordinary Distiller-style mask, and then removes them.
Channels tied by a residual ``add`` go only when they are zero in every producer; anything the
analysis cannot follow keeps all its channels (see :mod:`hookprune.thinning.graph`).

Layers. How each module type relates to channels and which of its attributes and tensors are sliced
is a :class:`LayerRule` looked up by type along the MRO (:mod:`hookprune.thinning.rules`); a layer
of your own without one keeps its channels until :func:`register_layer_rule` gives it one.

Recipes. Every thinning appends a recipe (kept indices per tensor and new module sizes, plain
containers and int64 tensors) to ``model.thinning_recipes``; the scheduler's ``state_dict()``
saves them under ``thinning_recipes``. To load a thinned checkpoint: build a fresh model and its
scheduler, call ``scheduler.load_state_dict(ckpt['compression_sched'])`` (it applies the recipes
before it restores the masks; or call :func:`apply_recipes` yourself when there is no scheduler),
then ``model.load_state_dict(ckpt['model'])``, then the optimizer's ``load_state_dict``.
"""

from hookprune.thinning.extensions import DATASET_INPUT_SHAPES, ChannelRemover, FilterRemover, StructureRemover
from hookprune.thinning.graph import (
    ChannelGraph,
    Space,
    ThinningError,
    batchnorm_followers,
    channel_graph,
    fold_batchnorm_weight,
    trace,
)
from hookprune.thinning.remove import (
    REMOVE_CHANNELS,
    REMOVE_FILTERS,
    Recipe,
    ThinningPlan,
    apply_recipes,
    plan_thinning,
    remove_channels,
    remove_filters,
)
from hookprune.thinning.rules import (
    LayerRule,
    Relation,
    RuleSource,
    layer_rule,
    register_layer_rule,
    registered_rule,
    unregister_layer_rule,
)

__all__ = [
    "DATASET_INPUT_SHAPES",
    "REMOVE_CHANNELS",
    "REMOVE_FILTERS",
    "ChannelGraph",
    "ChannelRemover",
    "FilterRemover",
    "LayerRule",
    "Recipe",
    "Relation",
    "RuleSource",
    "Space",
    "StructureRemover",
    "ThinningError",
    "ThinningPlan",
    "apply_recipes",
    "batchnorm_followers",
    "channel_graph",
    "fold_batchnorm_weight",
    "layer_rule",
    "plan_thinning",
    "register_layer_rule",
    "registered_rule",
    "remove_channels",
    "remove_filters",
    "trace",
    "unregister_layer_rule",
]
