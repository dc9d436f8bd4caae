"""The engine's scheduler: which plugin hears which event in which epoch, and the masks it keeps.

Every plugin, built-in or third-party, is scheduled the same way: a hook plugin under a :class:`Policy`
(a window of epochs, or of global steps, and the policy's ``args``). Dispatch is a list per epoch and event,
built once per epoch (and, while an epoch holds step windows, once for each set of them active together), so a
plugin outside its window costs nothing and each call is attributed to its plugin (for
loss-term names, errors and tracing). Within an event, plugins run in policy order, ``runs_last`` ones
(LR schedulers) after the others, then auto-loaded hook plugins; ``tryfirst``/``trylast`` move an
implementation to the front or the back.
"""

from __future__ import annotations

import inspect
import itertools
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from types import MappingProxyType
from typing import Any

import torch

from hookprune._engine.masks import MaskStore
from hookprune._engine.params import ParamIndex
from hookprune._engine.registry import (
    HOOK_NAMES,
    PLUGINS_GROUP,
    autoloaded_plugins,
    distribution_of,
    has_hookimpls,
    hookimpl_names,
    make_plugin_manager,
    validate_plugin,
)
from hookprune._engine.windows import Window, WindowIndex
from hookprune.contract import LossTerm, Policy, class_setting
from hookprune.errors import ScheduleError, suggest
from hookprune.events import EVENT_ARGS, Event
from hookprune.sparsity import LayerSparsity, sparsity_report, total_sparsity

#: event name -> (the event, the keyword arguments it takes from the loop as a set); an Event hashes and
#: compares as its name, so one lookup serves both spellings
_EVENTS = {e.value: (e, frozenset(EVENT_ARGS[e])) for e in Event}
#: the events as module constants: an enum class attribute lookup costs more than the comparison
(_EPOCH_BEGIN, _MINIBATCH_BEGIN, _BEFORE_BACKWARD, _BEFORE_OPTIMIZER_STEP, _MINIBATCH_END,
 _EPOCH_END) = (Event.ON_EPOCH_BEGIN, Event.ON_MINIBATCH_BEGIN, Event.BEFORE_BACKWARD,
                Event.BEFORE_OPTIMIZER_STEP, Event.ON_MINIBATCH_END, Event.ON_EPOCH_END)
#: set to 1 to print every hook call and its result to stderr
TRACE_ENV = "HOOKPRUNE_TRACE"

#: ``before(event, label, kwargs)`` and ``after(event, label, result)`` around each hook call
TraceBefore = Callable[[str, str, Mapping[str, Any]], None]
TraceAfter = Callable[[str, str, Any], None]


@dataclass(eq=False)
class _Entry:
    """One registered plugin: its policies (None for an auto-loaded hook plugin) and its hook implementations."""

    plugin: Any
    label: str
    name: str
    policies: list[Policy] | None
    runs_last: bool = False
    #: False when the plugin declares (``sets_masks = False``) that its hooks never assign a mask
    sets_masks: bool = True
    idle_hooks: Callable[[Policy], Any] | None = None
    impls: dict[str, list[tuple[Callable[..., Any], tuple[str, ...], int]]] = field(default_factory=dict)
    windows: WindowIndex[Policy] = field(default_factory=WindowIndex)
    #: True when the plugin's policies are step windows (it then hears only minibatch events, in their steps)
    by_step: bool = False

    def policy_at(self, epoch: int) -> Policy | None:
        return self.windows.at(epoch)


#: the events a plugin scheduled by steps never hears
_EPOCH_HOOKS = frozenset({"on_epoch_begin", "on_epoch_end"})


