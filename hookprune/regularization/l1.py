"""L1 regularization: ``strength * sum(|w|)`` per listed parameter, with optional soft thresholding."""

from __future__ import annotations

from typing import Any

import torch

from hookprune.regularization.base import check_strength, check_threshold_criteria, resolve_regims


class L1Regularizer:
    """Adds ``strength * sum(|w|)`` for each parameter of ``reg_regims`` (``{name: strength}``) to the loss.

    With ``threshold_criteria`` set (``Mean_Abs`` or ``Max``; either one switches thresholding on, the
    test is per element as in Distiller), every element with ``|w| <= strength`` is zeroed after each
    optimizer step of the policy's window; a regularizer policy with ``keep_mask`` keeps that mask.
    """

    def __init__(self, name: str, model: torch.nn.Module | None, reg_regims: dict[str, float],
                 threshold_criteria: str | None = None) -> None:
        self.name = name
        self.model = model
        self.reg_regims: dict[str, float] = {
            param_name: check_strength(f"reg_regims['{param_name}']", strength)
            for param_name, (strength, _) in resolve_regims(reg_regims, model, "L1Regularizer").items()
        }
        self.threshold_criteria = check_threshold_criteria(threshold_criteria)

    def loss(self, param: torch.Tensor, param_name: str, regularizer_loss: torch.Tensor,
             zeros_mask_dict: Any) -> torch.Tensor:
        """Add this parameter's L1 term to ``regularizer_loss`` in place and return it (Distiller's API)."""
        strength = self.reg_regims.get(param_name)
        if strength is not None:
            regularizer_loss += param.abs().sum() * strength
        return regularizer_loss

    def threshold(self, param: torch.Tensor, param_name: str, zeros_mask_dict: Any) -> None:
        """Hand over a regularization mask that zeroes the elements with ``|w| <= strength``."""
        strength = self.reg_regims.get(param_name)
        if self.threshold_criteria is None or strength is None:
            return
        zeros_mask_dict[param_name].mask = param.detach().abs() > strength
        zeros_mask_dict[param_name].is_regularization_mask = True
