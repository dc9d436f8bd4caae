"""Quantization in Distiller's arithmetic (its rounding at every tie), with its quantizers, parameters and
statistics format, simulated in floating point with straight-through gradients.

Training: ``QuantAwareTrainRangeLinearQuantizer``, ``DorefaQuantizer``, ``WRPNQuantizer``, ``PACTQuantizer``,
driven by a schedule's quantizer policy (``prepare_model()`` at load, ``quantize_params()`` after every optimizer
step of the window). Evaluation: ``PostTrainLinearQuantizer`` with statistics from
:func:`collect_activation_stats` (saved and read in Distiller's YAML by :func:`save_stats` / :func:`load_stats`).
"""

from hookprune.quantization.affine import ClipMode, LinearQuantMode, ModuleQuantMode, QParams, fake_quantize, qparams
from hookprune.quantization.base import Quantizer
from hookprune.quantization.clipped_linear import (
    ClippedLinearQuantization,
    DorefaQuantizer,
    LearnedClippedLinearQuantization,
    PACTQuantizer,
    WRPNQuantizer,
)
from hookprune.quantization.overrides import QBits
from hookprune.quantization.post_train import PostTrainLinearQuantizer
from hookprune.quantization.range_linear import FakeLinearQuantization, QuantAwareTrainRangeLinearQuantizer
from hookprune.quantization.stats import collect_activation_stats, load_stats, save_stats

__all__ = [
    "ClipMode",
    "ClippedLinearQuantization",
    "DorefaQuantizer",
    "FakeLinearQuantization",
    "LearnedClippedLinearQuantization",
    "LinearQuantMode",
    "ModuleQuantMode",
    "PACTQuantizer",
    "PostTrainLinearQuantizer",
    "QBits",
    "QParams",
    "QuantAwareTrainRangeLinearQuantizer",
    "Quantizer",
    "WRPNQuantizer",
    "collect_activation_stats",
    "fake_quantize",
    "load_stats",
    "qparams",
    "save_stats",
]
