"""What every built-in pruner shares: its name and argument checks that point at the culprit."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hookprune.hookspecs import hookimpl


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


def check_weights(weights: Any) -> list[str]:
    """The listed ``weights`` (one name or a list of names) as a list; ArgumentError when empty."""
    if not weights:
        raise ArgumentError("weights", "'weights' must list at least one parameter")
    return [weights] if isinstance(weights, str) else list(weights)


def check_number(argument: str, value: Any, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise ArgumentError(argument, f"'{argument}' must be a number >= {minimum:g}, got {value!r}")
    return float(value)


class PolicyLevels:
    """A pruner policy's ``levels``: per-parameter overrides of ``desired_sparsity`` (``'*'``: the rest)."""

    desired_sparsity: float
    _levels: dict[str, float] | None = None

    @property
    def levels(self) -> dict[str, float] | None:
        """A pruner policy's per-parameter levels (``'*'``: every other listed weight), or None."""
        return self._levels

    @levels.setter
    def levels(self, levels: dict[str, float] | None) -> None:
        self._levels = None if levels is None else dict(levels)

    def policy_level(self, param_name: str) -> float:
        """``desired_sparsity``, or the policy's level for ``param_name`` when it gives ``levels``."""
        levels = self._levels or {}
        return levels.get(param_name, levels.get("*", self.desired_sparsity))


class ForwardPassHooks:
    """Plugin hooks that end a pruner's forward-hook measurement once a minibatch's forward pass is over."""

    def end_forward(self) -> None:
        """Stop observing the forward pass (remove the pruner's forward hooks)."""
        raise NotImplementedError

    @hookimpl
    def before_backward(self) -> None:
        """The forward pass is done: stop observing it."""
        self.end_forward()

    @hookimpl
    def on_minibatch_end(self) -> None:
        """Stop observing, for loops that skip ``before_backward``."""
        self.end_forward()


class OwnLevel:
    """A pruner that sets its own level and refuses a policy's per-parameter ``levels``."""

    #: why the pruner refuses ``levels``, after its class name in the error
    level_source: str

    @property
    def levels(self) -> dict[str, float] | None:
        """Always None: the pruner sets its own level."""
        return None

    @levels.setter
    def levels(self, levels: dict[str, float] | None) -> None:
        if levels is not None:
            raise ValueError(f"{type(self).__name__} {self.level_source}; a policy's 'levels' does not apply")
