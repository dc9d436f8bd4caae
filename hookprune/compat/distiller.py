"""Policies: when a schedule instance acts (its window of epochs), and the adapters that drive
Distiller-style objects (pruners, regularizers, quantizers, LR schedulers, policies) from hooks."""

from __future__ import annotations

import warnings
from collections import namedtuple
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import torch

from hookprune._engine.masks import as_keep_mask
from hookprune._engine.windows import Window
from hookprune.hookspecs import hookimpl

if TYPE_CHECKING:
    from hookprune._engine.scheduler import CompressionScheduler

LossTerm = namedtuple("LossTerm", ["name", "value"])
LossTerm.__doc__ = "An additive loss term returned from ``before_backward``, named for logging."
LossComponent = LossTerm
PolicyLoss = namedtuple("PolicyLoss", ["overall_loss", "loss_components"])
PolicyLoss.__doc__ = "Distiller's return type: the overall loss and the terms added to it."


class Policy:
    """Base of the adapters: one per schedule policy, holding Distiller's ``meta`` for its window."""

    #: True for LR-scheduler policies, which run after every other instance in an event.
    runs_last = False
    #: False for policies whose hooks never assign a mask (see ``sets_masks`` in the plugin author's guide).
    sets_masks = True

    def __init__(self) -> None:
        self.meta: dict[str, Any] = {}
        self.window: Window | None = None

    def attach(self, window: Window) -> None:
        """Called by ``add_policy`` with the epochs this policy covers."""
        self.window = window
        self.meta.update(window.meta())

    def idle_hooks(self) -> set[str]:
        """The hooks this policy implements that would do nothing with its arguments; the scheduler leaves them
        out of its dispatch, asking again whenever it builds an epoch's table."""
        return set()

    def _enter(self, scheduler: CompressionScheduler, epoch: int) -> dict[str, Any]:
        self.meta["current_epoch"] = epoch
        self.meta["model"] = scheduler.model
        self.meta["optimizer"] = scheduler.optimizer
        return self.meta

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


@dataclass
class PruningArgs:
    """A pruner policy's ``args:`` (Distiller's names and defaults)."""

    levels: dict[str, float] | None = None
    keep_mask: bool = False
    mini_batch_pruning_frequency: int = 0
    mask_on_forward_only: bool = False
    mask_gradients: bool = False
    use_double_copies: bool = False
    discard_masks_at_minibatch_end: bool = False
    skip_first_minibatch: bool = False
    fold_batchnorm: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "bool" and not isinstance(value, bool):
                raise ValueError(f"'{f.name}' must be true or false, got {value!r}")
        if (not isinstance(self.mini_batch_pruning_frequency, int)
                or isinstance(self.mini_batch_pruning_frequency, bool)
                or self.mini_batch_pruning_frequency < 0):
            raise ValueError("'mini_batch_pruning_frequency' must be an integer >= 0, got "
                             f"{self.mini_batch_pruning_frequency!r}")
        if self.mask_gradients and not self.mask_on_forward_only:
            raise ValueError("'mask_gradients' requires 'mask_on_forward_only' to be true as well")

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


