"""The example application's command line: Distiller's ``compress_classifier.py`` options and their checks."""

from __future__ import annotations

import argparse
import math
import os
import stat
from typing import Any, NoReturn

from hookprune import knowledge_distillation as kd
from hookprune.apputils.activation_stats import PHASES, check_phases
from hookprune.apputils.data_loaders import DATASETS
from hookprune.apputils.errors import AppError
from hookprune.apputils.greedy import check_greedy_args
from hookprune.apputils.model_summary import SUMMARY_CHOICES
from hookprune.apputils.post_training import CLIP_MODES, MODES, check_quantization_args
from hookprune.apputils.pretrained import PRETRAINED_ENV
from hookprune.apputils.training import AMP_DTYPES
from hookprune.errors import suggest
from hookprune.pruning.greedy import FINETUNING_POLICIES

DEFAULT_ARCH = "lenet300_100"
#: the largest integer an option takes (epochs, sizes, seeds): what fits in torch's 64-bit integers
MAX_INT = 2**63 - 1
#: the most sparsity levels ``--sense-range`` may ask for (a step of 0.001 over [0, 1] is 1,001 levels)
MAX_SENSE_LEVELS = 1001
#: default seconds a collective waits for the other ranks of a torchrun job before the job ends
DEFAULT_DIST_TIMEOUT = 600.0


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors (an unknown option, a value of the wrong type, options that exclude each
    other) are one line naming the option, without the usage above it, and exit status 2, as every other bad input
    of the application."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}; --help lists the options\n")


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """Distiller's ``compress_classifier.py`` options, with the same names and meanings."""
    p = OneLineParser(prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("data", nargs="?", metavar="DATA_DIR",
                   help="folder of the data set (MNIST, CIFAR-10 or an ImageFolder tree); none: the digits data")
    p.add_argument("-a", "--arch", metavar="ARCH",
                   help=f"model architecture: the zoo's or torchvision's (default {DEFAULT_ARCH}, or the resumed one)")
    p.add_argument("--dataset", choices=DATASETS,
                   help="data set (default: digits without DATA_DIR, else cifar10/mnist/imagenet by the "
                        "architecture's name, as Distiller)")
    p.add_argument("--epochs", type=int, default=20, metavar="N", help="number of epochs to train")
    p.add_argument("-b", "--batch-size", type=int, default=32, metavar="N", help="minibatch size")
    p.add_argument("--lr", "--learning-rate", dest="lr", type=float, default=0.1, metavar="LR",
                   help="initial learning rate")
    p.add_argument("--momentum", type=float, default=0.9, metavar="M", help="SGD momentum")
    p.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, default=1e-4, metavar="W",
                   help="weight decay")
    p.add_argument("-j", "--workers", type=int, default=0, metavar="N", help="data loading worker processes")
    p.add_argument("--compress", metavar="SCHEDULE", help="YAML compression schedule")
    p.add_argument("--resume-from", metavar="CKPT",
                   help="continue the run of this checkpoint: weights, optimizer, schedule state, epoch, RNG")
    p.add_argument("--reset-optimizer", action="store_true",
                   help="with --resume-from: keep the weights and masks, start at epoch 0 with a new optimizer")
    p.add_argument("--exp-load-weights-from", metavar="CKPT",
                   help="start from the weights of this checkpoint (hookprune's or Distiller's), at epoch 0")
    p.add_argument("--seed", type=int, help="random seed (default: a fresh one, or the resumed run's)")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms only (seed 0 unless given): a rerun gives identical results")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--gpus", metavar="IDS", help="comma-separated GPU ids (several: DataParallel)")
    where.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    p.add_argument("--print-freq", "-p", type=int, default=10, metavar="N",
                   help="update the progress line every N minibatches")
    p.add_argument("--out-dir", "-o", default="logs", metavar="DIR", help="folder of the run folders")
    p.add_argument("--name", "-n", metavar="NAME", help="experiment name (default: the architecture)")
    p.add_argument("--vs", "--validation-split", dest="validation_split", type=float, default=0.1,
                   metavar="FRACTION", help="fraction of the training set held out for validation")
    for split in ("train", "valid", "test"):
        p.add_argument(f"--effective-{split}-size", type=float, default=1.0, metavar="FRACTION",
                       help=f"use this leading fraction of the {split} split")
    mode = p.add_mutually_exclusive_group()
    add_summary_args(mode)
    mode.add_argument("--sense", choices=["element", "filter", "channel"],
                      help="sensitivity analysis: prune each weight alone to each level and evaluate")
    mode.add_argument("--evaluate", action="store_true", help="evaluate on the test split and exit")
    p.add_argument("--sense-range", nargs=3, type=float, default=[0.0, 0.95, 0.05], metavar=("START", "STOP", "STEP"),
                   help="sparsity levels of --sense (STOP included)")
    add_quantization_args(p, mode)
    add_greedy_args(p, mode)
    add_analysis_args(p, mode)
    kd.add_distillation_args(p)
    p.add_argument("--kd-teacher-epochs", type=int, metavar="N",
                   help="without --kd-resume, train the teacher for N epochs first (default: --epochs)")
    p.add_argument("--kd-teacher-lr", type=float, metavar="LR",
                   help="learning rate of that teacher training (default: --lr)")
    p.add_argument("--amp", nargs="?", const="bf16", choices=list(AMP_DTYPES),
                   help="train in mixed precision: the forward pass under torch.autocast in bf16 (without a value) "
                        "or fp16 (then with a gradient scaler)")
    p.add_argument("--compile", nargs="?", const="inductor", metavar="BACKEND",
                   help="run the model compiled by torch.compile with this backend (without a value: inductor)")
    p.add_argument("--fsdp", action="store_true",
                   help="under torchrun: shard the model with FSDP2 (fully_shard) instead of DistributedDataParallel")
    add_export_args(p)
    p.add_argument("--dist-timeout", type=float, default=DEFAULT_DIST_TIMEOUT, metavar="SECONDS",
                   help="under torchrun: how long a collective waits for the other ranks; a stopped, hung or dead "
                        "rank then ends the job with one line naming it")
    return p


