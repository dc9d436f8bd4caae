"""Distiller's ranked structure pruners: rank the filters, channels, rows or blocks of each listed
weight and zero exactly the lowest-ranked fraction of them (or a random choice, for the random ones).

One class, :class:`StructurePruner`, pairs a ranking (which structures: :class:`LpNorm`,
:class:`WeightGradient`, :class:`RandomScores`, :class:`BernoulliDraw`) with a level schedule (how many, when:
:mod:`hookprune.pruning.levels`). Distiller's class names, ``..._AGP`` variants included, are that class with
their YAML arguments (``group_type``, ``desired_sparsity`` or ``initial_sparsity``/``final_sparsity``,
``weights``, ``group_dependency``, ``kwargs: {block_shape: ...}``, ``noise``, ``group_size``, ``rounding_fn``)
and Distiller's semantics:

- Scores are length-normalised Lp norms (:func:`hookprune.pruning.structures.structure_scores`);
  the count is Distiller's (:func:`hookprune.pruning.structures.count_to_prune`), exact, with ties
  broken by the lowest index, and pruning every structure of a layer is an error.
- ``group_type: Rows`` ranks the rows of the transposed matrix a Linear layer multiplies by, that
  is the columns (input features) of its PyTorch ``weight``, exactly as Distiller does.
- ``group_dependency: Leader``: the first listed weight's ranking decides which structures are
  pruned in every listed weight (the weights feeding one residual sum keep the same filters); the pruner
  sees every listed weight in one step, so the leader is ranked once per step.
- ``noise`` (Distiller's epsilon-greedy exploration): with probability ``noise``, the scores of a
  ranking are multiplied by standard normal draws before the lowest are chosen.

Random draws come from a generator each pruner owns; its state is in ``state_dict()`` so a
resumed run draws the same numbers as the uninterrupted one. A pruner policy's ``args: {levels:
{...}}`` overrides ``desired_sparsity`` per parameter (``'*'`` for the rest).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from hookprune.errors import ArgumentError
from hookprune.pruning.base import Pruner, PruningStep
from hookprune.pruning.checks import check_fraction, check_seed
from hookprune.pruning.levels import AGPLevel, FixedLevel, LevelSchedule, RandomLevel
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
from hookprune.sharding import scalar

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


# -- rankings: which structures ---------------------------------------------------------------------------


class StructureRanking:
    """Which structures of a weight go: one score per group of structures, the lowest pruned first."""

    def scores(self, pruner: StructurePruner, param: torch.Tensor, param_name: str) -> torch.Tensor:
        """One score per group of ``param``'s structures."""
        raise NotImplementedError

    def keep_map(self, pruner: StructurePruner, param: torch.Tensor, param_name: str,
                 fraction: float) -> torch.Tensor | None:
        """Keep-map over groups of structures pruning exactly Distiller's count for ``fraction``, or None for none."""
        n = num_structures(param.shape, pruner.structure, pruner.block_shape)
        k = count_to_prune(n, fraction, pruner.group_size, pruner.rounding_fn, param_name=param_name,
                           structure=STRUCTURE_NOUNS[pruner.structure])
        if k == 0:
            return None
        return prune_lowest(self.scores(pruner, param, param_name), k // pruner.group_size)


class LpNorm(StructureRanking):
    """The length-normalised Lp norm of each group; with probability ``noise``, times standard normal draws."""

    def __init__(self, p: float, noise: float = 0.0) -> None:
        self.p = p
        self.noise = check_fraction("noise", noise, below_one=False)

    def scores(self, pruner: StructurePruner, param: torch.Tensor, param_name: str) -> torch.Tensor:
        scores = structure_scores(param, pruner.structure, self.p, pruner.block_shape, pruner.group_size)
        if self.noise and torch.rand((), generator=pruner.generator).item() <= self.noise:
            scores = scores * torch.randn(scores.shape, generator=pruner.generator).to(scores.device)
        return scores


class WeightGradient(StructureRanking):
    """Per filter, the sum of weight * gradient (Molchanov et al.'s first-order Taylor term, signed, as Distiller
    ranks it); an error when no backward pass has run yet."""

    def scores(self, pruner: StructurePruner, param: torch.Tensor, param_name: str) -> torch.Tensor:
        grad = pruner.params_grad(param_name, param)
        if grad is None:
            raise ValueError(f"{type(pruner).__name__} '{pruner.name}': '{param_name}' has no gradient yet; it ranks "
                             "filters by weight * gradient, so start its policy after an epoch of training")
        with torch.no_grad():
            return (param.detach() * grad).reshape(param.shape[0], -1).sum(dim=1)


class RandomScores(StructureRanking):
    """Uniform random scores from the pruner's generator: a uniformly random subset of the exact count."""

    def scores(self, pruner: StructurePruner, param: torch.Tensor, param_name: str) -> torch.Tensor:
        return torch.rand(param.shape[0], generator=pruner.generator)


class BernoulliDraw(StructureRanking):
    """Drop each filter independently with probability ``fraction`` (DropFilter), drawn again while it keeps none."""

    def keep_map(self, pruner: StructurePruner, param: torch.Tensor, param_name: str,
                 fraction: float) -> torch.Tensor | None:
        if fraction == 0:
            return None
        if not 0 < fraction < 1:
            raise ValueError(f"pruning all {param.shape[0]} filters of '{param_name}' would disconnect the layer "
                             f"(drop probability {fraction:g})")
        probabilities = torch.full((param.shape[0],), 1.0 - fraction, dtype=torch.float64)
        while True:
            keep = torch.bernoulli(probabilities, generator=pruner.generator).to(torch.bool)
            if keep.any():
                return keep


# -- the pruner ---------------------------------------------------------------------------------------------


class StructurePruner(Pruner):
    """Prune whole structures of each listed weight: the ``ranking`` decides which, the ``level`` schedule how many
    (Distiller's count of them, exact), ``group_dependency: Leader`` lets the first weight decide for all."""

    def __init__(self, name: str, group_type: str, weights: list[str] | str, ranking: StructureRanking,
                 level: LevelSchedule, group_dependency: str | None = None, group_size: int = 1,
                 rounding_fn: str | Callable[[float], int] = "floor", block_shape: Sequence[int] | None = None,
                 seed: int | None = None, model: torch.nn.Module | None = None,
                 group_types: tuple[str, ...] = LP_GROUP_TYPES) -> None:
        self.name = name
        self.group_type = check_group_type(group_type, group_types)
        #: the structures actually ranked: Distiller's ranked "Rows" are the weight's columns
        self.structure = "Cols" if self.group_type == "Rows" else self.group_type
        self.params_names = _weight_names(weights)
        self.group_dependency = _check_dependency(group_dependency)
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise ArgumentError("group_size", f"'group_size' must be a positive integer, got {group_size!r}")
        self.group_size = group_size
        self.rounding_fn = check_rounding_fn(rounding_fn)
        self.block_shape = block_shape
        seed = check_seed(seed)
        self.generator = torch.Generator().manual_seed(torch.initial_seed() if seed is None else seed)
        self.ranking = ranking
        self.level = level
        self._grads: dict[str, torch.Tensor | None] = {}
        if model is not None:
            self._check_model(model)

    # -- configuration --------------------------------------------------------------------------

    def leader(self) -> str:
        """The weight whose ranking decides for all listed weights under ``group_dependency: Leader``."""
        return self.params_names[0]

    def _noun(self) -> str:
        return STRUCTURE_NOUNS[self.structure]

    @property
    def refuses_sharding(self) -> str | None:
        """Why this pruner cannot prune a weight FSDP2 shards: only its blocks cannot (a block may span the rows
        of two ranks); filters are scored on each rank's rows and selected exactly across the shards, channels
        and rows by reductions over the shards."""
        if self.structure == "Blocks":
            return "group_type Blocks tiles rows that FSDP2 splits between ranks"
        return None

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

    # -- which and how many ------------------------------------------------------------------------

    def structure_ranking(self, param: torch.Tensor, param_name: str) -> torch.Tensor:
        """The ranking's scores of ``param``'s groups of structures (the lowest are pruned first)."""
        return self.ranking.scores(self, param, param_name)

    def keep_map(self, param: torch.Tensor, param_name: str, fraction: float) -> torch.Tensor | None:
        """Keep-map over groups of structures for ``fraction`` (None when nothing is to be pruned)."""
        return self.ranking.keep_map(self, param, param_name, fraction)

    def params_grad(self, param_name: str, param: torch.Tensor) -> torch.Tensor | None:
        """The gradient of ``param_name`` (that of the model's parameter, when ``param`` is a folded copy)."""
        return self._grads.get(param_name, param.grad)

    def keep_masks(self, step: PruningStep) -> dict[str, torch.Tensor]:
        """Each listed weight's mask, the leader's keep-map shared by all under ``group_dependency: Leader``."""
        assert self.level is not None
        targets = self.targets(step.params)
        self._grads = {name: step.params[name].grad for name in targets}
        if self.group_dependency == "Leader":
            leader = self.leader()
            shared = self.keep_map(step.ranked(leader), leader, self.level.level(leader, step))
            keeps = dict.fromkeys(targets, shared)
        else:
            keeps = {name: self.keep_map(step.ranked(name), name, self.level.level(name, step)) for name in targets}
        self._grads = {}
        return {name: expand_structure_mask(keep.to(step.params[name].device), step.params[name].shape,
                                            self.structure, self.block_shape, self.group_size)
                for name, keep in keeps.items() if keep is not None}

    # -- checkpoint -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The random generator's state, so a resumed run draws the same numbers."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        if "generator" in state:
            self.generator.set_state(state["generator"])


# -- Distiller's Lp-ranked pruners ---------------------------------------------------------------------------


class _LpRanked(StructurePruner):
    p: float = 1

    def __init__(self, name: str, group_type: str, weights: list[str] | str, level: LevelSchedule,
                 group_dependency: str | None, kwargs: dict[str, Any] | None, noise: float, group_size: int,
                 rounding_fn: str, block_shape: list[int] | None, seed: int | None,
                 model: torch.nn.Module | None) -> None:
        canonical = check_group_type(group_type, LP_GROUP_TYPES)
        ranking = LpNorm(self.p, noise)
        super().__init__(name, group_type, weights, ranking, level, group_dependency, group_size, rounding_fn,
                         _check_block_args(canonical, kwargs, block_shape), seed, model)

    @property
    def noise(self) -> float:
        assert isinstance(self.ranking, LpNorm)
        return self.ranking.noise


class L1RankedStructureParameterPruner(_LpRanked):
    """Zero exactly the ``desired_sparsity`` fraction of structures (``group_type``: Filters/3D,
    Channels, Rows, Blocks) with the lowest mean absolute value in each listed weight."""

    p = 1

    def __init__(self, name: str, group_type: str, desired_sparsity: float, weights: list[str] | str,
                 group_dependency: str | None = None, kwargs: dict[str, Any] | None = None, noise: float = 0.0,
                 group_size: int = 1, rounding_fn: str = "floor", block_shape: list[int] | None = None,
                 seed: int | None = None, model: torch.nn.Module | None = None) -> None:
        super().__init__(name, group_type, weights, FixedLevel(desired_sparsity), group_dependency, kwargs, noise,
                         group_size, rounding_fn, block_shape, seed, model)


class L2RankedStructureParameterPruner(L1RankedStructureParameterPruner):
    """As :class:`L1RankedStructureParameterPruner`, ranking by the L2 norm divided by the
    structure's number of elements."""

    p = 2


class L1RankedStructureParameterPruner_AGP(_LpRanked):
    """L1-ranked structure pruning whose level follows the AGP schedule from ``initial_sparsity`` to
    ``final_sparsity`` over the policy's epochs; the last pruning epoch prunes exactly the final fraction."""

    p = 1

    def __init__(self, name: str, initial_sparsity: float, final_sparsity: float, group_type: str,
                 weights: list[str] | str, group_dependency: str | None = None, kwargs: dict[str, Any] | None = None,
                 noise: float = 0.0, group_size: int = 1, rounding_fn: str = "floor",
                 block_shape: list[int] | None = None, seed: int | None = None,
                 model: torch.nn.Module | None = None) -> None:
        super().__init__(name, group_type, weights, AGPLevel(initial_sparsity, final_sparsity), group_dependency,
                         kwargs, noise, group_size, rounding_fn, block_shape, seed, model)


class L2RankedStructureParameterPruner_AGP(L1RankedStructureParameterPruner_AGP):
    """As :class:`L1RankedStructureParameterPruner_AGP`, ranking by the length-normalised L2 norm."""

    p = 2


class RandomLevelStructureParameterPruner(_LpRanked):
    """L1-ranked structure pruning at a level drawn uniformly from ``sparsity_range`` [lo, hi] each
    time masks are set (per weight; once per step for a Leader group): DropFilter by magnitude."""

    def __init__(self, name: str, group_type: str, sparsity_range: list[float], weights: list[str] | str,
                 group_dependency: str | None = None, kwargs: dict[str, Any] | None = None,
                 block_shape: list[int] | None = None, seed: int | None = None,
                 model: torch.nn.Module | None = None) -> None:
        generator = torch.Generator()
        level = RandomLevel(sparsity_range, generator)
        super().__init__(name, group_type, weights, level, group_dependency, kwargs, 0.0, 1, "floor", block_shape,
                         seed, model)
        level.generator = self.generator

    @property
    def sparsity_range(self) -> tuple[float, float]:
        assert isinstance(self.level, RandomLevel)
        return self.level.sparsity_range


# -- Distiller's filter pruners ranked by other criteria -------------------------------------------------------


class _FilterPruner(StructurePruner):
    """A filter pruner with Distiller's arguments (``group_type`` Filters or 3D) and the class's ranking."""

    ranking_class: type[StructureRanking]

    def __init__(self, name: str, group_type: str, weights: list[str] | str, level: LevelSchedule,
                 group_dependency: str | None, seed: int | None, model: torch.nn.Module | None) -> None:
        super().__init__(name, group_type, weights, self.ranking_class(), level, group_dependency, seed=seed,
                         model=model, group_types=FILTER_GROUP_TYPES)


class _LevelFilterPruner(_FilterPruner):
    def __init__(self, name: str, group_type: str, desired_sparsity: float, weights: list[str] | str,
                 group_dependency: str | None = None, seed: int | None = None,
                 model: torch.nn.Module | None = None) -> None:
        super().__init__(name, group_type, weights, FixedLevel(desired_sparsity), group_dependency, seed, model)


class _AGPFilterPruner(_FilterPruner):
    def __init__(self, name: str, initial_sparsity: float, final_sparsity: float, group_type: str,
                 weights: list[str] | str, group_dependency: str | None = None, seed: int | None = None,
                 model: torch.nn.Module | None = None) -> None:
        super().__init__(name, group_type, weights, AGPLevel(initial_sparsity, final_sparsity), group_dependency,
                         seed, model)


class GradientRankedFilterPruner(_LevelFilterPruner):
    """Prune exactly the ``desired_sparsity`` fraction of filters with the lowest sum of weight *
    gradient. Needs the gradient of a backward pass, so its policy must start after one."""

    ranking_class = WeightGradient


class GradientRankedFilterPruner_AGP(_AGPFilterPruner):
    """:class:`GradientRankedFilterPruner` with the AGP schedule from ``initial_sparsity`` to ``final_sparsity``."""

    ranking_class = WeightGradient


class RandomRankedFilterPruner(_LevelFilterPruner):
    """Prune exactly the ``desired_sparsity`` fraction of filters, chosen uniformly at random each
    time masks are set (a baseline for the rankings)."""

    ranking_class = RandomScores


class RandomRankedFilterPruner_AGP(_AGPFilterPruner):
    """:class:`RandomRankedFilterPruner` with the AGP schedule from ``initial_sparsity`` to ``final_sparsity``."""

    ranking_class = RandomScores


class BernoulliFilterPruner(_LevelFilterPruner):
    """Distiller's DropFilter: each filter is dropped independently with probability
    ``desired_sparsity``, drawn afresh every time masks are set, so the count varies around the
    target; a draw that would drop every filter of a layer is drawn again. Masks stay boolean:
    the kept filters are not rescaled."""

    ranking_class = BernoulliDraw


class BernoulliFilterPruner_AGP(_AGPFilterPruner):
    """:class:`BernoulliFilterPruner` whose drop probability follows the AGP schedule."""

    ranking_class = BernoulliDraw


# -- thresholding -----------------------------------------------------------------------------------------


class StructureParameterPruner(Pruner):
    """Distiller's structure thresholding: zero each structure whose magnitude is at most its threshold.

    ``reg_regims`` maps parameter names to ``[threshold, group_type]`` (group types Filters/3D,
    Channels, Rows, Cols, 2D kernels, 4D whole tensor); ``threshold_criteria`` is ``Mean_Abs`` (the
    mean absolute value of the structure) or ``Max`` (its largest magnitude). Zeroing every
    structure of a layer is an error, except for ``4D``, whose only structure is the whole layer.
    """

    no_levels = "prunes by threshold"

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
        self.params_names = list(self.reg_regims)

    def structure_keep(self, param: torch.Tensor, param_name: str) -> torch.Tensor:
        """The keep-mask of ``param_name``'s structures above its threshold (an error when none is)."""
        threshold, group_type = self.reg_regims[param_name]
        p = 1 if self.threshold_criteria == "Mean_Abs" else math.inf
        keep = structure_scores(param, group_type, p) > threshold
        if group_type != "4D" and not scalar(keep.any()):
            raise ValueError(f"pruning all {keep.numel()} {STRUCTURE_NOUNS[group_type]} of '{param_name}' would "
                             f"disconnect the layer (every {self.threshold_criteria} is at most {threshold:g})")
        return expand_structure_mask(keep, param.shape, group_type)

    def keep_masks(self, step: PruningStep) -> dict[str, torch.Tensor]:
        """Threshold every parameter ``reg_regims`` names."""
        return {name: self.structure_keep(step.ranked(name), name) for name in self.targets(step.params)}
