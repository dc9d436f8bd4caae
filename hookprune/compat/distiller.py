"""Distiller's API on hookprune's engine: the one place that speaks Distiller's protocols.

- :class:`CompressionScheduler` is the engine's scheduler with Distiller's method names
  (``on_epoch_begin(epoch)``, ``before_backward_pass(...)``, ``add_policy(policy, ...)``,
  ``zeros_mask_dict``, ``sched_metadata``, ``policies``, ``mask_all_weights``), so a Distiller training loop
  ports by changing its imports.
- :class:`PruningPolicy`, :class:`RegularizationPolicy`, :class:`QuantizationPolicy` and ``LRPolicy`` are
  Distiller's policy classes, for ``add_policy``.
- :func:`adapt` turns an object written against one of Distiller's protocols into a hook plugin: a pruner
  with ``set_param_mask(param, param_name, zeros_mask_dict, meta)``, a regularizer with ``loss()`` and
  ``threshold()``, a quantizer with ``quantize_params()``, any ``ScheduledTrainingPolicy``. The schedule
  builder and ``add_policy`` both call it; the engine itself never sees these protocols.
- ``zeros_mask_dict`` and :class:`ParameterMasker` are per-parameter views of the engine's masks.

Loss chaining: Distiller hands each policy's ``before_backward_pass`` the loss the policy before it returned,
and a returned ``PolicyLoss.overall_loss`` replaces the running loss. A Distiller-style policy receives the same
here: the loop's loss plus the terms of every hook called before it in ``before_backward`` (the engine's
``loss_so_far``), and its term is the difference its ``overall_loss`` makes. Native hook plugins receive the
loop's loss and add their terms, as the hook contract says; so a regularizer's term is scaled by the student
weight of a knowledge-distillation policy added through ``add_policy`` after it, as in Distiller.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator, Mapping
from typing import Any, NamedTuple

import torch

from hookprune import sharding
from hookprune._engine.masks import multiplier
from hookprune._engine.registry import has_hookimpls
from hookprune._engine.scheduler import Scheduler
from hookprune._engine.windows import Window
from hookprune.contract import LossTerm, Policy
from hookprune.errors import ArgumentError
from hookprune.events import Event
from hookprune.hookspecs import hookimpl
from hookprune.knowledge_distillation import KnowledgeDistillationPolicy
from hookprune.lr_stepper import LRStepper, adapt_lr_scheduler
from hookprune.pruning.base import Pruner, PruningStep
from hookprune.pruning.checks import check_pruning_args
from hookprune.pruning.masking import MaskOptions, split_masking_args
from hookprune.regularization.base import Regularizer

LossComponent = LossTerm


class PolicyLoss(NamedTuple):
    """Distiller's return type of ``before_backward_pass``: the overall loss and the terms added to it."""

    overall_loss: torch.Tensor
    loss_components: list[LossTerm]


#: each hook and the ``ScheduledTrainingPolicy`` method of Distiller's that it calls
POLICY_METHODS = {"on_epoch_begin": "on_epoch_begin", "on_minibatch_begin": "on_minibatch_begin",
                  "before_backward": "before_backward_pass",
                  "before_optimizer_step": "before_parameter_optimization",
                  "on_minibatch_end": "on_minibatch_end", "on_epoch_end": "on_epoch_end"}
#: the method of Distiller's protocol for each kind of schedule instance
PROTOCOL_METHODS = {"pruner": "set_param_mask", "lr_scheduler": "step", "regularizer": "loss",
                    "quantizer": "quantize_params",
                    "extension": "on_epoch_begin and the other ScheduledTrainingPolicy methods",
                    "distiller": "forward and the ScheduledTrainingPolicy methods"}


def is_distiller_policy(obj: Any) -> bool:
    """True when ``obj`` has any of Distiller's ``ScheduledTrainingPolicy`` methods."""
    return any(callable(getattr(obj, m, None)) for m in POLICY_METHODS.values())


