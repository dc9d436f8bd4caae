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
run folder. With ``--fsdp`` the model is sharded with FSDP2 instead: each rank holds its rows of every weight and
mask, and checkpoints are gathered whole on rank 0. ``--amp`` trains in mixed precision (bfloat16, or float16
with a gradient scaler), ``--compile`` with ``torch.compile``.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import astuple
from pathlib import Path
from typing import Any

import torch
from torch import nn

import hookprune
from hookprune import distributed, sensitivity
from hookprune import knowledge_distillation as kd
from hookprune.apputils.activation_stats import ActivationStats
from hookprune.apputils.arguments import (
    DEFAULT_ARCH,
    build_parser,
    check_app_options,
    check_training_stack,
    check_values,
)
from hookprune.apputils.checkpoint import load_weights, model_state, read_checkpoint, resume_run, save_checkpoint
from hookprune.apputils.data_loaders import (
    classes_of,
    infer_dataset,
    input_adapter,
    load_data,
    sample_shape,
)
from hookprune.apputils.deployment import check_export_args, export_run_model, int8_run_model
from hookprune.apputils.device import choose_device, shard_model, wrap_model
from hookprune.apputils.errors import AppError
from hookprune.apputils.evaluation import Scores, evaluate
from hookprune.apputils.faults import fault_line
from hookprune.apputils.fsdp import load_whole_weights, resume_sharded_run, save_gathered_checkpoint
from hookprune.apputils.greedy import greedy_search
from hookprune.apputils.history import (
    best_key,
    epoch_entry,
    layer_records,
    plot_training,
    resumed_history,
    write_json,
)
from hookprune.apputils.model_summary import compute_summary, draw_graph, modules_table
from hookprune.apputils.models import AdaptedInput, build_model, check_arch
from hookprune.apputils.post_training import STATS_FILE, calibrate, describe, post_train_quantizer
from hookprune.apputils.pretrained import pretrained_weights
from hookprune.apputils.reports import best_scores, confusion_table, masks_table
from hookprune.apputils.rng import resolve_seed, rng_state, seed_run
from hookprune.apputils.run_folder import RunLog, clear_unfinished_writes, debug_messages, new_run_folder
from hookprune.apputils.thinnify import thinnify
from hookprune.apputils.training import MixedPrecision, Trainer
from hookprune.config.reader import read_schedule
from hookprune.quantization import PostTrainLinearQuantizer
from hookprune.sparsity import format_table, sparsity_report, total_sparsity

PROG = "compress_classifier.py"
SUMMARY = "summary.json"
TIMINGS = "timings"


# -- the run -----------------------------------------------------------------------------------


