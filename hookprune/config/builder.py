"""Turning a Distiller-format schedule into a :class:`CompressionScheduler`.

Order of work, as in Distiller: pruners, regularizers, quantizers, extensions (and distillers) are built,
then the policies, then the LR schedulers (quantizers may change the optimizer first). Every
problem is reported as one :class:`ScheduleError` pointing at the culprit's line.
"""

from __future__ import annotations

import inspect
import os
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any, TypeVar

import torch

from hookprune._engine import registry as plugins
from hookprune._engine.params import ParamIndex, normalize_name
from hookprune._engine.scheduler import set_active
from hookprune._engine.windows import STEP_KEYS, StepWindow, Window
from hookprune.compat.distiller import PROTOCOL_METHODS, CompressionScheduler, adapt, schedule_instance
from hookprune.config import argtypes, lr_arguments
from hookprune.config.reader import key_where_of, read_schedule, where_of
from hookprune.contract import class_setting
from hookprune.errors import ArgumentError, ScheduleError, ScheduleErrors, Where, suggest, yaml_kind
from hookprune.lr_stepper import metric_read
from hookprune.pruning.masking import MASKING_ARGS

T = TypeVar("T")

#: section name -> the policy key that refers to its instances
SECTIONS = {
    "pruners": "pruner",
    "regularizers": "regularizer",
    "quantizers": "quantizer",
    "lr_schedulers": "lr_scheduler",
    "extensions": "extension",
    "distillers": "distiller",
}
POLICY_KINDS = {kind: section for section, kind in SECTIONS.items()}
TOP_LEVEL_KEYS = ("version", *SECTIONS, "policies")
EPOCH_KEYS = ("starting_epoch", "ending_epoch", "frequency", "epochs")
WINDOW_KEYS = (*EPOCH_KEYS, *STEP_KEYS)
INJECTED = ("name", "model", "optimizer", "teacher")
#: constructor arguments that name files; a relative path that is not found from the working directory
#: is looked up from the schedule's folder and then each folder above it (Distiller's schedules give
#: paths relative to the examples tree they were run from)
PATH_ARGS = ("model_activation_stats", "teacher_checkpoint")
#: a parameter-name entry starting with this is a regular expression over the model's names
REGEX_PREFIX = "re:"
#: the same, for a pruner that is meant to prune the 1-D parameters (biases, norm weights) it matches too:
#: a plain ``re:`` pattern that matches any warns, since pruning empties them like weights
REGEX_1D_PREFIX = "re+1d:"
#: how many of the 1-D parameters a pattern caught the warning names
SHOWN_1D = 6

#: the class of a ``distillers`` entry that leaves ``class`` out
DEFAULT_CLASSES = {"distillers": "KnowledgeDistillationPolicy"}

#: constructor arguments that hold parameter names: "names" for a list, "keys" for a mapping whose
#: keys are names (``'*'`` aside). A class may extend this with ``hookprune_param_args``.
PARAM_ARGS = {"weights": "names", "levels": "keys", "sensitivities": "keys", "thresholds": "keys",
              "reg_regims": "keys"}


@dataclass(frozen=True)
class LoopFacts:
    """What the training loop will hand the schedule, so that :func:`check` finds at once what would otherwise
    fail at an epoch's end: the keys of the ``metrics`` it passes to ``on_epoch_end`` after validating, and every
    how many epochs it validates (after epochs ``every - 1``, ``2 * every - 1``, ... as Lightning's
    ``check_val_every_n_epoch`` does; other epochs end without metrics)."""

    metrics: frozenset[str] = frozenset({"min", "max"})
    validation_every: int = 1


def check(schedule: str | os.PathLike[str] | Mapping[str, Any], model: torch.nn.Module,
          optimizer: torch.optim.Optimizer | None = None, *, teacher: torch.nn.Module | None = None,
          loop: LoopFacts | None = None) -> CompressionScheduler:
    """Build the schedule as :func:`build` does, but report every independent error (each instance and policy is
    checked even after another failed), as one :class:`ScheduleErrors`; with ``loop``, also what the loop will not
    provide (``ReduceLROnPlateau``'s metric, in an epoch without validation)."""
    data, path = read_schedule(schedule)
    return _Builder(data, path, model, optimizer, None, teacher, collect=True, loop=loop).build(None)


