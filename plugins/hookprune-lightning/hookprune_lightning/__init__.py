"""Drive a hookprune compression schedule from PyTorch Lightning: ``Trainer(callbacks=[HookpruneCallback(...)])``."""

from hookprune_lightning.callback import HookpruneCallback, HookpruneSetupError

__version__ = "0.1.0"

__all__ = ["HookpruneCallback", "HookpruneSetupError", "__version__"]
