"""hookprune: Distiller's compression scheduler as pluggy hooks on plain PyTorch modules.

    sched = hookprune.load("schedule.yaml", model, optimizer)
    hookprune.fire("on_epoch_begin", epoch=0)
"""

from hookprune._engine.masks import ParameterMasker
from hookprune._engine.scheduler import CompressionScheduler, active, fire
from hookprune.compat.distiller import (
    LossComponent,
    LossTerm,
    LRPolicy,
    PolicyLoss,
    PruningPolicy,
    QuantizationPolicy,
    RegularizationPolicy,
)
from hookprune.config.builder import build, dict_config, file_config, load
from hookprune.errors import ScheduleError
from hookprune.events import Event
from hookprune.hookspecs import hookimpl
from hookprune.knowledge_distillation import DistillationLossWeights, KnowledgeDistillationPolicy

__version__ = "0.1.0"

__all__ = [
    "CompressionScheduler",
    "DistillationLossWeights",
    "Event",
    "KnowledgeDistillationPolicy",
    "LRPolicy",
    "LossComponent",
    "LossTerm",
    "ParameterMasker",
    "PolicyLoss",
    "PruningPolicy",
    "QuantizationPolicy",
    "RegularizationPolicy",
    "ScheduleError",
    "__version__",
    "active",
    "build",
    "dict_config",
    "file_config",
    "fire",
    "hookimpl",
    "load",
]
