"""The example application's command line: Distiller's ``compress_classifier.py`` options and their checks."""

from __future__ import annotations

import argparse

from hookprune import knowledge_distillation as kd
from hookprune.apputils.data_loaders import DATASETS
from hookprune.apputils.errors import AppError
from hookprune.apputils.training import AMP_DTYPES
from hookprune.errors import suggest

DEFAULT_ARCH = "lenet300_100"


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """Distiller's ``compress_classifier.py`` options, with the same names and meanings."""
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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
    add_export_args(p)
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
