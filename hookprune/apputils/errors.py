"""The error of a command line the example application cannot run."""

from __future__ import annotations


class AppError(ValueError):
    """A command line the application cannot run; ``str(err)`` is one line naming the option at fault."""
