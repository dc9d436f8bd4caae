"""The application's models: an architecture name checked against the zoo, the model built for a data
set, and a model run on batches shaped for another architecture."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from hookprune import models
from hookprune.apputils.errors import AppError
from hookprune.errors import suggest


def check_arch(arch: str, option: str) -> str:
    """``arch`` when the zoo knows it; otherwise an :class:`AppError` naming ``option`` and the nearest names."""
    names = models.architectures()
    if arch not in names:
        raise AppError(f"{option} {arch}: unknown architecture{suggest(arch, names)}; "
                       "the zoo's and torchvision's classifiers are accepted")
    return arch


def build_model(arch: str, num_classes: int, shape: Sequence[int], device: torch.device) -> nn.Module:
    """``arch`` from the zoo on ``device``, its inputs (samples of ``shape``) and outputs fitted to the data set."""
    extra = {"input_features": math.prod(shape)} if arch == "lenet300_100" else {}
    try:
        return models.create_model(arch, num_classes=num_classes, **extra).to(device)
    except TypeError as exc:
        raise AppError(f"cannot build '{arch}' for {num_classes} classes: {exc}") from None


class AdaptedInput(nn.Module):
    """Runs ``model`` on batches shaped for another architecture, reshaped by ``adapt`` (a teacher that takes
    images beside a student that takes flattened pixels, say; ``data_loaders.input_adapter`` makes ``adapt``)."""

    def __init__(self, model: nn.Module, adapt: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.adapt = adapt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``model`` on ``x`` reshaped."""
        return self.model(self.adapt(x))
