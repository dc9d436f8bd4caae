"""Reading schedules: a safe YAML loader that rejects duplicate keys and remembers where each value is.

A schedule holds plain values only (strings, finite numbers, booleans, null, lists and mappings), and
the reader bounds what a hostile file can cost before anything else sees it: its size, its nesting
depth and its number of values with aliases expanded. Every problem is one :class:`ScheduleError`
at the line and column of the culprit.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

from hookprune.errors import ScheduleError, ScheduleWarning, Where, yaml_kind

try:  # libyaml's parser, when PyYAML was built with it: several times faster than the pure-Python one
    from yaml._yaml import CParser as _FastParser
except ImportError:
    _FastParser = None

#: A schedule file longer than this many bytes is refused before it is parsed (Distiller's largest
#: schedules are under 100 kB; 10,000 policies take about 1 MB).
MAX_SCHEDULE_BYTES = 10_000_000
#: Lists and mappings may nest this deep, counting through aliases; deeper is refused as soon as the
#: parser reaches it, before anything recurses that far (Distiller's schedules nest 8 at most, counting
#: the scalars at the bottom).
MAX_DEPTH = 64
#: A schedule may hold at most this many values (scalars, lists and mappings, keys included), an alias
#: counting as every value it stands for: an alias bomb ("billion laughs") is refused as soon as its
#: expansion passes the limit, before anything walks it. 10,000 policies hold about 110,000 values.
MAX_VALUES = 200_000
#: Integers must fit in 64 bits, as epochs, steps and sizes do in torch; larger ones are refused.
INT_RANGE = (-(2**63), 2**63 - 1)

_YAML_TAG_PREFIX = "tag:yaml.org,2002:"
#: the characters YAML breaks lines at
_LINE_BREAKS = "\n\r\x85\u2028\u2029"
#: longest text a 64-bit integer can be written in (a sign, ``0b`` and 64 binary digits), underscores aside
_MAX_INT_TEXT = 67
#: longest excerpt of a scalar quoted in an error
_EXCERPT = 40


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


def _where_in_text(text: str, position: int, path: str | None) -> Where:
    """The line and column of character ``position`` of ``text``, counted as YAML counts them (a CR LF
    pair is one line break; so are CR, NEL and the Unicode line and paragraph separators)."""
    head = text[:position]
    breaks = sum(head.count(c) for c in _LINE_BREAKS) - head.count("\r\n")
    start = max(head.rfind(c) for c in _LINE_BREAKS) + 1
    return Where(path, breaks + 1, position - start + 1)


def _shorten(text: str) -> str:
    return text if len(text) <= _EXCERPT else text[:_EXCERPT] + "..."


def _excerpt(text: str) -> str:
    return repr(_shorten(text))


def _tag_name(tag: str) -> str:
    """A tag as a schedule would write it: ``!!int``, ``!custom``, ``!<tag:example.com,2000:x>``."""
    if tag.startswith(_YAML_TAG_PREFIX):
        return "!!" + tag[len(_YAML_TAG_PREFIX):]
    return tag if tag.startswith("!") else f"!<{tag}>"


class _BoundedComposer(Composer):
    """YAML's composer, refusing explicit tags, nesting deeper than :data:`MAX_DEPTH` and documents
    of more than :data:`MAX_VALUES` values, aliases expanded, as soon as it meets them."""

    source_path: str | None = None

    def __init__(self) -> None:
        super().__init__()
        self._depth = 0
        self._deepest = 0
        self._values = 0
        #: anchor -> (values, levels) of the finished node it names, aliases inside expanded
        self._expanded: dict[str, tuple[int, int]] = {}

    def _refuse(self, mark: yaml.Mark, message: str) -> ScheduleError:
        return _where(mark, self.source_path).error(message)

    def _refuse_depth(self, mark: yaml.Mark) -> ScheduleError:
        return self._refuse(mark, f"the schedule nests more than {MAX_DEPTH} levels deep here (aliases expanded); "
                                  "a schedule is limited to that depth")

    def _refuse_size(self, mark: yaml.Mark) -> ScheduleError:
        return self._refuse(mark, f"the schedule holds more than {MAX_VALUES:,} values here (aliases expanded); "
                                  "a schedule is limited to that many")

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        """Compose the next node, counting it and its depth; Composer's, without path resolvers."""
        event = self.get_event()
        if event.__class__ is yaml.AliasEvent:
            return self._compose_alias(event)
        if event.tag is not None and event.tag != "!":
            raise self._refuse(event.start_mark, f"YAML tag '{_tag_name(event.tag)}' is not allowed: a schedule "
                                                 "holds only plain values, lists and mappings")
        anchor = event.anchor
        if anchor is not None and anchor in self.anchors:
            raise self._refuse(event.start_mark, f"invalid YAML: anchor '&{anchor}' is defined twice (first at "
                                                 f"line {self.anchors[anchor].start_mark.line + 1})")
        self._values += 1
        if self._values > MAX_VALUES:
            raise self._refuse_size(event.start_mark)
        depth = self._depth + 1
        if depth > MAX_DEPTH:
            raise self._refuse_depth(event.start_mark)
        if event.__class__ is yaml.ScalarEvent:
            self._deepest = max(self._deepest, depth)
            node: yaml.Node = yaml.ScalarNode(self.resolve(yaml.ScalarNode, event.value, event.implicit),
                                              event.value, event.start_mark, event.end_mark, style=event.style)
            if anchor is not None:
                self.anchors[anchor] = node
                self._expanded[anchor] = (1, 1)
            return node
        values_before, deepest_before = self._values, self._deepest
        self._depth = self._deepest = depth
        if event.__class__ is yaml.SequenceStartEvent:
            node = yaml.SequenceNode(self.resolve(yaml.SequenceNode, None, event.implicit), [], event.start_mark,
                                     None, flow_style=event.flow_style)
            if anchor is not None:
                self.anchors[anchor] = node
            items = node.value
            while not self.check_event(yaml.SequenceEndEvent):
                items.append(self.compose_node(node, len(items)))
        else:
            node = yaml.MappingNode(self.resolve(yaml.MappingNode, None, event.implicit), [], event.start_mark,
                                    None, flow_style=event.flow_style)
            if anchor is not None:
                self.anchors[anchor] = node
            pairs = node.value
            while not self.check_event(yaml.MappingEndEvent):
                key = self.compose_node(node, None)
                pairs.append((key, self.compose_node(node, key)))
        node.end_mark = self.get_event().end_mark
        self._depth = depth - 1
        if anchor is not None:
            self._expanded[anchor] = (self._values - values_before + 1, self._deepest - depth + 1)
        self._deepest = max(self._deepest, deepest_before)
        return node

    def _compose_alias(self, event: yaml.AliasEvent) -> yaml.Node:
        if event.anchor not in self.anchors:
            raise self._refuse(event.start_mark, f"invalid YAML: alias '*{event.anchor}' names no anchor before it")
        if event.anchor not in self._expanded:
            raise self._refuse(event.start_mark, f"alias '*{event.anchor}' stands for a list or mapping that "
                                                 "contains it; a schedule cannot be recursive")
        values, levels = self._expanded[event.anchor]
        self._values += values
        if self._values > MAX_VALUES:
            raise self._refuse_size(event.start_mark)
        if self._depth + levels > MAX_DEPTH:
            raise self._refuse_depth(event.start_mark)
        self._deepest = max(self._deepest, self._depth + levels)
        return self.anchors[event.anchor]


