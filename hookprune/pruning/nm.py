"""N:M fine-grained structured sparsity: N of every M consecutive input weights are kept.

This is the pattern sparse tensor cores accelerate (2:4 on NVIDIA Ampere and later). Groups run
along the input dimension, as NVIDIA's Automatic SParsity (ASP) forms them: along ``in`` of a
Linear weight ``(out, in)``, and along ``in`` at every ``(out, kh, kw)`` position of a convolution
weight ``(out, in, kh, kw)``.
"""

from __future__ import annotations

from typing import Any

import torch

from hookprune.errors import ArgumentError
from hookprune.pruning.base import Pruner, PruningStep
from hookprune.pruning.checks import check_weights


def _check_positive_int(argument: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ArgumentError(argument, f"'{argument}' must be an integer >= 1, got {value!r}")
    return value


def nm_keep_mask(weights: torch.Tensor, n: int, m: int, name: str = "the weight") -> torch.Tensor:
    """Boolean keep-mask holding the ``n`` largest magnitudes of every ``m`` consecutive elements
    along dimension 1; of equal magnitudes the lower index is pruned first, as in level pruning.

    Raises ValueError naming ``name`` and its shape when it has no input dimension or that
    dimension is not a multiple of ``m``.
    """
    shape = tuple(weights.shape)
    if weights.dim() < 2:
        raise ValueError(f"N:M sparsity needs a weight with an input dimension, but '{name}' has shape {shape}")
    if shape[1] % m:
        raise ValueError(f"'{name}' has shape {shape}: its input dimension {shape[1]} is not a multiple of m={m}")
    # (out, in, *kernel) -> (out, *kernel, in): each row of m consecutive inputs is one group
    grouped = weights.detach().abs().movedim(1, -1)
    groups = grouped.reshape(-1, m)
    prune = torch.sort(groups, dim=1, stable=True).indices[:, : m - n]
    keep = torch.ones_like(groups, dtype=torch.bool)
    keep.scatter_(1, prune, False)
    return keep.view(grouped.shape).movedim(-1, 1).contiguous()


class NMSparsityPruner(Pruner):
    """Keep the ``n`` largest-magnitude weights of every ``m`` consecutive inputs (2:4, 1:4, 4:8...).

    Every listed weight must have an input dimension (dim 1) divisible by ``m``; a weight that does
    not is refused when its mask is computed, with its name and shape.
    """

    def __init__(self, name: str, n: int, m: int, weights: list[str] | str) -> None:
        self.name = name
        self.m = _check_positive_int("m", m)
        self.n = _check_positive_int("n", n)
        if self.n >= self.m:
            raise ArgumentError("n", f"'n' ({n}) must be smaller than 'm' ({m}): N of every M weights are kept")
        self.params_names = check_weights(weights)

    no_levels = "keeps n of every m weights"

    def keep_masks(self, step: PruningStep) -> dict[str, torch.Tensor]:
        """The N:M keep-mask of every listed weight."""
        masks = {}
        for param_name in self.targets(step.params):
            try:
                masks[param_name] = nm_keep_mask(step.ranked(param_name), self.n, self.m, param_name)
            except ValueError as exc:
                raise ValueError(f"NMSparsityPruner '{self.name}': {exc}") from None
        return masks
