"""The surgery: which channels go, masking what depends on them, slicing every tensor, and the recipes."""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hookprune._engine.params import normalize_name
from hookprune.thinning.graph import ChannelGraph, Space, ThinningError, channel_graph

log = logging.getLogger(__name__)

REMOVE_FILTERS = "remove_filters"
REMOVE_CHANNELS = "remove_channels"
THINNING_FUNCTIONS = (REMOVE_FILTERS, REMOVE_CHANNELS)

#: A thinning recipe: ``{"function": str, "modules": {module: {attribute: int}}, "parameters": {name:
#: [[dim, size_before, keep_indices], ...]}, "buffers": {...same...}}``; plain containers, ints, strings and
#: int64 tensors only, so ``torch.load(weights_only=True)`` reads it.
Recipe = dict[str, Any]

Masks = MutableMapping[str, torch.Tensor]


def _join(module: str, attr: str) -> str:
    return f"{module}.{attr}" if module else attr


def _effective(model_params: Mapping[str, torch.Tensor], name: str, masks: Mapping[str, torch.Tensor] | None
               ) -> torch.Tensor:
    weight = model_params[name].detach()
    mask = masks.get(name) if masks is not None else None
    return weight if mask is None else weight * mask.to(weight.device)


def _zero_slices(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """True for each slice along ``dim`` (a filter, an input channel) whose elements are all zero."""
    return ~(weight != 0).movedim(dim, 0).reshape(weight.shape[dim], -1).any(dim=1)


def _kind(module: nn.Module, attr: str) -> str | None:
    """Whether ``module.attr`` is one of its ``parameters`` or ``buffers``; None when it is unset (a missing bias)."""
    if attr in dict(module.named_parameters(recurse=False)):
        return "parameters"
    if attr in dict(module.named_buffers(recurse=False)):
        return "buffers"
    return None


@dataclass
class _Slice:
    """Positions removed from one module along its output (``out``) or input (``in``) channel dimension."""

    module: str
    role: str
    removed: set[int]


class ThinningPlan:
    """The channels a thinning function removes from each space, decided from weights and masks now.

    ``remove_filters`` removes channel c of a space when every producer's filter c is all zero;
    ``remove_channels`` when every consumer's input channel c is all zero. A blocked space keeps
    every channel. Nothing is changed until :meth:`mask_dependents` or :meth:`execute`.
    """

    def __init__(self, model: nn.Module, function: str, graph: ChannelGraph,
                 removals: list[tuple[Space, list[int]]]) -> None:
        self.model = model
        self.function = function
        self.graph = graph
        self.removals = removals
        self.created_masks: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self.removals)

    def removed_channels(self) -> dict[str, list[int]]:
        """``{producer module: channels removed}`` for every space that loses channels."""
        return {producer: chans for space, chans in self.removals for producer in space.producers}

    def _slices(self) -> list[_Slice]:
        slices: dict[tuple[str, str], _Slice] = {}

        def add(module: str, role: str, positions: Sequence[int]) -> None:
            slices.setdefault((module, role), _Slice(module, role, set())).removed.update(positions)

        for space, chans in self.removals:
            for producer in space.producers:
                add(producer, "out", chans)
            for use in space.channelwise:
                add(use.module, "out", use.positions(chans))
            for use in space.consumers:
                add(use.module, "in", use.positions(chans))
        return list(slices.values())

    def mask_dependents(self, masks: Masks | None = None) -> list[str]:
        """Zero, and mask in ``masks``, what would keep a removed filter's channel non-zero.

        For ``remove_filters`` these are the ``dependents`` the layer rules name at the removed channels:
        the producers' biases, the BatchNorm scales and shifts, the depthwise biases (a zeroed filter
        followed by BatchNorm outputs ``beta - gamma * mean / sqrt(var + eps)``, not zero); the
        producers' filters are zeroed too. Afterwards the masked model computes
        exactly what the thinned one will. Returns the names of the masks it created; :meth:`execute`
        drops them again once the masked entries are gone.
        """
        if self.function != REMOVE_FILTERS:
            return []
        params = dict(self.model.named_parameters())
        rules = self.graph.rules
        targets: dict[str, tuple[int, set[int]]] = {}

        def target(module: str, attrs: Sequence[str], positions: Sequence[int]) -> None:
            for attr in attrs:
                if getattr(self.graph.modules[module], attr, None) is not None:
                    dim = rules[module].out_tensors[attr]
                    targets.setdefault(_join(module, attr), (dim, set()))[1].update(positions)

        for space, chans in self.removals:
            for producer in space.producers:
                target(producer, (rules[producer].weight, *rules[producer].dependents), chans)
            for use in space.channelwise:
                target(use.module, rules[use.module].dependents, use.positions(chans))
        producer_weights = {_join(p, rules[p].weight) for space, _ in self.removals for p in space.producers}
        created = []
        with torch.no_grad():
            for name, (dim, positions) in targets.items():
                param = params[name]
                index = torch.tensor(sorted(positions), dtype=torch.long, device=param.device)
                param.index_fill_(dim, index, 0)
                if masks is None or name in producer_weights:
                    continue
                existing = masks.get(name)
                mask = torch.ones_like(param, dtype=torch.bool) if existing is None else existing.clone()
                mask.index_fill_(dim, index.to(mask.device), False)
                if existing is None:
                    created.append(name)
                masks[name] = mask
        self.created_masks.update(created)
        return created

    def recipe(self) -> Recipe:
        """The recipe that removes this plan's channels (absolute sizes, kept indices per tensor)."""
        modules = self.graph.modules
        recipe: Recipe = {"function": self.function, "modules": {}, "parameters": {}, "buffers": {}}
        for piece in self._slices():
            module, rule = modules[piece.module], self.graph.rules[piece.module]
            if piece.role == "in":
                size_attr, attrs, tensors = rule.in_size, (rule.in_size,), rule.in_tensors
            else:
                size_attr, attrs, tensors = rule.out_size, (rule.out_size, *rule.same_as_out), rule.out_tensors
            size = getattr(module, size_attr)
            keep = torch.tensor([i for i in range(size) if i not in piece.removed], dtype=torch.long)
            for attr in attrs:
                recipe["modules"].setdefault(piece.module, {})[attr] = len(keep)
            for attr, dim in tensors.items():
                kind = _kind(module, attr)
                if kind is not None:
                    tensor = getattr(module, attr)
                    recipe[kind].setdefault(_join(piece.module, attr), []).append([dim, int(tensor.shape[dim]), keep])
        return recipe

    def execute(self, optimizer: torch.optim.Optimizer | None = None, masks: Masks | None = None
                ) -> Recipe | None:
        """Mask the dependents, remove the channels, slice the optimizer state and the masks; return the
        recipe (also appended to ``model.thinning_recipes``), or None when nothing is removed."""
        if not self.removals:
            return None
        recipe = self.recipe()
        _check(self.model, recipe, optimizer)
        self.mask_dependents(masks)
        _execute(self.model, recipe, optimizer, masks)
        if masks is not None:
            for name in sorted(self.created_masks):
                if name in masks and bool(masks[name].all()):
                    del masks[name]
        removed = sum(len(chans) for _, chans in self.removals)
        log.info("%s removed %d channels from %d spaces", self.function, removed, len(self.removals))
        return recipe


