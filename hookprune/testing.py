"""Helpers for testing plugins, schedules and trainer integrations.

:func:`train` is the plain training loop that fires the six events (the one the README's "Driving a schedule
from your loop" shows), over a list of minibatches such as :func:`random_batches` makes: a plugin or schedule
is tested by training with it and checking the masks, weights and loss terms it leaves. A plugin author checks
that an integration fires every event, in order, with the right epoch and minibatch: add an
:class:`EventRecorder` to the scheduler, train, and compare its ``log``; under a distributed run, each rank's
:func:`rank_mask_report` (the processes started by :func:`run_ranks`) and :func:`check_rank_reports` check
that every rank ended with rank 0's masks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn.functional as F

from hookprune.hookspecs import hookimpl

if TYPE_CHECKING:
    from hookprune import CompressionScheduler

__all__ = ["Batches", "EventRecorder", "check_rank_reports", "random_batches", "rank_mask_report", "run_ranks",
           "train"]


class Batches(Protocol):
    """Minibatches ``(inputs, targets)`` with a length: a list of them, or a ``DataLoader``."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Any]]: ...

    def __len__(self) -> int: ...


def random_batches(count: int = 2, shape: Sequence[int] = (64,), classes: int = 10, size: int = 8,
                   seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` minibatches of ``size`` standard-normal samples of ``shape`` with random labels below
    ``classes``, drawn from a generator seeded ``seed`` (the global one is untouched). The defaults fit
    ``create_model("lenet300_100", input_features=64)``."""
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, *shape, generator=gen), torch.randint(0, classes, (size,), generator=gen))
            for _ in range(count)]


def train(scheduler: CompressionScheduler, model: Callable[[torch.Tensor], torch.Tensor],
          optimizer: torch.optim.Optimizer, data: Batches, epochs: int, *, start_epoch: int = 0,
          loss_fn: Callable[[torch.Tensor, Any], torch.Tensor] = F.cross_entropy,
          before_forward: Callable[[int, int], None] | None = None, fire: Callable[..., Any] | None = None,
          metrics: Callable[[int], Mapping[str, Any]] | None = None, autocast: torch.dtype | None = None,
          scaler: torch.amp.GradScaler | None = None) -> list[torch.Tensor]:
    """Train ``model`` over ``data`` in epochs ``start_epoch .. epochs - 1``, firing the six events around
    every step; returns the (detached) loss ``before_backward`` gave back at each step.

    Each step: ``on_minibatch_begin``, ``before_forward(epoch, minibatch_id)`` when given, the loss
    ``loss_fn(model(x), y)`` handed to ``before_backward`` (which adds the plugins' terms), ``zero_grad``,
    backward, ``before_optimizer_step``, ``optimizer.step()``, ``on_minibatch_end``. ``model`` is any callable
    (``lambda x: knowledge_distillation.forward(scheduler, x)`` when distilling) and is not switched to train
    mode. ``fire`` replaces ``scheduler.fire`` (``hookprune.fire`` fires on the active scheduler; a wrapper
    can observe each event). ``on_epoch_end`` gets ``metrics(epoch)``, by default the epoch's last loss as
    ``min`` and 0.0 as ``max``. Mixed precision: with ``autocast`` the forward pass and the loss run under
    ``torch.autocast`` in that dtype; with a ``scaler`` (``torch.amp.GradScaler``) the backward pass starts from
    the scaled loss and ``scaler.step(optimizer)``, which skips the step when a gradient is inf or NaN, and
    ``scaler.update()`` replace ``optimizer.step()``.
    """
    fire = fire or scheduler.fire
    losses: list[torch.Tensor] = []
    for epoch in range(start_epoch, epochs):
        fire("on_epoch_begin", epoch=epoch)
        for i, (x, y) in enumerate(data):
            step = {"epoch": epoch, "minibatch_id": i, "minibatches_per_epoch": len(data)}
            fire("on_minibatch_begin", **step)
            if before_forward is not None:
                before_forward(epoch, i)
            if autocast is None:
                objective = loss_fn(model(x), y)
            else:
                with torch.autocast(x.device.type, dtype=autocast):
                    objective = loss_fn(model(x), y)
            loss = fire("before_backward", **step, loss=objective)
            losses.append(loss.detach())
            optimizer.zero_grad()
            (loss if scaler is None else scaler.scale(loss)).backward()
            fire("before_optimizer_step", **step)
            if scaler is None:
                optimizer.step()
            else:
                scaler.step(optimizer)
                scaler.update()
            fire("on_minibatch_end", **step)
        measured = {"min": float(losses[-1]), "max": 0.0} if metrics is None else dict(metrics(epoch))
        fire("on_epoch_end", epoch=epoch, metrics=measured)
    return losses


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


def rank_mask_report(scheduler: CompressionScheduler, unsynchronized: CompressionScheduler,
                     weight: torch.Tensor) -> dict[str, Any]:
    """What one rank of a distributed test of an integration reports, for :func:`check_rank_reports` to compare
    across the ranks: ``scheduler``'s masks, its synchronizer's broadcasts, the count of masks
    ``verify_masks`` compared, the :class:`~hookprune.distributed.MaskMismatchError` text of the same schedule
    run ``unsynchronized`` ("" when none), and a copy of ``weight``. Plain tensors and numbers, for
    ``torch.save(..., weights_only=True)``."""
    from hookprune import distributed

    compared = distributed.verify_masks(scheduler)
    try:
        distributed.verify_masks(unsynchronized)
        mismatch = ""
    except distributed.MaskMismatchError as exc:
        mismatch = str(exc)
    sync = scheduler.mask_sync
    return {"masks": {name: mask.clone() for name, mask in scheduler.masks.items()},
            "broadcasts": sync.broadcasts if sync is not None else 0, "compared": compared, "mismatch": mismatch,
            "weight": weight.detach().clone()}


def check_rank_reports(reports: Sequence[Mapping[str, Any]], masked: str) -> None:
    """Raise AssertionError unless every rank of :func:`rank_mask_report`'s ``reports`` ended with rank 0's masks
    and weight, after at least one broadcast, with the masked elements of the ``masked`` parameter's weight
    zero."""
    first = reports[0]
    for rank, report in enumerate(reports[1:], start=1):
        assert report["compared"] == first["compared"] == len(first["masks"]), (rank, report["compared"])
        assert report["masks"].keys() == first["masks"].keys(), rank
        for name, mask in first["masks"].items():
            assert torch.equal(mask, report["masks"][name]), f"rank {rank}: {name}"
        assert report["broadcasts"] == first["broadcasts"] > 0, rank
        assert torch.equal(report["weight"], first["weight"]), rank
    assert not first["weight"][~first["masks"][masked]].any()


def run_ranks(fn: Callable[[int, Path], Mapping[str, Any]], world: int, folder: str | os.PathLike[str]
              ) -> list[dict[str, Any]]:
    """Run ``fn(rank, folder)`` in ``world`` new processes started as ``torchrun`` starts them (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``NODE_RANK`` set, a gloo process group joined through a
    file in ``folder``, one thread each) and return what each returned, in rank order. ``fn`` is a module-level
    function (the processes import it by name) returning tensors and plain values, such as
    :func:`rank_mask_report`'s."""
    import torch.multiprocessing as mp

    mp.spawn(_rank_entry, args=(fn, world, str(folder)), nprocs=world, join=True)
    return [torch.load(Path(folder, f"rank{rank}.pt"), weights_only=True) for rank in range(world)]


def _rank_entry(rank: int, fn: Callable[[int, Path], Mapping[str, Any]], world: int, folder: str) -> None:
    """One process of :func:`run_ranks`."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": str(world), "NODE_RANK": "0", "OMP_NUM_THREADS": "1"})
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    try:
        torch.save(dict(fn(rank, Path(folder))), Path(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
