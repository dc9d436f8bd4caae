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


def _loop_arguments(event: Event) -> tuple[str, ...]:
    """The arguments ``event``'s hook specification takes from the loop (all but scheduler, model, optimizer)."""
    import inspect

    from hookprune import hookspecs

    return tuple(name for name in inspect.signature(getattr(hookspecs, event.value)).parameters
                 if name not in ("scheduler", "model", "optimizer"))


#: The arguments each event needs from the loop (the scheduler adds scheduler, model, optimizer), read from
#: :mod:`hookprune.hookspecs`.
EVENT_ARGS: dict[Event, tuple[str, ...]] = {event: _loop_arguments(event) for event in Event}