def plan_thinning(model: nn.Module, function: str, example_input: Any,
                  masks: Mapping[str, torch.Tensor] | None = None) -> ThinningPlan:
    """Decide which channels ``function`` (``remove_filters`` or ``remove_channels``) removes from ``model``.

    Weights count as zero where they are zero or masked (``masks``: parameter name -> keep-mask, such as
    ``scheduler.masks``). ``example_input`` is run once (eval mode, no gradients) to learn tensor ranks.
    """
    if function not in THINNING_FUNCTIONS:
        raise ValueError(f"unknown thinning function {function!r}; use one of {', '.join(THINNING_FUNCTIONS)}")
    graph = channel_graph(model, example_input)
    params = dict(model.named_parameters())
    removals: list[tuple[Space, list[int]]] = []
    for space in graph.spaces():
        if space.blocked or (function == REMOVE_FILTERS and space.unforced):
            continue
        zero = torch.ones(space.size, dtype=torch.bool)
        if function == REMOVE_FILTERS:
            for producer in space.producers:
                rule = graph.rules[producer]
                weight = _effective(params, _join(producer, rule.weight), masks)
                zero &= _zero_slices(weight, rule.out_tensors[rule.weight]).cpu()
        else:
            if not space.consumers:
                continue
            for use in space.consumers:
                rule = graph.rules[use.module]
                weight = _effective(params, _join(use.module, rule.weight), masks)
                inputs = _zero_slices(weight, rule.in_tensors[rule.weight]).cpu()
                index = torch.tensor(use.positions(range(space.size))).view(space.size, use.factor)
                zero &= inputs[index].all(dim=1)
        chans = torch.nonzero(zero).flatten().tolist()
        if len(chans) == space.size:
            where = "filter of " + ", ".join(space.producers) if function == REMOVE_FILTERS else \
                "input channel of " + ", ".join(u.module for u in space.consumers)
            raise ThinningError(f"{function}: every {where} is zero; thinning would leave no channels there. "
                                "Nothing was changed")
        if chans:
            removals.append((space, chans))
    return ThinningPlan(model, function, graph, removals)


