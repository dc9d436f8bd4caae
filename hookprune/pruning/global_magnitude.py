"""Global magnitude pruning: one threshold across several weights instead of one level per weight.

Layers then lose different fractions of their weights: the threshold falls where the smallest
magnitudes of the whole group are, which usually spares small, sensitive layers.

A global mask needs every listed weight at once, while a pruner policy asks for masks one
parameter at a time (Distiller's ``set_param_mask``). So the pruner computes all of its masks in
one selection at the first call of each pruning step and hands each parameter its mask from
that result. A step is recognised by its calls: the policy asks for every parameter once per
step, so a name asked for a second time starts the next step. Working through ``set_param_mask``
keeps everything the pruner policy offers (its window in ``meta``, minibatch pruning, masking
options) and lets a Distiller loop drive the pruner unchanged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from hookprune._engine.params import ParamIndex
from hookprune.pruning.agp import AGPSchedule
from hookprune.pruning.base import check_fraction, check_weights
from hookprune.selection import global_keep_masks


class _GlobalPruner(ABC):
    """What both global pruners share: the listed weights and serving one selection per step."""

    def __init__(self, name: str, weights: list[str] | str) -> None:
        self.name = name
        self.params_names = check_weights(weights)
        self._masks: dict[str, torch.Tensor] = {}
        self._served: set[str] = set()

    @abstractmethod
    def compute_target_sparsity(self, meta: dict[str, Any]) -> float:
        """The global sparsity of the pruning step ``meta`` describes."""

    def global_masks(self, model: torch.nn.Module, sparsity: float) -> dict[str, torch.Tensor]:
        """Keep-masks for every listed weight of ``model`` under one threshold, by the model's names."""
        index = ParamIndex(model)
        params: dict[str, torch.Tensor] = {}
        for listed in self.params_names:
            actual = index.resolve(listed)
            if actual is None:
                raise ValueError(f"{type(self).__name__} '{self.name}': {index.unknown_message(listed)}")
            params[actual] = index.params[actual]
        return global_keep_masks(params, sparsity)

    def set_param_mask(self, param: torch.Tensor, param_name: str, zeros_mask_dict: Any,
                       meta: dict[str, Any]) -> None:
        """Distiller's pruner entry point: hand ``param_name`` its share of the global mask."""
        if param_name not in self.params_names:
            return
        if not self._masks or param_name in self._served:
            self._masks = self.global_masks(meta["model"], self.compute_target_sparsity(meta))
            self._served = set()
        self._served.add(param_name)
        zeros_mask_dict[param_name].mask = self._masks[param_name]


class GlobalMagnitudePruner(_GlobalPruner):
    """Zero the smallest magnitudes across all listed ``weights`` together: exactly
    ``int(sparsity * total)`` elements, ``total`` being the sum of their sizes (ties: the order of
    ``weights``, then position)."""

    def __init__(self, name: str, sparsity: float, weights: list[str] | str) -> None:
        super().__init__(name, weights)
        self.sparsity = check_fraction("sparsity", sparsity)

    def compute_target_sparsity(self, meta: dict[str, Any]) -> float:
        """The fixed ``sparsity``."""
        return self.sparsity


class GlobalAutomatedGradualPruner(AGPSchedule, _GlobalPruner):
    """Global magnitude pruning whose sparsity follows the AGP cubic schedule (Zhu & Gupta) from
    ``initial_sparsity`` to ``final_sparsity`` over the policy's epochs, exactly as
    AutomatedGradualPruner computes it per layer."""

    def __init__(self, name: str, initial_sparsity: float, final_sparsity: float,
                 weights: list[str] | str) -> None:
        super().__init__(name, weights)
        self._init_agp(initial_sparsity, final_sparsity)