class _PlainConstructor(SafeConstructor):
    """Builds LocDict/LocList, finite numbers, 64-bit integers, strings, booleans and null; nothing else."""

    yaml_constructors: dict[Any, Any] = {}
    yaml_multi_constructors: dict[Any, Any] = {}
    source_path: str | None = None

    def _refuse_node(self, node: yaml.Node, message: str) -> ScheduleError:
        return _where(node.start_mark, self.source_path).error(message)

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        """YAML's merge keys (``<<: *defaults``), once per mapping, noting how many pairs came from merges:
        they lead ``node.value``, and the mapping's own keys override them."""
        if hasattr(node, "merged_pairs"):
            return
        own = sum(1 for key_node, _ in node.value if key_node.tag != _YAML_TAG_PREFIX + "merge")
        super().flatten_mapping(node)
        node.merged_pairs = len(node.value) - own


def _construct_mapping(loader: _PlainConstructor, node: yaml.MappingNode) -> LocDict:
    loader.flatten_mapping(node)
    result = LocDict()
    result.where = _where(node.start_mark, loader.source_path)
    result.key_where = {}
    result.value_where = {}
    merged: set[Any] = set()
    for index, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=True)
        at = _where(key_node.start_mark, loader.source_path)
        try:
            hash(key)
        except TypeError:
            raise at.error(f"a mapping key must be a plain value, not {yaml_kind(key)}") from None
        value = loader.construct_object(value_node, deep=True)
        if index < node.merged_pairs:  # merged: the later merge of a key wins, as YAML's merge keys say
            merged.add(key)
        elif key in merged:  # the mapping's own key overrides a merged one
            merged.discard(key)
        elif key in result:
            first = result.key_where[key]
            shown = _shorten(str(key))
            if value != result[key]:
                raise at.error(f"duplicate key '{shown}' with a different value (first given at line {first.line})")
            warnings.warn(ScheduleWarning(f"{at.path or '<schedule>'}:{at.line}:{at.col}: key '{shown}' repeats "
                                          f"line {first.line} with the same value"), stacklevel=2)
            continue
        result[key] = value
        result.key_where[key] = at
        result.value_where[key] = _where(value_node.start_mark, loader.source_path)
    return result


def _construct_sequence(loader: _PlainConstructor, node: yaml.SequenceNode) -> LocList:
    result = LocList(loader.construct_object(child, deep=True) for child in node.value)
    result.where = _where(node.start_mark, loader.source_path)
    result.item_where = [_where(child.start_mark, loader.source_path) for child in node.value]
    return result


