"""Sparsity reporting: what fraction of each parameter is zero, by element and by whole structure, and of the
model's weights in total."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from hookprune.sharding import ShardGroup, is_sharded, local, shard_group

#: the structures reported per layer: convolution filters and channels (4-D weights), and the rows and
#: columns of a fully connected weight (2-D)
STRUCTURES = ("filter", "channel", "row", "column")


@dataclass(frozen=True)
class LayerSparsity:
    """The zero count of one parameter tensor, and the fraction of its structures that are entirely zero.

    ``filter``/``channel`` (convolutions: output/input channels) and ``row``/``column`` (fully connected
    weights: outputs/inputs) are None where they do not apply.
    """

    name: str
    shape: tuple[int, ...]
    numel: int
    nonzeros: int
    filter: float | None = None
    channel: float | None = None
    row: float | None = None
    column: float | None = None

    @property
    def sparsity(self) -> float:
        """Fraction of elements that are zero, in [0, 1]."""
        return 1.0 - self.nonzeros / self.numel if self.numel else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Plain values for JSON: the fields, ``shape`` as a list, and ``sparsity``."""
        out = asdict(self)
        out["shape"] = list(self.shape)
        out["sparsity"] = self.sparsity
        return out


def _zero_fraction(nonzero: torch.Tensor, keep_dim: int, group: ShardGroup | None = None) -> float:
    """Fraction of the slices along ``keep_dim`` of a boolean tensor that hold no True at all (with a ``group``,
    of the whole tensor whose rows ``nonzero`` holds: slices along dim 0 are counted on each rank, others are
    alive where they are on any rank)."""
    alive = nonzero.movedim(keep_dim, 0).flatten(1).any(dim=1)
    if group is None:
        return float((~alive).sum()) / alive.numel() if alive.numel() else 0.0
    if keep_dim == 0:
        dead, total = group.all_sum(torch.tensor([int((~alive).sum()), alive.numel()])).tolist()
        return dead / total if total else 0.0
    alive = group.all_sum(alive.to(torch.int64)) > 0
    return float((~alive).sum()) / alive.numel() if alive.numel() else 0.0


def layer_sparsity(name: str, tensor: torch.Tensor) -> LayerSparsity:
    """The zero counts of ``tensor``, reported under ``name``; of the whole tensor for a DTensor sharded along dim 0
    (a parameter under FSDP2: the counts are summed over the shards, a collective)."""
    group = shard_group([tensor], name) if is_sharded(tensor) else None
    full_shape = tuple(tensor.shape)
    tensor = local(tensor).detach()
    nonzero = tensor != 0
    structures: dict[str, float] = {}
    if tensor.dim() == 4:
        structures = {"filter": _zero_fraction(nonzero, 0, group), "channel": _zero_fraction(nonzero, 1, group)}
    elif tensor.dim() == 2:
        structures = {"row": _zero_fraction(nonzero, 0, group), "column": _zero_fraction(nonzero, 1, group)}
    nonzeros = int(nonzero.sum())
    if group is not None:
        nonzeros = int(group.all_sum(torch.tensor([nonzeros]))[0])
    return LayerSparsity(name, full_shape, math.prod(full_shape), nonzeros, **structures)


def sparsity_report(model: torch.nn.Module, names: Iterable[str] | None = None, *,
                    masked: Iterable[str] = ()) -> list[LayerSparsity]:
    """One row per parameter, in the model's order: the named ones; or, when ``names`` is None, every weight
    (dim > 1) and those of ``masked`` (the names a scheduler holds masks for) with fewer dimensions, so that a
    bias or norm weight a schedule prunes shows up beside the weights."""
    params = dict(model.named_parameters())
    if names is None:
        flat = set(masked)
        chosen = [n for n in params if params[n].dim() > 1 or n in flat]
    else:
        chosen = list(names)
    return [layer_sparsity(n, params[n]) for n in chosen]


def total_sparsity(rows: Iterable[LayerSparsity]) -> float:
    """Fraction of zeros over all rows together (Distiller's "Total sparsity")."""
    rows = list(rows)
    numel = sum(r.numel for r in rows)
    return 1.0 - sum(r.nonzeros for r in rows) / numel if numel else 0.0


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def format_table(rows: Iterable[LayerSparsity]) -> str:
    """A plain-text table of the rows with a total line: the zero structures (filters, channels, rows,
    columns, in percent; ``-`` where one does not apply), then the element sparsity, last as in Distiller."""
    rows = list(rows)
    width = max([len(r.name) for r in rows] + [len("Total")])
    heads = ("Filters", "Channels", "Rows", "Columns")
    lines = [f"{'Name':<{width}}  {'Shape':<20} {'NNZ':>12} " + " ".join(f"{h:>9}" for h in heads)
             + f" {'Sparsity':>9}"]
    for r in rows:
        cells = " ".join(f"{_percent(getattr(r, s)):>9}" for s in STRUCTURES)
        lines.append(f"{r.name:<{width}}  {r.shape!s:<20} {r.nonzeros:>12} {cells} {100 * r.sparsity:>8.2f}%")
    blank = " ".join(f"{'':>9}" for _ in STRUCTURES)
    lines.append(f"{'Total':<{width}}  {'':<20} {sum(r.nonzeros for r in rows):>12} {blank} "
                 f"{100 * total_sparsity(rows):>8.2f}%")
    return "\n".join(lines)
