"""``--pretrained``: the weights of an architecture from a local file; nothing is downloaded.

The file is the one given (``--pretrained PATH``), else ``ARCH.pth`` or ``ARCH.pth.tar`` in the folder the
``HOOKPRUNE_PRETRAINED`` environment variable names, else, for a torchvision classifier, the file its default
weights would have in torch hub's cache (``$TORCH_HOME/hub/checkpoints``) when it is there already.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from hookprune.apputils.errors import AppError

#: the environment variable naming a folder of pretrained weights, one ``ARCH.pth`` per architecture
PRETRAINED_ENV = "HOOKPRUNE_PRETRAINED"


def _torchvision_cached(arch: str) -> Path | None:
    try:
        from torchvision import models as tv
    except ImportError:
        return None
    try:
        weights = tv.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return None
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def pretrained_weights(arch: str, given: str | None) -> Path:
    """Where ``--pretrained`` finds ``arch``'s weights (see the module); an :class:`AppError` saying where it
    looked when there are none."""
    if given:
        if not Path(given).is_file():
            raise AppError(f"--pretrained {given}: no such file (nothing is downloaded)")
        return Path(given)
    looked = []
    folder = os.environ.get(PRETRAINED_ENV)
    if folder:
        for name in (f"{arch}.pth", f"{arch}.pth.tar"):
            looked.append(Path(folder) / name)
    cached = _torchvision_cached(arch)
    if cached is not None:
        looked.append(cached)
    for path in looked:
        if path.is_file():
            return path
    where = ", ".join(str(p) for p in looked) or f"nowhere (${PRETRAINED_ENV} is not set)"
    raise AppError(f"--pretrained: no local weights for '{arch}' (looked at {where}); give --pretrained PATH or put "
                   f"{arch}.pth in the folder ${PRETRAINED_ENV} names (nothing is downloaded)")
