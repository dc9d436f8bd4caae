"""SNIP: single-shot network pruning by connection sensitivity (Lee, Ajanthan and Torr, ICLR 2019).

Each connection ``j`` gets a gate ``c_j = 1`` that multiplies its weight; the sensitivity of the
loss to the gate is ``dL/dc_j = w_j * dL/dw_j``. SNIP keeps the connections whose ``|w * dL/dw|`` is
largest and removes the rest once, before training has moved the weights, so the network trains
sparse from the start.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from hookprune import ArgumentError, global_keep_masks, hookimpl, level_keep_mask
from hookprune.pruning.base import OwnLevel

__all__ = ["SNIPPruner", "Scope"]

#: where the ``int(sparsity * n)`` removed connections are counted: over all listed weights
#: together, or in each weight on its own
Scope = Literal["global", "layer"]
SCOPES: tuple[str, ...] = ("global", "layer")


class SNIPPruner(OwnLevel):
    """Remove the ``int(sparsity * n)`` connections of ``weights`` with the smallest ``|w * dL/dw|``, once.

    The scores are taken from the training loop's own gradients at ``before_optimizer_step`` of the
    first ``batches`` minibatches of the first epoch the pruner's policy covers (fewer when that
    epoch is shorter): ``|sum over those minibatches of w * dL/dw|``, the sensitivity to the loss of
    all of them together. ``scope: global`` counts the ``n`` connections over every listed weight
    together, as the paper does; ``scope: layer`` prunes each weight to ``sparsity`` on its own.
    The masks go to the engine through ``scheduler.masks``, which applies them after every optimizer
    step from then on; the pruner does nothing more in later epochs.
    """

    def __init__(self, name: str, model: torch.nn.Module, weights: list[str] | str, sparsity: float,
                 scope: Scope = "global", batches: int = 1) -> None:
        self.name = name
        self.weights = _check_weights(weights, model)
        self.sparsity = _check_sparsity(sparsity)
        if scope not in SCOPES:
            raise ArgumentError("scope", f"'scope' must be one of {', '.join(SCOPES)}, got {scope!r}")
        self.scope: str = scope
        if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
            raise ArgumentError("batches", f"'batches' must be an integer >= 1, got {batches!r}")
        self.batches = batches
        #: True once the masks are handed to the engine; a resumed run with this state does not prune again
        self.pruned = False
        #: the epoch in which the masks were computed, or None before
        self.pruned_epoch: int | None = None
        #: how many minibatches have contributed to the scores so far
        self.batches_seen = 0
        self._scores: dict[str, torch.Tensor] = {}

    # -- a policy's 'levels' does not apply ---------------------------------------------------

    @property
    def level_source(self) -> str:  # type: ignore[override]
        """Why a policy's ``levels`` is refused (:class:`~hookprune.pruning.base.OwnLevel`), naming this instance."""
        return f"'{self.name}' takes its level from 'sparsity' and 'scope'"

    # -- hooks --------------------------------------------------------------------------------

    @hookimpl
    def before_optimizer_step(self, scheduler: Any, model: torch.nn.Module, epoch: int, minibatch_id: int,
                              minibatches_per_epoch: int) -> None:
        """Add this minibatch's ``w * dL/dw`` to the scores; after the last scoring minibatch, hand
        the masks to the engine and zero the removed connections' gradients for this step."""
        if self.pruned:
            return
        params = self._params(model)
        for param_name, param in params.items():
            if param.grad is None:
                raise RuntimeError(f"SNIPPruner '{self.name}': '{param_name}' has no gradient at "
                                   "before_optimizer_step; SNIP scores weights that the loss depends on, "
                                   "so call loss.backward() before firing it, and list only trained weights")
            sensitivity = param.detach().float() * param.grad.detach().float()
            if param_name in self._scores:
                self._scores[param_name].add_(sensitivity)
            else:
                self._scores[param_name] = sensitivity
        self.batches_seen += 1
        if self.batches_seen < self.batches and minibatch_id < minibatches_per_epoch - 1:
            return
        keep = self.keep_masks(self._scores)
        for param_name, mask in keep.items():
            scheduler.masks[param_name] = mask
            with torch.no_grad():
                params[param_name].grad.mul_(mask)
        self.pruned = True
        self.pruned_epoch = epoch
        self._scores = {}

    # -- selection ----------------------------------------------------------------------------

    def keep_masks(self, scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Boolean keep-masks from signed sensitivities ``{name: w * dL/dw}``: False at the
        ``int(sparsity * n)`` smallest ``|score|``, counted by ``scope``: the exact selection of
        :mod:`hookprune.selection`, ties taken in the order of ``weights``, then by index."""
        for param_name, score in scores.items():
            if not bool(torch.isfinite(score).all()):
                raise RuntimeError(f"SNIPPruner '{self.name}': the sensitivity of '{param_name}' is not "
                                   "finite (inf or nan in the weights or gradients)")
        if self.scope == "layer":
            return {param_name: level_keep_mask(score, self.sparsity) for param_name, score in scores.items()}
        return global_keep_masks(scores, self.sparsity)

    def _params(self, model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
        named = dict(model.named_parameters())
        return {param_name: named[param_name] for param_name in self.weights}

    # -- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Whether the masks were computed (then the engine's checkpoint holds them) and, between
        scoring minibatches, the scores accumulated so far."""
        return {
            "pruned": self.pruned,
            "pruned_epoch": self.pruned_epoch,
            "batches_seen": self.batches_seen,
            "scores": {param_name: score.clone() for param_name, score in self._scores.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        self.pruned = bool(state["pruned"])
        self.pruned_epoch = state.get("pruned_epoch")
        self.batches_seen = int(state.get("batches_seen", 0))
        self._scores = {param_name: score.clone() for param_name, score in state.get("scores", {}).items()}


def _check_sparsity(sparsity: Any) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, int | float) or not 0 <= sparsity < 1:
        raise ArgumentError("sparsity", f"'sparsity' must be a number within [0, 1), got {sparsity!r}")
    return float(sparsity)


def _check_weights(weights: Any, model: torch.nn.Module) -> list[str]:
    if isinstance(weights, str):
        weights = [weights]
    if not isinstance(weights, list | tuple) or not weights:
        raise ArgumentError("weights", "'weights' must list at least one parameter")
    named = dict(model.named_parameters())
    seen: set[str] = set()
    for param_name in weights:
        if param_name not in named:
            raise ArgumentError("weights", f"'weights': the model has no parameter {param_name!r}")
        if param_name in seen:
            raise ArgumentError("weights", f"'weights' lists {param_name!r} twice")
        seen.add(param_name)
    return list(weights)
