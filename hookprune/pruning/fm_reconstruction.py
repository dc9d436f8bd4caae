"""Channel pruning with feature-map reconstruction (He, Zhang & Sun 2017; Distiller's AMC pruner).

The input channels of a layer with the smallest L1 magnitude are pruned, and the remaining weights
are re-fitted by least squares so that the layer's output on sampled inputs stays as close as
possible to what it was before pruning.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Callable, Collection, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from hookprune.contract import Policy, SchedulerView
from hookprune.errors import ArgumentError
from hookprune.hookspecs import hookimpl
from hookprune.pruning.base import ForwardPassHooks, Pruner, PruningStep
from hookprune.pruning.checks import check_weights
from hookprune.pruning.levels import FixedLevel
from hookprune.pruning.structures import (
    check_group_type,
    check_rounding_fn,
    count_to_prune,
    expand_structure_mask,
    prune_lowest,
    structure_scores,
)


def _conv_padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """``(left, right, top, bottom)`` zero padding, as ``F.pad`` takes it, that ``conv`` applies."""
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0, 0, 0, 0)
        pads = []
        for k, d in zip(reversed(conv.kernel_size), reversed(conv.dilation), strict=True):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return (pads[0], pads[1], pads[2], pads[3])
    ph, pw = conv.padding
    return (pw, pw, ph, ph)


def sample_conv_patches(conv: nn.Conv2d, x: torch.Tensor, positions: torch.Tensor, out_width: int) -> torch.Tensor:
    """The receptive fields of ``conv`` at output ``positions`` (flat indices into the output map),
    one row per sample and position: shape ``(batch * len(positions), in_channels * kh * kw)``, in
    the order of ``conv.weight.flatten(1)``, so ``rows @ weight.flatten(1).T`` is the output there
    (without the bias)."""
    if x.dim() == 3:
        x = x.unsqueeze(0)
    padded = F.pad(x, _conv_padding(conv))
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    rows = []
    for flat in positions.tolist():
        oy, ox = divmod(flat, out_width)
        top, left = oy * sh, ox * sw
        window = padded[:, :, top:top + dh * (kh - 1) + 1:dh, left:left + dw * (kw - 1) + 1:dw]
        rows.append(window.reshape(window.shape[0], -1))
    return torch.cat(rows)


def reconstruct(inputs: torch.Tensor, weight: torch.Tensor, keep_columns: torch.Tensor) -> torch.Tensor:
    """Least-squares re-fit of the kept columns of a 2-D ``weight`` (outputs x inputs).

    ``inputs`` holds one sampled input per row. The target is the current layer output
    ``inputs @ weight.T``; the fit keeps only ``keep_columns`` and returns the new kept weights
    (outputs x kept). It solves for the smallest change to the current kept weights that minimises
    the squared error (``torch.linalg.lstsq`` with the SVD-based ``gelsd`` driver, in float64 on the
    CPU): where the samples determine the weights this is the ordinary least-squares fit, and
    directions the samples do not reach (an input never active, too few samples) keep their
    current weights.
    """
    x = inputs.detach().to("cpu", torch.float64)
    w = weight.detach().to("cpu", torch.float64)
    keep = keep_columns.to("cpu")
    kept_x = x[:, keep]
    residual = x[:, ~keep] @ w[:, ~keep].T
    delta = torch.linalg.lstsq(kept_x, residual, driver="gelsd").solution
    return w[:, keep] + delta.T


class FMReconstructionChannelPruner(ForwardPassHooks, Pruner):
    """Prune ``desired_sparsity`` of each listed layer's input channels by L1 magnitude and re-fit
    the remaining weights by least squares on sampled input feature maps (He et al. 2017, Distiller's
    AMC channel pruner), for ``Conv2d`` (``groups: 1``, zero padding) and ``Linear`` layers.

    When: at the start of each epoch of the policy the pruner begins collecting samples of the
    layer's input with a forward hook during the training minibatches: for a convolution,
    ``n_points_per_fm`` random output positions per minibatch, each giving the receptive field of
    every sample in the batch; for a linear layer, every input row. Pruning happens at the first
    minibatch boundary (before a minibatch's forward pass) at which the samples hold at least as
    many rows as the layer has inputs per output (``in_channels * kh * kw``, or ``in_features``), so
    the fit is determined; if the epoch ends first, at the end of the epoch with the rows collected
    by then. The samples are then dropped and collection stops until the next epoch of the policy.

    How: exactly ``count_to_prune(in_channels, desired_sparsity, group_size)`` channels with the
    lowest mean absolute weight are pruned (ties: the lowest index), and the kept weights are
    replaced by the least-squares fit of the layer's current output on the samples (see
    :func:`reconstruct`), so the kept channels take over what the pruned ones contributed. The bias,
    if any, is unchanged (the fit is of the output without it). Positions are drawn from a
    generator the pruner owns (``seed``); it and any pending samples are in :meth:`state_dict`.
    """

    refuses_sharding: ClassVar[str | None] = ("it re-fits the kept weights on feature maps each rank samples from its "
                                              "own data, so the ranks would fit different weights")

    def __init__(self, name: str, group_type: str, desired_sparsity: float, weights: list[str] | str,
                 model: nn.Module, group_size: int = 1, rounding_fn: str = "floor", n_points_per_fm: int = 10,
                 seed: int | None = None) -> None:
        self.name = name
        self.group_type = check_group_type(group_type, ("Channels",))
        self.level = FixedLevel(desired_sparsity)
        self.params_names = check_weights(weights)
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise ArgumentError("group_size", f"'group_size' must be a positive integer, got {group_size!r}")
        self.group_size = group_size
        self.rounding_fn: Callable[[float], int] = check_rounding_fn(rounding_fn)
        if isinstance(n_points_per_fm, bool) or not isinstance(n_points_per_fm, int) or n_points_per_fm < 1:
            raise ArgumentError("n_points_per_fm", f"'n_points_per_fm' must be a positive integer, "
                                f"got {n_points_per_fm!r}")
        self.n_points_per_fm = n_points_per_fm
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ArgumentError("seed", f"'seed' must be an integer, got {seed!r}")
        self.generator = torch.Generator().manual_seed(torch.initial_seed() if seed is None else seed)
        self.model = model
        modules = dict(model.named_modules())
        self._layers: dict[str, str] = {}
        for param_name in self.params_names:
            layer_name, _, attr = param_name.rpartition(".")
            layer = modules.get(layer_name)
            problem = self._unsupported(layer) if attr == "weight" else "it is not a layer's 'weight'"
            if problem:
                raise ArgumentError("weights", f"'{param_name}' cannot be pruned with feature-map reconstruction: "
                                    f"{problem}")
            assert layer is not None
            channels = layer.weight.shape[1]
            if channels % group_size:
                raise ArgumentError("group_size", f"group_size {group_size} does not divide the {channels} input "
                                    f"channels of '{param_name}'")
            self._layers[param_name] = layer_name
        #: weights waiting to be pruned in this epoch -> fraction of channels
        self.pending: dict[str, float] = {}
        #: sampled input rows per pending weight
        self.samples: dict[str, list[torch.Tensor]] = {}
        self._handles: list[Any] = []
        self._lock = threading.Lock()

    @staticmethod
    def _unsupported(layer: nn.Module | None) -> str | None:
        if isinstance(layer, nn.Linear):
            return None
        if not isinstance(layer, nn.Conv2d):
            return "only Conv2d and Linear layers are supported"
        if layer.groups != 1:
            return f"the convolution has groups={layer.groups} (only groups=1 mixes input channels)"
        if layer.padding_mode != "zeros":
            return f"the convolution pads with '{layer.padding_mode}' (only 'zeros' is supported)"
        return None

    # -- configuration ----------------------------------------------------------------------------

    def idle_hooks(self, policy: Policy) -> Collection[str]:
        """None: the minibatch hook samples and prunes."""
        return ()

    def inputs_per_output(self, param_name: str) -> int:
        """How many weights feed one output of the layer: the sample rows a determined fit needs."""
        return self.model.get_parameter(param_name)[0].numel()

    # -- pruning ------------------------------------------------------------------------------------

    def prune(self, step: PruningStep) -> None:
        """Start collecting samples for each listed weight; it is pruned once enough exist (see the class)."""
        assert self.level is not None
        for param_name in self.targets(step.params):
            fraction = self.level.level(param_name, step)
            if fraction == 0:
                continue
            self.pending[param_name] = fraction
            self.samples[param_name] = []

    def channel_keep_map(self, param: torch.Tensor, param_name: str, fraction: float) -> torch.Tensor | None:
        """Per-channel keep-map pruning exactly ``count_to_prune`` channels by L1, or None for none."""
        channels = param.shape[1]
        k = count_to_prune(channels, fraction, self.group_size, self.rounding_fn, param_name=param_name,
                           structure="channels")
        if k == 0:
            return None
        scores = structure_scores(param, "Channels", p=1, group_size=self.group_size)
        keep = prune_lowest(scores, k // self.group_size)
        return keep.repeat_interleave(self.group_size)

    def prune_now(self, scheduler: SchedulerView, param_name: str) -> None:
        """Prune ``param_name`` now, re-fitting the kept weights on the samples collected so far; the
        pruned channels are zeroed at once and their mask handed to the scheduler."""
        fraction = self.pending.pop(param_name)
        samples = self.samples.pop(param_name, [])
        param = scheduler.params[param_name]
        keep = self.channel_keep_map(param, param_name, fraction)
        if keep is None:
            return
        weight = param.detach().reshape(param.shape[0], -1)
        columns = keep.repeat_interleave(weight.shape[1] // param.shape[1]).to(weight.device)
        refit = weight.clone()
        if samples:
            kept = reconstruct(torch.cat(samples), weight, columns)
            refit[:, columns] = kept.to(device=weight.device, dtype=weight.dtype)
        else:
            warnings.warn(f"{type(self).__name__} '{self.name}': '{param_name}' ran no forward pass in this epoch, "
                          "so its channels are pruned without reconstruction", RuntimeWarning, stacklevel=2)
        refit[:, ~columns] = 0
        with torch.no_grad():
            param.copy_(refit.view_as(param))
        scheduler.masks[param_name] = expand_structure_mask(keep.to(param.device), param.shape, "Channels")

    def _rows(self, param_name: str) -> int:
        return sum(s.shape[0] for s in self.samples.get(param_name, []))

    # -- hooks --------------------------------------------------------------------------------------

    @hookimpl
    def on_minibatch_begin(self, scheduler: SchedulerView, model: nn.Module, epoch: int, minibatch_id: int,
                           minibatches_per_epoch: int) -> None:
        """Prune the weights that have enough samples, and sample this minibatch for the others."""
        super().on_minibatch_begin(scheduler, epoch, minibatch_id, minibatches_per_epoch)
        for param_name in list(self.pending):
            if self._rows(param_name) >= self.inputs_per_output(param_name):
                self.prune_now(scheduler, param_name)
        if self.pending and not self._handles:
            modules = dict(model.named_modules())
            for param_name in self.pending:
                hook = functools.partial(self._sample, param_name)
                self._handles.append(modules[self._layers[param_name]].register_forward_hook(hook))

    @hookimpl
    def on_epoch_end(self, scheduler: SchedulerView) -> None:
        """Prune what is still waiting, with the samples collected in the epoch."""
        self.remove_hooks()
        for param_name in list(self.pending):
            self.prune_now(scheduler, param_name)

    def remove_hooks(self) -> None:
        """Remove every forward hook this pruner installed (pending samples are kept)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def end_forward(self) -> None:
        """Stop sampling once a forward pass is done."""
        self.remove_hooks()

    def _sample(self, param_name: str, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        if not args:
            return
        x = args[0].detach()
        if isinstance(module, nn.Linear):
            rows = x.reshape(-1, x.shape[-1])
        else:
            out_height, out_width = output.shape[-2], output.shape[-1]
            with self._lock:
                positions = torch.randint(0, out_height * out_width, (self.n_points_per_fm,),
                                          generator=self.generator)
            rows = sample_conv_patches(module, x, positions, out_width)
        with self._lock:
            self.samples.setdefault(param_name, []).append(rows.float())

    # -- state --------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The generator's state, and the weights waiting to be pruned with their samples."""
        return {"generator": self.generator.get_state(), "pending": dict(self.pending),
                "samples": {name: [s.detach().cpu() for s in rows] for name, rows in self.samples.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        self.remove_hooks()
        if "generator" in state:
            self.generator.set_state(state["generator"])
        self.pending = {name: float(f) for name, f in state.get("pending", {}).items()}
        self.samples = {name: list(rows) for name, rows in state.get("samples", {}).items()}

