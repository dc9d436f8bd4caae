"""Distributed data parallel training: one schedule, the same masks on every rank.

Under ``torch.distributed`` every rank runs the whole schedule on its own shard of the data, so every
pruner computes masks on every rank. A :class:`MaskSynchronizer` attached to the scheduler then makes
rank 0's masks everyone's: before the engine applies masks (ahead of each forward pass and after each
optimizer step), if any rank's masks changed since the last such point, rank 0 broadcasts the changed
ones. Broadcasting, rather than trusting every rank to compute the same thing, keeps the ranks in
agreement when a pruner draws random numbers, ranks structures by activations it saw on its own shard,
or breaks a floating-point tie differently; masks are booleans, one byte per element, and travel only
when they changed. :func:`verify_masks` checks the agreement explicitly.

A scheduler built on a ``DistributedDataParallel`` model gets its synchronizer on its own; one built on
the bare model (DDP's ``module``) gets it from :func:`synchronize_masks`. Both spell parameter names
the same way in a schedule, with or without DDP's ``module.``.

Under FSDP2 (``fully_shard``) there is nothing to synchronize: each rank holds only its own shard of each
mask, and the pruners select across the shards exactly (:mod:`hookprune.sharding`), so the shards together
are the one mask a single process would compute. :func:`synchronize_masks` refuses such a scheduler, and
:func:`verify_masks` compares the masks' names there, and the masks of unsharded parameters.

The small collectives here (flags, names, sums, digests) run on a CPU process group: the default group
under gloo, a gloo group made once beside it under nccl, so that they never wait on a GPU stream.

Every collective waits at most the timeout given to :func:`init_process_group` for the other ranks; when one
gives up (a rank stopped, hung or dead), :func:`responding_ranks` tells which ranks still answer, over a gloo
group kept for that alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from hookprune._engine.scheduler import Scheduler as CompressionScheduler

__all__ = [
    "LaunchEnvironment",
    "MaskMismatchError",
    "MaskSynchronizer",
    "all_sum",
    "broadcast_buffers",
    "broadcast_json",
    "collective_timeout",
    "init_process_group",
    "is_collective_failure",
    "is_initialized",
    "launch_environment",
    "rank",
    "responding_ranks",
    "synchronize_masks",
    "synchronize_masks_if_distributed",
    "verify_masks",
    "world_size",
]

#: the most bytes of masks one broadcast carries; larger payloads go in several
BROADCAST_BUCKET_BYTES = 1 << 28

_control: list[tuple[Any, Any]] = []
#: (the default group, the seconds its collectives wait, the gloo group that asks which ranks respond)
_watch: list[tuple[Any, float | None, Any]] = []
#: what a collective's error says when a peer kept it waiting past the timeout or left the job
_FAILED_PEER = re.compile(r"timed out waiting \d+ ?ms|connection (?:closed|reset) by peer|collective operation timeout",
                          re.I)


class MaskMismatchError(RuntimeError):
    """Ranks that hold different masks; ``str(err)`` names the parameters and the ranks that differ from rank 0."""


@dataclass(frozen=True)
class LaunchEnvironment:
    """Where this process stands in a job started by ``torchrun``: its global and local rank and the counts."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def launch_environment(environ: Mapping[str, str] | None = None) -> LaunchEnvironment | None:
    """The ``torchrun`` variables of ``environ`` (the process environment by default), or None outside torchrun.

    A job is recognised by ``RANK`` and ``WORLD_SIZE``; ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` default to the
    global values. A malformed value raises a ValueError naming the variable.
    """
    env = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    values: dict[str, int] = {}
    for key, default in (("RANK", None), ("WORLD_SIZE", None), ("LOCAL_RANK", "RANK"),
                         ("LOCAL_WORLD_SIZE", "WORLD_SIZE")):
        text = env.get(key, env[default] if default else "")
        try:
            values[key] = int(text)
        except ValueError:
            raise ValueError(f"the environment variable {key}={text!r} is not an integer (set by torchrun)") from None
    launch = LaunchEnvironment(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"], values["LOCAL_WORLD_SIZE"])
    if not (0 <= launch.rank < launch.world_size and 0 <= launch.local_rank < launch.local_world_size):
        raise ValueError(f"the torchrun environment is inconsistent: RANK={launch.rank}, WORLD_SIZE={launch.world_size}"
                         f", LOCAL_RANK={launch.local_rank}, LOCAL_WORLD_SIZE={launch.local_world_size}")
    return launch


def init_process_group(device: torch.device, timeout: float | None = None) -> str:
    """Join the job ``torchrun`` started (``env://``): nccl when ``device`` is a GPU, which becomes this process's
    current device, gloo otherwise. Returns the backend's name.

    ``timeout`` (seconds; torch's default when None) bounds how long every collective waits for the other ranks:
    under gloo the waiting rank raises an error, which :func:`is_collective_failure` recognises; under nccl torch's
    watchdog ends the process. A gloo group for :func:`responding_ranks` is made beside the default group.
    """
    wait = None if timeout is None else timedelta(seconds=timeout)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl", device_id=device, timeout=wait)
        backend = "nccl"
    else:
        dist.init_process_group(backend="gloo", timeout=wait)
        backend = "gloo"
    _watch.clear()
    _watch.append((dist.group.WORLD, timeout, dist.new_group(backend="gloo", timeout=wait)))
    return backend


def collective_timeout() -> float | None:
    """The seconds a collective of the current job waits for the other ranks (None: torch's default)."""
    world = dist.group.WORLD if is_initialized() else None
    return next((timeout for owner, timeout, _ in _watch if owner is world), None)


def is_collective_failure(exc: BaseException) -> bool:
    """True when ``exc`` is a collective's error because another rank kept it waiting past the timeout or left the
    job (inside an initialized process group)."""
    if not is_initialized() or not isinstance(exc, RuntimeError):
        return False
    return isinstance(exc, getattr(dist, "DistBackendError", ())) or bool(_FAILED_PEER.search(str(exc)))


def responding_ranks(window: float) -> list[int]:
    """The ranks that answer within ``window`` seconds, this one included, after a collective failed: every rank
    that calls this sends its number to every other and listens for theirs, so the ranks that call it within the
    window agree. Ranks that are stopped, hung in other work, or dead do not answer. Needs
    :func:`init_process_group`'s group; without it, every rank is assumed to answer."""
    world = dist.group.WORLD
    group = next((g for owner, _, g in _watch if owner is world), None)
    me, count = dist.get_rank(), dist.get_world_size()
    if group is None:
        return list(range(count))
    others = [r for r in range(count) if r != me]
    sends, received, buffers = [], {}, {r: torch.tensor([-1]) for r in others}
    for r in others:  # a rank whose process is gone refuses at once
        try:
            sends.append(dist.isend(torch.tensor([me]), r, group=group))
            received[r] = dist.irecv(buffers[r], r, group=group)
        except RuntimeError:
            continue
    deadline = time.monotonic() + window
    answered = [me]
    for r, work in received.items():
        try:
            work.wait(timedelta(seconds=max(deadline - time.monotonic(), 0.001)))
            answered.append(r)
        except RuntimeError:
            continue
    del sends
    return sorted(answered)


def is_initialized() -> bool:
    """True inside an initialized ``torch.distributed`` process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank; 0 outside a process group."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """The number of processes in the job; 1 outside a process group."""
    return dist.get_world_size() if is_initialized() else 1


def _control_group() -> Any:
    """The process group for small CPU collectives: the default group under gloo, else a gloo group made once."""
    world = dist.group.WORLD
    if dist.get_backend() == "gloo":
        return world
    for owner, group in _control:
        if owner is world:
            return group
    _control.clear()
    timeout = collective_timeout()
    group = dist.new_group(backend="gloo", timeout=None if timeout is None else timedelta(seconds=timeout))
    _control.append((world, group))
    return group


def _data_device() -> torch.device:
    """The device tensors must be on for the default group's collectives."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_json(value: Any, src: int = 0) -> Any:
    """``value`` as rank ``src`` has it, on every rank: anything JSON can carry (no pickling). Collective."""
    group = _control_group()
    data = json.dumps(value).encode() if dist.get_rank() == src else b""
    size = torch.tensor([len(data)], dtype=torch.int64)
    dist.broadcast(size, src, group=group)
    buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(int(size), dtype=torch.uint8)
    dist.broadcast(buffer, src, group=group)
    return json.loads(buffer.numpy().tobytes().decode())


def all_sum(values: Sequence[float]) -> list[float]:
    """The element-wise sum over all ranks of ``values`` (the same length on every rank), in float64. Collective;
    every rank receives the same numbers, so a decision taken on them (a learning-rate step, the best epoch) agrees.
    """
    total = torch.tensor([float(v) for v in values], dtype=torch.float64)
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=_control_group())
    return total.tolist()


