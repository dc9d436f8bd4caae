"""The epochs a policy covers: ``range(starting_epoch, ending_epoch, frequency)``, or an ``epochs`` list; or the
minibatches (global steps) it covers, ``range(starting_step, ending_step, step_frequency)``.

A window is never expanded into its epochs: a range answers membership in constant time whatever its
length, so a window of 1e9 epochs costs what a window of 10 costs.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterator, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Window:
    """The epochs a policy covers: ``range(starting_epoch, ending_epoch, frequency)`` or a list."""

    __slots__ = ("ending_epoch", "epochs", "frequency", "listed", "starting_epoch")
    #: what the window counts: ``"epoch"``, or ``"step"`` for a :class:`StepWindow`
    unit = "epoch"

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

    @classmethod
    def of(cls, epochs: Sequence[int] | None = None, starting_epoch: int | None = None,
           ending_epoch: int | None = None, frequency: int | None = None, *, starting_step: int | None = None,
           ending_step: int | None = None, step_frequency: int | None = None) -> Window:
        """The window ``add_policy``'s arguments describe: ``epochs``, the range (``frequency`` 1 by default), or
        the step range; ValueError naming both when two of these are mixed."""
        step_keys = [k for k, v in (("starting_step", starting_step), ("ending_step", ending_step),
                                    ("step_frequency", step_frequency)) if v is not None]
        if step_keys:
            epoch_keys = [k for k, v in (("epochs", epochs), ("starting_epoch", starting_epoch),
                                         ("ending_epoch", ending_epoch), ("frequency", frequency)) if v is not None]
            if epoch_keys:
                given = f"{', '.join(map(repr, epoch_keys))} and {', '.join(map(repr, step_keys))}"
                raise ValueError(f"add_policy: give either epochs or steps, not both ({given} were given)")
            return StepWindow(starting_step, ending_step, 1 if step_frequency is None else step_frequency)
        if epochs is not None:
            given = [k for k, v in (("starting_epoch", starting_epoch), ("ending_epoch", ending_epoch),
                                    ("frequency", frequency)) if v is not None]
            if given:
                raise ValueError(f"add_policy: give either 'epochs' or starting_epoch/ending_epoch/frequency, not "
                                 f"both ('epochs' and {', '.join(repr(g) for g in given)} were given)")
            return cls(epochs=epochs)
        return cls(starting_epoch=starting_epoch, ending_epoch=ending_epoch,
                   frequency=1 if frequency is None else frequency)

    def __contains__(self, epoch: object) -> bool:
        return epoch in self.epochs

    def __iter__(self) -> Iterator[int]:
        """The epochs in increasing order, generated one at a time."""
        return iter(self.epochs if self.listed is None else self.listed)

    def __len__(self) -> int:
        """The number of epochs covered (beyond ``sys.maxsize``, Python's ``len`` cannot say)."""
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
        """True when some epoch is in both windows."""
        return self.first_common(other) is not None

    def first_common(self, other: Window) -> int | None:
        """The first epoch in both windows, or None (found arithmetically for two ranges)."""
        if self.listed is not None or other.listed is not None:
            if self.listed is not None and other.listed is not None:
                small, large = (self, other) if len(self.listed) <= len(other.listed) else (other, self)
            else:
                small, large = (self, other) if self.listed is not None else (other, self)
            return next((e for e in small if e in large), None)
        a, b = self.epochs, other.epochs
        assert isinstance(a, range) and isinstance(b, range)
        g = math.gcd(a.step, b.step)
        if (b.start - a.start) % g:
            return None
        # x = a.start + a.step * k with a.step * k = b.start - a.start (mod b.step)
        modulus = b.step // g
        k = ((b.start - a.start) // g) * pow(a.step // g, -1, modulus) % modulus if modulus > 1 else 0
        x, period = a.start + a.step * k, a.step * modulus
        low, high = max(a.start, b.start), min(a.stop, b.stop)
        if x < low:
            x += -(-(low - x) // period) * period
        return x if x < high else None

    def meta(self) -> dict[str, Any]:
        """Distiller's ``sched_metadata`` entry for this window."""
        return {"starting_epoch": self.starting_epoch, "ending_epoch": self.ending_epoch,
                "frequency": self.frequency}

    def __repr__(self) -> str:
        if self.listed is not None:
            return f"Window(epochs={list(self.listed)})"
        return f"Window({self.starting_epoch}, {self.ending_epoch}, {self.frequency})"


#: the keys of a step window, as a schedule's policy and ``add_policy`` spell them
STEP_KEYS = ("starting_step", "ending_step", "step_frequency")


class StepWindow(Window):
    """The minibatches a policy covers, counted over the whole run (the scheduler's ``global_step``):
    ``range(starting_step, ending_step, step_frequency)``. Its instance hears the minibatch events of those steps,
    and no epoch event."""

    __slots__ = ()
    unit = "step"

    def __init__(self, starting_step: int | None, ending_step: int | None, step_frequency: int | None = 1) -> None:
        try:
            super().__init__(starting_epoch=starting_step, ending_epoch=ending_step, frequency=step_frequency)
        except ValueError as exc:
            text = str(exc)
            for epoch_key, step_key in (("starting_epoch", "starting_step"), ("ending_epoch", "ending_step"),
                                        ("frequency", "step_frequency"), ("(or give 'epochs')", "")):
                text = text.replace(epoch_key, step_key)
            raise ValueError(text.rstrip()) from None

    @property
    def starting_step(self) -> int:
        """The first step covered."""
        return self.starting_epoch

    @property
    def ending_step(self) -> int:
        """The end of the step range (not covered)."""
        return self.ending_epoch

    @property
    def step_frequency(self) -> int:
        """Every how many steps the policy acts."""
        assert self.frequency is not None
        return self.frequency

    def meta(self) -> dict[str, Any]:
        """The window's keys, as a schedule spells them."""
        return {"starting_step": self.starting_step, "ending_step": self.ending_step,
                "step_frequency": self.step_frequency}

    def __repr__(self) -> str:
        return f"StepWindow({self.starting_step}, {self.ending_step}, {self.step_frequency})"


class WindowIndex(Generic[T]):
    """The windows of one instance's policies, each with its value, that no two of which share an epoch;
    found by epoch, and checked for a shared epoch, in logarithmic time, so thousands of policies load in
    time linear in their number."""

    def __init__(self) -> None:
        self._listed: dict[int, T] = {}
        self._listed_sorted: list[int] = []
        self._starts: list[int] = []
        self._ranges: list[tuple[Window, T]] = []
        #: the longest ``last - first`` of the range windows: a range covering an epoch starts at most this early
        self._span = 0

    def _range_candidates(self, first: int, last: int) -> list[tuple[Window, T]]:
        """The range windows whose first epoch lies in ``[first - span, last]``: the only ones that can meet
        ``[first, last]``."""
        low = bisect.bisect_left(self._starts, first - self._span)
        high = bisect.bisect_right(self._starts, last)
        return self._ranges[low:high]

    def at(self, epoch: int) -> T | None:
        """The value of the window covering ``epoch``, or None."""
        found = self._listed.get(epoch)
        if found is not None:
            return found
        for window, value in self._range_candidates(epoch, epoch):
            if epoch in window:
                return value
        return None

    def conflict(self, window: Window) -> tuple[int, T] | None:
        """The first epoch ``window`` shares with a window of the index, and that window's value; None if none."""
        if window.listed is not None:
            for epoch in window.listed:
                value = self.at(epoch)
                if value is not None:
                    return epoch, value
            return None
        found: list[tuple[int, T]] = []
        low = bisect.bisect_left(self._listed_sorted, window.first)
        high = bisect.bisect_right(self._listed_sorted, window.last)
        for epoch in self._listed_sorted[low:high]:
            if epoch in window:
                found.append((epoch, self._listed[epoch]))
                break
        for other, value in self._range_candidates(window.first, window.last):
            common = other.first_common(window)
            if common is not None:
                found.append((common, value))
        return min(found, key=lambda f: f[0]) if found else None

    def add(self, window: Window, value: T) -> None:
        """Index ``window`` (which must share no epoch with those already in) with ``value``."""
        if window.listed is not None:
            for epoch in window.listed:
                self._listed[epoch] = value
                bisect.insort(self._listed_sorted, epoch)
            return
        position = bisect.bisect_right(self._starts, window.first)
        self._starts.insert(position, window.first)
        self._ranges.insert(position, (window, value))
        self._span = max(self._span, window.last - window.first)
