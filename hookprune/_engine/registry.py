"""The plugin manager and the class registry, both fed by entry points and loaded lazily, once.

- group ``hookprune.classes``: ``Name = module:Class``; the ``class:`` names a schedule may use.
  Built-ins are listed there by hookprune's own distribution, like any third party's.
- group ``hookprune``: hook plugins (loggers, tracers) registered with every scheduler. Set
  ``HOOKPRUNE_DISABLE_PLUGIN_AUTOLOAD=1`` to skip them all, or ``HOOKPRUNE_DISABLE_PLUGINS=name,...`` to skip
  some by their entry point names (as pytest's ``-p no:NAME``).

Entry points are read once per process; :func:`refresh` reads them again after an install.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import types
import warnings
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from hookprune import hookspecs
from hookprune.errors import Where, suggest

CLASSES_GROUP = "hookprune.classes"
PLUGINS_GROUP = "hookprune"
#: trainer integrations (callbacks for other frameworks' training loops): listed, never loaded
INTEGRATIONS_GROUP = "hookprune.integrations"
DISABLE_AUTOLOAD_ENV = "HOOKPRUNE_DISABLE_PLUGIN_AUTOLOAD"
DISABLE_PLUGINS_ENV = "HOOKPRUNE_DISABLE_PLUGINS"
HOOK_NAMES: tuple[str, ...] = tuple(
    name for name, fn in vars(hookspecs).items()
    if callable(fn) and hasattr(fn, f"{hookspecs.PROJECT}_spec")
)
HOOK_ARGS: dict[str, tuple[str, ...]] = {
    name: tuple(inspect.signature(getattr(hookspecs, name)).parameters) for name in HOOK_NAMES
}


class PluginLoadWarning(UserWarning):
    """An auto-loaded hook plugin failed to import and was skipped."""


@dataclass(frozen=True)
class Provider:
    """One entry point: the name it provides, its target and the distribution shipping it."""

    name: str
    value: str
    distribution: str
    version: str
    entry_point: EntryPoint

    @property
    def label(self) -> str:
        return f"{self.distribution} {self.version}"


def _providers(group: str) -> list[Provider]:
    seen: set[tuple[str, str, str]] = set()
    found = []
    for ep in entry_points(group=group):
        dist = getattr(ep, "dist", None)
        dist_name = dist.metadata["Name"] if dist is not None else "unknown distribution"
        version = dist.version if dist is not None else "?"
        key = (ep.name, ep.value, dist_name)
        if key in seen:
            continue
        seen.add(key)
        found.append(Provider(ep.name, ep.value, dist_name, version, ep))
    return found


@functools.cache
def integration_providers() -> list[Provider]:
    """The installed trainer integrations (entry point group ``hookprune.integrations``), by name."""
    return sorted(_providers(INTEGRATIONS_GROUP), key=lambda p: p.name)


@functools.cache
def class_providers() -> dict[str, tuple[Provider, ...]]:
    """Every class name installed distributions offer, with who offers it (read once; see :func:`refresh`)."""
    index: dict[str, list[Provider]] = {}
    for provider in _providers(CLASSES_GROUP):
        index.setdefault(provider.name, []).append(provider)
    return {name: tuple(found) for name, found in sorted(index.items())}


@functools.cache
def _load_class(provider: Provider) -> Any:
    return provider.entry_point.load()


def resolve_class(name: object, where: Where | None = None) -> Any:
    """Import and return the class a schedule calls ``name``; only this name's module is imported."""
    where = where or Where()
    if not isinstance(name, str) or not name:
        raise where.error(f"'class' must be a class name, not {name!r}")
    providers = class_providers().get(name)
    if not providers:
        raise where.error(
            f"unknown class '{name}'{suggest(name, class_providers())}; "
            "'hookprune plugins' lists the installed ones")
    if len(providers) > 1:
        listed = " and ".join(f"{p.label} ({p.value})" for p in providers)
        raise where.error(f"class '{name}' is provided by more than one distribution: {listed}; "
                          "uninstall one of them")
    provider = providers[0]
    try:
        obj = _load_class(provider)
    except Exception as exc:
        raise where.error(f"class '{name}' from {provider.label} failed to import: "
                          f"{type(exc).__name__}: {exc}") from exc
    if not callable(obj):
        raise where.error(f"'{name}' from {provider.label} ({provider.value}) is not a class")
    return obj


def _provides(provider: Provider, cls: type) -> bool:
    """True when ``provider``'s entry point names ``cls``, by its defining module or by a module that
    re-exports it (``pkg:Class`` for ``pkg.module.Class``); imports nothing."""
    if provider.value == f"{cls.__module__}:{cls.__qualname__}":
        return True
    ep = provider.entry_point
    target: Any = sys.modules.get(ep.module)
    for part in filter(None, (ep.attr or "").split(".")):
        target = getattr(target, part, None)
    return target is cls


def refresh() -> None:
    """Forget the entry points read so far, so that distributions installed since are seen."""
    for cached in (class_providers, integration_providers, autoloaded_plugins, _load_class):
        cached.cache_clear()


