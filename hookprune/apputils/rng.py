"""A run's randomness: the seed it starts from, and the generator states a checkpoint keeps so that a
resumed run draws exactly what the uninterrupted one would have."""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from typing import Any

import torch


def resolve_seed(seed: int | None = None, resumed: Mapping[str, Any] | None = None,
                 deterministic: bool = False) -> int:
    """``seed`` when given, else the seed of the ``resumed`` checkpoint's run, else 0 when ``deterministic``,
    else a fresh one."""
    if seed is not None:
        return seed
    if resumed is not None and isinstance(resumed.get("extras", {}).get("seed"), int):
        return resumed["extras"]["seed"]
    return 0 if deterministic else int.from_bytes(os.urandom(4), "little") >> 1


def seed_run(seed: int, deterministic: bool = False) -> None:
    """Seed torch's and Python's generators with ``seed``; with ``deterministic``, allow only deterministic
    algorithms (cuBLAS and cuDNN included), so that a rerun gives identical results."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    torch.manual_seed(seed)
    random.seed(seed)


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every random generator a later epoch draws from (the data order is derived from the seed and epoch)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any], device: torch.device) -> None:
    """Put back what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