def add_export_args(p: argparse.ArgumentParser) -> None:
    """Distiller's deployment options: ONNX export and the int8 PyTorch model of post-training quantization."""
    p.add_argument("--export-onnx", nargs="?", const="model.onnx", metavar="PATH",
                   help="at the end of the run, export the compressed model to ONNX at PATH in the run folder "
                        "(without a value: model.onnx): masks folded into the weights, QDQ when a range-linear "
                        "quantizer is in the schedule; ONNX Runtime checks it against PyTorch (needs the deploy "
                        "extra: onnx, onnxscript, onnxruntime)")
    p.add_argument("--qe-convert-pytorch", action="store_true",
                   help="at the end of the run, convert the schedule's PostTrainLinearQuantizer model into torch's "
                        "int8 quantized modules and evaluate it on the CPU beside the fake-quantized model")


def check_training_stack(args: argparse.Namespace, launched: bool) -> None:
    """Refuse, in one line, the --amp, --compile and --fsdp combinations that cannot run."""
    modes = [f"--{name}" for name in ("summary", "sense", "evaluate") if getattr(args, name)]
    if args.fsdp and not launched:
        raise AppError("--fsdp shards the model over the processes of a torchrun job; start the run with "
                       "torchrun --nproc_per_node=N")
    if args.fsdp and (args.summary or args.sense):
        raise AppError(f"--fsdp with {modes[0]}: {modes[0]} reads or prunes whole weights; run it in one process")
    if args.amp and modes:
        raise AppError(f"--amp with {modes[0]}: mixed precision applies to training, and {modes[0]} trains nothing")
    if args.amp == "fp16" and args.fsdp:
        raise AppError("--amp fp16 with --fsdp: the gradient scaler would decide on each rank's gradient shards "
                       "alone; use --amp bf16, which needs no scaler")
    if args.compile is not None:
        if args.summary:
            raise AppError("--compile with --summary: the summary runs no model")
        import torch._dynamo

        backends = torch._dynamo.list_backends(exclude_tags=())
        if args.compile not in backends:
            raise AppError(f"--compile {args.compile}: unknown torch.compile backend{suggest(args.compile, backends)}; "
                           f"backends: {', '.join(backends)}")


