"""Group-lasso and group-variance regularization (structured sparsity learning), as in Distiller."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from hookprune.errors import ArgumentError
from hookprune.regularization.base import Regularizer, check_strength, check_threshold_criteria, resolve_regims
from hookprune.regularization.groups import (
    GROUP_TYPES,
    canonical_group_type,
    channel_norms,
    check_shape,
    group_keep_mask,
    group_lasso,
    shape_problem,
    unknown_group_type,
)


def _check_regims(reg_regims: Any, model: torch.nn.Module | None, owner: str, allowed: tuple[str, ...],
                  min_channels: int = 1) -> dict[str, tuple[float, str]]:
    """``{name: (strength, canonical group type)}`` from ``{name: [strength, group_type]}``."""
    checked: dict[str, tuple[float, str]] = {}
    for param_name, (regim, shape) in resolve_regims(reg_regims, model, owner).items():
        argument = f"reg_regims['{param_name}']"
        if isinstance(regim, str | Mapping) or not isinstance(regim, Sequence) or len(regim) != 2:
            raise ArgumentError(argument, f"{argument} must be [strength, group_type], got {regim!r}")
        strength = check_strength(argument, regim[0])
        group_type = canonical_group_type(regim[1])
        if group_type is None or group_type not in allowed:
            raise ArgumentError(argument, f"{argument}: {unknown_group_type(regim[1], allowed)}")
        problem = shape_problem(group_type, shape) if shape is not None else None
        if problem is not None:
            raise ArgumentError(argument, f"{argument}: {problem}")
        if shape is not None and len(shape) == 4 and shape[1] < min_channels:
            raise ArgumentError(argument, f"{argument}: {owner} needs at least {min_channels} input channels; "
                                f"the weight has shape {shape}")
        checked[param_name] = (strength, group_type)
    return checked


class GroupLassoRegularizer(Regularizer):
    """Adds ``strength * sum over groups of ||group||_2`` for each parameter of ``reg_regims``
    (``{name: [strength, group_type]}``) to the loss, pushing whole structures to zero.

    Group types (see :mod:`hookprune.regularization.groups`): ``Rows``, ``Cols``, ``Rows+Cols`` for
    Linear weights; ``2D``, ``Channels``, ``Filters`` (or ``3D``), ``4D``, ``Channels+4D`` for Conv2d
    weights. With ``threshold_criteria`` (``Mean_Abs`` or ``Max``), the groups whose mean (or largest)
    magnitude is at most ``strength`` are zeroed after each optimizer step of the policy's window: the
    strength doubles as the threshold, as in Distiller. A combined type zeroes an element when any group
    holding it falls below (Distiller left combined types unthresholded, and thresholded ``Channels`` by
    their mean magnitude whatever the criteria; here every type follows the rule above).
    """

    #: the group types this class accepts
    group_types: tuple[str, ...] = tuple(GROUP_TYPES)
    #: the fewest input channels a Conv2d weight may have
    min_channels = 1

    def __init__(self, name: str, model: torch.nn.Module | None, reg_regims: dict[str, list[float | str]],
                 threshold_criteria: str | None = None) -> None:
        self.name = name
        self.model = model
        self.reg_regims = _check_regims(reg_regims, model, type(self).__name__, self.group_types, self.min_channels)
        self.threshold_criteria = check_threshold_criteria(threshold_criteria)

    def group_penalty(self, param: torch.Tensor, strength: float, group_type: str) -> torch.Tensor:
        """This parameter's group-lasso term: ``strength`` times the sum of its groups' L2 norms."""
        return group_lasso(param, group_type) * strength

    def penalty(self, param_name: str, param: torch.Tensor) -> torch.Tensor | None:
        """:meth:`group_penalty` with the parameter's strength and group type."""
        regim = self.reg_regims.get(param_name)
        if regim is None:
            return None
        strength, group_type = regim
        check_shape(group_type, param, param_name)
        return self.group_penalty(param, strength, group_type)

    def threshold_mask(self, param_name: str, param: torch.Tensor) -> torch.Tensor | None:
        """Keep the groups whose score is above the strength (None when nothing is zeroed by a ``4D`` grouping,
        or without ``threshold_criteria``)."""
        regim = self.reg_regims.get(param_name)
        if self.threshold_criteria is None or regim is None:
            return None
        strength, group_type = regim
        check_shape(group_type, param, param_name)
        return group_keep_mask(param, group_type, strength, self.threshold_criteria)


class GroupVarianceRegularizer(GroupLassoRegularizer):
    """Adds ``strength / var(channel norms)`` for each Conv2d weight of ``reg_regims``
    (``{name: [strength, Channels]}``): a low variance of the input-channel L2 norms is penalised, so
    training separates strong channels from weak ones (Torfi et al., 2018, as Distiller implements it).
    The variance is the unbiased one; this regularizer does not threshold.
    """

    group_types = ("Channels",)
    min_channels = 2

    def __init__(self, name: str, model: torch.nn.Module | None, reg_regims: dict[str, list[float | str]]) -> None:
        super().__init__(name, model, reg_regims)

    def group_penalty(self, param: torch.Tensor, strength: float, group_type: str) -> torch.Tensor:
        """``strength / var(channel norms)`` of this Conv2d weight."""
        return strength / channel_norms(param).var()
