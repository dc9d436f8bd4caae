"""A third-party hookprune plugin: a schedule class that counts the events it receives."""

from __future__ import annotations

from typing import Any

import torch

from hookprune import LossTerm, hookimpl

__all__ = ["CountingPruner"]


class CountingPruner:
    """Zeroes exactly ``int(sparsity * numel)`` smallest-magnitude elements of each listed weight at
    the start of every epoch it is scheduled for, adds ``penalty * sum(w ** 2)`` of those weights to
    the loss, and records each event as ``(event, epoch, minibatch_id or None)`` in ``seen``."""

    def __init__(self, name: str, model: torch.nn.Module, weights: list[str], sparsity: float,
                 penalty: float = 0.0) -> None:
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"'sparsity' must be in [0, 1), got {sparsity!r}")
        self.name = name
        self.model = model
        self.weights = list(weights)
        self.sparsity = float(sparsity)
        self.penalty = float(penalty)
        self.seen: list[tuple[str, int, int | None]] = []
        self.seen_count = 0

    def _record(self, event: str, epoch: int, minibatch_id: int | None = None) -> None:
        self.seen.append((event, epoch, minibatch_id))
        self.seen_count += 1

    def _params(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        named = dict(model.named_parameters())
        return [named[w] for w in self.weights]

    def keep_mask(self, weight: torch.Tensor) -> torch.Tensor:
        """True everywhere except the ``int(sparsity * numel)`` smallest ``|weight|`` elements."""
        k = int(self.sparsity * weight.numel())
        keep = torch.ones(weight.numel(), dtype=torch.bool, device=weight.device)
        if k > 0:
            smallest = torch.topk(weight.detach().abs().flatten(), k, largest=False, sorted=False).indices
            keep[smallest] = False
        return keep.view_as(weight)

    @hookimpl
    def on_epoch_begin(self, scheduler: Any, model: torch.nn.Module, epoch: int) -> None:
        self._record("on_epoch_begin", epoch)
        for name, param in zip(self.weights, self._params(model), strict=True):
            scheduler.masks[name] = self.keep_mask(param)

    @hookimpl
    def on_minibatch_begin(self, epoch: int, minibatch_id: int) -> None:
        self._record("on_minibatch_begin", epoch, minibatch_id)

    @hookimpl
    def before_backward(self, model: torch.nn.Module, epoch: int, minibatch_id: int,
                        loss: torch.Tensor) -> LossTerm:
        self._record("before_backward", epoch, minibatch_id)
        squares = sum(p.pow(2).sum() for p in self._params(model))
        return LossTerm("counting_penalty", self.penalty * squares)

    @hookimpl
    def before_optimizer_step(self, epoch: int, minibatch_id: int) -> None:
        self._record("before_optimizer_step", epoch, minibatch_id)

    @hookimpl
    def on_minibatch_end(self, epoch: int, minibatch_id: int) -> None:
        self._record("on_minibatch_end", epoch, minibatch_id)

    @hookimpl
    def on_epoch_end(self, epoch: int) -> None:
        self._record("on_epoch_end", epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"seen_count": self.seen_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen_count = int(state["seen_count"])
