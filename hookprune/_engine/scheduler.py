"""The compression scheduler: dispatches events to the instances active in the current epoch.

Hook implementations are registered and validated with pluggy; dispatch is a precomputed list
per epoch, so an inactive instance costs nothing and each call is attributed to its instance
(for loss-term names and for errors). Within an event, instances run in policy order, LR
schedulers last, then auto-loaded hook plugins; ``tryfirst``/``trylast`` move an implementation
to the front or the back.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import torch

from hookprune._engine.masks import MaskStore
from hookprune._engine.params import ParamIndex
from hookprune._engine.registry import (
    HOOK_NAMES,
    autoloaded_plugins,
    distribution_of,
    has_hookimpls,
    make_plugin_manager,
    validate_plugin,
)
from hookprune._engine.windows import Window
from hookprune.compat.distiller import (
    DistillerPolicyAdapter,
    LossTerm,
    Policy,
    PolicyLoss,
    PruningPolicy,
    is_distiller_policy,
)
from hookprune.errors import ScheduleError, Where
from hookprune.events import EVENT_ARGS, Event
from hookprune.sparsity import LayerSparsity, sparsity_report, total_sparsity

#: event name -> (the event, the keyword arguments it takes from the loop as a set); an Event hashes and
#: compares as its name, so one lookup serves both spellings
_EVENTS = {e.value: (e, frozenset(EVENT_ARGS[e])) for e in Event}
#: the events as module constants: an enum class attribute lookup costs more than the comparison
(_EPOCH_BEGIN, _MINIBATCH_BEGIN, _BEFORE_BACKWARD, _BEFORE_OPTIMIZER_STEP, _MINIBATCH_END,
 _EPOCH_END) = (Event.ON_EPOCH_BEGIN, Event.ON_MINIBATCH_BEGIN, Event.BEFORE_BACKWARD,
                Event.BEFORE_OPTIMIZER_STEP, Event.ON_MINIBATCH_END, Event.ON_EPOCH_END)


@dataclass
class _Entry:
    plugin: Any
    label: str
    windows: list[Window] | None
    runs_last: bool = False
    #: False when the plugin declares (``sets_masks = False``) that its hooks never assign a mask
    sets_masks: bool = True
    impls: dict[str, list[tuple[Callable[..., Any], tuple[str, ...], int]]] = field(default_factory=dict)

    def active(self, epoch: int) -> bool:
        return self.windows is None or any(epoch in w for w in self.windows)


class CompressionScheduler:
    """Holds a model's masks and schedule instances, and fires events to them.

    Keeps Distiller's method names (``on_epoch_begin(epoch)``, ``before_backward_pass(...)``, ...)
    so a Distiller training loop ports by changing its imports.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device | str | None = None,
                 optimizer: torch.optim.Optimizer | None = None) -> None:
        self.model = model
        self.device = device
        self.optimizer = optimizer
        self.masks = MaskStore(model, ParamIndex(model))
        self.zeros_mask_dict = self.masks.maskers
        self.pm = make_plugin_manager()
        self.instances: dict[str, Any] = {}
        self.policies: dict[int, list[Any]] = {}
        self.sched_metadata: dict[Any, dict[str, Any]] = {}
        self.loss_components: dict[str, torch.Tensor] = {}
        self.epoch: int | None = None
        self._entries: list[_Entry] = []
        self._tables: dict[int, dict[str, Any]] = {}
        self._counter = itertools.count()
        #: a :class:`hookprune.distributed.MaskSynchronizer` under distributed training, else None: told when
        #: hooks may change masks, and asked to bring every rank's masks into line before masks are applied
        self.mask_sync: Any = None
        for plugin in autoloaded_plugins():
            self._entries.append(self._entry(plugin.obj, f"plugin '{plugin.provider.name}'", None,
                                             registered=True))
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            from hookprune.distributed import synchronize_masks

            synchronize_masks(self)

    # -- building ---------------------------------------------------------------------------

    def add_policy(self, policy: Any, epochs: list[int] | None = None, starting_epoch: int | None = None,
                   ending_epoch: int | None = None, frequency: int | None = 1, *,
                   name: str | None = None) -> Any:
        """Schedule ``policy`` for ``epochs`` or ``range(starting_epoch, ending_epoch, frequency)``.

        ``policy`` is a hookprune policy (``PruningPolicy(pruner, args)``, ``LRPolicy(sched)``...),
        any object with hookimpls, or an object with Distiller's ``ScheduledTrainingPolicy`` methods.
        """
        window = Window(epochs, starting_epoch, ending_epoch, frequency)
        label = name or f"{type(policy).__name__}#{next(self._counter)}"
        self._schedule(policy, window, label)
        return policy

    def _schedule(self, policy: Any, window: Window, label: str, where: Where | None = None) -> None:
        if has_hookimpls(policy):
            plugin = policy
        elif is_distiller_policy(policy):
            plugin = DistillerPolicyAdapter(policy)
        else:
            message = (f"{label}: {type(policy).__name__} has no hookimpls and none of Distiller's "
                       "policy methods, so no event would reach it")
            raise (where.error(message) if where else TypeError(message))
        entry = next((e for e in self._entries if e.plugin is plugin), None)
        if entry is None:
            validate_plugin(plugin, label, where)
            self._entries.append(self._entry(plugin, label, [window]))
        elif entry.windows is not None:
            entry.windows.append(window)
        if isinstance(plugin, Policy):
            plugin.attach(window)
            self.sched_metadata[policy] = plugin.meta
        else:
            self.sched_metadata[policy] = window.meta()
        for epoch in window:
            self.policies.setdefault(epoch, []).append(policy)
        self._tables.clear()

    def _entry(self, plugin: Any, label: str, windows: list[Window] | None,
               registered: bool = False) -> _Entry:
        if not registered:
            self.pm.register(plugin, name=f"{label}@{next(self._counter)}")
            self.pm.check_pending()
        entry = _Entry(plugin, label, windows, runs_last=bool(getattr(plugin, "runs_last", False)),
                       sets_masks=getattr(plugin, "sets_masks", True) is not False)
        for hook_name in HOOK_NAMES:
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                if impl.plugin is plugin:
                    rank = -1 if impl.tryfirst else (1 if impl.trylast else 0)
                    entry.impls.setdefault(hook_name, []).append((impl.function, tuple(impl.argnames), rank))
        return entry

    def _table(self, epoch: int) -> dict[str, Any]:
        table = self._tables.get(epoch)
        if table is not None:
            return table
        active = [e for e in self._entries if e.active(epoch)]
        scheduled = [e for e in active if e.windows is not None]
        ordered = ([e for e in scheduled if not e.runs_last] + [e for e in scheduled if e.runs_last]
                   + [e for e in active if e.windows is None])
        idle = [entry.plugin.idle_hooks() if isinstance(entry.plugin, Policy) else set() for entry in ordered]
        # per hook, whether any of its calls may assign masks (distributed training then syncs them)
        sets_masks: dict[str, bool] = {}
        table: dict[str, Any] = {"pruning_active": any(isinstance(e.plugin, PruningPolicy) for e in active),
                                 "sets_masks": sets_masks}
        for hook_name in HOOK_NAMES:
            calls = [(rank, fn, argnames, entry) for entry, skip in zip(ordered, idle, strict=True)
                     if hook_name not in skip for fn, argnames, rank in entry.impls.get(hook_name, ())]
            calls.sort(key=lambda c: c[0])
            table[hook_name] = [(fn, _getter(argnames), len(argnames), entry) for _, fn, argnames, entry in calls]
            sets_masks[hook_name] = any(entry.sets_masks for *_, entry in calls)
        self._tables[epoch] = table
        return table

    # -- activation -------------------------------------------------------------------------

    def __enter__(self) -> CompressionScheduler:
        _stack.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _stack.remove(self)

    # -- firing -----------------------------------------------------------------------------

    def fire(self, event: str | Event, /, **kwargs: Any) -> Any:
        """Fire ``event`` with the loop's arguments; returns the loss for ``before_backward``.

        This runs four times per minibatch, so it does only what the event needs: the hooks of the instances
        active in this epoch (a table built once per epoch) and the mask work of the event.
        """
        spec = _EVENTS.get(event) if isinstance(event, str) else None
        if spec is None:
            raise ValueError(f"unknown event {event!r}; events are: {', '.join(_EVENTS)}")
        ev, expected = spec
        optimizer = kwargs.pop("optimizer", None)
        if optimizer is None:
            optimizer = self.optimizer
        if ev is _EPOCH_END and kwargs.get("metrics") is None:
            kwargs["metrics"] = {}
        if kwargs.keys() != expected:
            raise _argument_error(ev, kwargs)
        epoch = kwargs["epoch"]
        table = self._tables.get(epoch)
        if table is None:
            table = self._table(epoch)
        calls = table[ev]
        if calls:
            kwargs["scheduler"] = self
            kwargs["model"] = self.model
            kwargs["optimizer"] = optimizer
        sync = self.mask_sync
        if ev is _MINIBATCH_END:
            if sync is not None:
                sync.sync_point()
            self.masks.apply_after_step()
        elif ev is _EPOCH_BEGIN:
            self.epoch = epoch
        if sync is not None and table["sets_masks"][ev]:
            sync.note_change()
        if ev is _BEFORE_BACKWARD:
            return self._before_backward(calls, kwargs)
        if calls:
            self._run(ev, calls, kwargs)
        if ev is _MINIBATCH_BEGIN:
            if sync is not None:
                sync.sync_point()
            self.masks.apply_pending(table["pruning_active"])
        elif ev is _BEFORE_OPTIMIZER_STEP:
            self.masks.before_optimizer_step()
        return None

    @staticmethod
    def _run(name: str, calls: list[Any], args: dict[str, Any],
             results: list[tuple[_Entry, Any]] | None = None) -> None:
        """Call each hook with its arguments; non-None results go to ``results`` when given."""
        for fn, getter, arity, entry in calls:
            try:
                result = fn(*getter(args)) if arity > 1 else fn(getter(args)) if arity else fn()
            except Exception as exc:
                if hasattr(exc, "add_note"):
                    exc.add_note(f"hookprune: raised in hook '{name}' of {entry.label} "
                                 f"(from {distribution_of(entry.plugin)})")
                raise
            if result is not None and results is not None:
                results.append((entry, result))

    def _before_backward(self, calls: list[Any], args: dict[str, Any]) -> torch.Tensor:
        loss = args["loss"]
        if not calls:
            self.loss_components = {}
            return loss
        terms: dict[str, torch.Tensor] = {}
        total = loss
        results: list[tuple[_Entry, Any]] = []
        self._run("before_backward", calls, args, results)
        for entry, result in results:
            if isinstance(result, LossTerm):
                term_name, value = result
            elif isinstance(result, torch.Tensor):
                term_name, value = entry.label, result
            else:
                raise TypeError(f"{entry.label}: before_backward returned {type(result).__name__}; "
                                "return None, a tensor or hookprune.LossTerm(name, value)")
            unique, n = term_name, 1
            while unique in terms:
                n += 1
                unique = f"{term_name}_{n}"
            terms[unique] = value
            total = total + value
        self.loss_components = terms
        return total

    # -- Distiller's method names -----------------------------------------------------------

    def on_epoch_begin(self, epoch: int, optimizer: torch.optim.Optimizer | None = None,
                       **kwargs: Any) -> None:
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

    # -- reporting --------------------------------------------------------------------------

    def sparsity(self) -> list[LayerSparsity]:
        """Per-layer zero counts of the masked parameters, read from the weights themselves."""
        return sparsity_report(self.model, list(self.masks))

    def total_sparsity(self) -> float:
        """Fraction of zeros over all the model's weights (parameters with more than one dimension)."""
        return total_sparsity(sparsity_report(self.model))

    # -- state ------------------------------------------------------------------------------

    def _policy_plugins(self) -> list[Policy]:
        return [e.plugin for e in self._entries if isinstance(e.plugin, Policy)]

    def state_dict(self) -> dict[str, Any]:
        """Everything that decides a future step: masks, every instance's and policy's progress."""
        masks = self.masks.state_dict()
        instances = {}
        for name, obj in self.instances.items():
            get_state = getattr(obj, "state_dict", None)
            if callable(get_state):
                instances[name] = get_state()
        return {
            "masks_dict": masks["masks"],
            "mask_flags": masks["flags"],
            "instances": instances,
            "policies": [p.state_dict() for p in self._policy_plugins()],
            "epoch": self.epoch,
            "thinning_recipes": list(getattr(self.model, "thinning_recipes", None) or []),
        }

    def load_state_dict(self, state: Mapping[str, Any], normalize_dataparallel_keys: bool = False) -> None:
        """Restore :meth:`state_dict`'s output, or a Distiller checkpoint's ``{'masks_dict': ...}``.

        Mask names match with or without ``module.``, so ``normalize_dataparallel_keys`` is implied.
        Saved thinning recipes reshape the model first (those it has not been through yet), so call
        this before ``model.load_state_dict`` and the optimizer's ``load_state_dict``.
        """
        if "masks_dict" not in state:
            raise ScheduleError("the scheduler state has no 'masks_dict': not a compression-scheduler "
                                "state")
        recipes = state.get("thinning_recipes")
        if recipes:
            from hookprune.thinning import ThinningError, apply_recipes

            try:
                apply_recipes(self.model, recipes)
            except ThinningError as exc:
                raise ScheduleError(f"the saved thinning recipes do not fit the model: {exc}") from None
        try:
            self.masks.load_masks(state["masks_dict"])
        except KeyError as exc:
            raise ScheduleError(f"the saved masks do not fit the model: {exc.args[0]}") from None
        self.masks.load_flags(state.get("mask_flags", {}))
        for name, inst_state in state.get("instances", {}).items():
            obj = self.instances.get(name)
            if obj is not None and callable(getattr(obj, "load_state_dict", None)):
                obj.load_state_dict(inst_state)
        policies = self._policy_plugins()
        saved = state.get("policies", [])
        if saved and len(saved) != len(policies):
            raise ScheduleError(f"the saved state has {len(saved)} policies, this schedule {len(policies)}")
        for policy, policy_state in zip(policies, saved, strict=False):
            policy.load_state_dict(policy_state)
        self.epoch = state.get("epoch")
        self.masks.mark_all_pending()
        if self.mask_sync is not None:
            self.mask_sync.note_change()


