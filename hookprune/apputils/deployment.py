"""The application's deployment steps: ``--export-onnx`` and ``--qe-convert-pytorch`` on the compressed model.

Both act on the model the run ends with (trained, or loaded and evaluated), with the schedule's masks folded in
and its quantizer, if any, applied: a range-linear quantizer makes the ONNX file QDQ, and a
``PostTrainLinearQuantizer`` (from the schedule) is what ``--qe-convert-pytorch`` turns into torch's int8 modules.
A post-training quantizer that has not been applied yet is calibrated on training batches when it has no
statistics, and applied.
"""

from __future__ import annotations

import argparse
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hookprune.apputils.errors import AppError
from hookprune.apputils.evaluation import Scores, evaluate
from hookprune.deploy import convert_to_pytorch, export_onnx
from hookprune.quantization import PostTrainLinearQuantizer, Quantizer

#: batches of the training split a post-training quantizer without statistics is calibrated on
CALIBRATION_BATCHES = 10
#: torch's warning that its quantized tensors are deprecated (said once in the log instead)
TORCH_INT8_WARNING = "torch.quantize_per_tensor"


def check_export_args(args: argparse.Namespace) -> None:
    """Refuse, in one line, ``--export-onnx`` and ``--qe-convert-pytorch`` where they cannot run."""
    asked = [name for name, value in (("--export-onnx", args.export_onnx is not None),
                                      ("--qe-convert-pytorch", args.qe_convert_pytorch)) if value]
    if not asked:
        return
    if args.export_onnx is not None and (not args.export_onnx.strip() or args.export_onnx.endswith(os.sep)):
        raise AppError(f"--export-onnx {args.export_onnx!r}: give a file name (default model.onnx in the run folder)")
    for mode in ("summary", "sense"):
        if getattr(args, mode, None):
            raise AppError(f"{asked[0]} with --{mode}: --{mode} produces no model to deploy")
    if getattr(args, "fsdp", False):
        raise AppError(f"{asked[0]} with --fsdp: deployment needs the whole model in one process; run it on a "
                       "checkpoint with --evaluate --exp-load-weights-from")


def schedule_quantizer(sched: Any) -> Quantizer | None:
    """The quantizer of the schedule (its first, in schedule order), or None."""
    found = [obj for obj in getattr(sched, "instances", {}).values() if isinstance(obj, Quantizer)]
    return found[0] if found else None


def apply_post_training(quantizer: PostTrainLinearQuantizer, batches: Iterable[Any], say: Callable[[str], None]
                        ) -> None:
    """Calibrate ``quantizer`` on the first :data:`CALIBRATION_BATCHES` of ``batches`` when it has no statistics,
    then apply it to its model (nothing when it is applied already)."""
    if quantizer.prepared:
        return
    if quantizer.activation_stats is None:
        inputs = []
        for i, (x, _) in enumerate(batches):
            if i == CALIBRATION_BATCHES:
                break
            inputs.append(x.to(next(quantizer.model.parameters()).device))
        quantizer.calibrate(inputs)
        say(f"{type(quantizer).__name__}: calibrated on {len(inputs)} training batches")
    quantizer.prepare_model()


def export_run_model(model: nn.Module, sched: Any, path: Path, example: torch.Tensor, train_loader: Iterable[Any],
                     say: Callable[[str], None], quantizer: Quantizer | None = None) -> None:
    """``--export-onnx``: write ``model`` (masks folded in, QDQ under ``quantizer``, default the schedule's; a
    post-training one is applied first) to ``path`` and report ONNX Runtime's agreement with PyTorch on
    ``example``."""
    quantizer = quantizer or schedule_quantizer(sched)
    if isinstance(quantizer, PostTrainLinearQuantizer):
        apply_post_training(quantizer, train_loader, say)
    masks = {name: mask for name, mask in getattr(sched, "masks", {}).items() if mask is not None}
    report = export_onnx(model, path, example, quantizer=quantizer, masks=masks)
    kind = f"QDQ ({type(quantizer).__name__})" if quantizer is not None else "float"
    say(f"exported {path} ({kind}, {report.size_bytes:,} bytes); ONNX Runtime's outputs on a test batch of "
        f"{len(example)} differ from PyTorch's by at most {report.max_abs_diff:.3g}")


def int8_run_model(model: nn.Module, sched: Any, train_loader: Iterable[Any], test_loader: Iterable[Any],
                   device: torch.device, say: Callable[[str], None], quantizer: Quantizer | None = None
                   ) -> tuple[Scores, Scores]:
    """``--qe-convert-pytorch``: the post-training ``quantizer`` (default: the schedule's) applied (calibrated
    first if need be), ``model`` converted to torch's int8 modules, and both evaluated on the test split:
    (fake-quantized, int8)."""
    quantizer = quantizer or schedule_quantizer(sched)
    if not isinstance(quantizer, PostTrainLinearQuantizer):
        found = f" (it has a {type(quantizer).__name__})" if quantizer is not None else ""
        raise AppError(f"--qe-convert-pytorch converts a post-training quantized model: give --quantize-eval, or a "
                       f"schedule with a PostTrainLinearQuantizer{found}")
    apply_post_training(quantizer, train_loader, say)
    fake = evaluate(model, test_loader, device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", TORCH_INT8_WARNING, UserWarning)
        int8 = convert_to_pytorch(model, quantizer)
        real = evaluate(int8, test_loader, torch.device("cpu"))
    say(f"int8 PyTorch model ({torch.backends.quantized.engine} engine; torch deprecates its quantized tensors "
        f"from 2.14): test top-1 {real.top1:.2f}% against {fake.top1:.2f}% fake-quantized")
    return fake, real