def _construct_int(loader: _PlainConstructor, node: yaml.ScalarNode) -> int:
    text = node.value
    if len(text) > _MAX_INT_TEXT and len(text.replace("_", "")) > _MAX_INT_TEXT:
        value = None
    else:
        try:
            value = loader.construct_yaml_int(node)
        except ValueError:  # digits YAML's pattern admits but int() does not: "0x_", "0b_"
            raise loader._refuse_node(node, f"{_excerpt(text)} is not a valid integer") from None
    if value is None or not INT_RANGE[0] <= value <= INT_RANGE[1]:
        raise loader._refuse_node(node, f"the integer {_excerpt(text)} does not fit in 64 bits; a schedule's "
                                        f"integers lie within [{INT_RANGE[0]}, {INT_RANGE[1]}]")
    return value


def _construct_float(loader: _PlainConstructor, node: yaml.ScalarNode) -> float:
    try:
        value = loader.construct_yaml_float(node)
    except OverflowError:  # a sexagesimal float ("1:2:3.5") whose place values outgrow a float
        value = math.inf
    if not math.isfinite(value):
        raise loader._refuse_node(node, f"{_excerpt(node.value)} is not a finite number; a schedule's numbers "
                                        "are finite")
    return value


def _construct_timestamp(loader: _PlainConstructor, node: yaml.ScalarNode) -> Any:
    raise loader._refuse_node(node, f"{_excerpt(node.value)} reads as a date, which a schedule cannot hold; "
                                    "quote it to keep it as text")


def _construct_other(loader: _PlainConstructor, node: yaml.Node) -> Any:
    """Any tag an implicit resolver added elsewhere might give: refused like an explicit one."""
    raise loader._refuse_node(node, f"YAML tag '{_tag_name(node.tag)}' is not allowed: a schedule holds only "
                                    "plain values, lists and mappings")


for _tag, _constructor in {
    "null": SafeConstructor.construct_yaml_null,
    "bool": SafeConstructor.construct_yaml_bool,
    "int": _construct_int,
    "float": _construct_float,
    "str": SafeConstructor.construct_yaml_str,
    # a plain ``=`` or ``<<`` outside a mapping's keys is text
    "value": SafeConstructor.construct_yaml_str,
    "merge": SafeConstructor.construct_yaml_str,
    "timestamp": _construct_timestamp,
    "seq": _construct_sequence,
    "map": _construct_mapping,
}.items():
    _PlainConstructor.add_constructor(_YAML_TAG_PREFIX + _tag, _constructor)
_PlainConstructor.add_constructor(None, _construct_other)


class _PythonLoader(Reader, Scanner, Parser, _BoundedComposer, _PlainConstructor, Resolver):
    """PyYAML's pure-Python parser under the bounded composer and the plain constructor."""

    def __init__(self, text: str) -> None:
        Reader.__init__(self, text)
        Scanner.__init__(self)
        Parser.__init__(self)
        _BoundedComposer.__init__(self)
        _PlainConstructor.__init__(self)
        Resolver.__init__(self)


_ScheduleLoader: type = _PythonLoader
if _FastParser is not None:
    class _LibyamlLoader(_BoundedComposer, _FastParser, _PlainConstructor, Resolver):
        """libyaml's parser under the bounded composer and the plain constructor."""

        def __init__(self, text: str) -> None:
            _FastParser.__init__(self, text)
            _BoundedComposer.__init__(self)
            _PlainConstructor.__init__(self)
            Resolver.__init__(self)

    _ScheduleLoader = _LibyamlLoader


def _check_size(data: bytes, path: str | None) -> None:
    if len(data) > MAX_SCHEDULE_BYTES:
        text = data[:MAX_SCHEDULE_BYTES].decode("utf-8", "ignore")
        raise _where_in_text(text, len(text), path).error(
            f"the schedule is longer than {MAX_SCHEDULE_BYTES:,} bytes, the most a schedule may hold; "
            "it passes that limit here")


def loads(text: str, path: str | None = None) -> Any:
    """Parse YAML text safely; any problem is a one-line :class:`ScheduleError`."""
    if len(text) > MAX_SCHEDULE_BYTES // 4:
        _check_size(text.encode("utf-8", "surrogatepass"), path)
    bad = Reader.NON_PRINTABLE.search(text)
    if bad:
        raise _where_in_text(text, bad.start(), path).error(
            f"invalid YAML: character U+{ord(bad.group()):04X} is not allowed (YAML text holds no control "
            "characters, NUL included)")
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
        with Path(path).open("rb") as stream:
            raw = stream.read(MAX_SCHEDULE_BYTES + 1)
    except FileNotFoundError:
        raise Where(path).error("no such schedule file") from None
    except OSError as exc:
        raise Where(path).error(f"cannot read the schedule: {exc.strerror}") from None
    _check_size(raw, path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        prefix = raw[:exc.start].decode("utf-8")
        raise _where_in_text(prefix, len(prefix), path).error(
            f"not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    data = loads(text, path)
    if data is None:
        raise Where(path, 1, 1).error("the schedule is empty: expected a mapping with 'policies:'")
    if not isinstance(data, Mapping):
        at = data.where if isinstance(data, LocList) else Where(path, 1, 1)
        raise at.error(f"the schedule must be a mapping of sections, not {yaml_kind(data)}")
    return data, path
