"""The example application's command line: Distiller's ``compress_classifier.py`` options and their checks."""

from __future__ import annotations

import argparse
import math
import os
import stat
from typing import Any, NoReturn

from hookprune import knowledge_distillation as kd
from hookprune.apputils.data_loaders import DATASETS
from hookprune.apputils.errors import AppError
from hookprune.apputils.training import AMP_DTYPES
from hookprune.errors import suggest

DEFAULT_ARCH = "lenet300_100"
#: the largest integer an option takes (epochs, sizes, seeds): what fits in torch's 64-bit integers
MAX_INT = 2**63 - 1
#: the most sparsity levels ``--sense-range`` may ask for (a step of 0.001 over [0, 1] is 1,001 levels)
MAX_SENSE_LEVELS = 1001
#: default seconds a collective waits for the other ranks of a torchrun job before the job ends
DEFAULT_DIST_TIMEOUT = 600.0


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (no usage above it), exit status 2."""

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
    mode.add_argument("--summary", nargs="?", const="sparsity", choices=["sparsity"],
                      help="print the model's sparsity table and exit")
    mode.add_argument("--sense", choices=["element", "filter", "channel"],
                      help="sensitivity analysis: prune each weight alone to each level and evaluate")
    mode.add_argument("--evaluate", action="store_true", help="evaluate on the test split and exit")
    p.add_argument("--sense-range", nargs=3, type=float, default=[0.0, 0.95, 0.05], metavar=("START", "STOP", "STEP"),
                   help="sparsity levels of --sense (STOP included)")
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
    p.add_argument("--dist-timeout", type=float, default=DEFAULT_DIST_TIMEOUT, metavar="SECONDS",
                   help="under torchrun: how long a collective waits for the other ranks; a stopped, hung or dead "
                        "rank then ends the job with one line naming it")
    return p


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