def add_summary_args(mode: argparse._MutuallyExclusiveGroup) -> None:
    """``--summary``: the reports of a model that print and exit (repeat it for several)."""
    mode.add_argument("--summary", nargs="?", const="sparsity", action="append", metavar="|".join(SUMMARY_CHOICES),
                      help="print a report of the model and exit (repeatable): sparsity (the sparsity table, the "
                           "default), compute (MACs and weights per convolution and linear layer, dense against "
                           "compressed: removed structures and zeros apart), model (as PyTorch prints it), modules "
                           "(names and types), png (draw the graph into the run folder)")


def add_quantization_args(p: argparse.ArgumentParser, mode: argparse._MutuallyExclusiveGroup) -> None:
    """Distiller's post-training quantization options: ``--quantize-eval`` and the ``--qe-*`` settings."""
    group = p.add_argument_group("post-training quantization (with --evaluate)")
    group.add_argument("--quantize-eval", "--qe", dest="quantize_eval", action="store_true",
                       help="quantize the model with a PostTrainLinearQuantizer and evaluate it on the test split")
    group.add_argument("--qe-mode", "--qem", dest="qe_mode", default="sym", metavar="|".join(MODES),
                       help="linear quantization mode: symmetric, symmetric restricted, asymmetric signed or unsigned")
    group.add_argument("--qe-bits-acts", "--qeba", dest="qe_bits_acts", type=int, default=8, metavar="N",
                       help="bits of the activations")
    group.add_argument("--qe-bits-wts", "--qebw", dest="qe_bits_wts", type=int, default=8, metavar="N",
                       help="bits of the weights")
    group.add_argument("--qe-bits-accum", dest="qe_bits_accum", type=int, default=32, metavar="N",
                       help="bits of the accumulator (and the bias)")
    group.add_argument("--qe-per-channel", "--qepc", dest="qe_per_channel", action="store_true",
                       help="quantize the weights per output channel")
    group.add_argument("--qe-clip-acts", "--qeca", dest="qe_clip_acts", default="none", metavar="|".join(CLIP_MODES),
                       help="how activation ranges are clipped from the statistics")
    group.add_argument("--qe-clip-n-stds", dest="qe_clip_n_stds", type=float, metavar="N",
                       help="with --qe-clip-acts n_std: the number of standard deviations kept")
    group.add_argument("--qe-stats-file", metavar="PATH",
                       help="activation statistics YAML (Distiller's format); without it or --qe-calibration the "
                            "activation ranges come from each batch")
    group.add_argument("--qe-calibration", type=float, metavar="FRACTION",
                       help="collect activation statistics on this leading fraction of the training split and save "
                            "them in the run folder (alone: then exit; with --qe: quantize with them)")
    group.add_argument("--qe-config-file", metavar="YAML",
                       help="a schedule-style YAML whose quantizers section holds the PostTrainLinearQuantizer to use "
                            "(replaces the other --qe-* settings)")


def add_greedy_args(p: argparse.ArgumentParser, mode: argparse._MutuallyExclusiveGroup) -> None:
    """Distiller's greedy filter pruning options."""
    mode.add_argument("--greedy", action="store_true",
                      help="greedy filter pruning: remove, step by step, the filters whose loss hurts validation "
                           "top-1 least, until --greedy-target-density; then evaluate and exit")
    group = p.add_argument_group("greedy filter pruning")
    group.add_argument("--greedy-target-density", type=float, metavar="FRACTION",
                       help="stop when the model's MACs are at most this fraction of the dense model's")
    group.add_argument("--greedy-pruning-step", type=float, default=0.1, metavar="FRACTION",
                       help="fraction of a layer's filters each step removes")
    group.add_argument("--greedy-ft-epochs", type=int, default=1, metavar="N",
                       help="epochs of fine-tuning of each candidate (0: none)")
    group.add_argument("--greedy-finetuning-policy", default="constant", metavar="|".join(FINETUNING_POLICIES),
                       help="fine-tune on --effective-train-size of the training split (constant) or on a share "
                            "that grows as the model shrinks (linear-grow)")


