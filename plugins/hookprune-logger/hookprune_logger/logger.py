"""The logger: one :class:`Run` per scheduler, fed by four hooks, written by :meth:`Run.write`.

What a row holds (``tag`` as in TensorBoard; ``epoch/...`` rows have ``step = epoch`` and no
``minibatch_id``, ``minibatch/...`` rows have ``step = epoch * minibatches_per_epoch + minibatch_id``):

- ``loss``: the loss the loop handed to ``before_backward`` (an epoch row: its mean over the epoch's
  minibatches);
- ``loss_component/NAME``: each term of ``scheduler.loss_components`` (an epoch row: its mean over
  the minibatches that had it);
- ``lr/groupI``: the learning rate of the optimizer's parameter group I (an epoch row: the one the
  epoch started with, since LR schedulers step at its end);
- ``sparsity/NAME``: the fraction of zeros in each weight (each parameter with more than one
  dimension) and each masked parameter, read from the model; ``sparsity/total`` over all weights;
- ``metric/KEY``: each number in the ``metrics`` of ``on_epoch_end`` (epoch rows only).
"""

from __future__ import annotations

import csv
import itertools
import os
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hookprune import distributed, hookimpl

ENV_DIR = "HOOKPRUNE_LOG_DIR"
ENV_EVERY = "HOOKPRUNE_LOG_EVERY"
ENV_FORMATS = "HOOKPRUNE_LOG_FORMATS"
FORMATS: tuple[str, ...] = ("csv", "tensorboard")
CSV_NAME = "scalars.csv"
CSV_COLUMNS: tuple[str, ...] = ("epoch", "minibatch_id", "step", "tag", "value")

#: one logged value: epoch, minibatch_id (None in an epoch row), step, tag, value
Row = tuple[int, int | None, int, str, float]


@dataclass(frozen=True)
class Config:
    """Where and what to log: the folder, every how many minibatches (0: epochs only), the formats."""

    log_dir: Path
    every: int = 0
    formats: tuple[str, ...] = FORMATS

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Config | None:
        """The configuration ``environ`` (the process environment by default) gives, or None when
        ``HOOKPRUNE_LOG_DIR`` is unset or empty; a ValueError naming the variable when one is malformed."""
        env = os.environ if environ is None else environ
        folder = env.get(ENV_DIR, "").strip()
        if not folder:
            return None
        every_text = env.get(ENV_EVERY, "").strip() or "0"
        every = int(every_text) if every_text.isdigit() else -1
        if every < 0:
            raise ValueError(f"{ENV_EVERY}={every_text!r}: give a whole number of minibatches "
                             "(0 logs at the end of each epoch only)")
        formats_text = env.get(ENV_FORMATS, "")
        formats = tuple(f.strip().lower() for f in formats_text.split(",") if f.strip()) or FORMATS
        unknown = [f for f in formats if f not in FORMATS]
        if unknown:
            raise ValueError(f"{ENV_FORMATS}={formats_text!r}: unknown format {unknown[0]!r}; "
                             f"give {' or '.join(FORMATS)}, or both comma-separated")
        return cls(Path(folder), every, formats)


class Run:
    """The logs of one scheduler: its folder and writers, and what the current epoch has gathered."""

    _numbers = itertools.count(1)

    def __init__(self, config: Config) -> None:
        self.config = config
        #: the run's folder, made at the first row
        self.folder: Path | None = None
        self._tensorboard: Any = None
        self.losses: list[torch.Tensor] = []
        self.components: dict[str, list[torch.Tensor]] = {}
        self.epoch_lrs: list[float] = []
        self.backward_seen = False

    def _open(self) -> Path:
        if self.folder is None:
            name = f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{next(Run._numbers)}"
            self.folder = self.config.log_dir / name
            self.folder.mkdir(parents=True, exist_ok=True)
        if "tensorboard" in self.config.formats and self._tensorboard is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(log_dir=str(self.folder))
        return self.folder

    def write(self, rows: list[Row]) -> None:
        """Append ``rows`` to the CSV file and the TensorBoard event file, and flush both."""
        if not rows:
            return
        folder = self._open()
        if "csv" in self.config.formats:
            path = folder / CSV_NAME
            is_new = not path.exists()
            with path.open("a", newline="") as f:
                writer = csv.writer(f)
                if is_new:
                    writer.writerow(CSV_COLUMNS)
                for epoch, minibatch_id, step, tag, value in rows:
                    writer.writerow((epoch, "" if minibatch_id is None else minibatch_id, step, tag, repr(value)))
        if self._tensorboard is not None:
            for _, _, step, tag, value in rows:
                self._tensorboard.add_scalar(tag, value, step)
            self._tensorboard.flush()

    def close(self) -> None:
        """Close the TensorBoard writer; a later row opens a new event file in the same folder."""
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None


def learning_rates(optimizer: torch.optim.Optimizer | None) -> list[float]:
    """The learning rate of each of ``optimizer``'s parameter groups (none without an optimizer)."""
    return [] if optimizer is None else [float(group["lr"]) for group in optimizer.param_groups]


