#!/usr/bin/env python3
"""Train and compress an image classifier with a Distiller schedule, from Distiller's command line.

    python examples/classifier_compression/compress_classifier.py -a lenet300_100 --epochs 20 \\
        --compress examples/schedules/lenet300_100.agp.yaml

Without a data folder the data is scikit-learn's digits (embedded: nothing to download); a folder holds
MNIST or CIFAR-10 in torchvision's on-disk format, or any ImageFolder tree (``train/`` and ``val/``).
Each run writes to ``OUT_DIR/NAME___TIMESTAMP/``: the last and the best checkpoint, ``summary.json``,
``training.png``, a log, and with ``--sense`` the sensitivity analysis (``sensitivity.csv``/``.png``).

Under ``torchrun --nproc_per_node=N compress_classifier.py ...`` the model trains with DistributedDataParallel
(gloo on the CPU, nccl with one GPU per process): each rank trains on its shard of the data, masks are rank 0's
on every rank, validation and test counts are summed over the ranks, and rank 0 alone prints and writes the
run folder.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import astuple, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import hookprune
from hookprune import distributed, models, sensitivity
from hookprune import knowledge_distillation as kd
from hookprune._engine.params import normalize_name
from hookprune.apputils.checkpoint import (
    CheckpointError,
    atomic_write,
    model_state,
    read_checkpoint,
    save_checkpoint,
)
from hookprune.apputils.data_loaders import DATASETS, classes_of, input_adapter, load_data, sample_shape, set_epoch
from hookprune.config.reader import read_schedule
from hookprune.errors import suggest
from hookprune.sparsity import format_table, sparsity_report, total_sparsity

PROG = "compress_classifier.py"
DEFAULT_ARCH = "lenet300_100"
SUMMARY = "summary.json"
TIMINGS = "timings"


class AppError(ValueError):
    """A command line the application cannot run; ``str(err)`` is one line."""


def build_parser() -> argparse.ArgumentParser:
    """Distiller's ``compress_classifier.py`` options, with the same names and meanings."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
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
    return p


# -- measuring ---------------------------------------------------------------------------------


@dataclass
class Scores:
    """Top-1 and top-5 accuracy (percent) and mean loss over a data split."""

    top1: float
    top5: float
    loss: float


