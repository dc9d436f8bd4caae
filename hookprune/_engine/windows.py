"""The epochs a policy covers: ``range(starting_epoch, ending_epoch, frequency)``, or an ``epochs`` list.

A window is never expanded into its epochs: a range answers membership in constant time whatever its
length, so a window of 1e9 epochs costs what a window of 10 costs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from typing import Any


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Window:
    """The epochs a policy covers: ``range(starting_epoch, ending_epoch, frequency)`` or a list."""

    __slots__ = ("ending_epoch", "epochs", "frequency", "listed", "starting_epoch")

    def __init__(self, epochs: Sequence[int] | None = None, starting_epoch: int | None = None,
                 ending_epoch: int | None = None, frequency: int | None = 1) -> None:
        if epochs is not None:
            epochs = list(epochs)
            if not epochs:
                raise ValueError("'epochs' must list at least one epoch")
            for e in epochs:
                if not _is_int(e) or e < 0:
                    raise ValueError(f"epochs must be integers >= 0, got {e!r}")
            if any(b <= a for a, b in itertools.pairwise(epochs)):
                raise ValueError(f"'epochs' must be strictly increasing, got {epochs}")
            self.epochs: range | frozenset[int] = frozenset(epochs)
            self.listed: tuple[int, ...] | None = tuple(epochs)
            self.starting_epoch, self.ending_epoch, self.frequency = epochs[0], epochs[-1] + 1, None
            return
        for key, value in (("starting_epoch", starting_epoch), ("ending_epoch", ending_epoch),
                           ("frequency", frequency)):
            if value is None:
                raise ValueError(f"'{key}' is required (or give 'epochs')")
            if not _is_int(value):
                raise ValueError(f"'{key}' must be an integer, got {value!r}")
        assert starting_epoch is not None and ending_epoch is not None and frequency is not None
        if starting_epoch < 0:
            raise ValueError(f"'starting_epoch' must be >= 0, got {starting_epoch}")
        if ending_epoch <= starting_epoch:
            raise ValueError(f"'ending_epoch' ({ending_epoch}) must be greater than 'starting_epoch' "
                             f"({starting_epoch})")
        if not 0 < frequency <= ending_epoch - starting_epoch:
            raise ValueError(f"'frequency' must be between 1 and ending_epoch - starting_epoch "
                             f"({ending_epoch - starting_epoch}), got {frequency}")
        self.epochs = range(starting_epoch, ending_epoch, frequency)
        self.listed = None
        self.starting_epoch, self.ending_epoch, self.frequency = starting_epoch, ending_epoch, frequency

    def __contains__(self, epoch: object) -> bool:
        return epoch in self.epochs

    def __iter__(self) -> Iterator[int]:
        """The epochs in increasing order, generated one at a time."""
        return iter(self.epochs if self.listed is None else self.listed)

    def __len__(self) -> int:
        return len(self.epochs)

    @property
    def first(self) -> int:
        """The first epoch covered."""
        return self.starting_epoch

    @property
    def last(self) -> int:
        """The last epoch covered."""
        if self.listed is not None:
            return self.listed[-1]
        assert isinstance(self.epochs, range)
        return self.epochs[-1]

    def intersects(self, other: Window) -> bool:
        """True when some epoch is in both windows (found arithmetically for two ranges)."""
        if self.listed is not None or other.listed is not None:
            small, large = (self, other) if len(self) <= len(other) else (other, self)
            return any(e in large for e in small)
        a, b = self.epochs, other.epochs
        assert isinstance(a, range) and isinstance(b, range)
        g = math.gcd(a.step, b.step)
        if (b.start - a.start) % g:
            return False
        # x = a.start + a.step * k with a.step * k = b.start - a.start (mod b.step)
        modulus = b.step // g
        k = ((b.start - a.start) // g) * pow(a.step // g, -1, modulus) % modulus if modulus > 1 else 0
        x, period = a.start + a.step * k, a.step * modulus
        low, high = max(a.start, b.start), min(a.stop, b.stop)
        if x < low:
            x += -(-(low - x) // period) * period
        return x < high

    def meta(self) -> dict[str, Any]:
        """Distiller's ``sched_metadata`` entry for this window."""
        return {"starting_epoch": self.starting_epoch, "ending_epoch": self.ending_epoch,
                "frequency": self.frequency}

    def __repr__(self) -> str:
        if self.listed is not None:
            return f"Window(epochs={list(self.listed)})"
        return f"Window({self.starting_epoch}, {self.ending_epoch}, {self.frequency})"