def load(schedule: str | os.PathLike[str] | Mapping[str, Any], model: torch.nn.Module,
         optimizer: torch.optim.Optimizer | None = None, *, resumed_epoch: int | None = None,
         scheduler: CompressionScheduler | None = None,
         teacher: torch.nn.Module | None = None) -> CompressionScheduler:
    """Build the scheduler a schedule describes and make it the active one for ``hookprune.fire``.

    :param schedule: a YAML file path or an already-parsed dict in Distiller's format.
    :param resumed_epoch: the last epoch a resumed run completed; LR schedulers get it as
        ``last_epoch``.
    :param scheduler: an existing scheduler to add the schedule's policies to.
    :param teacher: the teacher model of the schedule's ``distillers`` that give no ``teacher_arch``.
    """
    sched = build(schedule, model, optimizer, resumed_epoch=resumed_epoch, scheduler=scheduler, teacher=teacher)
    set_active(sched)
    return sched


def build(schedule: str | os.PathLike[str] | Mapping[str, Any], model: torch.nn.Module,
          optimizer: torch.optim.Optimizer | None = None, *, resumed_epoch: int | None = None,
          scheduler: CompressionScheduler | None = None,
          teacher: torch.nn.Module | None = None) -> CompressionScheduler:
    """Like :func:`load`, without making the scheduler active."""
    data, path = read_schedule(schedule)
    return _Builder(data, path, model, optimizer, resumed_epoch, teacher).build(scheduler)


