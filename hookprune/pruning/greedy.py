"""Distiller's greedy filter pruning: remove, one step at a time, the filters whose removal hurts accuracy least.

Each iteration tries every convolution: on a copy of the model it zeroes the ``pruning_step`` fraction of that
layer's filters with the smallest L1 norms, thins the copy (the filters, their BatchNorm entries and the input
channels that read them go), optionally fine-tunes it, and scores it. The candidate with the best score is
kept, and the iterations go on until the model's MACs are at most ``target_density`` of the dense model's.
A layer whose filters cannot go alone (channels tied to others by a residual addition) is not a candidate,
since zeroing it would remove no computation. The model is thinned in place; its ``thinning_recipes`` record
every step, so a checkpoint of it loads into a fresh model.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hookprune.compute import layer_compute, total_macs
from hookprune.thinning import ThinningError, remove_filters

#: ``finetuning_policy`` values: ``constant`` fine-tunes each candidate on the same fraction of the training data;
#: ``linear-grow`` on a fraction that grows as the model shrinks (1 - compute density), as in Distiller
FINETUNING_POLICIES = ("constant", "linear-grow")

Score = Callable[[nn.Module], float]
Finetune = Callable[[nn.Module, float], None]


@dataclass(frozen=True)
class GreedyStep:
    """One iteration: the convolution pruned, how many filters it lost, the candidate's score, and the model's MACs
    and weights afterwards (``density``: MACs over the dense model's)."""

    iteration: int
    layer: str
    filters_removed: int
    filters_left: int
    score: float
    macs: int
    density: float
    weights: int


def prune_weakest_filters(model: nn.Module, layer: str, count: int, example_input: Any) -> bool:
    """Zero the ``count`` filters of the convolution ``layer`` with the smallest L1 norms and thin ``model`` (traced
    on ``example_input``); whether anything was removed (filters tied to others by a residual addition stay)."""
    conv = model.get_submodule(layer)
    with torch.no_grad():
        norms = conv.weight.detach().abs().flatten(1).sum(1)
        weakest = torch.argsort(norms, stable=True)[:count]
        conv.weight[weakest] = 0
    try:
        return remove_filters(model, example_input) is not None
    except ThinningError:
        return False


def greedy_filter_pruning(model: nn.Module, example_input: Any, score: Score, target_density: float,
                          pruning_step: float = 0.1, finetune: Finetune | None = None,
                          finetuning_policy: str = "constant", train_fraction: float = 1.0,
                          on_step: Callable[[GreedyStep], None] | None = None) -> list[GreedyStep]:
    """Prune ``model``'s convolution filters greedily until its MACs are at most ``target_density`` times the
    MACs it has now (see the module); returns the iterations.

    ``score(model)`` rates a candidate (validation top-1, say; higher is better). ``finetune(model, fraction)``,
    when given, trains a candidate before it is scored, on ``fraction`` of the training data: ``train_fraction``
    under the ``constant`` policy, ``1 - density`` under ``linear-grow``. ``on_step`` hears of each iteration as
    it ends. Stops early when no convolution can lose another filter.
    """
    if not 0 < target_density < 1:
        raise ValueError(f"target_density must be in (0, 1), got {target_density}")
    if not 0 < pruning_step < 1:
        raise ValueError(f"pruning_step must be in (0, 1), got {pruning_step}")
    if finetuning_policy not in FINETUNING_POLICIES:
        raise ValueError(f"finetuning_policy must be one of {', '.join(FINETUNING_POLICIES)}, got "
                         f"{finetuning_policy!r}")
    dense = total_macs(layer_compute(model, example_input))
    macs, steps = dense, []
    while macs > target_density * dense:
        fraction = train_fraction if finetuning_policy == "constant" else max(1 - macs / dense, 1e-3)
        best: tuple[float, int, str, int, nn.Module] | None = None
        convs = [(name, m.out_channels) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        for name, filters in convs:
            count = min(max(1, math.floor(pruning_step * filters)), filters - 1)
            if count < 1:
                continue
            candidate = copy.deepcopy(model)
            if not prune_weakest_filters(candidate, name, count, example_input):
                continue
            candidate_macs = total_macs(layer_compute(candidate, example_input))
            if candidate_macs >= macs:
                continue
            if finetune is not None:
                finetune(candidate, fraction)
            rating = score(candidate)
            if best is None or rating > best[0] or (rating == best[0] and candidate_macs < best[1]):
                best = (rating, candidate_macs, name, count, candidate)
        if best is None:
            break
        rating, macs, name, count, winner = best
        prune_weakest_filters(model, name, count, example_input)
        model.load_state_dict(winner.state_dict())
        step = GreedyStep(len(steps) + 1, name, count, model.get_submodule(name).out_channels, rating, macs,
                          macs / dense, sum(p.numel() for p in model.parameters()))
        steps.append(step)
        if on_step is not None:
            on_step(step)
    return steps
