"""The epochs a policy covers: a range with a frequency, or a list."""

from __future__ import annotations

import itertools
from typing import Any


class Window:
    """The epochs a policy covers: ``range(starting_epoch, ending_epoch, frequency)`` or a list."""

    def __init__(self, epochs: list[int] | None = None, starting_epoch: int | None = None,
                 ending_epoch: int | None = None, frequency: int | None = 1) -> None:
        if epochs is not None:
            epochs = list(epochs)
            if not epochs:
                raise ValueError("'epochs' must list at least one epoch")
            for e in epochs:
                if not isinstance(e, int) or isinstance(e, bool) or e < 0:
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
            if not isinstance(value, int) or isinstance(value, bool):
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

    def __iter__(self):
        return iter(sorted(self.epochs) if self.listed is None else self.listed)

    def meta(self) -> dict[str, Any]:
        """Distiller's ``sched_metadata`` entry for this window."""
        return {"starting_epoch": self.starting_epoch, "ending_epoch": self.ending_epoch,
                "frequency": self.frequency}

    def __repr__(self) -> str:
        if self.listed is not None:
            return f"Window(epochs={list(self.listed)})"
        return f"Window({self.starting_epoch}, {self.ending_epoch}, {self.frequency})"
