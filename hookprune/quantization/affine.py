"""Affine (linear) quantization arithmetic: Distiller's modes, ranges and rounding.

Distiller quantizes with ``q = round(scale * x - zero_point)`` (``torch.round``: ties to even) and dequantizes with
``x' = (q + zero_point) / scale``; :class:`QParams` holds its ``scale`` and ``zero_point`` and :func:`fake_quantize`
computes exactly these float32 operations, so the integers are Distiller's at every tie. torch's fake-quantize ops
take the step ``1 / scale`` and multiply by its reciprocal again, and that double rounding moves exact ties:
symmetric 8-bit puts the largest magnitude on ``±127.5``, which they send to ``-127`` where Distiller gives ``-128``.
Zero is always exactly representable: ranges are widened to include it and the zero point is an integer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple

import torch

from hookprune.pruning.base import ArgumentError

#: the widest bit width (Distiller's accumulator)
MAX_BITS = 32


class LinearQuantMode(Enum):
    """Distiller's linear quantization modes."""

    SYMMETRIC = 1
    SYMMETRIC_RESTRICTED = 2
    ASYMMETRIC_UNSIGNED = 3
    ASYMMETRIC_SIGNED = 4

    @property
    def symmetric(self) -> bool:
        """True for the modes with a zero point of 0."""
        return self in (LinearQuantMode.SYMMETRIC, LinearQuantMode.SYMMETRIC_RESTRICTED)


class ClipMode(Enum):
    """Distiller's activation clipping modes (how the saturation range is chosen from statistics)."""

    NONE = 0
    AVG = 1
    N_STD = 2
    GAUSS = 3
    LAPLACE = 4


class ModuleQuantMode(NamedTuple):
    """The quantization mode of a module's activations and of its weights."""

    activations: LinearQuantMode
    weights: LinearQuantMode


#: Distiller's command-line spellings of the modes
_MODE_ALIASES = {"SYM": LinearQuantMode.SYMMETRIC, "SYM_RESTR": LinearQuantMode.SYMMETRIC_RESTRICTED,
                 "ASYM_U": LinearQuantMode.ASYMMETRIC_UNSIGNED, "ASYM_S": LinearQuantMode.ASYMMETRIC_SIGNED}


def quoted(argument: str) -> str:
    """An argument's name for a message: ``'mode'``, or a nested one as it is (``overrides['fc'].mode``)."""
    return argument if "[" in argument else f"'{argument}'"


def _enum_value(value: Any, enum_cls: type[Enum], argument: str, aliases: Mapping[str, Enum],
                label: str | None = None) -> Any:
    if isinstance(value, enum_cls):
        return value
    if isinstance(value, str):
        key = value.strip().upper()
        if key in enum_cls.__members__:
            return enum_cls[key]
        if key in aliases:
            return aliases[key]
    names = ", ".join(enum_cls.__members__)
    raise ArgumentError(argument, f"{quoted(label or argument)} must be one of {names} (case-insensitive), "
                                  f"got {value!r}")


def parse_mode(value: Any, argument: str = "mode") -> ModuleQuantMode:
    """A mode name (``SYMMETRIC``, ``asym_u``, ...) for both tensor kinds, or a mapping with ``activations``
    and ``weights``, as Distiller accepts it; ArgumentError naming ``argument`` otherwise."""
    if isinstance(value, ModuleQuantMode):
        return value
    if isinstance(value, Mapping):
        unknown = [k for k in value if k not in ("activations", "weights")]
        if unknown or len(value) != 2:
            raise ArgumentError(argument, f"{quoted(argument)} as a mapping needs exactly the keys 'activations' and "
                                f"'weights', got {sorted(map(str, value))}")
        return ModuleQuantMode(
            _enum_value(value["activations"], LinearQuantMode, argument, _MODE_ALIASES, f"{argument}.activations"),
            _enum_value(value["weights"], LinearQuantMode, argument, _MODE_ALIASES, f"{argument}.weights"))
    mode = _enum_value(value, LinearQuantMode, argument, _MODE_ALIASES)
    return ModuleQuantMode(mode, mode)


