"""What the regularizers share: checking ``reg_regims`` and ``threshold_criteria`` so a schedule error
points at the culprit, and spelling parameter names as the model does."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from hookprune._engine.params import ParamIndex
from hookprune.errors import suggest
from hookprune.pruning.base import ArgumentError

#: Distiller's thresholding criteria: the mean magnitude of a group, or its largest magnitude.
THRESHOLD_CRITERIA = ("Mean_Abs", "Max")


def check_threshold_criteria(value: Any) -> str | None:
    """``value`` when it is None or one of :data:`THRESHOLD_CRITERIA`; ArgumentError otherwise."""
    if value is None or value in THRESHOLD_CRITERIA:
        return value
    raise ArgumentError("threshold_criteria", f"'threshold_criteria' must be one of "
                        f"{', '.join(THRESHOLD_CRITERIA)} or null, got {value!r}{suggest(value, THRESHOLD_CRITERIA)}")


def check_strength(argument: str, value: Any) -> float:
    """A regularization strength: a number >= 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ArgumentError(argument, f"{argument}: the strength must be a number >= 0, got {value!r}")
    return float(value)


def resolve_regims(reg_regims: Any, model: torch.nn.Module | None, owner: str,
                   allow_star: bool = False) -> dict[str, tuple[Any, tuple[int, ...] | None]]:
    """Each ``reg_regims`` entry under the model's own spelling of its parameter name, with that
    parameter's shape (None without a model, or for ``'*'``).

    Names are matched with or without DataParallel's ``module.``; ``'*'`` is refused unless
    ``allow_star``.
    """
    if not isinstance(reg_regims, Mapping) or not reg_regims:
        raise ArgumentError("reg_regims", "'reg_regims' must map parameter names to their settings")
    index = ParamIndex(model) if model is not None else None
    resolved: dict[str, tuple[Any, tuple[int, ...] | None]] = {}
    for name, value in reg_regims.items():
        argument = f"reg_regims['{name}']"
        if name == "*" and not allow_star:
            raise ArgumentError(argument, f"{argument}: {owner} needs each parameter named; '*' is not accepted")
        if not isinstance(name, str):
            raise ArgumentError(argument, f"{argument}: parameter names must be strings")
        if index is None or name == "*":
            resolved[name] = (value, None)
            continue
        actual = index.resolve(name)
        if actual is None:
            raise ArgumentError(argument, f"{argument}: {index.unknown_message(name)}")
        resolved[actual] = (value, tuple(index.params[actual].shape))
    return resolved
