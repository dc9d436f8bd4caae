"""Global magnitude pruning: one threshold across several weights instead of one level per weight.

Layers then lose different fractions of their weights: the threshold falls where the smallest
magnitudes of the whole group are, which usually spares small, sensitive layers. The pruner sees every
listed weight at each pruning step and selects once over all of them.
"""

from __future__ import annotations

import torch

from hookprune.pruning.base import Pruner, PruningStep
from hookprune.pruning.checks import check_weights
from hookprune.pruning.levels import AGPLevel, LevelSchedule, SingleLevel
from hookprune.selection import global_keep_masks


class GlobalPruner(Pruner):
    """Zero the smallest magnitudes across all listed ``weights`` together: exactly ``int(level * total)``
    elements, ``total`` being the sum of their sizes (ties: the order of ``weights``, then position)."""

    def __init__(self, name: str, weights: list[str] | str, level: LevelSchedule) -> None:
        self.name = name
        self.params_names = check_weights(weights)
        self.level = level

    def keep_masks(self, step: PruningStep) -> dict[str, torch.Tensor]:
        """Keep-masks for every listed weight under one threshold."""
        assert self.level is not None
        listed = [name for name in self.params_names if name in step.params]
        return global_keep_masks({name: step.ranked(name) for name in listed}, self.level.level(listed[0], step))


class GlobalMagnitudePruner(GlobalPruner):
    """Global magnitude pruning at a fixed ``sparsity``."""

    def __init__(self, name: str, sparsity: float, weights: list[str] | str) -> None:
        super().__init__(name, weights, SingleLevel(sparsity, "sparsity"))

    @property
    def sparsity(self) -> float:
        assert isinstance(self.level, SingleLevel)
        return self.level.desired_sparsity


class GlobalAutomatedGradualPruner(GlobalPruner):
    """Global magnitude pruning whose sparsity follows the AGP cubic schedule (Zhu & Gupta) from
    ``initial_sparsity`` to ``final_sparsity`` over the policy's epochs, exactly as
    AutomatedGradualPruner computes it per layer."""

    def __init__(self, name: str, initial_sparsity: float, final_sparsity: float,
                 weights: list[str] | str) -> None:
        super().__init__(name, weights, AGPLevel(initial_sparsity, final_sparsity))