def broadcast_buffers(model: torch.nn.Module, src: int = 0) -> None:
    """Give every rank rank ``src``'s buffers (BatchNorm's running statistics, say), which each rank updates from its
    own shard during a forward pass. Collective."""
    with torch.no_grad():
        for buffer in model.buffers():
            dist.broadcast(buffer, src)


def _changed(now: Mapping[str, torch.Tensor], seen: Mapping[str, torch.Tensor]) -> set[str]:
    """The names whose mask is new, replaced or gone between ``seen`` and ``now``.

    The engine stores every assigned mask as a new tensor, so a replaced mask is a different object.
    """
    gone = set(seen) - set(now)
    return gone | {name for name, mask in now.items() if seen.get(name) is not mask}


class MaskSynchronizer:
    """Keeps a scheduler's masks identical on every rank by broadcasting rank ``src``'s.

    The scheduler calls :meth:`note_change` when instance hooks that may set masks are about to run (all but
    those of plugins declaring ``sets_masks = False``) and
    :meth:`sync_point` just before it applies masks; a sync point after a change exchanges one flag and, when
    some rank's masks changed, broadcasts the changed masks from ``src``. Both calls depend only on the schedule,
    so every rank reaches the same collectives. Masks assigned outside hooks must be followed by
    :meth:`note_change` (``load_state_dict`` does it) or :meth:`synchronize` on every rank.
    """

    def __init__(self, scheduler: CompressionScheduler, src: int = 0) -> None:
        if not is_initialized():
            raise RuntimeError("mask synchronization needs an initialized torch.distributed process group "
                               "(torch.distributed.init_process_group)")
        if scheduler.masks.sharded:
            raise ValueError("the model's parameters are sharded by FSDP2 (fully_shard): each rank keeps the masks "
                             "of its own shards, which need no synchronization; synchronize_masks is for "
                             "DistributedDataParallel")
        self.scheduler = scheduler
        self.src = src
        #: how many times masks went from ``src`` to the other ranks
        self.broadcasts = 0
        #: how many sync points exchanged the changed-masks flag (one small all-reduce each)
        self.exchanges = 0
        self._seen: dict[str, torch.Tensor] = {}
        self._pending = True

    def note_change(self) -> None:
        """Masks may change on some rank before the next sync point, which then exchanges them."""
        self._pending = True

    def sync_point(self) -> None:
        """Called by the scheduler before it applies masks: :meth:`synchronize` when a change was noted."""
        if self._pending:
            self.synchronize()

    def synchronize(self) -> list[str]:
        """Give every rank the masks of rank ``src`` where any rank's changed since the last call. Collective.

        Returns the names of the masks broadcast (none when no rank changed a mask).
        """
        self._pending = False
        store = self.scheduler.masks
        group = _control_group()
        is_src = dist.get_rank() == self.src
        current = dict(store.items())
        changed = _changed(current, self._seen)
        flag = torch.tensor([int(bool(changed))], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        self.exchanges += 1
        if not int(flag):
            self._seen = current
            return []
        names: list[str] = broadcast_json(list(current) if is_src else None, self.src)
        bits = torch.tensor([name in changed or name not in current for name in names], dtype=torch.uint8)
        dist.all_reduce(bits, op=dist.ReduceOp.MAX, group=group)
        sent = [name for name, bit in zip(names, bits.tolist(), strict=True) if bit]
        if not is_src:
            keep = set(names)
            for name in [n for n in current if n not in keep]:
                del store[name]
        self._broadcast(sent, is_src)
        self._seen = dict(store.items())
        self.broadcasts += 1
        return sent

    def _broadcast(self, names: list[str], is_src: bool) -> None:
        store = self.scheduler.masks
        params = store.index.params
        device = _data_device()
        start = 0
        while start < len(names):
            end, size = start, 0
            while end < len(names) and (end == start or size + params[names[end]].numel() <= BROADCAST_BUCKET_BYTES):
                size += params[names[end]].numel()
                end += 1
            bucket = names[start:end]
            if is_src:
                flat = torch.cat([store[n].reshape(-1).to(device).view(torch.uint8) for n in bucket])
            else:
                flat = torch.empty(size, dtype=torch.uint8, device=device)
            dist.broadcast(flat, self.src)
            if not is_src:
                offset = 0
                for name in bucket:
                    n = params[name].numel()
                    store[name] = flat[offset:offset + n].view(torch.bool).view(params[name].shape)
                    offset += n
            start = end


def synchronize_masks(scheduler: CompressionScheduler, src: int = 0) -> MaskSynchronizer:
    """Attach a :class:`MaskSynchronizer` to ``scheduler`` (on every rank, before training) and return it."""
    sync = MaskSynchronizer(scheduler, src)
    scheduler.mask_sync = sync
    return sync


def synchronize_masks_if_distributed(scheduler: CompressionScheduler, src: int = 0) -> MaskSynchronizer | None:
    """Attach a :class:`MaskSynchronizer` to ``scheduler`` when this process is one of several ranks of a process
    group and the scheduler has none yet; return the scheduler's synchronizer, or None when there is nothing to do.

    What a trainer integration calls once it has built a schedule on the bare model of a data parallel run it did
    not start itself: one process, or a model sharded by FSDP2 (each rank keeps its own shards' masks), needs none.
    Collective only in that every rank must call it.
    """
    if scheduler.mask_sync is not None:
        return scheduler.mask_sync
    if world_size() < 2 or scheduler.masks.sharded:
        return None
    return synchronize_masks(scheduler, src)


def _digest(mask: torch.Tensor) -> int:
    data = mask.detach().to("cpu", torch.bool).contiguous().numpy().tobytes()
    shape = repr(tuple(mask.shape)).encode()
    return int.from_bytes(hashlib.blake2b(shape + data, digest_size=8).digest(), "little", signed=True)


def verify_masks(scheduler: CompressionScheduler) -> int:
    """Check that every rank holds exactly rank 0's masks: the same names, shapes and elements. Collective.

    Under FSDP2 each rank holds its own shard of a sharded parameter's mask: those are compared by name only
    (every rank must hold one), the masks of unsharded parameters in full.

    Returns the number of masks compared; raises :class:`MaskMismatchError` on every rank otherwise, naming the
    parameters and the ranks that differ.
    """
    group = _control_group()
    sharded = scheduler.masks.sharded
    masks = {name: torch.ones(1, dtype=torch.bool) if name in sharded else mask
             for name, mask in scheduler.masks.items()}
    names: list[str] = broadcast_json(sorted(masks), 0)
    row = torch.tensor([_digest(masks[n]) if n in masks else 0 for n in names]
                       + [len(set(masks) - set(names))], dtype=torch.int64)
    present = torch.tensor([n in masks for n in names], dtype=torch.int64)
    rows = [torch.empty_like(row) for _ in range(dist.get_world_size())]
    presence = [torch.empty_like(present) for _ in range(dist.get_world_size())]
    dist.all_gather(rows, row, group=group)
    dist.all_gather(presence, present, group=group)
    problems = []
    for r in range(1, len(rows)):
        differ = [n for i, n in enumerate(names) if rows[r][i] != rows[0][i] or presence[r][i] != presence[0][i]]
        if differ:
            problems.append(f"rank {r} differs in {', '.join(differ)}")
        extra = int(rows[r][-1])
        if extra:
            problems.append(f"rank {r} has {extra} mask(s) rank 0 lacks")
    if problems:
        raise MaskMismatchError(f"masks differ from rank 0's: {'; '.join(problems)}")
    return len(names)