def evaluate(model: nn.Module, loader: torch.utils.data.DataLoader, device: torch.device,
             reduce: bool = False) -> Scores:
    """Accuracy and cross-entropy of ``model`` over ``loader``, in eval mode and without gradients.

    With ``reduce`` (distributed training: ``loader`` reads this rank's shard), the counts and sums are added
    over all ranks, so every rank gets the scores of the whole split. The bare model runs, with rank 0's buffers:
    DistributedDataParallel's forward would broadcast buffers, a collective that shards of unequal length cannot
    match call for call.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    if reduce:
        distributed.broadcast_buffers(model)
    model.eval()
    count, loss_sum, hits1, hits5 = 0, 0.0, 0, 0
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            out = model(x)
            loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
            top = out.topk(min(5, out.shape[1]), dim=1).indices
            hits1 += int((top[:, 0] == y).sum())
            hits5 += int((top == y[:, None]).any(dim=1).sum())
            count += len(y)
    if reduce:
        sums = distributed.all_sum([count, loss_sum, hits1, hits5])
        count, loss_sum, hits1, hits5 = int(sums[0]), sums[1], int(sums[2]), int(sums[3])
    if not count:
        raise AppError("the evaluation split is empty: lower --vs or raise --effective-*-size")
    return Scores(100 * hits1 / count, 100 * hits5 / count, loss_sum / count)




# -- training ----------------------------------------------------------------------------------


@dataclass
class EpochLoss:
    """Mean training losses of one epoch: the total minimized, the data loss, and each added term by name."""

    total: float
    objective: float
    components: dict[str, float]


class AdaptedInput(nn.Module):
    """Runs ``model`` on batches shaped for another architecture, reshaped by ``adapt`` (a teacher that takes
    images beside a student that takes flattened pixels, say)."""

    def __init__(self, model: nn.Module, adapt: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.adapt = adapt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.adapt(x))


class Trainer:
    """Trains one model under one scheduler, firing hookprune's events around every step."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, sched: hookprune.CompressionScheduler,
                 loader: torch.utils.data.DataLoader, device: torch.device, print_freq: int,
                 say: Callable[[str], None], label: str = "epoch", reduce: bool = False, progress: bool = True,
                 ) -> None:
        self.model, self.optimizer, self.sched = model, optimizer, sched
        self.loader, self.device, self.print_freq, self.say, self.label = loader, device, print_freq, say, label
        #: distributed training: the epoch's mean losses are over every rank's shard
        self.reduce = reduce
        self.progress = progress
        #: a distiller runs the student itself (and the teacher beside it) in its epochs
        self.distilling = any(isinstance(p, kd.KnowledgeDistillationPolicy) for p in sched.sched_metadata)

    def epoch(self, epoch: int, epochs: int) -> EpochLoss:
        """One pass over the training split, as epoch ``epoch`` of the schedule."""
        model, sched, optimizer = self.model, self.sched, self.optimizer
        set_epoch(self.loader, epoch)
        sched.fire("on_epoch_begin", epoch=epoch)
        model.train()
        steps = len(self.loader)
        sums: dict[str, torch.Tensor] = {}
        hits = seen = 0
        bar = tqdm(total=steps, desc=f"{self.label} {epoch + 1}/{epochs}", unit="batch", leave=False,
                   disable=None if self.progress else True, dynamic_ncols=True, file=sys.stderr)
        for i, (x, y) in enumerate(self.loader):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            step = {"epoch": epoch, "minibatch_id": i, "minibatches_per_epoch": steps}
            sched.fire("on_minibatch_begin", **step)
            output = kd.forward(sched, x) if self.distilling else model(x)
            objective = F.cross_entropy(output, y)
            total = sched.fire("before_backward", **step, loss=objective)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            sched.fire("before_optimizer_step", **step)
            optimizer.step()
            sched.fire("on_minibatch_end", **step)
            terms = {"total": total, "objective": objective, **sched.loss_components}
            for name, value in terms.items():
                sums[name] = sums.get(name, 0) + value.detach()
            hits += int((output.detach().argmax(1) == y).sum())
            seen += len(y)
            bar.update()
            if (i + 1) % self.print_freq == 0 or i + 1 == steps:
                progress = (f"loss {float(sums['total']) / (i + 1):.4f}  top-1 {100 * hits / seen:.2f}%  "
                            f"lr {optimizer.param_groups[0]['lr']:.5g}")
                if bar.disable and i + 1 < steps:
                    self.say(f"{self.label} {epoch + 1}/{epochs} [{i + 1}/{steps}]  {progress}")
                else:
                    bar.set_postfix_str(progress, refresh=False)
        bar.close()
        means = {name: float(value) / steps for name, value in sums.items()}
        if self.reduce:
            ranks = distributed.world_size()
            means = dict(zip(means, (v / ranks for v in distributed.all_sum(list(means.values()))), strict=True))
        total_mean, objective_mean = means.pop("total"), means.pop("objective")
        return EpochLoss(total_mean, objective_mean, means)


# -- the run -----------------------------------------------------------------------------------


def resolve_seed(args: argparse.Namespace, resumed: dict[str, Any] | None) -> int:
    """The seed given, else the resumed run's, else 0 with --deterministic, else a fresh one."""
    if args.seed is not None:
        return args.seed
    if resumed is not None and isinstance(resumed.get("extras", {}).get("seed"), int):
        return resumed["extras"]["seed"]
    return 0 if args.deterministic else int.from_bytes(os.urandom(4), "little") >> 1


