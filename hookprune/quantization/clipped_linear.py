"""Clipping-based linear quantization for training: DoReFa (Zhou et al., 2016), WRPN (Mishra et al., 2017) and
PACT (Choi et al., 2018), with Distiller's parameters. Each replaces the effect of ReLU modules by a clipped,
quantized activation (a fixed clip of 1, or PACT's learned clip value per layer) and quantizes the weights of
convolution, linear and embedding layers in the forward pass, keeping the float weights for training."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hookprune.pruning.base import ArgumentError
from hookprune.quantization.affine import LinearQuantMode, fake_quantize, fixed_qparams, is_finite_number, qparams
from hookprune.quantization.base import ParamFn, Quantizer, model_device
from hookprune.quantization.overrides import ModuleSettings


class ClippedLinearQuantization(nn.Module):
    """Clamp to ``[0, clip_val]`` and quantize that range to ``num_bits`` unsigned levels (DoReFa's and WRPN's
    activations, with ``clip_val`` 1)."""

    def __init__(self, num_bits: int, clip_val: float) -> None:
        super().__init__()
        self.num_bits = num_bits
        self.clip_val = float(clip_val)
        self.params = fixed_qparams(num_bits, LinearQuantMode.ASYMMETRIC_UNSIGNED, 0.0, self.clip_val)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Clamp and fake-quantize."""
        return fake_quantize(torch.clamp(x, 0.0, self.clip_val), self.params, clamp=False)

    def extra_repr(self) -> str:
        return f"num_bits={self.num_bits}, clip_val={self.clip_val}"


