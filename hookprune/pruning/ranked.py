"""Distiller's ranked structure pruners: rank the filters, channels, rows or blocks of each listed
weight and zero exactly the lowest-ranked fraction of them (or a random choice, for the random ones).

Every class keeps Distiller's YAML names (``group_type``, ``desired_sparsity``, ``weights``,
``group_dependency``, ``kwargs: {block_shape: ...}``, ``noise``, ``group_size``, ``rounding_fn``,
``initial_sparsity`` / ``final_sparsity`` for the ``_AGP`` variants) and semantics:

- Scores are length-normalised Lp norms (:func:`hookprune.pruning.structures.structure_scores`);
  the count is Distiller's (:func:`hookprune.pruning.structures.count_to_prune`), exact, with ties
  broken by the lowest index, and pruning every structure of a layer is an error.
- ``group_type: Rows`` ranks the rows of the transposed matrix a Linear layer multiplies by, that
  is the columns (input features) of its PyTorch ``weight``, exactly as Distiller does.
- ``group_dependency: Leader``: the first listed weight's ranking decides which structures are
  pruned in every listed weight (the weights feeding one residual sum keep the same filters).
- ``noise`` (Distiller's epsilon-greedy exploration): with probability ``noise``, the scores of a
  ranking are multiplied by standard normal draws before the lowest are chosen.

Random draws come from a generator each pruner owns; its state is in ``state_dict()`` so a
resumed run draws the same numbers as the uninterrupted one. A pruner policy's ``args: {levels:
{...}}`` overrides ``desired_sparsity`` per parameter (``'*'`` for the rest) as it does for level
pruners.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from hookprune.pruning.agp import AGPLevels
from hookprune.pruning.base import ArgumentError, OwnLevel, PolicyLevels, check_fraction
from hookprune.pruning.structures import (
    STRUCTURE_NOUNS,
    check_block_shape,
    check_group_type,
    check_rounding_fn,
    check_structure_fits,
    count_to_prune,
    expand_structure_mask,
    num_structures,
    prune_lowest,
    structure_scores,
)

#: The group types Distiller's Lp-ranked pruners accept (``3D`` is a spelling of ``Filters``).
LP_GROUP_TYPES = ("Filters", "Channels", "Rows", "Blocks")
#: The group types Distiller's filter pruners (gradient, random, Bernoulli) accept.
FILTER_GROUP_TYPES = ("Filters",)
#: The group types :class:`StructureParameterPruner` thresholds.
THRESHOLD_GROUP_TYPES = ("Filters", "Channels", "Rows", "Cols", "2D", "4D")
#: ``threshold_criteria`` spellings (any case) and their canonical names.
THRESHOLD_CRITERIA = {"mean_abs": "Mean_Abs", "max": "Max"}


def _weight_names(weights: Any) -> list[str]:
    names = list(dict.fromkeys([weights] if isinstance(weights, str) else list(weights or [])))
    if not names or not all(isinstance(n, str) for n in names):
        raise ArgumentError("weights", "'weights' must list at least one parameter name")
    return names


def _check_dependency(group_dependency: Any) -> str | None:
    if group_dependency is None:
        return None
    if isinstance(group_dependency, str) and group_dependency.lower() == "leader":
        return "Leader"
    raise ArgumentError("group_dependency", f"'group_dependency' must be Leader (or left out), "
                        f"got {group_dependency!r}")


def _check_block_args(group_type: str, kwargs: Any, block_shape: Any) -> tuple[int, int, int, int] | None:
    if kwargs is not None:
        if not isinstance(kwargs, dict) or any(k != "block_shape" for k in kwargs):
            unknown = sorted(k for k in kwargs if k != "block_shape") if isinstance(kwargs, dict) else kwargs
            raise ArgumentError("kwargs", f"'kwargs' may only hold 'block_shape', got {unknown!r}")
        if "block_shape" in kwargs:
            if block_shape is not None:
                raise ArgumentError("kwargs", "give 'block_shape' once: either directly or under 'kwargs'")
            return _check_block_args(group_type, None, kwargs["block_shape"])
    if group_type != "Blocks":
        if block_shape is not None:
            raise ArgumentError("block_shape", f"'block_shape' applies only to group_type Blocks, not {group_type}")
        return None
    if block_shape is None:
        raise ArgumentError("group_type", "group_type Blocks needs 'block_shape' [block_repetitions, depth, "
                            "height, width] (under 'kwargs', as in Distiller)")
    return check_block_shape(block_shape)


class _RankedStructurePruner(PolicyLevels):
    """What every ranked pruner shares: which weights, which structures, the exact count, the
    Leader dependency, policy ``levels``, and the checkpointed random generator."""

    #: the canonical group types the class accepts
    group_types: tuple[str, ...] = LP_GROUP_TYPES
    #: the level pruned when no policy ``levels`` apply (the ``_AGP`` variants compute theirs instead)
    desired_sparsity: float
    #: one score per group of structures (``param``, ``param_name``); the lowest are pruned
    structure_ranking: Callable[[torch.Tensor, str], torch.Tensor]

    def __init__(self, name: str, group_type: str, weights: list[str] | str, group_dependency: str | None = None,
                 group_size: int = 1, rounding_fn: str | Callable[[float], int] = "floor",
                 block_shape: Sequence[int] | None = None, seed: int | None = None,
                 model: torch.nn.Module | None = None) -> None:
        self.name = name
        self.group_type = check_group_type(group_type, self.group_types)
        #: the structures actually ranked: Distiller's ranked "Rows" are the weight's columns
        self.structure = "Cols" if self.group_type == "Rows" else self.group_type
        self.params_names = _weight_names(weights)
        self.group_dependency = _check_dependency(group_dependency)
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise ArgumentError("group_size", f"'group_size' must be a positive integer, got {group_size!r}")
        self.group_size = group_size
        self.rounding_fn = check_rounding_fn(rounding_fn)
        self.block_shape = block_shape
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ArgumentError("seed", f"'seed' must be an integer, got {seed!r}")
        self.generator = torch.Generator().manual_seed(torch.initial_seed() if seed is None else seed)
        self._levels: dict[str, float] | None = None
        self._leader_keep: torch.Tensor | None = None
        self._round_seen: set[str] = set()
        if model is not None:
            self._check_model(model)

    # -- configuration --------------------------------------------------------------------------

    def leader(self) -> str:
        """The weight whose ranking decides for all listed weights under ``group_dependency: Leader``."""
        return self.params_names[0]

    def is_supported(self, param_name: str) -> bool:
        """True for the weights this pruner was given."""
        return param_name in self.params_names

    def _noun(self) -> str:
        return STRUCTURE_NOUNS[self.structure]

    def _check_model(self, model: torch.nn.Module) -> None:
        """Refuse, at load time, weights whose shape has no such structures or that the Leader cannot lead."""
        counts = {}
        for param_name in self.params_names:
            try:
                shape = model.get_parameter(param_name).shape
            except AttributeError:
                raise ArgumentError("weights", f"the model has no parameter '{param_name}'") from None
            try:
                check_structure_fits(shape, self.group_type)
                counts[param_name] = num_structures(shape, self.structure, self.block_shape)
            except ValueError as exc:
                raise ArgumentError("weights", f"'{param_name}': {exc}") from None
            if counts[param_name] % self.group_size:
                raise ArgumentError("group_size", f"'group_size' {self.group_size} does not divide the "
                                    f"{counts[param_name]} {self._noun()} of '{param_name}'")
        if self.group_dependency == "Leader":
            leader_count = counts[self.leader()]
            for param_name, count in counts.items():
                if count != leader_count:
                    raise ArgumentError("weights", f"group_dependency Leader: '{param_name}' has {count} "
                                        f"{self._noun()} but the leader '{self.leader()}' has {leader_count}")

    # -- how much and which --------------------------------------------------------------------

    def fraction_to_prune(self, param_name: str, meta: dict[str, Any] | None) -> float:
        """The fraction of ``param_name``'s structures to prune now."""
        return self.policy_level(param_name)

    def keep_map(self, param: torch.Tensor, param_name: str, fraction: float) -> torch.Tensor | None:
        """Keep-map over groups of structures for ``fraction`` (None when nothing is to be pruned)."""
        n = num_structures(param.shape, self.structure, self.block_shape)
        k = count_to_prune(n, fraction, self.group_size, self.rounding_fn, param_name=param_name,
                           structure=self._noun())
        if k == 0:
            return None
        return prune_lowest(self.structure_ranking(param, param_name), k // self.group_size)

    # -- driving ---------------------------------------------------------------------------------

    def set_param_mask(self, param: torch.Tensor, param_name: str, zeros_mask_dict: Any,
                       meta: dict[str, Any] | None) -> None:
        """Distiller's pruner entry point: set ``param_name``'s mask when it is one of ``weights``."""
        if not self.is_supported(param_name):
            return
        if self.group_dependency == "Leader":
            keep = self._leader_keep_map(param_name, meta)
        else:
            keep = self.keep_map(param, param_name, self.fraction_to_prune(param_name, meta))
        if keep is None:
            return
        zeros_mask_dict[param_name].mask = expand_structure_mask(
            keep.to(param.device), param.shape, self.structure, self.block_shape, self.group_size)

    def _leader_keep_map(self, param_name: str, meta: dict[str, Any] | None) -> torch.Tensor | None:
        """The leader's keep-map, shared by every listed weight: computed once per round of
        ``set_param_mask`` calls over the weights (a weight seen again starts a new round)."""
        if param_name in self._round_seen or not self._round_seen:
            model = None if meta is None else meta.get("model")
            if model is None:
                raise ValueError(f"{type(self).__name__} '{self.name}': group_dependency Leader needs "
                                 "meta['model'] to read the leader's weights")
            leader = self.leader()
            self._leader_keep = self.keep_map(model.get_parameter(leader), leader,
                                              self.fraction_to_prune(leader, meta))
            self._round_seen = set()
        self._round_seen.add(param_name)
        return self._leader_keep

    # -- checkpoint -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The random generator's state, so a resumed run draws the same numbers."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        if "generator" in state:
            self.generator.set_state(state["generator"])


class _AGPLevels(AGPLevels):
    """The ``_AGP`` variants' level: Zhu & Gupta's cubic schedule over the policy's epochs."""

    def fraction_to_prune(self, param_name: str, meta: dict[str, Any] | None) -> float:
        """The AGP target for the current epoch, the same for every listed weight."""
        if meta is None:
            raise ValueError(f"{type(self).__name__} needs the policy's meta (epochs) to compute its level")
        return self.compute_target_sparsity(meta)


# -- Lp-norm ranking ---------------------------------------------------------------------------------


class _LpRankedPruner(_RankedStructurePruner):
    """Rank by the length-normalised Lp norm (``p`` set by the subclass), with optional noise."""

    p: float = 1

    def __init__(self, name: str, group_type: str, weights: list[str] | str, group_dependency: str | None = None,
                 kwargs: dict[str, Any] | None = None, noise: float = 0.0, group_size: int = 1,
                 rounding_fn: str = "floor", block_shape: list[int] | None = None, seed: int | None = None,
                 model: torch.nn.Module | None = None) -> None:
        canonical = check_group_type(group_type, self.group_types)
        self.noise = check_fraction("noise", noise, below_one=False)
        super().__init__(name, group_type, weights, group_dependency, group_size, rounding_fn,
                         _check_block_args(canonical, kwargs, block_shape), seed, model)

    def structure_ranking(self, param: torch.Tensor, param_name: str) -> torch.Tensor:
        """Length-normalised Lp norms per group; with probability ``noise`` times standard normal draws."""
        scores = structure_scores(param, self.structure, self.p, self.block_shape, self.group_size)
        if self.noise and torch.rand((), generator=self.generator).item() <= self.noise:
            scores = scores * torch.randn(scores.shape, generator=self.generator).to(scores.device)
        return scores


class _LpRankedLevelPruner(_LpRankedPruner):
    """An Lp-ranked pruner at a fixed ``desired_sparsity`` (or the policy's ``levels``)."""

    def __init__(self, name: str, group_type: str, desired_sparsity: float, weights: list[str] | str,
                 group_dependency: str | None = None, kwargs: dict[str, Any] | None = None, noise: float = 0.0,
                 group_size: int = 1, rounding_fn: str = "floor", block_shape: list[int] | None = None,
                 seed: int | None = None, model: torch.nn.Module | None = None) -> None:
        self.desired_sparsity = check_fraction("desired_sparsity", desired_sparsity)
        super().__init__(name, group_type, weights, group_dependency, kwargs, noise, group_size, rounding_fn,
                         block_shape, seed, model)


class L1RankedStructureParameterPruner(_LpRankedLevelPruner):
    """Zero exactly the ``desired_sparsity`` fraction of structures (``group_type``: Filters/3D,
    Channels, Rows, Blocks) with the lowest mean absolute value in each listed weight."""

    p = 1


class L2RankedStructureParameterPruner(_LpRankedLevelPruner):
    """As :class:`L1RankedStructureParameterPruner`, ranking by the L2 norm divided by the
    structure's number of elements."""

    p = 2


class _LpRankedAGPPruner(_AGPLevels, _LpRankedPruner):
    """An Lp-ranked pruner whose level follows the AGP schedule."""

    def __init__(self, name: str, initial_sparsity: float, final_sparsity: float, group_type: str,
                 weights: list[str] | str, group_dependency: str | None = None, kwargs: dict[str, Any] | None = None,
                 noise: float = 0.0, group_size: int = 1, rounding_fn: str = "floor",
                 block_shape: list[int] | None = None, seed: int | None = None,
                 model: torch.nn.Module | None = None) -> None:
        self._init_agp(initial_sparsity, final_sparsity)
        super().__init__(name, group_type, weights, group_dependency, kwargs, noise, group_size, rounding_fn,
                         block_shape, seed, model)


class L1RankedStructureParameterPruner_AGP(_LpRankedAGPPruner):
    """L1-ranked structure pruning whose level follows the AGP schedule from ``initial_sparsity`` to
    ``final_sparsity`` over the policy's epochs; the last pruning epoch prunes exactly the final fraction."""

    p = 1


class L2RankedStructureParameterPruner_AGP(_LpRankedAGPPruner):
    """As :class:`L1RankedStructureParameterPruner_AGP`, ranking by the length-normalised L2 norm."""

    p = 2


class RandomLevelStructureParameterPruner(OwnLevel, L1RankedStructureParameterPruner):
    """L1-ranked structure pruning at a level drawn uniformly from ``sparsity_range`` [lo, hi] each
    time masks are set (per weight; once per round for a Leader group): DropFilter by magnitude."""

    level_source = "draws its level from 'sparsity_range'"

    def __init__(self, name: str, group_type: str, sparsity_range: list[float], weights: list[str] | str,
                 group_dependency: str | None = None, kwargs: dict[str, Any] | None = None,
                 block_shape: list[int] | None = None, seed: int | None = None,
                 model: torch.nn.Module | None = None) -> None:
        if not isinstance(sparsity_range, list | tuple) or len(sparsity_range) != 2:
            raise ArgumentError("sparsity_range", f"'sparsity_range' must be [low, high], got {sparsity_range!r}")
        low = check_fraction("sparsity_range", sparsity_range[0])
        high = check_fraction("sparsity_range", sparsity_range[1])
        if low > high:
            raise ArgumentError("sparsity_range", f"'sparsity_range' must be [low, high] with low <= high, "
                                f"got {list(sparsity_range)}")
        self.sparsity_range = (low, high)
        super().__init__(name, group_type, 0.0, weights, group_dependency, kwargs, block_shape=block_shape,
                         seed=seed, model=model)

    def fraction_to_prune(self, param_name: str, meta: dict[str, Any] | None) -> float:
        """A level drawn uniformly from ``sparsity_range`` with the pruner's generator."""
        low, high = self.sparsity_range
        return low + (high - low) * torch.rand((), generator=self.generator, dtype=torch.float64).item()


# -- filter rankings by other criteria ----------------------------------------------------------------


class _FilterPruner(_RankedStructurePruner):
    """A filter pruner with Distiller's arguments (``group_type`` Filters or 3D)."""

    group_types = FILTER_GROUP_TYPES

    def __init__(self, name: str, group_type: str, weights: list[str] | str, group_dependency: str | None = None,
                 seed: int | None = None, model: torch.nn.Module | None = None) -> None:
        super().__init__(name, group_type, weights, group_dependency, seed=seed, model=model)


class _LevelFilterPruner(_FilterPruner):
    """A filter pruner at a fixed ``desired_sparsity`` (or the policy's ``levels``)."""

    def __init__(self, name: str, group_type: str, desired_sparsity: float, weights: list[str] | str,
                 group_dependency: str | None = None, seed: int | None = None,
                 model: torch.nn.Module | None = None) -> None:
        self.desired_sparsity = check_fraction("desired_sparsity", desired_sparsity)
        super().__init__(name, group_type, weights, group_dependency, seed, model)


class _AGPFilterPruner(_AGPLevels, _FilterPruner):
    """A filter pruner whose level follows the AGP schedule."""

    def __init__(self, name: str, initial_sparsity: float, final_sparsity: float, group_type: str,
                 weights: list[str] | str, group_dependency: str | None = None, seed: int | None = None,
                 model: torch.nn.Module | None = None) -> None:
        self._init_agp(initial_sparsity, final_sparsity)
        super().__init__(name, group_type, weights, group_dependency, seed, model)


class _GradientRanking:
    """Rank filters by the sum of weight * gradient (Molchanov et al.'s first-order Taylor term,
    signed, as Distiller ranks it)."""

    name: str

    def structure_ranking(self, param: torch.Tensor, param_name: str) -> torch.Tensor:
        """Per filter, the sum of weight * gradient; an error when no backward pass has run yet."""
        if param.grad is None:
            raise ValueError(f"{type(self).__name__} '{self.name}': '{param_name}' has no gradient yet; it ranks "
                             "filters by weight * gradient, so start its policy after an epoch of training")
        with torch.no_grad():
            return (param.detach() * param.grad).reshape(param.shape[0], -1).sum(dim=1)


class _RandomRanking:
    """Rank filters at random: a uniformly random subset of the exact count is pruned."""

    generator: torch.Generator

    def structure_ranking(self, param: torch.Tensor, param_name: str) -> torch.Tensor:
        """Uniform random scores from the pruner's generator."""
        return torch.rand(param.shape[0], generator=self.generator)


class _BernoulliDraw:
    """Drop each filter independently with probability ``fraction`` (DropFilter)."""

    generator: torch.Generator

    def keep_map(self, param: torch.Tensor, param_name: str, fraction: float) -> torch.Tensor | None:
        """A Bernoulli(1 - fraction) keep draw per filter, drawn again while it keeps none."""
        if fraction == 0:
            return None
        if not 0 < fraction < 1:
            raise ValueError(f"pruning all {param.shape[0]} filters of '{param_name}' would disconnect the layer "
                             f"(drop probability {fraction:g})")
        probabilities = torch.full((param.shape[0],), 1.0 - fraction, dtype=torch.float64)
        while True:
            keep = torch.bernoulli(probabilities, generator=self.generator).to(torch.bool)
            if keep.any():
                return keep


class GradientRankedFilterPruner(_GradientRanking, _LevelFilterPruner):
    """Prune exactly the ``desired_sparsity`` fraction of filters with the lowest sum of weight *
    gradient. Needs the gradient of a backward pass, so its policy must start after one."""


class GradientRankedFilterPruner_AGP(_GradientRanking, _AGPFilterPruner):
    """:class:`GradientRankedFilterPruner` with the AGP schedule from ``initial_sparsity`` to ``final_sparsity``."""


class RandomRankedFilterPruner(_RandomRanking, _LevelFilterPruner):
    """Prune exactly the ``desired_sparsity`` fraction of filters, chosen uniformly at random each
    time masks are set (a baseline for the rankings)."""


class RandomRankedFilterPruner_AGP(_RandomRanking, _AGPFilterPruner):
    """:class:`RandomRankedFilterPruner` with the AGP schedule from ``initial_sparsity`` to ``final_sparsity``."""


class BernoulliFilterPruner(_BernoulliDraw, _LevelFilterPruner):
    """Distiller's DropFilter: each filter is dropped independently with probability
    ``desired_sparsity``, drawn afresh every time masks are set, so the count varies around the
    target; a draw that would drop every filter of a layer is drawn again. Masks stay boolean:
    the kept filters are not rescaled."""


class BernoulliFilterPruner_AGP(_BernoulliDraw, _AGPFilterPruner):
    """:class:`BernoulliFilterPruner` whose drop probability follows the AGP schedule."""


# -- thresholding -----------------------------------------------------------------------------------------


class StructureParameterPruner:
    """Distiller's structure thresholding: zero each structure whose magnitude is at most its threshold.

    ``reg_regims`` maps parameter names to ``[threshold, group_type]`` (group types Filters/3D,
    Channels, Rows, Cols, 2D kernels, 4D whole tensor); ``threshold_criteria`` is ``Mean_Abs`` (the
    mean absolute value of the structure) or ``Max`` (its largest magnitude). Zeroing every
    structure of a layer is an error, except for ``4D``, whose only structure is the whole layer.
    """

    def __init__(self, name: str, model: torch.nn.Module | None, reg_regims: dict[str, list[Any]],
                 threshold_criteria: str) -> None:
        self.name = name
        if not isinstance(threshold_criteria, str) or threshold_criteria.lower() not in THRESHOLD_CRITERIA:
            raise ArgumentError("threshold_criteria", f"'threshold_criteria' must be Mean_Abs or Max, "
                                f"got {threshold_criteria!r}")
        self.threshold_criteria = THRESHOLD_CRITERIA[threshold_criteria.lower()]
        if not isinstance(reg_regims, dict) or not reg_regims:
            raise ArgumentError("reg_regims", "'reg_regims' must map parameter names to [threshold, group_type]")
        self.reg_regims: dict[str, tuple[float, str]] = {}
        for param_name, regime in reg_regims.items():
            label = f"reg_regims['{param_name}']"
            if (not isinstance(regime, list | tuple) or len(regime) != 2 or isinstance(regime[0], bool)
                    or not isinstance(regime[0], int | float)):
                raise ArgumentError(label, f"'{label}' must be [threshold, group_type], got {regime!r}")
            group_type = check_group_type(regime[1], THRESHOLD_GROUP_TYPES, argument=label)
            self.reg_regims[param_name] = (float(regime[0]), group_type)
            if model is not None:
                try:
                    check_structure_fits(model.get_parameter(param_name).shape, group_type)
                except AttributeError:
                    raise ArgumentError(label, f"the model has no parameter '{param_name}'") from None
                except ValueError as exc:
                    raise ArgumentError(label, f"'{param_name}': {exc}") from None

    def set_param_mask(self, param: torch.Tensor, param_name: str, zeros_mask_dict: Any,
                       meta: dict[str, Any] | None) -> None:
        """Threshold ``param_name``'s structures when it is listed in ``reg_regims``."""
        regime = self.reg_regims.get(param_name)
        if regime is None:
            return
        threshold, group_type = regime
        p = 1 if self.threshold_criteria == "Mean_Abs" else math.inf
        keep = structure_scores(param, group_type, p) > threshold
        if group_type != "4D" and not keep.any():
            raise ValueError(f"pruning all {keep.numel()} {STRUCTURE_NOUNS[group_type]} of '{param_name}' would "
                             f"disconnect the layer (every {self.threshold_criteria} is at most {threshold:g})")
        zeros_mask_dict[param_name].mask = expand_structure_mask(keep, param.shape, group_type)
