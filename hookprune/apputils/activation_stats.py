"""``--act-stats``: per-layer statistics of the activations a model produces in the phases asked for (train,
valid, test), written to the run folder as YAML."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import yaml
from torch import nn

from hookprune.apputils.errors import AppError

#: ``--act-stats`` phases, as Distiller names them
PHASES = ("train", "valid", "test")


def check_phases(phases: Sequence[str]) -> None:
    """Refuse, in one line, a phase ``--act-stats`` does not know."""
    for phase in phases:
        if phase not in PHASES:
            raise AppError(f"--act-stats {phase}: unknown phase; choose from {', '.join(PHASES)}")


class _Running:
    """Running sums over every element of one module's outputs."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape
        self.count = self.zeros = 0
        self.total = self.squares = self.abs_total = 0.0
        self.min, self.max = math.inf, -math.inf

    def add(self, t: torch.Tensor) -> None:
        t = t.detach().to(torch.float64)
        self.count += t.numel()
        self.zeros += int((t == 0).sum())
        self.total += float(t.sum())
        self.squares += float((t * t).sum())
        self.abs_total += float(t.abs().sum())
        self.min = min(self.min, float(t.min()))
        self.max = max(self.max, float(t.max()))

    def value(self) -> dict[str, Any]:
        mean = self.total / self.count
        return {"shape": list(self.shape), "elements": self.count, "sparsity": self.zeros / self.count,
                "mean": mean, "std": math.sqrt(max(self.squares / self.count - mean * mean, 0.0)),
                "l1_mean": self.abs_total / self.count, "min": self.min, "max": self.max}


class ActivationStats:
    """Collects, while :meth:`phase` is active, the output statistics of every leaf module of ``model`` (shape per
    sample, element count, sparsity, mean, standard deviation, mean magnitude, min, max), one table per phase."""

    def __init__(self, model: nn.Module, phases: Sequence[str]) -> None:
        self.model = model
        self.phases = tuple(phases)
        self.tables: dict[str, dict[str, _Running]] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Record the activations of the forward passes run inside the block, when ``name`` is a collected phase."""
        if name not in self.phases:
            yield
            return
        table = self.tables.setdefault(name, {})

        def hook(module_name: str) -> Any:
            def record(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
                if isinstance(output, torch.Tensor) and output.numel():
                    running = table.get(module_name)
                    if running is None:
                        running = table[module_name] = _Running(tuple(output.shape[1:]))
                    running.add(output)
            return record

        handles = [module.register_forward_hook(hook(name))
                   for name, module in self.model.named_modules() if name and not any(True for _ in module.children())]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def save(self, folder: str | os.PathLike[str]) -> list[str]:
        """Write ``act_stats_PHASE.yaml`` in ``folder`` for each phase that saw a forward pass; the file names."""
        written = []
        for phase, table in self.tables.items():
            name = f"act_stats_{phase}.yaml"
            with open(os.path.join(folder, name), "w", encoding="utf-8") as stream:
                yaml.safe_dump({layer: running.value() for layer, running in table.items()}, stream, sort_keys=False)
            written.append(name)
        return written
