"""A hook plugin (entry point group ``hookprune``): records every epoch that ends."""

from __future__ import annotations

from hookprune import hookimpl

EPOCHS_SEEN: list[int] = []


@hookimpl
def on_epoch_end(epoch: int) -> None:
    EPOCHS_SEEN.append(epoch)
