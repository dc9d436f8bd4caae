"""Drive a hookprune compression schedule from a transformers ``Trainer``: ``callbacks=[HookpruneCallback(...)]``."""

from hookprune_transformers.callback import (
    STATE_FILE,
    HookpruneCallback,
    HookpruneSetupError,
    HookpruneTrainer,
    ScheduleOwnedLR,
)

__version__ = "0.1.0"

__all__ = ["STATE_FILE", "HookpruneCallback", "HookpruneSetupError", "HookpruneTrainer", "ScheduleOwnedLR",
           "__version__"]