def distribution_of(obj: Any) -> str:
    """The distribution label that provides ``obj``'s class, or its module when none does."""
    cls = obj if isinstance(obj, type) else type(obj)
    for klass in cls.__mro__:
        for providers in class_providers().values():
            for provider in providers:
                if _provides(provider, klass):
                    return provider.label
        if klass is cls:
            break
    for plugin in autoloaded_plugins():
        if plugin.obj is obj:
            return plugin.provider.label
    return f"module {getattr(obj, '__module__', None) or cls.__module__}"


@dataclass(frozen=True)
class LoadedPlugin:
    """An auto-loaded hook plugin and where it came from."""

    provider: Provider
    obj: Any


def disabled_plugin_names() -> frozenset[str]:
    """The hook plugins ``HOOKPRUNE_DISABLE_PLUGINS`` names (comma-separated entry point names)."""
    return frozenset(n.strip() for n in os.environ.get(DISABLE_PLUGINS_ENV, "").split(",") if n.strip())


@functools.cache
def autoloaded_plugins() -> tuple[LoadedPlugin, ...]:
    """The hook plugins of group ``hookprune``, imported once; a broken one is reported once and skipped, a
    disabled one is not imported at all."""
    if os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip() not in ("", "0"):
        return ()
    disabled = disabled_plugin_names()
    loaded = []
    for provider in _providers(PLUGINS_GROUP):
        if provider.name in disabled:
            continue
        try:
            obj = provider.entry_point.load()
        except Exception as exc:
            warnings.warn(
                f"hookprune plugin '{provider.name}' from {provider.label} failed to import and is "
                f"skipped: {type(exc).__name__}: {exc}", PluginLoadWarning, stacklevel=2)
            continue
        loaded.append(LoadedPlugin(provider, obj))
    return tuple(loaded)


_MARKER = f"{hookspecs.PROJECT}_impl"


def _marked(obj: Any, attrs: Any) -> set[str]:
    names = set()
    for attr in attrs:
        if attr.startswith("__"):
            continue
        try:
            value = getattr(obj, attr)
        except Exception:
            continue
        if callable(value) and hasattr(value, _MARKER):
            names.add(attr)
    return names


@functools.lru_cache(maxsize=1024)
def _class_hookimpl_names(cls: type) -> frozenset[str]:
    """The attribute names of ``cls`` marked with ``@hookprune.hookimpl`` (looked up once per class)."""
    return frozenset(_marked(cls, dir(cls)))


def hookimpl_names(obj: Any) -> list[str]:
    """The attribute names of ``obj`` marked with ``@hookprune.hookimpl``, in ``dir()`` order: its class's (found
    once per class) and its own."""
    if isinstance(obj, type | types.ModuleType) or not hasattr(obj, "__dict__"):
        return sorted(_marked(obj, dir(obj)))
    return sorted(_class_hookimpl_names(type(obj)) | _marked(obj, list(vars(obj))))


def has_hookimpls(obj: Any) -> bool:
    return not isinstance(obj, type) and bool(hookimpl_names(obj))


def _definition_site(fn: Any) -> Where:
    try:
        return Where(inspect.getsourcefile(fn), inspect.getsourcelines(fn)[1], 1)
    except (OSError, TypeError):
        return Where()


def validate_plugin(obj: Any, label: str, where: Where | None = None) -> None:
    """Check every hookimpl of ``obj`` against the specification, with one-line errors.

    Catches what pluggy accepts until ``check_pending()`` or silently mishandles: unknown hook
    names, arguments the hook does not provide, and arguments with defaults (never passed). The owner's
    distribution is looked up only for an error.
    """

    class _Owner:
        def __str__(self) -> str:
            return f"{label} (from {distribution_of(obj)})"

    owner = _Owner()
    marker = f"{hookspecs.PROJECT}_impl"
    for attr in hookimpl_names(obj):
        fn = getattr(obj, attr)
        opts = getattr(fn, marker)
        hook_name = opts.get("specname") or attr
        at = where or _definition_site(fn)
        if hook_name not in HOOK_ARGS:
            raise at.error(f"{owner} implements unknown hook '{hook_name}'{suggest(hook_name, HOOK_NAMES)}; "
                           f"hooks are: {', '.join(HOOK_NAMES)}")
        if opts.get("hookwrapper") or opts.get("wrapper"):
            raise at.error(f"{owner}: hook '{hook_name}' is a wrapper; hookprune calls plain hooks only")
        params = list(inspect.signature(fn).parameters.values())
        for param in params:
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise at.error(f"{owner}: hook '{hook_name}' takes *{param.name}; name the arguments "
                               f"it needs from: {', '.join(HOOK_ARGS[hook_name])}")
            if param.name not in HOOK_ARGS[hook_name]:
                raise at.error(
                    f"{owner}: hook '{hook_name}' asks for argument '{param.name}', which it is not given"
                    f"{suggest(param.name, HOOK_ARGS[hook_name])}; it gets: {', '.join(HOOK_ARGS[hook_name])}")
            if param.default is not param.empty:
                raise at.error(f"{owner}: argument '{param.name}' of hook '{hook_name}' has a default; "
                               "pluggy never passes such arguments, so remove the default")


def make_plugin_manager() -> pluggy.PluginManager:
    """A plugin manager holding the hook specification."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm
