"""Dynamic network surgery (Guo, Yao & Chen, NIPS 2016): prune small weights, splice large ones back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from hookprune.errors import ArgumentError
from hookprune.pruning.base import Pruner, PruningStep
from hookprune.pruning.checks import check_number
from hookprune.sharding import local, scalar


def splice_mask(weights: torch.Tensor, current_keep: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """The network surgery function with hysteresis, as a boolean keep-mask.

    ``|w| < low`` is pruned, ``|w| >= high`` is kept (spliced back if it was pruned), and a weight in
    between keeps its ``current_keep`` decision.
    """
    magnitude = weights.detach().abs()
    keep = current_keep.to(device=magnitude.device, dtype=torch.bool)
    keep = torch.where(magnitude < low, False, keep)
    return torch.where(magnitude >= high, True, keep)


class SplicingPruner(Pruner):
    """Guo et al.'s dynamic network surgery, with Distiller's thresholds and argument names.

    For a parameter with sensitivity ``s`` (from ``sensitivities``, ``'*'`` covering the rest), the
    thresholds are ``(mean(|w|) + std(|w|) * s) * low_thresh_mult`` and ``... * hi_thresh_mult``, where
    the mean and standard deviation of ``|w|`` are taken once, the first time the parameter is pruned,
    and kept (as state) for the rest of training, as Guo's Caffe code and Distiller do. A weight below
    the low threshold is pruned, one at or above the high threshold is kept, including a pruned one
    that has grown back (splicing), and one in between keeps its previous decision. When
    ``sensitivity_multiplier`` is positive the sensitivity grows linearly over the window:
    ``s * ((epoch - starting_epoch) * sensitivity_multiplier + 1)``.

    Distiller's schedules run it every minibatch (policy arg ``mini_batch_pruning_frequency: 1``),
    usually with ``mask_on_forward_only`` so that the optimizer keeps updating pruned weights, which
    is what lets them come back.
    """

    no_levels = "prunes by thresholds"

    def __init__(self, name: str, sensitivities: dict[str, float], low_thresh_mult: float,
                 hi_thresh_mult: float, sensitivity_multiplier: float = 0.0) -> None:
        self.name = name
        if not isinstance(sensitivities, Mapping) or not sensitivities:
            raise ArgumentError("sensitivities", "'sensitivities' must map parameter names (or '*') to numbers")
        self.sensitivities = {param: check_number(f"sensitivities['{param}']", value)
                              for param, value in sensitivities.items()}
        self.low_thresh_mult = check_number("low_thresh_mult", low_thresh_mult)
        self.hi_thresh_mult = check_number("hi_thresh_mult", hi_thresh_mult)
        if self.hi_thresh_mult < self.low_thresh_mult:
            raise ArgumentError("hi_thresh_mult", f"'hi_thresh_mult' ({hi_thresh_mult}) must be at least "
                                f"'low_thresh_mult' ({low_thresh_mult})")
        self.sensitivity_multiplier = check_number("sensitivity_multiplier", sensitivity_multiplier)
        #: parameter name -> (mean, std) of |w| when it was first pruned
        self.magnitude_stats: dict[str, tuple[float, float]] = {}
        self.params_names = []

    def sensitivity(self, param_name: str, step: PruningStep) -> float | None:
        """The sensitivity for ``param_name`` at the step's epoch, or None when the parameter is not pruned."""
        sensitivity = self.sensitivities.get(param_name, self.sensitivities.get("*"))
        if sensitivity is None:
            return None
        if self.sensitivity_multiplier > 0:
            sensitivity *= (step.position - step.policy.window.starting_epoch) * self.sensitivity_multiplier + 1
        return sensitivity

    def targets(self, params: Mapping[str, torch.Tensor]) -> list[str]:
        """The parameters ``sensitivities`` names, or every one with ``'*'``."""
        return list(params) if "*" in self.sensitivities else [n for n in params if n in self.sensitivities]

    def thresholds(self, param: torch.Tensor, param_name: str, sensitivity: float) -> tuple[float, float]:
        """The (low, high) thresholds for ``param_name``, measuring ``|param|`` the first time."""
        if param_name not in self.magnitude_stats:
            magnitude = param.detach().abs()
            self.magnitude_stats[param_name] = (scalar(torch.mean(magnitude)), scalar(torch.std(magnitude)))
        mean, std = self.magnitude_stats[param_name]
        base = mean + std * sensitivity
        return base * self.low_thresh_mult, base * self.hi_thresh_mult

    def keep_masks(self, step: PruningStep) -> dict[str, torch.Tensor]:
        """Each parameter's mask updated with the surgery function."""
        masks = {}
        for param_name in self.targets(step.params):
            sensitivity = self.sensitivity(param_name, step)
            assert sensitivity is not None
            param = step.ranked(param_name)
            low, high = self.thresholds(param, param_name, sensitivity)
            # the engine's mask of a parameter FSDP2 shards is this rank's shard: update it on the shard
            shard = local(param)
            current = step.scheduler.masks.get(param_name)
            if current is None:
                current = torch.ones_like(shard, dtype=torch.bool)
            masks[param_name] = splice_mask(shard, current, low, high)
        return masks

    def state_dict(self) -> dict[str, Any]:
        """The |w| statistics the thresholds were derived from."""
        return {"magnitude_stats": {name: list(stats) for name, stats in self.magnitude_stats.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        self.magnitude_stats = {name: (float(stats[0]), float(stats[1]))
                                for name, stats in state.get("magnitude_stats", {}).items()}
