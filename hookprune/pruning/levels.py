"""How much a pruner prunes, and when: level schedules, apart from which elements it prunes (its ranking).

As torch.ao.pruning separates a sparsifier from its scheduler, a built-in pruner pairs a ranking with one of
these: a fixed level (which a policy's ``levels`` may override per parameter), per-parameter levels, Zhu &
Gupta's AGP schedule over the policy's epochs, or a level drawn at random. Distiller's ``..._AGP`` class
names are the same pruners with an :class:`AGPLevel`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from hookprune.contract import Policy
from hookprune.errors import ArgumentError
from hookprune.pruning.checks import check_fraction, check_levels

if TYPE_CHECKING:
    from hookprune.pruning.base import PruningStep


def agp_target(initial: float, final: float, starting_epoch: int, ending_epoch: int, frequency: int,
               current_epoch: int, unit: str = "epoch") -> float:
    """Distiller's AGP sparsity at ``current_epoch`` (or at a global step, over a step window: ``unit="step"``).

    ``final + (initial - final) * (1 - (epoch - start) / span) ** 3`` with
    ``span = ((end - start - 1) // frequency) * frequency``, so the last pruning epoch of the window
    reaches ``final`` exactly.
    """
    span = ((ending_epoch - starting_epoch - 1) // frequency) * frequency
    if span <= 0:
        keys = ("ending_step", "starting_step", "step_frequency") if unit == "step" else (
            "ending_epoch", "starting_epoch", "frequency")
        raise ValueError(f"an AGP policy needs at least two pruning {unit}s: {keys[0]} - {keys[1]} "
                         f"({ending_epoch - starting_epoch}) must exceed {keys[2]} ({frequency})")
    return final + (initial - final) * (1.0 - (current_epoch - starting_epoch) / span) ** 3


class LevelSchedule:
    """The fraction a pruner prunes of a parameter at a pruning step."""

    #: why a policy's ``levels`` does not apply (after the pruner's class name), or None when it overrides
    #: the level per parameter
    refuses_policy_levels: str | None = None

    def level(self, param_name: str, step: PruningStep) -> float:
        """The fraction of ``param_name`` to prune at ``step``."""
        raise NotImplementedError

    def check_policy(self, policy: Policy) -> None:
        """Refuse a policy window the schedule cannot follow."""


class FixedLevel(LevelSchedule):
    """``desired_sparsity`` for every parameter, or the policy's ``levels`` for a parameter it names (``'*'``:
    every other one)."""

    def __init__(self, desired_sparsity: float, argument: str = "desired_sparsity") -> None:
        self.desired_sparsity = check_fraction(argument, desired_sparsity)

    def level(self, param_name: str, step: PruningStep) -> float:
        """The policy's level for ``param_name``, else ``desired_sparsity``."""
        levels = step.policy.arg("levels") or {}
        return levels.get(param_name, levels.get("*", self.desired_sparsity))


class SingleLevel(FixedLevel):
    """One level for all the pruner's parameters together (a global pruner's): a policy's ``levels`` does not
    apply."""

    refuses_policy_levels = "prunes one 'sparsity' across all its weights together"

    def level(self, param_name: str, step: PruningStep) -> float:
        """``desired_sparsity``."""
        return self.desired_sparsity


class PerParameterLevels(LevelSchedule):
    """A level per parameter (``'*'``: every other parameter of the model), which a policy's ``levels``
    replaces as a whole, as in Distiller."""

    def __init__(self, levels: Mapping[str, float], argument: str = "levels") -> None:
        self.levels = check_levels(argument, levels)

    def table(self, step: PruningStep) -> Mapping[str, float]:
        """The levels in force at ``step``: the policy's, else the pruner's own."""
        return step.policy.arg("levels") or self.levels

    def level(self, param_name: str, step: PruningStep) -> float:
        """The level for ``param_name`` (0 for a parameter not named and no ``'*'``)."""
        table = self.table(step)
        return table.get(param_name, table.get("*", 0.0))


class AGPLevel(LevelSchedule):
    """Zhu & Gupta's automated gradual pruning: ``initial_sparsity`` to ``final_sparsity`` along Distiller's cubic
    schedule over the policy's epochs, or its global steps under a step window (:func:`agp_target`); the last
    pruning epoch (step) reaches the final level."""

    refuses_policy_levels = "takes its level from the AGP schedule (initial_sparsity, final_sparsity)"

    def __init__(self, initial_sparsity: float, final_sparsity: float) -> None:
        self.initial_sparsity = check_fraction("initial_sparsity", initial_sparsity)
        self.final_sparsity = check_fraction("final_sparsity", final_sparsity)
        if self.final_sparsity <= self.initial_sparsity:
            raise ArgumentError("final_sparsity", f"'final_sparsity' ({final_sparsity}) must be greater "
                                f"than 'initial_sparsity' ({initial_sparsity})")

    def check_policy(self, policy: Policy) -> None:
        """Refuse a window too short for the schedule (Distiller asserted ``span > 0`` mid-training)."""
        window = policy.window
        agp_target(self.initial_sparsity, self.final_sparsity, window.starting_epoch, window.ending_epoch,
                   window.frequency or 1, window.starting_epoch, window.unit)

    def at(self, policy: Policy, epoch: int) -> float:
        """The AGP level at ``epoch`` of ``policy``'s window (a global step, for a step window)."""
        window = policy.window
        return agp_target(self.initial_sparsity, self.final_sparsity, window.starting_epoch, window.ending_epoch,
                          window.frequency or 1, epoch, window.unit)

    def level(self, param_name: str, step: PruningStep) -> float:
        """The same AGP level for every parameter."""
        return self.at(step.policy, step.position)


class RandomLevel(LevelSchedule):
    """A level drawn uniformly from ``sparsity_range`` [low, high] with the pruner's generator, each time a level
    is asked for."""

    refuses_policy_levels = "draws its level from 'sparsity_range'"

    def __init__(self, sparsity_range: Any, generator: torch.Generator) -> None:
        if not isinstance(sparsity_range, list | tuple) or len(sparsity_range) != 2:
            raise ArgumentError("sparsity_range", f"'sparsity_range' must be [low, high], got {sparsity_range!r}")
        low = check_fraction("sparsity_range", sparsity_range[0])
        high = check_fraction("sparsity_range", sparsity_range[1])
        if low > high:
            raise ArgumentError("sparsity_range", f"'sparsity_range' must be [low, high] with low <= high, "
                                f"got {list(sparsity_range)}")
        self.sparsity_range = (low, high)
        self.generator = generator

    def level(self, param_name: str, step: PruningStep) -> float:
        """A fresh uniform draw."""
        low, high = self.sparsity_range
        return low + (high - low) * torch.rand((), generator=self.generator, dtype=torch.float64).item()
