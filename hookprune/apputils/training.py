"""One training epoch of a classifier under a compression scheduler, firing hookprune's six events around
every step, with a progress bar and the epoch's mean losses; optionally in mixed precision."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from hookprune import distributed
from hookprune import knowledge_distillation as kd
from hookprune.apputils.data_loaders import set_epoch

if TYPE_CHECKING:
    from hookprune import CompressionScheduler


#: ``--amp`` choices: the autocast dtype of each
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class MixedPrecision:
    """Training in mixed precision: the forward pass and the loss under ``torch.autocast`` in ``dtype``; with
    float16 a ``torch.amp.GradScaler`` scales the loss and skips a step whose gradients hold an inf or a NaN
    (bfloat16 has float32's range and needs none). Weights, gradients, optimizer state and masks stay float32."""

    device_type: str
    dtype: torch.dtype
    scaler: torch.amp.GradScaler | None

    @classmethod
    def of(cls, name: str, device: torch.device) -> MixedPrecision:
        """``--amp name`` (a key of :data:`AMP_DTYPES`) on ``device``."""
        dtype = AMP_DTYPES[name]
        scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
        return cls(device.type, dtype, scaler)

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=self.dtype)


@dataclass
class EpochLoss:
    """Mean training losses of one epoch: the total minimized, the data loss, and each added term by name."""

    total: float
    objective: float
    components: dict[str, float]


class Trainer:
    """Trains one model under one scheduler, firing hookprune's events around every step.

    ``say`` prints the progress lines when there is no progress bar (``progress`` False or no terminal), every
    ``print_freq`` minibatches, each starting with ``label``. With ``reduce`` (distributed training) an epoch's
    mean losses are over every rank's shard. A scheduler that distils knowledge runs the student (and the
    teacher beside it) through :func:`hookprune.knowledge_distillation.forward`. With ``precision`` the steps run
    in mixed precision (:class:`MixedPrecision`); the events fire as ever, a step the scaler skips included.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, sched: CompressionScheduler,
                 loader: torch.utils.data.DataLoader, device: torch.device, print_freq: int,
                 say: Callable[[str], None], label: str = "epoch", reduce: bool = False, progress: bool = True,
                 precision: MixedPrecision | None = None) -> None:
        self.model, self.optimizer, self.sched = model, optimizer, sched
        self.loader, self.device, self.print_freq, self.say, self.label = loader, device, print_freq, say, label
        self.reduce = reduce
        self.precision = precision
        self.scaler = precision.scaler if precision is not None else None
        self.progress = progress
        self.distilling = kd.distills(sched)

    def epoch(self, epoch: int, epochs: int) -> EpochLoss:
        """One pass over the training split, as epoch ``epoch`` of the schedule (of ``epochs``, for the display)."""
        model, sched, optimizer = self.model, self.sched, self.optimizer
        set_epoch(self.loader, epoch)
        sched.fire("on_epoch_begin", epoch=epoch)
        model.train()
        steps = len(self.loader)
        sums: dict[str, torch.Tensor] = {}
        hits = seen = 0
        bar = tqdm(total=steps, desc=f"{self.label} {epoch + 1}/{epochs}", unit="batch", leave=False,
                   disable=None if self.progress else True, dynamic_ncols=True, file=sys.stderr)
        for i, (x, y) in enumerate(self.loader):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            step = {"epoch": epoch, "minibatch_id": i, "minibatches_per_epoch": steps}
            sched.fire("on_minibatch_begin", **step)
            with self.precision.autocast() if self.precision is not None else contextlib.nullcontext():
                output = kd.forward(sched, x) if self.distilling else model(x)
                objective = F.cross_entropy(output, y)
            total = sched.fire("before_backward", **step, loss=objective)
            optimizer.zero_grad(set_to_none=True)
            scaler = self.scaler
            (total if scaler is None else scaler.scale(total)).backward()
            sched.fire("before_optimizer_step", **step)
            if scaler is None:
                optimizer.step()
            else:
                scaler.step(optimizer)
                scaler.update()
            sched.fire("on_minibatch_end", **step)
            terms = {"total": total, "objective": objective, **sched.loss_components}
            for name, value in terms.items():
                sums[name] = sums.get(name, 0) + value.detach()
            hits += int((output.detach().argmax(1) == y).sum())
            seen += len(y)
            bar.update()
            if (i + 1) % self.print_freq == 0 or i + 1 == steps:
                progress = (f"loss {float(sums['total']) / (i + 1):.4f}  top-1 {100 * hits / seen:.2f}%  "
                            f"lr {optimizer.param_groups[0]['lr']:.5g}")
                if bar.disable and i + 1 < steps:
                    self.say(f"{self.label} {epoch + 1}/{epochs} [{i + 1}/{steps}]  {progress}")
                else:
                    bar.set_postfix_str(progress, refresh=False)
        bar.close()
        means = {name: float(value) / steps for name, value in sums.items()}
        if self.reduce:
            ranks = distributed.world_size()
            means = dict(zip(means, (v / ranks for v in distributed.all_sum(list(means.values()))), strict=True))
        total_mean, objective_mean = means.pop("total"), means.pop("objective")
        return EpochLoss(total_mean, objective_mean, means)
