"""Narang et al.'s gradual threshold pruning for recurrent networks ("Exploring Sparsity in RNNs", 2017)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

import torch

from hookprune.contract import Policy, SchedulerView
from hookprune.errors import ArgumentError
from hookprune.hookspecs import hookimpl
from hookprune.pruning.base import Pruner, PruningStep
from hookprune.pruning.checks import check_number, check_weights
from hookprune.selection import threshold_keep_mask

Granularity = Literal["epoch", "minibatch"]


def baidu_threshold(q: float, ramp_epoch_offset: int, ramp_slope_mult: float, starting_epoch: int,
                    ending_epoch: int, frequency: int | None, position: float) -> float:
    """Distiller's threshold for Narang et al.'s ramp at ``position`` (an epoch, possibly fractional).

    With ``ramp = starting_epoch + ramp_epoch_offset`` and
    ``start_slope = 2 * q * freq / (2 * (ramp - start) + 3 * (end - ramp))``, the threshold is
    ``start_slope * (position - start + 1) / freq`` before the ramp epoch and
    ``(start_slope * (ramp - start + 1) + ramp_slope * (position - ramp + 1)) / freq`` from it on,
    where ``ramp_slope = start_slope * ramp_slope_mult``. The operations follow Distiller's order, so
    the thresholds are the same floats Distiller computed.
    """
    freq = frequency or 1
    ramp_epoch = ramp_epoch_offset + starting_epoch
    denominator = 2 * (ramp_epoch - starting_epoch) + 3 * (ending_epoch - ramp_epoch)
    if denominator <= 0:
        raise ValueError(f"the ramp must start before the window ends: 2 * ramp_epoch_offset + 3 * (ending_epoch "
                         f"- starting_epoch - ramp_epoch_offset) is {denominator}, it must be positive")
    start_slope = (2 * q * freq) / denominator
    ramp_slope = start_slope * ramp_slope_mult
    if position < ramp_epoch:
        return start_slope * (position - starting_epoch + 1) / freq
    return (start_slope * (ramp_epoch - starting_epoch + 1) + ramp_slope * (position - ramp_epoch + 1)) / freq


class BaiduRNNPruner(Pruner):
    """Element-wise pruning of the listed ``weights`` by a threshold that ramps up over the window.

    Every weight whose magnitude is at most the threshold is pruned (Distiller's ``threshold_mask``);
    the threshold starts low, rises with ``start_slope`` for ``ramp_epoch_offset`` epochs and then
    with ``ramp_slope_mult`` times that slope (see :func:`baidu_threshold`). ``q`` sets the scale: the
    paper picks it from a trained model, as the 90th percentile of the weights' magnitudes.

    ``ramp_granularity: epoch`` (the default) computes the threshold once per pruning epoch, at the
    epoch's start, exactly as Distiller does. ``ramp_granularity: minibatch`` follows the paper, which
    raises the threshold every training step: the threshold is recomputed before every minibatch of
    a pruning epoch at the fractional epoch ``epoch + minibatch_id / minibatches_per_epoch``, so it
    equals Distiller's at each epoch's first minibatch and climbs linearly in between.
    """

    def __init__(self, name: str, q: float, ramp_epoch_offset: int, ramp_slope_mult: float,
                 weights: list[str] | str, ramp_granularity: Granularity = "epoch") -> None:
        self.name = name
        self.q = check_number("q", q)
        if isinstance(ramp_epoch_offset, bool) or not isinstance(ramp_epoch_offset, int) or ramp_epoch_offset < 0:
            raise ArgumentError("ramp_epoch_offset", f"'ramp_epoch_offset' must be an integer >= 0, "
                                f"got {ramp_epoch_offset!r}")
        self.ramp_epoch_offset = ramp_epoch_offset
        self.ramp_slope_mult = check_number("ramp_slope_mult", ramp_slope_mult)
        self.params_names = check_weights(weights)
        if ramp_granularity not in ("epoch", "minibatch"):
            raise ArgumentError("ramp_granularity", f"'ramp_granularity' must be 'epoch' or 'minibatch', "
                                f"got {ramp_granularity!r}")
        self.ramp_granularity = ramp_granularity

    no_levels = "prunes by a threshold that ramps up"

    def check_policy(self, policy: Policy) -> None:
        """Refuse a window in which the ramp's slope is undefined."""
        super().check_policy(policy)
        w = policy.window
        baidu_threshold(self.q, self.ramp_epoch_offset, self.ramp_slope_mult, w.starting_epoch, w.ending_epoch,
                        w.frequency, w.starting_epoch)

    def idle_hooks(self, policy: Policy) -> Collection[str]:
        """The minibatch hook idles unless the policy prunes within an epoch or the ramp climbs per minibatch."""
        return () if self.ramp_granularity == "minibatch" else super().idle_hooks(policy)

    def threshold(self, policy: Policy, position: float) -> float:
        """The threshold at ``position`` (an epoch, possibly fractional) of ``policy``'s window."""
        w = policy.window
        return baidu_threshold(self.q, self.ramp_epoch_offset, self.ramp_slope_mult, w.starting_epoch,
                               w.ending_epoch, w.frequency, position)

    def keep_masks(self, step: PruningStep) -> dict[str, torch.Tensor]:
        """Prune every listed weight at this epoch's threshold."""
        threshold = self.threshold(step.policy, step.position)
        return {name: threshold_keep_mask(step.ranked(name), threshold) for name in self.targets(step.params)}

    @hookimpl
    def on_minibatch_begin(self, scheduler: SchedulerView, epoch: int, minibatch_id: int,
                           minibatches_per_epoch: int) -> None:
        """With ``ramp_granularity: minibatch``, raise the threshold before each later minibatch."""
        super().on_minibatch_begin(scheduler, epoch, minibatch_id, minibatches_per_epoch)
        if self.ramp_granularity != "minibatch" or minibatch_id == 0:
            return
        policy = scheduler.policy_of(self)
        assert policy is not None
        threshold = self.threshold(policy, epoch + minibatch_id / minibatches_per_epoch)
        params = scheduler.params
        for param_name in self.targets(params):
            scheduler.masks[param_name] = threshold_keep_mask(params[param_name], threshold)
