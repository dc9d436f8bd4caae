"""Activation statistics for post-training quantization, in Distiller's calibration format.

Per module name (without DataParallel's ``module.``)::

    conv1:
      inputs:
        0: {min, max, avg_min, avg_max, mean, std, b, shape}
      output: {min, max, avg_min, avg_max, mean, std, b, shape}

``avg_min`` / ``avg_max`` average the per-sample minimum / maximum (the per-batch one when each sample is a single
value), ``std`` is the population standard deviation and ``b`` the mean absolute deviation from the mean (the
Laplace scale ACIQ clipping uses).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import yaml
from torch import nn

from hookprune._engine.params import normalize_name

Stats = dict[str, dict[str, Any]]


class _Record:
    """Running statistics of one tensor over the calibration batches (two passes: the moments need the mean)."""

    def __init__(self) -> None:
        self.min = math.inf
        self.max = -math.inf
        self.sum_mins = 0.0
        self.sum_maxs = 0.0
        self.count_extremes = 0
        self.total = 0.0
        self.numel = 0
        self.sum_sq_dev = 0.0
        self.sum_abs_dev = 0.0
        self.numel_dev = 0
        self.shape: str | None = None

    def first_pass(self, t: torch.Tensor) -> None:
        t = t.detach().to(torch.float64)
        per_sample = t.reshape(t.shape[0], -1) if t.dim() > 0 else t.reshape(1, 1)
        if per_sample.shape[1] == 1:
            mins, maxs = per_sample.amin().reshape(1), per_sample.amax().reshape(1)
        else:
            mins, maxs = per_sample.amin(dim=1), per_sample.amax(dim=1)
        self.min = min(self.min, float(mins.min()))
        self.max = max(self.max, float(maxs.max()))
        self.sum_mins += float(mins.sum())
        self.sum_maxs += float(maxs.sum())
        self.count_extremes += mins.numel()
        self.total += float(t.sum())
        self.numel += t.numel()
        if self.shape is None:
            self.shape = "(" + ", ".join(str(d) for d in t.shape) + ")"

    def second_pass(self, t: torch.Tensor) -> None:
        deviation = t.detach().to(torch.float64) - self.mean
        self.sum_sq_dev += float((deviation**2).sum())
        self.sum_abs_dev += float(deviation.abs().sum())
        self.numel_dev += t.numel()

    @property
    def mean(self) -> float:
        return self.total / self.numel

    def value(self) -> dict[str, Any]:
        return {"min": self.min, "max": self.max, "avg_min": self.sum_mins / self.count_extremes,
                "avg_max": self.sum_maxs / self.count_extremes, "mean": self.mean,
                "std": math.sqrt(self.sum_sq_dev / self.numel_dev), "b": self.sum_abs_dev / self.numel_dev,
                "shape": self.shape}


def _model_input(batch: Any) -> Any:
    if isinstance(batch, list | tuple):
        return batch[0]
    return batch


def collect_activation_stats(model: nn.Module, batches: Iterable[Any]) -> Stats:
    """Run ``model`` in evaluation mode over ``batches`` (input tensors, or sequences whose first item is the
    input) and return every leaf module's input and output statistics in Distiller's format.

    Inputs are recorded before the module runs, so in-place modules (``ReLU(inplace=True)``) report their true
    inputs. The batches are read twice; an iterator is materialized first.
    """
    if iter(batches) is batches:
        batches = list(batches)
    leaves: list[tuple[str, nn.Module]] = []
    seen: set[int] = set()
    for name, module in model.named_modules():
        if name and not any(True for _ in module.children()) and id(module) not in seen:
            seen.add(id(module))
            leaves.append((name, module))
    inputs: dict[str, dict[int, _Record]] = {name: {} for name, _ in leaves}
    outputs: dict[str, _Record] = {}
    second = [False]

    def observe(record: _Record, t: torch.Tensor) -> None:
        if second[0]:
            record.second_pass(t)
        else:
            record.first_pass(t)

    def pre_hook(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            for idx, arg in enumerate(args):
                if isinstance(arg, torch.Tensor) and arg.numel():
                    observe(inputs[name].setdefault(idx, _Record()), arg)
        return hook

    def post_hook(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.numel():
                observe(outputs.setdefault(name, _Record()), output)
        return hook

    handles = []
    for name, module in leaves:
        handles.append(module.register_forward_pre_hook(pre_hook(name)))
        handles.append(module.register_forward_hook(post_hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for second_pass in (False, True):
                second[0] = second_pass
                for batch in batches:
                    model(_model_input(batch))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    stats: Stats = {}
    for name, _ in leaves:
        if name not in outputs:
            continue
        entry: dict[str, Any] = {}
        if inputs[name]:
            entry["inputs"] = {idx: record.value() for idx, record in sorted(inputs[name].items())}
        entry["output"] = outputs[name].value()
        stats[normalize_name(name)] = entry
    return stats


def save_stats(stats: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write ``stats`` as Distiller's calibration YAML."""
    with open(path, "w", encoding="utf-8") as stream:
        yaml.safe_dump(_plain(stats), stream, sort_keys=False, default_flow_style=False)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return value.item()
    return value


def load_stats(path: str | os.PathLike[str]) -> Stats:
    """Read a calibration YAML (this module's or Distiller's); ValueError naming the file when it is malformed."""
    with open(path, encoding="utf-8") as stream:
        data = yaml.safe_load(stream)
    return check_stats(data, str(path))


def check_stats(data: Any, source: str = "activation stats") -> Stats:
    """Validate the layout of calibration statistics: module name -> ``output`` (and optional ``inputs`` by
    index), each a mapping of statistic names to values; input indices become integers."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: expected a mapping of module names to statistics")
    checked: Stats = {}
    for name, entry in data.items():
        if not isinstance(entry, Mapping) or not isinstance(entry.get("output"), Mapping):
            raise ValueError(f"{source}: entry '{name}' needs an 'output' mapping of statistics")
        out: dict[str, Any] = {"output": dict(entry["output"])}
        if "inputs" in entry:
            if not isinstance(entry["inputs"], Mapping):
                raise ValueError(f"{source}: '{name}.inputs' must map input indices to statistics")
            try:
                out["inputs"] = {int(idx): dict(rec) for idx, rec in entry["inputs"].items()}
            except (TypeError, ValueError):
                raise ValueError(f"{source}: '{name}.inputs' must map input indices (0, 1, ...) to statistics "
                                 "mappings") from None
        checked[str(name)] = out
    return checked
