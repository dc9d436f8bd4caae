"""A Lightning callback that drives a hookprune compression schedule from ``Trainer.fit``.

Where each hookprune event fires, for one optimizer step of ``accumulate_grad_batches`` batches::

    on_train_epoch_start     -> on_epoch_begin(epoch=trainer.current_epoch)
    on_train_batch_start     -> on_minibatch_begin        (first batch of the step only)
    training_step returns    -> before_backward           (every batch: the returned loss becomes loss + terms)
    on_before_optimizer_step -> before_optimizer_step
    on_train_batch_end       -> on_minibatch_end          (the batch whose optimizer step ran: masks re-applied)
    on_train_epoch_end       -> on_epoch_end(metrics)     (after validation: trainer.callback_metrics)

A hookprune minibatch is one optimizer step, so ``minibatch_id`` counts optimizer steps within the epoch and
``minibatches_per_epoch`` is ``ceil(num_training_batches / accumulate_grad_batches)``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import hookprune
import lightning.pytorch as pl
import torch
from hookprune import CompressionScheduler, distributed
from hookprune import knowledge_distillation as kd
from lightning.pytorch.callbacks import Callback

Schedule = str | os.PathLike[str] | Mapping[str, Any]


class HookpruneSetupError(ValueError):
    """The Trainer or LightningModule is set up in a way the schedule cannot be driven correctly."""


class HookpruneCallback(Callback):
    """Load ``schedule`` onto the LightningModule and its optimizer when fitting starts, and fire its events.

    :param schedule: a schedule file or an already-parsed dict in Distiller's format.
    :param submodule: the dotted name of the submodule whose parameter names the schedule uses
        (``"model"`` for a module that keeps its network in ``self.model``); the whole module when None.
    :param teacher: the teacher model of the schedule's ``distillers`` entry that gives no ``teacher_arch``;
        it is moved to the student's device when fitting starts.
    :param min_metric: the logged metric handed to the schedule as ``metrics["min"]`` at each epoch's end
        (what ``ReduceLROnPlateau`` in mode ``min`` reads), usually the validation loss.
    :param max_metric: the logged metric handed over as ``metrics["max"]`` (e.g. the validation accuracy).

    The schedule's additive loss terms (regularizers, knowledge distillation) are added to the loss the module's
    ``training_step`` returns, before Lightning scales it for gradient accumulation and calls backward. With a
    ``distillers`` section, the training step must run the student through its ``forward`` (``self(x)``, or
    ``self.<submodule>(x)``) with positional inputs: that call then runs the teacher beside it.
    """

    def __init__(self, schedule: Schedule, *, submodule: str | None = None, teacher: torch.nn.Module | None = None,
                 min_metric: str | None = "val_loss", max_metric: str | None = None) -> None:
        super().__init__()
        self.schedule = schedule
        self.submodule = submodule
        self.teacher = teacher
        self.min_metric = min_metric
        self.max_metric = max_metric
        #: the scheduler built at fit start (masks, instances, ``loss_components``, ``sparsity()``)
        self.scheduler: CompressionScheduler | None = None
        self._model: torch.nn.Module | None = None
        self._saved: dict[str, Any] | None = None
        self._resumed_epoch: int | None = None
        self._step: dict[str, int] | None = None
        self._stepped = False
        self._per_epoch = 0
        self._patched: pl.LightningModule | None = None

    # -- setting up ---------------------------------------------------------------------------

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check the setup, build the scheduler on the module and its optimizer, and wrap ``training_step``."""
        self._check_trainer(trainer, pl_module)
        model = self._target(pl_module)
        if self.teacher is not None:
            self.teacher.to(pl_module.device)
        sched = hookprune.load(self.schedule, model, trainer.optimizers[0], teacher=self.teacher)
        if trainer.lr_scheduler_configs and any(policy.kind == "lr_scheduler" for policy in sched.scheduled):
            raise HookpruneSetupError(
                "the schedule has lr_schedulers and configure_optimizers() returns an LR scheduler too: both would "
                "set the learning rate; keep one of them")
        # every rank of a distributed strategy computes masks; rank 0's become everyone's
        distributed.synchronize_masks_if_distributed(sched)
        self.scheduler, self._model = sched, model
        if self._saved is not None:
            self._restore()
        self._wrap_training_step(pl_module)

    def _check_trainer(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if len(trainer.optimizers) != 1:
            raise HookpruneSetupError(
                f"configure_optimizers() returned {len(trainer.optimizers)} optimizers; a schedule drives exactly "
                "one (its masks are re-applied after that optimizer's step, and Lightning steps several only under "
                "manual optimization)")
        if not pl_module.automatic_optimization:
            raise HookpruneSetupError(
                "manual optimization (automatic_optimization = False) is not supported: the callback cannot tell "
                "which loss is backpropagated or when the optimizer steps; fire hookprune's events from your "
                "training_step with hookprune.fire(...) instead")
        if trainer.strategy.handles_gradient_accumulation:
            raise HookpruneSetupError(
                f"the {type(trainer.strategy).__name__} strategy steps the optimizer itself, so the masks could not "
                "be re-applied after each optimizer step; use a strategy whose optimizer step Lightning runs")

    def _target(self, pl_module: pl.LightningModule) -> torch.nn.Module:
        if self.submodule is None:
            return pl_module
        try:
            return pl_module.get_submodule(self.submodule)
        except AttributeError:
            children = ", ".join(name for name, _ in pl_module.named_children()) or "none"
            raise HookpruneSetupError(f"the LightningModule has no submodule '{self.submodule}' (its children: "
                                      f"{children})") from None

    # -- the training step --------------------------------------------------------------------

    def _wrap_training_step(self, pl_module: pl.LightningModule) -> None:
        self._unwrap()
        original = pl_module.training_step
        sched, model = self.scheduler, self._model
        assert sched is not None and model is not None

        def training_step(*args: Any, **kwargs: Any) -> Any:
            # while distilling, the student's outermost forward call runs through the active distiller
            with kd.routed_forward(sched, model):
                output = original(*args, **kwargs)
            return self._add_loss_terms(output)

        pl_module.training_step = training_step  # type: ignore[method-assign]
        self._patched = pl_module

    def _unwrap(self) -> None:
        if self._patched is not None:
            self._patched.__dict__.pop("training_step", None)
            self._patched = None

    def _add_loss_terms(self, output: Any) -> Any:
        if self.scheduler is None or self._step is None:
            return output
        if isinstance(output, torch.Tensor):
            return self.scheduler.fire("before_backward", **self._step, loss=output)
        if isinstance(output, Mapping) and isinstance(output.get("loss"), torch.Tensor):
            return {**output, "loss": self.scheduler.fire("before_backward", **self._step, loss=output["loss"])}
        return output

    # -- events -------------------------------------------------------------------------------

    def _fire(self, event: str, **kwargs: Any) -> None:
        if self.scheduler is not None:
            self.scheduler.fire(event, **kwargs)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Fire ``on_epoch_begin``, unless the run resumed inside this epoch (the saved state already began it)."""
        batches = trainer.num_training_batches
        if not math.isfinite(batches):
            raise HookpruneSetupError("the training dataloader has no length; a schedule needs the number of "
                                      "minibatches per epoch (give the dataset a __len__ or set limit_train_batches)")
        self._per_epoch = max(1, math.ceil(int(batches) / trainer.accumulate_grad_batches))
        epoch = trainer.current_epoch
        resumed, self._resumed_epoch = self._resumed_epoch, None
        if resumed != epoch:
            self._fire("on_epoch_begin", epoch=epoch)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        """Fire ``on_minibatch_begin`` at the first batch of each optimizer step."""
        accumulate = trainer.accumulate_grad_batches
        self._step = {"epoch": trainer.current_epoch, "minibatch_id": batch_idx // accumulate,
                      "minibatches_per_epoch": self._per_epoch}
        self._stepped = False
        if batch_idx % accumulate == 0:
            self._fire("on_minibatch_begin", **self._step)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        """Fire ``before_optimizer_step``: the gradients of every batch of the step are in."""
        if self._step is not None:
            self._fire("before_optimizer_step", **self._step)
            self._stepped = True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Fire ``on_minibatch_end`` after the batch whose optimizer step ran, so every mask is re-applied."""
        if self._stepped and self._step is not None:
            self._fire("on_minibatch_end", **self._step)
        self._stepped = False

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Fire ``on_epoch_end`` with the logged metrics (validation has run by now)."""
        metrics = self.epoch_metrics(trainer)
        try:
            self._fire("on_epoch_end", epoch=trainer.current_epoch, metrics=metrics)
        except ValueError as exc:
            exc.add_note(f"hookprune_lightning: metrics['min'] is the logged '{self.min_metric}' and "
                         f"metrics['max'] the logged '{self.max_metric}' (HookpruneCallback(min_metric=..., "
                         f"max_metric=...)); logged now: {', '.join(sorted(trainer.callback_metrics)) or 'nothing'}")
            raise
        self._step = None

    def epoch_metrics(self, trainer: pl.Trainer) -> dict[str, Any]:
        """The metrics handed to ``on_epoch_end``: every logged scalar as a float, plus ``min``/``max``."""
        metrics: dict[str, Any] = {}
        for name, value in trainer.callback_metrics.items():
            if (isinstance(value, torch.Tensor) and value.numel() == 1) or isinstance(value, int | float):
                metrics[name] = float(value)
        for key, name in (("min", self.min_metric), ("max", self.max_metric)):
            if name is not None and name in metrics:
                metrics[key] = metrics[name]
        return metrics

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Give the module its own ``training_step`` back."""
        self._unwrap()

    # -- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state (masks, every instance's progress), saved in Lightning's checkpoint."""
        return {"scheduler": self.scheduler.state_dict()} if self.scheduler is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the scheduler's state: now if it is built, else as soon as fitting starts."""
        if "scheduler" not in state_dict:
            raise HookpruneSetupError("the checkpoint's HookpruneCallback state holds no scheduler state")
        self._saved = state_dict
        if self.scheduler is not None:
            self._restore()

    def _restore(self) -> None:
        assert self.scheduler is not None and self._saved is not None
        state = self._saved["scheduler"]
        self.scheduler.load_state_dict(state)
        self._resumed_epoch = state.get("epoch")
        self._saved = None
