"""What the regularizers share: the :class:`Regularizer` hook plugin (a loss term before backward, thresholding
after each optimizer step), checking ``reg_regims`` and ``threshold_criteria`` so a schedule error points at the
culprit, and spelling parameter names as the model does."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

import torch

from hookprune._engine.masks import as_keep_mask
from hookprune._engine.params import ParamIndex
from hookprune.contract import LossTerm, Policy, SchedulerView
from hookprune.errors import ArgumentError, suggest
from hookprune.hookspecs import hookimpl

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


class Regularizer:
    """A regularizer as a hook plugin: ``before_backward`` adds the term ``{ClassName}_loss``, the sum of
    :meth:`penalty` over the parameters it acts on; with ``threshold_criteria`` set, ``on_minibatch_end`` zeroes
    what :meth:`threshold_mask` says after each optimizer step of the policy.

    A threshold mask never replaces a pruner's mask (Distiller issue 54): the parameter (already masked by the
    engine after the step) is multiplied by it, so the weights carry the AND of both masks, and the engine keeps
    the pruner's mask alone. With the policy arg ``keep_mask``, at the last minibatch of the policy's last epoch
    the AND becomes the parameter's mask for good.
    """

    policy_args: Mapping[str, Any] = {"keep_mask": bool}
    threshold_criteria: str | None = None
    refuses_sharding: str | None = ("its loss term is computed from the sharded weights, outside the forward pass "
                                    "whose loss FSDP2 differentiates")

    def targets(self, params: Mapping[str, torch.Tensor]) -> Iterable[str]:
        """The names of ``params`` (the model's, in its order) that the regularizer acts on."""
        regims = getattr(self, "reg_regims", {})
        return [name for name in params if name in regims]

    def penalty(self, param_name: str, param: torch.Tensor) -> torch.Tensor | None:
        """This parameter's term (None for none)."""
        raise NotImplementedError

    def threshold_mask(self, param_name: str, param: torch.Tensor) -> torch.Tensor | None:
        """A keep-mask zeroing what falls below the threshold, or None to leave the parameter as it is."""
        return None

    def check_policy(self, policy: Policy) -> None:
        """Refuse a ``keep_mask`` that is not a boolean."""
        if not isinstance(policy.arg("keep_mask", False), bool):
            raise ArgumentError("keep_mask", f"'keep_mask' must be true or false, got {policy.arg('keep_mask')!r}")

    def idle_hooks(self, policy: Policy) -> Collection[str]:
        """The thresholding hook, when the regularizer does not threshold."""
        return () if self.threshold_criteria is not None else ("on_minibatch_end",)

    @hookimpl
    def before_backward(self, scheduler: SchedulerView, loss: torch.Tensor) -> LossTerm:
        """The sum of the penalties, named after the class."""
        params = scheduler.params
        total = torch.tensor(0, dtype=torch.float, device=loss.device)
        for param_name in self.targets(params):
            term = self.penalty(param_name, params[param_name])
            if term is not None:
                total = total + term
        return LossTerm(f"{type(self).__name__}_loss", total)

    @hookimpl
    def on_minibatch_end(self, scheduler: SchedulerView, epoch: int, minibatch_id: int,
                         minibatches_per_epoch: int) -> None:
        """Zero what falls below the threshold; keep it as the mask at the end of the policy with ``keep_mask``."""
        policy = scheduler.policy_of(self)
        assert policy is not None
        keep = (policy.arg("keep_mask", False) and epoch == policy.last_epoch
                and minibatch_id == minibatches_per_epoch - 1)
        masks, params = scheduler.masks, scheduler.params
        for param_name in self.targets(params):
            param = params[param_name]
            mask = self.threshold_mask(param_name, param)
            if mask is None:
                continue
            mask = as_keep_mask(mask, param, f"{type(self).__name__}'s threshold mask for '{param_name}'")
            with torch.no_grad():
                param.mul_(mask)
            if keep:
                pruning_mask = masks.get(param_name)
                masks[param_name] = mask if pruning_mask is None else mask & pruning_mask
