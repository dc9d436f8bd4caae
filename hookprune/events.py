"""The events of a training step, in the order a loop fires them.

Each epoch fires ``ON_EPOCH_BEGIN``; each minibatch then ``ON_MINIBATCH_BEGIN`` before the forward pass,
``BEFORE_BACKWARD`` with the loss (``fire`` returns it plus the plugins' terms: backpropagate that),
``BEFORE_OPTIMIZER_STEP`` before ``optimizer.step()`` and ``ON_MINIBATCH_END`` after it; the epoch ends with
``ON_EPOCH_END`` and the loop's metrics. :func:`hookprune.testing.train` is that loop, and the README's
"Driving a schedule from your loop" writes it out.
"""

from __future__ import annotations

from enum import StrEnum


class Event(StrEnum):
    """A hook name; the value is the name in :mod:`hookprune.hookspecs`."""

    ON_EPOCH_BEGIN = "on_epoch_begin"
    ON_MINIBATCH_BEGIN = "on_minibatch_begin"
    BEFORE_BACKWARD = "before_backward"
    BEFORE_OPTIMIZER_STEP = "before_optimizer_step"
    ON_MINIBATCH_END = "on_minibatch_end"
    ON_EPOCH_END = "on_epoch_end"


#: The arguments each event needs from the loop (the scheduler adds scheduler, model, optimizer).
EVENT_ARGS: dict[Event, tuple[str, ...]] = {
    Event.ON_EPOCH_BEGIN: ("epoch",),
    Event.ON_MINIBATCH_BEGIN: ("epoch", "minibatch_id", "minibatches_per_epoch"),
    Event.BEFORE_BACKWARD: ("epoch", "minibatch_id", "minibatches_per_epoch", "loss"),
    Event.BEFORE_OPTIMIZER_STEP: ("epoch", "minibatch_id", "minibatches_per_epoch"),
    Event.ON_MINIBATCH_END: ("epoch", "minibatch_id", "minibatches_per_epoch"),
    Event.ON_EPOCH_END: ("epoch", "metrics"),
}
