"""The one exception the library raises for bad input, and its one-line ``path:line:col:`` format."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

#: A message longer than this many characters (one quoting a huge value, say) is cut there, so that the
#: line stays readable.
MAX_MESSAGE_CHARS = 1000


class ScheduleError(ValueError):
    """Bad schedule, plugin or argument; ``str(err)`` is one line: ``path:line:col: message``."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 col: int | None = None) -> None:
        message = " ".join(message.split())
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[:MAX_MESSAGE_CHARS - 3] + "..."
        self.message = message
        self.path = path
        self.line = line
        self.col = col
        super().__init__(self._format())

    def _format(self) -> str:
        where = self.path or "<schedule>"
        if self.line is not None:
            where += f":{self.line}:{self.col or 1}"
        return f"{where}: {self.message}"


class ScheduleErrors(ScheduleError):
    """Several independent errors of one schedule (what ``hookprune check`` reports): ``errors`` holds each, and
    ``str(err)`` puts each on its own line, in the order of the file. The first gives ``message`` and position."""

    def __init__(self, errors: Iterable[ScheduleError]) -> None:
        self.errors = sorted(errors, key=lambda e: (e.line is None, e.line or 0, e.col or 0))
        if not self.errors:
            raise ValueError("ScheduleErrors needs at least one error")
        first = self.errors[0]
        super().__init__(first.message, path=first.path, line=first.line, col=first.col)
        self.args = ("\n".join(str(e) for e in self.errors),)

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


class ArgumentError(ValueError):
    """A constructor argument or policy arg is wrong; ``argument`` names it, so a schedule error points at it."""

    def __init__(self, argument: str, message: str) -> None:
        self.argument = argument
        super().__init__(message)


class ScheduleWarning(UserWarning):
    """Something in a schedule is harmless but worth fixing (a key repeated with the same value)."""


@dataclass(frozen=True)
class Where:
    """A place in a schedule: the file and the 1-based line and column."""

    path: str | None = None
    line: int | None = None
    col: int | None = None

    def error(self, message: str) -> ScheduleError:
        return ScheduleError(message, path=self.path, line=self.line, col=self.col)

    def warning(self, message: str) -> ScheduleWarning:
        """A :class:`ScheduleWarning` whose text is one line, ``path:line:col: message``, as an error's."""
        return ScheduleWarning(str(self.error(message)))


def suggest(name: object, candidates: Iterable[str], n: int = 3) -> str:
    """Return `` (did you mean 'a' or 'b'?)`` for the nearest candidates, or an empty string."""
    matches = difflib.get_close_matches(str(name), list(candidates), n=n, cutoff=0.6)
    if not matches:
        return ""
    quoted = [f"'{m}'" for m in matches]
    listed = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
    return f" (did you mean {listed}?)"


def yaml_kind(value: object) -> str:
    """How a YAML reader would name ``value``'s kind: "a list", "a mapping", "a string"..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"
