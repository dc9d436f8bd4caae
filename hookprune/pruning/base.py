"""What every built-in pruner shares: the :class:`Pruner` hook plugin, which decides when masks are computed and
hands them to the engine; a subclass says which elements to keep (:meth:`Pruner.keep_masks`).

When: at the start of each epoch of the pruner's policies, and within an epoch every
``mini_batch_pruning_frequency`` minibatches (under a step window: at the start of each minibatch it covers);
``skip_first_minibatch`` moves the first pruning of a policy from its first epoch's start to its second minibatch.
``fold_batchnorm`` ranks a Conv2d's weights with the following BatchNorm's scale folded in. These are the pruner
policy args of Distiller's ``PruningPolicy``; the masking options (``keep_mask``, ``mask_on_forward_only``, ...)
act on the engine's masks and are handled by :mod:`hookprune.pruning.masking` for any pruner, third parties'
included.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from hookprune.contract import Policy, SchedulerView
from hookprune.errors import ArgumentError
from hookprune.hookspecs import hookimpl
from hookprune.pruning.checks import (
    check_fraction,
    check_levels,
    check_number,
    check_policy_levels,
    check_pruning_args,
    check_weights,
)
from hookprune.pruning.levels import LevelSchedule

__all__ = ["ArgumentError", "ForwardPassHooks", "OwnLevel", "Pruner", "PruningStep", "check_fraction",
           "check_levels", "check_number", "check_weights"]


def fold_batchnorm_targets(owner: Any, model: torch.nn.Module) -> dict[str, Callable[[], torch.Tensor]]:
    """``fold_batchnorm``: for each Conv2d weight followed directly by a BatchNorm, a function giving
    ``weight * gamma / sqrt(running_var + eps)`` to rank instead of the weight. The followers are found once
    per ``owner`` in the model's fx graph."""
    from hookprune.thinning.graph import batchnorm_followers, fold_batchnorm_weight

    followers = getattr(owner, "_batchnorm_followers", None)
    if followers is None:
        followers = batchnorm_followers(model)
        owner._batchnorm_followers = followers
    return {name: (lambda pair=pair: fold_batchnorm_weight(*pair)) for name, pair in followers.items()}


@dataclass(eq=False)
class PruningStep:
    """One pruning step: the scheduler, the policy the pruner acts under, the epoch and the global step."""

    scheduler: SchedulerView
    policy: Policy
    epoch: int
    folded: Mapping[str, Callable[[], torch.Tensor]] = field(default_factory=dict)
    _ranked: dict[str, torch.Tensor] = field(default_factory=dict)
    #: the scheduler's ``global_step`` when the step was taken (-1 before the first minibatch)
    global_step: int = -1

    @property
    def position(self) -> int:
        """Where the step lies in the policy's window: the global step for a step window, else the epoch."""
        return self.global_step if self.policy.window.unit == "step" else self.epoch

    @property
    def params(self) -> Mapping[str, torch.nn.Parameter]:
        """The model's parameters by name."""
        return self.scheduler.params

    def ranked(self, param_name: str) -> torch.Tensor:
        """What to rank for ``param_name``: the parameter, or with ``fold_batchnorm`` its BatchNorm-folded weights."""
        tensor = self._ranked.get(param_name)
        if tensor is None:
            fold = self.folded.get(param_name)
            tensor = fold() if fold is not None else self.scheduler.params[param_name]
            self._ranked[param_name] = tensor
        return tensor

    def meta(self) -> dict[str, Any]:
        """Distiller's ``meta``: the policy's window, the current epoch, the model and the optimizer."""
        return {**self.policy.window.meta(), "current_epoch": self.epoch, "model": self.scheduler.model,
                "optimizer": self.scheduler.optimizer}


