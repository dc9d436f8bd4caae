"""What each LR scheduler a schedule can name needs of its arguments, checked before the class is built.

torch's classes check little themselves (``StepLR`` takes ``gamma: "0.1"`` and fails at the first
step, ``MultiStepLR`` takes ``milestones: "30,60"`` as a string of characters), and several of their
annotations do not resolve with ``typing.get_type_hints``. The rules here state torch's types and
ranges outright, so a mistake is an :class:`ArgumentError` naming the argument, which the builder
reports at the argument's line. Other LR scheduler classes (a subclass, a plugin's) are checked against
their annotations by the builder; where one annotation does not resolve, the others are checked here, each
on its own, rather than none at all.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from hookprune.config import argtypes
from hookprune.pruning.base import ArgumentError

#: longest excerpt of a value quoted in an error
_SHOWN = 60


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Rule:
    """What one argument must be: ``accepts`` decides, ``description`` completes "'x' must be ..."."""

    description: str
    accepts: Callable[[Any], bool]
    #: the whole message, after the argument's name, when the value is refused (for arguments only
    #: Python can give); otherwise "must be <description>, got <value>"
    refusal: str | None = None

    def check(self, argument: str, value: Any) -> None:
        if self.accepts(value):
            return
        if self.refusal is not None:
            raise ArgumentError(argument, f"'{argument}' {self.refusal}")
        raise ArgumentError(argument, f"'{argument}' must be {self.description}, got {_shown(value)}")


def within(low: float, high: float, *, low_open: bool = False, high_open: bool = False,
           decimal: bool = False) -> Rule:
    """A number in the interval from ``low`` to ``high`` (a float when ``decimal``, as torch wants)."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def accepts(v: Any) -> bool:
        if not _is_number(v) or (decimal and not isinstance(v, float)):
            return False
        return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)

    kind = "a decimal number (such as 0.3)" if decimal else "a number"
    return Rule(f"{kind} within {interval}", accepts)


def one_of(*choices: str) -> Rule:
    listed = ", ".join(repr(c) for c in choices[:-1]) + f" or {choices[-1]!r}"
    return Rule(listed, lambda v: isinstance(v, str) and v in choices)


def per_group(rule: Rule) -> Rule:
    """``rule``'s value, or a list of them, one per parameter group."""
    return Rule(f"{rule.description}, or a list of them (one per parameter group)",
                lambda v: rule.accepts(v) or (isinstance(v, list | tuple) and bool(v) and all(map(rule.accepts, v))))


def optional(rule: Rule) -> Rule:
    return Rule(f"{rule.description} or null", lambda v: v is None or rule.accepts(v))


def from_code(what: str, *, null_allowed: bool = False,
              instead: str = "build the scheduler in Python and schedule it with "
                             "sched.add_policy(hookprune.LRPolicy(...), ...)") -> Rule:
    """An argument only Python can give (a function, scheduler objects): refused, null aside when allowed."""
    return Rule(what, (lambda v: v is None) if null_allowed else (lambda v: False),
                refusal=f"must be {what}, which a YAML schedule cannot hold; {instead}")


POSITIVE_INT = Rule("a positive integer", lambda v: _is_int(v) and v > 0)
NON_NEGATIVE_INT = Rule("an integer >= 0", lambda v: _is_int(v) and v >= 0)
POSITIVE_NUMBER = Rule("a positive number", lambda v: _is_number(v) and v > 0)
NON_NEGATIVE_NUMBER = Rule("a number >= 0", lambda v: _is_number(v) and v >= 0)
BOOLEAN = Rule("true or false", lambda v: isinstance(v, bool))
#: the epoch a resumed scheduler last completed; -1 for a fresh one
LAST_EPOCH = Rule("an integer >= -1", lambda v: _is_int(v) and v >= -1)
MILESTONES = Rule("a list of strictly increasing integers >= 0",
                  lambda v: isinstance(v, list | tuple) and all(_is_int(m) and m >= 0 for m in v)
                  and all(a < b for a, b in pairwise(v)))
