"""hookprune: Distiller's compression scheduler as pluggy hooks on plain PyTorch modules.

    sched = hookprune.load("schedule.yaml", model, optimizer)
    hookprune.fire("on_epoch_begin", epoch=0)

What a plugin author needs is here: ``hookimpl`` and the hook contract (``SchedulerView``, ``Policy``,
``LossTerm``, ``ScheduleClass``), the errors to raise (``ArgumentError``, ``ScheduleError``) and the engine's
exact selection (``level_keep_mask``, ``global_keep_masks``, ``prune_mask_smallest``). Distiller's names
(``CompressionScheduler``'s methods, ``PruningPolicy`` and the other policies, ``file_config``) come from
:mod:`hookprune.compat.distiller`.
"""

from hookprune._engine.scheduler import active, fire
from hookprune.compat.distiller import (
    CompressionScheduler,
    LossComponent,
    LRPolicy,
    ParameterMasker,
    PolicyLoss,
    PruningPolicy,
    QuantizationPolicy,
    RegularizationPolicy,
    dict_config,
    file_config,
)
from hookprune.config.builder import build, load
from hookprune.contract import LossTerm, Policy, ScheduleClass, SchedulerView
from hookprune.errors import ArgumentError, ScheduleError
from hookprune.events import Event
from hookprune.hookspecs import hookimpl
from hookprune.knowledge_distillation import DistillationLossWeights, KnowledgeDistillationPolicy
from hookprune.selection import global_keep_masks, level_keep_mask, prune_mask_smallest

__version__ = "0.1.0"

__all__ = [
    "ArgumentError",
    "CompressionScheduler",
    "DistillationLossWeights",
    "Event",
    "KnowledgeDistillationPolicy",
    "LRPolicy",
    "LossComponent",
    "LossTerm",
    "ParameterMasker",
    "Policy",
    "PolicyLoss",
    "PruningPolicy",
    "QuantizationPolicy",
    "RegularizationPolicy",
    "ScheduleClass",
    "ScheduleError",
    "SchedulerView",
    "__version__",
    "active",
    "build",
    "dict_config",
    "file_config",
    "fire",
    "global_keep_masks",
    "hookimpl",
    "level_keep_mask",
    "load",
    "prune_mask_smallest",
]