class _Builder:
    def __init__(self, data: Mapping[str, Any], path: str | None, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer | None, resumed_epoch: int | None,
                 teacher: torch.nn.Module | None = None, *, collect: bool = False,
                 loop: LoopFacts | None = None) -> None:
        self.data = data
        self.path = path
        self.model = model
        self.optimizer = optimizer
        self.resumed_epoch = resumed_epoch
        self.teacher = teacher
        self.index = ParamIndex(model)
        self.declared: dict[str, tuple[str, Mapping[str, Any]]] = {}
        self.instances: dict[str, Any] = {}
        #: with ``collect``, the errors found so far (the builder goes on past each); else None, and the first raises
        self.errors: list[ScheduleError] | None = [] if collect else None
        self.loop = loop
        #: the instances whose declaration or construction failed: their policies are not checked further
        self.failed: set[str] = set()

    def attempt(self, step: Callable[..., T], *args: Any) -> T | None:
        """``step(*args)``; when collecting errors, a ScheduleError is kept and None returned."""
        if self.errors is None:
            return step(*args)
        try:
            return step(*args)
        except ScheduleErrors as exc:
            self.errors.extend(exc.errors)
        except ScheduleError as exc:
            self.errors.append(exc)
        return None

    def at(self, container: Any, key: Any = None) -> Where:
        return self._with_path(where_of(container, key))

    def at_key(self, container: Any, key: Any) -> Where:
        return key_where_of(container, key)

    # -- top level ----------------------------------------------------------------------------

    def build(self, scheduler: CompressionScheduler | None) -> CompressionScheduler:
        data = self.data
        for key in data:
            self.attempt(self._check_section_name, key)
        if "version" in data and data["version"] != 1:
            self.report(self.at(data, "version").error(
                f"unsupported schedule version {data['version']!r}; this format is version 1"))
        self._collect_instances()
        policies = self._parse_policies()
        sched = scheduler or CompressionScheduler(self.model, optimizer=self.optimizer)
        if sched.optimizer is None:
            sched.optimizer = self.optimizer
        for section in ("pruners", "regularizers", "quantizers", "extensions"):
            for name in self._names_in(section):
                self._construct_into(section, name)
        if self.teacher is not None and not self._names_in("distillers"):
            self.report(self._with_path(where_of(data)).error(
                "a teacher model was passed to hookprune.load, but the schedule declares no 'distillers'"))
        for name in self._names_in("distillers"):
            self._construct_into("distillers", name)
        for policy in policies:
            if policy["kind"] != "lr_scheduler" and policy["name"] not in self.failed:
                self.attempt(self._add, sched, policy)
        for name in self._names_in("lr_schedulers"):
            self._construct_into("lr_schedulers", name)
        for policy in policies:
            if policy["kind"] == "lr_scheduler" and policy["name"] not in self.failed:
                self.attempt(self._add, sched, policy)
        if self.errors:
            raise ScheduleErrors(self.errors)
        sched.instances.update(self.instances)
        return sched

    def report(self, error: ScheduleError) -> None:
        """Raise ``error``, or keep it when collecting errors."""
        if self.errors is None:
            raise error
        self.errors.append(error)

    def _check_section_name(self, key: Any) -> None:
        if key not in TOP_LEVEL_KEYS:
            body = self.data[key]
            if isinstance(body, Mapping):
                # a misspelled section's instances are not missing too: their policies are not reported
                self.failed.update(name for name in body if isinstance(name, str))
            raise self.at_key(self.data, key).error(
                f"unknown section '{key}'{suggest(key, TOP_LEVEL_KEYS)}; sections are: {', '.join(TOP_LEVEL_KEYS)}")

    def _construct_into(self, section: str, name: str) -> None:
        if name in self.failed:
            return
        instance = self.attempt(self._construct, section, name)
        if instance is None and self.errors is not None:
            self.failed.add(name)
        else:
            self.instances[name] = instance

    def _names_in(self, section: str) -> list[str]:
        return [name for name, (sec, _) in self.declared.items() if sec == section]

    def _collect_instances(self) -> None:
        for section in SECTIONS:
            body = self.data.get(section)
            if body is None:
                continue
            if not isinstance(body, Mapping):
                self.report(self.at(self.data, section).error(
                    f"'{section}' must map instance names to their settings, not {yaml_kind(body)}"))
                continue
            for name, spec in body.items():
                self.attempt(self._declare, section, body, name, spec)

    def _declare(self, section: str, body: Mapping[str, Any], name: Any, spec: Any) -> None:
        if not isinstance(name, str):
            raise self.at_key(body, name).error(f"instance name must be a string, got {name!r}")
        if name in self.declared:
            first = self.declared[name][0]
            raise self.at_key(body, name).error(f"instance '{name}' is declared twice (also under '{first}')")
        if not isinstance(spec, Mapping) or ("class" not in spec and section not in DEFAULT_CLASSES):
            # declared, so that its policies do not report it as missing, but never built
            self.declared[name] = (section, {})
            self.failed.add(name)
            if not isinstance(spec, Mapping):
                what = "of its settings" if section == "distillers" else "with a 'class' key"
                raise self.at(body, name).error(f"{section}.{name} must be a mapping {what}")
            raise self.at_key(body, name).error(f"{section}.{name} has no 'class' key")
        self.declared[name] = (section, spec)

    # -- instances ----------------------------------------------------------------------------

    def _construct(self, section: str, name: str) -> Any:
        _, spec = self.declared[name]
        class_name = spec.get("class", DEFAULT_CLASSES.get(section))
        cls = plugins.resolve_class(class_name, self.at(spec, "class") if "class" in spec else self.at_key(
            self.data[section], name))
        label = f"{section}.{name} ({class_name})"
        try:
            signature = inspect.signature(cls)
        except (TypeError, ValueError):
            signature = None
        accepted: dict[str, inspect.Parameter] = {}
        if signature is not None:
            accepted = {p.name: p for p in signature.parameters.values()
                        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        hints = argtypes.hints_of(cls)
        param_args = {**PARAM_ARGS, **getattr(cls, "hookprune_param_args", {})}
        kwargs: dict[str, Any] = {}
        for key, value in spec.items():
            if key == "class":
                continue
            if key in INJECTED:
                raise self.at_key(spec, key).error(f"{label}: '{key}' is supplied by hookprune; remove it")
            if signature is not None and key not in accepted:
                choices = [k for k in accepted if k not in INJECTED and k != "last_epoch"]
                raise self.at_key(spec, key).error(
                    f"{label} has no argument '{key}'{suggest(key, choices)}; it takes: {', '.join(choices)}")
            if key in hints and not argtypes.matches(value, hints[key]):
                raise self.at(spec, key).error(f"{label}: '{key}' must be {argtypes.describe(hints[key])}, "
                                               f"got {value!r}")
            if key in param_args:
                value = self._param_names(spec, key, value, param_args[key], label, prunes=section == "pruners")
            if key in PATH_ARGS:
                value = self._find_file(value)
            kwargs[key] = value
        extra = {"name": name, "model": self.model}
        if section == "distillers":
            extra["teacher"] = self.teacher
        if section in ("quantizers", "lr_schedulers"):
            if self.optimizer is None and "optimizer" in accepted:
                raise self.at_key(self.data[section], name).error(
                    f"{label} needs the optimizer: pass it to hookprune.load(schedule, model, optimizer)")
            extra["optimizer"] = self.optimizer
        if section == "lr_schedulers" and self.resumed_epoch is not None and "last_epoch" in accepted:
            assert self.optimizer is not None
            for group in self.optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
            extra["last_epoch"] = self.resumed_epoch
        for key, value in extra.items():
            if key in accepted and key not in kwargs:
                kwargs[key] = value
        missing = [p.name for p in accepted.values() if p.default is p.empty and p.name not in kwargs]
        if missing:
            raise self.at_key(self.data[section], name).error(
                f"{label} is missing required argument{'s' if len(missing) > 1 else ''} "
                f"{', '.join(repr(m) for m in missing)}")
        try:
            if section == "lr_schedulers":
                lr_arguments.check(cls, kwargs)
            return cls(**kwargs)
        except ArgumentError as exc:
            raise self._argument_where(spec, exc.argument, self.data[section], name).error(
                f"{label}: {exc}") from None
        except ScheduleError:
            raise
        except (ValueError, TypeError, AssertionError, KeyError) as exc:
            message = str(exc) or type(exc).__name__
            raise self.at_key(self.data[section], name).error(f"{label}: {message}") from None
        except Exception as exc:
            raise self.at_key(self.data[section], name).error(
                f"{label}: {type(exc).__name__}: {exc}") from None

    def _find_file(self, value: Any) -> Any:
        """``value`` as given when it exists or is not a relative path; otherwise the first existing
        path below the schedule's folder or one of its ancestors (unchanged when there is none)."""
        if not isinstance(value, str) or os.path.isabs(value) or os.path.exists(value) or self.path is None:
            return value
        folder = os.path.dirname(os.path.abspath(self.path))
        while True:
            candidate = os.path.normpath(os.path.join(folder, value))
            if os.path.exists(candidate):
                return candidate
            parent = os.path.dirname(folder)
            if parent == folder:
                return value
            folder = parent

    def _argument_where(self, spec: Mapping[str, Any], argument: str, section: Any, name: str) -> Where:
        """Where an ``ArgumentError`` points: the argument's value, or the entry ``argument['key']`` names."""
        key, _, rest = argument.partition("[")
        if key not in spec:
            return self.at_key(section, name)
        table = spec[key]
        entry = rest.rstrip("]").strip("'\"") if rest else None
        if entry is not None and isinstance(table, Mapping):
            for original in table:
                if original == entry or (isinstance(original, str) and self.index.resolve(original) == entry):
                    return self._with_path(key_where_of(table, original))
        return self.at(spec, key)

    def _param_names(self, spec: Mapping[str, Any], key: str, value: Any, form: str, label: str,
                     prunes: bool = False) -> Any:
        """Check each parameter name against the model and spell it as the model does.

        An entry ``re:PATTERN`` stands for every parameter whose name (with or without ``module.``)
        fully matches the regular expression, in the model's order; for a pruner (``prunes``), one that
        matches 1-D parameters warns unless written ``re+1d:PATTERN``.
        """
        if form == "names":
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
                raise self.at(spec, key).error(f"{label}: '{key}' must be a list of parameter names")
            resolved: list[str] = []
            for i, name in enumerate(items):
                where = self._with_path(where_of(items, i) if items is value else self.at(spec, key))
                for actual in self._resolve_one(name, where, label, prunes):
                    if actual not in resolved:
                        resolved.append(actual)
            return resolved
        if not isinstance(value, Mapping):
            raise self.at(spec, key).error(f"{label}: '{key}' must map parameter names (or '*') to values")
        return self._resolve_keys(value, f"{label}: '{key}'", prunes)

    def _resolve_one(self, name: str, where: Where, label: str, prunes: bool = False) -> list[str]:
        """The model's names for one schedule entry: a parameter name, ``re:PATTERN`` or ``re+1d:PATTERN``.

        A pruner's ``re:`` pattern that matches 1-D parameters (biases, norm weights) warns, naming them: pruning
        would empty them like weights, which is rarely what a pattern such as ``fc.*`` means.
        """
        prefix = next((p for p in (REGEX_PREFIX, REGEX_1D_PREFIX) if name.startswith(p)), None)
        if prefix is not None:
            pattern = name[len(prefix):]
            try:
                regex = re.compile(pattern)
                matched = [n for n in self.index.params
                           if regex.fullmatch(n) or regex.fullmatch(normalize_name(n))]
            except re.error as exc:
                raise where.error(f"{label}: bad regular expression {pattern!r}: {exc}") from None
            if not matched:
                raise where.error(f"{label}: regular expression {pattern!r} matches no parameter of the model")
            flat = [n for n in matched if self.index.params[n].dim() < 2]
            if prunes and prefix == REGEX_PREFIX and flat:
                shown = ", ".join(flat[:SHOWN_1D]) + (f" and {len(flat) - SHOWN_1D} more" if len(flat) > SHOWN_1D
                                                      else "")
                warnings.warn(where.warning(
                    f"{label}: {name!r} selects {len(flat)} 1-D parameter{'s' if len(flat) > 1 else ''} ({shown}), "
                    f"which will be pruned like weights; narrow the pattern (e.g. to names ending in '.weight' with "
                    f"more than one dimension), or write '{REGEX_1D_PREFIX}{pattern}' to prune them on purpose"),
                    stacklevel=2)
            return matched
        actual = self.index.resolve(name)
        if actual is None:
            raise where.error(f"{label}: {self.index.unknown_message(name)}")
        return [actual]

    def _resolve_keys(self, table: Mapping[str, Any], label: str, prunes: bool = False) -> dict[str, Any]:
        """Resolve a table's keys; explicit names win over ``re:`` keys, and earlier ``re:`` keys over later."""
        resolved: dict[str, Any] = {}
        from_regex: dict[str, Any] = {}
        for name, item in table.items():
            if name == "*":
                resolved[name] = item
                continue
            where = self._with_path(key_where_of(table, name))
            if not isinstance(name, str):
                raise where.error(f"{label}: {self.index.unknown_message(str(name))}")
            target = from_regex if name.startswith((REGEX_PREFIX, REGEX_1D_PREFIX)) else resolved
            for actual in self._resolve_one(name, where, label, prunes):
                target.setdefault(actual, item)
        for actual, item in from_regex.items():
            resolved.setdefault(actual, item)
        return resolved

    def _with_path(self, where: Where) -> Where:
        if where.path is None and self.path is not None:
            return Where(self.path, where.line, where.col)
        return where

    # -- policies -----------------------------------------------------------------------------

    def _parse_policies(self) -> list[dict[str, Any]]:
        policies = self.data.get("policies")
        if policies is None:
            return []
        if not isinstance(policies, list):
            self.report(self.at(self.data, "policies").error("'policies' must be a list"))
            return []
        parsed = []
        for i, pdef in enumerate(policies):
            policy = self.attempt(self._parse_policy, policies, i, pdef)
            if policy is not None:
                parsed.append(policy)
        return parsed

    def _parse_policy(self, policies: list[Any], i: int, pdef: Any) -> dict[str, Any] | None:
        """The policy ``policies[i]`` as the builder keeps it; None for one naming an instance that failed already."""
        at = self._with_path(where_of(policies, i))
        if not isinstance(pdef, Mapping):
            raise at.error(f"policy #{i + 1} must be a mapping with one of: {', '.join(POLICY_KINDS)}")
        kinds = [k for k in pdef if k in POLICY_KINDS]
        for key in pdef:
            if key not in POLICY_KINDS and key not in WINDOW_KEYS:
                raise self.at_key(pdef, key).error(
                    f"policy #{i + 1}: unknown key '{key}'{suggest(key, (*POLICY_KINDS, *WINDOW_KEYS))}")
        if len(kinds) != 1:
            what = "none" if not kinds else " and ".join(kinds)
            raise at.error(f"policy #{i + 1} must name exactly one of {', '.join(POLICY_KINDS)} "
                           f"(found {what})")
        kind = kinds[0]
        body = pdef[kind]
        if not isinstance(body, Mapping) or "instance_name" not in body:
            raise self.at(pdef, kind).error(f"policy #{i + 1}: '{kind}' needs an 'instance_name'")
        for key in body:
            if key not in ("instance_name", "args"):
                raise self.at_key(body, key).error(
                    f"policy #{i + 1}: unknown key '{key}'{suggest(key, ('instance_name', 'args'))}")
        name = body["instance_name"]
        if isinstance(name, str) and name in self.failed and name not in self.declared:
            return None
        self._check_reference(kind, name, body)
        window = self._window(pdef, i)
        raw_args = body.get("args")
        args = self._policy_args(kind, name, body, raw_args)
        return {"kind": kind, "name": name, "window": window, "args": args, "raw_args": raw_args,
                "where": self.at(body, "instance_name"), "pdef": pdef, "index": i}

    def _check_reference(self, kind: str, name: Any, body: Mapping[str, Any]) -> None:
        section = POLICY_KINDS[kind]
        at = self.at(body, "instance_name")
        if not isinstance(name, str):
            raise at.error(f"'instance_name' must name an instance of '{section}', got {yaml_kind(name)}")
        if name in self.declared and self.declared[name][0] == section:
            return
        if name in self.declared:
            raise at.error(f"'{name}' is declared under '{self.declared[name][0]}', but a '{kind}' policy needs "
                           f"an instance from '{section}'")
        known = self._names_in(section)
        hint = suggest(name, known)
        listed = f"; declared {section}: {', '.join(known)}" if known and not hint else ""
        raise at.error(f"{kind} instance '{name}' is not declared under '{section}'{hint}{listed}")

    def _window(self, pdef: Mapping[str, Any], i: int) -> Window:
        steps = [k for k in STEP_KEYS if k in pdef]
        epochs = [k for k in EPOCH_KEYS if k in pdef]
        if steps and epochs:
            raise self.at_key(pdef, steps[0]).error(
                f"policy #{i + 1}: give either epochs ({', '.join(epochs)}) or steps ({', '.join(steps)}), not both")
        keys = [k for k in WINDOW_KEYS if k in pdef]
        if "epochs" in pdef and len(keys) > 1:
            raise self.at_key(pdef, "epochs").error(
                f"policy #{i + 1}: give either 'epochs' or starting_epoch/ending_epoch/frequency, not both")
        try:
            if "epochs" in pdef:
                epochs = pdef["epochs"]
                if not isinstance(epochs, list):
                    raise ValueError(f"'epochs' must be a list of epochs, got {epochs!r}")
                return Window(epochs=epochs)
            if steps:
                return StepWindow(pdef.get("starting_step"), pdef.get("ending_step"), pdef.get("step_frequency", 1))
            return Window(starting_epoch=pdef.get("starting_epoch"), ending_epoch=pdef.get("ending_epoch"),
                          frequency=pdef.get("frequency", 1))
        except ValueError as exc:
            quoted = [(str(exc).find(f"'{k}'"), k) for k in WINDOW_KEYS if k in pdef and f"'{k}'" in str(exc)]
            culprit = min(quoted)[1] if quoted else None
            at = self.at(pdef, culprit) if culprit else self._with_path(where_of(pdef))
            raise at.error(f"policy #{i + 1}: {exc}") from None

    def _check_loop(self, policy: dict[str, Any], instance: Any, label: str) -> None:
        """Refuse an LR scheduler reading a metric the loop does not pass, or stepping in an epoch it does not
        validate."""
        assert self.loop is not None
        key = metric_read(instance)
        if key is None:
            return
        name, window, pdef = policy["name"], policy["window"], policy["pdef"]
        if window.unit != "epoch":
            return
        spec = self.declared[name][1]
        passed = ", ".join(f"'{m}'" for m in sorted(self.loop.metrics)) or "none"
        if key not in self.loop.metrics:
            where = self.at(spec, "mode") if "mode" in spec else self.at_key(self.data["lr_schedulers"], name)
            raise where.error(f"{label}: mode '{key}' reads metrics['{key}'] at the end of each epoch of its policy, "
                              f"but the loop passes {passed} (hookprune check --metrics)")
        every = self.loop.validation_every
        # whether epoch e validates repeats with period ``every``: the window's first ``every`` epochs decide
        missing = next((e for e in islice(window, every) if (e + 1) % every), None) if every > 1 else None
        if missing is not None:
            culprit = next((k for k in EPOCH_KEYS if k in pdef), None)
            where = self.at(pdef, culprit) if culprit else policy["where"]
            raise where.error(f"policy #{policy['index'] + 1}: {label} steps at the end of epoch {missing}, which the "
                              f"loop does not validate (it validates every {every} epochs, after epochs {every - 1}, "
                              f"{2 * every - 1}, ...), so metrics['{key}'] would be missing; give the policy epochs "
                              f"it validates, e.g. starting_epoch: {every - 1} and frequency: {every}")

    def _policy_args(self, kind: str, name: str, body: Mapping[str, Any], args: Any) -> dict[str, Any]:
        """A policy's ``args`` as a dict, parameter names in ``levels`` spelled as the model does; which keys the
        instance takes is checked once it is built."""
        if args is None:
            return {}
        if not isinstance(args, Mapping):
            raise self.at(body, "args").error(f"policy for '{name}': 'args' must be a mapping")
        values = dict(args)
        if isinstance(values.get("levels"), Mapping):
            values["levels"] = self._resolve_keys(args["levels"], f"policy for '{name}': 'levels'")
        return values

    def _add(self, sched: CompressionScheduler, policy: dict[str, Any]) -> None:
        kind, name, window, args, where = (policy[k] for k in ("kind", "name", "window", "args", "where"))
        instance = self.instances[name]
        label = f"{POLICY_KINDS[kind]}.{name} ({type(instance).__name__})"
        plugins_ = adapt(instance, kind)
        if not plugins_:
            raise where.error(f"{label} has no hookimpls and none of Distiller's methods for a {kind} "
                              f"({PROTOCOL_METHODS[kind]}), so nothing would call it")
        accepted: dict[str, Any] = dict.fromkeys(MASKING_ARGS, bool) if kind == "pruner" else {}
        for plugin in plugins_:
            accepted.update(class_setting(plugin, "policy_args"))
        raw = policy["raw_args"]
        for key in args:
            if key not in accepted:
                hint = suggest(key, accepted)
                takes = f"; it takes: {', '.join(accepted)}" if accepted else f"; a {kind} policy takes no args"
                raise self.at_key(raw, key).error(f"policy for '{name}': unknown arg '{key}'{hint}{takes}")
        if self.loop is not None and kind == "lr_scheduler":
            self._check_loop(policy, instance, label)
        try:
            schedule_instance(sched, instance, kind, window, args, name, label)
        except ScheduleError:
            raise
        except ArgumentError as exc:
            found = isinstance(raw, Mapping) and exc.argument.partition("[")[0] in raw
            at = self._argument_where(raw, exc.argument, None, name) if found else where
            raise at.error(f"policy for '{name}': {exc}") from None
        except (ValueError, TypeError, KeyError, FileNotFoundError) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            raise where.error(message if message.startswith(f"{label}: ") else f"{label}: {message}") from None
