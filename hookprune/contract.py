"""The contract between the engine and the plugins it drives, beside the hook specification.

- :class:`SchedulerView` is what a hook's ``scheduler`` argument offers a plugin: the model and optimizer,
  ``masks`` to hand keep-masks to, the parameters by name, the schedule's instances, the loss terms of the
  last step and the policy an instance acts under.
- :class:`ScheduleClass` lists what the engine reads from a schedule instance beside its hooks. Every
  member is optional; :data:`DEFAULTS` gives what the engine assumes when a class lacks one.
- :class:`Policy` is one entry of a schedule's ``policies``: which instance acts in which epochs, with
  which ``args``.

Built-in classes and third-party ones are held to the same contract: the engine has no other way in.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from hookprune._engine.windows import Window

__all__ = ["DEFAULTS", "LossTerm", "Masks", "Policy", "ScheduleClass", "SchedulerView"]


class LossTerm(NamedTuple):
    """An additive loss term returned from ``before_backward``, named for logging."""

    name: str
    value: torch.Tensor


@dataclass(frozen=True, eq=False)
class Policy:
    """One policy of a schedule: ``instance`` acts in the epochs of ``window`` (global steps for a step window),
    with ``args``.

    ``kind`` is the policy's key in a YAML schedule (``pruner``, ``regularizer``, ``quantizer``,
    ``lr_scheduler``, ``extension``, ``distiller``), or ``plugin`` for an object given to
    ``add_policy`` without one. ``index`` is the policy's position among the scheduler's policies.
    """

    kind: str
    name: str
    instance: Any
    window: Window
    args: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    index: int = 0

    def __contains__(self, epoch: object) -> bool:
        return epoch in self.window

    @property
    def first_epoch(self) -> int:
        """The first epoch the policy covers."""
        return self.window.first

    @property
    def last_epoch(self) -> int:
        """Distiller's last epoch of a policy, ``ending_epoch - 1`` (not covered when ``frequency`` skips it)."""
        return self.window.ending_epoch - 1

    def arg(self, key: str, default: Any = None) -> Any:
        """The policy's ``args[key]``, or ``default``."""
        return self.args.get(key, default)


@runtime_checkable
class Masks(Protocol):
    """``scheduler.masks``: parameter name (any spelling the schedule accepts) -> boolean keep-mask.

    Assigning validates the shape, stores a ``torch.bool`` copy on the parameter's device and marks the
    mask pending: the engine applies it before the next forward pass and after every optimizer step. For a
    parameter FSDP2 shards (a DTensor), reading gives this rank's shard of the mask, and a mask may be assigned
    as a DTensor, whole (each rank keeps its rows) or as the shard (:mod:`hookprune.sharding`).
    """

    def __getitem__(self, name: str) -> torch.Tensor: ...
    def __setitem__(self, name: str, mask: torch.Tensor) -> None: ...
    def __delitem__(self, name: str) -> None: ...
    def __contains__(self, name: object) -> bool: ...
    def __iter__(self) -> Iterator[str]: ...
    def __len__(self) -> int: ...
    def get(self, name: str, default: Any = None) -> Any: ...

    def clear(self) -> None: ...

    def apply(self, names: Collection[str] | None = None) -> None:
        """Zero the masked elements of the named parameters (every masked one when None) now."""

    def options(self, name: str) -> frozenset[str]:
        """The mask options (``mask_on_forward_only``, ``use_double_copies``, ``mask_gradients``) set for ``name``."""

    def set_options(self, names: Collection[str] | None = None, **options: bool) -> None:
        """Set or clear mask options for the named parameters (every parameter when None)."""

    def mark_forward_pending(self) -> None:
        """Apply the forward-only masks before the next forward pass too."""


class SchedulerView(Protocol):
    """What a hook's ``scheduler`` argument offers: read it, hand masks to ``masks``; nothing else."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer | None
    #: the keep-masks the engine applies, reports and checkpoints
    masks: Masks
    #: the named loss terms the last ``before_backward`` added
    loss_components: Mapping[str, torch.Tensor]
    #: within ``before_backward``, the loop's loss plus the terms the hooks called so far returned (what a
    #: Distiller-style policy receives as its loss)
    loss_so_far: torch.Tensor | None
    #: the schedule's instances by name
    instances: Mapping[str, Any]
    #: the epoch of the last ``on_epoch_begin`` (None before the first)
    epoch: int | None
    #: the zero-based index over the whole run of the minibatch under way (-1 before the first
    #: ``on_minibatch_begin``): what step windows count, counted while some policy has one
    global_step: int

    @property
    def params(self) -> Mapping[str, torch.nn.Parameter]:
        """The model's parameters by the model's own names."""

    def policy_of(self, instance: object, epoch: int | None = None) -> Policy | None:
        """The policy under which ``instance`` acts in ``epoch`` (default: the epoch being fired), or None."""


class ScheduleClass(Protocol):
    """What the engine reads from a schedule instance besides its hooks; each member is optional."""

    #: False when no hook of the class ever assigns a mask (it then costs no mask exchange under DDP)
    sets_masks: bool
    #: True for classes that act after every other instance of an event (LR schedulers)
    runs_last: bool
    #: constructor arguments holding parameter names: "names" for a list, "keys" for a mapping whose keys are
    #: names (``'*'`` aside); read from the class before it is built
    hookprune_param_args: Mapping[str, Literal["names", "keys"]]
    #: the keys a policy's ``args`` may hold for this class, with their type annotations
    policy_args: Mapping[str, Any]
    #: why the instance cannot act on a model whose parameters FSDP2 shards (``fully_shard``: DTensors), or None
    #: when it can; a policy naming it on such a model is refused at load time with this reason
    refuses_sharding: str | None

    def check_policy(self, policy: Policy) -> None:
        """Refuse (``ValueError``, or ``ArgumentError`` naming the arg) a policy the instance cannot act under;
        called at load time for every policy that names it, before anything changes."""

    def attach(self, scheduler: SchedulerView) -> None:
        """Called once, when the instance is first scheduled (a quantizer installs itself on the model here)."""

    def idle_hooks(self, policy: Policy) -> Collection[str]:
        """The hooks that would do nothing under ``policy``; the engine does not call them."""

    def state_dict(self) -> dict[str, Any]:
        """Progress that decides a future step (tensors, numbers, strings, lists and dicts only)."""

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


#: what the engine assumes for a member of :class:`ScheduleClass` that a class lacks
DEFAULTS: Mapping[str, Any] = MappingProxyType({
    "sets_masks": True,
    "runs_last": False,
    "hookprune_param_args": MappingProxyType({}),
    "policy_args": MappingProxyType({}),
    "refuses_sharding": None,
})


def class_setting(obj: Any, name: str) -> Any:
    """``obj``'s value of the :class:`ScheduleClass` attribute ``name``, or its default."""
    return getattr(obj, name, DEFAULTS[name])

