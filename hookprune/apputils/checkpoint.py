"""Checkpoints that survive a crash and load without running code: Distiller's ``save_checkpoint`` keys,
written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a dict: ``epoch``, ``arch``, ``state_dict`` (the model), ``optimizer_state_dict``,
``compression_sched`` (``CompressionScheduler.state_dict()``: masks, every instance's progress,
thinning recipes), ``thinning_recipes`` and ``quantizer_metadata`` (also at the top level, where Distiller
kept them), and ``extras`` (anything else the training script keeps: RNG states, metric history).

The file is ``torch.save``'s zip archive, sealed with the SHA-256 of its bytes in the archive's comment (which
``torch.load`` ignores): :func:`read_checkpoint` verifies it, so a changed bit is reported rather than loaded.
Files without the seal (Distiller's, older ones) load as before. A write that a killed process left unfinished
is a locked ``.NAME.XXXXXXXX.tmp`` file beside the checkpoint; :func:`remove_unfinished_writes` clears them.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import torch

from hookprune._engine.params import normalize_name
from hookprune.apputils.rng import restore_rng

CHECKPOINT_SUFFIX = "checkpoint.pth.tar"
BEST_SUFFIX = "best.pth.tar"
#: what opens the zip comment that holds a checkpoint's checksum
SEAL_PREFIX = b"hookprune-sha256:"
_SEAL_LENGTH = len(SEAL_PREFIX) + 64
#: a zip archive's end-of-central-directory record: its signature, and its length without the comment
_EOCD, _EOCD_LENGTH = b"PK\x05\x06", 22
#: the temporary files :func:`atomic_write` writes: ``.NAME.`` and mkstemp's eight characters, then ``.tmp``
_UNFINISHED = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")

try:
    import fcntl
except ImportError:  # Windows: unfinished writes are not told from running ones, and none is removed
    fcntl = None  # type: ignore[assignment]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; ``str(err)`` is one line naming the file and the reason."""


class DiskFullError(OSError):
    """A write the disk had no room for; ``str(err)`` is one line naming the folder and the space it needs. The
    file written before is left whole."""

    def __init__(self, path: Path, needed: int, free: int, code: int = errno.ENOSPC) -> None:
        what = "the disk quota" if code == errno.EDQUOT else "the disk"
        self.message = (f"{what} holding {path.parent} is full: writing {path.name} needs {_size(needed)} of free "
                        f"space, {_size(free)} is free; the previous {path.name} is kept whole")
        super().__init__(code, self.message, os.fspath(path))

    def __str__(self) -> str:
        return self.message