def _meta(scheduler: Any, policy: Policy, epoch: int) -> dict[str, Any]:
    """Distiller's ``meta`` for a policy: its window, the current epoch, the model and the optimizer."""
    return {**policy.window.meta(), "current_epoch": epoch, "model": scheduler.model,
            "optimizer": scheduler.optimizer}


# -- per-parameter views of the masks --------------------------------------------------------------


class ParameterMasker:
    """Distiller's per-parameter masker (``zeros_mask_dict[name]``), a view of the scheduler's masks.

    Setting ``.mask`` stores a boolean copy, whatever dtype a Distiller pruner hands over; the options
    (``mask_on_forward_only``, ``use_double_copies``, ``mask_gradients``) are the engine's mask options.
    """

    def __init__(self, store: Any, param_name: str) -> None:
        self._store = store
        self.param_name = param_name
        self.is_regularization_mask = False
        self.backward_hook_handle: Any = None

    def _option(self, option: str) -> bool:
        return option in self._store.options(self.param_name)

    def _set_option(self, option: str, value: bool) -> None:
        self._store.set_options([self.param_name], **{option: bool(value)})

    mask_on_forward_only = property(lambda self: self._option("mask_on_forward_only"),
                                    lambda self, v: self._set_option("mask_on_forward_only", v))
    use_double_copies = property(lambda self: self._option("use_double_copies"),
                                 lambda self, v: self._set_option("use_double_copies", v))
    mask_gradients = property(lambda self: self._option("mask_gradients"),
                              lambda self, v: self._set_option("mask_gradients", v))

    @property
    def mask(self) -> torch.Tensor | None:
        return self._store.get(self.param_name)

    @mask.setter
    def mask(self, value: torch.Tensor | None) -> None:
        if value is None:
            self._store.pop(self.param_name, None)
        else:
            self._store[self.param_name] = value

    @property
    def unmasked_copy(self) -> torch.Tensor | None:
        """The dense weights kept while double copies mask the parameter."""
        return self._store.dense_copies.get(self.param_name)

    @unmasked_copy.setter
    def unmasked_copy(self, value: torch.Tensor | None) -> None:
        if value is None:
            self._store.dense_copies.pop(self.param_name, None)
        else:
            self._store.dense_copies[self.param_name] = value

    def _own(self, tensor: torch.Tensor) -> bool:
        return tensor is self._store.index.params[self.param_name]

    def mask_tensor(self, tensor: torch.Tensor) -> None:
        """Zero ``tensor``'s masked elements in place (this rank's shard of a tensor sharded as the parameter)."""
        mask = self.mask
        if mask is not None:
            with torch.no_grad():
                target = sharding.local(tensor)
                target.mul_(multiplier(mask, target))

    def apply_mask(self, parameter: torch.Tensor) -> torch.Tensor:
        """Mask ``parameter`` in place (keeping a dense copy first when double copies are on). Masking a tensor
        other than the masker's own parameter leaves the parameter's pending mask pending."""
        if self.mask is None:
            return parameter
        own = self._own(parameter)
        if own:
            self._store.apply([self.param_name])
        else:
            self.mask_tensor(parameter)
        if self.is_regularization_mask:
            self.mask = None
        return parameter

    def mask_gradient(self, gradient: torch.Tensor) -> torch.Tensor | None:
        """``gradient`` with the masked elements zeroed (a new tensor), or None without a mask."""
        mask = self.mask
        if mask is None:
            return None
        if sharding.is_sharded(gradient):
            shard = sharding.local(gradient)
            return sharding.as_dtensor(shard.mul(multiplier(mask, shard)), gradient)
        return gradient.mul(multiplier(mask, gradient))

    def revert_weights(self, parameter: torch.Tensor) -> None:
        """Restore the dense copy saved by :meth:`apply_mask` (double copies)."""
        if self._own(parameter):
            self._store.revert_weights(self.param_name)