class Pruner:
    """A pruner as a hook plugin: at each pruning step it hands the engine the keep-masks of
    :meth:`keep_masks`.

    A subclass sets ``name`` and ``params_names`` (the weights it prunes, in the model's spelling), optionally a
    ``level`` schedule (:mod:`hookprune.pruning.levels`), and defines :meth:`keep_masks`; it overrides
    :meth:`targets` to prune another set of parameters and :meth:`prune` to act differently at a step.
    """

    policy_args: ClassVar[Mapping[str, Any]] = {"levels": dict[str, float], "mini_batch_pruning_frequency": int,
                                                "skip_first_minibatch": bool, "fold_batchnorm": bool}
    #: why a policy's ``levels`` does not apply to a pruner without a level schedule (after its class name)
    no_levels: ClassVar[str] = "sets no sparsity level"

    name: str
    params_names: list[str]
    level: LevelSchedule | None = None

    @property
    def desired_sparsity(self) -> float | None:
        """The fixed level of a pruner with one (None otherwise)."""
        return getattr(self.level, "desired_sparsity", None)

    @property
    def initial_sparsity(self) -> float | None:
        """The AGP schedule's first level, for a pruner with one (None otherwise)."""
        return getattr(self.level, "initial_sparsity", None)

    @property
    def final_sparsity(self) -> float | None:
        """The AGP schedule's last level, for a pruner with one (None otherwise)."""
        return getattr(self.level, "final_sparsity", None)

    # -- what a subclass defines ------------------------------------------------------------------

    def targets(self, params: Mapping[str, torch.Tensor]) -> list[str]:
        """The names of ``params`` (the model's, in its order) that this pruner prunes."""
        listed = set(self.params_names)
        return [name for name in params if name in listed]

    def keep_masks(self, step: PruningStep) -> dict[str, torch.Tensor]:
        """The keep-masks of this step, by parameter name (parameters left out keep their masks)."""
        raise NotImplementedError

    def prune(self, step: PruningStep) -> None:
        """Hand the engine the masks of :meth:`keep_masks`."""
        masks = step.scheduler.masks
        for param_name, mask in self.keep_masks(step).items():
            masks[param_name] = mask

    # -- the policy ---------------------------------------------------------------------------------

    def check_policy(self, policy: Policy) -> None:
        """Refuse malformed pruning args, a ``levels`` the pruner's level schedule does not take, and a window its
        level schedule cannot follow."""
        check_pruning_args(policy)
        if policy.window.unit == "step":
            for key in ("mini_batch_pruning_frequency", "skip_first_minibatch"):
                if policy.arg(key):
                    raise ArgumentError(key, f"'{key}' counts minibatches within epochs; under a step window the "
                                             "pruner prunes at every step_frequency-th step already")
        if policy.arg("levels") is not None:
            reason = self.no_levels if self.level is None else self.level.refuses_policy_levels
            if reason is not None:
                raise ArgumentError("levels", f"{type(self).__name__} {reason}; a policy's 'levels' does not apply")
        if self.level is not None:
            self.level.check_policy(policy)

    def idle_hooks(self, policy: Policy) -> Collection[str]:
        """The minibatch hook, unless the policy prunes within an epoch or counts steps."""
        busy = (policy.window.unit == "step" or policy.arg("mini_batch_pruning_frequency")
                or policy.arg("skip_first_minibatch"))
        return () if busy else ("on_minibatch_begin",)

    def step(self, scheduler: SchedulerView, policy: Policy, epoch: int) -> PruningStep:
        """The pruning step of ``policy`` at ``epoch``."""
        folded = fold_batchnorm_targets(self, scheduler.model) if policy.arg("fold_batchnorm") else {}
        return PruningStep(scheduler, policy, epoch, folded, global_step=scheduler.global_step)

    # -- hooks --------------------------------------------------------------------------------------

    @hookimpl
    def on_epoch_begin(self, scheduler: SchedulerView, epoch: int) -> None:
        """Prune, unless ``skip_first_minibatch`` defers the policy's first pruning to its second minibatch."""
        policy = scheduler.policy_of(self)
        assert policy is not None
        if epoch == policy.first_epoch and policy.arg("skip_first_minibatch"):
            return
        self.prune(self.step(scheduler, policy, epoch))

    @hookimpl
    def on_minibatch_begin(self, scheduler: SchedulerView, epoch: int, minibatch_id: int,
                           minibatches_per_epoch: int) -> None:
        """Prune every ``mini_batch_pruning_frequency`` minibatches (counted from the first epoch), and at the second
        minibatch when ``skip_first_minibatch`` skipped the first; under a step window, at every step it is called."""
        policy = scheduler.policy_of(self)
        assert policy is not None
        if policy.window.unit == "step":
            self.prune(self.step(scheduler, policy, epoch))
            return
        global_id = epoch * minibatches_per_epoch + minibatch_id
        frequency = policy.arg("mini_batch_pruning_frequency", 0)
        scheduled = minibatch_id > 0 and frequency != 0 and global_id % frequency == 0
        if scheduled or (policy.arg("skip_first_minibatch") and global_id == 1):
            self.prune(self.step(scheduler, policy, epoch))


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
    """For a pruner written with hooks alone that sets its own level: refuses a policy's per-parameter ``levels``,
    saying why in ``level_source`` (the words after its class name in the error)."""

    #: why the pruner refuses ``levels``, after its class name in the error
    level_source: str
    policy_args: ClassVar[Mapping[str, Any]] = {"levels": dict[str, float]}

    def check_policy(self, policy: Policy) -> None:
        """Refuse a policy that gives ``levels``."""
        check_policy_levels(policy.arg("levels"))
        if policy.arg("levels") is not None:
            raise ArgumentError("levels", f"{type(self).__name__} {self.level_source}; a policy's 'levels' does "
                                "not apply")
