"""The one exception the deployment tools raise for a model, file or device they cannot handle."""

from __future__ import annotations

import importlib
from types import ModuleType


class DeployError(ValueError):
    """A model, quantizer, file or device the deployment tools cannot handle, said in one line."""


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` (an optional dependency of the ``deploy`` extra), or a :class:`DeployError` in one line."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DeployError(f"{purpose} needs the '{module.split('.')[0]}' package, which is not installed: "
                          "pip install 'hookprune[deploy]'") from None