def sparsities(model: torch.nn.Module, masked: Iterable[str]) -> list[tuple[str, float]]:
    """``(sparsity/NAME, fraction of zeros)`` for each weight and masked parameter of ``model``, then
    ``sparsity/total`` over the weights (parameters with more than one dimension)."""
    masked = set(masked)
    named = [(name, p) for name, p in model.named_parameters() if p.dim() > 1 or name in masked]
    by_device: dict[torch.device, list[int]] = {}
    for i, (_, p) in enumerate(named):
        by_device.setdefault(p.device, []).append(i)
    zeros = [0] * len(named)
    for indices in by_device.values():
        counts = torch.stack([(named[i][1] == 0).sum() for i in indices]).tolist()
        for i, count in zip(indices, counts, strict=True):
            zeros[i] = int(count)
    rows = [(f"sparsity/{name}", z / p.numel()) for (name, p), z in zip(named, zeros, strict=True)]
    weights = [(z, p.numel()) for (_, p), z in zip(named, zeros, strict=True) if p.dim() > 1]
    if weights:
        rows.append(("sparsity/total", sum(z for z, _ in weights) / sum(n for _, n in weights)))
    return rows


def mean(values: list[torch.Tensor]) -> float:
    """The mean of scalar tensors, summed one by one in double precision."""
    doubles = torch.stack([v.double().mean().cpu() for v in values]).tolist()
    return sum(doubles) / len(doubles)


def _detached(value: Any) -> torch.Tensor:
    return value.detach() if isinstance(value, torch.Tensor) else torch.tensor(float(value))


class ScalarLogger:
    """The plugin object: finds (or starts) each scheduler's :class:`Run` and feeds it from four hooks."""

    #: the logger only reads masks, so under distributed training its hooks cost no collective
    sets_masks = False

    def __init__(self) -> None:
        self._runs: weakref.WeakKeyDictionary[Any, Run | None] = weakref.WeakKeyDictionary()

    def run_of(self, scheduler: Any) -> Run | None:
        """``scheduler``'s run, or None when the environment turns logging off for it."""
        try:
            return self._runs[scheduler]
        except KeyError:
            pass
        config = Config.from_environ()
        run = Run(config) if config is not None and distributed.rank() == 0 else None
        self._runs[scheduler] = run
        if run is not None:
            weakref.finalize(scheduler, run.close)
        return run

    def close(self, scheduler: Any) -> None:
        """Close ``scheduler``'s TensorBoard writer now rather than when the scheduler is collected."""
        run = self._runs.get(scheduler)
        if run is not None:
            run.close()

    @hookimpl
    def on_epoch_begin(self, scheduler: Any, optimizer: torch.optim.Optimizer | None) -> None:
        """Note the learning rates the epoch starts with."""
        run = self.run_of(scheduler)
        if run is None:
            return
        run.epoch_lrs = learning_rates(optimizer)

    @hookimpl
    def before_backward(self, scheduler: Any, loss: torch.Tensor) -> None:
        """Keep the loop's loss (detached; nothing is read back from the device here)."""
        run = self.run_of(scheduler)
        if run is None:
            return
        run.losses.append(loss.detach())
        run.backward_seen = True

    @hookimpl
    def on_minibatch_end(self, scheduler: Any, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                         epoch: int, minibatch_id: int, minibatches_per_epoch: int) -> None:
        """Keep the minibatch's loss terms; on every N-th minibatch, write its rows."""
        run = self.run_of(scheduler)
        if run is None:
            return
        components: dict[str, torch.Tensor] = {}
        if run.backward_seen:
            components = {name: _detached(value) for name, value in scheduler.loss_components.items()}
            for name, value in components.items():
                run.components.setdefault(name, []).append(value)
        step = epoch * minibatches_per_epoch + minibatch_id
        every = run.config.every
        if every and (step + 1) % every == 0:
            values: list[tuple[str, float]] = []
            if run.backward_seen:
                values.append(("loss", float(run.losses[-1])))
                values += [(f"loss_component/{name}", float(value)) for name, value in components.items()]
            values += [(f"lr/group{i}", lr) for i, lr in enumerate(learning_rates(optimizer))]
            values += sparsities(model, scheduler.masks)
            run.write([(epoch, minibatch_id, step, f"minibatch/{tag}", value) for tag, value in values])
        run.backward_seen = False

    @hookimpl
    def on_epoch_end(self, scheduler: Any, model: torch.nn.Module, epoch: int, metrics: dict[str, Any]) -> None:
        """Write the epoch's rows: mean loss and terms, learning rates, sparsity, metrics."""
        run = self.run_of(scheduler)
        if run is None:
            return
        values: list[tuple[str, float]] = []
        if run.losses:
            values.append(("loss", mean(run.losses)))
        values += [(f"loss_component/{name}", mean(terms)) for name, terms in run.components.items()]
        values += [(f"lr/group{i}", lr) for i, lr in enumerate(run.epoch_lrs)]
        values += sparsities(model, scheduler.masks)
        for key, value in metrics.items():
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                values.append((f"metric/{key}", float(value.detach())))
            elif isinstance(value, int | float) and not isinstance(value, bool):
                values.append((f"metric/{key}", float(value)))
        run.write([(epoch, None, epoch, f"epoch/{tag}", value) for tag, value in values])
        run.losses, run.components, run.epoch_lrs = [], {}, []


#: the object the entry point ``logger = "hookprune_logger:plugin"`` registers with every scheduler
plugin = ScalarLogger()


def close(scheduler: Any) -> None:
    """Close the TensorBoard writer of ``scheduler``'s run (it is closed when the scheduler is collected
    otherwise); every row is already flushed to disk when its hook returns."""
    plugin.close(scheduler)
