"""``--greedy``: the application's side of :func:`hookprune.pruning.greedy.greedy_filter_pruning`: candidates
scored by validation top-1, fine-tuned with SGD on a leading fraction of the training split, and each iteration's
model saved in the run folder with a line in ``greedy.csv``."""

from __future__ import annotations

import argparse
import csv
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hookprune import CompressionScheduler
from hookprune.apputils.checkpoint import save_checkpoint
from hookprune.apputils.errors import AppError
from hookprune.apputils.evaluation import evaluate
from hookprune.apputils.post_training import leading_batches
from hookprune.pruning.greedy import FINETUNING_POLICIES, GreedyStep, greedy_filter_pruning


def check_greedy_args(args: argparse.Namespace) -> None:
    """Refuse, in one line naming the option, a ``--greedy-*`` value the search cannot take."""
    if not args.greedy:
        return
    if args.greedy_target_density is None:
        raise AppError("--greedy needs --greedy-target-density (the fraction of the dense model's MACs to keep)")
    if not 0 < args.greedy_target_density < 1:
        raise AppError(f"--greedy-target-density {args.greedy_target_density}: must be in (0, 1)")
    if not 0 < args.greedy_pruning_step < 1:
        raise AppError(f"--greedy-pruning-step {args.greedy_pruning_step}: must be in (0, 1)")
    if args.greedy_finetuning_policy not in FINETUNING_POLICIES:
        raise AppError(f"--greedy-finetuning-policy {args.greedy_finetuning_policy}: unknown; choose from "
                       f"{', '.join(FINETUNING_POLICIES)}")
    if args.greedy_ft_epochs < 0:
        raise AppError(f"--greedy-ft-epochs {args.greedy_ft_epochs}: must be >= 0")


def finetuner(train_loader: Iterable[Any], device: torch.device, epochs: int, lr: float, momentum: float,
              weight_decay: float) -> Callable[[nn.Module, float], None] | None:
    """A function that trains a candidate for ``epochs`` epochs with SGD on a leading fraction of the training
    batches; None when ``epochs`` is 0."""
    if epochs == 0:
        return None

    def finetune(model: nn.Module, fraction: float) -> None:
        batches = leading_batches(train_loader, fraction)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        model.train()
        for _ in range(epochs):
            for x, y in batches:
                loss = F.cross_entropy(model(x.to(device)), y.to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

    return finetune


def greedy_search(model: nn.Module, example_input: torch.Tensor, args: argparse.Namespace, arch: str,
                  train_loader: Iterable[Any], val_loader: Iterable[Any], device: torch.device,
                  run_dir: Path | None, say: Callable[[str], None]) -> list[GreedyStep]:
    """Prune ``model`` greedily as the ``--greedy-*`` options say, saying each iteration and, with a run folder,
    saving its model as ``greedy__ITER__DENSITY__TOP1_checkpoint.pth.tar`` and its line in ``greedy.csv``."""
    table = run_dir / "greedy.csv" if run_dir is not None else None
    if table is not None:
        with open(table, "w", newline="", encoding="utf-8") as stream:
            csv.writer(stream).writerow(["iteration", "layer", "filters_removed", "filters_left", "val_top1",
                                         "macs", "compute_density", "weights"])

    def report(step: GreedyStep) -> None:
        say(f"greedy iteration {step.iteration}: {step.filters_removed} filters of {step.layer} removed "
            f"({step.filters_left} left), val top-1 {step.score:.2f}%, compute density {100 * step.density:.2f}% "
            f"({step.macs:,} MACs), {step.weights:,} parameters")
        if table is None or run_dir is None:
            return
        with open(table, "a", newline="", encoding="utf-8") as stream:
            csv.writer(stream).writerow([step.iteration, step.layer, step.filters_removed, step.filters_left,
                                         f"{step.score:.4f}", step.macs, f"{step.density:.6f}", step.weights])
        save_checkpoint(0, arch, model, scheduler=CompressionScheduler(model),
                        name=f"greedy__{step.iteration:03d}__{100 * step.density:.1f}__{step.score:.1f}", dir=run_dir)

    finetune = finetuner(train_loader, device, args.greedy_ft_epochs, args.lr, args.momentum, args.weight_decay)
    return greedy_filter_pruning(
        model, example_input, lambda candidate: evaluate(candidate, val_loader, device).top1,
        args.greedy_target_density, args.greedy_pruning_step, finetune, args.greedy_finetuning_policy,
        train_fraction=args.effective_train_size, on_step=report)