class MaskerDict(Mapping[str, ParameterMasker]):
    """Distiller's ``zeros_mask_dict``: a masker for every parameter, looked up by any spelling."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self._maskers = {name: ParameterMasker(store, name) for name in store.index.params}

    def __getitem__(self, name: str) -> ParameterMasker:
        return self._maskers[self._store.resolve(name)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._maskers)

    def __len__(self) -> int:
        return len(self._maskers)


class _ThresholdSlot:
    """What ``zeros_mask_dict[param_name]`` is inside a Distiller regularizer's ``threshold()``: it receives the
    mask (and the ``is_regularization_mask`` flag) the regularizer sets, and touches no other mask."""

    __slots__ = ("is_regularization_mask", "mask")

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None
        self.is_regularization_mask = False


# -- adapters: Distiller's protocols as hook plugins --------------------------------------------------


class _Adapter:
    """What the adapters share: the adapted object, and Distiller's ``zeros_mask_dict`` of the scheduler."""

    def __init__(self, adapted: Any) -> None:
        self.adapted = adapted

    @staticmethod
    def maskers(scheduler: Any) -> MaskerDict:
        return scheduler.zeros_mask_dict


class DistillerPruner(_Adapter, Pruner):
    """A pruner with Distiller's ``set_param_mask(param, param_name, zeros_mask_dict, meta)``, called for every
    parameter at each of :class:`~hookprune.pruning.base.Pruner`'s pruning steps, as Distiller's ``PruningPolicy``
    does; a policy's ``levels`` is set on the pruner at the start of each of its epochs first."""

    def __init__(self, pruner: Any) -> None:
        super().__init__(pruner)
        self.name = getattr(pruner, "name", type(pruner).__name__)
        self.params_names = []

    def check_policy(self, policy: Policy) -> None:
        """Refuse malformed pruning args, and windows the pruner refuses (its own ``check_policy``)."""
        check_pruning_args(policy)
        check = getattr(self.adapted, "check_policy", None)
        if callable(check):
            check(policy)

    def prune(self, step: PruningStep) -> None:
        """``set_param_mask`` for every parameter of the model."""
        maskers = self.maskers(step.scheduler)
        meta = step.meta()
        for param_name in step.params:
            self.adapted.set_param_mask(step.ranked(param_name), param_name, maskers, meta)

    @hookimpl
    def on_epoch_begin(self, scheduler: Any, epoch: int) -> None:
        """Set the policy's ``levels`` on the pruner, then prune as a pruner does."""
        policy = scheduler.policy_of(self)
        levels = policy.arg("levels")
        if levels is not None:
            self.adapted.levels = dict(levels)
        super().on_epoch_begin(scheduler, epoch)


class DistillerRegularizer(_Adapter, Regularizer):
    """A regularizer with Distiller's ``loss(param, param_name, regularizer_loss, zeros_mask_dict)`` (the running
    term it adds to, for every parameter) and ``threshold(param, param_name, zeros_mask_dict)`` (a regularization
    mask it hands over), on :class:`~hookprune.regularization.base.Regularizer`'s timing."""

    @property
    def threshold_criteria(self) -> str | None:  # type: ignore[override]
        return getattr(self.adapted, "threshold_criteria", None)

    def targets(self, params: Mapping[str, torch.Tensor]) -> list[str]:
        """Every parameter: Distiller's regularizer picks its own."""
        return list(params)

    def threshold_mask(self, param_name: str, param: torch.Tensor) -> torch.Tensor | None:
        """The mask ``threshold()`` hands over for this parameter, caught in a slot of its own."""
        slot = _ThresholdSlot()
        self.adapted.threshold(param, param_name, {param_name: slot})
        return slot.mask

    @hookimpl
    def before_backward(self, scheduler: Any, loss: torch.Tensor) -> LossTerm:
        regularizer_loss = torch.tensor(0, dtype=torch.float, device=loss.device)
        maskers = self.maskers(scheduler)
        for param_name, param in scheduler.params.items():
            added = self.adapted.loss(param, param_name, regularizer_loss, maskers)
            if added is not None:
                regularizer_loss = added
        return LossTerm(f"{type(self.adapted).__name__}_loss", regularizer_loss)


