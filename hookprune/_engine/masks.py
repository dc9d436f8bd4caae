"""Boolean masks: one byte per element, applied in place with one fused multiply per device and dtype.

A mask multiplies a floating-point tensor through its ``uint8`` view (the same byte, no copy): torch's
CPU kernels convert ``uint8`` to float in vectorized loops but ``bool`` one element at a time, about
four times slower for float32 (``benchmarks/overhead.py`` measures the per-step cost).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any

import torch

from hookprune._engine.params import ParamIndex

_FLAGS = ("mask_on_forward_only", "use_double_copies", "mask_gradients")
_FORWARD = "forward"
_UNSET = object()


def multiplier(mask: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
    """What multiplies ``tensor`` to apply the boolean ``mask``: its ``uint8`` view for a floating-point
    tensor (the same values, multiplied faster on the CPU), the mask itself otherwise."""
    return mask.view(torch.uint8) if tensor.is_floating_point() and mask.dtype == torch.bool else mask


def _multiply_in_place(groups: list[tuple[list[torch.Tensor], list[torch.Tensor]]]) -> None:
    """``tensors *= multipliers`` for each group, one fused call per group, outside autograd.

    Grad mode is switched directly rather than through ``torch.no_grad()``, whose context manager costs
    more than the multiply itself for a small model."""
    enabled = torch.is_grad_enabled()
    torch._C._set_grad_enabled(False)
    try:
        for tensors, multipliers in groups:
            torch._foreach_mul_(tensors, multipliers)
    finally:
        torch._C._set_grad_enabled(enabled)


class _Flag:
    """A masker option whose every change tells the mask store to rebuild what it derives from the options."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, masker: ParameterMasker | None, owner: type | None = None) -> Any:
        if masker is None:
            return self
        return masker.__dict__[self.name]

    def __set__(self, masker: ParameterMasker, value: bool) -> None:
        if masker.__dict__.get(self.name, _UNSET) is not value:
            masker.__dict__[self.name] = value
            masker._store.flags_changed()


def as_keep_mask(mask: Any, param: torch.Tensor, what: str) -> torch.Tensor:
    """``mask`` as a detached boolean tensor on ``param``'s device (non-zero keeps); a ValueError saying
    ``what`` has the wrong shape when it does not match ``param``."""
    mask = torch.as_tensor(mask)
    if tuple(mask.shape) != tuple(param.shape):
        raise ValueError(f"{what} has shape {tuple(mask.shape)}, the parameter {tuple(param.shape)}")
    if mask.dtype != torch.bool:
        mask = mask != 0
    return mask.detach().to(param.device)


class ParameterMasker:
    """Distiller's per-parameter masker (``zeros_mask_dict[name]``), backed by the scheduler's masks.

    Setting ``.mask`` stores a boolean copy, whatever dtype a Distiller pruner hands over.
    """

    mask_on_forward_only = _Flag()
    use_double_copies = _Flag()
    mask_gradients = _Flag()

    def __init__(self, store: MaskStore, param_name: str) -> None:
        self._store = store
        self.param_name = param_name
        self.mask_on_forward_only = False
        self.use_double_copies = False
        self.mask_gradients = False
        self.is_regularization_mask = False
        self.unmasked_copy: torch.Tensor | None = None
        self.backward_hook_handle: Any = None

    @property
    def mask(self) -> torch.Tensor | None:
        return self._store.get(self.param_name)

    @mask.setter
    def mask(self, value: torch.Tensor | None) -> None:
        if value is None:
            self._store.pop(self.param_name, None)
        else:
            self._store[self.param_name] = value

    def mask_tensor(self, tensor: torch.Tensor) -> None:
        mask = self.mask
        if mask is not None:
            with torch.no_grad():
                tensor.mul_(multiplier(mask, tensor))

    def apply_mask(self, parameter: torch.Tensor) -> torch.Tensor:
        """Mask ``parameter`` in place, keeping a dense copy first when double copies are on."""
        if self.mask is None:
            return parameter
        if self.use_double_copies:
            self.unmasked_copy = parameter.detach().clone()
        self.mask_tensor(parameter)
        self._store._dirty.discard(self.param_name)
        if self.is_regularization_mask:
            self.mask = None
        return parameter

    def mask_gradient(self, gradient: torch.Tensor) -> torch.Tensor | None:
        mask = self.mask
        return None if mask is None else gradient.mul(multiplier(mask, gradient))

    def revert_weights(self, parameter: torch.Tensor) -> None:
        """Restore the dense copy saved by :meth:`apply_mask` (double copies)."""
        if not self.use_double_copies or self.unmasked_copy is None:
            return
        with torch.no_grad():
            parameter.copy_(self.unmasked_copy)
        self.unmasked_copy = None


