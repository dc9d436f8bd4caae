"""Automated gradual pruning (Zhu & Gupta, 2017) with Distiller's cubic schedule."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from hookprune.pruning.base import ArgumentError, OwnLevel, check_fraction, check_weights
from hookprune.selection import level_keep_mask


def agp_target(initial: float, final: float, starting_epoch: int, ending_epoch: int, frequency: int,
               current_epoch: int) -> float:
    """Distiller's AGP sparsity at ``current_epoch``.

    ``final + (initial - final) * (1 - (epoch - start) / span) ** 3`` with
    ``span = ((end - start - 1) // frequency) * frequency``, so the last pruning epoch of the window
    reaches ``final`` exactly.
    """
    span = ((ending_epoch - starting_epoch - 1) // frequency) * frequency
    if span <= 0:
        raise ValueError(f"an AGP policy needs at least two pruning epochs: ending_epoch - starting_epoch "
                         f"({ending_epoch - starting_epoch}) must exceed frequency ({frequency})")
    return final + (initial - final) * (1.0 - (current_epoch - starting_epoch) / span) ** 3


class AGPSchedule:
    """The AGP level: ``initial_sparsity`` to ``final_sparsity`` along the cubic schedule of the policy's epochs."""

    initial_sparsity: float
    final_sparsity: float

    def _init_agp(self, initial_sparsity: float, final_sparsity: float) -> None:
        """Check and store the schedule's end points (the final level must exceed the initial one)."""
        self.initial_sparsity = check_fraction("initial_sparsity", initial_sparsity)
        self.final_sparsity = check_fraction("final_sparsity", final_sparsity)
        if self.final_sparsity <= self.initial_sparsity:
            raise ArgumentError("final_sparsity", f"'final_sparsity' ({final_sparsity}) must be greater "
                                f"than 'initial_sparsity' ({initial_sparsity})")

    def check_policy(self, starting_epoch: int, ending_epoch: int, frequency: int | None) -> None:
        """Refuse a window too short for the schedule (Distiller asserted ``span > 0`` mid-training)."""
        agp_target(self.initial_sparsity, self.final_sparsity, starting_epoch, ending_epoch,
                   frequency or 1, starting_epoch)

    def compute_target_sparsity(self, meta: Mapping[str, Any]) -> float:
        """The AGP level at ``meta['current_epoch']`` within the policy's window."""
        return agp_target(self.initial_sparsity, self.final_sparsity, meta["starting_epoch"],
                          meta["ending_epoch"], meta["frequency"] or 1, meta["current_epoch"])


class AGPLevels(OwnLevel, AGPSchedule):
    """An AGP schedule that refuses a policy's per-parameter ``levels``: the schedule sets the level."""

    level_source = "takes its level from the AGP schedule (initial_sparsity, final_sparsity)"


class AutomatedGradualPruner(AGPSchedule):
    """Prune the listed ``weights`` by magnitude from ``initial_sparsity`` to ``final_sparsity``
    along the cubic AGP schedule over the policy's epochs; each step zeroes exactly the target
    fraction of every listed parameter."""

    def __init__(self, name: str, initial_sparsity: float, final_sparsity: float,
                 weights: list[str] | str) -> None:
        self.name = name
        self._init_agp(initial_sparsity, final_sparsity)
        self.params_names = check_weights(weights)

    def set_param_mask(self, param: torch.Tensor, param_name: str, zeros_mask_dict: Any,
                       meta: dict[str, Any]) -> None:
        if param_name not in self.params_names:
            return
        target = self.compute_target_sparsity(meta)
        zeros_mask_dict[param_name].mask = level_keep_mask(param, target)