class DistillerQuantizer(_Adapter):
    """A quantizer with Distiller's ``prepare_model()`` (once, when scheduled) and ``quantize_params()`` (then, and
    after every optimizer step of its policy), as Distiller's ``QuantizationPolicy`` does."""

    sets_masks = False

    def attach(self, scheduler: Any) -> None:
        prepare = getattr(self.adapted, "prepare_model", None)
        if callable(prepare):
            prepare()
        self.adapted.quantize_params()

    @hookimpl
    def on_minibatch_end(self) -> None:
        self.adapted.quantize_params()


class DistillerPolicy(_Adapter):
    """An object written against Distiller's ``ScheduledTrainingPolicy`` API, run unchanged; its
    ``before_backward_pass`` receives the loss as the policies before it left it, and its ``overall_loss`` replaces
    it (the term is the difference)."""

    def idle_hooks(self, policy: Policy) -> Collection[str]:
        """The hooks whose Distiller method the wrapped policy lacks."""
        return {hook for hook, method in POLICY_METHODS.items() if not callable(getattr(self.adapted, method, None))}

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        fn = getattr(self.adapted, method, None)
        return None if fn is None else fn(*args, **kwargs)

    def _meta(self, scheduler: Any, epoch: int) -> dict[str, Any]:
        return _meta(scheduler, scheduler.policy_of(self), epoch)

    @hookimpl
    def on_epoch_begin(self, scheduler: Any, model: torch.nn.Module, epoch: int) -> None:
        self._call("on_epoch_begin", model, self.maskers(scheduler), self._meta(scheduler, epoch))

    @hookimpl
    def on_minibatch_begin(self, scheduler: Any, model: torch.nn.Module, optimizer: Any,
                           epoch: int, minibatch_id: int, minibatches_per_epoch: int) -> None:
        self._call("on_minibatch_begin", model, epoch, minibatch_id, minibatches_per_epoch,
                   self.maskers(scheduler), self._meta(scheduler, epoch), optimizer)

    @hookimpl
    def before_backward(self, scheduler: Any, model: torch.nn.Module, optimizer: Any,
                        epoch: int, minibatch_id: int, minibatches_per_epoch: int,
                        loss: torch.Tensor) -> Any:
        running = scheduler.loss_so_far
        result = self._call("before_backward_pass", model, epoch, minibatch_id, minibatches_per_epoch,
                            running, self.maskers(scheduler), optimizer)
        if result is None:
            return None
        components = list(result.loss_components)
        name = components[0].name if len(components) == 1 else type(self.adapted).__name__
        return LossTerm(name, result.overall_loss - running)

    @hookimpl
    def before_optimizer_step(self, scheduler: Any, model: torch.nn.Module,
                              optimizer: Any, epoch: int, minibatch_id: int,
                              minibatches_per_epoch: int) -> None:
        self._call("before_parameter_optimization", model, epoch, minibatch_id, minibatches_per_epoch,
                   self.maskers(scheduler), self._meta(scheduler, epoch), optimizer)

    @hookimpl
    def on_minibatch_end(self, scheduler: Any, model: torch.nn.Module, optimizer: Any,
                         epoch: int, minibatch_id: int, minibatches_per_epoch: int) -> None:
        self._call("on_minibatch_end", model, epoch, minibatch_id, minibatches_per_epoch,
                   self.maskers(scheduler), optimizer)

    @hookimpl
    def on_epoch_end(self, scheduler: Any, model: torch.nn.Module, epoch: int,
                     metrics: dict[str, Any]) -> None:
        self._call("on_epoch_end", model, self.maskers(scheduler), self._meta(scheduler, epoch), metrics=metrics)


