"""Boolean masks: one byte per element, applied in place with one fused multiply per device and dtype.

A mask multiplies a floating-point tensor through its ``uint8`` view (the same byte, no copy): torch's
CPU kernels convert ``uint8`` to float in vectorized loops but ``bool`` one element at a time, about
four times slower for float32. Multiplying by a copy of the mask in the parameter's own dtype is about
twice as fast again on the CPU, so the re-masking after each optimizer step uses such copies for the
smallest masks, within :data:`FLOAT_MULTIPLIER_BYTES` in all: a small model (where the per-step cost
matters most) is re-masked at float speed, and a large one keeps one byte per element plus at most that
budget (``benchmarks/overhead.py`` measures both).

A parameter FSDP2 shards (a DTensor, :mod:`hookprune.sharding`) has its mask on this rank's shard only: the
store keeps the local mask, multiplies the local tensor, and hands out the local mask.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any

import torch

from hookprune import sharding
from hookprune._engine.params import ParamIndex

#: the options a masked parameter may carry (Distiller's names): a mask applied only before forward passes (the
#: optimizer keeps updating the pruned weights), the dense weights restored before each optimizer step, the
#: gradients of masked elements zeroed
OPTIONS = ("mask_on_forward_only", "use_double_copies", "mask_gradients")
_FORWARD = "forward"
#: the most bytes the copies of masks in their parameters' dtype may take in all (see the module's docstring):
#: 1 MiB, a quarter of a million float32 elements, so masks never hold more than their one byte per element
#: plus this
FLOAT_MULTIPLIER_BYTES = 1 << 20


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


def as_keep_mask(mask: Any, param: torch.Tensor, what: str) -> torch.Tensor:
    """``mask`` as a detached boolean tensor on ``param``'s device (non-zero keeps); a ValueError saying
    ``what`` has the wrong shape when it does not match ``param``. A DTensor mask (saved by a sharded run) is
    gathered whole first (a collective)."""
    if sharding.is_sharded(mask):
        mask = mask.full_tensor()
    mask = torch.as_tensor(mask)
    if tuple(mask.shape) != tuple(param.shape):
        raise ValueError(f"{what} has shape {tuple(mask.shape)}, the parameter {tuple(param.shape)}")
    if mask.dtype != torch.bool:
        mask = mask != 0
    return mask.detach().to(param.device)


class MaskStore(MutableMapping[str, torch.Tensor]):
    """``scheduler.masks``: parameter name -> boolean keep-mask (True keeps, False zeroes).

    Assigning a mask validates its shape, stores it as ``torch.bool`` on the parameter's device and
    marks it pending, so the engine applies it before the next forward pass. Every parameter may carry
    the :data:`OPTIONS` (:meth:`set_options`), which decide when its mask is applied.

    For a parameter sharded by FSDP2 the store holds this rank's shard of the mask and ``masks[name]`` returns
    it (a plain tensor shaped like the parameter's local tensor); an assigned mask may be a DTensor, the whole
    parameter's shape (each rank keeps its rows) or the local shard's shape (:func:`hookprune.sharding.local_mask`).

    What every minibatch needs is derived once and kept until a mask or an option changes: the fused
    groups applied after each optimizer step, and the names carrying each option.
    """

    def __init__(self, model: torch.nn.Module, index: ParamIndex | None = None) -> None:
        self.index = index or ParamIndex(model)
        self._masks: dict[str, torch.Tensor] = {}
        self._dirty: set[str] = set()
        self._groups: list[tuple[list[torch.Tensor], list[torch.Tensor]]] | None = None
        self._group_devices: list[torch.device] = []
        self._flag_lists: dict[str, list[str]] | None = None
        #: parameter name -> the options set for it (only those that are True)
        self._options: dict[str, frozenset[str]] = {}
        #: parameter name -> its dense weights, kept while ``use_double_copies`` masks it for a forward pass
        self.dense_copies: dict[str, torch.Tensor] = {}
        #: the parameters FSDP2 shards (DTensors), by name: their masks and multiplies are on the local shard
        self.sharded = sharding.sharded_params(self.index.params)
        #: groups of sharded parameters re-masked after each step, their local tensors looked up at each step
        self._sharded_groups: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
        #: parameter name -> (the boolean mask, its copy in the parameter's dtype) for the re-masking after a step
        self._float_copies: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def resolve(self, name: str) -> str:
        """The model's spelling of ``name``; KeyError naming the nearest parameters when there is none."""
        actual = self.index.resolve(name) if isinstance(name, str) else None
        if actual is None:
            raise KeyError(self.index.unknown_message(str(name)))
        return actual

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._masks[self.resolve(name)]

    def __setitem__(self, name: str, mask: torch.Tensor) -> None:
        actual = self.resolve(name)
        param = self.index.params[actual]
        if self.sharded and actual in self.sharded:
            self._masks[actual] = sharding.local_mask(mask, param, f"mask for '{actual}'")
        else:
            self._masks[actual] = as_keep_mask(mask, param, f"mask for '{actual}'")
        self._dirty.add(actual)
        self._changed()

    def __delitem__(self, name: str) -> None:
        actual = self.resolve(name)
        del self._masks[actual]
        self._dirty.discard(actual)
        self._changed()

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        actual = self.index.resolve(name)
        return actual is not None and actual in self._masks

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    # -- options -----------------------------------------------------------------------------

    def options(self, name: str) -> frozenset[str]:
        """The :data:`OPTIONS` set for parameter ``name``."""
        return self._options.get(self.resolve(name), frozenset())

    def set_options(self, names: Iterable[str] | None = None, **options: bool) -> None:
        """Set (True) or clear (False) :data:`OPTIONS` for the named parameters (every parameter when None)."""
        unknown = [o for o in options if o not in OPTIONS]
        if unknown:
            raise ValueError(f"unknown mask option {unknown[0]!r}; options are: {', '.join(OPTIONS)}")
        targets = list(self.index.params) if names is None else [self.resolve(n) for n in names]
        on = {o for o, v in options.items() if v}
        off = {o for o, v in options.items() if not v}
        changed = False
        for name in targets:
            before = self._options.get(name, frozenset())
            after = (before | on) - off
            if after != before:
                changed = True
                if after:
                    self._options[name] = frozenset(after)
                else:
                    del self._options[name]
                if "use_double_copies" not in after:
                    self.dense_copies.pop(name, None)
        if changed:
            self._changed()

    def mark_all_pending(self) -> None:
        """Apply every mask again before the next forward pass (after loading state, say)."""
        self._dirty.update(self._masks)

    def mark_forward_pending(self) -> None:
        """Apply the masks of parameters masked only for forward passes (or with double copies) before the next
        forward pass, as a pruning policy with those options does before each one."""
        self._dirty.update(self._flags()[_FORWARD])

    def _flags(self) -> dict[str, list[str]]:
        """For each option, the masked parameters that have it set, in mask order; under ``_FORWARD``, those with
        either option applied before a forward pass (cached until a mask or an option changes)."""
        lists = self._flag_lists
        if lists is None:
            options = self._options
            lists = {f: [name for name in self._masks if f in options.get(name, ())] for f in OPTIONS}
            lists[_FORWARD] = [name for name in self._masks
                               if {"mask_on_forward_only", "use_double_copies"} & options.get(name, frozenset())]
            self._flag_lists = lists
        return lists

    # -- applying ----------------------------------------------------------------------------

    @staticmethod
    def _fused_mul(tensors: list[torch.Tensor], masks: list[torch.Tensor]) -> None:
        groups: dict[tuple[torch.device, torch.dtype], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        for tensor, mask in zip(tensors, masks, strict=True):
            ts, ms = groups.setdefault((tensor.device, tensor.dtype), ([], []))
            ts.append(tensor)
            ms.append(multiplier(mask if mask.device == tensor.device else mask.to(tensor.device), tensor))
        _multiply_in_place(list(groups.values()))

    def apply(self, names: Iterable[str] | None = None) -> None:
        """Zero the masked elements of the named parameters (all masked ones when None) in place, keeping the dense
        weights first for those with ``use_double_copies``."""
        selected = list(self._masks) if names is None else [self.resolve(n) for n in names]
        selected = [n for n in selected if n in self._masks]
        params = self.index.params
        for name in selected:
            if "use_double_copies" in self._options.get(name, ()):
                self.dense_copies[name] = self._tensor(name).detach().clone()
        tensors = [params[n] for n in selected]
        if self.sharded:
            tensors = [sharding.local(t) for t in tensors]
        self._fused_mul(tensors, [self._masks[n] for n in selected])
        self._dirty.difference_update(selected)

    def _tensor(self, name: str) -> torch.Tensor:
        """What parameter ``name``'s mask multiplies: the parameter, or this rank's shard of a sharded one."""
        param = self.index.params[name]
        return sharding.local(param) if self.sharded else param

    def apply_pending(self) -> None:
        """Before a forward pass: apply the masks that are new since they were last applied."""
        if self._dirty:
            self.apply([n for n in self._masks if n in self._dirty])

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
        if self._sharded_groups:
            _multiply_in_place([([sharding.local(p) for p in params], multipliers)
                                for params, multipliers in self._sharded_groups])
        if self._dirty:
            self._dirty.intersection_update(self._flags()["mask_on_forward_only"])

    def _build_groups(self) -> list[tuple[list[torch.Tensor], list[torch.Tensor]]]:
        """The parameters re-masked after each step and their multipliers, one group per device and dtype (sharded
        parameters in groups of their own, whose local tensors are looked up at each step)."""
        groups: dict[tuple[torch.device, torch.dtype, bool], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        copies = self._float_multipliers()
        for name, mask in self._masks.items():
            if "mask_on_forward_only" in self._options.get(name, ()):
                continue
            param = self.index.params[name]
            is_sharded = bool(self.sharded) and name in self.sharded
            tensor = sharding.local(param) if is_sharded else param
            if mask.device != tensor.device:
                mask = self._masks[name] = mask.to(tensor.device)
            params, multipliers = groups.setdefault((tensor.device, tensor.dtype, is_sharded), ([], []))
            params.append(param)
            copy = copies.get(name)
            multipliers.append(copy if copy is not None and copy.device == tensor.device else multiplier(mask, tensor))
        self._groups = [group for (_, _, is_sharded), group in groups.items() if not is_sharded]
        self._sharded_groups = [group for (_, _, is_sharded), group in groups.items() if is_sharded]
        self._group_devices = [params[0].device for params, _ in self._groups]
        return self._groups

    def _float_multipliers(self) -> dict[str, torch.Tensor]:
        """Copies of the smallest masks of floating-point parameters in their parameters' dtype, within
        :data:`FLOAT_MULTIPLIER_BYTES` in all; a copy is made again only when its mask is replaced."""
        candidates = sorted((name for name in self._masks if name not in self.sharded
                             and self.index.params[name].is_floating_point()),
                            key=lambda n: self.index.params[n].numel())
        kept: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        budget = FLOAT_MULTIPLIER_BYTES
        for name in candidates:
            param, mask = self.index.params[name], self._masks[name]
            size = param.numel() * param.element_size()
            if size > budget:
                break
            cached = self._float_copies.get(name)
            if cached is None or cached[0] is not mask or cached[1].dtype != param.dtype:
                cached = (mask, mask.to(device=param.device, dtype=param.dtype))
            kept[name] = cached
            budget -= size
        self._float_copies = kept
        return {name: copy for name, (_, copy) in kept.items()}

    def _changed(self) -> None:
        """Forget what was derived from the masks and their options."""
        self._groups = None
        self._sharded_groups = []
        self._flag_lists = None

    def before_optimizer_step(self) -> None:
        """Between backward and ``optimizer.step()``: mask gradients, then restore double copies, for the
        parameters with those options (nothing to do, and nearly free, when none has them)."""
        lists = self._flags()
        if lists["mask_gradients"]:
            self.mask_gradients()
        if lists["use_double_copies"]:
            self.revert_double_copies()

    def mask_gradients(self) -> None:
        """Zero the gradients of masked elements for the parameters with ``mask_gradients``."""
        flagged = self._flags()["mask_gradients"]
        if not flagged:
            return
        names = [n for n in flagged if self.index.params[n].grad is not None]
        grads = [self.index.params[n].grad for n in names]
        if self.sharded:
            grads = [sharding.local(g) for g in grads]
        self._fused_mul(grads, [self._masks[n] for n in names])

    def revert_double_copies(self) -> None:
        """Give double-copy parameters their dense weights back before the optimizer updates them."""
        for name in self._flags()["use_double_copies"]:
            self.revert_weights(name)

    def revert_weights(self, name: str) -> None:
        """Restore ``name``'s dense weights kept by the last :meth:`apply` (double copies); nothing without them."""
        copy = self.dense_copies.pop(name, None)
        if copy is not None and "use_double_copies" in self._options.get(name, ()):
            with torch.no_grad():
                self._tensor(name).copy_(copy)

    # -- state -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The masks, and the options set per parameter; the mask of a sharded parameter as a DTensor laid out as
        the parameter (this rank's shard of it)."""
        flags = {name: {flag: flag in options for flag in OPTIONS} for name, options in self._options.items()}
        masks = {name: mask.clone() for name, mask in self._masks.items()}
        for name in self.sharded.keys() & masks.keys():
            masks[name] = sharding.as_dtensor(masks[name], self.sharded[name])
        return {"masks": masks, "flags": flags}

    def load_masks(self, masks: Mapping[str, torch.Tensor | None]) -> None:
        """Replace every mask by ``masks`` (names in any spelling; None or float masks accepted; for a sharded
        parameter, anything an assignment takes)."""
        resolved = {}
        for name, mask in masks.items():
            if mask is not None:
                resolved[self.resolve(name)] = mask
        self._masks.clear()
        self._dirty.clear()
        self._changed()
        for name, mask in resolved.items():
            self[name] = mask

    def load_flags(self, flags: Mapping[str, Mapping[str, bool]]) -> None:
        """Replace every parameter's options by ``flags`` (:meth:`state_dict`'s ``flags``)."""
        self._options.clear()
        self.dense_copies.clear()
        for name, values in flags.items():
            on = frozenset(flag for flag in OPTIONS if values.get(flag, False))
            if on:
                self._options[self.resolve(name)] = on
        self._changed()
