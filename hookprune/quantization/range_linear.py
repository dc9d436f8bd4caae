"""Quantization-aware training with range-based linear quantization (Distiller's
``QuantAwareTrainRangeLinearQuantizer``; Jacob et al., 2017): weights quantized over their current range,
activations over ranges tracked with a bias-corrected exponential moving average."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from hookprune.pruning.base import ArgumentError
from hookprune.quantization.affine import (
    LinearQuantMode,
    ModuleQuantMode,
    QParams,
    check_bits,
    ema_update,
    fake_quantize,
    is_finite_number,
    parse_mode,
    qparams,
    tensor_qparams,
)
from hookprune.quantization.base import ParamFn, Quantizer, follow_device, model_device
from hookprune.quantization.overrides import ModuleSettings


class FakeLinearQuantization(nn.Module):
    """Fake-quantizes a tensor over a range tracked, in training, as an EMA of each batch's min and max
    (bias-corrected); in evaluation the last training scale and zero point are used. The tensor is clamped to
    the tracked range first (symmetric modes: to plus or minus its largest magnitude) and, as in Distiller, the
    integers are not clamped after rounding."""

    def __init__(self, num_bits: int, mode: LinearQuantMode, ema_decay: float,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.num_bits = num_bits
        self.mode = mode
        initial = qparams(num_bits, mode, torch.zeros(()), torch.zeros(()))
        self.quant_min, self.quant_max = initial.quant_min, initial.quant_max
        self.register_buffer("ema_decay", torch.tensor(float(ema_decay), device=device))
        for name in ("tracked_min_biased", "tracked_min", "tracked_max_biased", "tracked_max", "iter_count"):
            self.register_buffer(name, torch.zeros(1, device=device))
        self.register_buffer("scale", initial.scale.to(device))
        self.register_buffer("zero_point", initial.zero_point.to(device))

    def qparams(self) -> QParams:
        """The current scale and zero point."""
        return QParams(self.scale, self.zero_point, self.quant_min, self.quant_max)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Track the range (in training), clamp to it and fake-quantize."""
        if self.training:
            with torch.no_grad():
                self.iter_count += 1
                for which, value in (("min", x.detach().amin()), ("max", x.detach().amax())):
                    biased, unbiased = ema_update(getattr(self, f"tracked_{which}_biased"), value.float(),
                                                  self.ema_decay, self.iter_count)
                    getattr(self, f"tracked_{which}_biased").copy_(biased)
                    getattr(self, f"tracked_{which}").copy_(unbiased)
                current = qparams(self.num_bits, self.mode, self.tracked_min, self.tracked_max)
                self.scale.copy_(current.scale)
                self.zero_point.copy_(current.zero_point)
        # The graph gets copies of the buffers: a module called twice in one forward pass (torchvision's
        # ResNet blocks reuse their ReLU) updates them in place before the first call's backward.
        low, high = self.tracked_min.clone(), self.tracked_max.clone()
        if self.mode.symmetric:
            high = torch.maximum(low.abs(), high.abs())
            low = -high
        x = torch.clamp(x, low.to(x.dtype), high.to(x.dtype))
        return fake_quantize(x, QParams(self.scale.clone(), self.zero_point.clone(), self.quant_min, self.quant_max),
                             clamp=False)

    def extra_repr(self) -> str:
        return f"mode={self.mode.name}, num_bits={self.num_bits}, ema_decay={float(self.ema_decay):.4f}"


class RangeLinearParamQuantizer:
    """Quantizes a parameter over its own current range (per output channel when ``per_channel`` and the tensor
    has two or more dimensions), its integers unclamped as in Distiller."""

    def __init__(self, num_bits: int, mode: LinearQuantMode, per_channel: bool) -> None:
        self.num_bits, self.mode, self.per_channel = num_bits, mode, per_channel

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        return fake_quantize(t, tensor_qparams(t, self.num_bits, self.mode, self.per_channel and t.dim() >= 2),
                             clamp=False)


