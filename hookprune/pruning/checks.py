"""Checking pruner arguments and pruner policy args, each error naming its argument so a schedule error points
at the culprit's line."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hookprune.contract import Policy
from hookprune.errors import ArgumentError


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
        raise ArgumentError(argument, f"'{argument}' must map parameter names (or '*') to numbers, got {levels!r}")
    return {name: check_fraction(f"{argument}['{name}']", v, below_one=below_one) for name, v in levels.items()}


def check_weights(weights: Any) -> list[str]:
    """The listed ``weights`` (one name or a list of names) as a list of distinct names, in order;
    ArgumentError when empty or not names."""
    names = [weights] if isinstance(weights, str) else weights
    if not names or not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
        raise ArgumentError("weights", "'weights' must list at least one parameter")
    return list(dict.fromkeys(names))


def check_number(argument: str, value: Any, *, minimum: float = 0.0) -> float:
    """``value`` as a float >= ``minimum``; ArgumentError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= minimum:
        raise ArgumentError(argument, f"'{argument}' must be a number >= {minimum:g}, got {value!r}")
    return float(value)


def check_positive_int(argument: str, value: Any) -> int:
    """``value`` when it is an integer >= 1; ArgumentError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ArgumentError(argument, f"'{argument}' must be a positive integer, got {value!r}")
    return value


def check_seed(seed: Any) -> int | None:
    """``seed`` when it is None or an integer; ArgumentError otherwise."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ArgumentError("seed", f"'seed' must be an integer, got {seed!r}")
    return seed


def check_policy_levels(levels: Any) -> None:
    """A policy's ``levels``: a mapping of parameter names (or ``'*'``) to sparsity levels in [0, 1)."""
    if levels is not None:
        check_levels("levels", levels)


def check_pruning_args(policy: Policy) -> None:
    """A pruner policy's own args: ``levels`` (see :func:`check_policy_levels`), ``mini_batch_pruning_frequency``
    an integer >= 0, ``skip_first_minibatch`` and ``fold_batchnorm`` booleans."""
    check_policy_levels(policy.arg("levels"))
    frequency = policy.arg("mini_batch_pruning_frequency", 0)
    if isinstance(frequency, bool) or not isinstance(frequency, int) or frequency < 0:
        raise ArgumentError("mini_batch_pruning_frequency", "'mini_batch_pruning_frequency' must be an integer >= 0, "
                            f"got {frequency!r}")
    for key in ("skip_first_minibatch", "fold_batchnorm"):
        if not isinstance(policy.arg(key, False), bool):
            raise ArgumentError(key, f"'{key}' must be true or false, got {policy.arg(key)!r}")