class PruningPolicy(Policy):
    """Drives a pruner: Distiller's ``set_param_mask`` over every parameter at the start of each
    epoch of the window (and every ``mini_batch_pruning_frequency`` minibatches), with the policy's
    masking options."""

    def __init__(self, pruner: Any, pruner_args: dict[str, Any] | PruningArgs | None = None) -> None:
        super().__init__()
        self.pruner = pruner
        self.args = pruner_args if isinstance(pruner_args, PruningArgs) else PruningArgs(**(pruner_args or {}))
        self.levels = self.args.levels
        self.is_initialized = False
        self.is_last_epoch = False
        self._set_param_mask = getattr(pruner, "set_param_mask", None)
        self._bn_followers: dict[str, Any] | None = None

    def _set_masks(self, scheduler: CompressionScheduler) -> None:
        if self._set_param_mask is None:
            return
        zeros_mask_dict = scheduler.zeros_mask_dict
        folded = self._batchnorm_followers(scheduler.model) if self.args.fold_batchnorm else {}
        for param_name, param in scheduler.masks.index.params.items():
            ranked = param
            if param_name in folded:
                from hookprune.thinning.graph import fold_batchnorm_weight

                ranked = fold_batchnorm_weight(*folded[param_name])
            self._set_param_mask(ranked, param_name, zeros_mask_dict, self.meta)

    def _batchnorm_followers(self, model: torch.nn.Module) -> dict[str, Any]:
        """``fold_batchnorm``: each Conv2d weight followed directly by a BatchNorm, found once per policy
        in the model's fx graph; the pruner ranks ``weight * gamma / sqrt(running_var + eps)``."""
        if self._bn_followers is None:
            from hookprune.thinning.graph import batchnorm_followers

            self._bn_followers = batchnorm_followers(model)
        return self._bn_followers

    def idle_hooks(self) -> set[str]:
        """The minibatch hooks, unless the arguments prune within an epoch or discard masks after each step."""
        idle = set()
        if not self.args.mini_batch_pruning_frequency and not self.args.skip_first_minibatch:
            idle.add("on_minibatch_begin")
        if not self.args.discard_masks_at_minibatch_end:
            idle.add("on_minibatch_end")
        return idle

    @hookimpl
    def on_epoch_begin(self, scheduler: CompressionScheduler, epoch: int) -> None:
        self._enter(scheduler, epoch)
        self.is_last_epoch = epoch == self.meta["ending_epoch"] - 1
        if self.levels is not None:
            self.pruner.levels = self.levels
        if not self.is_initialized:
            for masker in scheduler.zeros_mask_dict.values():
                masker.use_double_copies = self.args.use_double_copies
                masker.mask_on_forward_only = self.args.mask_on_forward_only
                masker.mask_gradients = self.args.mask_gradients
            scheduler.masks.flags_changed()
            self.is_initialized = True
            if self.args.skip_first_minibatch:
                return
        self._set_masks(scheduler)

    @hookimpl
    def on_minibatch_begin(self, scheduler: CompressionScheduler, epoch: int, minibatch_id: int,
                           minibatches_per_epoch: int) -> None:
        self._enter(scheduler, epoch)
        global_id = epoch * minibatches_per_epoch + minibatch_id
        frequency = self.args.mini_batch_pruning_frequency
        scheduled = minibatch_id > 0 and frequency != 0 and global_id % frequency == 0
        skipped_first = self.args.skip_first_minibatch and global_id == 1
        if scheduled or skipped_first:
            self._set_masks(scheduler)

    @hookimpl
    def on_minibatch_end(self, scheduler: CompressionScheduler) -> None:
        if self.args.discard_masks_at_minibatch_end:
            scheduler.masks.clear()

    @hookimpl
    def on_epoch_end(self, scheduler: CompressionScheduler, epoch: int) -> None:
        self._enter(scheduler, epoch)
        if not self.is_last_epoch:
            return
        for masker in scheduler.zeros_mask_dict.values():
            if self.args.keep_mask:
                masker.use_double_copies = False
                masker.mask_on_forward_only = False
            masker.mask_gradients = False
        scheduler.masks.flags_changed()
        if self.args.keep_mask:
            scheduler.masks.apply()

    def state_dict(self) -> dict[str, Any]:
        return {"is_initialized": self.is_initialized, "is_last_epoch": self.is_last_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.is_initialized = bool(state.get("is_initialized", False))
        self.is_last_epoch = bool(state.get("is_last_epoch", False))


class LRPolicy(Policy):
    """Steps an LR scheduler at the end of each epoch of its window, to ``epoch + 1`` as Distiller
    did; ``ReduceLROnPlateau`` reads ``metrics[mode]`` (``metrics['min']`` is the validation loss)."""

    runs_last = True
    sets_masks = False
    _EPOCH_ARG_DEPRECATED = r"(?s).*epoch parameter.*"

    def __init__(self, lr_scheduler: Any) -> None:
        super().__init__()
        self.lr_scheduler = lr_scheduler

    @hookimpl
    def on_epoch_end(self, scheduler: CompressionScheduler, epoch: int, metrics: dict[str, Any]) -> None:
        self._enter(scheduler, epoch)
        lr_scheduler = self.lr_scheduler
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=self._EPOCH_ARG_DEPRECATED, category=UserWarning)
            if isinstance(lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                mode = lr_scheduler.mode
                if not isinstance(metrics, dict) or mode not in metrics:
                    raise ValueError(
                        f"ReduceLROnPlateau (mode '{mode}') needs metrics['{mode}'] at on_epoch_end: "
                        f"fire('on_epoch_end', epoch=..., metrics={{'{mode}': value}})")
                lr_scheduler.step(metrics[mode], epoch=epoch + 1)
            else:
                lr_scheduler.step(epoch=epoch + 1)


class RegularizationPolicy(Policy):
    """Drives a Distiller-style regularizer: ``loss()`` adds a named term before backward, and
    ``threshold()`` zeroes weights after each optimizer step (kept at the end of the window when
    ``keep_mask``).

    A threshold mask never replaces a pruner's mask (Distiller issue 54): ``threshold()`` writes into
    a :class:`ThresholdSlot`, the parameter (already masked by the engine after the optimizer step) is
    multiplied by it, so the weights carry the AND of both masks, and ``scheduler.masks`` keeps the
    pruner's mask alone. Only at the last minibatch of the window with ``keep_mask`` does the AND
    become the parameter's mask for good.
    """

    class ThresholdSlot:
        """What ``zeros_mask_dict[param_name]`` is inside ``threshold()``: it receives the mask (and the
        ``is_regularization_mask`` flag) a Distiller regularizer sets, and touches no other mask."""

        __slots__ = ("is_regularization_mask", "mask")

        def __init__(self) -> None:
            self.mask: torch.Tensor | None = None
            self.is_regularization_mask = False

    def __init__(self, regularizer: Any, keep_mask: bool = False) -> None:
        super().__init__()
        if not isinstance(keep_mask, bool):
            raise ValueError(f"'keep_mask' must be true or false, got {keep_mask!r}")
        self.regularizer = regularizer
        self.keep_mask = keep_mask
        self.is_last_epoch = False

    @hookimpl
    def on_epoch_begin(self, scheduler: CompressionScheduler, epoch: int) -> None:
        self._enter(scheduler, epoch)
        self.is_last_epoch = epoch == self.meta["ending_epoch"] - 1

    @hookimpl
    def before_backward(self, scheduler: CompressionScheduler, loss: torch.Tensor) -> LossTerm:
        regularizer_loss = torch.tensor(0, dtype=torch.float, device=loss.device)
        for param_name, param in scheduler.masks.index.params.items():
            added = self.regularizer.loss(param, param_name, regularizer_loss, scheduler.zeros_mask_dict)
            if added is not None:
                regularizer_loss = added
        return LossTerm(f"{type(self.regularizer).__name__}_loss", regularizer_loss)

    @hookimpl
    def on_minibatch_end(self, scheduler: CompressionScheduler, minibatch_id: int,
                         minibatches_per_epoch: int) -> None:
        if getattr(self.regularizer, "threshold_criteria", None) is None:
            return
        keep = self.keep_mask and self.is_last_epoch and minibatch_id == minibatches_per_epoch - 1
        masks = scheduler.masks
        for param_name, param in masks.index.params.items():
            slot = self.ThresholdSlot()
            self.regularizer.threshold(param, param_name, {param_name: slot})
            if slot.mask is None:
                continue
            threshold_mask = as_keep_mask(slot.mask, param,
                                          f"{type(self.regularizer).__name__}.threshold()'s mask for '{param_name}'")
            with torch.no_grad():
                param.mul_(threshold_mask)
            if keep:
                pruning_mask = masks.get(param_name)
                masks[param_name] = threshold_mask if pruning_mask is None else threshold_mask & pruning_mask

    def state_dict(self) -> dict[str, Any]:
        return {"is_last_epoch": self.is_last_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.is_last_epoch = bool(state.get("is_last_epoch", False))


class QuantizationPolicy(Policy):
    """Drives a Distiller-style quantizer: ``prepare_model()`` once, ``quantize_params()`` now and
    after every optimizer step of its window."""

    sets_masks = False

    def __init__(self, quantizer: Any) -> None:
        super().__init__()
        self.quantizer = quantizer
        self.quantizer.prepare_model()
        self.quantizer.quantize_params()

    @hookimpl
    def on_minibatch_end(self) -> None:
        self.quantizer.quantize_params()


#: each hook and the ``ScheduledTrainingPolicy`` method of Distiller's that it calls
_DISTILLER_POLICY_METHODS = {"on_epoch_begin": "on_epoch_begin", "on_minibatch_begin": "on_minibatch_begin",
                             "before_backward": "before_backward_pass",
                             "before_optimizer_step": "before_parameter_optimization",
                             "on_minibatch_end": "on_minibatch_end", "on_epoch_end": "on_epoch_end"}


def is_distiller_policy(obj: Any) -> bool:
    """True when ``obj`` has any of Distiller's ``ScheduledTrainingPolicy`` methods."""
    return any(callable(getattr(obj, m, None)) for m in _DISTILLER_POLICY_METHODS.values())


class DistillerPolicyAdapter(Policy):
    """Runs an object written against Distiller's ``ScheduledTrainingPolicy`` API unchanged."""

    def __init__(self, policy: Any) -> None:
        super().__init__()
        self.policy = policy

    def idle_hooks(self) -> set[str]:
        """The hooks whose Distiller method the wrapped policy lacks."""
        return {hook for hook, method in _DISTILLER_POLICY_METHODS.items()
                if not callable(getattr(self.policy, method, None))}

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        fn = getattr(self.policy, method, None)
        return None if fn is None else fn(*args, **kwargs)

    @hookimpl
    def on_epoch_begin(self, scheduler: CompressionScheduler, model: torch.nn.Module, epoch: int) -> None:
        self._call("on_epoch_begin", model, scheduler.zeros_mask_dict, self._enter(scheduler, epoch))

    @hookimpl
    def on_minibatch_begin(self, scheduler: CompressionScheduler, model: torch.nn.Module, optimizer: Any,
                           epoch: int, minibatch_id: int, minibatches_per_epoch: int) -> None:
        self._call("on_minibatch_begin", model, epoch, minibatch_id, minibatches_per_epoch,
                   scheduler.zeros_mask_dict, self._enter(scheduler, epoch), optimizer)

    @hookimpl
    def before_backward(self, scheduler: CompressionScheduler, model: torch.nn.Module, optimizer: Any,
                        epoch: int, minibatch_id: int, minibatches_per_epoch: int,
                        loss: torch.Tensor) -> Any:
        result = self._call("before_backward_pass", model, epoch, minibatch_id, minibatches_per_epoch,
                            loss, scheduler.zeros_mask_dict, optimizer)
        if result is None:
            return None
        components = list(result.loss_components)
        name = components[0].name if len(components) == 1 else type(self.policy).__name__
        return LossTerm(name, result.overall_loss - loss)

    @hookimpl
    def before_optimizer_step(self, scheduler: CompressionScheduler, model: torch.nn.Module,
                              optimizer: Any, epoch: int, minibatch_id: int,
                              minibatches_per_epoch: int) -> None:
        self._call("before_parameter_optimization", model, epoch, minibatch_id, minibatches_per_epoch,
                   scheduler.zeros_mask_dict, self._enter(scheduler, epoch), optimizer)

    @hookimpl
    def on_minibatch_end(self, scheduler: CompressionScheduler, model: torch.nn.Module, optimizer: Any,
                         epoch: int, minibatch_id: int, minibatches_per_epoch: int) -> None:
        self._call("on_minibatch_end", model, epoch, minibatch_id, minibatches_per_epoch,
                   scheduler.zeros_mask_dict, optimizer)

    @hookimpl
    def on_epoch_end(self, scheduler: CompressionScheduler, model: torch.nn.Module, epoch: int,
                     metrics: dict[str, Any]) -> None:
        meta = self._enter(scheduler, epoch)
        self._call("on_epoch_end", model, scheduler.zeros_mask_dict, meta, metrics=metrics)
