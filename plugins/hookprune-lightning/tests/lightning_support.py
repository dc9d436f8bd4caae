"""Digits data, a LightningModule around LeNet-300-100, and the plain loop the callback must reproduce."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import hookprune
import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from hookprune import knowledge_distillation as kd
from hookprune.models import create_model
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

HERE = Path(__file__).resolve().parent
#: the repository's example schedule: AGP to 90% in fc1/fc2 and 80% in fc3 over epochs 0-9, then LR decay
EXAMPLE_SCHEDULE = HERE.parents[2] / "examples" / "schedules" / "lenet300_100.agp.yaml"
BATCH = 64


def digits() -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's digits (pixels / 16) in a fixed shuffled order: 1437 training and 360 validation samples."""
    data = load_digits()
    x = torch.tensor(data.data / 16, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    return TensorDataset(x[:1437], y[:1437]), TensorDataset(x[1437:], y[1437:])


TRAIN, VAL = digits()
BATCHES = math.ceil(len(TRAIN) / BATCH)


def loaders() -> tuple[DataLoader, DataLoader]:
    """The training batches in a fixed order, and the validation split in one batch."""
    return DataLoader(TRAIN, batch_size=BATCH), DataLoader(VAL, batch_size=len(VAL))


def lenet() -> torch.nn.Module:
    """LeNet-300-100 for the 64 digit pixels, with the same weights every call."""
    torch.manual_seed(0)
    return create_model("lenet300_100", input_features=64)


def sgd(params: Any) -> torch.optim.Optimizer:
    """SGD with momentum, which revives pruned weights unless the masks are re-applied after each step."""
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)


class Digits(pl.LightningModule):
    """LeNet-300-100 kept in ``self.model``, trained with cross entropy; logs ``val_loss`` and ``val_acc``."""

    def __init__(self) -> None:
        super().__init__()
        self.model = lenet()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        out = self(x)
        self.log("val_loss", F.cross_entropy(out, y), batch_size=len(y))
        self.log("val_acc", (out.argmax(1) == y).float().mean(), batch_size=len(y))

    def configure_optimizers(self) -> Any:
        return sgd(self.parameters())


def trainer(epochs: int, callbacks: list[pl.Callback], **kwargs: Any) -> pl.Trainer:
    """A quiet CPU Trainer."""
    options: dict[str, Any] = {"max_epochs": epochs, "accelerator": "cpu", "devices": 1, "logger": False,
                               "enable_checkpointing": False, "enable_progress_bar": False,
                               "enable_model_summary": False, "num_sanity_val_steps": 0}
    options.update(kwargs)
    return pl.Trainer(callbacks=callbacks, **options)


def plain_loop(schedule: Any, epochs: int, accumulate: int = 1, teacher: torch.nn.Module | None = None
               ) -> tuple[torch.nn.Module, torch.optim.Optimizer, hookprune.CompressionScheduler]:
    """Train LeNet-300-100 as Lightning does (loss / accumulate per batch, a step per group), firing every event."""
    model = lenet()
    optimizer = sgd(model.parameters())
    sched = hookprune.load(schedule, model, optimizer, teacher=teacher)
    batches = list(loaders()[0])
    steps = math.ceil(len(batches) / accumulate)
    for epoch in range(epochs):
        sched.fire("on_epoch_begin", epoch=epoch)
        for step_id in range(steps):
            step = {"epoch": epoch, "minibatch_id": step_id, "minibatches_per_epoch": steps}
            sched.fire("on_minibatch_begin", **step)
            optimizer.zero_grad()
            for x, y in batches[step_id * accumulate:(step_id + 1) * accumulate]:
                loss = sched.fire("before_backward", **step, loss=F.cross_entropy(kd.forward(sched, x), y))
                (loss / accumulate).backward()
            sched.fire("before_optimizer_step", **step)
            optimizer.step()
            sched.fire("on_minibatch_end", **step)
        sched.fire("on_epoch_end", epoch=epoch, metrics={})
    return model, optimizer, sched
