"""Distiller's thinning extensions for schedules: ``FilterRemover``, ``ChannelRemover``, ``StructureRemover``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from hookprune.errors import ArgumentError, suggest
from hookprune.hookspecs import hookimpl
from hookprune.thinning.graph import ThinningError
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


def _dtype(name: str) -> torch.dtype:
    """The torch dtype called ``name`` (``float32``), as :meth:`StructureRemover.state_dict` writes it."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"the saved thinning state names no torch dtype: {name!r}")
    return dtype


class StructureRemover:
    """Physically remove zero structures once, at the first minibatch of each epoch of its policy.

    ``thinning_func_str`` is ``remove_filters`` (all-zero filters, with the BatchNorm entries, biases and
    consumer input channels that depend on them) or ``remove_channels`` (input channels every reader
    weights by zero, with the filters that produce them). As in Distiller, it acts in
    ``on_minibatch_begin``, after every pruner set its masks in ``on_epoch_begin``; masked weights count
    as zero. ``arch`` is accepted for Distiller's schedules (the live model is what gets analysed).

    The model is traced with an example input of the right shape, taken from, in this order: ``input_shape``
    (one sample's shape, without the batch dimension); ``dataset``, one of :data:`DATASET_INPUT_SHAPES`; or,
    when neither is given, the model's own input: the shapes and dtypes of the positional tensors of the
    first forward call it sees (training or evaluation). A policy epoch that begins before any forward call
    thins at its second minibatch, once the first has shown the input.
    """

    refuses_sharding: str | None = "it removes filters and channels from the layers, whose shards FSDP2 cannot resize"

    def __init__(self, name: str, thinning_func_str: str, arch: str | None = None, dataset: str | None = None,
                 input_shape: list[int] | None = None, model: torch.nn.Module | None = None) -> None:
        if thinning_func_str not in THINNING_FUNCTIONS:
            raise ArgumentError("thinning_func_str", f"'thinning_func_str' must be one of "
                                f"{', '.join(THINNING_FUNCTIONS)}, got {thinning_func_str!r}"
                                f"{suggest(thinning_func_str, THINNING_FUNCTIONS)}")
        if dataset is not None and input_shape is not None:
            raise ArgumentError("input_shape", "give 'dataset' or 'input_shape', not both: each sets the shape of "
                                "the example input the model is traced with")
        if dataset is not None and dataset not in DATASET_INPUT_SHAPES:
            raise ArgumentError("dataset", f"unknown dataset {dataset!r}{suggest(dataset, DATASET_INPUT_SHAPES)}; "
                                f"known: {', '.join(DATASET_INPUT_SHAPES)} (or give 'input_shape', or neither to "
                                "use the model's own input)")
        if input_shape is not None and (
                not isinstance(input_shape, list | tuple) or not input_shape
                or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in input_shape)):
            raise ArgumentError("input_shape", f"'input_shape' must be a list of positive sizes (one sample's shape, "
                                f"without the batch dimension), got {input_shape!r}")
        self.name = name
        self.thinning_func_str = thinning_func_str
        self.arch = arch
        self.dataset = dataset
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.thinned_epoch: int | None = None
        #: the shapes and dtypes of the positional tensors of the model's first forward call, when it is watched
        self.seen_inputs: list[tuple[tuple[int, ...], torch.dtype]] | None = None
        self._watch: Any = None
        self._unusable_call = False
        if self.input_shape is None and dataset is None and model is not None:
            self._watch = model.register_forward_pre_hook(self._see)

    def _see(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        """Remember the shapes of the first forward call's positional tensors (two samples of the batch)."""
        if not args or not all(isinstance(a, torch.Tensor) and a.dim() > 0 for a in args):
            self._unusable_call = True
            return
        self.seen_inputs = [((min(int(a.shape[0]), 2), *a.shape[1:]), a.dtype) for a in args]
        if self._watch is not None:
            self._watch.remove()
            self._watch = None

    def knows_input(self) -> bool:
        """True when the example input's shape is known: given, or seen in a forward call."""
        return self.input_shape is not None or self.dataset is not None or self.seen_inputs is not None

    def example_input(self, model: torch.nn.Module) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Zeros of the example input's shape on the model's device: two samples of ``input_shape`` or the
        dataset's shape in the model's dtype, or the tensors the model was seen called with, in their dtypes."""
        first = next(model.parameters(), None)
        device = first.device if first is not None else None
        dtype = first.dtype if first is not None and first.is_floating_point() else None
        shape = self.input_shape or (DATASET_INPUT_SHAPES[self.dataset] if self.dataset is not None else None)
        if shape is not None:
            return torch.zeros((2, *shape), device=device, dtype=dtype)
        if self.seen_inputs is None:
            raise ThinningError(f"{type(self).__name__} '{self.name}': the model's input shape is unknown (no "
                                "forward call seen yet); give 'input_shape' or 'dataset', or run a forward pass "
                                "first")
        inputs = tuple(torch.zeros(s, device=device, dtype=d) for s, d in self.seen_inputs)
        return inputs[0] if len(inputs) == 1 else inputs

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
        if self.thinned_epoch == epoch or not self.knows_input():
            return
        self.thinned_epoch = epoch
        self.thin(model, scheduler.masks, optimizer)

    @hookimpl
    def on_epoch_end(self, epoch: int) -> None:
        """Refuse to let an epoch of the policy pass unthinned because the model was never called."""
        if self.thinned_epoch != epoch and not self.knows_input():
            what = ("with the model called only with other than positional tensors (keyword arguments, say), which "
                    "cannot show its input shape") if self._unusable_call else "without a forward call of the model"
            raise ThinningError(f"{type(self).__name__} '{self.name}': epoch {epoch} ended {what}, so it was not "
                                "thinned; give 'input_shape' or 'dataset'")

    def state_dict(self) -> dict[str, Any]:
        """The epoch it last thinned in, so a resumed run does not thin that epoch twice, and the input shapes
        seen, so that it thins at the same minibatch."""
        state: dict[str, Any] = {"thinned_epoch": self.thinned_epoch}
        if self.seen_inputs is not None:
            state["seen_inputs"] = [{"shape": list(s), "dtype": str(d).removeprefix("torch.")}
                                    for s, d in self.seen_inputs]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.thinned_epoch = state.get("thinned_epoch")
        seen = state.get("seen_inputs")
        if seen is not None:
            self.seen_inputs = [(tuple(int(n) for n in item["shape"]), _dtype(item["dtype"])) for item in seen]
            if self._watch is not None:
                self._watch.remove()
                self._watch = None


class FilterRemover(StructureRemover):
    """Distiller's name for :class:`StructureRemover` in filter-removal schedules (same arguments)."""


class ChannelRemover(StructureRemover):
    """Distiller's name for :class:`StructureRemover` in channel-removal schedules (same arguments)."""
