"""Distiller's pruning sensitivity analysis: how much accuracy each parameter loses at each sparsity level.

One parameter at a time is pruned in place to each level, the model is evaluated by the caller's
``test_func``, and the parameter is restored bit for bit before the next step (also when
``test_func`` raises), so a large model needs memory for one extra copy of one parameter only. The
result, ``{param_name: {sparsity: (top1, top5, loss)}}``, is what Distiller's
``perform_sensitivity_analysis`` returned; it is written to a CSV with Distiller's columns and read
back with :func:`sensitivities_from_csv`, and plotted with :func:`sensitivities_to_png`.

Groups:

- ``element``: exactly ``int(sparsity * numel)`` elements of smallest magnitude are zeroed (ties:
  lowest index first), as :class:`~hookprune.pruning.magnitude.SparsityLevelParameterPruner` does.
- ``filter`` / ``channel``: the filters (dim 0) / input channels (dim 1) of a 4-D convolution
  weight with the smallest mean absolute value, counted and ranked as
  :class:`~hookprune.pruning.ranked.L1RankedStructureParameterPruner` does; level 1.0 zeroes every
  one of them (a pruner refuses that level, an analysis measures it).
"""

from __future__ import annotations

import csv
import inspect
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from numbers import Real
from typing import Any

import torch
from torch import nn

from hookprune._engine.params import ParamIndex
from hookprune.errors import suggest
from hookprune.pruning.structures import (
    count_to_prune,
    expand_structure_mask,
    num_structures,
    prune_lowest,
    structure_scores,
)
from hookprune.selection import level_keep_mask

__all__ = [
    "CSV_COLUMNS",
    "GROUPS",
    "Sensitivities",
    "perform_sensitivity_analysis",
    "sensitivities_from_csv",
    "sensitivities_to_csv",
    "sensitivities_to_png",
]

logger = logging.getLogger(__name__)

#: ``{param_name: {sparsity: (top1, top5, loss)}}``, parameters and levels in the order analysed
Sensitivities = OrderedDict[str, OrderedDict[float, tuple[float, float, float]]]

#: The header of a sensitivity CSV (Distiller's).
CSV_COLUMNS = ("parameter", "sparsity", "top1", "top5", "loss")

#: The structure each ``group`` prunes (``structures.py``'s group type), None for single elements.
GROUPS: dict[str, str | None] = {"element": None, "filter": "Filters", "channel": "Channels"}


def perform_sensitivity_analysis(model: nn.Module, net_params: Sequence[str], sparsities: Sequence[float],
                                 test_func: Callable[[nn.Module], tuple[float, float, float]],
                                 group: str = "element", progress: bool = False,
                                 ) -> OrderedDict[str, OrderedDict[float, tuple[float, float, float]]]:
    """Prune each of ``net_params`` alone to each of ``sparsities``, evaluate with ``test_func``, restore it.

    Returns ``{param_name: {sparsity: (top1, top5, loss)}}`` keyed by the names as given, in the order
    given (Distiller's result). ``test_func`` receives the model (by keyword ``model`` when it has such
    an argument, as Distiller called it; otherwise positionally) and returns top-1, top-5 and loss.
    Names may carry DataParallel's ``module.``. Every name, the group and every level are checked
    before the first evaluation. After each evaluation the parameter's values, every module's
    train/eval mode and every parameter's ``requires_grad`` are put back as they were found.
    ``progress=True`` shows a tqdm bar over the (parameter, level) pairs when tqdm is installed.
    """
    structure = _check_group(group)
    levels = _check_sparsities(sparsities)
    targets = _resolve_params(model, net_params, group, structure)
    call = _model_caller(test_func)
    sensitivities: Sensitivities = OrderedDict()
    with _progress_bar(len(targets) * len(levels), progress) as bar:
        for given, param in targets.items():
            sensitivity: OrderedDict[float, tuple[float, float, float]] = OrderedDict()
            sensitivities[given] = sensitivity
            for level in levels:
                logger.info("Testing sensitivity of %s [%0.1f%% sparsity]", given, level * 100)
                if bar is not None:
                    bar.set_postfix_str(f"{given} @ {level:g}", refresh=False)
                with _pruned(model, param, _keep_mask(param, given, level, structure)):
                    result = call(model)
                sensitivity[level] = _check_result(result, given, level)
                if bar is not None:
                    bar.update(1)
    return sensitivities


