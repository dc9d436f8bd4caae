"""The element groups of group-lasso regularization, as Distiller defines them, with vectorised norms,
thresholding scores and keep-masks.

For a Linear weight of shape ``(out, in)``:

- ``Rows``: each row (the weights of one output feature); ``Cols``: each column (one input feature);
  ``Rows+Cols``: both, as overlapping groups.

For a convolution weight of shape ``(filters, channels, kh, kw)``:

- ``2D``: each kernel ``W[f, c]``; ``Filters`` (also ``3D``): each filter ``W[f]``;
  ``Channels``: each input channel ``W[:, c]``; ``4D``: the whole tensor;
  ``Channels+4D``: the channels and the whole tensor.

The group-lasso term of a parameter is ``strength * sum over groups of ||group||_2`` (no group-size
factor, as in Distiller). ``Channels`` norms are ``sqrt(sum of squares + 1e-8)``, Distiller's
definition, which both the lasso and the group-variance regularizer use.
"""

from __future__ import annotations

import torch

from hookprune.errors import suggest

#: Distiller's epsilon under the square root of a channel norm.
EPSILON = 1e-8

#: canonical group type -> the structures whose lasso terms (and keep-masks) it combines
GROUP_TYPES: dict[str, tuple[str, ...]] = {
    "2D": ("2D",),
    "Rows": ("Rows",),
    "Cols": ("Cols",),
    "Rows+Cols": ("Rows", "Cols"),
    "Channels": ("Channels",),
    "Filters": ("Filters",),
    "4D": ("4D",),
    "Channels+4D": ("Channels", "4D"),
}

#: every spelling Distiller accepts, lower-cased, -> the canonical group type
_SPELLINGS: dict[str, str] = {
    **{name.lower(): name for name in GROUP_TYPES},
    "3d": "Filters",
    "cols+rows": "Rows+Cols",
    "4d+channels": "Channels+4D",
}

#: structure -> (the number of dimensions of the weights it applies to, the dimensions one group spans)
_STRUCTURES: dict[str, tuple[int, tuple[int, ...]]] = {
    "Rows": (2, (1,)),
    "Cols": (2, (0,)),
    "2D": (4, (2, 3)),
    "Filters": (4, (1, 2, 3)),
    "Channels": (4, (0, 2, 3)),
    "4D": (4, (0, 1, 2, 3)),
}


def canonical_group_type(group_type: object) -> str | None:
    """The canonical name of ``group_type`` (any of Distiller's spellings, in any case), or None."""
    return _SPELLINGS.get(group_type.lower()) if isinstance(group_type, str) else None


def unknown_group_type(group_type: object, allowed: tuple[str, ...] = tuple(GROUP_TYPES)) -> str:
    """One line naming a group type that is not one of ``allowed``, with the nearest valid ones."""
    aliases = {"Filters": "3D", "Rows+Cols": "Cols+Rows", "Channels+4D": "4D+Channels"}
    spellings = [s for name in allowed for s in (name, aliases.get(name)) if s is not None]
    listed = [f"{name} (or {aliases[name]})" if name in aliases else name for name in allowed]
    return f"unknown group type {group_type!r}{suggest(group_type, spellings)}; group types are: {', '.join(listed)}"


def shape_problem(group_type: str, shape: tuple[int, ...]) -> str | None:
    """Why ``group_type`` cannot group a parameter of ``shape``, or None when it can."""
    dims = {_STRUCTURES[s][0] for s in GROUP_TYPES[group_type]}
    (needed,) = dims
    if len(shape) == needed:
        return None
    kind = "a 2-D (Linear) weight" if needed == 2 else "a 4-D (Conv2d) weight"
    return f"'{group_type}' groups need {kind}, not a parameter of shape {tuple(shape)}"


def check_shape(group_type: str, weight: torch.Tensor, param_name: str) -> None:
    """ValueError when ``group_type`` cannot group ``weight``."""
    problem = shape_problem(group_type, tuple(weight.shape))
    if problem is not None:
        raise ValueError(f"'{param_name}': {problem}")


def channel_norms(weight: torch.Tensor) -> torch.Tensor:
    """The L2 norm of each input channel of a 4-D weight, ``sqrt(sum of squares + 1e-8)`` (Distiller's)."""
    return weight.pow(2).sum(dim=(0, 2, 3)).add(EPSILON).sqrt()


def group_lasso(weight: torch.Tensor, group_type: str) -> torch.Tensor:
    """The sum of the L2 norms of ``weight``'s groups (summed over both kinds for combined types)."""
    total: torch.Tensor | None = None
    for structure in GROUP_TYPES[group_type]:
        if structure == "Channels":
            term = channel_norms(weight).sum()
        elif structure == "4D":
            term = torch.linalg.vector_norm(weight)
        else:
            term = torch.linalg.vector_norm(weight, dim=_STRUCTURES[structure][1]).sum()
        total = term if total is None else total + term
    assert total is not None
    return total


def group_scores(weight: torch.Tensor, structure: str, criteria: str) -> torch.Tensor:
    """Each group's mean magnitude (``Mean_Abs``) or largest magnitude (``Max``), shaped to broadcast
    against ``weight``."""
    dims = _STRUCTURES[structure][1]
    magnitudes = weight.detach().abs()
    if criteria == "Mean_Abs":
        return magnitudes.mean(dim=dims, keepdim=True)
    if criteria == "Max":
        return magnitudes.amax(dim=dims, keepdim=True)
    raise ValueError(f"unknown threshold criteria {criteria!r}")


def group_keep_mask(weight: torch.Tensor, group_type: str, threshold: float,
                    criteria: str) -> torch.Tensor | None:
    """Boolean keep-mask of ``weight``'s shape: a group is zeroed when its score is at most ``threshold``.

    For combined types an element is kept only when every group holding it passes. ``4D`` alone gives
    None when the tensor passes (nothing to zero), as Distiller did.
    """
    keep: torch.Tensor | None = None
    for structure in GROUP_TYPES[group_type]:
        passes = group_scores(weight, structure, criteria) > threshold
        keep = passes if keep is None else keep & passes
    assert keep is not None
    if group_type == "4D" and bool(keep.all()):
        return None
    return keep.expand(weight.shape).contiguous()