def remove_filters(model: nn.Module, example_input: Any, masks: Masks | None = None,
                   optimizer: torch.optim.Optimizer | None = None) -> Recipe | None:
    """Remove every all-zero filter (output channel) that can go exactly, and everything that depends on it.

    See :func:`plan_thinning` for ``example_input`` and ``masks``. Returns the recipe, or None when no
    filter could be removed.
    """
    return plan_thinning(model, REMOVE_FILTERS, example_input, masks).execute(optimizer, masks)


def remove_channels(model: nn.Module, example_input: Any, masks: Masks | None = None,
                    optimizer: torch.optim.Optimizer | None = None) -> Recipe | None:
    """Remove every input channel that all its readers weight by zero, with the filters that produce it."""
    return plan_thinning(model, REMOVE_CHANNELS, example_input, masks).execute(optimizer, masks)


# -- executing recipes ------------------------------------------------------------------------------


class _Names:
    """A model's parameters, buffers and modules, found by name with or without ``module.`` segments."""

    def __init__(self, model: nn.Module) -> None:
        self.tables: dict[str, dict[str, Any]] = {
            "parameters": dict(model.named_parameters()),
            "buffers": dict(model.named_buffers()),
            "modules": dict(model.named_modules()),
        }
        self.normal = {kind: {normalize_name(n): n for n in table} for kind, table in self.tables.items()}

    def resolve(self, kind: str, name: str) -> str:
        if name in self.tables[kind]:
            return name
        actual = self.normal[kind].get(normalize_name(name))
        if actual is None:
            raise ThinningError(f"the model has no {kind[:-1]} '{name}'")
        return actual

    def get(self, kind: str, name: str) -> Any:
        return self.tables[kind][self.resolve(kind, name)]


def _check(model: nn.Module, recipe: Recipe, optimizer: torch.optim.Optimizer | None) -> None:
    """Refuse a recipe that does not fit ``model`` (or its optimizer state) before anything changes."""
    names = _Names(model)
    for module_name, attrs in recipe["modules"].items():
        module = names.get("modules", module_name)
        for attr in attrs:
            if not isinstance(getattr(module, attr, None), int):
                raise ThinningError(f"module '{module_name}' ({type(module).__name__}) has no attribute '{attr}'")
    for kind in ("parameters", "buffers"):
        for name, directives in recipe[kind].items():
            tensor = names.get(kind, name)
            shape = list(tensor.shape)
            for dim, before, keep in directives:
                if dim >= len(shape) or shape[dim] != before:
                    raise ThinningError(f"'{name}' has shape {tuple(tensor.shape)}; the recipe expects size {before} "
                                        f"along dimension {dim}")
                shape[dim] = len(keep)
            if kind == "parameters" and optimizer is not None:
                for key, value in optimizer.state.get(tensor, {}).items():
                    if isinstance(value, torch.Tensor) and value.shape != tensor.shape and value.numel() > 1:
                        raise ThinningError(f"the optimizer's state '{key}' for '{name}' has shape "
                                            f"{tuple(value.shape)}, the parameter {tuple(tensor.shape)}; only "
                                            "state shaped like its parameter can be thinned")


def _resize(param: torch.Tensor, data: torch.Tensor) -> None:
    """Give ``param`` new data of another shape, keeping the Parameter object (optimizer, masks, hooks).

    Assigning ``.data`` keeps a live gradient accumulator, which an earlier autograd graph (the last
    step's loss, say) holds with the old shape, and the next backward would refuse the new gradient;
    torch drops the accumulator when the dtype changes, so the data passes through another dtype first.
    """
    if param.requires_grad:
        other = torch.float32 if data.dtype == torch.float64 else torch.float64
        param.data = torch.empty((), dtype=other, device=data.device)
    param.data = data


