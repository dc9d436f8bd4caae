"""Filter pruning ranked by activation statistics that the pruner gathers itself with forward hooks.

Distiller's ``ActivationAPoZRankedFilterPruner`` (Hu et al., "Network Trimming", 2016) and
``ActivationMeanRankedFilterPruner`` (Molchanov et al., ICLR 2017), with their ``_AGP`` variants.
Distiller needed the training application to attach activation statistics to the model; here the
pruner measures them during the training minibatches of its own policy's epochs.

What is measured: the activation of a filter is its output channel after a ReLU. When the
layer's output goes straight into a BatchNorm (conv -> BN -> ReLU, as in ResNets, VGG-BN and
MobileNets), the pruner takes that BatchNorm's output and applies the ReLU to it itself; otherwise
it applies the ReLU to the layer's own output. Which BatchNorm consumes a layer's output is found
from the data flow of the first forward pass (the BatchNorm whose input is that very output
tensor), not from module names, so any model works, whatever its modules are called.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Collection, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from hookprune.contract import Policy, SchedulerView
from hookprune.errors import ArgumentError
from hookprune.hookspecs import hookimpl
from hookprune.pruning.base import ForwardPassHooks, Pruner, PruningStep
from hookprune.pruning.checks import check_weights
from hookprune.pruning.levels import AGPLevel, FixedLevel
from hookprune.pruning.structures import check_group_type, count_to_prune, expand_structure_mask, prune_lowest

#: Layers whose ``weight`` holds one filter per output channel.
PRUNABLE_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _channel_dim(module: nn.Module) -> int:
    return -1 if isinstance(module, nn.Linear) else 1


def _accumulator_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def channel_activation_sums(output: torch.Tensor, criterion: str, channel_dim: int) -> tuple[torch.Tensor, int]:
    """Per-channel sums of a per-element measure of ``relu(output)``, and the elements per channel.

    ``criterion`` ``'apoz'`` counts the zeros of ``relu(output)`` (elements that are not positive);
    ``'mean'`` sums ``relu(output)``. Dividing the sums by the count gives each channel's APoZ or mean
    activation over every sample and position.
    """
    x = output.detach()
    dim = channel_dim % x.dim()
    channels = x.shape[dim]
    dims = [d for d in range(x.dim()) if d != dim]
    dtype = _accumulator_dtype(x.device)
    if criterion == "apoz":
        sums = torch.logical_not(x > 0).sum(dim=dims).to(dtype)
    else:
        sums = x.clamp(min=0).sum(dim=dims, dtype=dtype)
    return sums, x.numel() // channels if channels else 0


class ChannelStats:
    """Running per-channel sums of an activation measure over every minibatch recorded."""

    def __init__(self, total: torch.Tensor | None = None, count: int = 0) -> None:
        self.total = total
        self.count = count

    def add(self, sums: torch.Tensor, count: int) -> None:
        """Add one forward pass's :func:`channel_activation_sums`."""
        if self.total is None:
            self.total = sums.clone()
        else:
            if self.total.device != sums.device or self.total.dtype != sums.dtype:
                self.total = self.total.to(device=sums.device, dtype=sums.dtype)
            self.total += sums
        self.count += count

    def mean(self) -> torch.Tensor:
        """The per-channel average of the measure (APoZ in [0, 1], or the mean activation)."""
        assert self.total is not None and self.count > 0
        return self.total / self.count

    def state_dict(self) -> dict[str, Any]:
        """The sums (on the CPU) and the element count."""
        return {"total": None if self.total is None else self.total.detach().cpu().clone(), "count": self.count}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ChannelStats:
        """Rebuild the statistics :meth:`state_dict` saved."""
        total = state.get("total")
        return cls(None if total is None else total.clone(), int(state.get("count", 0)))


