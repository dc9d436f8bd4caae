"""Checking schedule values against a constructor's type annotations."""

from __future__ import annotations

import collections.abc as cabc
import types
import typing
from typing import Any


def describe(hint: Any) -> str:
    """A short readable name for a type annotation."""
    origin = typing.get_origin(hint)
    if hint is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(hint))
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in typing.get_args(hint))
    if origin in (list, tuple, cabc.Sequence, set, frozenset):
        args = typing.get_args(hint)
        return f"a list of {_plural(args[0])}" if args else "a list"
    if origin in (dict, cabc.Mapping):
        args = typing.get_args(hint)
        return f"a mapping of {_plural(args[0])} to {_plural(args[1])}" if args else "a mapping"
    names = {float: "a number", int: "an integer", bool: "true or false", str: "a string"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _plural(hint: Any) -> str:
    names = {float: "numbers", int: "integers", bool: "booleans", str: "strings"}
    return names.get(hint, describe(hint))


def matches(value: Any, hint: Any) -> bool:
    """True when a YAML value fits ``hint``; annotations this does not understand always fit."""
    if hint is Any or hint is typing.Any:
        return True
    if hint is type(None) or hint is None:
        return value is None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (bool, str):
        return isinstance(value, hint)
    if origin in (list, cabc.Sequence, set, frozenset) or hint in (list, cabc.Sequence):
        if not isinstance(value, list):
            return False
        return not args or all(matches(v, args[0]) for v in value)
    if origin is tuple or hint is tuple:
        if not isinstance(value, list):
            return False
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            return not args or all(matches(v, args[0]) for v in value)
        return len(args) == len(value) and all(matches(v, a) for v, a in zip(value, args, strict=True))
    if origin in (dict, cabc.Mapping) or hint in (dict, cabc.Mapping):
        if not isinstance(value, dict):
            return False
        if not args:
            return True
        return all(matches(k, args[0]) and matches(v, args[1]) for k, v in value.items())
    return True


def hints_of(cls: Any) -> dict[str, Any]:
    """The resolved annotations of ``cls``'s constructor, or {} when they cannot be resolved."""
    target = cls.__init__ if isinstance(cls, type) else cls
    try:
        return typing.get_type_hints(target)
    except Exception:
        return {}
