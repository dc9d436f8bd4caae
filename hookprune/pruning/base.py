"""What every built-in pruner shares: its name and argument checks that point at the culprit."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ArgumentError(ValueError):
    """A constructor argument is wrong; ``argument`` names it so a schedule error can point at it."""

    def __init__(self, argument: str, message: str) -> None:
        self.argument = argument
        super().__init__(message)


def check_fraction(argument: str, value: Any, *, below_one: bool = True) -> float:
    """``value`` as a float in [0, 1) (or [0, 1]); ArgumentError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ArgumentError(argument, f"'{argument}' must be a number, got {value!r}")
    upper_ok = value < 1 if below_one else value <= 1
    if not (value >= 0 and upper_ok):
        bound = "[0, 1)" if below_one else "[0, 1]"
        raise ArgumentError(argument, f"'{argument}' must be within {bound}, got {value}")
    return float(value)


def check_levels(argument: str, levels: Any, *, below_one: bool = True) -> dict[str, float]:
    """A mapping of parameter name (or ``'*'``) to a sparsity level."""
    if not isinstance(levels, Mapping) or not levels:
        raise ArgumentError(argument, f"'{argument}' must map parameter names (or '*') to numbers")
    return {name: check_fraction(f"{argument}['{name}']", v, below_one=below_one) for name, v in levels.items()}


def check_number(argument: str, value: Any, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise ArgumentError(argument, f"'{argument}' must be a number >= {minimum:g}, got {value!r}")
    return float(value)