class ActivationRankedFilterPruner(ForwardPassHooks, Pruner):
    """Shared machinery: forward hooks, statistics and ranking of filters by activations.

    When masks are computed: at the start of every epoch of the policy (and whenever the policy's
    ``mini_batch_pruning_frequency`` asks), from the statistics gathered over all the training
    minibatches of the policy's previous epoch. In the policy's first epoch there are none yet, so
    pruning waits for data: the statistics of the epoch's first minibatch are gathered and the masks
    are set at the next minibatch boundary (before the second minibatch, or at the end of the epoch
    when it has only one), from the statistics gathered so far.

    Ranking: ``'apoz'`` prunes the filters with the highest APoZ (the most zeros), ``'mean'`` those
    with the lowest mean activation. A filter whose weights are all zero (pruned earlier) ranks
    below every other, so the pruned set only grows. Exactly ``count_to_prune(filters, fraction)``
    filters are pruned, ties broken by the lowest index. With ``group_dependency: Leader`` the first
    listed weight's statistics rank the filters and all the listed weights get its mask.

    Hooks are installed on the layers (or the BatchNorms that follow them) at the start of each
    training minibatch of the policy's epochs and removed once the forward pass is done (at
    ``before_backward``, or at the latest at the end of the minibatch or epoch), so no hook is left
    outside the window and evaluation passes are never measured. :meth:`remove_hooks` removes them
    at any time. The statistics are part of :meth:`state_dict`, so a resumed run ranks the same.
    """

    #: ``'apoz'`` or ``'mean'``.
    criterion: ClassVar[str]
    refuses_sharding: ClassVar[str | None] = ("it ranks filters by the activations each rank sees of its own data, "
                                              "so the ranks would prune different filters")

    def __init__(self, name: str, group_type: str, weights: list[str] | str, model: nn.Module,
                 group_dependency: str | None = None) -> None:
        self.name = name
        self.group_type = check_group_type(group_type, ("Filters",))
        self.params_names = check_weights(weights)
        if group_dependency is not None and not (isinstance(group_dependency, str)
                                                 and group_dependency.lower() == "leader"):
            raise ArgumentError("group_dependency", f"'group_dependency' must be Leader (or left out), "
                                f"got {group_dependency!r}")
        self.group_dependency = None if group_dependency is None else "Leader"
        self.model = model
        self._layers: dict[str, str] = {}
        modules = dict(model.named_modules())
        params = dict(model.named_parameters())
        for param_name in self.params_names:
            layer_name, _, attr = param_name.rpartition(".")
            layer = modules.get(layer_name)
            if attr != "weight" or not isinstance(layer, PRUNABLE_LAYERS) or param_name not in params:
                raise ArgumentError("weights", f"'{param_name}' is not the weight of a convolution or linear "
                                    f"layer; activation ranking prunes the filters of Conv1d/2d/3d and Linear layers")
            self._layers[param_name] = layer_name
        if self.group_dependency == "Leader":
            filters = {name: params[name].shape[0] for name in self.params_names}
            if len(set(filters.values())) > 1:
                raise ArgumentError("group_dependency", "with 'group_dependency: Leader' every weight must have "
                                    f"as many filters as the leader; got {filters}")
        self.collecting: dict[str, ChannelStats] = {}
        self.ranking: dict[str, ChannelStats] = {}
        self.deferred: dict[str, float] = {}
        self._followers: dict[str, tuple[str, int]] = {}
        self._handles: list[Any] = []
        self._probes: dict[str, torch.Tensor] = {}
        self._probe_sums: dict[str, tuple[torch.Tensor, int]] = {}
        self._paired: dict[str, tuple[str, tuple[torch.Tensor, int]]] = {}
        self._lock = threading.Lock()

    # -- which weights are measured --------------------------------------------------------------

    def leader(self) -> str:
        """The first listed weight, whose ranking all follow under ``group_dependency: Leader``."""
        return self.params_names[0]

    def _ranked_by(self, param_name: str) -> str:
        return self.leader() if self.group_dependency == "Leader" else param_name

    def _measured(self) -> list[str]:
        return [self.leader()] if self.group_dependency == "Leader" else list(self.params_names)

    # -- pruning ------------------------------------------------------------------------------------

    def idle_hooks(self, policy: Policy) -> Collection[str]:
        """None: the minibatch hook measures every training minibatch of the policy's epochs."""
        return ()

    def prune(self, step: PruningStep) -> None:
        """Mask the lowest-ranked filters of each listed weight, or wait for statistics (see the class)."""
        assert self.level is not None
        for param_name in self.targets(step.params):
            param = step.params[param_name]
            fraction = self.level.level(self._ranked_by(param_name), step)
            if count_to_prune(param.shape[0], fraction, param_name=param_name, structure="filters") == 0:
                self.deferred.pop(param_name, None)
                continue
            mask = self.filter_mask(param, param_name, fraction)
            if mask is None:
                self.deferred[param_name] = fraction
                continue
            self.deferred.pop(param_name, None)
            step.scheduler.masks[param_name] = mask

    def filter_scores(self, param_name: str) -> torch.Tensor | None:
        """One score per filter of ``param_name`` (the lowest are pruned first), or None without data.

        Uses the last completed epoch's statistics, else those gathered so far in this epoch.
        """
        ranked_by = self._ranked_by(param_name)
        stats = self.ranking.get(ranked_by)
        if stats is None or stats.count == 0:
            stats = self.collecting.get(ranked_by)
        if stats is None or stats.count == 0:
            return None
        average = stats.mean().detach().to("cpu", torch.float64)
        scores = -average if self.criterion == "apoz" else average.clone()
        weight = self.model.get_parameter(ranked_by).detach()
        dead = torch.logical_not(weight.reshape(weight.shape[0], -1).ne(0).any(dim=1)).cpu()
        scores[dead] = -torch.inf
        return scores

    def filter_mask(self, param: torch.Tensor, param_name: str, fraction: float) -> torch.Tensor | None:
        """Boolean mask of ``param``'s shape pruning exactly ``count_to_prune`` filters, or None
        while no statistics exist."""
        scores = self.filter_scores(param_name)
        if scores is None:
            return None
        filters = param.shape[0]
        if scores.numel() != filters:
            raise ValueError(f"'{param_name}' has {filters} filters but its activations have {scores.numel()} "
                             "channels")
        k = count_to_prune(filters, fraction, param_name=param_name, structure="filters")
        keep = prune_lowest(scores, k)
        return expand_structure_mask(keep, param.shape, "Filters").to(param.device)

    def _set_deferred(self, scheduler: SchedulerView) -> None:
        params = scheduler.params
        for param_name, fraction in list(self.deferred.items()):
            mask = self.filter_mask(params[param_name], param_name, fraction)
            if mask is not None:
                scheduler.masks[param_name] = mask
                del self.deferred[param_name]

    # -- hooks ------------------------------------------------------------------------------------

    @hookimpl
    def on_minibatch_begin(self, scheduler: SchedulerView, model: nn.Module, epoch: int, minibatch_id: int,
                           minibatches_per_epoch: int) -> None:
        """Prune when the policy prunes within the epoch, set masks that were waiting for statistics, then measure
        this minibatch's forward pass."""
        super().on_minibatch_begin(scheduler, epoch, minibatch_id, minibatches_per_epoch)
        if self.deferred:
            self._set_deferred(scheduler)
        self._install(model)

    @hookimpl
    def on_epoch_end(self, scheduler: SchedulerView) -> None:
        """This epoch's statistics become the ranking for the next pruning epoch."""
        self.end_forward()
        for param_name, stats in self.collecting.items():
            if stats.count:
                self.ranking[param_name] = stats
        self.collecting = {}
        if self.deferred:
            self._set_deferred(scheduler)

    def _install(self, model: nn.Module) -> None:
        if self._handles:
            return
        modules = dict(model.named_modules())
        unknown = []
        for param_name in self._measured():
            follower = self._followers.get(param_name)
            if follower is None:
                unknown.append(param_name)
                continue
            module_name, channel_dim = follower
            hook = functools.partial(self._record, param_name, channel_dim)
            self._handles.append(modules[module_name].register_forward_hook(hook))
        if unknown:
            for param_name in unknown:
                layer = modules[self._layers[param_name]]
                hook = functools.partial(self._probe_layer, param_name, _channel_dim(layer))
                self._handles.append(layer.register_forward_hook(hook))
            for module_name, module in modules.items():
                if isinstance(module, _NORMS):
                    self._handles.append(module.register_forward_hook(functools.partial(self._probe_norm,
                                                                                        module_name)))

    def remove_hooks(self) -> None:
        """Remove every forward hook this pruner installed (the statistics are kept)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._probes.clear()
        self._probe_sums.clear()
        self._paired.clear()

    def end_forward(self) -> None:
        """Record the probed statistics of the forward pass just done, then remove the hooks."""
        if not self._handles:
            return
        for param_name, sums in self._probe_sums.items():
            if param_name in self._paired:
                norm_name, norm_sums = self._paired[param_name]
                self._followers[param_name] = (norm_name, 1)
                self._stats(param_name).add(*norm_sums)
            else:
                self._followers[param_name] = (self._layers[param_name], _channel_dim(self.model.get_submodule(
                    self._layers[param_name])))
                self._stats(param_name).add(*sums)
        self.remove_hooks()

    def _stats(self, param_name: str) -> ChannelStats:
        stats = self.collecting.get(param_name)
        if stats is None:
            stats = self.collecting[param_name] = ChannelStats()
        return stats

    def _record(self, param_name: str, channel_dim: int, module: nn.Module, args: Any, output: Any) -> None:
        sums, count = channel_activation_sums(output, self.criterion, channel_dim)
        with self._lock:
            self._stats(param_name).add(sums, count)

    def _probe_layer(self, param_name: str, channel_dim: int, module: nn.Module, args: Any, output: Any) -> None:
        sums, count = channel_activation_sums(output, self.criterion, channel_dim)
        with self._lock:
            self._probes[param_name] = output
            previous = self._probe_sums.get(param_name)
            if previous is not None:
                sums, count = previous[0] + sums, previous[1] + count
            self._probe_sums[param_name] = (sums, count)

    def _probe_norm(self, norm_name: str, module: nn.Module, args: Any, output: Any) -> None:
        if not args:
            return
        source = args[0]
        with self._lock:
            consumers = [name for name, out in self._probes.items() if out is source]
        if not consumers:
            return
        sums, count = channel_activation_sums(output, self.criterion, 1)
        with self._lock:
            for param_name in consumers:
                previous = self._paired.get(param_name)
                if previous is not None and previous[0] == norm_name:
                    sums_so_far, count_so_far = previous[1]
                    self._paired[param_name] = (norm_name, (sums_so_far + sums, count_so_far + count))
                elif previous is None:
                    self._paired[param_name] = (norm_name, (sums, count))

    # -- state ------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The statistics being gathered, the completed ones used for ranking, and waiting masks."""
        return {"collecting": {name: stats.state_dict() for name, stats in self.collecting.items()},
                "ranking": {name: stats.state_dict() for name, stats in self.ranking.items()},
                "deferred": dict(self.deferred)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        self.remove_hooks()
        self.collecting = {name: ChannelStats.from_state(s) for name, s in state.get("collecting", {}).items()}
        self.ranking = {name: ChannelStats.from_state(s) for name, s in state.get("ranking", {}).items()}
        self.deferred = {name: float(f) for name, f in state.get("deferred", {}).items()}


class _FixedFraction(ActivationRankedFilterPruner):
    def __init__(self, name: str, group_type: str, desired_sparsity: float, weights: list[str] | str,
                 model: nn.Module, group_dependency: str | None = None) -> None:
        super().__init__(name, group_type, weights, model, group_dependency)
        self.level = FixedLevel(desired_sparsity)


class _GradualFraction(ActivationRankedFilterPruner):
    def __init__(self, name: str, initial_sparsity: float, final_sparsity: float, group_type: str,
                 weights: list[str] | str, model: nn.Module, group_dependency: str | None = None) -> None:
        super().__init__(name, group_type, weights, model, group_dependency)
        self.level = AGPLevel(initial_sparsity, final_sparsity)


class ActivationAPoZRankedFilterPruner(_FixedFraction):
    """Prune ``desired_sparsity`` of each listed layer's filters, those whose ReLU outputs are most
    often zero (highest APoZ, Hu et al. 2016). See :class:`ActivationRankedFilterPruner`."""

    criterion = "apoz"


class ActivationMeanRankedFilterPruner(_FixedFraction):
    """Prune ``desired_sparsity`` of each listed layer's filters, those with the lowest mean ReLU
    output (Molchanov et al. 2017). See :class:`ActivationRankedFilterPruner`."""

    criterion = "mean"


class ActivationAPoZRankedFilterPruner_AGP(_GradualFraction):
    """APoZ filter ranking with Distiller's AGP schedule from ``initial_sparsity`` to
    ``final_sparsity`` over the policy's epochs. See :class:`ActivationRankedFilterPruner`."""

    criterion = "apoz"


class ActivationMeanRankedFilterPruner_AGP(_GradualFraction):
    """Mean-activation filter ranking with Distiller's AGP schedule from ``initial_sparsity`` to
    ``final_sparsity`` over the policy's epochs. See :class:`ActivationRankedFilterPruner`."""

    criterion = "mean"