def add_analysis_args(p: argparse.ArgumentParser, mode: argparse._MutuallyExclusiveGroup) -> None:
    """Distiller's remaining options: thinning a loaded model, statistics and reports, pretrained weights."""
    mode.add_argument("--thinnify", action="store_true",
                      help="remove the zero filters and channels of the loaded model, save it in the run folder "
                           "and exit")
    p.add_argument("--act-stats", "--activation-stats", dest="act_stats", nargs="+", default=[],
                   metavar="PHASE", help=f"collect per-layer activation statistics in these phases "
                                         f"({', '.join(PHASES)}) into the run folder")
    p.add_argument("--confusion", action="store_true", help="print the confusion matrix after each test evaluation")
    p.add_argument("--num-best-scores", type=int, default=1, metavar="N",
                   help="print the N best epochs so far after each epoch")
    p.add_argument("--masks-sparsity", action="store_true", help="print the masks' sparsity after each epoch")
    p.add_argument("--verbose", "-v", action="store_true", help="print the library's debug messages")
    p.add_argument("--pretrained", nargs="?", const="", metavar="PATH",
                   help=f"start from pretrained weights: the file PATH, or without it ARCH.pth in the folder "
                        f"${PRETRAINED_ENV} names or torchvision's weights in torch hub's cache (never downloaded)")


def check_app_options(args: argparse.Namespace) -> None:
    """Refuse, in one line naming the option and its value, the values of the options above that cannot run."""
    for summary in args.summary or []:
        if summary not in SUMMARY_CHOICES:
            raise AppError(f"--summary {summary}: unknown report{suggest(summary, SUMMARY_CHOICES)}; choose from "
                           f"{', '.join(SUMMARY_CHOICES)}")
    check_quantization_args(args)
    check_greedy_args(args)
    check_phases(args.act_stats)
    if args.num_best_scores < 1:
        raise AppError(f"--num-best-scores {args.num_best_scores}: must be >= 1")
    if args.thinnify and not (args.resume_from or args.exp_load_weights_from):
        raise AppError("--thinnify thins a trained model: give it with --resume-from or --exp-load-weights-from")
    if args.pretrained is not None and (args.resume_from or args.exp_load_weights_from):
        raise AppError("--pretrained with --resume-from or --exp-load-weights-from: start from one set of weights")


def _number(option: str, value: Any, low: float, high: float = math.inf, *, low_open: bool = False,
            high_open: bool = False, integer: bool = False) -> None:
    """Refuse, naming ``option``, a ``value`` outside the interval from ``low`` to ``high`` (or not finite)."""
    if value is None:
        return
    finite = isinstance(value, int) or math.isfinite(value)  # an int of any size: no float conversion to overflow
    inside = finite and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if inside:
        return
    if integer:
        bound = f"from {low:g} to {high}" if high < math.inf else f">= {low:g}"
        raise AppError(f"{option} {value}: must be an integer {bound}")
    if high == math.inf:
        raise AppError(f"{option} {value}: must be a finite number {'>' if low_open else '>='} {low:g}")
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    raise AppError(f"{option} {value}: must be a number within {interval}")


