"""Integer grids in the convention of torch's quantized tensors and ONNX's QuantizeLinear/DequantizeLinear.

hookprune computes in Distiller's convention, ``q = round(scale * x - zero_point)`` and
``x' = (q + zero_point) / scale``; torch and ONNX use ``q = round(x / s) + z`` and ``x' = (q - z) * s``. The same
grid in their convention has ``s = 1 / scale`` and ``z = -zero_point``, and the integers are shifted by a constant
when the target type's range starts elsewhere (a signed 8-bit grid stored as ``quint8`` adds 128 to every integer
and to ``z``). Both round ties to even, as ``torch.round`` does, but ``x / s`` with the reciprocal rounded to
float32 is not always ``scale * x``: at an exact tie the integer can differ by one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hookprune.deploy.errors import DeployError
from hookprune.quantization.affine import QParams

#: the integer types a grid can be stored in, with their ranges
INT8, UINT8 = (-128, 127), (0, 255)


@dataclass(frozen=True)
class Grid:
    """A grid in torch's and ONNX's convention, ``x = (q - zero_point) * scale``: one scale and zero point, or one
    per index of ``axis``; integers in ``[quant_min, quant_max]``."""

    scale: torch.Tensor
    zero_point: torch.Tensor
    quant_min: int
    quant_max: int
    axis: int | None = None

    @property
    def dtype(self) -> torch.dtype:
        """torch's quantized type for the grid's integers."""
        return torch.quint8 if self.quant_min >= 0 else torch.qint8

    def item(self) -> tuple[float, int]:
        """The per-tensor scale and zero point as numbers."""
        return float(self.scale.reshape(())), int(self.zero_point.reshape(()))

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as a torch quantized tensor on this grid."""
        if self.axis is None:
            scale, zero_point = self.item()
            return torch.quantize_per_tensor(x, scale, zero_point, self.dtype)
        return torch.quantize_per_channel(x, self.scale.double(), self.zero_point, self.axis, self.dtype)


def to_grid(params: QParams, target: tuple[int, int], what: str) -> Grid:
    """Distiller's ``params`` as the same grid stored in the 8-bit type whose range is ``target``; a
    :class:`DeployError` naming ``what`` when the grid is not 8 bits wide."""
    width = params.quant_max - params.quant_min
    if width not in (254, 255):
        bits = width.bit_length()
        raise DeployError(f"{what} is quantized to {bits} bits; torch's quantized modules and ONNX's "
                          "QuantizeLinear hold 8-bit integers")
    shift = target[0] - params.quant_min if params.quant_min < target[0] or params.quant_max > target[1] else 0
    scale = (1.0 / params.scale.double()).float()
    zero_point = (torch.round(-params.zero_point.double()) + shift).to(torch.int64)
    return Grid(scale, zero_point, params.quant_min + shift, params.quant_max + shift, params.axis)