class InputQuantizationHook:
    """A forward pre-hook on the model that fake-quantizes its floating-point input."""

    def __init__(self, quantizer: FakeLinearQuantization) -> None:
        self.quantizer = quantizer

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if not args or not isinstance(args[0], torch.Tensor) or not args[0].is_floating_point():
            return None
        follow_device(self.quantizer, args[0].device)
        self.quantizer.training = module.training
        return (self.quantizer(args[0]), *args[1:])


class QuantAwareTrainRangeLinearQuantizer(Quantizer):
    """Quantization-aware training with range-based linear quantization, Distiller's parameters and defaults.

    Weights (and biases, with ``bits_bias``) are quantized over their current range, per output channel with
    ``per_channel_wts``; the outputs of ReLU modules, and the model's input with ``quantize_inputs``
    (``num_bits_inputs`` bits, default ``bits_activations``), over EMA-tracked ranges (``ema_decay``).
    ``mode``: SYMMETRIC, SYMMETRIC_RESTRICTED, ASYMMETRIC_UNSIGNED or ASYMMETRIC_SIGNED (case-insensitive, or
    Distiller's short ``sym`` / ``asym_u`` / ...), or a mapping giving ``activations`` and ``weights`` separately.
    Pruned weights stay exactly zero: zero is on every grid.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                 bits_activations: int | None = 32, bits_weights: int | None = 32, bits_bias: int | None = 32,
                 overrides: Mapping[str, Mapping[str, Any]] | None = None,
                 mode: str | LinearQuantMode | Mapping[str, str | LinearQuantMode] = LinearQuantMode.SYMMETRIC,
                 ema_decay: float = 0.999, per_channel_wts: bool = False, quantize_inputs: bool = True,
                 num_bits_inputs: int | None = None, train_with_fp_copy: bool = True) -> None:
        self.mode: ModuleQuantMode = parse_mode(mode)
        if not is_finite_number(ema_decay) or not 0 <= ema_decay < 1:
            raise ArgumentError("ema_decay", f"'ema_decay' must be a number in [0, 1), got {ema_decay!r}")
        for key, value in (("per_channel_wts", per_channel_wts), ("quantize_inputs", quantize_inputs)):
            if not isinstance(value, bool):
                raise ArgumentError(key, f"'{key}' must be true or false, got {value!r}")
        self.ema_decay = float(ema_decay)
        self.per_channel_wts = per_channel_wts
        self.quantize_inputs = quantize_inputs
        self.num_bits_inputs = check_bits("num_bits_inputs", num_bits_inputs)
        if self.num_bits_inputs is None:
            self.num_bits_inputs = check_bits("bits_activations", bits_activations)
        super().__init__(model, optimizer, bits_activations, bits_weights, bits_bias, overrides, train_with_fp_copy)
        self.inputs_quant: FakeLinearQuantization | None = None
        if quantize_inputs and self.num_bits_inputs is not None:
            self.inputs_quant = FakeLinearQuantization(self.num_bits_inputs, self.mode.activations, self.ema_decay,
                                                       model_device(model))

    def _param_fn(self, settings: ModuleSettings, attr: str, num_bits: int) -> ParamFn:
        per_channel = self.per_channel_wts and not isinstance(settings.module, nn.Embedding)
        return RangeLinearParamQuantizer(num_bits, self.mode.weights, per_channel)

    def _activation_quantizer(self, settings: ModuleSettings) -> nn.Module | None:
        if not isinstance(settings.module, nn.ReLU) or settings.qbits.acts is None:
            return None
        return FakeLinearQuantization(settings.qbits.acts, self.mode.activations, self.ema_decay)

    def _install_extra(self) -> list[Any]:
        if self.inputs_quant is None:
            return []
        return [self.model.register_forward_pre_hook(InputQuantizationHook(self.inputs_quant))]

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.inputs_quant is not None:
            state["inputs"] = {k: v.detach().clone() for k, v in self.inputs_quant.state_dict().items()}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        if "inputs" in state:
            if self.inputs_quant is None:
                raise ValueError("QuantAwareTrainRangeLinearQuantizer: the saved state has input ranges, but this "
                                 "quantizer does not quantize the model's input")
            device = self.inputs_quant.scale.device
            self.inputs_quant.load_state_dict({k: torch.as_tensor(v).to(device) for k, v in state["inputs"].items()})
