"""Sparsity reporting: what fraction of each parameter is zero, and of the model's weights in total."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LayerSparsity:
    """The zero count of one parameter tensor."""

    name: str
    shape: tuple[int, ...]
    numel: int
    nonzeros: int

    @property
    def sparsity(self) -> float:
        """Fraction of elements that are zero, in [0, 1]."""
        return 1.0 - self.nonzeros / self.numel if self.numel else 0.0


def layer_sparsity(name: str, tensor: torch.Tensor) -> LayerSparsity:
    return LayerSparsity(name, tuple(tensor.shape), tensor.numel(), int(torch.count_nonzero(tensor.detach())))


def sparsity_report(model: torch.nn.Module, names: Iterable[str] | None = None) -> list[LayerSparsity]:
    """One row per parameter: the named ones, or every weight (dim > 1) when ``names`` is None."""
    params = dict(model.named_parameters())
    chosen = [n for n in params if params[n].dim() > 1] if names is None else list(names)
    return [layer_sparsity(n, params[n]) for n in chosen]


def total_sparsity(rows: Iterable[LayerSparsity]) -> float:
    """Fraction of zeros over all rows together (Distiller's "Total sparsity")."""
    rows = list(rows)
    numel = sum(r.numel for r in rows)
    return 1.0 - sum(r.nonzeros for r in rows) / numel if numel else 0.0


def format_table(rows: Iterable[LayerSparsity]) -> str:
    """A plain-text table of the rows with a total line."""
    rows = list(rows)
    width = max([len(r.name) for r in rows] + [len("Total")])
    lines = [f"{'Name':<{width}}  {'Shape':<20} {'NNZ':>12} {'Sparsity':>9}"]
    for r in rows:
        lines.append(f"{r.name:<{width}}  {r.shape!s:<20} {r.nonzeros:>12} {100 * r.sparsity:>8.2f}%")
    lines.append(f"{'Total':<{width}}  {'':<20} {sum(r.nonzeros for r in rows):>12} "
                 f"{100 * total_sparsity(rows):>8.2f}%")
    return "\n".join(lines)
