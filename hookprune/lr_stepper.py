"""Stepping a torch LR scheduler from a schedule: the hook plugin behind every ``lr_schedulers`` instance and
Distiller's ``LRPolicy``."""

from __future__ import annotations

import warnings
from typing import Any

from torch.optim.lr_scheduler import ReduceLROnPlateau

from hookprune.hookspecs import hookimpl

#: torch warns that ``step(epoch)`` is deprecated; Distiller's closed-form stepping relies on it
_EPOCH_ARG_DEPRECATED = r"(?s).*epoch parameter.*"


def metric_read(lr_scheduler: Any) -> str | None:
    """The key of ``on_epoch_end``'s ``metrics`` that stepping ``lr_scheduler`` reads (``ReduceLROnPlateau``'s
    ``mode``: ``'min'`` or ``'max'``), or None when it reads none."""
    return lr_scheduler.mode if isinstance(lr_scheduler, ReduceLROnPlateau) else None


def adapt_lr_scheduler(obj: Any) -> LRStepper | None:
    """A hook plugin stepping ``obj`` when it is a torch-style LR scheduler (it has ``step``), else None."""
    return LRStepper(obj) if callable(getattr(obj, "step", None)) else None


class LRStepper:
    """Steps a torch LR scheduler at the end of each epoch of its policy, to ``epoch + 1`` as Distiller did
    (Distiller's ``LRPolicy``); ``ReduceLROnPlateau`` reads ``metrics[mode]`` (``metrics['min']`` is the
    validation loss). It runs after every other plugin of the event."""

    runs_last = True
    sets_masks = False

    def __init__(self, lr_scheduler: Any) -> None:
        self.lr_scheduler = lr_scheduler

    @hookimpl
    def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> None:
        """Step to ``epoch + 1``."""
        lr_scheduler = self.lr_scheduler
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_EPOCH_ARG_DEPRECATED, category=UserWarning)
            if isinstance(lr_scheduler, ReduceLROnPlateau):
                mode = lr_scheduler.mode
                if not isinstance(metrics, dict) or mode not in metrics:
                    raise ValueError(
                        f"ReduceLROnPlateau (mode '{mode}') needs metrics['{mode}'] at on_epoch_end: "
                        f"fire('on_epoch_end', epoch=..., metrics={{'{mode}': value}})")
                lr_scheduler.step(metrics[mode], epoch=epoch + 1)
            else:
                lr_scheduler.step(epoch=epoch + 1)
