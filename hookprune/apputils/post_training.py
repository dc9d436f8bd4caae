"""Post-training quantization from the command line (``--quantize-eval`` and the ``--qe-*`` options): the
:class:`~hookprune.quantization.PostTrainLinearQuantizer` they describe, or the one of a schedule-style
``--qe-config-file``, and its calibration statistics."""

from __future__ import annotations

import argparse
import itertools
import math
import os
from collections.abc import Iterable, Sized
from typing import Any

import torch
from torch import nn

import hookprune
from hookprune.apputils.errors import AppError
from hookprune.errors import suggest
from hookprune.quantization import PostTrainLinearQuantizer, collect_activation_stats, load_stats, save_stats
from hookprune.quantization.affine import parse_clip_mode, parse_mode

#: ``--qe-mode`` values (Distiller's; the full names, ``symmetric`` and so on, are accepted too)
MODES = ("sym", "sym_restr", "asym_s", "asym_u")
#: ``--qe-clip-acts`` values
CLIP_MODES = ("none", "avg", "n_std", "gauss", "laplace")
#: the file ``--qe-calibration`` writes in the run folder (Distiller's name)
STATS_FILE = "acts_quantization_stats.yaml"


def check_quantization_args(args: argparse.Namespace) -> None:
    """Refuse, in one line naming the option, a ``--qe-*`` value the quantizer cannot take."""
    for option, value, parse, names in (("--qe-mode", args.qe_mode, parse_mode, MODES),
                                        ("--qe-clip-acts", args.qe_clip_acts, parse_clip_mode, CLIP_MODES)):
        try:
            parse(value)
        except ValueError:
            raise AppError(f"{option} {value}: unknown{suggest(value.lower(), names)}; choose from {', '.join(names)}"
                           ) from None
    for option, value in (("--qe-bits-acts", args.qe_bits_acts), ("--qe-bits-wts", args.qe_bits_wts),
                          ("--qe-bits-accum", args.qe_bits_accum)):
        if not 1 <= value <= 32:
            raise AppError(f"{option} {value}: a bit width is from 1 to 32")
    if args.qe_clip_acts.upper() == "N_STD" and args.qe_clip_n_stds is None:
        raise AppError("--qe-clip-acts n_std needs --qe-clip-n-stds (the number of standard deviations)")
    if args.qe_clip_n_stds is not None and not args.qe_clip_n_stds > 0:
        raise AppError(f"--qe-clip-n-stds {args.qe_clip_n_stds}: must be > 0")
    if args.qe_calibration is not None and not 0 < args.qe_calibration <= 1:
        raise AppError(f"--qe-calibration {args.qe_calibration}: the fraction of the data must be in (0, 1]")
    if args.qe_stats_file and not os.path.isfile(args.qe_stats_file):
        raise AppError(f"--qe-stats-file {args.qe_stats_file}: no such file")
    if args.qe_config_file and not os.path.isfile(args.qe_config_file):
        raise AppError(f"--qe-config-file {args.qe_config_file}: no such file")
    if args.qe_stats_file and args.qe_calibration is not None:
        raise AppError("--qe-stats-file and --qe-calibration exclude each other: read the statistics, or collect "
                       "them")
    if args.quantize_eval and not args.evaluate:
        raise AppError("--quantize-eval quantizes a trained model for evaluation: add --evaluate (and the weights, "
                       "with --resume-from or --exp-load-weights-from)")


def leading_batches(loader: Iterable[Any], fraction: float) -> list[Any]:
    """The first ``fraction`` of ``loader``'s batches (at least one)."""
    count = max(1, math.ceil(fraction * len(loader))) if isinstance(loader, Sized) else 1
    return list(itertools.islice(loader, count))


def calibrate(model: nn.Module, loader: Iterable[Any], fraction: float, device: torch.device,
              path: str | os.PathLike[str]) -> dict[str, Any]:
    """Collect the activation statistics of every layer of the float ``model`` over the leading ``fraction`` of
    ``loader``'s batches and save them at ``path`` (Distiller's YAML); returns them."""
    batches = [x.to(device) for x, _ in leading_batches(loader, fraction)]
    stats = collect_activation_stats(model, batches)
    save_stats(stats, path)
    return stats


def post_train_quantizer(model: nn.Module, args: argparse.Namespace,
                         stats: str | os.PathLike[str] | dict[str, Any] | None) -> PostTrainLinearQuantizer:
    """The quantizer of ``--qe-config-file`` (its ``quantizers`` section's PostTrainLinearQuantizer), or the one
    the ``--qe-*`` options describe; ``stats`` (a file or collected statistics) replace any the file names."""
    if args.qe_config_file:
        sched = hookprune.build(args.qe_config_file, model)
        found = [q for q in sched.instances.values() if isinstance(q, PostTrainLinearQuantizer)]
        if len(found) != 1:
            raise AppError(f"--qe-config-file {args.qe_config_file}: its quantizers section must hold one "
                           f"PostTrainLinearQuantizer, it holds {len(found)}")
        quantizer = found[0]
        if isinstance(stats, dict):
            quantizer.load_state_dict({"activation_stats": stats})
        elif stats is not None:
            quantizer.load_state_dict({"activation_stats": load_stats(stats)})
        return quantizer
    return PostTrainLinearQuantizer(
        model, bits_activations=args.qe_bits_acts, bits_parameters=args.qe_bits_wts, bits_accum=args.qe_bits_accum,
        mode=args.qe_mode, clip_acts=args.qe_clip_acts, clip_n_stds=args.qe_clip_n_stds,
        per_channel_wts=args.qe_per_channel, model_activation_stats=stats)


def describe(quantizer: PostTrainLinearQuantizer) -> str:
    """One line: the quantizer's bit widths, mode, clipping and where its activation ranges come from."""
    bits = quantizer.default_qbits
    mode = quantizer.mode
    ranges = "calibration statistics" if quantizer.activation_stats else "each batch (dynamic)"
    return (f"post-training quantization: activations {bits.acts} bits, weights {bits.wts} bits"
            f"{' per channel' if quantizer.per_channel_wts else ''}, accumulator {quantizer.bits_accum} bits, "
            f"mode {mode.activations.name}/{mode.weights.name}, clipping {quantizer.clip_acts.name}, "
            f"activation ranges from {ranges}")