def adapt(instance: Any, kind: str) -> list[Any]:
    """The hook plugins that run ``instance`` under a policy of ``kind``: itself when it has hooks, else an adapter
    for the Distiller (or torch) protocol it speaks; empty when it speaks none."""
    if has_hookimpls(instance):
        return [instance]
    plugins: list[Any] = []
    if kind == "pruner" and callable(getattr(instance, "set_param_mask", None)):
        plugins.append(DistillerPruner(instance))
    elif kind == "regularizer" and callable(getattr(instance, "loss", None)):
        plugins.append(DistillerRegularizer(instance))
    elif kind == "quantizer" and callable(getattr(instance, "quantize_params", None)):
        plugins.append(DistillerQuantizer(instance))
    elif kind == "lr_scheduler":
        stepper = adapt_lr_scheduler(instance)
        if stepper is not None:
            plugins.append(stepper)
    elif is_distiller_policy(instance):
        plugins.append(DistillerPolicy(instance))
    return plugins


def schedule_instance(scheduler: Scheduler, instance: Any, kind: str, window: Window, args: Mapping[str, Any],
                      name: str, label: str) -> list[Policy]:
    """Schedule ``instance`` under one policy of ``kind``: its masking options (a pruner's) as a
    :class:`~hookprune.pruning.masking.MaskOptions` first, then the plugins :func:`adapt` gives, the policy's other
    args going to each of them. Raises TypeError when nothing would call the instance."""
    plugins = adapt(instance, kind)
    if not plugins:
        raise TypeError(f"{label} has no hookimpls and none of Distiller's methods for a {kind} "
                        f"({PROTOCOL_METHODS.get(kind, 'on_epoch_begin and the others')}), so nothing would call it")
    masking, rest = split_masking_args(args) if kind == "pruner" else ({}, dict(args))
    if masking and window.unit == "step":
        key = next(iter(masking))
        raise ArgumentError(key, f"'{key}' acts at epoch boundaries, which a step window does not have; give the "
                                 "policy starting_epoch/ending_epoch")
    policies = []
    if masking:
        policies.append(scheduler.schedule(MaskOptions(), window, kind=kind, name=f"{name}:masking", args=masking,
                                           label=f"{label} masking options"))
    for plugin in plugins:
        policies.append(scheduler.schedule(plugin, window, kind=kind, name=name, args=rest, instance=instance,
                                           label=label))
    return policies


# -- Distiller's policy classes -------------------------------------------------------------------


class PruningPolicy:
    """Distiller's ``PruningPolicy(pruner, pruner_args)``: a pruner and its policy's ``args``, for ``add_policy``."""

    kind = "pruner"

    def __init__(self, pruner: Any, pruner_args: Mapping[str, Any] | None = None) -> None:
        self.pruner = pruner
        self.args = dict(pruner_args or {})

    @property
    def instance(self) -> Any:
        return self.pruner


class RegularizationPolicy:
    """Distiller's ``RegularizationPolicy(regularizer, keep_mask=False)``, for ``add_policy``."""

    kind = "regularizer"

    def __init__(self, regularizer: Any, keep_mask: bool = False) -> None:
        self.regularizer = regularizer
        self.args = {"keep_mask": keep_mask}

    @property
    def instance(self) -> Any:
        return self.regularizer


class QuantizationPolicy:
    """Distiller's ``QuantizationPolicy(quantizer)``, for ``add_policy``; as in Distiller, the quantizer is installed
    on the model when the policy is made."""

    kind = "quantizer"

    def __init__(self, quantizer: Any) -> None:
        self.quantizer = quantizer
        self.args: dict[str, Any] = {}
        prepare = getattr(quantizer, "prepare_model", None)
        if callable(prepare):
            prepare()
        if callable(getattr(quantizer, "quantize_params", None)):
            quantizer.quantize_params()

    @property
    def instance(self) -> Any:
        return self.quantizer


