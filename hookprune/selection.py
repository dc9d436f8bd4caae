"""Exact magnitude selection: which ``int(sparsity * numel)`` elements are the smallest.

The answer is the one a stable full sort of ``|x|`` gives: ties at the threshold are broken by
position, lowest index pruned first, so the count is exact and the result deterministic.
"""

from __future__ import annotations

import torch


def kth_smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest (1-based) element of a 1-D tensor, by the fastest exact method for its device."""
    n = values.numel()
    if values.device.type == "cpu":
        return torch.kthvalue(values, k).values
    if k <= n // 2:
        return torch.topk(values, k, largest=False, sorted=False).values.max()
    return torch.topk(values, n - k + 1, largest=True, sorted=False).values.min()


def prune_mask_smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean tensor, True at the ``k`` smallest scores (ties: lowest index first)."""
    flat = scores.reshape(-1)
    n = flat.numel()
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if k >= n:
        return torch.ones_like(scores, dtype=torch.bool)
    threshold = kth_smallest(flat, k)
    prune = flat <= threshold
    surplus = int(prune.sum()) - k
    if surplus:
        # more elements equal the threshold than fit: keep the last `surplus` of them by position
        at = flat == threshold
        ties_wanted = int(at.sum()) - surplus
        prune = (flat < threshold) | (at & (torch.cumsum(at, 0, dtype=torch.int64) <= ties_wanted))
    return prune.view(scores.shape)


def level_keep_mask(weights: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean keep-mask zeroing exactly ``int(sparsity * numel)`` smallest-magnitude elements."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be within [0, 1], got {sparsity}")
    k = int(sparsity * weights.numel())
    return ~prune_mask_smallest(weights.detach().abs(), k)


def threshold_keep_mask(weights: torch.Tensor, threshold: float) -> torch.Tensor:
    """Boolean keep-mask of elements whose magnitude exceeds ``threshold`` (Distiller's ``threshold_mask``)."""
    return weights.detach().abs() > threshold
