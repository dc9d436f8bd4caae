"""Structures of a weight tensor (filters, channels, rows, columns, blocks) and exact ranking over them.

A structured pruner scores every structure, prunes exactly ``count_to_prune(...)`` of the lowest
scores (ties: lowest index first) and expands the per-structure keep-map to a boolean mask of the
parameter's shape. The group-type names and the counting rule are Distiller's.

Geometry, for a weight of shape ``(out, in, *kernel)``:

- ``Filters`` (also ``3D``): the slices along dim 0 (a conv filter, a row of a Linear weight).
- ``Channels``: the slices along dim 1 (a conv input channel, a column of a Linear weight).
- ``Rows`` / ``Cols``: dim 0 / dim 1 of a 2-D weight.
- ``2D``: the kernels of a 4-D weight (one per filter and input channel).
- ``4D``: the whole tensor, one structure.
- ``Blocks``: ``block_shape = [block_repetitions, depth, height, width]`` tiles of a 4-D weight
  (``block_repetitions`` consecutive filters by ``depth`` consecutive channels by ``height`` by
  ``width``), numbered in filter, channel, row, column order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from hookprune.errors import ArgumentError
from hookprune.selection import prune_mask_smallest

#: Canonical group-type names, by their lower-case spelling (Distiller's names and aliases).
GROUP_TYPES: dict[str, str] = {
    "filters": "Filters",
    "3d": "Filters",
    "channels": "Channels",
    "rows": "Rows",
    "cols": "Cols",
    "blocks": "Blocks",
    "2d": "2D",
    "4d": "4D",
}

#: What one structure of each canonical group type is called in messages.
STRUCTURE_NOUNS: dict[str, str] = {
    "Filters": "filters",
    "Channels": "channels",
    "Rows": "rows",
    "Cols": "columns",
    "Blocks": "blocks",
    "2D": "kernels",
    "4D": "whole tensors",
}

#: ``rounding_fn`` spellings a schedule may use (a dotted path is never imported).
ROUNDING_FUNCTIONS: dict[str, Callable[[float], int]] = {
    "floor": math.floor,
    "math.floor": math.floor,
    "ceil": math.ceil,
    "math.ceil": math.ceil,
    "round": round,
}


def _spellings(allowed: Sequence[str]) -> str:
    names = [spelling for spelling, canonical in _DISPLAY if canonical in allowed]
    return ", ".join(names)


_DISPLAY = (("Filters", "Filters"), ("3D", "Filters"), ("Channels", "Channels"), ("Rows", "Rows"),
            ("Cols", "Cols"), ("Blocks", "Blocks"), ("2D", "2D"), ("4D", "4D"))


def check_group_type(group_type: Any, allowed: Sequence[str] = tuple(STRUCTURE_NOUNS),
                     argument: str = "group_type") -> str:
    """The canonical name of ``group_type`` (matched case-insensitively); ArgumentError listing the
    accepted spellings when it is not one of ``allowed``."""
    canonical = GROUP_TYPES.get(group_type.lower()) if isinstance(group_type, str) else None
    if canonical is None or canonical not in allowed:
        raise ArgumentError(argument, f"'{argument}' must be one of {_spellings(allowed)}; got {group_type!r}")
    return canonical


def check_rounding_fn(rounding_fn: Any, argument: str = "rounding_fn") -> Callable[[float], int]:
    """The rounding function a schedule names ('floor', 'ceil', 'round', 'math.floor', 'math.ceil')."""
    if callable(rounding_fn) and rounding_fn in ROUNDING_FUNCTIONS.values():
        return rounding_fn
    if isinstance(rounding_fn, str) and rounding_fn.strip().lower() in ROUNDING_FUNCTIONS:
        return ROUNDING_FUNCTIONS[rounding_fn.strip().lower()]
    raise ArgumentError(argument, f"'{argument}' must be one of {', '.join(ROUNDING_FUNCTIONS)}; "
                        f"got {rounding_fn!r}")


def check_block_shape(block_shape: Any, argument: str = "block_shape") -> tuple[int, int, int, int]:
    """``block_shape`` as four positive integers ``(block_repetitions, depth, height, width)``."""
    if (not isinstance(block_shape, list | tuple) or len(block_shape) != 4
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in block_shape)):
        raise ArgumentError(argument, f"'{argument}' must be four positive integers "
                            f"[block_repetitions, depth, height, width], got {block_shape!r}")
    return (block_shape[0], block_shape[1], block_shape[2], block_shape[3])


def count_to_prune(num_structures: int, fraction: float, group_size: int = 1,
                   rounding_fn: Callable[[float], int] = math.floor, *, param_name: str,
                   structure: str = "structures") -> int:
    """How many of ``num_structures`` structures to prune for ``fraction``: Distiller's count.

    ``rounding_fn(fraction * n)`` rounded again to a multiple of ``group_size``; when a fraction
    below 1 rounds up to every structure, one group is kept instead (as Distiller does). A count
    that still covers every structure raises ``ValueError``: a layer with nothing left is
    disconnected. ``structure`` names the structures in that message ("filters", ...).
    """
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 <= fraction <= 1:
        raise ValueError(f"the fraction to prune of '{param_name}' must be within [0, 1], got {fraction!r}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"'group_size' must be a positive integer, got {group_size!r}")
    if num_structures < 1:
        raise ValueError(f"'{param_name}' has no {structure} to prune")
    count = rounding_fn(fraction * num_structures)
    count = int(rounding_fn(count / group_size) * group_size)
    if count == num_structures and fraction != 1:
        count = num_structures - group_size
    if count >= num_structures:
        raise ValueError(f"pruning all {num_structures} {structure} of '{param_name}' would disconnect the layer "
                         f"(fraction {fraction:g}, group_size {group_size})")
    return max(count, 0)


def check_structure_fits(param_shape: Sequence[int], group_type: str) -> None:
    """ValueError when a weight of ``param_shape`` has no structures of (canonical) ``group_type``."""
    dims = len(param_shape)
    shape = tuple(param_shape)
    if group_type in ("Filters", "Channels") and dims < 2:
        raise ValueError(f"{group_type} need a weight of 2 or more dimensions, got shape {shape}")
    if group_type in ("Rows", "Cols") and dims != 2:
        raise ValueError(f"{group_type} need a 2-D weight, got shape {shape}")
    if group_type in ("2D", "Blocks") and dims != 4:
        what = "kernels (2D)" if group_type == "2D" else "Blocks"
        raise ValueError(f"{what} need a 4-D weight, got shape {shape}")


def _as_tiles(param: torch.Tensor, group_type: str, block_shape: Sequence[int] | None) -> torch.Tensor:
    """A 2-D view ``(num_structures, elements_per_structure)`` of ``param`` (copied where needed)."""
    check_structure_fits(param.shape, group_type)
    if group_type in ("Filters", "Rows"):
        return param.reshape(param.shape[0], -1)
    if group_type in ("Channels", "Cols"):
        return param.transpose(0, 1).reshape(param.shape[1], -1)
    if group_type == "2D":
        return param.reshape(param.shape[0] * param.shape[1], -1)
    if group_type == "4D":
        return param.reshape(1, -1)
    r, d, h, w = _block_dims(param.shape, block_shape)
    f, c, kh, kw = param.shape
    tiles = param.reshape(f // r, r, c // d, d, kh // h, h, kw // w, w).permute(0, 2, 4, 6, 1, 3, 5, 7)
    return tiles.reshape(-1, r * d * h * w)


def _block_dims(shape: Sequence[int], block_shape: Sequence[int] | None) -> tuple[int, int, int, int]:
    if block_shape is None:
        raise ValueError("Blocks need a 'block_shape' [block_repetitions, depth, height, width]")
    r, d, h, w = check_block_shape(block_shape)
    if any(size % b for size, b in zip(shape, (r, d, h, w), strict=True)):
        raise ValueError(f"block_shape {[r, d, h, w]} does not tile a weight of shape {tuple(shape)} exactly")
    return r, d, h, w


def num_structures(param_shape: Sequence[int], group_type: str, block_shape: Sequence[int] | None = None) -> int:
    """How many structures of ``group_type`` a weight of ``param_shape`` has."""
    group_type = check_group_type(group_type)
    shape = tuple(param_shape)
    check_structure_fits(shape, group_type)
    if group_type in ("Filters", "Rows"):
        return shape[0]
    if group_type in ("Channels", "Cols"):
        return shape[1]
    if group_type == "2D":
        return shape[0] * shape[1]
    if group_type == "4D":
        return 1
    r, d, h, w = _block_dims(shape, block_shape)
    return (shape[0] // r) * (shape[1] // d) * (shape[2] // h) * (shape[3] // w)


def structure_scores(param: torch.Tensor, group_type: str, p: float = 1, block_shape: Sequence[int] | None = None,
                     group_size: int = 1) -> torch.Tensor:
    """One score per structure: its Lp norm divided by its number of elements (Distiller's
    length-normalised norm; ``p=1`` is the mean absolute value). ``p=math.inf`` gives the largest
    magnitude (not normalised). With ``group_size > 1``, one score per run of ``group_size``
    adjacent structures, the norm taken over all their elements."""
    group_type = check_group_type(group_type)
    if p not in (1, 2, math.inf):
        raise ValueError(f"p must be 1, 2 or math.inf, got {p!r}")
    with torch.no_grad():
        tiles = _as_tiles(param.detach(), group_type, block_shape)
        if group_size != 1:
            if tiles.shape[0] % group_size:
                raise ValueError(f"group_size {group_size} does not divide the {tiles.shape[0]} "
                                 f"{STRUCTURE_NOUNS[group_type]} of a weight of shape {tuple(param.shape)}")
            tiles = tiles.reshape(tiles.shape[0] // group_size, -1)
        if p == math.inf:
            return tiles.abs().amax(dim=1)
        return torch.linalg.vector_norm(tiles, ord=p, dim=1) / tiles.shape[1]


def expand_structure_mask(keep: torch.Tensor, param_shape: Sequence[int], group_type: str,
                          block_shape: Sequence[int] | None = None, group_size: int = 1) -> torch.Tensor:
    """A boolean mask of ``param_shape`` from a per-structure keep-map (True keeps the structure);
    with ``group_size > 1``, ``keep`` has one entry per run of ``group_size`` adjacent structures."""
    group_type = check_group_type(group_type)
    shape = tuple(param_shape)
    keep = keep.reshape(-1).to(torch.bool)
    if group_size != 1:
        keep = keep.repeat_interleave(group_size)
    expected = num_structures(shape, group_type, block_shape)
    if keep.numel() != expected:
        raise ValueError(f"a keep-map of {keep.numel()} entries does not match the {expected} "
                         f"{STRUCTURE_NOUNS[group_type]} of a weight of shape {shape}")
    if group_type in ("Filters", "Rows"):
        return keep.view(-1, *([1] * (len(shape) - 1))).expand(shape).contiguous()
    if group_type in ("Channels", "Cols"):
        return keep.view(1, -1, *([1] * (len(shape) - 2))).expand(shape).contiguous()
    if group_type == "2D":
        return keep.view(shape[0], shape[1], 1, 1).expand(shape).contiguous()
    if group_type == "4D":
        return keep.view(*([1] * len(shape))).expand(shape).contiguous()
    r, d, h, w = _block_dims(shape, block_shape)
    f, c, kh, kw = shape
    tiled = keep.view(f // r, 1, c // d, 1, kh // h, 1, kw // w, 1).expand(f // r, r, c // d, d, kh // h, h, kw // w, w)
    return tiled.reshape(shape).contiguous()


def prune_lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-map over structures pruning exactly the ``k`` lowest scores (ties: lowest index first)."""
    return ~prune_mask_smallest(scores.reshape(-1), k)