class Run:
    """One invocation of the application: its data, model, schedule, run folder and log."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = time.perf_counter()
        check_values(args)
        check_app_options(args)
        self.resumed = read_checkpoint(args.resume_from) if args.resume_from else None
        if args.resume_from and args.exp_load_weights_from:
            raise AppError("--resume-from and --exp-load-weights-from exclude each other: resume a run, or "
                           "start a new one from another run's weights")
        self.launch = distributed.launch_environment()
        check_training_stack(args, self.launch is not None)
        check_export_args(args)
        #: rank 0, or the only process: the one that prints and writes the run folder
        self.main = self.launch is None or self.launch.rank == 0
        self.log = RunLog(enabled=self.main)
        self.say = self.log.say
        self.group_started = False
        if self.launch is not None and args.kd_teacher:
            raise AppError("--kd-teacher: knowledge distillation is not supported under torchrun (the teacher and the "
                           "distillation loss would run outside DistributedDataParallel); distil in one process")
        self.device, self.gpu_ids = choose_device(args.cpu, args.gpus, self.launch)
        self.seed = resolve_seed(args.seed, self.resumed, args.deterministic)
        if self.launch is not None:
            self.backend = distributed.init_process_group(self.device, args.dist_timeout)
            self.group_started = True
            self.seed = distributed.broadcast_json(self.seed)
        saved_arch = self.resumed.get("arch") if self.resumed else None
        self.arch = check_arch(args.arch or saved_arch or DEFAULT_ARCH, "--arch")
        if saved_arch and saved_arch != self.arch:
            raise AppError(f"--resume-from {args.resume_from}: the checkpoint holds a '{saved_arch}', not "
                           f"'{self.arch}'; drop --arch or give -a {saved_arch}")
        if args.kd_teacher:
            check_arch(args.kd_teacher, "--kd-teacher")
        seed_run(self.seed, args.deterministic)
        self.dataset = infer_dataset(self.arch, args.data, args.dataset)
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
        if args.pretrained is not None:
            path = pretrained_weights(self.arch, args.pretrained)
            load_weights(self.model, path, self.arch)
            self.say(f"pretrained weights: {path}")
        if args.fsdp:
            shard_model(self.model, self.device)
        self.teacher_model: nn.Module | None = None
        self.run_dir: Path | None = None
        self.act_stats = ActivationStats(self.model, args.act_stats)
        # --quantize-eval's quantizer: --qe-convert-pytorch and --export-onnx deploy it in place of the schedule's
        self.qe_quantizer: PostTrainLinearQuantizer | None = None

    # -- output ---------------------------------------------------------------------------

    def open_run_dir(self) -> None:
        """Create ``OUT_DIR/NAME___TIMESTAMP`` and the log in it (rank 0 alone under torchrun)."""
        if not self.main:
            return
        name = self.args.name or self.arch
        self.run_dir = run_dir = new_run_folder(self.args.out_dir, name)
        self.log.open(run_dir / f"{name}.log")
        self.say(f"run folder {run_dir}")
        sampler = self.train_loader.sampler
        self.say(f"{self.arch} on {self.dataset} ({len(getattr(sampler, 'indices', sampler))} training samples of "
                 f"shape {tuple(self.shape)}), {self.device}, seed {self.seed}")
        if self.launch is not None:
            kind = "fully sharded data parallel (FSDP2)" if self.args.fsdp else "distributed data parallel"
            self.say(f"{kind}: {self.launch.world_size} processes ({self.backend}), "
                     f"{len(sampler)} training samples each; rank 0 writes this folder")
        stack = [f"mixed precision ({self.args.amp})" if self.args.amp else "",
                 f"torch.compile ({self.args.compile})" if self.args.compile is not None else ""]
        if any(stack):
            self.say("training with " + " and ".join(part for part in stack if part))

    def close(self) -> None:
        self.log.close()
        if self.group_started:
            gc.collect()  # DistributedDataParallel's reducer, often held in a reference cycle, goes first
            torch.distributed.destroy_process_group()
            self.group_started = False

    # -- pieces ---------------------------------------------------------------------------

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel under torchrun (unless sharded by --fsdp), in DataParallel on several
        --gpus, else as it is."""
        if self.args.fsdp:
            return model
        return wrap_model(model, self.device, self.gpu_ids, launched=self.launch is not None)

    @property
    def example_input(self) -> torch.Tensor:
        """One zero sample of the data set's shape, on the model's device: what tracing and MAC counting run."""
        return torch.zeros((1, *self.shape), device=self.device)

    def new_optimizer(self, model: nn.Module, lr: float | None = None) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=self.args.lr if lr is None else lr, momentum=self.args.momentum,
                               weight_decay=self.args.weight_decay)

    def load_weights(self, path: str) -> None:
        """The weights of a checkpoint (hookprune's or Distiller's), after the shape changes thinning made."""
        resumed = self.resumed if path == self.args.resume_from else None
        if self.args.fsdp:
            checkpoint = resumed if resumed is not None else read_checkpoint(path)
            load_whole_weights(self.model, model_state(checkpoint, path), f"checkpoint '{path}'", self.arch)
            return
        load_weights(self.model, path, self.arch, resumed)

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
        has_distiller = kd.distills(sched)
        if self.launch is not None:
            if has_distiller:
                raise AppError(f"--compress {args.compress}: the schedule distils knowledge, which is not supported "
                               "under torchrun; distil in one process")
            if not args.fsdp:
                distributed.synchronize_masks(sched)
        if teacher is not None and not has_distiller:
            weights = kd.DistillationLossWeights(args.kd_distill_wt, args.kd_student_wt, args.kd_teacher_wt)
            policy = kd.KnowledgeDistillationPolicy(self.model, teacher, args.kd_temp, weights)
            sched.add_policy(policy, starting_epoch=args.kd_start_epoch, ending_epoch=max(args.epochs, 1),
                             frequency=1, name="knowledge distillation (--kd-teacher)")
            self.say(f"distilling from {args.kd_teacher} from epoch {args.kd_start_epoch}: T={args.kd_temp}, "
                     f"weights distill {args.kd_distill_wt}, student {args.kd_student_wt}")
        span = sched.epoch_span()
        last = None if span is None else span[1]
        if last is not None and last >= args.epochs and not (args.summary or args.evaluate or args.sense):
            self.say(f"note: the schedule acts until epoch {last}, training stops after epoch {args.epochs - 1}")
        return sched

    def schedule_record(self) -> dict[str, Any] | None:
        if not self.args.compress:
            return None
        return {"path": self.args.compress, "text": Path(self.args.compress).read_text(encoding="utf-8")}

    def summary(self, history: list[dict[str, Any]], best: dict[str, Any] | None, test: Scores | None,
                timings: dict[str, Any], rows: list[Any]) -> dict[str, Any]:
        """``summary.json``; ``rows`` is the model's sparsity report (computed on every rank: under --fsdp it sums
        over the shards)."""
        args = self.args
        return {
            "arch": self.arch, "dataset": self.dataset, "complete": test is not None,
            "top1": test.top1 if test else None, "top5": test.top5 if test else None,
            "loss": test.loss if test else None, "sparsity": 100 * total_sparsity(rows),
            "layers": layer_records(rows), "epochs": history, "best_epoch": best["epoch"] if best else None,
            "schedule": self.schedule_record(), "seed": self.seed,
            "hyperparameters": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                                "momentum": args.momentum, "weight_decay": args.weight_decay,
                                "validation_split": args.validation_split, "deterministic": args.deterministic,
                                "amp": args.amp, "compile": args.compile, "fsdp": args.fsdp},
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
        if args.thinnify or args.greedy:
            return self.thin(sched)
        if args.qe_calibration is not None:
            if self.launch is not None:
                raise AppError("--qe-calibration collects statistics over one process's data; run it in one process")
            stats = calibrate(self.model, self.train_loader, args.qe_calibration, self.device, self.stats_path)
            self.say(f"activation statistics of {len(stats)} modules: {self.stats_path}")
            if not args.quantize_eval:
                return 0
        if args.quantize_eval:
            quantizer = post_train_quantizer(self.model, args, self.stats_path or args.qe_stats_file)
            self.say(describe(quantizer))
            quantizer.prepare_model()
            self.qe_quantizer = quantizer
        net = self.wrap(self.model)
        if args.compile is not None:
            net = torch.compile(net, backend=args.compile)
        if args.sense:
            return self.sense(net)
        if args.evaluate:
            status = self.evaluate_only(net)
        else:
            status = self.train(net, optimizer, sched, teacher, start_epoch, history, best)
        return self.deploy(sched) if status == 0 else status

    def deploy(self, sched: hookprune.CompressionScheduler) -> int:
        """--qe-convert-pytorch and --export-onnx on the model the run ends with (rank 0 alone)."""
        args = self.args
        if not self.main:
            return 0
        if args.qe_convert_pytorch:
            int8_run_model(self.model, sched, self.train_loader, self.test_loader, self.device, self.say,
                           quantizer=self.qe_quantizer)
        if args.export_onnx is not None:
            assert self.run_dir is not None
            example = next(iter(self.test_loader))[0].to(self.device)
            export_run_model(self.model, sched, self.run_dir / args.export_onnx, example, self.train_loader, self.say,
                             quantizer=self.qe_quantizer)
        return 0

    @property
    def stats_path(self) -> Path | None:
        """Where --qe-calibration saves the activation statistics (in the run folder)."""
        if self.args.qe_calibration is None or self.run_dir is None:
            return None
        return self.run_dir / STATS_FILE

    def show_summary(self) -> int:
        path = self.args.resume_from or self.args.exp_load_weights_from
        if path:
            self.load_weights(path)
        if not self.main:
            return 0
        for summary in self.args.summary:
            if summary == "sparsity":
                print(format_table(sparsity_report(self.model)))
            elif summary == "compute":
                dense = build_model(self.arch, self.num_classes, self.shape, self.device)
                print(compute_summary(dense, self.model, self.example_input))
            elif summary == "model":
                print(self.model)
            elif summary == "modules":
                print(modules_table(self.model))
            else:
                if self.run_dir is None:
                    self.open_run_dir()
                assert self.run_dir is not None
                print(f"model graph: {draw_graph(self.model, self.run_dir / f'{self.arch}.png')}")
        return 0

    def thin(self, sched: hookprune.CompressionScheduler) -> int:
        """--thinnify and --greedy: shrink the loaded model, save it in the run folder and test it."""
        args = self.args
        option = "--thinnify" if args.thinnify else "--greedy"
        if self.launch is not None:
            raise AppError(f"{option} changes the model's shapes; run it in one process, not under torchrun")
        before = sum(p.numel() for p in self.model.parameters())
        if args.thinnify:
            applied = thinnify(self.model, self.example_input, sched.masks)
            after = sum(p.numel() for p in self.model.parameters())
            self.say(f"thinned: {before:,} -> {after:,} parameters ({applied} thinning recipes)")
            if self.run_dir is not None:
                path = save_checkpoint(0, self.arch, self.model, scheduler=sched,
                                       name=f"{args.name or self.arch}_thinned", dir=self.run_dir)
                self.say(f"thinned model: {path}")
            self.say("note: the biases and BatchNorm entries of the removed filters went with them; fine-tune the "
                     "thinned model if its accuracy fell")
        else:
            steps = greedy_search(self.model, self.example_input, args, self.arch, self.train_loader,
                                  self.val_loader, self.device, self.run_dir, self.say)
            if not steps or steps[-1].density > args.greedy_target_density:
                self.say("greedy: no convolution can lose another filter; stopped above the target density")
        self.test(self.model)
        self.save_act_stats()
        return 0

    def test(self, net: nn.Module, masked: list[str] | None = None) -> tuple[Scores, list[Any]]:
        """Evaluate on the test split, print the sparsity table (with the ``masked`` 1-D parameters), the scores
        and with --confusion the matrix; returns the scores and the sparsity table's rows."""
        confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long) if self.args.confusion else None
        with self.act_stats.phase("test"):
            scores = evaluate(net, self.test_loader, self.device, self.reduce, confusion)
        rows = self.report(scores, masked)
        if confusion is not None:
            self.say(confusion_table(confusion))
        return scores, rows

    def save_act_stats(self) -> None:
        if self.run_dir is not None and self.args.act_stats:
            for name in self.act_stats.save(self.run_dir):
                self.say(f"activation statistics: {self.run_dir / name}")

    def resume(self, sched: hookprune.CompressionScheduler, optimizer: torch.optim.Optimizer,
               ) -> tuple[int, list[dict[str, Any]], dict[str, Any] | None]:
        """Load the checkpoint of --resume-from into the model, optimizer and schedule; the next epoch."""
        args, checkpoint = self.args, self.resumed
        assert checkpoint is not None
        cleared = clear_unfinished_writes(Path(args.resume_from).parent) if self.main else None
        if cleared:
            self.say(cleared)
        resume = resume_sharded_run if args.fsdp else resume_run
        if args.reset_optimizer:
            resume(checkpoint, args.resume_from, self.model, sched, self.arch)
            self.say(f"resumed the weights of {args.resume_from}; new optimizer, from epoch 0")
            return 0, [], None
        resume(checkpoint, args.resume_from, self.model, sched, self.arch, optimizer, self.device)
        epoch = int(checkpoint.get("epoch", -1)) + 1
        self.say(f"resumed {args.resume_from} at epoch {epoch}")
        history = resumed_history(checkpoint, args.resume_from)
        best = max(history, key=best_key) if history else None
        return epoch, history, best

    def evaluate_only(self, net: nn.Module) -> int:
        tic = time.perf_counter()
        scores, rows = self.test(net)
        self.save_act_stats()
        if self.run_dir is not None:
            write_json(self.summary([], None, scores, {"test_s": time.perf_counter() - tic,
                                                       "total_s": time.perf_counter() - self.started}, rows),
                       self.run_dir / SUMMARY)
        return 0

    @property
    def reduce(self) -> bool:
        """Whether evaluation sums its counts over the ranks (each rank reads its shard of a split)."""
        return self.launch is not None

    def sense(self, net: nn.Module) -> int:
        args = self.args
        start, stop, step = args.sense_range
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

    def report(self, scores: Scores, masked: list[str] | None = None) -> list[Any]:
        """Print the sparsity table (the weights, and the ``masked`` parameters of fewer dimensions) and the test
        scores; returns the table's rows."""
        rows = sparsity_report(self.model, masked=masked or ())
        self.say()
        self.say(format_table(rows))
        self.say()
        self.say(f"Test top-1 {scores.top1:.2f}%  top-5 {scores.top5:.2f}%  loss {scores.loss:.4f}")
        return rows

    def train(self, net: nn.Module, optimizer: torch.optim.Optimizer, sched: hookprune.CompressionScheduler,
              teacher: nn.Module | None, start_epoch: int, history: list[dict[str, Any]],
              best: dict[str, Any] | None) -> int:
        args = self.args
        precision = MixedPrecision.of(args.amp, self.device) if args.amp else None
        trainer = Trainer(net, optimizer, sched, self.train_loader, self.device, args.print_freq, self.say,
                          reduce=self.reduce, progress=self.main, precision=precision)
        epoch_times: list[float] = []
        for epoch in range(start_epoch, args.epochs):
            tic = time.perf_counter()
            with self.act_stats.phase("train"):
                loss = trainer.epoch(epoch, args.epochs)
            with self.act_stats.phase("valid"):
                scores = evaluate(net, self.val_loader, self.device, self.reduce)
            lr = optimizer.param_groups[0]["lr"]
            sched.fire("on_epoch_end", epoch=epoch, metrics={"min": scores.loss, "max": scores.top1})
            rows = sparsity_report(self.model, masked=list(sched.masks))
            entry = epoch_entry(epoch, loss, scores, rows, lr)
            history.append(entry)
            is_best = best is None or best_key(entry) >= best_key(best)
            if is_best:
                best = entry
            if self.run_dir is not None or args.fsdp:
                extras: dict[str, Any] = {"history": history, "seed": self.seed, "dataset": self.dataset,
                                          "rng": rng_state(self.device), "schedule": self.schedule_record()}
                if self.teacher_model is not None:
                    extras["kd_teacher"] = self.teacher_model.state_dict()
                save = save_gathered_checkpoint if args.fsdp else save_checkpoint
                save(epoch, self.arch, self.model, optimizer, sched, extras, is_best=is_best,
                     name=args.name or self.arch, dir=self.run_dir)
            epoch_times.append(time.perf_counter() - tic)
            parts = ", ".join(f"{name} {value:.4f}" for name, value in
                              {"objective": loss.objective, **loss.components}.items())
            self.say(f"epoch {epoch + 1}/{args.epochs}  loss {loss.total:.4f} ({parts})  val top-1 {scores.top1:.2f}%"
                     f"  top-5 {scores.top5:.2f}%  loss {scores.loss:.4f}  sparsity {entry['sparsity']:.2f}%  "
                     f"lr {lr:.5g}  {epoch_times[-1]:.1f} s")
            for line in best_scores(history, args.num_best_scores):
                self.say(line)
            if args.masks_sparsity:
                self.say(masks_table(sched.masks))
            if self.run_dir is not None:
                write_json(self.summary(history, best, None, {"epoch_s": epoch_times}, rows), self.run_dir / SUMMARY)
        if self.launch is not None:
            count = distributed.verify_masks(sched)
            if args.fsdp:
                self.say(f"masks sharded over {self.launch.world_size} ranks, each holding its rows of the same "
                         f"{count} masks")
            else:
                self.say(f"masks identical on all {self.launch.world_size} ranks ({count} masks compared)")
        tic = time.perf_counter()
        test, rows = self.test(net, list(sched.masks))
        self.save_act_stats()
        if best is not None:
            self.say(f"best epoch {best['epoch'] + 1}: val top-1 {best['val_top1']:.2f}%, {best['nonzeros']} non-zero "
                     f"weights ({best['sparsity']:.2f}% sparsity)")
        timings = {"epoch_s": epoch_times, "test_s": time.perf_counter() - tic,
                   "total_s": time.perf_counter() - self.started}
        if self.run_dir is None:
            return 0
        write_json(self.summary(history, best, test, timings, rows), self.run_dir / SUMMARY)
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
    parser = build_parser(PROG, __doc__.splitlines()[0])
    args = parser.parse_args(argv)
    run = None
    try:
        with debug_messages(args.verbose):
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
    except (OSError, RuntimeError) as exc:  # a full disk, a refused file, a rank that stopped answering
        line = fault_line(exc)
        if line is None:
            raise
        if line:
            print(f"{PROG}: error: {rank_prefix()}{' '.join(line.split())}", file=sys.stderr)
        return 2
    finally:
        if run is not None:
            run.close()
        elif distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
