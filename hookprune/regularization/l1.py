"""L1 regularization: ``strength * sum(|w|)`` per listed parameter, with optional soft thresholding."""

from __future__ import annotations

import torch

from hookprune.regularization.base import Regularizer, check_strength, check_threshold_criteria, resolve_regims


class L1Regularizer(Regularizer):
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

    def penalty(self, param_name: str, param: torch.Tensor) -> torch.Tensor | None:
        """``strength * sum(|w|)``."""
        strength = self.reg_regims.get(param_name)
        return None if strength is None else param.abs().sum() * strength

    def threshold_mask(self, param_name: str, param: torch.Tensor) -> torch.Tensor | None:
        """Keep the elements with ``|w| > strength`` (None without ``threshold_criteria``)."""
        strength = self.reg_regims.get(param_name)
        if self.threshold_criteria is None or strength is None:
            return None
        return param.detach().abs() > strength
