"""Element-wise magnitude pruning: to an exact level (fixed, per parameter, or AGP), or below a threshold."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from hookprune.errors import ArgumentError
from hookprune.pruning.base import Pruner, PruningStep
from hookprune.pruning.checks import check_number, check_weights
from hookprune.pruning.levels import AGPLevel, LevelSchedule, PerParameterLevels
from hookprune.selection import level_keep_mask, threshold_keep_mask
from hookprune.sharding import scalar


class LevelMagnitudePruner(Pruner):
    """Zero exactly ``int(level * numel)`` smallest-magnitude elements of each parameter it prunes, its level
    from a level schedule (ties: the lower index is pruned first)."""

    def __init__(self, name: str, weights: list[str] | str | None, level: LevelSchedule) -> None:
        self.name = name
        self.params_names = check_weights(weights) if weights is not None else []
        self.level = level

    def keep_masks(self, step: PruningStep) -> dict[str, torch.Tensor]:
        """An exact level mask for every target whose level is not zero."""
        masks = {}
        assert self.level is not None
        for param_name in self.targets(step.params):
            level = self.level.level(param_name, step)
            if level:
                masks[param_name] = level_keep_mask(step.ranked(param_name), level)
        return masks


class AutomatedGradualPruner(LevelMagnitudePruner):
    """Prune the listed ``weights`` by magnitude from ``initial_sparsity`` to ``final_sparsity`` along the cubic
    AGP schedule over the policy's epochs (Zhu & Gupta, 2017); each step zeroes exactly the target fraction of
    every listed parameter."""

    def __init__(self, name: str, initial_sparsity: float, final_sparsity: float, weights: list[str] | str) -> None:
        super().__init__(name, weights, AGPLevel(initial_sparsity, final_sparsity))


class SparsityLevelParameterPruner(LevelMagnitudePruner):
    """Zero exactly ``int(level * numel)`` smallest-magnitude elements of each parameter ``levels`` names (``'*'``:
    every other parameter of the model). A pruner policy's ``args: {levels: ...}`` replaces them."""

    def __init__(self, name: str, levels: dict[str, float]) -> None:
        super().__init__(name, None, PerParameterLevels(levels))

    @property
    def levels(self) -> dict[str, float]:
        """The pruner's own levels (a policy's ``levels`` replaces them while it acts)."""
        assert isinstance(self.level, PerParameterLevels)
        return self.level.levels

    @levels.setter
    def levels(self, levels: dict[str, float]) -> None:
        self.level = PerParameterLevels(levels)

    def targets(self, params: Mapping[str, torch.Tensor]) -> list[str]:
        """Every parameter: the level decides (0 for one not named)."""
        return list(params)

    @staticmethod
    def create_mask(param: torch.Tensor, desired_sparsity: float) -> torch.Tensor:
        """Boolean keep-mask with exactly ``int(desired_sparsity * numel)`` zeros."""
        return level_keep_mask(param, desired_sparsity)


def _check_table(argument: str, table: Any, *, default_required: bool) -> dict[str, float]:
    if not isinstance(table, dict) or not table:
        raise ArgumentError(argument, f"'{argument}' must map parameter names (or '*') to numbers")
    if default_required and "*" not in table:
        raise ArgumentError(argument, f"'{argument}' needs a default entry '*' (as in Distiller)")
    return {name: check_number(f"{argument}['{name}']", v) for name, v in table.items()}


class _ThresholdPruner(Pruner):
    """Zero every element of a parameter whose magnitude is at most the parameter's threshold; the parameters are
    those a table names (``'*'``: every parameter of the model)."""

    no_levels = "prunes by threshold"
    table: dict[str, float]

    def targets(self, params: Mapping[str, torch.Tensor]) -> list[str]:
        """The parameters the table names, or every one with ``'*'``."""
        return list(params) if "*" in self.table else [name for name in params if name in self.table]

    def threshold(self, param_name: str, param: torch.Tensor) -> float:
        """The magnitude at or below which ``param_name``'s elements are zeroed."""
        raise NotImplementedError

    def keep_masks(self, step: PruningStep) -> dict[str, torch.Tensor]:
        """A threshold mask for every target."""
        return {name: threshold_keep_mask(step.ranked(name), self.threshold(name, step.ranked(name)))
                for name in self.targets(step.params)}


class MagnitudeParameterPruner(_ThresholdPruner):
    """Zero every element whose magnitude is at most the parameter's threshold.

    ``thresholds`` maps parameter names to thresholds and must hold a default ``'*'``.
    """

    def __init__(self, name: str, thresholds: dict[str, float]) -> None:
        self.name = name
        self.params_names = []
        self.thresholds = self.table = _check_table("thresholds", thresholds, default_required=True)

    def threshold(self, param_name: str, param: torch.Tensor) -> float:
        """The parameter's threshold, else the default."""
        return self.thresholds.get(param_name, self.thresholds["*"])


class SensitivityPruner(_ThresholdPruner):
    """Han et al.'s pruner: threshold = std(weights) * sensitivity.

    The standard deviation is taken once, from the weights the first time a parameter is pruned,
    and kept (in the scheduler's state) so later epochs use the dense weights' spread.
    ``sensitivities`` maps parameter names to sensitivities; ``'*'`` covers the rest.
    """

    def __init__(self, name: str, sensitivities: dict[str, float]) -> None:
        self.name = name
        self.params_names = []
        self.sensitivities = self.table = _check_table("sensitivities", sensitivities, default_required=False)
        self.stddevs: dict[str, float] = {}

    def threshold(self, param_name: str, param: torch.Tensor) -> float:
        """``std * sensitivity``, the standard deviation of the weights as first pruned."""
        sensitivity = self.sensitivities.get(param_name, self.sensitivities.get("*"))
        assert sensitivity is not None
        if param_name not in self.stddevs:
            self.stddevs[param_name] = scalar(torch.std(param.detach()))
        return self.stddevs[param_name] * sensitivity

    def state_dict(self) -> dict[str, Any]:
        return {"stddevs": dict(self.stddevs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stddevs = dict(state.get("stddevs", {}))
