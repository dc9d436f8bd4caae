"""Threshold pruners: a fixed magnitude threshold, or one scaled by the weights' standard deviation."""

from __future__ import annotations

from typing import Any

import torch

from hookprune.pruning.base import ArgumentError, check_number
from hookprune.selection import threshold_keep_mask


def _check_table(argument: str, table: Any, *, default_required: bool) -> dict[str, float]:
    if not isinstance(table, dict) or not table:
        raise ArgumentError(argument, f"'{argument}' must map parameter names (or '*') to numbers")
    if default_required and "*" not in table:
        raise ArgumentError(argument, f"'{argument}' needs a default entry '*' (as in Distiller)")
    return {name: check_number(f"{argument}['{name}']", v) for name, v in table.items()}


class MagnitudeParameterPruner:
    """Zero every element whose magnitude is at most the parameter's threshold.

    ``thresholds`` maps parameter names to thresholds and must hold a default ``'*'``.
    """

    def __init__(self, name: str, thresholds: dict[str, float]) -> None:
        self.name = name
        self.thresholds = _check_table("thresholds", thresholds, default_required=True)

    def set_param_mask(self, param: torch.Tensor, param_name: str, zeros_mask_dict: Any,
                       meta: dict[str, Any]) -> None:
        threshold = self.thresholds.get(param_name, self.thresholds["*"])
        zeros_mask_dict[param_name].mask = threshold_keep_mask(param, threshold)


class SensitivityPruner:
    """Han et al.'s pruner: threshold = std(weights) * sensitivity.

    The standard deviation is taken once, from the weights the first time a parameter is pruned,
    and kept (in the scheduler's state) so later epochs use the dense weights' spread.
    ``sensitivities`` maps parameter names to sensitivities; ``'*'`` covers the rest.
    """

    def __init__(self, name: str, sensitivities: dict[str, float]) -> None:
        self.name = name
        self.sensitivities = _check_table("sensitivities", sensitivities, default_required=False)
        self.stddevs: dict[str, float] = {}

    def set_param_mask(self, param: torch.Tensor, param_name: str, zeros_mask_dict: Any,
                       meta: dict[str, Any]) -> None:
        sensitivity = self.sensitivities.get(param_name, self.sensitivities.get("*"))
        if sensitivity is None:
            return
        if param_name not in self.stddevs:
            self.stddevs[param_name] = torch.std(param.detach()).item()
        threshold = self.stddevs[param_name] * sensitivity
        zeros_mask_dict[param_name].mask = threshold_keep_mask(param, threshold)

    def state_dict(self) -> dict[str, Any]:
        return {"stddevs": dict(self.stddevs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stddevs = dict(state.get("stddevs", {}))
