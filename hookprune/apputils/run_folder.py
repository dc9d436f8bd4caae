"""Where a run writes: a new folder ``OUT_DIR/NAME___TIMESTAMP``, the log of every line the run prints, with
``--verbose`` the library's debug messages on stderr, and the clearing of writes a killed run left unfinished in
its folder."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from hookprune.apputils.checkpoint import remove_unfinished_writes


def new_run_folder(out_dir: str | os.PathLike[str], name: str) -> Path:
    """Create and return ``out_dir/name___YYYY.MM.DD-HHMMSS``, with ``.2``, ``.3``... appended when a run of the
    same second has it already."""
    stamp = datetime.now().strftime("%Y.%m.%d-%H%M%S")
    base = Path(out_dir) / f"{name}___{stamp}"
    run_dir, n = base, 1
    while run_dir.exists():
        n += 1
        run_dir = base.with_name(f"{base.name}.{n}")
    run_dir.mkdir(parents=True)
    return run_dir


def clear_unfinished_writes(folder: str | os.PathLike[str]) -> str | None:
    """Remove the temporary files a run killed while writing its checkpoints (or summary, or plot) left in
    ``folder``; the line saying so, or None when there were none."""
    removed = remove_unfinished_writes(folder)
    if not removed:
        return None
    plural = "s" if len(removed) > 1 else ""
    return f"removed {len(removed)} unfinished write{plural} a killed run left in {folder}: " + ", ".join(
        p.name for p in removed)


class RunLog:
    """Prints a run's lines on stdout (above any progress bar) and, once :meth:`open` names a file, keeps them
    there too. A disabled log (a torchrun process other than rank 0) prints and keeps nothing."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.file: TextIO | None = None

    def open(self, path: str | os.PathLike[str]) -> None:
        """Keep every later line in the file ``path`` (created, or emptied)."""
        if self.enabled:
            self.file = open(path, "w", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def say(self, line: str = "") -> None:
        """Print ``line`` and keep it in the log file, flushed at once."""
        if not self.enabled:
            return
        tqdm.write(line, file=sys.stdout)
        if self.file is not None:
            self.file.write(line + "\n")
            self.file.flush()

    def close(self) -> None:
        """Close the log file; later lines are printed only."""
        if self.file is not None:
            self.file.close()
            self.file = None


class _Stderr(logging.Handler):
    """Writes records to the ``sys.stderr`` of the moment they are emitted."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(self.format(record) + "\n")


@contextlib.contextmanager
def debug_messages(enabled: bool) -> Iterator[None]:
    """Inside the block, with ``enabled``, print hookprune's log messages from the debug level up on stderr, each
    prefixed with its logger's name; the logger is restored afterwards."""
    if not enabled:
        yield
        return
    logger = logging.getLogger("hookprune")
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