def _execute(model: nn.Module, recipe: Recipe, optimizer: torch.optim.Optimizer | None, masks: Masks | None
             ) -> None:
    names = _Names(model)
    dense_copies = getattr(masks, "dense_copies", None)
    for module_name, attrs in recipe["modules"].items():
        module = names.get("modules", module_name)
        for attr, value in attrs.items():
            setattr(module, attr, int(value))
    with torch.no_grad():
        for name, directives in recipe["parameters"].items():
            param = names.get("parameters", name)
            for dim, _, keep in directives:
                index = keep.to(param.device)
                old_shape = param.shape
                _resize(param, param.data.index_select(dim, index))
                if param.grad is not None and param.grad.shape == old_shape:
                    param.grad = param.grad.index_select(dim, index)
                state = optimizer.state.get(param) if optimizer is not None else None
                for key, value in (state or {}).items():
                    if isinstance(value, torch.Tensor) and value.shape == old_shape:
                        state[key] = value.index_select(dim, index.to(value.device))
                if masks is not None:
                    actual = names.resolve("parameters", name)
                    mask = masks.get(actual)
                    if mask is not None and mask.shape == old_shape:
                        masks[actual] = mask.index_select(dim, index.to(mask.device))
                    copy = dense_copies.get(actual) if dense_copies is not None else None
                    if copy is not None and copy.shape == old_shape:
                        dense_copies[actual] = copy.index_select(dim, index.to(copy.device))
        for name, directives in recipe["buffers"].items():
            owner, _, attr = names.resolve("buffers", name).rpartition(".")
            module = names.get("modules", owner)
            for dim, _, keep in directives:
                buffer = getattr(module, attr)
                setattr(module, attr, buffer.index_select(dim, keep.to(buffer.device)))
    applied = getattr(model, "thinning_recipes", None)
    if applied is None:
        applied = []
        model.thinning_recipes = applied
    applied.append(recipe)


def _same_recipe(a: Recipe, b: Recipe) -> bool:
    if a.get("function") != b.get("function") or a["modules"] != b["modules"]:
        return False
    for kind in ("parameters", "buffers"):
        if a[kind].keys() != b[kind].keys():
            return False
        for name, directives in a[kind].items():
            other = b[kind][name]
            if len(directives) != len(other) or any(
                    d[0] != o[0] or d[1] != o[1] or not torch.equal(d[2].cpu(), o[2].cpu())
                    for d, o in zip(directives, other, strict=True)):
                return False
    return True


def _validate_recipe(recipe: Any, i: int) -> Recipe:
    if not isinstance(recipe, Mapping) or not all(k in recipe for k in ("modules", "parameters", "buffers")):
        raise ThinningError(f"thinning recipe #{i + 1} is not a recipe (a mapping with 'modules', 'parameters' "
                            "and 'buffers')")
    for kind in ("parameters", "buffers"):
        for name, directives in recipe[kind].items():
            for directive in directives:
                if (len(directive) != 3 or not isinstance(directive[2], torch.Tensor)
                        or directive[2].dtype != torch.long):
                    raise ThinningError(f"thinning recipe #{i + 1}: the directive for '{name}' is not "
                                        "[dim, size_before, kept indices]")
    return dict(recipe)


def apply_recipes(model: nn.Module, recipes: Sequence[Recipe], optimizer: torch.optim.Optimizer | None = None
                  ) -> int:
    """Reshape a freshly built ``model`` with saved thinning recipes, in order; returns how many it applied.

    Recipes the model already went through (the first ``len(model.thinning_recipes)``) are skipped, so
    calling this and then a scheduler's ``load_state_dict`` is harmless. Each recipe is checked against
    the model before it changes anything. Load order for a thinned checkpoint: build the model and the
    scheduler, ``scheduler.load_state_dict(ckpt['compression_sched'])`` (or this function with
    ``ckpt['compression_sched']['thinning_recipes']``), then ``model.load_state_dict(ckpt['model'])``,
    then the optimizer's state.
    """
    recipes = [_validate_recipe(r, i) for i, r in enumerate(recipes)]
    applied = list(getattr(model, "thinning_recipes", None) or [])
    if len(applied) > len(recipes) or not all(_same_recipe(a, b) for a, b in zip(applied, recipes, strict=False)):
        raise ThinningError(f"the model went through {len(applied)} thinning recipes that do not begin the "
                            f"{len(recipes)} given; build a fresh model to apply them to")
    todo = recipes[len(applied):]
    for recipe in todo:
        _check(model, recipe, optimizer)
        _execute(model, recipe, optimizer, None)
    return len(todo)