def parse_clip_mode(value: Any, argument: str = "clip_acts") -> ClipMode:
    """A clipping mode name (``NONE``, ``AVG``, ``N_STD``, ``GAUSS``, ``LAPLACE``; case-insensitive)."""
    return _enum_value(value, ClipMode, argument, {})


def check_bits(argument: str, value: Any, *, minimum: int = 1) -> int | None:
    """A bit width in ``[minimum, 32]``, or None (leave the tensor in floating point)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_BITS:
        raise ArgumentError(argument, f"{quoted(argument)} must be an integer from {minimum} to {MAX_BITS}, or null "
                            f"to leave the tensor unquantized, got {value!r}")
    return value


def quantized_range(num_bits: int, mode: LinearQuantMode) -> tuple[int, int]:
    """The integer range of ``mode``: signed ``[-2^(b-1), 2^(b-1)-1]`` (restricted: symmetric around 0) or
    unsigned ``[0, 2^b - 1]``."""
    if mode is LinearQuantMode.ASYMMETRIC_UNSIGNED:
        return 0, 2**num_bits - 1
    qmax = 2 ** (num_bits - 1) - 1
    return (-qmax if mode is LinearQuantMode.SYMMETRIC_RESTRICTED else -qmax - 1), qmax


@dataclass(frozen=True)
class QParams:
    """Quantization parameters in Distiller's convention, ``q = clamp(round(scale * x - zero_point), quant_min,
    quant_max)`` and ``x' = (q + zero_point) / scale``: per-tensor when ``axis`` is None, else one scale and zero
    point per index of ``axis``. ``zero_point`` holds integers in a float tensor, as Distiller's does."""

    scale: torch.Tensor
    zero_point: torch.Tensor
    quant_min: int
    quant_max: int
    axis: int | None = None

    def to(self, device: torch.device) -> QParams:
        """The same parameters on ``device``."""
        if self.scale.device == device:
            return self
        return QParams(self.scale.to(device), self.zero_point.to(device), self.quant_min, self.quant_max, self.axis)

    def saturation(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The float range the integer range maps to."""
        return (self.quant_min + self.zero_point) / self.scale, (self.quant_max + self.zero_point) / self.scale


def qparams(num_bits: int, mode: LinearQuantMode, sat_min: torch.Tensor, sat_max: torch.Tensor,
            axis: int | None = None) -> QParams:
    """Distiller's parameters for the float range ``[sat_min, sat_max]`` (tensors of one shape: a scalar, or one
    value per channel along ``axis``), computed in float32 as Distiller computes them.

    Symmetric: ``scale = n / max(|min|, |max|)`` with ``n = (2^b - 1) / 2`` (restricted: ``2^(b-1) - 1``) and a
    zero point of 0. Asymmetric: the range is widened to include 0, ``scale = (2^b - 1) / (max - min)`` and the
    zero point is ``round(scale * min)`` (plus ``2^(b-1)`` when signed). An all-zero range gets scale 1.
    """
    sat_min = torch.as_tensor(sat_min).detach().to(torch.float32)
    sat_max = torch.as_tensor(sat_max).detach().to(torch.float32)
    qmin, qmax = quantized_range(num_bits, mode)
    if mode.symmetric:
        n = 2 ** (num_bits - 1) - 1 if mode is LinearQuantMode.SYMMETRIC_RESTRICTED else (2**num_bits - 1) / 2
        if n <= 0:
            raise ValueError(f"{mode.name} needs at least 2 bits, got {num_bits}")
        sat = torch.maximum(sat_min.abs(), sat_max.abs())
        sat = torch.where(sat == 0, torch.full_like(sat, n), sat)
        scale = n / sat
        zero_point = torch.zeros_like(scale)
    else:
        n = 2**num_bits - 1
        sat_min = torch.minimum(sat_min, torch.zeros_like(sat_min))
        sat_max = torch.maximum(sat_max, torch.zeros_like(sat_max))
        diff = sat_max - sat_min
        diff = torch.where(diff == 0, torch.full_like(diff, n), diff)
        scale = n / diff
        zero_point = torch.round(scale * sat_min)
        if mode is LinearQuantMode.ASYMMETRIC_SIGNED:
            zero_point = zero_point + 2 ** (num_bits - 1)
    scale = scale.reshape(-1) if axis is not None else scale.reshape(1)
    return QParams(scale, zero_point.reshape(scale.shape), qmin, qmax, axis)


def fixed_qparams(num_bits: int, mode: LinearQuantMode, sat_min: float, sat_max: float,
                  device: torch.device | str | None = None) -> QParams:
    """:func:`qparams` for a constant range (DoReFa's ``[0, 1]``, WRPN's ``[-1, 1]``)."""
    params = qparams(num_bits, mode, torch.tensor(sat_min), torch.tensor(sat_max))
    return params if device is None else params.to(torch.device(device))


class _LinearQuantizeSTE(torch.autograd.Function):
    """Distiller's quantize-dequantize, ``(clamp(round(scale * x - zp)) + zp) / scale`` (``bounds`` None: no
    clamp), with a straight-through gradient that is zero where the integer lay outside ``bounds``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                bounds: tuple[int, int] | None) -> torch.Tensor:
        q = torch.round(scale * x - zero_point)
        ctx.clamped = bounds is not None
        if bounds is not None:
            ctx.save_for_backward((q >= bounds[0]) & (q <= bounds[1]))
            q = torch.clamp(q, bounds[0], bounds[1])
        return (q + zero_point) / scale

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        if not ctx.clamped:
            return grad, None, None, None
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None


