"""Drop-filter regularization: in some training forward passes a random subset of each listed
convolution's filters is dropped and the survivors are scaled up, like dropout over whole filters."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from hookprune.errors import ArgumentError
from hookprune.hookspecs import hookimpl
from hookprune.pruning.checks import check_fraction
from hookprune.regularization.base import resolve_regims

#: Distiller's floor on the kept fraction of a layer's L1 mass that survivors are divided by.
MIN_SCALE_DIVISOR = 0.2


def filter_scales(weight: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Per-filter factors for one dropping pass: ``keep / max(0.2, kept L1 mass / total L1 mass)``.

    Dropped filters get 0; the survivors are divided by the fraction of the layer's L1 mass they hold,
    at least 0.2, so the layer's output keeps its scale (Distiller's rule).
    """
    l1 = weight.detach().abs().sum(dim=tuple(range(1, weight.dim())))
    total = l1.sum()
    kept = keep.to(l1.dtype)
    divisor = (l1 * kept).sum() / total if total > 0 else torch.ones((), dtype=l1.dtype, device=l1.device)
    return kept / divisor.clamp(min=MIN_SCALE_DIVISOR)


class _DropOnce:
    """A forward hook that scales one convolution's filters in its next training forward, then removes itself."""

    def __init__(self, keep: torch.Tensor) -> None:
        self.keep = keep
        self.handle: RemovableHandle | None = None

    def __call__(self, module: torch.nn.Conv2d, args: Any, output: torch.Tensor) -> torch.Tensor | None:
        if not module.training:
            return None
        if self.handle is not None:
            self.handle.remove()
        scales = filter_scales(module.weight, self.keep.to(module.weight.device)).view(-1, 1, 1).to(output.dtype)
        if module.bias is None:
            return output * scales
        bias = module.bias.view(-1, 1, 1)
        return (output - bias) * scales + bias


class DropFilterRegularizer:
    """Every ``frequency`` training minibatches of the policy's window, each listed Conv2d drops each of
    its filters with the probability ``reg_regims`` gives it, for that minibatch's forward pass only.

    The survivors are divided by the fraction of the layer's L1 mass they hold (at least 0.2), so the
    forward pass computes ``conv(x, W * keep / factor) + bias`` and the gradient reaching ``W`` is the
    one Distiller's ``Conv2dWithMask`` gave; the weights themselves are never modified. ``reg_regims``
    maps Conv2d weight names to drop probabilities in [0, 1); ``'*'`` gives the probability for every
    other Conv2d of the model (Distiller's regularizer acted on every Conv2d). Draws come from the
    instance's own generator (``seed``, else derived from ``torch.initial_seed()``), checkpointed with
    the minibatch count in ``state_dict()``.
    """

    #: Distiller's regularizer policy arg, accepted as its ``RegularizationPolicy`` accepts it; nothing is thresholded
    policy_args = {"keep_mask": bool}

    def __init__(self, name: str, model: torch.nn.Module, reg_regims: dict[str, float], frequency: int = 16,
                 seed: int | None = None) -> None:
        self.name = name
        if isinstance(frequency, bool) or not isinstance(frequency, int) or frequency < 1:
            raise ArgumentError("frequency", f"'frequency' must be an integer >= 1, got {frequency!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ArgumentError("seed", f"'seed' must be an integer, got {seed!r}")
        self.frequency = frequency
        self.generator = torch.Generator().manual_seed(torch.initial_seed() if seed is None else seed)
        self.minibatches = 0
        #: Conv2d module name -> the probability of dropping each of its filters
        self.drop_probabilities = self._conv_probabilities(model, reg_regims)
        self._pending: list[_DropOnce] = []

    @staticmethod
    def _conv_probabilities(model: torch.nn.Module, reg_regims: Any) -> dict[str, float]:
        explicit: dict[str, float] = {}
        default: float | None = None
        for param_name, (probability, _) in resolve_regims(reg_regims, model, "DropFilterRegularizer",
                                                           allow_star=True).items():
            argument = f"reg_regims['{param_name}']"
            value = check_fraction(argument, probability)
            if param_name == "*":
                default = value
                continue
            module_name, _, attribute = param_name.rpartition(".")
            module = model.get_submodule(module_name)
            if attribute != "weight" or not isinstance(module, torch.nn.Conv2d):
                raise ArgumentError(argument, f"{argument}: filters are dropped from Conv2d weights only; "
                                    f"'{param_name}' is the {attribute} of a {type(module).__name__}")
            explicit[module_name] = value
        probabilities: dict[str, float] = {}
        for module_name, module in model.named_modules():
            if module_name in explicit:
                probabilities[module_name] = explicit[module_name]
            elif default is not None and isinstance(module, torch.nn.Conv2d):
                probabilities[module_name] = default
        return probabilities

    def _remove_pending(self) -> None:
        for drop in self._pending:
            if drop.handle is not None:
                drop.handle.remove()
        self._pending.clear()

    @hookimpl
    def on_minibatch_begin(self, model: torch.nn.Module) -> None:
        """Count training minibatches; on every ``frequency``-th, draw the filters each layer keeps."""
        self._remove_pending()
        if not model.training:
            return
        self.minibatches += 1
        if self.minibatches % self.frequency:
            return
        for module_name, probability in self.drop_probabilities.items():
            module = model.get_submodule(module_name)
            keep = torch.rand(module.weight.shape[0], generator=self.generator) >= probability
            drop = _DropOnce(keep)
            drop.handle = module.register_forward_hook(drop)
            self._pending.append(drop)

    @hookimpl
    def on_minibatch_end(self) -> None:
        """Leave no hook behind when a layer was not run in training mode this minibatch."""
        self._remove_pending()

    def state_dict(self) -> dict[str, Any]:
        """The minibatch count and the generator's state, so a resumed run drops the same filters."""
        return {"minibatches": self.minibatches, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        self.minibatches = int(state.get("minibatches", 0))
        if "generator" in state:
            self.generator.set_state(state["generator"])
