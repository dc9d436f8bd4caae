"""Reading schedules: a safe YAML loader that rejects duplicate keys and remembers where each value is."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from hookprune.errors import ScheduleWarning, Where, yaml_kind


class LocDict(dict):
    """A mapping read from YAML that knows where it, each key and each value stand."""

    where: Where = Where()
    key_where: dict[Any, Where]
    value_where: dict[Any, Where]

    def at_key(self, key: Any) -> Where:
        marks = getattr(self, "key_where", {})
        return marks.get(key, self.where)

    def at_value(self, key: Any) -> Where:
        marks = getattr(self, "value_where", {})
        return marks.get(key, self.at_key(key))


class LocList(list):
    """A sequence read from YAML that knows where it and each item stand."""

    where: Where = Where()
    item_where: list[Where]

    def at(self, index: int) -> Where:
        marks = getattr(self, "item_where", [])
        return marks[index] if index < len(marks) else self.where


def where_of(container: Any, key: Any = None) -> Where:
    """Where ``container[key]`` (or the container itself) stands; a blank place for plain dicts."""
    if isinstance(container, LocDict):
        return container.where if key is None else container.at_value(key)
    if isinstance(container, LocList):
        return container.where if key is None else container.at(key)
    return getattr(container, "where", Where())


def key_where_of(container: Any, key: Any) -> Where:
    """Where the key ``key`` of a mapping stands."""
    if isinstance(container, LocDict):
        return container.at_key(key)
    return where_of(container)


def _where(mark: yaml.Mark | None, path: str | None) -> Where:
    if mark is None:
        return Where(path)
    return Where(path, mark.line + 1, mark.column + 1)


class _ScheduleLoader(yaml.SafeLoader):
    """SafeLoader building LocDict/LocList and refusing duplicate keys."""

    source_path: str | None = None


def _construct_mapping(loader: _ScheduleLoader, node: yaml.MappingNode) -> LocDict:
    loader.flatten_mapping(node)
    result = LocDict()
    result.where = _where(node.start_mark, loader.source_path)
    result.key_where = {}
    result.value_where = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        at = _where(key_node.start_mark, loader.source_path)
        try:
            hash(key)
        except TypeError:
            raise at.error("a mapping key must be a plain value") from None
        value = loader.construct_object(value_node, deep=True)
        if key in result:
            first = result.key_where[key]
            if value != result[key]:
                raise at.error(f"duplicate key '{key}' with a different value (first given at line {first.line})")
            warnings.warn(ScheduleWarning(f"{at.path or '<schedule>'}:{at.line}:{at.col}: key '{key}' repeats "
                                          f"line {first.line} with the same value"), stacklevel=2)
            continue
        result[key] = value
        result.key_where[key] = at
        result.value_where[key] = _where(value_node.start_mark, loader.source_path)
    return result


def _construct_sequence(loader: _ScheduleLoader, node: yaml.SequenceNode) -> LocList:
    result = LocList(loader.construct_object(child, deep=True) for child in node.value)
    result.where = _where(node.start_mark, loader.source_path)
    result.item_where = [_where(child.start_mark, loader.source_path) for child in node.value]
    return result


def _unknown_tag(loader: _ScheduleLoader, node: yaml.Node) -> Any:
    at = _where(node.start_mark, loader.source_path)
    raise at.error(f"YAML tag '{node.tag}' is not allowed: schedules are read with a safe loader")


_ScheduleLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_ScheduleLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)
_ScheduleLoader.add_constructor(None, _unknown_tag)


def loads(text: str, path: str | None = None) -> Any:
    """Parse YAML text safely; any problem is a one-line :class:`ScheduleError`."""
    loader = _ScheduleLoader(text)
    loader.source_path = path
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem:
            problem = f"{exc.context}: {exc.problem}"
        raise _where(mark, path).error(f"invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise Where(path).error(f"invalid YAML: {exc}") from None
    finally:
        loader.dispose()


def read_schedule(schedule: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[Mapping[str, Any], str | None]:
    """Return a schedule's top-level mapping and the path it came from (None for a dict)."""
    if isinstance(schedule, Mapping):
        return schedule, None
    path = os.fspath(schedule)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise Where(path).error("no such schedule file") from None
    except UnicodeDecodeError as exc:
        raise Where(path).error(f"not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise Where(path).error(f"cannot read the schedule: {exc.strerror}") from None
    data = loads(text, path)
    if data is None:
        raise Where(path, 1, 1).error("the schedule is empty: expected a mapping with 'policies:'")
    if not isinstance(data, Mapping):
        at = data.where if isinstance(data, LocList) else Where(path, 1, 1)
        raise at.error(f"the schedule must be a mapping of sections, not {yaml_kind(data)}")
    return data, path