def _path(option: str, value: str | None, kind: str) -> None:
    """Refuse a path that cannot be what ``option`` reads: ``kind`` is ``"file"`` or ``"folder"``; a path that
    is something else (a pipe, a device) would block or stream forever, so it is refused too. A missing file is
    named in its reader's words."""
    if value is None or value == "":
        return
    if "\0" in value:
        raise AppError(f"{option}: the path {value!r} holds a NUL character")
    try:
        mode = os.stat(value).st_mode
    except FileNotFoundError:
        missing = {"--compress": f"{value}: no such schedule file",
                   "--kd-resume": f"teacher checkpoint '{value}' does not exist"}
        if kind == "file":
            raise AppError(missing.get(option, f"checkpoint '{value}' does not exist")) from None
        raise AppError(f"{option} {value}: no such {kind}") from None
    except OSError as exc:
        raise AppError(f"{option} {value}: cannot reach it ({exc.strerror})") from None
    if kind == "folder" and not stat.S_ISDIR(mode):
        raise AppError(f"{option} {value}: not a folder")
    if kind == "file" and not stat.S_ISREG(mode):
        what = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a pipe or a device?)"
        raise AppError(f"{option} {value}: {what}, not a {'schedule' if option == '--compress' else 'checkpoint'} "
                       "file")


def check_values(args: argparse.Namespace) -> None:
    """Refuse, in one line naming the option and its value, every value the run cannot use: numbers that are not
    finite or out of range, and paths that are missing or of the wrong kind. Runs before anything is loaded."""
    _number("--epochs", args.epochs, 0, MAX_INT, integer=True)
    _number("--batch-size", args.batch_size, 1, MAX_INT, integer=True)
    _number("--print-freq", args.print_freq, 1, MAX_INT, integer=True)
    workers = max(8, 4 * (os.cpu_count() or 1))
    if not 0 <= args.workers <= workers:
        raise AppError(f"--workers {args.workers}: must be an integer from 0 to {workers} (4 processes per CPU core)")
    _number("--seed", args.seed, 0, MAX_INT, integer=True)
    _number("--lr", args.lr, 0)
    _number("--momentum", args.momentum, 0, 1, high_open=True)
    _number("--wd", args.weight_decay, 0)
    _number("--vs", args.validation_split, 0, 1, high_open=True)
    for split in ("train", "valid", "test"):
        _number(f"--effective-{split}-size", getattr(args, f"effective_{split}_size"), 0, 1, low_open=True)
    start, stop, step = args.sense_range
    if not all(map(math.isfinite, args.sense_range)) or step <= 0 or not 0 <= start <= stop <= 1:
        raise AppError(f"--sense-range {start:g} {stop:g} {step:g}: need 0 <= START <= STOP <= 1 and STEP > 0")
    if (stop - start) / step + 1 > MAX_SENSE_LEVELS:
        raise AppError(f"--sense-range {start:g} {stop:g} {step:g}: more than {MAX_SENSE_LEVELS:,} levels; "
                       "use a larger STEP")
    _number("--kd-temperature", args.kd_temp, 0, low_open=True)
    _number("--kd-distill-wt", args.kd_distill_wt, 0)
    _number("--kd-student-wt", args.kd_student_wt, 0)
    _number("--kd-teacher-wt", args.kd_teacher_wt, 0)
    _number("--kd-start-epoch", args.kd_start_epoch, 0, MAX_INT, integer=True)
    if args.kd_teacher and args.kd_start_epoch >= max(args.epochs, 1):
        raise AppError(f"--kd-start-epoch {args.kd_start_epoch}: distillation would start after the last epoch "
                       f"(--epochs {args.epochs})")
    _number("--kd-teacher-epochs", args.kd_teacher_epochs, 0, MAX_INT, integer=True)
    _number("--kd-teacher-lr", args.kd_teacher_lr, 0)
    _number("--dist-timeout", args.dist_timeout, 0, 7 * 24 * 3600, low_open=True)
    if args.name and (os.sep in args.name or "/" in args.name or "\0" in args.name or args.name in (".", "..")):
        raise AppError(f"--name {args.name!r}: a name, not a path (no '/')")
    _path("DATA_DIR", args.data, "folder")
    _path("--compress", args.compress, "file")
    for option in ("--resume-from", "--exp-load-weights-from", "--kd-resume"):
        _path(option, getattr(args, option[2:].replace("-", "_")), "file")
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        raise AppError(f"--out-dir {args.out_dir}: not a folder")