class LearnedClippedLinearQuantization(nn.Module):
    """PACT's activation: ``min(relu(x), alpha)`` quantized over ``[0, alpha]`` with a learned ``alpha``
    (``clip_val``); the gradient reaches ``alpha`` from every element at or above it."""

    def __init__(self, num_bits: int, init_act_clip_val: float, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.num_bits = num_bits
        self.clip_val = nn.Parameter(torch.tensor([float(init_act_clip_val)], device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU, clip at the learned value, fake-quantize over ``[0, clip_val]``."""
        x = F.relu(x)
        clip = self.clip_val.to(x.dtype)
        x = torch.where(x < clip, x, clip)
        with torch.no_grad():
            params = qparams(self.num_bits, LinearQuantMode.ASYMMETRIC_UNSIGNED, torch.zeros_like(self.clip_val),
                             self.clip_val.detach())
        return fake_quantize(x, params, clamp=False)

    def extra_repr(self) -> str:
        return f"num_bits={self.num_bits}"


class _BinarizeSTE(torch.autograd.Function):
    """DoReFa's 1-bit weights: ``sign(w) * mean(|w|)`` (zero counted as positive), straight-through gradient."""

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor) -> torch.Tensor:
        return torch.where(w == 0, torch.ones_like(w), torch.sign(w)) * w.abs().mean()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad


def keep_zeros(w: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``q`` with exact zeros where ``w`` is exactly zero (a pruned weight stays pruned), gradient unchanged."""
    return torch.where(w == 0, q - q.detach(), q)


def dorefa_quantize_param(w: torch.Tensor, num_bits: int) -> torch.Tensor:
    """DoReFa's weights: ``tanh(w)`` scaled into ``[0, 1]``, quantized to ``num_bits`` levels, mapped to
    ``[-1, 1]``; 1 bit binarizes. DoReFa's grid has no zero, so exactly-zero (pruned) weights are kept at zero."""
    if num_bits == 1:
        return keep_zeros(w, _BinarizeSTE.apply(w))
    t = torch.tanh(w)
    t = t / (2 * t.abs().max()).clamp_min(torch.finfo(t.dtype).tiny) + 0.5
    q = 2 * fake_quantize(t, fixed_qparams(num_bits, LinearQuantMode.ASYMMETRIC_UNSIGNED, 0.0, 1.0), clamp=False) - 1
    return keep_zeros(w, q)


def wrpn_quantize_param(w: torch.Tensor, num_bits: int) -> torch.Tensor:
    """WRPN's weights: clamped to ``[-1, 1]`` and quantized symmetrically over that range."""
    return fake_quantize(w.clamp(-1, 1), fixed_qparams(num_bits, LinearQuantMode.SYMMETRIC, -1.0, 1.0), clamp=False)


class _ClippedQuantizer(Quantizer):
    """Shared by DoReFa, WRPN and PACT: float weights trained, quantized in the forward pass; ReLU outputs
    replaced by clipped quantized activations."""

    #: the weight quantization: a function of the float tensor and the bit width
    weight_quantizer = staticmethod(dorefa_quantize_param)

    def _param_fn(self, settings: ModuleSettings, attr: str, num_bits: int) -> ParamFn:
        return functools.partial(self.weight_quantizer, num_bits=num_bits)

    def _activation_quantizer(self, settings: ModuleSettings) -> nn.Module | None:
        if not isinstance(settings.module, nn.ReLU) or settings.qbits.acts is None:
            return None
        return ClippedLinearQuantization(settings.qbits.acts, 1.0)


class DorefaQuantizer(_ClippedQuantizer):
    """DoReFa-Net (Zhou et al., 2016) as Distiller trains it: weights through :func:`dorefa_quantize_param`,
    ReLU outputs clipped to ``[0, 1]`` and quantized to ``bits_activations``. Gradients stay in float."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                 bits_activations: int | None = 32, bits_weights: int | None = 32, bits_bias: int | None = None,
                 overrides: Mapping[str, Mapping[str, Any]] | None = None, train_with_fp_copy: bool = True) -> None:
        super().__init__(model, optimizer, bits_activations, bits_weights, bits_bias, overrides, train_with_fp_copy)


class WRPNQuantizer(_ClippedQuantizer):
    """WRPN (Mishra et al., 2017) as Distiller trains it: weights clamped to ``[-1, 1]`` and quantized
    symmetrically, ReLU outputs clipped to ``[0, 1]`` and quantized. Layer widening is the model's business."""

    weight_quantizer = staticmethod(wrpn_quantize_param)

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                 bits_activations: int | None = 32, bits_weights: int | None = 32, bits_bias: int | None = None,
                 overrides: Mapping[str, Mapping[str, Any]] | None = None, train_with_fp_copy: bool = True) -> None:
        super().__init__(model, optimizer, bits_activations, bits_weights, bits_bias, overrides, train_with_fp_copy)


class PACTQuantizer(_ClippedQuantizer):
    """PACT (Choi et al., 2018) as Distiller trains it: DoReFa weights, and each quantized ReLU replaced by a
    learned clip value per layer (``act_clip_init_val``, Distiller's default 8.0). The clip values are trained by
    the optimizer in a parameter group of their own, whose weight decay is ``act_clip_decay`` (the optimizer's
    default when null); they are in this quantizer's ``state_dict()`` and :meth:`quantization_parameters`."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                 bits_activations: int | None = 32, bits_weights: int | None = 32, bits_bias: int | None = None,
                 overrides: Mapping[str, Mapping[str, Any]] | None = None, act_clip_init_val: float = 8.0,
                 act_clip_decay: float | None = None, train_with_fp_copy: bool = True) -> None:
        if not is_finite_number(act_clip_init_val) or act_clip_init_val <= 0:
            raise ArgumentError("act_clip_init_val", f"'act_clip_init_val' must be a number > 0, got "
                                f"{act_clip_init_val!r}")
        if act_clip_decay is not None and (not is_finite_number(act_clip_decay) or act_clip_decay < 0):
            raise ArgumentError("act_clip_decay", f"'act_clip_decay' must be a number >= 0 or null, got "
                                f"{act_clip_decay!r}")
        self.act_clip_init_val = float(act_clip_init_val)
        self.act_clip_decay = None if act_clip_decay is None else float(act_clip_decay)
        self._device = model_device(model)
        super().__init__(model, optimizer, bits_activations, bits_weights, bits_bias, overrides, train_with_fp_copy)

    def _activation_quantizer(self, settings: ModuleSettings) -> nn.Module | None:
        if not isinstance(settings.module, nn.ReLU) or settings.qbits.acts is None:
            return None
        return LearnedClippedLinearQuantization(settings.qbits.acts, self.act_clip_init_val, self._device)

    def _new_param_groups(self) -> list[dict[str, Any]]:
        clip_values = self.quantization_parameters()
        if not clip_values:
            return []
        group: dict[str, Any] = {"params": clip_values}
        if self.act_clip_decay is not None:
            group["weight_decay"] = self.act_clip_decay
        return [group]

    def clip_values(self) -> dict[str, float]:
        """Each quantized activation's current clip value, by module name."""
        return {name: float(act.clip_val.detach().cpu()[0]) for name, act in self.activation_quantizers.items()
                if isinstance(act, LearnedClippedLinearQuantization)}