def choose_device(args: argparse.Namespace, launch: distributed.LaunchEnvironment | None = None,
                  ) -> tuple[torch.device, list[int]]:
    """The device to train on and, for several GPUs, their ids (for DataParallel).

    Under torchrun (``launch``) each process takes one GPU: the one of its local rank, or the local rank's entry
    of ``--gpus``; ``--cpu`` or a machine without GPUs trains every process on the CPU.
    """
    if args.cpu:
        return torch.device("cpu"), []
    if args.gpus is not None:
        try:
            ids = [int(g) for g in args.gpus.split(",") if g.strip()]
        except ValueError:
            raise AppError(f"--gpus takes comma-separated GPU ids such as 0,1, not '{args.gpus}'") from None
        available = torch.cuda.device_count()
        bad = [g for g in ids if not 0 <= g < available]
        if not ids or bad:
            raise AppError(f"--gpus {args.gpus}: this machine has {available} GPU(s)"
                           + ("; use --cpu" if not available else f" (ids 0..{available - 1})"))
        if launch is None:
            return torch.device("cuda", ids[0]), ids
        if len(ids) < launch.local_world_size:
            raise AppError(f"--gpus {args.gpus}: torchrun starts {launch.local_world_size} processes on this machine, "
                           "each needs its own GPU id")
        return torch.device("cuda", ids[launch.local_rank]), []
    if not torch.cuda.is_available():
        return torch.device("cpu"), []
    if launch is None:
        return torch.device("cuda", 0), []
    if launch.local_rank >= torch.cuda.device_count():
        raise AppError(f"torchrun starts {launch.local_world_size} processes on this machine, which has "
                       f"{torch.cuda.device_count()} GPU(s): one GPU per process, or --cpu")
    return torch.device("cuda", launch.local_rank), []


def infer_dataset(args: argparse.Namespace, arch: str) -> str:
    """Distiller's rule: the digits data without a folder; with one, by the architecture's name."""
    if args.dataset:
        return args.dataset
    if args.data is None:
        return "digits"
    if "cifar" in arch:
        return "cifar10"
    if "mnist" in arch or arch.startswith("lenet"):
        return "mnist"
    return "imagenet"


def build_model(arch: str, num_classes: int, shape: Sequence[int], device: torch.device) -> nn.Module:
    """``arch`` from the zoo, its inputs and outputs fitted to the data set."""
    extra = {"input_features": math.prod(shape)} if arch == "lenet300_100" else {}
    try:
        return models.create_model(arch, num_classes=num_classes, **extra).to(device)
    except TypeError as exc:
        raise AppError(f"cannot build '{arch}' for {num_classes} classes: {exc}") from None


def check_arch(arch: str, option: str) -> str:
    """``arch`` when the zoo knows it; otherwise an error naming the nearest names."""
    names = models.architectures()
    if arch not in names:
        raise AppError(f"{option} {arch}: unknown architecture{suggest(arch, names)}; "
                       "the zoo's and torchvision's classifiers are accepted")
    return arch


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every random generator a later epoch draws from (the data order is derived from the seed and epoch)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    """Put back what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def best_key(entry: dict[str, Any]) -> tuple[int, float, int]:
    """Distiller's choice of the best epoch: the fewest non-zero weights (so a thinned model beats the masked
    one it came from), then the most accurate, then the latest."""
    return (-entry["nonzeros"], entry["val_top1"], entry["epoch"])


def write_json(data: dict[str, Any], path: Path) -> None:
    atomic_write((json.dumps(data, indent=2) + "\n").encode(), path)


def plot_training(history: list[dict[str, Any]], path: Path) -> None:
    """Validation top-1 and total weight sparsity per epoch, one panel each, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(7, 6), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(epochs, [h["val_top1"] for h in history], marker="o", label="validation top-1")
    top.set_ylabel("top-1 (%)")
    top.grid(alpha=0.3)
    top.legend(loc="lower right")
    bottom.plot(epochs, [h["sparsity"] for h in history], marker="o", color="tab:red")
    bottom.set_ylabel("weight sparsity (%)")
    bottom.set_xlabel("epoch")
    bottom.set_ylim(0, 100)
    bottom.grid(alpha=0.3)
    fig.suptitle("Accuracy and sparsity per epoch")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write(buffer.getvalue(), path)


