"""The events of a training step, in the order a loop fires them.

The loop below shows where each event fires::

    sched = hookprune.load("schedule.yaml", model, optimizer)
    for epoch in range(epochs):
        hookprune.fire(Event.ON_EPOCH_BEGIN, epoch=epoch)
        for i, (x, y) in enumerate(loader):
            hookprune.fire(Event.ON_MINIBATCH_BEGIN, epoch=epoch, minibatch_id=i,
                           minibatches_per_epoch=len(loader))
            loss = criterion(model(x), y)
            loss = hookprune.fire(Event.BEFORE_BACKWARD, epoch=epoch, minibatch_id=i,
                                  minibatches_per_epoch=len(loader), loss=loss)
            loss.backward()
            hookprune.fire(Event.BEFORE_OPTIMIZER_STEP, epoch=epoch, minibatch_id=i,
                           minibatches_per_epoch=len(loader))
            optimizer.step()
            hookprune.fire(Event.ON_MINIBATCH_END, epoch=epoch, minibatch_id=i,
                           minibatches_per_epoch=len(loader))
        hookprune.fire(Event.ON_EPOCH_END, epoch=epoch, metrics={"min": val_loss, "max": top1})
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