def _size(count: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


def describe_load_failure(exc: BaseException) -> str:
    """The gist of a ``torch.load`` failure in a few words: the unpickler's reason, or the first line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    reason = re.search(r"WeightsUnpickler error: ([^\n]*?)\.(?:\s|$)", text) or re.search(
        r"^((?:Trying to load )?[Uu]nsupported (?:global|GLOBAL)[^\n]*?)\.?$", text, re.M)
    if reason:
        return reason.group(1)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0].split(". ")[0].rstrip(".") if lines else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def atomic_write(data: bytes, path: str | os.PathLike[str]) -> None:
    """Write ``data`` to ``path`` so that a crash at any moment leaves either the old file or the new one.

    The bytes go to a temporary file in the same folder, locked while it is written (so that
    :func:`remove_unfinished_writes` knows a live write from one a killed process left), are flushed to disk,
    and the file is then renamed over ``path`` (an atomic replace on POSIX and Windows). A full disk raises
    :class:`DiskFullError`, naming the folder and the space the write needs.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(path.parent).free
            raise DiskFullError(path, len(data), free, exc.errno) from None
        raise
    if hasattr(os, "O_DIRECTORY"):
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def remove_unfinished_writes(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that writes of :func:`atomic_write` in ``folder`` left when their process was
    killed, and return them; a write still running (its file locked) is left alone, and so is anything a file
    cannot be removed for. Nothing is removed where file locks are not available."""
    removed: list[Path] = []
    if fcntl is None:
        return removed
    try:
        entries = sorted(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not _UNFINISHED.match(entry.name):
            continue
        try:
            fd = os.open(entry, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            entry.unlink()
            removed.append(entry)
        except OSError:  # locked by a live write, or not ours to remove
            continue
        finally:
            os.close(fd)
    return removed


def seal(data: bytes) -> bytes:
    """``torch.save``'s archive ``data`` with the SHA-256 of its bytes as the zip comment, which ``torch.load``
    ignores and :func:`read_checkpoint` verifies; data that is not a zip archive without a comment is returned
    as it is."""
    if len(data) < _EOCD_LENGTH or data[-_EOCD_LENGTH:-_EOCD_LENGTH + 4] != _EOCD or data[-2:] != b"\0\0":
        return data
    digest = hashlib.sha256(data).hexdigest().encode()
    return data[:-2] + _SEAL_LENGTH.to_bytes(2, "little") + SEAL_PREFIX + digest


def _verify_seal(stream: IO[bytes], size: int, shown: str) -> None:
    """Check the seal of the open checkpoint file ``stream`` (``size`` bytes), if it has one."""
    if size < _EOCD_LENGTH + _SEAL_LENGTH:
        return
    stream.seek(size - _EOCD_LENGTH - _SEAL_LENGTH)
    tail = stream.read()
    record, comment = tail[:_EOCD_LENGTH], tail[_EOCD_LENGTH:]
    if (record[:4] != _EOCD or int.from_bytes(record[-2:], "little") != _SEAL_LENGTH
            or not comment.startswith(SEAL_PREFIX)):
        return
    digest = hashlib.sha256()
    stream.seek(0)
    left = size - _SEAL_LENGTH - 2
    while left > 0:
        chunk = stream.read(min(left, 1 << 22))
        if not chunk:
            break
        digest.update(chunk)
        left -= len(chunk)
    digest.update(b"\0\0")
    if digest.hexdigest().encode() != comment[len(SEAL_PREFIX):]:
        raise CheckpointError(f"checkpoint '{shown}' is corrupt: its content does not match the SHA-256 checksum "
                              "written with it (a bit changed on the disk or in a copy); use an earlier checkpoint")


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj, path)``, sealed with its checksum (see :func:`seal`) and written atomically (see
    :func:`atomic_write`)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(seal(buffer.getvalue()), path)


def quantizer_metadata(scheduler: Any) -> dict[str, dict[str, Any]]:
    """What each quantizer of ``scheduler`` is: its class and bit widths, as plain values (Distiller kept
    this beside the weights so a reader knows the model is quantized)."""
    from hookprune.quantization.base import Quantizer

    meta: dict[str, dict[str, Any]] = {}
    for name, obj in getattr(scheduler, "instances", {}).items():
        if isinstance(obj, Quantizer):
            bits = obj.default_qbits
            meta[name] = {"type": type(obj).__name__, "bits_activations": bits.acts, "bits_weights": bits.wts,
                          "bits_bias": bits.bias,
                          "quantized_params": sorted(ptq.full_name for ptq in obj.params_to_quantize)}
    return meta


def checkpoint_dict(epoch: int, arch: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None, extras: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint :func:`save_checkpoint` writes, as a dict of tensors and plain values."""
    checkpoint: dict[str, Any] = {"epoch": epoch, "arch": arch, "state_dict": model.state_dict()}
    if optimizer is not None:
        checkpoint["optimizer_state_dict"] = optimizer.state_dict()
    if scheduler is not None:
        state = scheduler.state_dict()
        checkpoint["compression_sched"] = state
        checkpoint["thinning_recipes"] = state.get("thinning_recipes", [])
        checkpoint["quantizer_metadata"] = quantizer_metadata(scheduler)
    if extras is not None:
        checkpoint["extras"] = dict(extras)
    return checkpoint


def save_checkpoint(epoch: int, arch: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None, extras: Mapping[str, Any] | None = None, is_best: bool = False,
                    name: str | None = None, dir: str | os.PathLike[str] = ".") -> Path:
    """Distiller's ``apputils.save_checkpoint``: write ``[name_]checkpoint.pth.tar`` in ``dir``, and
    ``[name_]best.pth.tar`` too when ``is_best``; both atomically. Returns the checkpoint's path."""
    prefix = f"{name}_" if name else ""
    folder = Path(dir)
    buffer = io.BytesIO()
    torch.save(checkpoint_dict(epoch, arch, model, optimizer, scheduler, extras), buffer)
    data = seal(buffer.getvalue())
    last = folder / f"{prefix}{CHECKPOINT_SUFFIX}"
    atomic_write(data, last)
    if is_best:
        atomic_write(data, folder / f"{prefix}{BEST_SUFFIX}")
    return last


def read_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``: tensors and plain containers only, so a
    file that would run code when unpickled is refused (and its code never runs). A sealed file's checksum is
    verified first (see :func:`seal`).

    Raises :class:`CheckpointError` for a missing, unreadable, truncated, corrupt or unsafe file, or one that is
    not a dict.
    """
    shown = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint '{shown}' does not exist") from None
    except OSError as exc:
        raise CheckpointError(f"checkpoint '{shown}' cannot be reached: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        what = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a pipe or a device?)"
        raise CheckpointError(f"checkpoint '{shown}' is {what}, not a checkpoint file")
    try:
        stream = open(path, "rb")  # noqa: SIM115 (closed below)
    except PermissionError:
        raise CheckpointError(f"checkpoint '{shown}' cannot be read: permission denied") from None
    except OSError as exc:
        raise CheckpointError(f"checkpoint '{shown}' cannot be read: {exc.strerror}") from None
    with stream:
        try:
            size = os.fstat(stream.fileno()).st_size
            _verify_seal(stream, size, shown)
            stream.seek(0)
            head = stream.read(4)
            stream.seek(0)
        except OSError as exc:
            raise CheckpointError(f"checkpoint '{shown}' cannot be read: {exc.strerror}") from None
        try:
            checkpoint = torch.load(stream, map_location=map_location, weights_only=True)
        except Exception as exc:
            reason = describe_load_failure(exc)
            if re.search(r"unsupported global|GLOBAL", str(exc), re.I):
                raise CheckpointError(f"checkpoint '{shown}' refused: it holds an object that loading without "
                                      f"running code does not allow ({reason}); only tensors and plain containers "
                                      "are read") from None
            if head and not head.startswith((b"PK", b"\x80")):
                raise CheckpointError(f"checkpoint '{shown}' is not a checkpoint: neither torch.save's zip archive "
                                      "nor a pickle") from None
            raise CheckpointError(f"checkpoint '{shown}' is incomplete or corrupt (truncated while being written "
                                  f"or copied?): {reason}") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint '{shown}' holds a {type(checkpoint).__name__}, not a checkpoint dict")
    problem = layout_problem(checkpoint)
    if problem:
        raise CheckpointError(f"checkpoint '{shown}' is malformed: {problem}")
    return checkpoint


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_plain(value: Any, depth: int = 0) -> bool:
    """True for what JSON holds: strings, finite or not numbers, booleans, None, and lists and string-keyed dicts
    of them."""
    if value is None or isinstance(value, str | int | float):
        return True
    if depth > 32:
        return False
    if isinstance(value, list | tuple):
        return all(_is_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v, depth + 1) for k, v in value.items())
    return False


def _is_state(value: Any) -> bool:
    """A state dict: names to tensors (or, for a few quantized modules, other values ``load_state_dict`` judges)."""
    return isinstance(value, Mapping) and all(isinstance(k, str) for k in value)


def _is_rng(value: Any) -> bool:
    """What :func:`hookprune.apputils.rng.rng_state` saves: torch's byte state, Python's state, CUDA's states."""
    if not isinstance(value, Mapping):
        return False
    torch_state, python, cuda = value.get("torch"), value.get("python"), value.get("cuda", [])
    if not (isinstance(torch_state, torch.Tensor) and torch_state.dtype == torch.uint8 and torch_state.dim() == 1):
        return False
    if not (isinstance(python, list | tuple) and len(python) == 3 and _is_int(python[0])
            and isinstance(python[1], list | tuple) and all(map(_is_int, python[1]))
            and (python[2] is None or isinstance(python[2], float))):
        return False
    return isinstance(cuda, list | tuple) and all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8
                                                   for t in cuda)


#: what each top-level key of a checkpoint holds, when present and not null
_LAYOUT: dict[str, tuple[str, Any]] = {
    "epoch": ("an integer", _is_int),
    "arch": ("a string", lambda v: isinstance(v, str)),
    "state_dict": ("a mapping of names to tensors", _is_state),
    "optimizer_state_dict": ("an optimizer's state_dict() (a mapping with 'state' and 'param_groups')",
                             lambda v: isinstance(v, Mapping) and isinstance(v.get("state"), Mapping)
                             and isinstance(v.get("param_groups"), list)),
    "compression_sched": ("a mapping (the scheduler's state_dict())", lambda v: isinstance(v, Mapping)),
    "thinning_recipes": ("a list", lambda v: isinstance(v, list)),
    "quantizer_metadata": ("a mapping", lambda v: isinstance(v, Mapping)),
    "extras": ("a mapping", lambda v: isinstance(v, Mapping)),
}
_EXTRAS_LAYOUT: dict[str, tuple[str, Any]] = {
    "seed": ("an integer", _is_int),
    "rng": ("the random generators' states", _is_rng),
    "history": ("a list of mappings of plain values (one per epoch)",
                lambda v: isinstance(v, list) and all(isinstance(e, dict) and _is_plain(e) for e in v)),
    "kd_teacher": ("a mapping of names to tensors", _is_state),
}


def layout_problem(checkpoint: Mapping[str, Any]) -> str | None:
    """What in ``checkpoint`` is not of the kind its key holds in hookprune's (and Distiller's) checkpoints, in a
    few words, or None. Keys it does not know, and keys set to null, are left alone."""
    for where, layout, holder in (("", _LAYOUT, checkpoint), ("extras.", _EXTRAS_LAYOUT, checkpoint.get("extras"))):
        if not isinstance(holder, Mapping):
            continue
        for key, (what, accepts) in layout.items():
            value = holder.get(key)
            if value is not None and not accepts(value):
                return f"'{where}{key}' must be {what}, not {type(value).__name__}"
    return None


def model_state(checkpoint: Mapping[str, Any], path: str | os.PathLike[str] = "<checkpoint>") -> dict[str, Any]:
    """The model's state dict inside a checkpoint: under ``state_dict`` (Distiller's key) or ``model``, or the
    checkpoint itself when it is a bare state dict."""
    for key in ("state_dict", "model"):
        value = checkpoint.get(key)
        if isinstance(value, Mapping):
            return dict(value)
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return dict(checkpoint)
    raise CheckpointError(f"checkpoint '{os.fspath(path)}' holds no model weights (no 'state_dict' or 'model' "
                          "entry, and it is not a state dict itself)")


def load_weights(model: torch.nn.Module, path: str | os.PathLike[str], arch: str,
                 checkpoint: Mapping[str, Any] | None = None) -> None:
    """Load the weights of the checkpoint at ``path`` (hookprune's or Distiller's) into ``model``, after the shape
    changes its thinning recipes made; weights saved under DataParallel's ``module.`` prefix load into the bare
    model. ``checkpoint`` is the file's content when it was read already.

    Raises :class:`CheckpointError` naming ``arch`` when the weights do not fit the model.
    """
    if checkpoint is None:
        checkpoint = read_checkpoint(path)
    recipes = checkpoint.get("thinning_recipes") or checkpoint.get("compression_sched", {}).get("thinning_recipes")
    if recipes:
        from hookprune.thinning import apply_recipes

        apply_recipes(model, recipes)
    state = model_state(checkpoint, path)
    own = model.state_dict()
    if set(own).isdisjoint(state):
        state = {normalize_name(k): v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = " ".join(str(exc).split("\n\t")[1:2]) or str(exc).splitlines()[0]
        raise CheckpointError(f"checkpoint '{os.fspath(path)}' does not fit '{arch}': {first.strip()}") from None


def resume_run(checkpoint: Mapping[str, Any], path: str | os.PathLike[str], model: torch.nn.Module, scheduler: Any,
               arch: str, optimizer: torch.optim.Optimizer | None = None, device: torch.device | None = None) -> None:
    """Load the checkpoint read from ``path`` into ``model`` and ``scheduler`` (masks, every instance's progress),
    into ``optimizer`` when given, and into the random generators of ``device`` (the ``rng`` of its ``extras``)
    when given. With both, the run continues after the checkpoint's ``epoch`` as if it had never stopped; without,
    it starts over from the checkpoint's weights and masks.

    Raises :class:`CheckpointError` naming the file when a state does not fit (``arch`` names the model).
    """
    where = f"checkpoint '{os.fspath(path)}'"
    state = checkpoint.get("compression_sched")
    if state is not None:
        try:
            scheduler.load_state_dict(state)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
            raise CheckpointError(f"{where} does not fit this run ({_reason(exc)}); resume with the --compress "
                                  "schedule and --kd-* options it was trained with") from None
    try:
        model.load_state_dict(model_state(checkpoint, path))
    except RuntimeError as exc:
        raise CheckpointError(f"{where} does not fit '{arch}': {str(exc).splitlines()[-1].strip()}") from None
    if optimizer is not None and "optimizer_state_dict" in checkpoint:
        try:
            optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise CheckpointError(f"{where}: the optimizer state does not fit ({_reason(exc)})") from None
    extras = checkpoint.get("extras") or {}
    if device is not None and extras.get("rng") is not None:
        try:
            restore_rng(extras["rng"], device)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise CheckpointError(f"{where}: the random generators' states do not load ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    """The first line of ``exc``'s message, or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
