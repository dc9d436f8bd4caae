"""The hook specification: the six events a training loop fires and what each hook receives.

Every call provides all of a hook's arguments by keyword; an implementation names any subset of
them. pluggy does not pass arguments that have a default value in the implementation, so give
none. Implementations of a schedule instance run only in the epochs its policies cover; under a step
window (``starting_step``/``ending_step``), only the four minibatch hooks run, in the global steps it covers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import torch

    from hookprune.contract import SchedulerView

PROJECT = "hookprune"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def on_epoch_begin(
    scheduler: SchedulerView,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    epoch: int,
) -> None:
    """An epoch is about to start: pruners compute their masks here.

    :param scheduler: the scheduler firing the event; ``scheduler.masks`` takes new masks.
    :param model: the model being compressed.
    :param optimizer: the training loop's optimizer, or None when none was given.
    :param epoch: the zero-based epoch about to start.
    """


@hookspec
def on_minibatch_begin(
    scheduler: SchedulerView,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    epoch: int,
    minibatch_id: int,
    minibatches_per_epoch: int,
) -> None:
    """A minibatch's forward pass is about to run. Before the hooks, the engine advances
    ``scheduler.global_step`` (the minibatch's index over the whole run) when some policy has a step window;
    after them, it applies new masks.

    :param minibatch_id: the zero-based index of the minibatch within the epoch.
    :param minibatches_per_epoch: how many minibatches the epoch has.
    """


@hookspec
def before_backward(
    scheduler: SchedulerView,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    epoch: int,
    minibatch_id: int,
    minibatches_per_epoch: int,
    loss: torch.Tensor,
) -> Any:
    """The loss is computed and ``loss.backward()`` comes next.

    :param loss: the training loss as the loop computed it; do not modify it in place.
    :return: None, a tensor, or a :class:`hookprune.LossTerm`. Each returned value is an additive
        term: ``fire`` returns ``loss + sum(terms)`` and keeps the named terms for logging.
    """


@hookspec
def before_optimizer_step(
    scheduler: SchedulerView,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    epoch: int,
    minibatch_id: int,
    minibatches_per_epoch: int,
) -> None:
    """Gradients are computed and ``optimizer.step()`` comes next.

    After the hooks, the engine masks the gradients of policies with ``mask_gradients`` and
    restores the dense weights of policies with ``use_double_copies``.
    """


@hookspec
def on_minibatch_end(
    scheduler: SchedulerView,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    epoch: int,
    minibatch_id: int,
    minibatches_per_epoch: int,
) -> None:
    """``optimizer.step()`` has run. Before the hooks, the engine re-applies every mask, since
    momentum and weight decay revive pruned weights."""


@hookspec
def on_epoch_end(
    scheduler: SchedulerView,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    epoch: int,
    metrics: dict[str, Any],
) -> None:
    """An epoch has ended: LR schedulers step here (``ReduceLROnPlateau`` reads ``metrics``).

    :param metrics: what the loop measured, e.g. ``{"min": val_loss, "max": top1}`` as
        Distiller's loop passes it; empty when the loop gave none.
    """
