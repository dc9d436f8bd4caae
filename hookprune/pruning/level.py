"""Prune each parameter to an exact sparsity level by magnitude."""

from __future__ import annotations

from typing import Any

import torch

from hookprune.pruning.base import check_levels
from hookprune.selection import level_keep_mask


class SparsityLevelParameterPruner:
    """Zero exactly ``int(level * numel)`` smallest-magnitude elements of each listed parameter.

    ``levels`` maps parameter names to sparsity levels; ``'*'`` is the level for every other
    parameter. A pruner policy's ``args: {levels: ...}`` replaces them.
    """

    def __init__(self, name: str, levels: dict[str, float]) -> None:
        self.name = name
        self.levels = check_levels("levels", levels)

    def set_param_mask(self, param: torch.Tensor, param_name: str, zeros_mask_dict: Any,
                       meta: dict[str, Any]) -> None:
        desired = self.levels.get(param_name, self.levels.get("*", 0))
        if desired == 0:
            return
        zeros_mask_dict[param_name].mask = self.create_mask(param, desired)

    @staticmethod
    def create_mask(param: torch.Tensor, desired_sparsity: float) -> torch.Tensor:
        """Boolean keep-mask with exactly ``int(desired_sparsity * numel)`` zeros."""
        return level_keep_mask(param, desired_sparsity)