def sensitivities_to_csv(sensitivities: Mapping[str, Mapping[float, Sequence[float]]],
                         fname: str | os.PathLike[str]) -> None:
    """Write ``sensitivities`` as CSV rows ``parameter,sparsity,top1,top5,loss`` (Distiller's columns),
    one row per parameter and level; numbers are written so that they read back exactly."""
    with open(fname, "w", newline="", encoding="utf-8") as csv_file:
        writer = csv.writer(csv_file)
        writer.writerow(CSV_COLUMNS)
        for param_name, sensitivity in sensitivities.items():
            for sparsity, values in sensitivity.items():
                row = _check_result(values, param_name, float(sparsity))
                writer.writerow([param_name, repr(float(sparsity)), *(repr(v) for v in row)])


def sensitivities_from_csv(fname: str | os.PathLike[str]) -> Sensitivities:
    """Read a sensitivity CSV (this module's or Distiller's) back into ``{param: {sparsity: (top1, top5,
    loss)}}``, all floats, parameters in order of first appearance and levels in file order."""
    sensitivities: Sensitivities = OrderedDict()
    with open(fname, newline="", encoding="utf-8") as csv_file:
        reader = csv.reader(csv_file)
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != list(CSV_COLUMNS):
            raise ValueError(f"{os.fspath(fname)}:1: a sensitivity CSV starts with the header "
                             f"{','.join(CSV_COLUMNS)}, got {header!r}")
        for row in reader:
            if not row:
                continue
            where = f"{os.fspath(fname)}:{reader.line_num}"
            if len(row) != len(CSV_COLUMNS):
                raise ValueError(f"{where}: expected {len(CSV_COLUMNS)} columns ({','.join(CSV_COLUMNS)}), "
                                 f"got {len(row)}: {row!r}")
            try:
                sparsity, top1, top5, loss = (float(v) for v in row[1:])
            except ValueError:
                raise ValueError(f"{where}: sparsity, top1, top5 and loss must be numbers, got {row[1:]!r}") from None
            sensitivities.setdefault(row[0], OrderedDict())[sparsity] = (top1, top5, loss)
    return sensitivities


