"""Distiller's LR schedulers, beside torch's (every ``torch.optim.lr_scheduler`` class is
available to schedules by its own name)."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

import torch
from torch.optim.lr_scheduler import LRScheduler


class PolynomialLR(torch.optim.lr_scheduler.PolynomialLR):
    """``lr = base_lr * (1 - epoch / T_max) ** power``.

    Takes Distiller's ``T_max`` or torch's ``total_iters`` (one of them); otherwise torch's class,
    which holds the rate at zero after ``T_max`` epochs.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, T_max: int | None = None, power: float = 1.0,
                 last_epoch: int = -1, total_iters: int | None = None) -> None:
        if (T_max is None) == (total_iters is None):
            raise ValueError("PolynomialLR needs exactly one of 'T_max' (Distiller) or 'total_iters' (torch)")
        steps = T_max if T_max is not None else total_iters
        if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
            raise ValueError(f"PolynomialLR's T_max must be a positive integer, got {steps!r}")
        self.T_max = steps
        super().__init__(optimizer, total_iters=steps, power=power, last_epoch=last_epoch)


class MultiStepMultiGammaLR(LRScheduler):
    """Multiply the base rate by ``gammas[i]`` at ``milestones[i]``, cumulatively.

    With milestones ``[30, 60]`` and gammas ``[0.1, 0.5]`` the rate is ``base`` before epoch 30,
    ``0.1 * base`` from 30 and ``0.05 * base`` from 60.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, milestones: Sequence[int],
                 gammas: Sequence[float], last_epoch: int = -1) -> None:
        if list(milestones) != sorted(milestones):
            raise ValueError(f"Milestones should be a list of increasing integers. Got {list(milestones)}")
        if len(milestones) != len(gammas):
            raise ValueError("Milestones and Gammas lists should be of same length.")
        self.milestones = list(milestones)
        self.multiplicative_gammas = [1.0]
        for gamma in gammas:
            self.multiplicative_gammas.append(gamma * self.multiplicative_gammas[-1])
        super().__init__(optimizer, last_epoch)

    def _get_closed_form_lr(self) -> list[float]:
        factor = self.multiplicative_gammas[bisect_right(self.milestones, self.last_epoch)]
        return [base_lr * factor for base_lr in self.base_lrs]

    def get_lr(self) -> list[float]:
        return self._get_closed_form_lr()
