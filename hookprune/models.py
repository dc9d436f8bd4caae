"""The model zoo that ``hookprune check --arch`` and the examples build models from.

Distiller's own small models keep the parameter names its schedules use; every torchvision
classification and detection architecture is available by its torchvision name (weights are
never downloaded).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from hookprune.errors import suggest


class LeNet300100(nn.Module):
    """LeCun et al.'s fully connected LeNet-300-100 (``fc1``, ``fc2``, ``fc3``), as Han et al. pruned it."""

    def __init__(self, num_classes: int = 10, input_features: int = 28 * 28) -> None:
        super().__init__()
        self.fc1 = nn.Linear(input_features, 300)
        self.relu1 = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(300, 100)
        self.relu2 = nn.ReLU(inplace=True)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        return self.fc3(self.relu2(self.fc2(self.relu1(self.fc1(x)))))


ZOO: dict[str, Callable[..., nn.Module]] = {
    "lenet300_100": LeNet300100,
}

_DETECTION_PREFIXES = ("fasterrcnn", "maskrcnn", "keypointrcnn", "retinanet", "fcos", "ssd", "ssdlite")


def _torchvision_names() -> list[str]:
    try:
        import torchvision
    except ImportError:
        return []
    return sorted(torchvision.models.list_models())


def architectures() -> list[str]:
    """Every name :func:`create_model` accepts."""
    return sorted(set(ZOO) | set(_torchvision_names()))


def create_model(arch: str, *, num_classes: int | None = None, device: torch.device | str | None = None,
                 **kwargs: object) -> nn.Module:
    """Build ``arch`` with random weights; ``device='meta'`` builds only names and shapes (instant)."""
    with torch.device(device) if device is not None else _nullcontext():
        if arch in ZOO:
            extra = dict(kwargs)
            if num_classes is not None:
                extra["num_classes"] = num_classes
            return ZOO[arch](**extra)
        names = _torchvision_names()
        if arch in names:
            import torchvision

            extra = dict(kwargs)
            if num_classes is not None:
                extra["num_classes"] = num_classes
            if arch.startswith(_DETECTION_PREFIXES):
                extra.setdefault("weights_backbone", None)
            return torchvision.models.get_model(arch, weights=None, **extra)
    hint = suggest(arch, architectures())
    if not names:
        hint += " (torchvision is not installed: pip install 'hookprune[vision]')"
    raise ValueError(f"unknown architecture '{arch}'{hint}")


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
