"""A transformers ``TrainerCallback`` (and a ``Trainer`` subclass) that drive a hookprune compression schedule.

Where each hookprune event fires, for one optimizer step of ``gradient_accumulation_steps`` micro-batches::

    on_epoch_begin       -> on_epoch_begin(epoch)           epoch = global_step // optimizer steps per epoch
    on_step_begin        -> on_minibatch_begin              once per optimizer step
    compute_loss         -> before_backward                 every micro-batch (HookpruneTrainer only)
    on_pre_optimizer_step-> before_optimizer_step           after gradient clipping
    on_optimizer_step    -> on_minibatch_end                right after optimizer.step(): masks re-applied
    on_evaluate          -> on_epoch_end(metrics)           the epoch's evaluation, when one follows the epoch
    on_epoch_end         -> on_epoch_end(metrics={})        when no evaluation follows it

A hookprune minibatch is one optimizer step: ``minibatch_id`` counts optimizer steps within the epoch.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

import hookprune
import torch
from hookprune import CompressionScheduler, distributed
from hookprune import knowledge_distillation as kd
from torch.optim.lr_scheduler import LRScheduler
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

Schedule = str | os.PathLike[str] | Mapping[str, Any]

#: the file, inside each of the Trainer's ``checkpoint-N`` folders, that holds the scheduler's state
STATE_FILE = "hookprune_scheduler.pt"


class HookpruneSetupError(ValueError):
    """The Trainer is set up in a way the schedule cannot be driven correctly."""


class ScheduleOwnedLR(LRScheduler):
    """The Trainer's LR scheduler while the schedule's ``lr_schedulers`` set the rate: it changes nothing
    and reports the rate the schedule set, so the Trainer logs and checkpoints it as usual."""

    def get_lr(self) -> list[float]:
        """The rates the optimizer has now."""
        return [group["lr"] for group in self.optimizer.param_groups]


class HookpruneCallback(TrainerCallback):
    """Load ``schedule`` onto the Trainer's model and optimizer when training begins, and fire its events.

    :param schedule: a schedule file or an already-parsed dict in Distiller's format.
    :param submodule: the dotted name of the submodule whose parameter names the schedule uses (a wrapper that
        keeps its network in ``self.net`` needs ``"net"``); the whole model when None.
    :param teacher: the teacher of the schedule's ``distillers`` entry that gives no ``teacher_arch``.
    :param min_metric: the evaluation metric handed to the schedule as ``metrics["min"]`` at an epoch's end
        (what ``ReduceLROnPlateau`` in mode ``min`` reads).
    :param max_metric: the evaluation metric handed over as ``metrics["max"]``.

    With a plain ``Trainer`` the schedule may prune, quantize and keep masks; a schedule with additive loss
    terms (regularizers, distillers) or ``lr_schedulers`` needs :class:`HookpruneTrainer`, and is refused
    otherwise, since a callback can neither change the Trainer's loss nor stop its LR scheduler.
    """

    def __init__(self, schedule: Schedule, *, submodule: str | None = None, teacher: torch.nn.Module | None = None,
                 min_metric: str | None = "eval_loss", max_metric: str | None = None) -> None:
        self.schedule = schedule
        self.submodule = submodule
        self.teacher = teacher
        self.min_metric = min_metric
        self.max_metric = max_metric
        #: the scheduler built when training begins (masks, instances, ``loss_components``, ``sparsity()``)
        self.scheduler: CompressionScheduler | None = None
        #: whether the schedule has LR-scheduler policies, which then set the learning rate
        self.sets_learning_rate = False
        #: whether any scheduled instance implements ``before_backward`` (returns additive loss terms)
        self.adds_loss_terms = False
        self._model: torch.nn.Module | None = None
        self._trainer_support = False
        self._built_by_trainer = False
        self._resume_dir: str | None = None
        self._resumed: dict[str, Any] | None = None
        self._per_epoch = 1
        self._epoch = 0
        self._step_id = 0
        self._in_step = False
        self._ended: int | None = None
        self._pending_end: int | None = None

    # -- building -----------------------------------------------------------------------------

    def build(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> CompressionScheduler:
        """Build the scheduler on ``model`` (or its ``submodule``) and the optimizer the Trainer steps."""
        target = model
        if self.submodule is not None:
            try:
                target = model.get_submodule(self.submodule)
            except AttributeError:
                children = ", ".join(name for name, _ in model.named_children()) or "none"
                raise HookpruneSetupError(f"the model has no submodule '{self.submodule}' (its children: "
                                          f"{children})") from None
        inner = getattr(optimizer, "optimizer", None)
        if isinstance(inner, torch.optim.Optimizer):
            optimizer = inner
        if self.teacher is not None:
            first = next(iter(target.parameters()), None)
            if first is not None:
                self.teacher.to(first.device)
        sched = hookprune.load(self.schedule, target, optimizer, teacher=self.teacher)
        # every rank of a distributed run computes masks; rank 0's become everyone's
        distributed.synchronize_masks_if_distributed(sched)
        self.scheduler, self._model = sched, target
        self.sets_learning_rate = any(policy.kind == "lr_scheduler" for policy in sched.scheduled)
        self.adds_loss_terms = sched.implements("before_backward")
        return sched

    def resume_from(self, checkpoint_dir: str | os.PathLike[str]) -> None:
        """Restore the scheduler from ``checkpoint_dir`` when training resumes (HookpruneTrainer calls this with
        ``resume_from_checkpoint``; a plain Trainer's run looks in ``output_dir/checkpoint-<global_step>``)."""
        self._resume_dir = os.fspath(checkpoint_dir)

    # -- events -------------------------------------------------------------------------------

    def _fire(self, event: str, **kwargs: Any) -> Any:
        assert self.scheduler is not None
        return self.scheduler.fire(event, **kwargs)

    def step_args(self) -> dict[str, int]:
        """The ``epoch``, ``minibatch_id`` and ``minibatches_per_epoch`` of the optimizer step under way."""
        return {"epoch": self._epoch, "minibatch_id": self._step_id, "minibatches_per_epoch": self._per_epoch}

    @property
    def in_training_step(self) -> bool:
        """True between an optimizer step's ``on_step_begin`` and its optimizer step (not during evaluation)."""
        return self._in_step

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: torch.nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None,
                       lr_scheduler: Any = None, train_dataloader: Any = None, **kwargs: Any) -> None:
        """Build the scheduler (unless HookpruneTrainer just did), check the setup, restore a resumed run."""
        if not self._built_by_trainer:
            if model is None or optimizer is None:
                raise HookpruneSetupError("the Trainer passed no model or optimizer to the callback")
            self.build(model, optimizer)
        self._built_by_trainer = False
        try:
            batches = len(train_dataloader)
        except TypeError:
            raise HookpruneSetupError("the training dataloader has no length; a schedule needs the number of "
                                      "minibatches per epoch") from None
        accumulate = args.gradient_accumulation_steps
        self._per_epoch = max(batches // accumulate + int(batches % accumulate > 0), 1)
        if self.sets_learning_rate and not isinstance(lr_scheduler, ScheduleOwnedLR):
            raise HookpruneSetupError(
                "the schedule has lr_schedulers, but the Trainer's own LR scheduler would set the rate too; use "
                "hookprune_transformers.HookpruneTrainer (with lr_scheduler_type='constant'), which hands the rate "
                "to the schedule, or remove the schedule's lr_schedulers")
        if self.adds_loss_terms and not self._trainer_support:
            raise HookpruneSetupError(
                "the schedule adds loss terms (a regularizer, distiller or other before_backward hook), which a "
                "callback cannot add to the Trainer's loss; use hookprune_transformers.HookpruneTrainer")
        self._pending_end = self._ended = None
        self._resumed = None
        if state.global_step > 0:
            self._restore(os.path.join(args.output_dir, f"checkpoint-{state.global_step}"), state.global_step)

    def on_epoch_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        """Fire ``on_epoch_begin``, unless the run resumed inside this epoch (the saved state already began it)."""
        self._flush_epoch_end({})
        self._epoch, self._step_id = divmod(state.global_step, self._per_epoch)
        resumed, self._resumed = self._resumed, None
        if resumed is not None:
            if not resumed["epoch_ended"] and resumed["epoch"] is not None and resumed["epoch"] < self._epoch:
                # The checkpoint was written after the epoch's last step but before its end: end it now. No
                # optimizer step has run in this process yet, which torch's LR schedulers warn about needlessly
                # (they step to the epoch in closed form).
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before",
                                            category=UserWarning)
                    self._fire("on_epoch_end", epoch=resumed["epoch"], metrics={})
            if resumed["epoch"] == self._epoch:
                return
        self._fire("on_epoch_begin", epoch=self._epoch)

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                      **kwargs: Any) -> None:
        """Fire ``on_minibatch_begin`` once per optimizer step, before its first micro-batch."""
        self._in_step = True
        self._fire("on_minibatch_begin", **self.step_args())

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                              **kwargs: Any) -> None:
        """Fire ``before_optimizer_step``: every micro-batch's gradients are in."""
        self._fire("before_optimizer_step", **self.step_args())

    def on_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                          **kwargs: Any) -> None:
        """Fire ``on_minibatch_end`` right after ``optimizer.step()``, so every mask is re-applied."""
        self._fire("on_minibatch_end", **self.step_args())
        self._in_step = False
        self._step_id += 1

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        """Fire ``on_epoch_end`` now, or after the evaluation the Trainer is about to run for this epoch."""
        self._in_step = False
        self._pending_end = self._epoch
        if not control.should_evaluate:
            self._flush_epoch_end({})

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    metrics: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Hand the epoch's evaluation metrics to ``on_epoch_end``."""
        self._flush_epoch_end(metrics or {})

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        """Fire an epoch end still waiting for an evaluation that did not come."""
        self._flush_epoch_end({})

    def epoch_metrics(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """The metrics handed to ``on_epoch_end``: the evaluation's scalars, plus ``min``/``max``."""
        out = {name: float(value) for name, value in metrics.items()
               if isinstance(value, int | float) and not isinstance(value, bool)}
        for key, name in (("min", self.min_metric), ("max", self.max_metric)):
            if name is not None and name in out:
                out[key] = out[name]
        return out

    def _flush_epoch_end(self, metrics: Mapping[str, Any]) -> None:
        epoch, self._pending_end = self._pending_end, None
        if epoch is None:
            return
        try:
            self._fire("on_epoch_end", epoch=epoch, metrics=self.epoch_metrics(metrics))
        except ValueError as exc:
            exc.add_note(f"hookprune_transformers: metrics come from the evaluation that follows each epoch "
                         f"(TrainingArguments(eval_strategy='epoch')); metrics['min'] is '{self.min_metric}' and "
                         f"metrics['max'] is '{self.max_metric}'; this epoch's: {', '.join(metrics) or 'none'}")
            raise
        self._ended = epoch

    # -- checkpoints --------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps: the scheduler's state and whether the current epoch has ended."""
        assert self.scheduler is not None
        return {"scheduler": self.scheduler.state_dict(), "epoch": self._epoch,
                "epoch_ended": self._ended == self._epoch}

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        """Write the scheduler's state into the checkpoint folder the Trainer just wrote."""
        if self.scheduler is None or not state.is_world_process_zero:
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if not os.path.isdir(folder):
            raise HookpruneSetupError(f"the Trainer saved no checkpoint folder '{folder}' to put the scheduler's "
                                      "state in")
        torch.save(self.state(), os.path.join(folder, STATE_FILE))

    def _restore(self, default_dir: str, global_step: int) -> None:
        folder = self._resume_dir or default_dir
        self._resume_dir = None
        path = os.path.join(folder, STATE_FILE)
        if not os.path.isfile(path):
            raise HookpruneSetupError(
                f"training resumes at global step {global_step}, but '{path}' does not exist, so the masks and the "
                "schedule's progress would be lost; resume from a checkpoint a HookpruneCallback saved, with "
                "HookpruneTrainer.train(resume_from_checkpoint=...) or callback.resume_from(folder)")
        saved = torch.load(path, map_location="cpu", weights_only=True)
        assert self.scheduler is not None
        self.scheduler.load_state_dict(saved["scheduler"])
        self._resumed = {"epoch": saved.get("epoch"), "epoch_ended": bool(saved.get("epoch_ended"))}


class HookpruneTrainer(Trainer):
    """A ``Trainer`` that gives its :class:`HookpruneCallback` what a callback cannot reach.

    - The schedule's additive loss terms (regularizers, distillation) join the loss in :meth:`compute_loss`,
      on every micro-batch, before the Trainer scales the loss for gradient accumulation.
    - A schedule with ``lr_schedulers`` sets the learning rate: the Trainer's own LR scheduler becomes a
      :class:`ScheduleOwnedLR`, which changes nothing. This needs ``lr_scheduler_type='constant'`` (and no
      warm-up), so that no other schedule the arguments ask for is silently dropped.
    - ``train(resume_from_checkpoint=...)`` restores the scheduler from that checkpoint.

    Pass exactly one :class:`HookpruneCallback` in ``callbacks``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        found = [cb for cb in self.callback_handler.callbacks if isinstance(cb, HookpruneCallback)]
        if len(found) != 1:
            raise HookpruneSetupError(f"HookpruneTrainer needs exactly one HookpruneCallback in callbacks, got "
                                      f"{len(found)}")
        #: the callback driving the schedule
        self.hookprune = found[0]
        self.hookprune._trainer_support = True

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        """``Trainer.train``; a checkpoint to resume from also restores the scheduler."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No valid checkpoint found in output directory ({self.args.output_dir})")
        if isinstance(resume_from_checkpoint, str | os.PathLike):
            self.hookprune.resume_from(resume_from_checkpoint)
        return super().train(resume_from_checkpoint=resume_from_checkpoint or None, **kwargs)

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None) -> Any:
        """Build the schedule now that the optimizer exists; let it own the learning rate when it sets one."""
        optimizer = optimizer if optimizer is not None else self.optimizer
        cb = self.hookprune
        cb.build(self.model, optimizer)
        cb._built_by_trainer = True
        if not cb.sets_learning_rate:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is not None and not isinstance(self.lr_scheduler, ScheduleOwnedLR):
            raise HookpruneSetupError("the schedule has lr_schedulers and the Trainer was given an LR scheduler "
                                      "(optimizers=(optimizer, scheduler)): both would set the rate; keep one")
        warmup = self.args.get_warmup_steps(num_training_steps)
        kind = getattr(self.args.lr_scheduler_type, "value", self.args.lr_scheduler_type)
        if kind != "constant" or warmup > 0:
            raise HookpruneSetupError(
                f"the schedule has lr_schedulers, which set the learning rate, but the TrainingArguments ask for "
                f"lr_scheduler_type='{kind}' with {warmup} warm-up steps; set "
                "lr_scheduler_type='constant' and no warm-up, or remove the schedule's lr_schedulers")
        self.lr_scheduler = ScheduleOwnedLR(optimizer)
        return self.lr_scheduler

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None) -> Any:
        """The Trainer's loss plus the schedule's additive terms while training (evaluation is left alone)."""
        cb = self.hookprune
        if not cb.in_training_step or cb.scheduler is None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        student = cb._model
        assert student is not None  # built with the scheduler
        # while distilling, the student's outermost forward call runs through the active distiller
        with kd.routed_forward(cb.scheduler, student,
                               " (give HookpruneCallback(submodule=...) the network the model calls positionally)"):
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                                 num_items_in_batch=num_items_in_batch)
        scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled is None:
            scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or \
                self.compute_loss_func is not None
        if scaled:
            # The loss is already a share of the accumulated batch's: the hooks get the micro-batch's own
            # loss, and the terms are added in the same share.
            steps = self.current_gradient_accumulation_steps
            cb.scheduler.fire("before_backward", **cb.step_args(), loss=loss * steps)
            total = loss + sum(cb.scheduler.loss_components.values()) / steps
        else:
            total = cb.scheduler.fire("before_backward", **cb.step_args(), loss=loss)
        return (total, outputs) if return_outputs else total