POSITIVE_NUMBERS = Rule("a list of positive numbers",
                        lambda v: isinstance(v, list | tuple) and all(POSITIVE_NUMBER.accepts(g) for g in v))
LEARNING_RATE = per_group(NON_NEGATIVE_NUMBER)
LR_LAMBDA = from_code("a Python function of the epoch (or a list of them)")
SCHEDULERS = from_code("a list of LR scheduler objects",
                       instead="declare each scheduler under 'lr_schedulers' with its own policy and epochs")

#: argument rules of every LR scheduler class hookprune registers, by its ``module:Class`` (the entry
#: point's value), so that naming a class here imports nothing
RULES: dict[str, dict[str, Rule]] = {
    "torch.optim.lr_scheduler:LambdaLR": {"lr_lambda": LR_LAMBDA},
    "torch.optim.lr_scheduler:MultiplicativeLR": {"lr_lambda": LR_LAMBDA},
    "torch.optim.lr_scheduler:StepLR": {"step_size": POSITIVE_INT, "gamma": POSITIVE_NUMBER},
    "torch.optim.lr_scheduler:MultiStepLR": {"milestones": MILESTONES, "gamma": POSITIVE_NUMBER},
    "torch.optim.lr_scheduler:ConstantLR": {"factor": within(0, 1, low_open=True), "total_iters": POSITIVE_INT},
    "torch.optim.lr_scheduler:LinearLR": {
        "start_factor": within(0, 1, low_open=True), "end_factor": within(0, 1), "total_iters": POSITIVE_INT},
    "torch.optim.lr_scheduler:ExponentialLR": {"gamma": POSITIVE_NUMBER},
    "torch.optim.lr_scheduler:SequentialLR": {"schedulers": SCHEDULERS, "milestones": MILESTONES},
    "torch.optim.lr_scheduler:CosineAnnealingLR": {"T_max": POSITIVE_INT, "eta_min": NON_NEGATIVE_NUMBER},
    "torch.optim.lr_scheduler:ChainedScheduler": {"schedulers": SCHEDULERS},
    "torch.optim.lr_scheduler:ReduceLROnPlateau": {
        "mode": one_of("min", "max"), "factor": within(0, 1, low_open=True, high_open=True),
        "patience": NON_NEGATIVE_INT, "threshold": NON_NEGATIVE_NUMBER, "threshold_mode": one_of("rel", "abs"),
        "cooldown": NON_NEGATIVE_INT, "min_lr": LEARNING_RATE, "eps": NON_NEGATIVE_NUMBER},
    "torch.optim.lr_scheduler:CyclicLR": {
        "base_lr": LEARNING_RATE, "max_lr": LEARNING_RATE, "step_size_up": POSITIVE_INT,
        "step_size_down": optional(POSITIVE_INT), "mode": one_of("triangular", "triangular2", "exp_range"),
        "gamma": POSITIVE_NUMBER, "scale_fn": from_code("a Python function (or null)", null_allowed=True),
        "scale_mode": one_of("cycle", "iterations"), "cycle_momentum": BOOLEAN,
        "base_momentum": per_group(NON_NEGATIVE_NUMBER), "max_momentum": per_group(NON_NEGATIVE_NUMBER)},
    "torch.optim.lr_scheduler:CosineAnnealingWarmRestarts": {
        "T_0": POSITIVE_INT, "T_mult": POSITIVE_INT, "eta_min": NON_NEGATIVE_NUMBER},
    "torch.optim.lr_scheduler:OneCycleLR": {
        "max_lr": LEARNING_RATE, "total_steps": optional(POSITIVE_INT), "epochs": optional(POSITIVE_INT),
        "steps_per_epoch": optional(POSITIVE_INT), "pct_start": within(0, 1, decimal=True),
        "anneal_strategy": one_of("cos", "linear"), "cycle_momentum": BOOLEAN,
        "base_momentum": per_group(NON_NEGATIVE_NUMBER), "max_momentum": per_group(NON_NEGATIVE_NUMBER),
        "div_factor": POSITIVE_NUMBER, "final_div_factor": POSITIVE_NUMBER, "three_phase": BOOLEAN},
    "hookprune.lr:PolynomialLR": {
        "T_max": optional(POSITIVE_INT), "total_iters": optional(POSITIVE_INT), "power": NON_NEGATIVE_NUMBER},
    "hookprune.lr:MultiStepMultiGammaLR": {"milestones": MILESTONES, "gammas": POSITIVE_NUMBERS},
}