class Run:
    """One invocation of the application: its data, model, schedule, run folder and log."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = time.perf_counter()
        self.resumed = read_checkpoint(args.resume_from) if args.resume_from else None
        if args.resume_from and args.exp_load_weights_from:
            raise AppError("--resume-from and --exp-load-weights-from exclude each other: resume a run, or "
                           "start a new one from another run's weights")
        if args.epochs < 0 or args.batch_size < 1 or args.print_freq < 1:
            raise AppError("--epochs must be >= 0, --batch-size and --print-freq >= 1")
        self.launch = distributed.launch_environment()
        #: rank 0, or the only process: the one that prints and writes the run folder
        self.main = self.launch is None or self.launch.rank == 0
        self.group_started = False
        if self.launch is not None and args.kd_teacher:
            raise AppError("--kd-teacher: knowledge distillation is not supported under torchrun (the teacher and the "
                           "distillation loss would run outside DistributedDataParallel); distil in one process")
        self.device, self.gpu_ids = choose_device(args, self.launch)
        self.seed = resolve_seed(args, self.resumed)
        if self.launch is not None:
            self.backend = distributed.init_process_group(self.device)
            self.group_started = True
            self.seed = distributed.broadcast_json(self.seed)
        saved_arch = self.resumed.get("arch") if self.resumed else None
        self.arch = check_arch(args.arch or saved_arch or DEFAULT_ARCH, "--arch")
        if saved_arch and saved_arch != self.arch:
            raise AppError(f"--resume-from {args.resume_from}: the checkpoint holds a '{saved_arch}', not "
                           f"'{self.arch}'; drop --arch or give -a {saved_arch}")
        if args.kd_teacher:
            check_arch(args.kd_teacher, "--kd-teacher")
        if args.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        torch.manual_seed(self.seed)
        random.seed(self.seed)
        self.dataset = infer_dataset(args, self.arch)
        self.train_loader, val_loader, self.test_loader, self.shape = load_data(
            self.dataset, self.arch, args.data, batch_size=args.batch_size, workers=args.workers,
            validation_split=args.validation_split, deterministic=args.deterministic, seed=self.seed,
            effective_train_size=args.effective_train_size, effective_valid_size=args.effective_valid_size,
            effective_test_size=args.effective_test_size, num_replicas=distributed.world_size(),
            rank=distributed.rank())
        #: Distiller validates on the test split when no validation split is held out
        self.val_loader = val_loader if val_loader is not None else self.test_loader
        self.num_classes = classes_of(self.dataset, args.data)
        self.model = build_model(self.arch, self.num_classes, self.shape, self.device)
        self.teacher_model: nn.Module | None = None
        self.run_dir: Path | None = None
        self.log: Any = None

    # -- output ---------------------------------------------------------------------------

    def open_run_dir(self) -> None:
        """Create ``OUT_DIR/NAME___TIMESTAMP`` and the log in it (rank 0 alone under torchrun)."""
        if not self.main:
            return
        name = self.args.name or self.arch
        stamp = datetime.now().strftime("%Y.%m.%d-%H%M%S")
        base = Path(self.args.out_dir) / f"{name}___{stamp}"
        run_dir, n = base, 1
        while run_dir.exists():
            n += 1
            run_dir = base.with_name(f"{base.name}.{n}")
        run_dir.mkdir(parents=True)
        self.run_dir = run_dir
        self.log = open(run_dir / f"{name}.log", "w", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self.say(f"run folder {run_dir}")
        sampler = self.train_loader.sampler
        self.say(f"{self.arch} on {self.dataset} ({len(getattr(sampler, 'indices', sampler))} training samples of "
                 f"shape {tuple(self.shape)}), {self.device}, seed {self.seed}")
        if self.launch is not None:
            self.say(f"distributed data parallel: {self.launch.world_size} processes ({self.backend}), "
                     f"{len(sampler)} training samples each; rank 0 writes this folder")

    def say(self, line: str = "") -> None:
        """Print a line and keep it in the run's log (rank 0 alone under torchrun)."""
        if not self.main:
            return
        tqdm.write(line, file=sys.stdout)
        if self.log is not None:
            self.log.write(line + "\n")
            self.log.flush()

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None
        if self.group_started:
            gc.collect()  # DistributedDataParallel's reducer, often held in a reference cycle, goes first
            torch.distributed.destroy_process_group()
            self.group_started = False

    # -- pieces ---------------------------------------------------------------------------

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel under torchrun, in DataParallel on several --gpus, else as it is."""
        if self.launch is not None:
            return nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return nn.DataParallel(model, device_ids=self.gpu_ids) if len(self.gpu_ids) > 1 else model

    def new_optimizer(self, model: nn.Module, lr: float | None = None) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=self.args.lr if lr is None else lr, momentum=self.args.momentum,
                               weight_decay=self.args.weight_decay)

    def load_weights(self, path: str) -> None:
        """The weights of a checkpoint (hookprune's or Distiller's), after the shape changes thinning made."""
        checkpoint = self.resumed if path == self.args.resume_from and self.resumed else read_checkpoint(path)
        recipes = checkpoint.get("thinning_recipes") or checkpoint.get("compression_sched", {}).get("thinning_recipes")
        if recipes:
            from hookprune.thinning import apply_recipes

            apply_recipes(self.model, recipes)
        state = model_state(checkpoint, path)
        own = self.model.state_dict()
        if set(own).isdisjoint(state):
            state = {normalize_name(k): v for k, v in state.items()}
        try:
            self.model.load_state_dict(state)
        except RuntimeError as exc:
            first = " ".join(str(exc).split("\n\t")[1:2]) or str(exc).splitlines()[0]
            raise CheckpointError(f"checkpoint '{path}' does not fit '{self.arch}': {first.strip()}") from None

    def teacher(self) -> nn.Module | None:
        """The --kd-teacher model, ready to run on the student's batches: from the resumed checkpoint, from
        --kd-resume, or trained here first."""
        args = self.args
        if not args.kd_teacher:
            return None
        teacher = build_model(args.kd_teacher, self.num_classes,
                              sample_shape(self.dataset, args.kd_teacher), self.device)
        self.teacher_model = teacher
        adapt = input_adapter(self.dataset, self.arch, args.kd_teacher)
        runner = teacher if adapt is None else AdaptedInput(teacher, adapt)
        saved = (self.resumed or {}).get("extras", {}).get("kd_teacher")
        if saved is not None:
            teacher.load_state_dict(saved)
            self.say(f"teacher {args.kd_teacher}: weights from the resumed checkpoint")
        elif args.kd_resume:
            kd.load_teacher_checkpoint(teacher, args.kd_resume)
            self.say(f"teacher {args.kd_teacher}: weights from {args.kd_resume}")
        else:
            epochs = args.epochs if args.kd_teacher_epochs is None else args.kd_teacher_epochs
            self.say(f"training the teacher {args.kd_teacher} for {epochs} epochs")
            optimizer = self.new_optimizer(teacher, args.kd_teacher_lr)
            sched = hookprune.CompressionScheduler(teacher, optimizer=optimizer)
            trainer = Trainer(self.wrap(runner), optimizer, sched, self.train_loader, self.device,
                              args.print_freq, self.say, label="teacher epoch")
            for epoch in range(epochs):
                loss = trainer.epoch(epoch, epochs)
                scores = evaluate(runner, self.val_loader, self.device)
                self.say(f"teacher epoch {epoch + 1}/{epochs}  loss {loss.total:.4f}  "
                         f"val top-1 {scores.top1:.2f}%")
            assert self.run_dir is not None
            save_checkpoint(epochs - 1, args.kd_teacher, teacher, name="teacher", dir=self.run_dir)
        scores = evaluate(runner, self.test_loader, self.device)
        self.say(f"teacher {args.kd_teacher}: test top-1 {scores.top1:.2f}%  top-5 {scores.top5:.2f}%")
        return runner

    def scheduler(self, optimizer: torch.optim.Optimizer, teacher: nn.Module | None) -> hookprune.CompressionScheduler:
        """The schedule of --compress (or none), plus the --kd-* distillation when the schedule has none."""
        args = self.args
        if args.compress:
            data, _ = read_schedule(args.compress)
            distillers = data.get("distillers") or {}
            wants_teacher = any(isinstance(d, Mapping) and "teacher_arch" not in d for d in distillers.values())
            sched = hookprune.load(args.compress, self.model, optimizer, teacher=teacher if wants_teacher else None)
        else:
            sched = hookprune.CompressionScheduler(self.model, optimizer=optimizer)
        has_distiller = any(isinstance(p, kd.KnowledgeDistillationPolicy) for p in sched.sched_metadata)
        if self.launch is not None:
            if has_distiller:
                raise AppError(f"--compress {args.compress}: the schedule distils knowledge, which is not supported "
                               "under torchrun; distil in one process")
            distributed.synchronize_masks(sched)
        if teacher is not None and not has_distiller:
            weights = kd.DistillationLossWeights(args.kd_distill_wt, args.kd_student_wt, args.kd_teacher_wt)
            policy = kd.KnowledgeDistillationPolicy(self.model, teacher, args.kd_temp, weights)
            sched.add_policy(policy, starting_epoch=args.kd_start_epoch, ending_epoch=max(args.epochs, 1),
                             frequency=1, name="knowledge distillation (--kd-teacher)")
            self.say(f"distilling from {args.kd_teacher} from epoch {args.kd_start_epoch}: T={args.kd_temp}, "
                     f"weights distill {args.kd_distill_wt}, student {args.kd_student_wt}")
        last = max(sched.policies, default=None)
        if last is not None and last >= args.epochs and not (args.summary or args.evaluate or args.sense):
            self.say(f"note: the schedule acts until epoch {last}, training stops after epoch {args.epochs - 1}")
        return sched

    def schedule_record(self) -> dict[str, Any] | None:
        if not self.args.compress:
            return None
        return {"path": self.args.compress, "text": Path(self.args.compress).read_text(encoding="utf-8")}

    def summary(self, history: list[dict[str, Any]], best: dict[str, Any] | None, test: Scores | None,
                timings: dict[str, Any]) -> dict[str, Any]:
        rows = sparsity_report(self.model)
        layers = []
        for row in rows:
            entry = row.as_dict()
            for key in ("sparsity", "filter", "channel", "row", "column"):
                entry[key] = None if entry[key] is None else 100 * entry[key]
            layers.append(entry)
        args = self.args
        return {
            "arch": self.arch, "dataset": self.dataset, "complete": test is not None,
            "top1": test.top1 if test else None, "top5": test.top5 if test else None,
            "loss": test.loss if test else None, "sparsity": 100 * total_sparsity(rows),
            "layers": layers, "epochs": history, "best_epoch": best["epoch"] if best else None,
            "schedule": self.schedule_record(), "seed": self.seed,
            "hyperparameters": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                                "momentum": args.momentum, "weight_decay": args.weight_decay,
                                "validation_split": args.validation_split, "deterministic": args.deterministic},
            "distillation": ({"teacher": args.kd_teacher, "temperature": args.kd_temp,
                              "distill_weight": args.kd_distill_wt, "student_weight": args.kd_student_wt,
                              "start_epoch": args.kd_start_epoch} if args.kd_teacher else None),
            TIMINGS: timings,
        }

    # -- modes ----------------------------------------------------------------------------

    def run(self) -> int:
        args = self.args
        if args.summary:
            return self.show_summary()
        self.open_run_dir()
        teacher = self.teacher()
        optimizer = self.new_optimizer(self.model)
        sched = self.scheduler(optimizer, teacher)
        start_epoch, history, best = 0, [], None
        if self.resumed is not None:
            start_epoch, history, best = self.resume(sched, optimizer)
        elif args.exp_load_weights_from:
            self.load_weights(args.exp_load_weights_from)
            sched.mask_all_weights()
        net = self.wrap(self.model)
        if args.evaluate:
            return self.evaluate_only(net)
        if args.sense:
            return self.sense(net)
        return self.train(net, optimizer, sched, teacher, start_epoch, history, best)

    def show_summary(self) -> int:
        path = self.args.resume_from or self.args.exp_load_weights_from
        if path:
            self.load_weights(path)
        if self.main:
            print(format_table(sparsity_report(self.model)))
        return 0

    def resume(self, sched: hookprune.CompressionScheduler, optimizer: torch.optim.Optimizer,
               ) -> tuple[int, list[dict[str, Any]], dict[str, Any] | None]:
        """Load the checkpoint of --resume-from into the model, optimizer and schedule; the next epoch."""
        args, checkpoint = self.args, self.resumed
        assert checkpoint is not None
        where = f"checkpoint '{args.resume_from}'"
        state = checkpoint.get("compression_sched")
        if state is not None:
            try:
                sched.load_state_dict(state)
            except ValueError as exc:
                raise CheckpointError(f"{where} does not fit this run ({exc}); resume with the --compress schedule "
                                      "and --kd-* options it was trained with") from None
        try:
            self.model.load_state_dict(model_state(checkpoint, args.resume_from))
        except RuntimeError as exc:
            raise CheckpointError(f"{where} does not fit '{self.arch}': {str(exc).splitlines()[-1].strip()}") from None
        extras = checkpoint.get("extras", {})
        if args.reset_optimizer:
            self.say(f"resumed the weights of {args.resume_from}; new optimizer, from epoch 0")
            return 0, [], None
        if "optimizer_state_dict" in checkpoint:
            try:
                optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
            except ValueError as exc:
                raise CheckpointError(f"{where}: the optimizer state does not fit ({exc})") from None
        if "rng" in extras:
            restore_rng(extras["rng"], self.device)
        epoch = int(checkpoint.get("epoch", -1)) + 1
        self.say(f"resumed {args.resume_from} at epoch {epoch}")
        history = list(extras.get("history", []))
        best = max(history, key=best_key) if history else None
        return epoch, history, best

    def evaluate_only(self, net: nn.Module) -> int:
        tic = time.perf_counter()
        scores = evaluate(net, self.test_loader, self.device, self.reduce)
        self.report(scores)
        if self.run_dir is not None:
            write_json(self.summary([], None, scores, {"test_s": time.perf_counter() - tic,
                                                       "total_s": time.perf_counter() - self.started}),
                       self.run_dir / SUMMARY)
        return 0

    @property
    def reduce(self) -> bool:
        """Whether evaluation sums its counts over the ranks (each rank reads its shard of a split)."""
        return self.launch is not None

    def sense(self, net: nn.Module) -> int:
        args = self.args
        start, stop, step = args.sense_range
        if step <= 0 or not 0 <= start <= stop <= 1:
            raise AppError(f"--sense-range {start} {stop} {step}: need 0 <= START <= STOP <= 1 and STEP > 0")
        levels = [round(start + i * step, 10) for i in range(math.floor((stop - start) / step + 1e-9) + 1)]
        params = [name for name, p in self.model.named_parameters()
                  if (p.dim() == 4 if args.sense != "element" else p.dim() > 1)]
        if not params:
            raise AppError(f"--sense {args.sense}: '{self.arch}' has no "
                           + ("convolution weights" if args.sense != "element" else "weights"))
        self.say(f"sensitivity analysis ({args.sense}) of {len(params)} weights at {len(levels)} levels, "
                 "on the validation split")
        results = sensitivity.perform_sensitivity_analysis(
            self.model, params, levels, lambda _: astuple(evaluate(net, self.val_loader, self.device, self.reduce)),
            group=args.sense, progress=self.main)
        if self.run_dir is None:
            return 0
        sensitivity.sensitivities_to_csv(results, self.run_dir / "sensitivity.csv")
        sensitivity.sensitivities_to_png(results, self.run_dir / "sensitivity.png")
        width = max(len(p) for p in params)
        self.say(f"{'parameter':<{width}}  " + " ".join(f"{100 * s:>6.1f}" for s in levels))
        for name, row in results.items():
            self.say(f"{name:<{width}}  " + " ".join(f"{top1:>6.2f}" for top1, _, _ in row.values()))
        self.say(f"top-1 (%) by sparsity (%): {self.run_dir / 'sensitivity.csv'}, {self.run_dir / 'sensitivity.png'}")
        return 0

    def report(self, scores: Scores) -> None:
        self.say()
        self.say(format_table(sparsity_report(self.model)))
        self.say()
        self.say(f"Test top-1 {scores.top1:.2f}%  top-5 {scores.top5:.2f}%  loss {scores.loss:.4f}")

    def train(self, net: nn.Module, optimizer: torch.optim.Optimizer, sched: hookprune.CompressionScheduler,
              teacher: nn.Module | None, start_epoch: int, history: list[dict[str, Any]],
              best: dict[str, Any] | None) -> int:
        args = self.args
        trainer = Trainer(net, optimizer, sched, self.train_loader, self.device, args.print_freq, self.say,
                          reduce=self.reduce, progress=self.main)
        epoch_times: list[float] = []
        for epoch in range(start_epoch, args.epochs):
            tic = time.perf_counter()
            loss = trainer.epoch(epoch, args.epochs)
            scores = evaluate(net, self.val_loader, self.device, self.reduce)
            lr = optimizer.param_groups[0]["lr"]
            sched.fire("on_epoch_end", epoch=epoch, metrics={"min": scores.loss, "max": scores.top1})
            rows = sparsity_report(self.model)
            sparsity = 100 * total_sparsity(rows)
            entry = {"epoch": epoch, "train_loss": loss.total, "train_objective": loss.objective,
                     "loss_components": loss.components, "val_top1": scores.top1, "val_top5": scores.top5,
                     "val_loss": scores.loss, "sparsity": sparsity, "nonzeros": sum(r.nonzeros for r in rows), "lr": lr}
            history.append(entry)
            is_best = best is None or best_key(entry) >= best_key(best)
            if is_best:
                best = entry
            if self.run_dir is not None:
                extras: dict[str, Any] = {"history": history, "seed": self.seed, "dataset": self.dataset,
                                          "rng": rng_state(self.device), "schedule": self.schedule_record()}
                if self.teacher_model is not None:
                    extras["kd_teacher"] = self.teacher_model.state_dict()
                save_checkpoint(epoch, self.arch, self.model, optimizer, sched, extras, is_best=is_best,
                                name=args.name or self.arch, dir=self.run_dir)
            epoch_times.append(time.perf_counter() - tic)
            parts = ", ".join(f"{name} {value:.4f}" for name, value in
                              {"objective": loss.objective, **loss.components}.items())
            self.say(f"epoch {epoch + 1}/{args.epochs}  loss {loss.total:.4f} ({parts})  val top-1 {scores.top1:.2f}%"
                     f"  top-5 {scores.top5:.2f}%  loss {scores.loss:.4f}  sparsity {sparsity:.2f}%  lr {lr:.5g}  "
                     f"{epoch_times[-1]:.1f} s")
            if self.run_dir is not None:
                write_json(self.summary(history, best, None, {"epoch_s": epoch_times}), self.run_dir / SUMMARY)
        if self.launch is not None:
            count = distributed.verify_masks(sched)
            self.say(f"masks identical on all {self.launch.world_size} ranks ({count} masks compared)")
        tic = time.perf_counter()
        test = evaluate(net, self.test_loader, self.device, self.reduce)
        self.report(test)
        if best is not None:
            self.say(f"best epoch {best['epoch'] + 1}: val top-1 {best['val_top1']:.2f}%, {best['nonzeros']} non-zero "
                     f"weights ({best['sparsity']:.2f}% sparsity)")
        timings = {"epoch_s": epoch_times, "test_s": time.perf_counter() - tic,
                   "total_s": time.perf_counter() - self.started}
        if self.run_dir is None:
            return 0
        write_json(self.summary(history, best, test, timings), self.run_dir / SUMMARY)
        if history:
            plot_training(history, self.run_dir / "training.png")
        self.say(f"summary: {self.run_dir / SUMMARY}")
        return 0


def rank_prefix() -> str:
    """``rank N: `` for a process of a torchrun job other than rank 0, whose errors would otherwise go unattributed."""
    rank = os.environ.get("RANK", "0")
    return "" if rank in ("", "0") else f"rank {rank}: "


def main(argv: Sequence[str] | None = None) -> int:
    """Run the application; bad input is one line on stderr and exit status 2, never a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    run = None
    try:
        run = Run(args)
        return run.run()
    except ValueError as exc:  # ScheduleError, DataError, CheckpointError, ArgumentError, AppError
        print(f"{PROG}: error: {rank_prefix()}{' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        sys.stderr.close()
        return 1
    finally:
        if run is not None:
            run.close()
        elif distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
