"""Parameter names: schedules name them with or without DataParallel/DDP's ``module.`` at any depth."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from hookprune.errors import suggest

WRAPPER_SEGMENT = "module"


def normalize_name(name: str) -> str:
    """Drop every ``module`` segment: ``features.module.3.weight`` -> ``features.3.weight``."""
    return ".".join(part for part in name.split(".") if part != WRAPPER_SEGMENT)


class ParamIndex:
    """The model's parameters by name, resolving any ``module.``-wrapped spelling to the model's own."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.params: dict[str, torch.nn.Parameter] = dict(model.named_parameters())
        self._by_normal: dict[str, list[str]] = {}
        for name in self.params:
            self._by_normal.setdefault(normalize_name(name), []).append(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.resolve(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.params)

    def __len__(self) -> int:
        return len(self.params)

    def resolve(self, name: str) -> str | None:
        """The model's name for ``name``, or None when the model has no such parameter."""
        if name in self.params:
            return name
        found = self._by_normal.get(normalize_name(name), [])
        return found[0] if len(found) == 1 else None

    def unknown_message(self, name: str, what: str = "parameter") -> str:
        """One line saying the model lacks ``name``, with the nearest names it has."""
        hint = suggest(normalize_name(name), self._by_normal)
        if not hint:
            hint = suggest(name, self.params)
        return f"the model has no {what} '{name}'{hint}"
