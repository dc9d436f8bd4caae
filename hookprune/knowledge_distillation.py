"""Knowledge distillation (Hinton et al., 2015) with Distiller's code API, as a scheduled policy.

A teacher's softened predictions become an extra target for the student being trained:

    policy = KnowledgeDistillationPolicy(model, teacher, temperature=4.0,
                                         loss_weights=DistillationLossWeights(0.7, 0.3, 0.0))
    scheduler.add_policy(policy, starting_epoch=0, ending_epoch=epochs, frequency=1)
    ...
    output = policy.forward(x)              # instead of model(x): runs the teacher too
    loss = scheduler.fire("before_backward", ..., loss=criterion(output, y))

or, in a schedule, a ``distillers:`` section (keys: :func:`distiller_from_schedule`) and a policy:

    distillers:
      kd:
        teacher_arch: resnet56_cifar          # or hookprune.load(..., teacher=teacher_model)
        teacher_checkpoint: teacher.pth       # read with torch.load(weights_only=True)
        temperature: 4.0
        distill_weight: 0.7
        student_weight: 0.3
    policies:
      - distiller: {instance_name: kd}
        starting_epoch: 0
        ending_epoch: 200
        frequency: 1

The loop then calls ``hookprune.knowledge_distillation.forward(sched, x)`` (the active distiller's
``forward``, or the model alone) or ``sched.instances['kd'].forward(x)`` instead of ``model(x)``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
from collections import namedtuple
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from hookprune._engine.params import normalize_name
from hookprune.apputils.checkpoint import describe_load_failure
from hookprune.contract import LossTerm, Policy, SchedulerView
from hookprune.errors import ArgumentError
from hookprune.hookspecs import hookimpl

if TYPE_CHECKING:
    from hookprune.compat.distiller import CompressionScheduler

DistillationLossWeights = namedtuple("DistillationLossWeights", ["distill", "student", "teacher"])
DistillationLossWeights.__doc__ = ("Distiller's three loss weights: student vs. teacher soft targets, student vs. "
                                   "labels, teacher vs. labels.")

#: Distiller's default weights: half distillation, half the student's own loss, no teacher loss
DEFAULT_LOSS_WEIGHTS = DistillationLossWeights(0.5, 0.5, 0)

#: the name of the distillation term in ``scheduler.loss_components``
LOSS_TERM_NAME = "distillation"

_MISSING_FORWARD = ("use policy.forward(x) instead of model(x) for the training step (or "
                    "hookprune.knowledge_distillation.forward(scheduler, x)), so the teacher runs beside the student")


def add_distillation_args(argparser: argparse.ArgumentParser, arch_choices: Sequence[str] | None = None,
                          enable_pretrained: bool = False) -> None:
    """Add Distiller's knowledge-distillation command line options (same flags, dests and defaults).

    ``arch_choices`` restricts ``--kd-teacher``; ``enable_pretrained`` adds ``--kd-pretrained``.
    """
    group = argparser.add_argument_group("Knowledge Distillation Training Arguments")
    group.add_argument("--kd-teacher", choices=arch_choices, metavar="ARCH",
                       help="architecture of the teacher model")
    if enable_pretrained:
        group.add_argument("--kd-pretrained", action="store_true", help="start the teacher from pre-trained weights")
    group.add_argument("--kd-resume", type=str, default="", metavar="PATH",
                       help="checkpoint holding the teacher's weights")
    group.add_argument("--kd-temperature", "--kd-temp", dest="kd_temp", type=float, default=1.0, metavar="TEMP",
                       help="softmax temperature of the soft targets and the student's soft predictions")
    group.add_argument("--kd-distill-wt", "--kd-dw", type=float, default=0.5, metavar="WEIGHT",
                       help="weight of the distillation loss (student vs. the teacher's soft targets)")
    group.add_argument("--kd-student-wt", "--kd-sw", type=float, default=0.5, metavar="WEIGHT",
                       help="weight of the student's loss vs. the labels")
    group.add_argument("--kd-teacher-wt", "--kd-tw", type=float, default=0.0, metavar="WEIGHT",
                       help="weight of the teacher's loss vs. the labels (must be 0)")
    group.add_argument("--kd-start-epoch", type=int, default=0, metavar="EPOCH_NUM",
                       help="first epoch of distillation")


def _weight(argument: str, what: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ArgumentError(argument, f"the {what} weight must be a number >= 0, got {value!r}")
    return float(value)


class KnowledgeDistillationPolicy:
    #: whether the policy scales the loss as the hooks before it left it (Distiller's chaining)
    policy_args = {"chain_loss": bool}
    """Distil ``teacher`` into ``student`` in the epochs of the policy's window.

    The training loop calls :meth:`forward` instead of the student: in the window it runs the teacher
    (in eval mode, under ``torch.no_grad()``) and the student, and keeps both logits; outside it, only
    the student. ``before_backward`` then turns the loop's loss into

        student_w * loss + distill_w * T**2 * KL(softmax(teacher / T) || softmax(student / T))

    (KL summed over classes and averaged over the batch) by adding the term
    ``(student_w - 1) * loss + distill_w * T**2 * KL``, named ``distillation`` in ``scheduler.loss_components``.

    The ``T**2`` is Hinton et al.'s: the soft targets' gradients shrink as ``1/T**2``, and the factor keeps the
    two losses balanced whatever the temperature. Distiller's ``before_backward_pass`` computes the KL term without
    it (``F.kl_div(...) / batch_size``), so a Distiller distill weight ``w`` at ``T > 1`` is ``w / T**2`` here.
    Unlike Distiller, whose cached student logits were a new leaf tensor (``out.new_tensor(out,
    requires_grad=True)``), the term's gradient reaches the student.

    With the policy arg ``chain_loss`` (set when the policy is added through Distiller's ``add_policy``), the
    policy works on the loss as the hooks before it left it (the scheduler's ``loss_so_far``), as Distiller's
    policies chain: ``student_w`` then scales a regularizer's term too. Without it (a schedule's ``distillers``),
    it adds its term to the loop's loss like any native hook.
    A non-zero teacher weight is refused, as Distiller does: the hook receives the student's loss but not
    the labels, so there is no teacher-vs-labels loss to add; train or fine-tune the teacher beforehand.
    """

    sets_masks = False

    def __init__(self, student: torch.nn.Module, teacher: torch.nn.Module, temperature: float = 1.0,
                 loss_weights: DistillationLossWeights = DEFAULT_LOSS_WEIGHTS) -> None:
        if not isinstance(student, torch.nn.Module):
            raise ArgumentError("student", f"the student must be a torch.nn.Module, got {type(student).__name__}")
        if not isinstance(teacher, torch.nn.Module):
            raise ArgumentError("teacher", f"the teacher must be a torch.nn.Module, got {type(teacher).__name__}")
        if (isinstance(temperature, bool) or not isinstance(temperature, int | float)
                or not math.isfinite(temperature) or temperature <= 0):
            raise ArgumentError("temperature", f"the temperature must be a number > 0, got {temperature!r}")
        if not isinstance(loss_weights, Sequence) or len(loss_weights) != 3:
            raise ArgumentError("loss_weights", "loss_weights must be DistillationLossWeights(distill, student, "
                                f"teacher), got {loss_weights!r}")
        weights = DistillationLossWeights(*loss_weights)
        weights = DistillationLossWeights(_weight("loss_weights.distill", "distill", weights.distill),
                                          _weight("loss_weights.student", "student", weights.student),
                                          _weight("loss_weights.teacher", "teacher", weights.teacher))
        if weights.teacher != 0:
            raise ArgumentError("loss_weights.teacher", "the teacher weight must be 0: training the teacher "
                                "against the labels is not supported (the loss hook receives no labels); "
                                "train the teacher beforehand")
        self.student = student
        self.teacher = teacher
        self.temperature = float(temperature)
        self.loss_wts = weights
        self.active = False
        self.last_students_logits: torch.Tensor | None = None
        self.last_teacher_logits: torch.Tensor | None = None
        #: the KL divergence of the last step, before weighting (detached), for logging
        self.last_distill_loss: torch.Tensor | None = None

    def forward(self, *inputs: Any) -> Any:
        """Run the student on ``inputs`` and return its output; while distilling, run the teacher too
        and keep both logits for ``before_backward``. Call this instead of ``student(*inputs)``."""
        if not self.active:
            return self.student(*inputs)
        self.teacher.eval()
        with torch.no_grad():
            teacher_out = self.teacher(*inputs)
        out = self.student(*inputs)
        for who, value in (("teacher", teacher_out), ("student", out)):
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"KnowledgeDistillationPolicy needs logits: the {who} returned "
                                f"{type(value).__name__}, not a tensor")
        self.last_teacher_logits = teacher_out
        self.last_students_logits = out
        return out

    def distillation_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """``KL(softmax(teacher / T) || softmax(student / T))`` over dimension 1, averaged over the batch."""
        log_probs = F.log_softmax(student_logits / self.temperature, dim=1)
        targets = F.softmax(teacher_logits.detach() / self.temperature, dim=1)
        return F.kl_div(log_probs, targets, reduction="batchmean")

    @hookimpl
    def on_epoch_begin(self) -> None:
        """Distil from now on: the scheduler calls this only in the policy's epochs."""
        self.active = True

    def check_policy(self, policy: Policy) -> None:
        """Refuse a ``chain_loss`` that is not a boolean."""
        if not isinstance(policy.arg("chain_loss", False), bool):
            raise ArgumentError("chain_loss", f"'chain_loss' must be true or false, got {policy.arg('chain_loss')!r}")

    @hookimpl
    def before_backward(self, scheduler: SchedulerView, loss: torch.Tensor) -> LossTerm | None:
        """The additive term ``(student_w - 1) * loss + distill_w * T**2 * KL`` from the logits :meth:`forward` kept
        (with ``chain_loss``, ``loss`` is the scheduler's ``loss_so_far``)."""
        if not self.active:
            return None
        student_logits, teacher_logits = self.last_students_logits, self.last_teacher_logits
        if student_logits is None or teacher_logits is None:
            raise RuntimeError(f"KnowledgeDistillationPolicy: no student and teacher logits for this step: "
                               f"{_MISSING_FORWARD}")
        self.last_students_logits = self.last_teacher_logits = None
        if loss.requires_grad and not student_logits.requires_grad:
            raise RuntimeError("KnowledgeDistillationPolicy: the kept student logits carry no gradient (a forward "
                               f"under torch.no_grad(), such as validation, not this step's): {_MISSING_FORWARD}")
        kd_loss = self.distillation_loss(student_logits, teacher_logits)
        self.last_distill_loss = kd_loss.detach()
        distill = self.loss_wts.distill * self.temperature ** 2 * kd_loss
        policy = scheduler.policy_of(self)
        if policy is not None and policy.arg("chain_loss") and scheduler.loss_so_far is not None:
            running = scheduler.loss_so_far
            return LossTerm(LOSS_TERM_NAME, self.loss_wts.student * running + distill - running)
        return LossTerm(LOSS_TERM_NAME, (self.loss_wts.student - 1) * loss + distill)

    @hookimpl
    def on_epoch_end(self) -> None:
        """Stop distilling until the next epoch of the policy's window begins."""
        self.active = False
        self.last_students_logits = self.last_teacher_logits = None

    def state_dict(self) -> dict[str, Any]:
        """Whether distillation is on (it is off between epochs, so a checkpoint usually says False)."""
        return {"active": self.active}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.active = bool(state.get("active", False))


def distillers_of(scheduler: CompressionScheduler) -> list[Any]:
    """The instances ``scheduler`` schedules under ``distiller`` policies (a schedule's ``distillers``, or a
    ``KnowledgeDistillationPolicy`` given to ``add_policy``), in policy order."""
    found: list[Any] = []
    for policy in scheduler.scheduled:
        if policy.kind == "distiller" and not any(policy.instance is f for f in found):
            found.append(policy.instance)
    return found


def distills(scheduler: CompressionScheduler) -> bool:
    """True when the scheduler has a knowledge-distillation policy (in any epoch): the loop then runs the
    model through :func:`forward`, so the teacher runs beside the student."""
    return bool(distillers_of(scheduler))


def forward(scheduler: CompressionScheduler, *inputs: Any) -> Any:
    """Run the model of ``scheduler`` on ``inputs`` through the distiller active now, if there is one.

    With no distiller scheduled, or none in this epoch, this is ``scheduler.model(*inputs)``.
    """
    active = [d for d in distillers_of(scheduler) if d.active]
    if len(active) > 1:
        raise RuntimeError(f"{len(active)} knowledge distillation policies are active in this epoch; "
                           "give their windows disjoint epochs, or call each policy's forward yourself")
    if active:
        return active[0].forward(*inputs)
    return scheduler.model(*inputs)


@contextlib.contextmanager
def routed_forward(scheduler: CompressionScheduler, model: torch.nn.Module, hint: str = "") -> Iterator[None]:
    """Inside the block, a call of ``model`` runs through :func:`forward`, so the active distiller runs the
    teacher beside it; calls ``model`` makes of itself inside that call run as usual.

    For trainers that call the model in their own code (Lightning's ``training_step``, transformers'
    ``compute_loss``). Inputs must be positional; ``hint`` ends the error raised for keyword inputs. A schedule
    without distillers leaves ``model`` as it is, keyword inputs and all.
    """
    if not distills(scheduler):
        yield
        return
    own = model.__dict__.get("forward")
    original = model.forward
    inside = False

    def routed(*inputs: Any, **kwargs: Any) -> Any:
        nonlocal inside
        if inside:
            return original(*inputs, **kwargs)
        if kwargs:
            raise TypeError("knowledge distillation runs the teacher on the student's inputs, which must be "
                            f"positional; the student was called with keyword arguments {sorted(kwargs)}{hint}")
        inside = True
        try:
            return forward(scheduler, *inputs)
        finally:
            inside = False

    model.forward = routed  # type: ignore[method-assign]
    try:
        yield
    finally:
        if own is None:
            del model.forward
        else:
            model.forward = own


def _device_of(model: torch.nn.Module) -> torch.device:
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def load_teacher_checkpoint(teacher: torch.nn.Module, path: str | os.PathLike[str]) -> None:
    """Load ``path`` into ``teacher`` with ``torch.load(weights_only=True)``.

    The file holds a state dict, or a dict holding one under ``state_dict`` (Distiller's checkpoints)
    or ``model``; DataParallel's ``module.`` prefixes are dropped when the teacher has none.
    Raises :class:`ArgumentError` (argument ``teacher_checkpoint``) for a file that does not fit.
    """
    device = _device_of(teacher)
    on_meta = device.type == "meta"
    try:
        checkpoint = torch.load(path, map_location="cpu" if on_meta else device, weights_only=True)
    except FileNotFoundError:
        raise ArgumentError("teacher_checkpoint", f"teacher checkpoint '{os.fspath(path)}' does not exist") from None
    except Exception as exc:
        raise ArgumentError("teacher_checkpoint", f"cannot read teacher checkpoint '{os.fspath(path)}' with "
                            f"torch.load(weights_only=True): {describe_load_failure(exc)}; save the teacher's "
                            "state_dict() alone") from None
    state: Any = checkpoint
    if isinstance(checkpoint, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(checkpoint.get(key), Mapping):
                state = checkpoint[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ArgumentError("teacher_checkpoint", f"teacher checkpoint '{os.fspath(path)}' holds no state dict "
                            "(a mapping of names to tensors, itself or under 'state_dict' or 'model')")
    own = teacher.state_dict()
    if set(own).isdisjoint(state):
        state = {normalize_name(k): v for k, v in state.items()}
    problems = [f"{len(names)} {what} ({_some(names)})" for what, names in (
        ("missing", [k for k in own if k not in state]),
        ("unexpected", [k for k in state if k not in own]),
        ("of another shape", [k for k in own if k in state and state[k].shape != own[k].shape]))
        if names]
    if problems:
        raise ArgumentError("teacher_checkpoint", f"teacher checkpoint '{os.fspath(path)}' does not fit the "
                            f"{type(teacher).__name__} teacher: tensors {'; '.join(problems)}")
    teacher.load_state_dict(state, assign=on_meta)


def _some(names: list[str], shown: int = 3) -> str:
    listed = ", ".join(names[:shown])
    return listed + (f" and {len(names) - shown} more" if len(names) > shown else "")


def distiller_from_schedule(model: torch.nn.Module, teacher: torch.nn.Module | None = None, *,
                            teacher_arch: str | None = None, teacher_args: dict[str, Any] | None = None,
                            teacher_checkpoint: str | None = None, temperature: float = 1.0,
                            distill_weight: float = 0.5, student_weight: float = 0.5,
                            teacher_weight: float = 0.0) -> KnowledgeDistillationPolicy:
    """Build a distiller from the keys of a schedule's ``distillers:`` entry (registered as the schedule class
    ``KnowledgeDistillationPolicy``; ``model`` is the student).

    The teacher is ``teacher`` (given to ``hookprune.load(..., teacher=...)``) or, with ``teacher_arch``,
    ``hookprune.models.create_model(teacher_arch, **teacher_args)`` on the student's device; either way
    ``teacher_checkpoint`` (a path, relative to the current directory) is then loaded into it with
    :func:`load_teacher_checkpoint`. The weights are Distiller's ``--kd-distill-wt``, ``--kd-student-wt``
    and ``--kd-teacher-wt``; ``temperature`` is ``--kd-temperature``. Errors are :class:`ArgumentError`
    naming the key at fault.
    """
    if teacher is not None and teacher_arch is not None:
        raise ArgumentError("teacher_arch", "the teacher is given twice: by 'teacher_arch' and by "
                            "hookprune.load(..., teacher=...); keep one")
    if teacher is None and teacher_arch is None:
        raise ArgumentError("teacher_arch", "no teacher: give 'teacher_arch' (and 'teacher_checkpoint'), or pass "
                            "the teacher model as hookprune.load(schedule, model, optimizer, teacher=teacher)")
    if teacher_args is not None and teacher_arch is None:
        raise ArgumentError("teacher_args", "'teacher_args' needs 'teacher_arch' (a teacher passed to "
                            "hookprune.load is already built)")
    if teacher is None:
        from hookprune.models import create_model

        try:
            teacher = create_model(str(teacher_arch), device=_device_of(model), **(teacher_args or {}))
        except ValueError as exc:
            raise ArgumentError("teacher_arch", str(exc)) from None
        except TypeError as exc:
            raise ArgumentError("teacher_args", f"cannot build '{teacher_arch}' with {teacher_args}: {exc}") from None
    if teacher_checkpoint is not None:
        load_teacher_checkpoint(teacher, teacher_checkpoint)
    keys = {"loss_weights.distill": "distill_weight", "loss_weights.student": "student_weight",
            "loss_weights.teacher": "teacher_weight"}
    try:
        return KnowledgeDistillationPolicy(model, teacher, temperature,
                                           DistillationLossWeights(distill_weight, student_weight, teacher_weight))
    except ArgumentError as exc:
        raise ArgumentError(keys.get(exc.argument, exc.argument), str(exc)) from None
