"""Digits data as a dict dataset, LeNet-300-100 wrapped for the Trainer, and the plain loop it must reproduce."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import hookprune
import torch
import torch.nn.functional as F
from hookprune import knowledge_distillation as kd
from hookprune.models import create_model
from sklearn.datasets import load_digits
from torch.utils.data import Dataset
from transformers import TrainingArguments

HERE = Path(__file__).resolve().parent
#: whether TrainingArguments choose the training order (transformers 5); 4.x always shuffles, and the tests give
#: its Trainer a sequential sampler instead (the ``sequential_order`` fixture)
SAMPLING_ARGUMENT = "train_sampling_strategy" in {f.name for f in dataclasses.fields(TrainingArguments)}
#: the repository's example schedule: AGP to 90% in fc1/fc2 and 80% in fc3 over epochs 0-9, then LR decay
EXAMPLE_SCHEDULE = HERE.parents[2] / "examples" / "schedules" / "lenet300_100.agp.yaml"
BATCH = 64


class Digits(Dataset):
    """scikit-learn's digits (pixels / 16) as ``{"pixels", "labels"}`` items, in a fixed shuffled order."""

    def __init__(self, split: str) -> None:
        data = load_digits()
        x = torch.tensor(data.data / 16, dtype=torch.float32)
        y = torch.tensor(data.target, dtype=torch.long)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        part = order[:1437] if split == "train" else order[1437:]
        self.x, self.y = x[part], y[part]

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"pixels": self.x[i], "labels": self.y[i]}


TRAIN, VAL = Digits("train"), Digits("val")
BATCHES = math.ceil(len(TRAIN) / BATCH)


def lenet() -> torch.nn.Module:
    """LeNet-300-100 for the 64 digit pixels, with the same weights every call."""
    torch.manual_seed(0)
    return create_model("lenet300_100", input_features=64)


class Classifier(torch.nn.Module):
    """LeNet-300-100 in ``self.net``, returning ``{"loss", "logits"}`` as transformers models do."""

    def __init__(self) -> None:
        super().__init__()
        self.net = lenet()

    def forward(self, pixels: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        logits = self.net(pixels)
        return {"loss": F.cross_entropy(logits, labels) if labels is not None else None, "logits": logits}


def sgd(params: Any) -> torch.optim.Optimizer:
    """SGD with momentum and weight decay, which revive pruned weights unless the masks are re-applied."""
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)


def arguments(tmp_path: Path, epochs: int, **overrides: Any) -> TrainingArguments:
    """CPU, batches of 64 in the dataset's order, no gradient clipping, a constant rate, nothing written."""
    options: dict[str, Any] = {
        "output_dir": str(tmp_path), "num_train_epochs": epochs, "per_device_train_batch_size": BATCH,
        "per_device_eval_batch_size": len(VAL), "train_sampling_strategy": "sequential", "max_grad_norm": 0.0,
        "lr_scheduler_type": "constant", "use_cpu": True, "report_to": "none", "disable_tqdm": True,
        "save_strategy": "no", "logging_strategy": "no", "dataloader_pin_memory": False, "seed": 0}
    options.update(overrides)
    if not SAMPLING_ARGUMENT:
        del options["train_sampling_strategy"]
    return TrainingArguments(**options)


def plain_loop(schedule: Any, epochs: int, accumulate: int = 1, teacher: torch.nn.Module | None = None
               ) -> tuple[torch.nn.Module, torch.optim.Optimizer, hookprune.CompressionScheduler]:
    """Train as the Trainer does (each micro-batch's loss divided by its group's size), firing every event."""
    model = lenet()
    optimizer = sgd(model.parameters())
    sched = hookprune.load(schedule, model, optimizer, teacher=teacher)
    batches = [(TRAIN.x[i:i + BATCH], TRAIN.y[i:i + BATCH]) for i in range(0, len(TRAIN), BATCH)]
    steps = math.ceil(len(batches) / accumulate)
    for epoch in range(epochs):
        sched.fire("on_epoch_begin", epoch=epoch)
        for step_id in range(steps):
            step = {"epoch": epoch, "minibatch_id": step_id, "minibatches_per_epoch": steps}
            group = batches[step_id * accumulate:(step_id + 1) * accumulate]
            sched.fire("on_minibatch_begin", **step)
            optimizer.zero_grad()
            for x, y in group:
                loss = sched.fire("before_backward", **step, loss=F.cross_entropy(kd.forward(sched, x), y))
                (loss / len(group)).backward()
            sched.fire("before_optimizer_step", **step)
            optimizer.step()
            sched.fire("on_minibatch_end", **step)
        sched.fire("on_epoch_end", epoch=epoch, metrics={})
    return model, optimizer, sched