def fake_quantize(x: torch.Tensor, params: QParams, *, clamp: bool = True) -> torch.Tensor:
    """Quantize and dequantize ``x`` with ``params`` in Distiller's arithmetic (float32 for half-precision input).

    The gradient passes straight through; with ``clamp`` the integers are clamped to ``[quant_min, quant_max]``
    and the gradient is zero where that changed one (post-training quantization). Without it they are left as
    rounded, as Distiller's training quantizers leave them: their input already lies in the range, but a tie at
    its end can round one step past it (symmetric mode's ``+(2^b - 1) / 2`` rounds to ``2^(b-1)``).
    """
    params = params.to(x.device)
    source_dtype = x.dtype
    if source_dtype not in (torch.float32, torch.float64):
        x = x.float()
    scale, zero_point = params.scale, params.zero_point
    if params.axis is not None:
        shape = [1] * x.dim()
        shape[params.axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    bounds = (params.quant_min, params.quant_max) if clamp else None
    return _LinearQuantizeSTE.apply(x, scale, zero_point, bounds).to(source_dtype)


def tensor_range(t: torch.Tensor, per_channel: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The minimum and maximum of ``t``, over all of it or per index of its first dimension."""
    t = t.detach()
    if per_channel:
        flat = t.reshape(t.shape[0], -1)
        return flat.amin(dim=1), flat.amax(dim=1)
    return t.amin(), t.amax()


def tensor_qparams(t: torch.Tensor, num_bits: int, mode: LinearQuantMode, per_channel: bool = False) -> QParams:
    """Parameters covering ``t``'s full range (per output channel when ``per_channel``)."""
    lo, hi = tensor_range(t, per_channel)
    return qparams(num_bits, mode, lo, hi, axis=0 if per_channel else None).to(t.device)


#: ACIQ's optimal clipping multipliers (Banner et al., 2018), by bit width, as Distiller tabulates them
ACIQ_LAPLACE = {0: 1.05, 1: 1.86, 2: 2.83, 3: 3.89, 4: 5.03, 5: 6.2, 6: 7.41, 7: 8.64, 8: 9.89}
ACIQ_LAPLACE_HALF = {0: 1.86, 1: 2.83, 2: 3.89, 3: 5.02, 4: 6.2, 5: 7.41, 6: 8.64, 7: 9.89, 8: 11.16}
ACIQ_GAUSS = {1: 1.24, 2: 1.71, 3: 2.15, 4: 2.55, 5: 2.93, 6: 3.28, 7: 3.61, 8: 3.92}
ACIQ_GAUSS_HALF = {1: 1.71, 2: 2.15, 3: 2.55, 4: 2.93, 5: 3.28, 6: 3.61, 7: 3.92, 8: 4.2}


def aciq_supports(clip: ClipMode, num_bits: int) -> bool:
    """Whether ACIQ's tables hold a multiplier for ``num_bits``."""
    table = ACIQ_GAUSS if clip is ClipMode.GAUSS else ACIQ_LAPLACE
    return num_bits in table


def _stat(stats: Mapping[str, Any], key: str) -> torch.Tensor:
    return torch.tensor(float(stats[key]), dtype=torch.float32)


def stats_range(stats: Mapping[str, Any], num_bits: int, mode: LinearQuantMode, clip: ClipMode,
                n_stds: float | None = None, half_range: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The saturation range Distiller derives from one tensor's calibration statistics (``min``, ``max``,
    ``avg_min``, ``avg_max``, ``mean``, ``std``, ``b``) for a clipping mode."""
    prefix = "avg_" if clip is ClipMode.AVG else ""
    sat_min, sat_max = _stat(stats, prefix + "min"), _stat(stats, prefix + "max")
    if clip is ClipMode.N_STD:
        assert n_stds is not None
        mean, std = _stat(stats, "mean"), _stat(stats, "std")
        sat_min = torch.maximum(sat_min, mean - n_stds * std)
        sat_max = torch.minimum(sat_max, mean + n_stds * std)
    elif clip in (ClipMode.GAUSS, ClipMode.LAPLACE):
        mean = _stat(stats, "mean")
        if clip is ClipMode.LAPLACE:
            alpha = _stat(stats, "b") * (ACIQ_LAPLACE_HALF if half_range and not mode.symmetric
                                         else ACIQ_LAPLACE)[num_bits]
        else:
            alpha = _stat(stats, "std") * (ACIQ_GAUSS_HALF if half_range and not mode.symmetric
                                           else ACIQ_GAUSS)[num_bits]
        sat_min, sat_max = _aciq_range(mean, _stat(stats, "avg_min"), alpha, mode, half_range)
    return sat_min, sat_max


def dynamic_range(t: torch.Tensor, num_bits: int, mode: LinearQuantMode, clip: ClipMode,
                  n_stds: float | None = None, half_range: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The saturation range Distiller derives from the tensor itself when no statistics were collected."""
    t = t.detach().float()
    if clip is ClipMode.AVG:
        per_sample = t.reshape(t.shape[0], -1) if t.dim() > 0 else t.reshape(1, 1)
        return per_sample.amin(dim=1).mean(), per_sample.amax(dim=1).mean()
    sat_min, sat_max = t.amin(), t.amax()
    if clip is ClipMode.N_STD:
        assert n_stds is not None
        mean, std = t.mean(), t.std()
        return torch.maximum(sat_min, mean - n_stds * std), torch.minimum(sat_max, mean + n_stds * std)
    if clip in (ClipMode.GAUSS, ClipMode.LAPLACE):
        mean = t.mean()
        if clip is ClipMode.LAPLACE:
            alpha = (t - mean).abs().mean() * (ACIQ_LAPLACE_HALF if half_range and not mode.symmetric
                                                else ACIQ_LAPLACE)[num_bits]
        else:
            alpha = t.std() * (ACIQ_GAUSS_HALF if half_range and not mode.symmetric else ACIQ_GAUSS)[num_bits]
        return _aciq_range(mean, sat_min, alpha, mode, half_range)
    return sat_min, sat_max


def _aciq_range(mean: torch.Tensor, low: torch.Tensor, alpha: torch.Tensor, mode: LinearQuantMode,
                half_range: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if mode.symmetric:
        clip_val = mean.abs() + alpha
        return -clip_val, clip_val
    low = torch.maximum(low, mean - alpha)
    return low, low + (alpha if half_range else 2 * alpha)


def ema_update(biased: torch.Tensor, value: torch.Tensor, decay: torch.Tensor,
               step: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of a bias-corrected exponential moving average: the new biased and unbiased values."""
    biased = biased * decay + (1 - decay) * value
    return biased, biased / (1 - decay**step)


def is_finite_number(value: Any) -> bool:
    """True for an int or float (not a bool) that is finite."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