class MaskerDict(Mapping[str, ParameterMasker]):
    """Distiller's ``zeros_mask_dict``: a masker for every parameter, looked up by any spelling."""

    def __init__(self, store: MaskStore) -> None:
        self._store = store
        self._maskers = {name: ParameterMasker(store, name) for name in store.index}

    def __getitem__(self, name: str) -> ParameterMasker:
        return self._maskers[self._store.resolve(name)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._maskers)

    def __len__(self) -> int:
        return len(self._maskers)


class MaskStore(MutableMapping[str, torch.Tensor]):
    """``scheduler.masks``: parameter name -> boolean keep-mask (True keeps, False zeroes).

    Assigning a mask validates its shape, stores it as ``torch.bool`` on the parameter's device and
    marks it pending, so the engine applies it before the next forward pass.

    What every minibatch needs is derived once and kept until a mask or a masker's option changes:
    the fused groups applied after each optimizer step, and the names carrying each option.
    """

    def __init__(self, model: torch.nn.Module, index: ParamIndex | None = None) -> None:
        self.index = index or ParamIndex(model)
        self._masks: dict[str, torch.Tensor] = {}
        self._dirty: set[str] = set()
        self._groups: list[tuple[list[torch.Tensor], list[torch.Tensor]]] | None = None
        self._group_devices: list[torch.device] = []
        self._flag_lists: dict[str, list[str]] | None = None
        self.maskers = MaskerDict(self)

    def resolve(self, name: str) -> str:
        actual = self.index.resolve(name) if isinstance(name, str) else None
        if actual is None:
            raise KeyError(self.index.unknown_message(str(name)))
        return actual

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._masks[self.resolve(name)]

    def __setitem__(self, name: str, mask: torch.Tensor) -> None:
        actual = self.resolve(name)
        self._masks[actual] = as_keep_mask(mask, self.index.params[actual], f"mask for '{actual}'")
        self._dirty.add(actual)
        self.flags_changed()

    def __delitem__(self, name: str) -> None:
        actual = self.resolve(name)
        del self._masks[actual]
        self._dirty.discard(actual)
        self.flags_changed()

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def mark_all_pending(self) -> None:
        """Apply every mask again before the next forward pass (after loading state, say)."""
        self._dirty.update(self._masks)

    def _flags(self) -> dict[str, list[str]]:
        """For each masker option, the masked parameters that have it set, in mask order; under ``_FORWARD``,
        those with either option applied before a forward pass (cached until a mask or an option changes)."""
        lists = self._flag_lists
        if lists is None:
            maskers = self.maskers._maskers
            lists = {f: [name for name in self._masks if getattr(maskers[name], f)] for f in _FLAGS}
            lists[_FORWARD] = [name for name in self._masks
                               if maskers[name].mask_on_forward_only or maskers[name].use_double_copies]
            self._flag_lists = lists
        return lists

    def _flagged(self, flag: str) -> list[str]:
        """The masked parameters whose masker has ``flag`` set, in mask order (cached)."""
        return self._flags()[flag]

    @staticmethod
    def _fused_mul(tensors: list[torch.Tensor], masks: list[torch.Tensor]) -> None:
        groups: dict[tuple[torch.device, torch.dtype], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        for tensor, mask in zip(tensors, masks, strict=True):
            ts, ms = groups.setdefault((tensor.device, tensor.dtype), ([], []))
            ts.append(tensor)
            ms.append(multiplier(mask if mask.device == tensor.device else mask.to(tensor.device), tensor))
        _multiply_in_place(list(groups.values()))

    def apply(self, names: Iterable[str] | None = None) -> None:
        """Zero the masked elements of the named parameters (all masked ones when None) in place."""
        selected = list(self._masks) if names is None else [self.resolve(n) for n in names]
        selected = [n for n in selected if n in self._masks]
        maskers = self.maskers._maskers
        for name in selected:
            if maskers[name].use_double_copies:
                maskers[name].unmasked_copy = self.index.params[name].detach().clone()
        self._fused_mul([self.index.params[n] for n in selected], [self._masks[n] for n in selected])
        self._dirty.difference_update(selected)

    def apply_pending(self, forward_policies_active: bool) -> None:
        """Before a forward pass: apply new masks, and forward-only / double-copy masks while a
        pruning policy is active."""
        if not forward_policies_active:
            if self._dirty:
                self.apply([n for n in self._masks if n in self._dirty])
            return
        forward = self._flags()[_FORWARD]
        if self._dirty or forward:
            names = self._dirty.union(forward)
            self.apply([n for n in self._masks if n in names])

    def apply_after_step(self) -> None:
        """After ``optimizer.step()``: re-mask every weight except forward-only ones, fused."""
        groups = self._groups
        if groups is None:
            groups = self._build_groups()
        else:
            for (params, _), device in zip(groups, self._group_devices, strict=True):
                if params[0].device != device:
                    groups = self._build_groups()
                    break
        if groups:
            _multiply_in_place(groups)
        if self._dirty:
            self._dirty.intersection_update(self._flagged("mask_on_forward_only"))

    def _build_groups(self) -> list[tuple[list[torch.Tensor], list[torch.Tensor]]]:
        """The parameters re-masked after each step and their multipliers, one group per device and dtype."""
        maskers = self.maskers._maskers
        groups: dict[tuple[torch.device, torch.dtype], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        for name, mask in self._masks.items():
            if maskers[name].mask_on_forward_only:
                continue
            param = self.index.params[name]
            if mask.device != param.device:
                mask = self._masks[name] = mask.to(param.device)
            params, multipliers = groups.setdefault((param.device, param.dtype), ([], []))
            params.append(param)
            multipliers.append(multiplier(mask, param))
        self._groups = list(groups.values())
        self._group_devices = [params[0].device for params, _ in self._groups]
        return self._groups

    def flags_changed(self) -> None:
        """Forget what was derived from the masks and the maskers' options (a masker calls this when an
        option changes)."""
        self._groups = None
        self._flag_lists = None

    def before_optimizer_step(self) -> None:
        """Between backward and ``optimizer.step()``: mask gradients, then restore double copies, for the
        maskers with those options (nothing to do, and nearly free, when none has them)."""
        lists = self._flags()
        if lists["mask_gradients"]:
            self.mask_gradients()
        if lists["use_double_copies"]:
            self.revert_double_copies()

    def mask_gradients(self) -> None:
        """Zero the gradients of masked elements for maskers with ``mask_gradients``."""
        flagged = self._flagged("mask_gradients")
        if not flagged:
            return
        names = [n for n in flagged if self.index.params[n].grad is not None]
        self._fused_mul([self.index.params[n].grad for n in names], [self._masks[n] for n in names])

    def revert_double_copies(self) -> None:
        """Give double-copy parameters their dense weights back before the optimizer updates them."""
        for name in self._flagged("use_double_copies"):
            self.maskers._maskers[name].revert_weights(self.index.params[name])

    def state_dict(self) -> dict[str, Any]:
        flags = {
            name: {flag: getattr(m, flag) for flag in _FLAGS}
            for name, m in self.maskers._maskers.items()
            if any(getattr(m, flag) for flag in _FLAGS)
        }
        return {"masks": {name: mask.clone() for name, mask in self._masks.items()}, "flags": flags}

    def load_masks(self, masks: Mapping[str, torch.Tensor | None]) -> None:
        """Replace every mask by ``masks`` (names in any spelling; None or float masks accepted)."""
        resolved = {}
        for name, mask in masks.items():
            if mask is not None:
                resolved[self.resolve(name)] = mask
        self._masks.clear()
        self._dirty.clear()
        self.flags_changed()
        for name, mask in resolved.items():
            self[name] = mask

    def load_flags(self, flags: Mapping[str, Mapping[str, bool]]) -> None:
        for masker in self.maskers._maskers.values():
            for flag in _FLAGS:
                setattr(masker, flag, False)
        for name, values in flags.items():
            masker = self.maskers[name]
            for flag in _FLAGS:
                setattr(masker, flag, bool(values.get(flag, False)))
        self.flags_changed()
