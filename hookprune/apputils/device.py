"""Which device a run trains on: the CPU, one GPU, several for DataParallel, or one per torchrun process, and how
the model is wrapped there (DataParallel, DistributedDataParallel, or sharded with FSDP2)."""

from __future__ import annotations

import torch
from torch import nn

from hookprune.apputils.errors import AppError
from hookprune.distributed import LaunchEnvironment


def choose_device(cpu: bool = False, gpus: str | None = None, launch: LaunchEnvironment | None = None,
                  ) -> tuple[torch.device, list[int]]:
    """The device to train on and, for several GPUs, their ids (for DataParallel).

    ``cpu`` and ``gpus`` (comma-separated ids) are the application's ``--cpu`` and ``--gpus``; neither
    takes the first GPU when there is one. Under torchrun (``launch``) each process takes one GPU: the one of
    its local rank, or the local rank's entry of ``gpus``; ``cpu`` or a machine without GPUs trains every
    process on the CPU. Raises :class:`AppError` for ids this machine does not have.
    """
    if cpu:
        return torch.device("cpu"), []
    if gpus is not None:
        try:
            ids = [int(g) for g in gpus.split(",") if g.strip()]
        except ValueError:
            raise AppError(f"--gpus takes comma-separated GPU ids such as 0,1, not '{gpus}'") from None
        available = torch.cuda.device_count()
        bad = [g for g in ids if not 0 <= g < available]
        if not ids or bad:
            raise AppError(f"--gpus {gpus}: this machine has {available} GPU(s)"
                           + ("; use --cpu" if not available else f" (ids 0..{available - 1})"))
        if launch is None:
            return torch.device("cuda", ids[0]), ids
        if len(ids) < launch.local_world_size:
            raise AppError(f"--gpus {gpus}: torchrun starts {launch.local_world_size} processes on this machine, "
                           "each needs its own GPU id")
        return torch.device("cuda", ids[launch.local_rank]), []
    if not torch.cuda.is_available():
        return torch.device("cpu"), []
    if launch is None:
        return torch.device("cuda", 0), []
    if launch.local_rank >= torch.cuda.device_count():
        raise AppError(f"torchrun starts {launch.local_world_size} processes on this machine, which has "
                       f"{torch.cuda.device_count()} GPU(s): one GPU per process, or --cpu")
    return torch.device("cuda", launch.local_rank), []


def wrap_model(model: nn.Module, device: torch.device, gpu_ids: list[int], launched: bool = False) -> nn.Module:
    """``model`` in DistributedDataParallel when ``launched`` under torchrun, in DataParallel on several
    ``gpu_ids``, else as it is."""
    if launched:
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return nn.DataParallel(model, device_ids=gpu_ids) if len(gpu_ids) > 1 else model


def shard_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Shard ``model`` in place with FSDP2 (``fully_shard``) over every process of the job, on a one-dimensional
    mesh of ``device``'s type (gloo on the CPU works): each module holding parameters of its own becomes a unit
    that is gathered just before it runs and freed after, then the model the root. Returns ``model``, whose
    parameters are now DTensors sharded along dim 0; build the optimizer and the scheduler after this."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for module in reversed(list(model.modules())[1:]):
        if next(module.parameters(recurse=False), None) is not None:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model
