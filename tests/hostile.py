"""A seeded mutation fuzzer over Distiller's schedules: the mutants ``tests/test_hostile_schedules.py`` feeds
to the builder.

Each operator takes a random generator and a schedule's text and returns the bytes of a mutant. The same
seed gives the same mutants, so a failure names its seed and index and can be replayed with
:func:`mutants`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import yaml

#: policy keys that say when a policy acts
WINDOW_KEYS = ("starting_epoch", "ending_epoch", "frequency", "epochs")

Operator = Callable[[random.Random, str], bytes]


@dataclass(frozen=True)
class Mutant:
    """One mutant: its corpus schedule, the architecture to build it on, and what was done to it."""

    index: int
    schedule: str
    arch: str
    operator: str
    data: bytes

    def __str__(self) -> str:
        return f"mutant #{self.index} ({self.operator} of {self.schedule}, arch {self.arch})"


# -- mutations of the parsed schedule, written back as YAML ------------------------------------


def _slots(node: Any, skip: Callable[[Any, Any], bool]) -> list[tuple[Any, Any]]:
    """Every (container, key-or-index) below ``node`` that ``skip`` does not exclude."""
    found: list[tuple[Any, Any]] = []
    stack = [node]
    while stack:
        container = stack.pop()
        items = container.items() if isinstance(container, dict) else enumerate(container)
        for key, value in items:
            if not skip(container, key):
                found.append((container, key))
            if isinstance(value, dict | list):
                stack.append(value)
    return found


def _is_window(container: Any, key: Any) -> bool:
    return isinstance(container, dict) and key in WINDOW_KEYS


def _tree_mutation(change: Callable[[random.Random, Any, Any], None],
                   skip: Callable[[Any, Any], bool] = lambda c, k: False) -> Operator:
    def operator(rng: random.Random, text: str) -> bytes:
        data = yaml.safe_load(text)
        slots = _slots(data, skip)
        if slots:
            container, key = rng.choice(slots)
            change(rng, container, key)
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode()
    return operator


def _delete(rng: random.Random, container: Any, key: Any) -> None:
    del container[key]


WRONG_VALUES: tuple[Any, ...] = ("a string", "", [1, 2], [], {"x": 1}, {}, True, False, None, 0.5, -3, 7)


def _wrong_type(rng: random.Random, container: Any, key: Any) -> None:
    container[key] = rng.choice(WRONG_VALUES)


EXTREME_NUMBERS: tuple[Any, ...] = (-1, 0, 1, -(10**18), 10**18, 2**63 - 1, -(2**63), 1e300, -1e300, 1e-300,
                                    0.999999, 1.000001, -0.5)


def _extreme_number(rng: random.Random, container: Any, key: Any) -> None:
    container[key] = rng.choice(EXTREME_NUMBERS)


def _unknown_name(rng: random.Random, container: Any, key: Any) -> None:
    value = container[key]
    if isinstance(container, dict) and (not isinstance(value, str) or rng.random() < 0.5):
        container[f"{key}_x" if isinstance(key, str) else "no_such_key"] = container.pop(key)
    else:
        container[key] = rng.choice(("NoSuchClass", "no.such.weight", "module.fc9.weight", "re:(", "re:zzz.*",
                                     f"{value}x", "*"))


def _is_number_slot(container: Any, key: Any) -> bool:
    value = container[key]
    return isinstance(value, bool) or not isinstance(value, int | float)


# -- mutations of the text -----------------------------------------------------------------------


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True) or [""]


def _syntax_break(rng: random.Random, text: str) -> bytes:
    at = rng.randrange(len(text) + 1)
    junk = rng.choice((":", "[", "]", "{", "}", "- ", '"', "'", "\t", "&", "*", "!", "%", "@", "`", "|", ">",
                       "? ", ",", "\n  x", "\n- ", ": :", "---\n", "...\n"))
    return (text[:at] + junk + text[at:]).encode()


def _line_edit(rng: random.Random, text: str) -> bytes:
    lines = _lines(text)
    i = rng.randrange(len(lines))
    choice = rng.randrange(4)
    if choice == 0:
        del lines[i]
    elif choice == 1:
        lines.insert(i, lines[i])
    elif choice == 2:
        lines[i] = " " * rng.randint(1, 7) + lines[i]
    else:
        lines[i] = lines[i].lstrip(" ")
    return "".join(lines).encode()


_KEY_VALUE = re.compile(r"^(\s*-?\s*)([\w.\-]+):[ \t]+(\S.*)$")


def _key_value_lines(text: str) -> list[tuple[int, re.Match[str]]]:
    """The ``key: value`` lines."""
    return [(i, m) for i, line in enumerate(_lines(text)) if (m := _KEY_VALUE.match(line.rstrip("\n")))]


def _duplicate_key(rng: random.Random, text: str) -> bytes:
    lines = _lines(text)
    candidates = _key_value_lines(text)
    if candidates:
        i, m = rng.choice(candidates)
        indent = m[1].replace("-", " ")
        value = rng.choice((m[3], "0.25", "other", "[1]"))
        lines.insert(i + 1, f"{indent}{m[2]}: {value}\n")
    return "".join(lines).encode()


TAGS = ("!!timestamp", "!!int", "!!float", "!!str", "!!bool", "!!null", "!!binary", "!!set", "!!omap", "!!pairs",
        "!!seq", "!!map", "!!python/object/apply:os.system", "!!python/name:os.system", "!!python/tuple", "!custom",
        "!<tag:example.com,2000:x>")


def _tag(rng: random.Random, text: str) -> bytes:
    lines = _lines(text)
    candidates = _key_value_lines(text)
    if candidates:
        i, m = rng.choice(candidates)
        tag = rng.choice(TAGS)
        key = f"{tag} {m[2]}" if rng.random() < 0.3 else m[2]
        value = m[3] if key != m[2] else f"{tag} {m[3]}"
        lines[i] = f"{m[1]}{key}: {value}\n"
    return "".join(lines).encode()


def _replace_value(rng: random.Random, text: str, new: str) -> bytes:
    lines = _lines(text)
    candidates = _key_value_lines(text)
    if candidates:
        i, m = rng.choice(candidates)
        lines[i] = f"{m[1]}{m[2]}: {new}\n"
    return "".join(lines).encode()


def _alias_bomb(rng: random.Random, text: str) -> bytes:
    """A "billion laughs" in flow style at one value: ``levels`` anchors, each ``width`` aliases of the last."""
    width, levels = rng.randint(2, 10), rng.randint(2, 9)
    parts = [f"&l0 [{', '.join(['lol'] * width)}]"]
    for level in range(1, levels):
        parts.append(f"&l{level} [{', '.join([f'*l{level - 1}'] * width)}]")
    return _replace_value(rng, text, f"[{', '.join(parts)}]")


def _deep_nesting(rng: random.Random, text: str) -> bytes:
    depth = rng.choice((63, 65, 1000, 100_000))
    shape = rng.randrange(3)
    if shape == 0:
        value = "[" * depth + "]" * depth
    elif shape == 1:
        value = "{a: " * depth + "1" + "}" * depth
    else:
        value = "[" * depth + "1" + "]" * depth
    return _replace_value(rng, text, value)


def _garbage(rng: random.Random, text: str) -> bytes:
    data = text.encode()
    at = rng.randrange(len(data) + 1)
    junk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    return data[:at] + junk + data[at:]


def _control_character(rng: random.Random, text: str) -> bytes:
    at = rng.randrange(len(text) + 1)
    return (text[:at] + rng.choice(("\x00", "\x1b", "\x07", "\x7f", "\x0c", "\ufffe", "\x9b")) + text[at:]).encode()


def _unhashable_key(rng: random.Random, text: str) -> bytes:
    lines = _lines(text)
    candidates = _key_value_lines(text)
    if candidates:
        i, m = rng.choice(candidates)
        key = rng.choice((f"[{m[2]}]", f"{{{m[2]}: 1}}", f"? [{m[2]}]\n{m[1]}"))
        lines[i] = f"{m[1]}{key}: {m[3]}\n"
    return "".join(lines).encode()


def _odd_scalar(rng: random.Random, text: str) -> bytes:
    return _replace_value(rng, text, rng.choice((
        "2020-01-01", "2001-12-14t21:59:43.10-05:00", ".inf", "-.inf", ".nan", "1.0e+999", "9" * 30,
        "0x" + "f" * 40, "1:" * 50 + "1", "0b_", "~", "=", "<<", "yes", "off", "0o17", "1_000", "-0", "1e9")))


def _huge(rng: random.Random, text: str) -> bytes:
    """Past the size limit: the schedule followed by a comment of 10 MB."""
    return text.encode() + b"#" + b"x" * 10_000_000 + b"\n"


#: operator name -> operator; every one stays within the reader and the LR argument checks
OPERATORS: dict[str, Operator] = {
    "delete-key": _tree_mutation(_delete),
    "wrong-type": _tree_mutation(_wrong_type),
    "extreme-number": _tree_mutation(_extreme_number, skip=_is_number_slot),
    "unknown-name": _tree_mutation(_unknown_name),
    "syntax-break": _syntax_break,
    "line-edit": _line_edit,
    "duplicate-key": _duplicate_key,
    "tag": _tag,
    "alias-bomb": _alias_bomb,
    "deep-nesting": _deep_nesting,
    "garbage": _garbage,
    "control-character": _control_character,
    "unhashable-key": _unhashable_key,
    "odd-scalar": _odd_scalar,
    "huge": _huge,
}

#: mutations aimed at the policy windows: huge, negative and wrong-typed epochs
WINDOW_OPERATORS: dict[str, Operator] = {
    "extreme-window": _tree_mutation(_extreme_number, skip=lambda c, k: not _is_window(c, k)),
    "wrong-type-window": _tree_mutation(_wrong_type, skip=lambda c, k: not _is_window(c, k)),
}
OPERATORS.update(WINDOW_OPERATORS)


def mutants(seed: int, count: int, corpus: list[tuple[str, str, str]],
            operators: dict[str, Operator] = OPERATORS) -> Iterator[Mutant]:
    """``count`` mutants of ``corpus`` (schedule path, architecture, text), the same for the same seed."""
    rng = random.Random(seed)
    names = sorted(operators)
    for index in range(count):
        schedule, arch, text = corpus[rng.randrange(len(corpus))]
        name = names[index % len(names)]
        yield Mutant(index, schedule, arch, name, operators[name](rng, text))
