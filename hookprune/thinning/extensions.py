"""Distiller's thinning extensions for schedules: ``FilterRemover``, ``ChannelRemover``, ``StructureRemover``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from hookprune.errors import ArgumentError, suggest
from hookprune.hookspecs import hookimpl
from hookprune.thinning.remove import THINNING_FUNCTIONS, Recipe, plan_thinning

if TYPE_CHECKING:
    from hookprune.contract import SchedulerView as CompressionScheduler

#: Input shape (without the batch dimension) of each dataset Distiller's schedules name.
DATASET_INPUT_SHAPES: dict[str, tuple[int, ...]] = {
    "imagenet": (3, 224, 224),
    "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32),
    "mnist": (1, 28, 28),
}


class StructureRemover:
    """Physically remove zero structures once, at the first minibatch of each epoch of its policy.

    ``thinning_func_str`` is ``remove_filters`` (all-zero filters, with the BatchNorm entries, biases and
    consumer input channels that depend on them) or ``remove_channels`` (input channels every reader
    weights by zero, with the filters that produce them). As in Distiller, it acts in
    ``on_minibatch_begin``, after every pruner set its masks in ``on_epoch_begin``; masked weights count
    as zero. ``dataset`` gives the shape of the example input the model is traced with; ``arch`` is
    accepted for Distiller's schedules (the live model is what gets analysed).
    """

    refuses_sharding: str | None = "it removes filters and channels from the layers, whose shards FSDP2 cannot resize"

    def __init__(self, name: str, thinning_func_str: str, arch: str, dataset: str) -> None:
        if thinning_func_str not in THINNING_FUNCTIONS:
            raise ArgumentError("thinning_func_str", f"'thinning_func_str' must be one of "
                                f"{', '.join(THINNING_FUNCTIONS)}, got {thinning_func_str!r}"
                                f"{suggest(thinning_func_str, THINNING_FUNCTIONS)}")
        if dataset not in DATASET_INPUT_SHAPES:
            raise ArgumentError("dataset", f"unknown dataset {dataset!r}{suggest(dataset, DATASET_INPUT_SHAPES)}; "
                                f"known: {', '.join(DATASET_INPUT_SHAPES)}")
        self.name = name
        self.thinning_func_str = thinning_func_str
        self.arch = arch
        self.dataset = dataset
        self.thinned_epoch: int | None = None

    def example_input(self, model: torch.nn.Module) -> torch.Tensor:
        """A batch of two zero images of the dataset's shape, on the model's device and in its dtype."""
        first = next(model.parameters(), None)
        device = first.device if first is not None else None
        dtype = first.dtype if first is not None and first.is_floating_point() else None
        return torch.zeros((2, *DATASET_INPUT_SHAPES[self.dataset]), device=device, dtype=dtype)

    def thin(self, model: torch.nn.Module, masks: Any = None,
             optimizer: torch.optim.Optimizer | None = None) -> Recipe | None:
        """Run the thinning function now; returns the recipe (also in ``model.thinning_recipes``), or None
        when nothing could be removed."""
        plan = plan_thinning(model, self.thinning_func_str, self.example_input(model), masks)
        return plan.execute(optimizer, masks)

    @hookimpl
    def on_minibatch_begin(self, scheduler: CompressionScheduler, model: torch.nn.Module,
                           optimizer: torch.optim.Optimizer | None, epoch: int) -> None:
        """Thin once per epoch, before the engine applies the masks pruners set in ``on_epoch_begin``."""
        if self.thinned_epoch == epoch:
            return
        self.thinned_epoch = epoch
        self.thin(model, scheduler.masks, optimizer)

    def state_dict(self) -> dict[str, Any]:
        """The epoch it last thinned in, so a resumed run does not thin that epoch twice."""
        return {"thinned_epoch": self.thinned_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.thinned_epoch = state.get("thinned_epoch")


class FilterRemover(StructureRemover):
    """Distiller's name for :class:`StructureRemover` in filter-removal schedules (same arguments)."""


class ChannelRemover(StructureRemover):
    """Distiller's name for :class:`StructureRemover` in channel-removal schedules (same arguments)."""
