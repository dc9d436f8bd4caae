"""A pruner policy's masking options, Distiller's names and meaning, as a plugin of their own.

``mask_on_forward_only`` (masks applied before each forward pass only: the optimizer keeps updating pruned
weights, so they can grow back), ``use_double_copies`` (the dense weights are restored before each optimizer
step), ``mask_gradients`` (the gradients of masked elements are zeroed), ``discard_masks_at_minibatch_end``
and ``keep_mask`` (at the end of the policy's last epoch, the options are dropped and the masks stay for
good). They act on the engine's masks, so they apply to whatever class set the masks: the schedule builder
schedules a :class:`MaskOptions` beside any pruner whose policy gives one of them, in the same epochs.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from hookprune.contract import Policy, SchedulerView
from hookprune.errors import ArgumentError
from hookprune.hookspecs import hookimpl

#: the policy args :class:`MaskOptions` takes, all booleans defaulting to false
MASKING_ARGS = ("keep_mask", "mask_on_forward_only", "mask_gradients", "use_double_copies",
                "discard_masks_at_minibatch_end")


def split_masking_args(args: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A pruner policy's ``args`` as (the masking options, the rest for the pruner)."""
    args = dict(args or {})
    return {k: args.pop(k) for k in MASKING_ARGS if k in args}, args


class MaskOptions:
    """Sets the masking options of its policy on every parameter at the start of the policy's epochs, marks the
    forward-only masks for application before each forward pass, and at the end of the policy's last epoch
    clears ``mask_gradients`` (and, with ``keep_mask``, the other options too, applying the masks for good)."""

    policy_args = dict.fromkeys(MASKING_ARGS, bool)

    def check_policy(self, policy: Policy) -> None:
        """Refuse option values that are not booleans, and ``mask_gradients`` without ``mask_on_forward_only``."""
        for key, value in policy.args.items():
            if not isinstance(value, bool):
                raise ArgumentError(key, f"'{key}' must be true or false, got {value!r}")
        if policy.arg("mask_gradients") and not policy.arg("mask_on_forward_only"):
            raise ArgumentError("mask_gradients", "'mask_gradients' requires 'mask_on_forward_only' to be true as well")

    def idle_hooks(self, policy: Policy) -> Collection[str]:
        """The minibatch hooks, unless masks are applied before forward passes or discarded after each step."""
        idle = set()
        if not (policy.arg("mask_on_forward_only") or policy.arg("use_double_copies")):
            idle.add("on_minibatch_begin")
        if not policy.arg("discard_masks_at_minibatch_end"):
            idle.add("on_minibatch_end")
        return idle

    @hookimpl
    def on_epoch_begin(self, scheduler: SchedulerView, epoch: int) -> None:
        """Set the policy's options on every parameter."""
        policy = scheduler.policy_of(self)
        assert policy is not None
        scheduler.masks.set_options(None, **{k: bool(policy.arg(k)) for k in
                                             ("mask_on_forward_only", "use_double_copies", "mask_gradients")})

    @hookimpl
    def on_minibatch_begin(self, scheduler: SchedulerView) -> None:
        """Apply the forward-only masks before this forward pass too."""
        scheduler.masks.mark_forward_pending()

    @hookimpl
    def on_minibatch_end(self, scheduler: SchedulerView) -> None:
        """``discard_masks_at_minibatch_end``: drop every mask once the step is done."""
        scheduler.masks.clear()

    @hookimpl
    def on_epoch_end(self, scheduler: SchedulerView, epoch: int) -> None:
        """At the policy's last epoch: stop masking gradients; with ``keep_mask``, make the masks permanent."""
        policy = scheduler.policy_of(self)
        assert policy is not None
        if epoch != policy.last_epoch:
            return
        if policy.arg("keep_mask"):
            scheduler.masks.set_options(None, mask_on_forward_only=False, use_double_copies=False,
                                        mask_gradients=False)
            scheduler.masks.apply()
        else:
            scheduler.masks.set_options(None, mask_gradients=False)
