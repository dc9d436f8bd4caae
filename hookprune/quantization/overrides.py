"""Per-module quantization settings: default bit widths, and ``overrides`` as an ordered map of regular
expressions over module names in which the first match wins (Distiller's semantics)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from torch import nn

from hookprune._engine.params import normalize_name
from hookprune.pruning.base import ArgumentError
from hookprune.quantization.affine import check_bits

#: the module types whose parameters Distiller quantizes; other modules keep float parameters
WEIGHT_MODULES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Conv3d, nn.Linear, nn.Embedding)
BITS_KEYS = ("bits_activations", "bits_weights", "bits_bias")
_DEPRECATED_KEYS = ("acts", "wts", "bias")


class QBits(NamedTuple):
    """Bit widths of a module's activations, weights and bias; None leaves that tensor in floating point."""

    acts: int | None
    wts: int | None
    bias: int | None


@dataclass(frozen=True)
class Override:
    """One ``overrides`` entry: its pattern, the bit widths it sets and its other (quantizer-specific) keys."""

    pattern: str
    regex: re.Pattern[str]
    bits: dict[str, int | None]
    extra: dict[str, Any]


@dataclass
class ModuleSettings:
    """The resolved settings of one module: its bit widths and the extra override keys that apply to it."""

    name: str
    module: nn.Module
    qbits: QBits
    extra: dict[str, Any] = field(default_factory=dict)
    pattern: str | None = None


def parse_overrides(overrides: Mapping[str, Any] | None, owner: str, extra_keys: Iterable[str]) -> list[Override]:
    """Validate ``overrides`` (pattern -> settings, in order) and compile each pattern."""
    if overrides is None:
        return []
    if not isinstance(overrides, Mapping):
        raise ArgumentError("overrides", f"'overrides' must map module-name patterns to settings, got {overrides!r}")
    allowed = (*BITS_KEYS, *extra_keys)
    parsed = []
    for pattern, entry in overrides.items():
        where = f"overrides[{pattern!r}]"
        if not isinstance(pattern, str):
            raise ArgumentError(where, f"{where}: a pattern must be a string (a regular expression over module "
                                       "names)")
        if not isinstance(entry, Mapping):
            raise ArgumentError(where, f"{where} must be a mapping of settings, got {entry!r}")
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise ArgumentError(where, f"{where}: bad regular expression: {exc}") from None
        bits: dict[str, int | None] = {}
        extra: dict[str, Any] = {}
        for key, value in entry.items():
            if key in _DEPRECATED_KEYS:
                raise ArgumentError(where, f"{where}: '{key}' is Distiller's old spelling; use "
                                           f"'{BITS_KEYS[_DEPRECATED_KEYS.index(key)]}'")
            if key not in allowed:
                raise ArgumentError(where, f"{where}: {owner} takes no override '{key}'; overrides take: "
                                           f"{', '.join(allowed)}")
            if key in BITS_KEYS:
                bits[key] = check_bits(f"{where}.{key}", value)
            else:
                extra[key] = value
        parsed.append(Override(pattern, regex, bits, extra))
    return parsed


def find_override(name: str, overrides: list[Override]) -> Override | None:
    """The entry that applies to module ``name``: one keyed by the exact name, else the first whose pattern
    matches the whole name (``module.`` segments of DataParallel dropped)."""
    plain = normalize_name(name)
    for entry in overrides:
        if entry.pattern in (plain, name):
            return entry
    for entry in overrides:
        if entry.regex.fullmatch(plain) or entry.regex.fullmatch(name):
            return entry
    return None


def resolve_modules(model: nn.Module, defaults: QBits, overrides: list[Override], owner: str,
                    weight_modules: tuple[type[nn.Module], ...] = WEIGHT_MODULES) -> dict[str, ModuleSettings]:
    """Settings for every module of ``model`` by name; a module shared under several names takes the settings
    of the first name, as Distiller does."""
    resolved: dict[str, ModuleSettings] = {}
    seen: set[int] = set()
    for name, module in model.named_modules():
        if id(module) in seen:
            continue
        seen.add(id(module))
        entry = find_override(name, overrides) if name else None
        bits = entry.bits if entry else {}
        qbits = QBits(bits.get("bits_activations", defaults.acts), bits.get("bits_weights", defaults.wts),
                      bits.get("bits_bias", defaults.bias))
        if type(module) not in weight_modules:
            qbits = QBits(qbits.acts, None, None)
        extra = dict(entry.extra) if entry else {}
        if extra and qbits.acts is None and qbits.wts is None:
            raise ArgumentError(f"overrides[{entry.pattern!r}]" if entry else "overrides",
                                f"{owner}: module '{name}' is left unquantized, so its override keys "
                                f"{', '.join(extra)} would have no effect; remove them or give it bits")
        resolved[name] = ModuleSettings(name, module, qbits, extra, entry.pattern if entry else None)
    return resolved
