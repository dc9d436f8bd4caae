"""Helpers for testing what a training loop or a trainer integration fires.

A plugin author checks that an integration fires every event, in order, with the right epoch and
minibatch: add an :class:`EventRecorder` to the scheduler, train, and compare its ``log``.
"""

from __future__ import annotations

from typing import Any

from hookprune.hookspecs import hookimpl

__all__ = ["EventRecorder"]


class EventRecorder:
    """A hook plugin that records every event it hears.

    ``log`` holds ``(event, epoch, minibatch_id)`` in firing order (``minibatch_id`` is None for the epoch
    events), ``minibatches_per_epoch`` every value ``on_minibatch_begin`` was given, and ``metrics`` a copy of
    each ``on_epoch_end``'s metrics.
    """

    #: it only observes, so under distributed training its hooks cost no mask exchange
    sets_masks = False

    def __init__(self) -> None:
        self.log: list[tuple[str, int, int | None]] = []
        self.minibatches_per_epoch: set[int] = set()
        self.metrics: list[dict[str, Any]] = []

    def count(self, event: str) -> int:
        """How often ``event`` was heard."""
        return sum(1 for name, _, _ in self.log if name == event)

    @hookimpl
    def on_epoch_begin(self, epoch: int) -> None:
        """Record the epoch's start."""
        self.log.append(("on_epoch_begin", epoch, None))

    @hookimpl
    def on_minibatch_begin(self, epoch: int, minibatch_id: int, minibatches_per_epoch: int) -> None:
        """Record the minibatch's start and the epoch's length it was given."""
        self.log.append(("on_minibatch_begin", epoch, minibatch_id))
        self.minibatches_per_epoch.add(minibatches_per_epoch)

    @hookimpl
    def before_backward(self, epoch: int, minibatch_id: int) -> None:
        """Record the backward pass about to run; adds no loss term."""
        self.log.append(("before_backward", epoch, minibatch_id))

    @hookimpl
    def before_optimizer_step(self, epoch: int, minibatch_id: int) -> None:
        """Record the optimizer step about to run."""
        self.log.append(("before_optimizer_step", epoch, minibatch_id))

    @hookimpl
    def on_minibatch_end(self, epoch: int, minibatch_id: int) -> None:
        """Record the minibatch's end."""
        self.log.append(("on_minibatch_end", epoch, minibatch_id))

    @hookimpl
    def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> None:
        """Record the epoch's end and a copy of its metrics."""
        self.log.append(("on_epoch_end", epoch, None))
        self.metrics.append(dict(metrics))