def _polynomial(arguments: Mapping[str, Any]) -> None:
    if (arguments.get("T_max") is None) == (arguments.get("total_iters") is None):
        raise ArgumentError("T_max", "give exactly one of 'T_max' (Distiller's name) or "
                                     "'total_iters' (torch's)")


def _multi_gamma(arguments: Mapping[str, Any]) -> None:
    if len(arguments["milestones"]) != len(arguments["gammas"]):
        raise ArgumentError("gammas", f"'gammas' must hold one number per milestone ({len(arguments['milestones'])}), "
                                      f"got {len(arguments['gammas'])}")


def _one_cycle(arguments: Mapping[str, Any]) -> None:
    if arguments.get("total_steps") is None and (arguments.get("epochs") is None
                                                 or arguments.get("steps_per_epoch") is None):
        raise ArgumentError("total_steps", "give 'total_steps', or both 'epochs' and 'steps_per_epoch'")


#: checks across a class's arguments, run once each argument passed its own rule
TOGETHER: dict[str, Callable[[Mapping[str, Any]], None]] = {
    "hookprune.lr:PolynomialLR": _polynomial,
    "hookprune.lr:MultiStepMultiGammaLR": _multi_gamma,
    "torch.optim.lr_scheduler:OneCycleLR": _one_cycle,
}


def annotations_one_by_one(cls: type) -> dict[str, Any]:
    """The annotations of ``cls``'s constructor that resolve, each on its own, when ``typing.get_type_hints``
    cannot resolve them all (a name imported only for type checkers); {} when it can (the builder checks those)."""
    if argtypes.hints_of(cls):
        return {}
    target = cls.__init__ if isinstance(cls, type) else cls
    names = getattr(target, "__globals__", {})
    hints: dict[str, Any] = {}
    for name, annotation in dict(getattr(target, "__annotations__", None) or {}).items():
        try:
            hints.update(typing.get_type_hints(types.SimpleNamespace(__annotations__={name: annotation}),
                                               globalns=names))
        except Exception:  # this annotation does not resolve either; the others still count
            continue
    return hints


def check(cls: type, arguments: Mapping[str, Any]) -> None:
    """Raise :class:`ArgumentError` for the first of ``arguments`` that ``cls`` cannot take: by the rules of
    :data:`RULES` for the classes listed there; for other classes, subclasses included, by the annotations of
    their constructor that resolve one by one when not all of them do (see :func:`annotations_one_by_one`)."""
    key = f"{cls.__module__}:{cls.__qualname__}"
    rules = RULES.get(key)
    if rules is None:
        hints = annotations_one_by_one(cls)
        for argument, value in arguments.items():
            if argument in hints and not argtypes.matches(value, hints[argument]):
                raise ArgumentError(argument, f"'{argument}' must be {argtypes.describe(hints[argument])}, "
                                              f"got {_shown(value)}")
        return
    for argument, value in arguments.items():
        if argument == "last_epoch":
            LAST_EPOCH.check(argument, value)
        elif argument in rules:
            rules[argument].check(argument, value)
    if key in TOGETHER:
        TOGETHER[key](arguments)