class Scheduler:
    """Holds a model's masks and its scheduled plugins, and fires events to them."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        self.model = model
        self.optimizer = optimizer
        self.masks = MaskStore(model, ParamIndex(model))
        self.instances: dict[str, Any] = {}
        self.loss_components: dict[str, torch.Tensor] = {}
        #: within ``before_backward``, the loop's loss plus the terms of the hooks called so far
        self.loss_so_far: torch.Tensor | None = None
        self.epoch: int | None = None
        #: the zero-based index of the minibatch under way counted over the whole run, advanced by each
        #: ``on_minibatch_begin`` while a policy has a step window (-1 before the first): what step windows count.
        #: Counting costs nothing without step windows; a schedule loaded before training counts every minibatch
        self.global_step = -1
        self._pm = make_plugin_manager()
        self._entries: list[_Entry] = []
        self._by_plugin: dict[int, _Entry] = {}
        self._by_instance: dict[int, _Entry] = {}
        self._policies: list[Policy] = []
        self._tables: dict[int, dict[str, Any]] = {}
        self._table_epoch: int | None = None
        self._counter = itertools.count()
        self._tracers: list[tuple[TraceBefore | None, TraceAfter | None]] = []
        #: a :class:`hookprune.distributed.MaskSynchronizer` under distributed training, else None: told when
        #: hooks may change masks, and asked to bring every rank's masks into line before masks are applied
        self.mask_sync: Any = None
        for loaded in autoloaded_plugins():
            name = f"{PLUGINS_GROUP}:{loaded.provider.name}"
            self._register(loaded.obj, f"plugin '{loaded.provider.name}'", name, None)
        if os.environ.get(TRACE_ENV, "").strip() not in ("", "0"):
            self.trace(*_stderr_tracer())
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            from hookprune.distributed import synchronize_masks

            synchronize_masks(self)

    # -- reading ----------------------------------------------------------------------------

    @property
    def params(self) -> Mapping[str, torch.nn.Parameter]:
        """The model's parameters by the model's own names."""
        return self.masks.index.params

    @property
    def scheduled(self) -> tuple[Policy, ...]:
        """Every policy, in the order it was scheduled."""
        return tuple(self._policies)

    def policy_of(self, instance: object, epoch: int | None = None) -> Policy | None:
        """The policy under which ``instance`` (a scheduled plugin or the object it adapts) acts in ``epoch``
        (default: the epoch being fired), or None outside its epochs."""
        if epoch is None or epoch == self._table_epoch:
            table = self._tables.get(self._table_epoch) if self._table_epoch is not None else None
            if table is not None:
                found = table["policies"].get(id(instance))
                if found is not None:
                    return found
            epoch = self.epoch if epoch is None else epoch
        entry = self._by_plugin.get(id(instance)) or self._by_instance.get(id(instance))
        if entry is None or epoch is None:
            return None
        if entry.by_step:
            return entry.windows.at(self.global_step)
        return entry.policy_at(epoch)

    def epoch_span(self) -> tuple[int, int] | None:
        """The first and the last epoch any epoch-window policy covers, or None without one (read from the
        windows)."""
        return self._span("epoch")

    def step_span(self) -> tuple[int, int] | None:
        """The first and the last global step any step-window policy covers, or None without one."""
        return self._span("step")

    def _span(self, unit: str) -> tuple[int, int] | None:
        windows = [p.window for p in self._policies if p.window.unit == unit]
        if not windows:
            return None
        return min(w.first for w in windows), max(w.last for w in windows)

    def implements(self, hook_name: str) -> bool:
        """True when a plugin scheduled under a policy implements ``hook_name`` (auto-loaded ones aside)."""
        return any(entry.policies is not None and hook_name in entry.impls for entry in self._entries)

    def plugins(self) -> dict[str, Any]:
        """Every registered plugin by its registration name (auto-loaded ones as ``hookprune:NAME``)."""
        return {entry.name: entry.plugin for entry in self._entries}

    # -- building ---------------------------------------------------------------------------

    def add_policy(self, plugin: Any, epochs: list[int] | None = None, starting_epoch: int | None = None,
                   ending_epoch: int | None = None, frequency: int | None = None, *, name: str | None = None,
                   kind: str = "plugin", args: Mapping[str, Any] | None = None, starting_step: int | None = None,
                   ending_step: int | None = None, step_frequency: int | None = None) -> Policy:
        """Schedule the hook plugin ``plugin`` for ``epochs``, ``range(starting_epoch, ending_epoch, frequency)``, or
        the global steps ``range(starting_step, ending_step, step_frequency)``."""
        window = Window.of(epochs, starting_epoch, ending_epoch, frequency, starting_step=starting_step,
                           ending_step=ending_step, step_frequency=step_frequency)
        return self.schedule(plugin, window, kind=kind, name=name, args=args)

    def schedule(self, plugin: Any, window: Window, *, kind: str = "plugin", name: str | None = None,
                 args: Mapping[str, Any] | None = None, instance: Any = None, label: str | None = None) -> Policy:
        """Schedule the hook plugin ``plugin`` under a new policy; returns the policy.

        ``instance`` is the object the policy names when ``plugin`` adapts it (its state is then the
        instance's); ``name`` its instance name, ``label`` what errors and traces call it. Raises ValueError
        (an ``ArgumentError`` for a bad ``args`` key) before anything changes when the plugin refuses the
        policy.
        """
        instance = plugin if instance is None else instance
        name = name or f"{type(instance).__name__}#{next(self._counter)}"
        label = label or name
        if not has_hookimpls(plugin):
            raise TypeError(f"{label}: {type(plugin).__name__} implements no hook, so no event would reach it")
        if self.masks.sharded:
            reason = class_setting(plugin, "refuses_sharding") or class_setting(instance, "refuses_sharding")
            if reason:
                raise ValueError(f"{label}: cannot act on a model whose parameters FSDP2 shards (fully_shard): "
                                 f"{reason}")
        args = MappingProxyType(dict(args or {}))
        self._check_args(plugin, args, label)
        policy = Policy(kind, name, instance, window, args, len(self._policies))
        entry = self._by_plugin.get(id(plugin))
        by_step = window.unit == "step"
        if by_step and not any(hook not in _EPOCH_HOOKS for hook in hookimpl_names(plugin)):
            raise ValueError(f"{label}: {type(plugin).__name__} implements only epoch hooks, which a step window "
                             "never calls; give it starting_epoch/ending_epoch")
        if entry is not None:
            if entry.policies is None:
                raise ValueError(f"{label}: {entry.label} is an auto-loaded hook plugin, heard in every epoch")
            if entry.policies and entry.by_step != by_step:
                raise ValueError(f"{label}: its policy #{policy.index + 1} counts {window.unit}s and an earlier one "
                                 f"counts {'steps' if entry.by_step else 'epochs'}; give the policies of one "
                                 "instance windows of one kind")
            conflict = entry.windows.conflict(window)
            if conflict is not None:
                epoch, other = conflict
                raise ValueError(f"{label}: its policies #{other.index + 1} and #{policy.index + 1} both cover "
                                 f"{window.unit} {epoch}; give the policies of one instance disjoint "
                                 f"{window.unit}s")
        check = getattr(plugin, "check_policy", None)
        if callable(check):
            check(policy)
        if entry is None:
            entry = self._register(plugin, label, name, [])
            if instance is not plugin:
                self._by_instance[id(instance)] = entry
            attach = getattr(plugin, "attach", None)
            if callable(attach):
                attach(self)
        assert entry.policies is not None
        entry.by_step = by_step
        entry.policies.append(policy)
        entry.windows.add(window, policy)
        self._policies.append(policy)
        self._tables.clear()
        return policy

    @staticmethod
    def _check_args(plugin: Any, args: Mapping[str, Any], label: str) -> None:
        from hookprune.errors import ArgumentError

        accepted = class_setting(plugin, "policy_args")
        for key in args:
            if key not in accepted:
                takes = f"; it takes: {', '.join(accepted)}" if accepted else "; it takes none"
                raise ArgumentError(key, f"{label}: unknown policy arg '{key}'{suggest(key, accepted)}{takes}")

    def _register(self, plugin: Any, label: str, name: str, policies: list[Policy] | None) -> _Entry:
        validate_plugin(plugin, label)
        unique = f"{name}@{next(self._counter)}" if self._pm.has_plugin(name) else name
        self._pm.register(plugin, name=unique)
        idle = getattr(plugin, "idle_hooks", None)
        entry = _Entry(plugin, label, unique, policies, runs_last=bool(class_setting(plugin, "runs_last")),
                       sets_masks=class_setting(plugin, "sets_masks") is not False,
                       idle_hooks=idle if callable(idle) else None)
        for attr in hookimpl_names(plugin):
            opts = self._pm.parse_hookimpl_opts(plugin, attr) or {}
            function = getattr(plugin, attr)
            rank = -1 if opts.get("tryfirst") else (1 if opts.get("trylast") else 0)
            argnames = tuple(inspect.signature(function).parameters)
            entry.impls.setdefault(opts.get("specname") or attr, []).append((function, argnames, rank))
        self._entries.append(entry)
        self._by_plugin[id(plugin)] = entry
        self._tables.clear()
        return entry

    def disable_plugin(self, name: str) -> None:
        """Stop calling the auto-loaded hook plugin with entry point name ``name`` (as pytest's ``-p no:NAME``);
        ``HOOKPRUNE_DISABLE_PLUGINS=name,...`` does this for every scheduler."""
        full = f"{PLUGINS_GROUP}:{name}"
        entry = next((e for e in self._entries if e.name == full), None)
        if entry is None:
            loaded = [e.name.partition(":")[2] for e in self._entries if e.policies is None]
            raise ValueError(f"no auto-loaded hook plugin '{name}'{suggest(name, loaded)}; loaded: "
                             f"{', '.join(loaded) or 'none'}")
        self._pm.unregister(entry.plugin)
        self._pm.set_blocked(full)
        self._entries.remove(entry)
        del self._by_plugin[id(entry.plugin)]
        self._tables.clear()

    def _table(self, epoch: int) -> dict[str, Any]:
        """The dispatch table of ``epoch``: the plugins of its epoch windows and the auto-loaded ones. When step
        windows exist, ``stepped`` holds what :meth:`_step_table` completes it with at each step."""
        active: list[tuple[_Entry, Policy | None]] = []
        # each step-window plugin, with its policy when it has only one
        stepped: list[tuple[_Entry, Policy | None]] = []
        for entry in self._entries:
            if entry.by_step:
                assert entry.policies is not None
                stepped.append((entry, entry.policies[0] if len(entry.policies) == 1 else None))
                continue
            policy = entry.policy_at(epoch) if entry.policies is not None else None
            if policy is not None or entry.policies is None:
                active.append((entry, policy))
        table = self._dispatch(active)
        table["stepped"] = (epoch, stepped, {}) if stepped else None
        self._tables[epoch] = table
        return table

    def _step_table(self, table: dict[str, Any]) -> dict[str, Any]:
        """The dispatch table of the step under way in the epoch of ``table``: its epoch windows' plugins plus
        those of the step windows covering ``global_step``, in registration order (built once per set of them)."""
        epoch, stepped, by_active = table["stepped"]
        step = self.global_step
        # an instance's one step window answers membership directly (a range); several are looked up in its index
        policies = [(only if step in only.window.epochs else None) if only is not None else entry.windows.at(step)
                    for entry, only in stepped]
        key = tuple(policy.index for policy in policies if policy is not None)
        found = by_active.get(key)
        if found is None:
            at_step = {id(entry): policy for (entry, _), policy in zip(stepped, policies, strict=True)}
            active: list[tuple[_Entry, Policy | None]] = []
            for entry in self._entries:
                policy = at_step.get(id(entry)) if entry.by_step else (
                    entry.policy_at(epoch) if entry.policies is not None else None)
                if policy is not None or entry.policies is None:
                    active.append((entry, policy))
            found = self._dispatch(active)
            found["stepped"] = table["stepped"]
            by_active[key] = found
        self._tables[epoch] = found
        return found

    def _dispatch(self, active: list[tuple[_Entry, Policy | None]]) -> dict[str, Any]:
        """The calls of each hook, in order, for the plugins ``active`` (with their policies; None for auto-loaded
        ones), which of them may assign masks, and the policy of each plugin."""
        scheduled = [a for a in active if a[1] is not None]
        ordered = ([a for a in scheduled if not a[0].runs_last] + [a for a in scheduled if a[0].runs_last]
                   + [a for a in active if a[1] is None])
        idle = [set(entry.idle_hooks(policy)) if entry.idle_hooks is not None and policy is not None else set()
                for entry, policy in ordered]
        for skip, (entry, _) in zip(idle, ordered, strict=True):
            if entry.by_step:
                skip.update(_EPOCH_HOOKS)
        # per hook, whether any of its calls may assign masks (distributed training then syncs them)
        sets_masks: dict[str, bool] = {}
        # each active plugin's policy in this epoch, by the plugin's id and by its instance's
        policies: dict[int, Policy] = {}
        for entry, policy in scheduled:
            assert policy is not None
            policies[id(entry.plugin)] = policy
            policies.setdefault(id(policy.instance), policy)
        table: dict[str, Any] = {"sets_masks": sets_masks, "policies": policies}
        for hook_name in HOOK_NAMES:
            calls = [(rank, fn, argnames, entry) for (entry, _), skip in zip(ordered, idle, strict=True)
                     if hook_name not in skip for fn, argnames, rank in entry.impls.get(hook_name, ())]
            calls.sort(key=lambda c: c[0])
            table[hook_name] = [(fn, _getter(argnames), len(argnames), entry, argnames)
                                for _, fn, argnames, entry in calls]
            sets_masks[hook_name] = any(entry.sets_masks for *_, entry in calls)
        return table

    # -- activation -------------------------------------------------------------------------

    def __enter__(self) -> Scheduler:
        _stack.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _stack.remove(self)

    # -- tracing ----------------------------------------------------------------------------

    def trace(self, before: TraceBefore | None = None, after: TraceAfter | None = None) -> Callable[[], None]:
        """Call ``before(event, label, kwargs)`` and ``after(event, label, result)`` around every hook call (as
        pluggy's ``add_hookcall_monitoring``); returns a function that stops it. ``HOOKPRUNE_TRACE=1`` installs a
        tracer printing to stderr on every scheduler."""
        pair = (before, after)
        self._tracers.append(pair)

        def undo() -> None:
            if pair in self._tracers:
                self._tracers.remove(pair)

        return undo

    # -- firing -----------------------------------------------------------------------------

    def fire(self, event: str | Event, /, **kwargs: Any) -> Any:
        """Fire ``event`` with the loop's arguments; returns the loss for ``before_backward``.

        This runs four times per minibatch, so it does only what the event needs: the hooks of the plugins
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
        if ev is _MINIBATCH_BEGIN and table["stepped"] is not None:
            self.global_step += 1
            table = self._step_table(table)
        self._table_epoch = epoch
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
            self.masks.apply_pending()
        elif ev is _BEFORE_OPTIMIZER_STEP:
            self.masks.before_optimizer_step()
        return None

    def _run(self, name: str, calls: list[Any], args: dict[str, Any]) -> None:
        """Call each hook with its arguments."""
        if self._tracers:
            for call in calls:
                self._call(name, call, args)
            return
        for call in calls:
            fn, getter, arity, entry, _ = call
            try:
                fn(*getter(args)) if arity > 1 else fn(getter(args)) if arity else fn()
            except Exception as exc:
                _note(exc, name, entry)
                raise

    def _call(self, name: str, call: tuple[Any, ...], args: dict[str, Any]) -> Any:
        """One hook call, traced when tracers are installed; an exception gains a note naming the plugin."""
        fn, getter, arity, entry, argnames = call
        try:
            if not self._tracers:
                return fn(*getter(args)) if arity > 1 else fn(getter(args)) if arity else fn()
            return self._traced(name, fn, getter, arity, entry, argnames, args)
        except Exception as exc:
            _note(exc, name, entry)
            raise

    def _traced(self, name: str, fn: Callable[..., Any], getter: Any, arity: int, entry: _Entry,
                argnames: tuple[str, ...], args: dict[str, Any]) -> Any:
        given = {a: args[a] for a in argnames}
        for before, _ in self._tracers:
            if before is not None:
                before(name, entry.label, given)
        result = fn(*getter(args)) if arity > 1 else fn(getter(args)) if arity else fn()
        for _, after in self._tracers:
            if after is not None:
                after(name, entry.label, result)
        return result

    def _before_backward(self, calls: list[Any], args: dict[str, Any]) -> torch.Tensor:
        """Call the hooks in order, each term added to the loss as it comes; ``loss_so_far`` is the running total
        (Distiller-style policies hand it on)."""
        loss = args["loss"]
        self.loss_so_far = loss
        if not calls:
            self.loss_components = {}
            return loss
        terms: dict[str, torch.Tensor] = {}
        total = loss
        for call in calls:
            result = self._call("before_backward", call, args)
            if result is None:
                continue
            entry = call[3]
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
            self.loss_so_far = total
        self.loss_components = terms
        return total

    # -- reporting --------------------------------------------------------------------------

    def sparsity(self) -> list[LayerSparsity]:
        """Per-layer zero counts of the masked parameters, read from the weights themselves."""
        return sparsity_report(self.model, list(self.masks))

    def total_sparsity(self) -> float:
        """Fraction of zeros over all the model's weights (parameters with more than one dimension)."""
        return total_sparsity(sparsity_report(self.model))

    # -- state ------------------------------------------------------------------------------

    def _stateful(self) -> Iterator[tuple[str, Any]]:
        """``("instances", name)``-keyed schedule instances, then the other plugins with state, by name."""
        named = {id(obj) for obj in self.instances.values()}
        for entry in self._entries:
            obj = entry.plugin
            if entry.policies:
                obj = entry.policies[0].instance
            if id(obj) not in named and callable(getattr(obj, "state_dict", None)):
                yield entry.name, obj

    def state_dict(self) -> dict[str, Any]:
        """Everything that decides a future step: masks and mask options, every instance's and plugin's progress,
        the epoch, the global step (what step windows count) and the thinning recipes the model went through."""
        masks = self.masks.state_dict()
        instances = {name: obj.state_dict() for name, obj in self.instances.items()
                     if callable(getattr(obj, "state_dict", None))}
        return {
            "masks_dict": masks["masks"],
            "mask_flags": masks["flags"],
            "instances": instances,
            "plugins": {name: obj.state_dict() for name, obj in self._stateful()},
            "epoch": self.epoch,
            "global_step": self.global_step,
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
        saved = state.get("plugins", {})
        for name, obj in self._stateful():
            if name in saved:
                obj.load_state_dict(saved[name])
        self.epoch = state.get("epoch")
        self.global_step = int(state.get("global_step", self.global_step))
        self.masks.mark_all_pending()
        if self.mask_sync is not None:
            self.mask_sync.note_change()


def _note(exc: Exception, event: str, entry: _Entry) -> None:
    """Name the hook, the plugin and its distribution under the exception's traceback."""
    if hasattr(exc, "add_note"):
        exc.add_note(f"hookprune: raised in hook '{event}' of {entry.label} (from {distribution_of(entry.plugin)})")


def _getter(argnames: tuple[str, ...]) -> Callable[[dict[str, Any]], Any] | None:
    """What picks a hook's arguments out of the event's: a tuple of them for two or more, the one itself for
    one, nothing for none (``Scheduler._run`` calls the hook by arity)."""
    return itemgetter(*argnames) if argnames else None


def _argument_error(ev: Event, kwargs: dict[str, Any]) -> TypeError:
    """The error for a ``fire`` call whose keyword arguments are not the event's."""
    needed = EVENT_ARGS[ev]
    missing = [a for a in needed if a not in kwargs]
    extra = [a for a in kwargs if a not in needed]
    return TypeError(f"fire('{ev.value}') needs {', '.join(needed)} (and optionally optimizer)"
                     + (f"; missing {', '.join(missing)}" if missing else "")
                     + (f"; unexpected {', '.join(extra)}" if extra else ""))


def _short(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)}" if value.numel() > 1 else f"tensor({float(value.detach()):.6g})"
    if isinstance(value, Scheduler | torch.nn.Module | torch.optim.Optimizer):
        return type(value).__name__
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _stderr_tracer() -> tuple[TraceBefore, TraceAfter]:
    """The ``HOOKPRUNE_TRACE`` tracer: one line per hook call and one per non-None result, on stderr."""

    def before(event: str, label: str, kwargs: Mapping[str, Any]) -> None:
        shown = ", ".join(f"{k}={_short(v)}" for k, v in kwargs.items() if k not in ("scheduler", "model"))
        print(f"hookprune: {event} -> {label}({shown})", file=sys.stderr)

    def after(event: str, label: str, result: Any) -> None:
        if result is not None:
            print(f"hookprune: {event} <- {label}: {_short(result)}", file=sys.stderr)

    return before, after


_stack: list[Scheduler] = []
_loaded: list[Scheduler | None] = [None]


def set_active(scheduler: Scheduler | None) -> None:
    """Make ``scheduler`` the one :func:`fire` dispatches to (``load`` does this)."""
    _loaded[0] = scheduler


def active() -> Scheduler:
    """The active scheduler: the innermost ``with sched:``, else the last one ``load`` returned."""
    if _stack:
        return _stack[-1]
    if _loaded[0] is None:
        raise RuntimeError("no active compression scheduler: call hookprune.load(schedule, model, "
                           "optimizer) first, or use 'with scheduler:'")
    return _loaded[0]


def fire(event: str | Event, /, **kwargs: Any) -> Any:
    """Fire ``event`` on the active scheduler; see :meth:`Scheduler.fire`."""
    return active().fire(event, **kwargs)