def _getter(argnames: tuple[str, ...]) -> Callable[[dict[str, Any]], Any] | None:
    """What picks a hook's arguments out of the event's: a tuple of them for two or more, the one itself for
    one, nothing for none (``CompressionScheduler._run`` calls the hook by arity)."""
    return itemgetter(*argnames) if argnames else None


def _argument_error(ev: Event, kwargs: dict[str, Any]) -> TypeError:
    """The error for a ``fire`` call whose keyword arguments are not the event's."""
    needed = EVENT_ARGS[ev]
    missing = [a for a in needed if a not in kwargs]
    extra = [a for a in kwargs if a not in needed]
    return TypeError(f"fire('{ev.value}') needs {', '.join(needed)} (and optionally optimizer)"
                     + (f"; missing {', '.join(missing)}" if missing else "")
                     + (f"; unexpected {', '.join(extra)}" if extra else ""))


_stack: list[CompressionScheduler] = []
_loaded: list[CompressionScheduler | None] = [None]


def set_active(scheduler: CompressionScheduler | None) -> None:
    """Make ``scheduler`` the one :func:`fire` dispatches to (``load`` does this)."""
    _loaded[0] = scheduler


def active() -> CompressionScheduler:
    """The active scheduler: the innermost ``with sched:``, else the last one ``load`` returned."""
    if _stack:
        return _stack[-1]
    if _loaded[0] is None:
        raise RuntimeError("no active compression scheduler: call hookprune.load(schedule, model, "
                           "optimizer) first, or use 'with scheduler:'")
    return _loaded[0]


def fire(event: str | Event, /, **kwargs: Any) -> Any:
    """Fire ``event`` on the active scheduler; see :meth:`CompressionScheduler.fire`."""
    return active().fire(event, **kwargs)