#: Distiller's ``LRPolicy(lr_scheduler)``: hookprune's LR stepper is one
LRPolicy = LRStepper

_BINDINGS = (PruningPolicy, RegularizationPolicy, QuantizationPolicy)


# -- the scheduler with Distiller's method names ----------------------------------------------------


class _EpochPolicies(Mapping[int, list[Any]]):
    """Distiller's ``scheduler.policies``: epoch -> the policies acting in it, read from the windows (never
    expanded in memory)."""

    def __init__(self, scheduler: CompressionScheduler) -> None:
        self._scheduler = scheduler

    def __getitem__(self, epoch: int) -> list[Any]:
        found = [self._scheduler.added(p) for p in self._scheduler.scheduled
                 if p.window.unit == "epoch" and epoch in p.window]
        if not found:
            raise KeyError(epoch)
        return found

    def __iter__(self) -> Iterator[int]:
        import heapq

        last = None
        for epoch in heapq.merge(*(iter(p.window) for p in self._scheduler.scheduled if p.window.unit == "epoch")):
            if epoch != last:
                yield epoch
                last = epoch

    def __len__(self) -> int:
        return sum(1 for _ in self)


class CompressionScheduler(Scheduler):
    """Holds a model's masks and schedule instances, and fires events to them, with Distiller's method names."""

    def __init__(self, model: torch.nn.Module, device: torch.device | str | None = None,
                 optimizer: torch.optim.Optimizer | None = None) -> None:
        super().__init__(model, optimizer)
        self.device = device
        self.zeros_mask_dict = MaskerDict(self.masks)
        self._added: dict[int, Any] = {}

    def added(self, policy: Policy) -> Any:
        """The object given to ``add_policy`` for ``policy`` (the instance, for a schedule's policies)."""
        return self._added.get(policy.index, policy.instance)

    @property
    def policies(self) -> Mapping[int, list[Any]]:
        """Distiller's ``policies``: epoch -> the policy objects acting in it."""
        return _EpochPolicies(self)

    @property
    def sched_metadata(self) -> dict[Any, dict[str, Any]]:
        """Distiller's ``sched_metadata``: policy object -> its window's ``starting_epoch``, ``ending_epoch``,
        ``frequency``."""
        return {self.added(p): p.window.meta() for p in self.scheduled}

    def add_policy(self, policy: Any, epochs: list[int] | None = None, starting_epoch: int | None = None,
                   ending_epoch: int | None = None, frequency: int | None = None, *, name: str | None = None,
                   kind: str | None = None, args: Mapping[str, Any] | None = None, starting_step: int | None = None,
                   ending_step: int | None = None, step_frequency: int | None = None) -> Any:
        """Schedule ``policy`` for ``epochs``, ``range(starting_epoch, ending_epoch, frequency)`` or the global steps
        ``range(starting_step, ending_step, step_frequency)``; returns it.

        ``policy`` is a hook plugin, one of Distiller's policy classes (``PruningPolicy(pruner, args)``,
        ``RegularizationPolicy``, ``QuantizationPolicy``, ``LRPolicy``, ``KnowledgeDistillationPolicy``, which
        chains the loss as Distiller's does) or any object with Distiller's ``ScheduledTrainingPolicy`` methods.
        """
        window = Window.of(epochs, starting_epoch, ending_epoch, frequency, starting_step=starting_step,
                           ending_step=ending_step, step_frequency=step_frequency)
        label = name or f"{type(policy).__name__}#{next(self._counter)}"
        if isinstance(policy, _BINDINGS):
            scheduled = schedule_instance(self, policy.instance, policy.kind, window, {**policy.args, **(args or {})},
                                          label, label)
        elif isinstance(policy, KnowledgeDistillationPolicy):
            scheduled = schedule_instance(self, policy, "distiller", window, {"chain_loss": True, **(args or {})},
                                          label, label)
        else:
            kind = kind or ("lr_scheduler" if isinstance(policy, LRStepper) else "plugin")
            plugins = [policy] if has_hookimpls(policy) else adapt(policy, "extension")
            if not plugins:
                raise TypeError(f"{label}: {type(policy).__name__} has no hookimpls and none of Distiller's policy "
                                "methods, so no event would reach it")
            scheduled = [self.schedule(plugins[0], window, kind=kind, name=label, args=args, instance=policy)]
        for entry in scheduled:
            self._added[entry.index] = policy
        return policy

    # -- Distiller's method names -----------------------------------------------------------

    def on_epoch_begin(self, epoch: int, optimizer: torch.optim.Optimizer | None = None, **kwargs: Any) -> None:
        self.fire(Event.ON_EPOCH_BEGIN, epoch=epoch, optimizer=optimizer)

    def on_minibatch_begin(self, epoch: int, minibatch_id: int, minibatches_per_epoch: int,
                           optimizer: torch.optim.Optimizer | None = None) -> None:
        self.fire(Event.ON_MINIBATCH_BEGIN, epoch=epoch, minibatch_id=minibatch_id,
                  minibatches_per_epoch=minibatches_per_epoch, optimizer=optimizer)

    def before_backward_pass(self, epoch: int, minibatch_id: int, minibatches_per_epoch: int,
                             loss: torch.Tensor, optimizer: torch.optim.Optimizer | None = None,
                             return_loss_components: bool = False) -> Any:
        total = self.fire(Event.BEFORE_BACKWARD, epoch=epoch, minibatch_id=minibatch_id,
                          minibatches_per_epoch=minibatches_per_epoch, loss=loss, optimizer=optimizer)
        if return_loss_components:
            return PolicyLoss(total, [LossTerm(k, v) for k, v in self.loss_components.items()])
        return total

    def before_parameter_optimization(self, epoch: int, minibatch_id: int, minibatches_per_epoch: int,
                                      optimizer: torch.optim.Optimizer | None = None) -> None:
        self.fire(Event.BEFORE_OPTIMIZER_STEP, epoch=epoch, minibatch_id=minibatch_id,
                  minibatches_per_epoch=minibatches_per_epoch, optimizer=optimizer)

    def on_minibatch_end(self, epoch: int, minibatch_id: int, minibatches_per_epoch: int,
                         optimizer: torch.optim.Optimizer | None = None) -> None:
        self.fire(Event.ON_MINIBATCH_END, epoch=epoch, minibatch_id=minibatch_id,
                  minibatches_per_epoch=minibatches_per_epoch, optimizer=optimizer)

    def on_epoch_end(self, epoch: int, optimizer: torch.optim.Optimizer | None = None,
                     metrics: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        self.fire(Event.ON_EPOCH_END, epoch=epoch, optimizer=optimizer,
                  metrics=dict(metrics) if metrics is not None else None)

    def mask_all_weights(self, is_forward: bool = True) -> None:
        """Apply the masks now (all of them, or all but forward-only ones when not ``is_forward``)."""
        if is_forward:
            self.masks.apply()
        else:
            self.masks.apply_after_step()


def file_config(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, filename: str | os.PathLike[str],
                scheduler: CompressionScheduler | None = None,
                resumed_epoch: int | None = None) -> CompressionScheduler:
    """Distiller's ``distiller.file_config``."""
    from hookprune.config.builder import load

    return load(filename, model, optimizer, resumed_epoch=resumed_epoch, scheduler=scheduler)


def dict_config(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, sched_dict: Mapping[str, Any],
                scheduler: CompressionScheduler | None = None,
                resumed_epoch: int | None = None) -> CompressionScheduler:
    """Distiller's ``distiller.dict_config``."""
    from hookprune.config.builder import load

    return load(sched_dict, model, optimizer, resumed_epoch=resumed_epoch, scheduler=scheduler)
