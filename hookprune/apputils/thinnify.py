"""``--thinnify``: physically remove a loaded model's zero structures, as Distiller's ``contract_model`` did:
the input channels every reader weights by zero, then the all-zero filters."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import torch
from torch import nn

from hookprune.apputils.errors import AppError
from hookprune.thinning import ThinningError, remove_channels, remove_filters


def thinnify(model: nn.Module, example_input: Any, masks: MutableMapping[str, torch.Tensor] | None = None) -> int:
    """Remove ``model``'s zero channels and filters (masked elements count as zero); returns how many recipes
    were applied (0 when nothing was zero). The recipes are appended to ``model.thinning_recipes``."""
    applied = 0
    try:
        for thin in (remove_channels, remove_filters):
            if thin(model, example_input, masks) is not None:
                applied += 1
    except ThinningError as exc:
        raise AppError(f"--thinnify: {exc}") from None
    return applied
