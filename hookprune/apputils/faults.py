"""The faults a run meets outside its input, each told in one line: a full disk, a file the system refuses, and
under torchrun a rank that stopped answering."""

from __future__ import annotations

import os

from hookprune import distributed
from hookprune.apputils.checkpoint import DiskFullError

#: the most seconds the ranks still running wait for each other to tell which rank stopped answering
MAX_ROLL_CALL_S = 30.0


def fault_line(exc: BaseException) -> str | None:
    """The one line that tells ``exc``, a fault of the run's surroundings, or None when it is not one (a bug, to be
    shown whole). Under torchrun, after a collective failed, the ranks still running agree which ranks stopped
    answering, and the lowest of them alone tells it: the others get an empty line, to print nothing."""
    if isinstance(exc, DiskFullError):
        return str(exc)
    if isinstance(exc, OSError):
        names = " -> ".join(repr(os.fspath(n)) for n in (exc.filename, exc.filename2) if n is not None)
        reason = exc.strerror or str(exc) or type(exc).__name__
        return f"{reason}: {names}" if names else reason
    if distributed.is_collective_failure(exc):
        return _stopped_ranks(exc)
    return None


def _stopped_ranks(exc: BaseException) -> str:
    timeout = distributed.collective_timeout()
    window = MAX_ROLL_CALL_S if timeout is None else min(timeout, MAX_ROLL_CALL_S)
    waited = "torch's default timeout" if timeout is None else f"{timeout:g} s (--dist-timeout)"
    try:
        answered = distributed.responding_ranks(window)
    except RuntimeError:  # the roll call itself failed: say what the collective said
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"a collective operation failed (waiting at most {waited}): {reason}"
    if distributed.rank() != min(answered):
        return ""
    missing = [r for r in range(distributed.world_size()) if r not in answered]
    if not missing:
        return f"a collective operation failed after waiting {waited}, yet every rank still answers"
    ranks = f"rank {missing[0]}" if len(missing) == 1 else "ranks " + ", ".join(map(str, missing))
    return (f"{ranks} did not answer within {waited}: stopped, hung or dead; the job ends "
            f"(ranks still running: {', '.join(map(str, answered))})")
