"""Every corpus schedule runs its whole epoch range on its architecture, one tiny minibatch per epoch,
and every level-based pruner leaves its layers at exactly the level it names."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import pytest
import torch

import hookprune
from hookprune import models
from hookprune.errors import ScheduleWarning
from hookprune.pruning import structures
from hookprune.pruning.magnitude import AutomatedGradualPruner, SparsityLevelParameterPruner
from tests.conftest import CORPUS
from tests.test_corpus import manifest, missing_pieces

DETECTION = ("fasterrcnn", "maskrcnn", "keypointrcnn", "retinanet")


def last_epoch(sched: hookprune.CompressionScheduler) -> int:
    span = sched.epoch_span()
    return 0 if span is None else span[1] + 1


def make_model(arch: str) -> torch.nn.Module:
    kwargs: dict[str, Any] = {"min_size": 64, "max_size": 64} if arch.startswith(DETECTION) else {}
    return models.create_model(arch, **kwargs)


def batch(arch: str, model: torch.nn.Module) -> tuple[tuple[Any, ...], torch.Tensor | None]:
    inputs = models.dummy_input(arch, model, batch_size=2)
    if arch.startswith(DETECTION):
        boxes = torch.tensor([[4.0, 4.0, 40.0, 40.0]])
        masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
        masks[:, 4:40, 4:40] = 1
        targets = [{"boxes": boxes, "labels": torch.tensor([1]), "masks": masks} for _ in inputs]
        return (inputs, targets), None
    return (inputs if isinstance(inputs, tuple) else (inputs,)), None


def loss_of(output: Any) -> torch.Tensor:
    if isinstance(output, dict):
        return sum(output.values())
    if isinstance(output, tuple | list):
        output = output[0]
    return output.float().square().mean()


@dataclass(frozen=True)
class Target:
    """What a level-based pruner leaves in one parameter: kept elements, or kept structures along ``dim``."""

    param: str
    kept: int
    dim: int | None = None


def scheduled_pruners(sched: hookprune.CompressionScheduler) -> dict[int, tuple[Any, int]]:
    """id(pruner) -> (pruner, last epoch any of its policies covers)."""
    last: dict[int, tuple[Any, int]] = {}
    instances = {id(instance) for instance in sched.instances.values()}
    for policy in sched.scheduled:
        pruner = policy.instance
        if policy.kind == "pruner" and id(pruner) in instances:
            previous = last.get(id(pruner), (pruner, -1))[1]
            last[id(pruner)] = (pruner, max(previous, policy.window.last))
    return last


def final_pruners(sched: hookprune.CompressionScheduler) -> dict[int, list[tuple[Any, str]]]:
    """Epoch -> (pruner, parameter) pairs where that epoch is the last pruning of the parameter and its
    pruner alone sets it then; regularized parameters are left out (thresholds add zeros)."""
    names = list(sched.masks.index.params)
    regularized = {name for inst in sched.instances.values() for name in getattr(inst, "reg_regims", {}) or {}}
    claims: dict[str, list[tuple[int, Any]]] = {}
    for pruner, end in scheduled_pruners(sched).values():
        levels = getattr(pruner, "levels", None) or {}
        for name in names:
            if name in getattr(pruner, "params_names", ()) or name in levels or "*" in levels:
                claims.setdefault(name, []).append((end, pruner))
    checks: dict[int, list[tuple[Any, str]]] = {}
    for name, found in claims.items():
        last = max(end for end, _ in found)
        at_last = [pruner for end, pruner in found if end == last]
        if len(at_last) == 1 and name not in regularized:
            checks.setdefault(last, []).append((at_last[0], name))
    return checks


def target_of(pruner: Any, name: str, shape: torch.Size) -> Target | None:
    numel = math.prod(shape)
    if isinstance(pruner, AutomatedGradualPruner):
        return Target(name, numel - int(pruner.final_sparsity * numel)) if name in pruner.params_names else None
    if isinstance(pruner, SparsityLevelParameterPruner):
        level = pruner.levels.get(name, pruner.levels.get("*"))
        return Target(name, numel - int(level * numel)) if level else None
    if name not in getattr(pruner, "params_names", ()) or getattr(pruner, "block_shape", None):
        return None
    level = next((v for v in (getattr(pruner, a, None) for a in ("final_sparsity", "desired_sparsity"))
                  if v is not None), None)
    dim = {"Filters": 0, "3D": 0, "Channels": 1}.get(getattr(pruner, "group_type", ""))
    if level is None or dim is None or type(pruner).__name__.startswith(("Random", "Bernoulli")):
        return None
    count = structures.count_to_prune(shape[dim], level, getattr(pruner, "group_size", 1),
                                      getattr(pruner, "rounding_fn", math.floor), param_name=name)
    return Target(name, shape[dim] - count, dim)


def is_level_based(pruner: Any) -> bool:
    """A pruner that names an exact final level (not a random or threshold one)."""
    named = any(getattr(pruner, a, None) is not None for a in ("final_sparsity", "desired_sparsity", "levels"))
    return named and not type(pruner).__name__.startswith(("Random", "Bernoulli"))


def kept(mask: torch.Tensor, dim: int | None) -> int:
    if dim is None:
        return int(mask.sum())
    other = [d for d in range(mask.dim()) if d != dim]
    return int(mask.any(dim=other).sum())


#: Models above this many parameters spend most of a step in the optimizer and weight gradients;
#: their schedules (hundreds of ImageNet-scale epochs) run in the slow tier.
SLOW_PARAMETERS = 10_000_000


def cases() -> list[Any]:
    found = []
    for schedule, arch in manifest():
        size = sum(p.numel() for p in models.create_model(arch, device="meta").parameters()) \
            if arch in models.architectures() else 0
        marks = [pytest.mark.slow] if size > SLOW_PARAMETERS else []
        found.append(pytest.param(schedule, arch, marks=marks, id=f"{schedule}-{arch}"))
    return found or [pytest.param("-", "-", marks=pytest.mark.skip(
        reason=f"the Distiller schedule corpus is not at {CORPUS}"))]


CASES = cases()


@pytest.mark.parametrize(("schedule", "arch"), CASES)
def test_corpus_schedule_runs_its_epochs(schedule, arch):
    path = CORPUS / schedule
    missing = missing_pieces(path, arch)
    if missing:
        pytest.skip(f"needs {', '.join(missing)}, which no installed distribution provides")
    torch.manual_seed(0)
    model = make_model(arch)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScheduleWarning)
        sched = hookprune.load(path, model, optimizer)
    epochs = last_epoch(sched)
    checks = final_pruners(sched)
    checked = 0
    for epoch in range(epochs):
        sched.fire("on_epoch_begin", epoch=epoch)
        for pruner, name in checks.get(epoch, ()):
            target = target_of(pruner, name, sched.masks.index.params[name].shape)
            if target is not None:
                assert kept(sched.masks[name], target.dim) == target.kept, (epoch, target)
                checked += 1
        args, _ = batch(arch, model)
        step = {"epoch": epoch, "minibatch_id": 0, "minibatches_per_epoch": 1}
        sched.fire("on_minibatch_begin", **step)
        loss = sched.fire("before_backward", **step, loss=loss_of(model(*args)))
        optimizer.zero_grad()
        loss.backward()
        sched.fire("before_optimizer_step", **step)
        optimizer.step()
        sched.fire("on_minibatch_end", **step)
        value = float(loss.detach())
        sched.fire("on_epoch_end", epoch=epoch, metrics={"min": value, "max": -value})
    if any(is_level_based(pruner) for pruner, _ in scheduled_pruners(sched).values()):
        assert checked, "no parameter was checked at its final pruning epoch"
