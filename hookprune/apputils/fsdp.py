"""The example application under FSDP2 (``--fsdp``): checkpoints written whole by rank 0 and read back into shards.

The application's models are small, so each checkpoint gathers the whole weights, optimizer state and masks on
rank 0 and writes the usual file (:func:`hookprune.apputils.checkpoint.save_checkpoint`'s layout, the optimizer
state indexed as ``torch.optim`` indexes it): one process reads it as it reads any other, and a sharded run
resumes from any checkpoint, each rank keeping its rows. A model too large to gather saves its shards with
``torch.distributed.checkpoint`` instead (:mod:`hookprune.sharding`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hookprune import sharding
from hookprune.apputils.checkpoint import CheckpointError, model_state, save_checkpoint
from hookprune.apputils.rng import restore_rng


@dataclass(frozen=True)
class Gathered:
    """A state gathered whole, standing in for its owner where :func:`save_checkpoint` asks for ``state_dict()``."""

    state: dict[str, Any]

    def state_dict(self) -> dict[str, Any]:
        """The gathered state."""
        return self.state


def _options(**kwargs: bool) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def _param_names(model: nn.Module) -> dict[int, str]:
    return {id(p): name for name, p in model.named_parameters()}


def _by_index(state: Mapping[str, Any], optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, Any]:
    """A whole optimizer state keyed by parameter names as ``torch.optim`` keys it: by position over its groups."""
    names = _param_names(model)
    order = {names[id(p)]: i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    return {"state": {order[name]: value for name, value in state["state"].items()},
            "param_groups": [{**group, "params": [order[name] for name in group["params"]]}
                             for group in state["param_groups"]]}


def _by_name(state: Mapping[str, Any], optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, Any]:
    """The inverse of :func:`_by_index`, for ``set_optimizer_state_dict``."""
    names = _param_names(model)
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    return {"state": {order[int(i)]: value for i, value in state["state"].items()},
            "param_groups": [{**group, "params": [order[int(i)] for i in group["params"]]}
                             for group in state["param_groups"]]}


def save_gathered_checkpoint(epoch: int, arch: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                             scheduler: Any, extras: Mapping[str, Any], is_best: bool, name: str,
                             dir: str | os.PathLike[str] | None) -> Path | None:
    """Gather the whole state of a sharded ``model``, ``optimizer`` and ``scheduler`` (collective: every rank
    calls it) and write it as :func:`save_checkpoint` does where ``dir`` is given (rank 0's run folder)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    weights = get_model_state_dict(model, options=_options(cpu_offload=True))
    optim = get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))
    state = scheduler.state_dict()
    state["masks_dict"] = {n: m.full_tensor() if sharding.is_sharded(m) else m for n, m in state["masks_dict"].items()}
    if dir is None:
        return None
    return save_checkpoint(epoch, arch, Gathered(weights), Gathered(_by_index(optim, optimizer, model)),
                           Gathered(state), extras, is_best=is_best, name=name, dir=dir)


def load_whole_weights(model: nn.Module, state: Mapping[str, Any], where: str, arch: str) -> None:
    """Load whole weights (a checkpoint's model state) into the sharded ``model``, each rank keeping its rows."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    try:
        set_model_state_dict(model, dict(state), options=_options())
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{where} does not fit '{arch}': {' '.join(str(exc).split())[:300]}") from None


def resume_sharded_run(checkpoint: Mapping[str, Any], path: str | os.PathLike[str], model: nn.Module, scheduler: Any,
                       arch: str, optimizer: torch.optim.Optimizer | None = None,
                       device: torch.device | None = None) -> None:
    """:func:`hookprune.apputils.checkpoint.resume_run` for a sharded ``model``: the checkpoint's whole weights,
    masks and optimizer state go to every rank's shards."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    where = f"checkpoint '{os.fspath(path)}'"
    state = checkpoint.get("compression_sched")
    if state is not None:
        try:
            scheduler.load_state_dict(state)
        except ValueError as exc:
            raise CheckpointError(f"{where} does not fit this run ({exc}); resume with the --compress schedule "
                                  "it was trained with") from None
    load_whole_weights(model, model_state(checkpoint, path), where, arch)
    if optimizer is not None and "optimizer_state_dict" in checkpoint:
        try:
            set_optimizer_state_dict(model, optimizer, _by_name(checkpoint["optimizer_state_dict"], optimizer, model),
                                     options=_options())
        except (RuntimeError, KeyError, ValueError, IndexError) as exc:
            raise CheckpointError(f"{where}: the optimizer state does not fit ({exc})") from None
    extras = checkpoint.get("extras", {})
    if device is not None and "rng" in extras:
        restore_rng(extras["rng"], device)