def sensitivities_to_png(sensitivities: Mapping[str, Mapping[float, Sequence[float]]],
                         fname: str | os.PathLike[str]) -> None:
    """Plot top-1 accuracy against sparsity, one line per parameter, into the PNG file ``fname``.

    Drawn on its own Agg canvas (no pyplot, no change to matplotlib's global backend). The legend
    sits beside the axes, in up to three columns when there are many parameters. Needs matplotlib.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("sensitivities_to_png needs matplotlib: pip install matplotlib") from None
    count = len(sensitivities)
    columns = max(1, min(3, math.ceil(count / 25)))
    figure = Figure(figsize=(8 + 3 * columns, 6))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for param_name, sensitivity in sensitivities.items():
        levels = list(sensitivity)
        axes.plot([float(s) for s in levels], [float(sensitivity[s][0]) for s in levels],
                  marker=".", linewidth=1, label=param_name)
    axes.set_xlabel("sparsity")
    axes.set_ylabel("top-1 accuracy")
    axes.set_title("Pruning sensitivity")
    axes.grid(True, alpha=0.3)
    if count:
        axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize="x-small",
                    ncol=columns, frameon=False)
    figure.savefig(fname, format="png", dpi=100, bbox_inches="tight")


def _check_group(group: Any) -> str | None:
    if not isinstance(group, str) or group not in GROUPS:
        raise ValueError(f"group must be one of {', '.join(GROUPS)}; got {group!r}{suggest(group, GROUPS)}")
    return GROUPS[group]


def _check_sparsities(sparsities: Sequence[float]) -> list[float]:
    """The levels as floats, each once, in the order given; ValueError for one outside [0, 1]."""
    if isinstance(sparsities, str | bytes) or not hasattr(sparsities, "__iter__"):
        raise ValueError(f"sparsities must be a sequence of numbers in [0, 1], got {sparsities!r}")
    levels: list[float] = []
    for value in sparsities:
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"every sparsity level must be a number within [0, 1], got {value!r}")
        if float(value) not in levels:
            levels.append(float(value))
    return levels


def _resolve_params(model: nn.Module, net_params: Sequence[str], group: str,
                    structure: str | None) -> OrderedDict[str, nn.Parameter]:
    """The parameters named by ``net_params`` (as given -> the model's parameter); every name is checked
    to exist, to appear once and to suit ``group`` before anything is evaluated."""
    if isinstance(net_params, str):
        raise ValueError(f"net_params must be a sequence of parameter names, got the string {net_params!r}")
    index = ParamIndex(model)
    unknown = [name for name in net_params if not isinstance(name, str) or index.resolve(name) is None]
    if unknown:
        raise ValueError("; ".join(index.unknown_message(str(name)) for name in unknown))
    targets: OrderedDict[str, nn.Parameter] = OrderedDict()
    seen: dict[str, str] = {}
    for given in net_params:
        actual = index.resolve(given)
        assert actual is not None
        if actual in seen:
            raise ValueError(f"parameter '{given}' is listed twice (also as '{seen[actual]}')")
        seen[actual] = given
        param = index.params[actual]
        if not param.dtype.is_floating_point:
            raise ValueError(f"parameter '{given}' holds {param.dtype} values, not floating point ones")
        if structure is not None and param.dim() != 4:
            raise ValueError(f"group '{group}' prunes {structure.lower()} of 4-D convolution weights; "
                             f"parameter '{given}' has shape {tuple(param.shape)}")
        targets[given] = param
    return targets


def _keep_mask(param: torch.Tensor, param_name: str, level: float, structure: str | None) -> torch.Tensor:
    """Boolean mask of ``param``'s shape, False where ``level`` prunes (see the module docstring)."""
    with torch.no_grad():
        if structure is None:
            return level_keep_mask(param.detach(), level)
        n = num_structures(param.shape, structure)
        k = n if level == 1.0 else count_to_prune(n, level, param_name=param_name, structure=structure.lower())
        keep = prune_lowest(structure_scores(param, structure, p=1), k)
        return expand_structure_mask(keep.to(param.device), param.shape, structure)


@contextmanager
def _pruned(model: nn.Module, param: nn.Parameter, keep: torch.Tensor) -> Iterator[None]:
    """Zero ``param`` where ``keep`` is False for the block; afterwards restore its values bit for bit,
    every module's training flag and every parameter's ``requires_grad``, even when the block raises."""
    modes = [(module, module.training) for module in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    with torch.no_grad():
        saved = param.detach().clone()
        param.masked_fill_(~keep, 0)
    try:
        yield
    finally:
        with torch.no_grad():
            param.copy_(saved)
        for module, training in modes:
            module.training = training
        for p, requires_grad in grads:
            p.requires_grad_(requires_grad)


def _model_caller(test_func: Callable[..., Any]) -> Callable[[nn.Module], Any]:
    """Call ``test_func`` with ``model=`` when it takes an argument so named (Distiller's call, which a
    ``functools.partial`` with earlier keywords bound needs), positionally otherwise."""
    if not callable(test_func):
        raise TypeError(f"test_func must be callable, got {test_func!r}")
    try:
        parameters = inspect.signature(test_func).parameters
    except (TypeError, ValueError):
        return test_func
    accepted = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    named = parameters.get("model")
    if named is not None and named.kind in accepted:
        return lambda model: test_func(model=model)
    return test_func


def _check_result(result: Any, param_name: str, level: float) -> tuple[float, float, float]:
    """``(top1, top5, loss)`` as floats; TypeError naming the parameter and level for anything else."""
    try:
        top1, top5, loss = (float(v) for v in result)
    except (TypeError, ValueError):
        raise TypeError(f"the result for '{param_name}' at sparsity {level:g} must be three numbers "
                        f"(top1, top5, loss), got {result!r}") from None
    return top1, top5, loss


@contextmanager
def _progress_bar(total: int, enabled: bool) -> Iterator[Any]:
    """A tqdm bar of ``total`` steps when ``enabled`` and tqdm is installed, else None."""
    if not enabled:
        yield None
        return
    try:
        from tqdm import tqdm
    except ImportError:
        yield None
        return
    bar = tqdm(total=total, desc="sensitivity", unit="eval")
    try:
        yield bar
    finally:
        bar.close()
