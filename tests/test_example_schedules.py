"""The ready schedules of ``examples/schedules``: each header names its architecture and a command the example
application accepts, each schedule passes the check on that architecture, and each runs the epochs of its
command on tiny batches to exactly the levels, shapes and bit widths it promises."""

from __future__ import annotations

import argparse
import functools
import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hookprune
from hookprune import cli, models, testing
from hookprune import knowledge_distillation as kd
from hookprune.apputils.arguments import build_parser
from hookprune.apputils.data_loaders import input_adapter, sample_shape
from hookprune.apputils.models import AdaptedInput
from hookprune.config.builder import build
from hookprune.pruning import structures
from hookprune.thinning.extensions import StructureRemover

ROOT = Path(__file__).resolve().parents[1]
SCHEDULES_DIR = ROOT / "examples" / "schedules"
SCHEDULES = sorted(SCHEDULES_DIR.glob("*.yaml"))
APP_PREFIX = "python examples/classifier_compression/compress_classifier.py "
DATASET = "digits"
BATCH = 8


@functools.cache
def app_parser() -> argparse.ArgumentParser:
    """The example application's command line."""
    return build_parser("compress_classifier.py", "")


@dataclass(frozen=True)
class Header:
    """What a schedule's header comment promises: the architecture and the command that runs it."""

    arch: str
    argv: list[str]


def header(path: Path) -> Header:
    text = path.read_text(encoding="utf-8")
    arch = re.search(r"^# arch: (\S+)$", text, re.M)
    command = re.search(rf"^#\s+{re.escape(APP_PREFIX)}(.+)$", text, re.M)
    assert arch is not None, f"{path.name}: no '# arch: NAME' line"
    assert command is not None, f"{path.name}: no '{APP_PREFIX}...' command line"
    return Header(arch.group(1), shlex.split(command.group(1)))


def command_args(path: Path) -> Any:
    return app_parser().parse_args(header(path).argv)


@dataclass
class Setup:
    """One schedule built as the application builds it, on digits-shaped random batches."""

    path: Path
    args: Any
    model: nn.Module
    optimizer: torch.optim.Optimizer
    sched: hookprune.CompressionScheduler
    teacher: nn.Module | None
    data: list[tuple[torch.Tensor, torch.Tensor]]


def digits_model(arch: str) -> nn.Module:
    shape = sample_shape(DATASET, arch)
    extra = {"input_features": math.prod(shape)} if arch == "lenet300_100" else {}
    return models.create_model(arch, num_classes=10, **extra)


def setup(path: Path, batches: int = 2) -> Setup:
    args = command_args(path)
    torch.manual_seed(0)
    model = digits_model(args.arch)
    teacher = None
    if args.kd_teacher:
        # a teacher that takes another input shape runs on the student's batches, as in the application
        teacher = digits_model(args.kd_teacher)
        adapt = input_adapter(DATASET, args.arch, args.kd_teacher)
        if adapt is not None:
            teacher = AdaptedInput(teacher, adapt)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    sched = build(path, model, optimizer, teacher=teacher)
    gen = torch.Generator().manual_seed(0)
    shape = sample_shape(DATASET, args.arch)
    data = [(torch.rand(BATCH, *shape, generator=gen), torch.randint(0, 10, (BATCH,), generator=gen))
            for _ in range(batches)]
    return Setup(path, args, model, optimizer, sched, teacher, data)


@dataclass
class Trained:
    """What a run recorded: the losses, and the names of the added loss terms of each step, per epoch."""

    losses: list[torch.Tensor]
    terms: dict[int, list[set[str]]]


def train(s: Setup, spy: Any = None) -> Trained:
    """Every epoch of the header's command, through the distiller's forward when the schedule distils."""
    net = (lambda x: kd.forward(s.sched, x)) if kd.distills(s.sched) else s.model
    terms: dict[int, list[set[str]]] = {}

    def fire(event: str, **kwargs: Any) -> Any:
        result = s.sched.fire(event, **kwargs)
        if event == "before_backward":
            terms.setdefault(kwargs["epoch"], []).append(set(s.sched.loss_components))
        return result

    losses = testing.train(s.sched, net, s.optimizer, s.data, s.args.epochs, before_forward=spy, fire=fire)
    return Trained(losses, terms)


def by_name(name: str) -> Path:
    return SCHEDULES_DIR / name


def ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def test_the_examples_include_each_kind_of_schedule():
    assert {p.name for p in SCHEDULES} >= {
        "lenet300_100.agp.yaml", "simplenet_mnist.filters.yaml", "simplenet_mnist.group_lasso.yaml",
        "lenet300_100.l1.yaml", "lenet300_100.qat8.yaml", "lenet300_100.qat4.yaml", "lenet300_100.kd.yaml"}


@pytest.mark.parametrize("path", SCHEDULES, ids=ids(SCHEDULES))
def test_header_command_runs_this_schedule_on_the_named_architecture(path):
    head = header(path)
    args = command_args(path)
    assert args.arch == head.arch
    assert (ROOT / args.compress).resolve() == path.resolve()
    assert args.data is None and args.seed == 0
    assert re.search(r"^# Measured .*seeds 0, 1, 2", path.read_text(encoding="utf-8"), re.M)


@pytest.mark.parametrize("path", SCHEDULES, ids=ids(SCHEDULES))
def test_schedule_passes_the_check_on_its_architecture(path, capsys):
    s = setup(path)
    assert s.sched.instances
    teacher = [] if s.args.kd_teacher is None else ["--teacher", s.args.kd_teacher]
    assert cli.main(["check", str(path), "--arch", header(path).arch, *teacher]) == 0
    assert capsys.readouterr().out.startswith(f"{path}: ok (")


def final_levels(s: Setup) -> dict[str, tuple[int, int | None]]:
    """Parameter -> (what its pruner keeps at the end: elements, or filters along dim 0; that dim or None)."""
    targets: dict[str, tuple[int, int | None]] = {}
    for pruner in s.sched.instances.values():
        final = getattr(pruner, "final_sparsity", None)
        if final is None:
            continue
        params = dict(s.model.named_parameters())
        for name in pruner.params_names:
            shape = params[name].shape
            if getattr(pruner, "group_type", None) is None:
                targets[name] = (shape.numel() - int(final * shape.numel()), None)
            else:
                assert pruner.group_type == "Filters"
                count = structures.count_to_prune(shape[0], final, pruner.group_size, pruner.rounding_fn,
                                                  param_name=name)
                targets[name] = (shape[0] - count, 0)
    return targets


@pytest.mark.parametrize("path", SCHEDULES, ids=ids(SCHEDULES))
def test_schedule_runs_its_epochs_to_its_pruners_final_levels(path):
    s = setup(path)
    targets = final_levels(s)
    thins = any(isinstance(inst, StructureRemover) for inst in s.sched.instances.values())
    trained = train(s)
    assert len(trained.losses) == s.args.epochs * len(s.data)
    assert all(bool(torch.isfinite(loss)) for loss in trained.losses)
    params = dict(s.model.named_parameters())
    for name, (keep, dim) in targets.items():
        weight = params[name].detach()
        if dim is None:
            assert int((weight != 0).sum()) == keep, name
        else:
            assert int(weight.flatten(1).ne(0).any(dim=1).sum()) == keep, name
            if thins:
                assert weight.shape[0] == keep, name


def test_agp_example_prunes_fc1_fc2_to_90_and_fc3_to_80_percent():
    s = setup(by_name("lenet300_100.agp.yaml"))
    train(s)
    zeros = {n: int((p == 0).sum()) for n, p in s.model.named_parameters() if n.endswith("weight")}
    assert zeros == {"fc1.weight": 17280, "fc2.weight": 27000, "fc3.weight": 800}


def test_filter_example_thins_at_epoch_10_to_the_parameter_count_it_reports():
    s = setup(by_name("simplenet_mnist.filters.yaml"))
    shapes: dict[int, dict[str, tuple[int, ...]]] = {}

    def spy(epoch: int, minibatch_id: int) -> None:
        if minibatch_id == 0:
            shapes[epoch] = {n: tuple(p.shape) for n, p in s.model.named_parameters() if n.endswith("weight")}

    assert sum(p.numel() for p in s.model.parameters()) == 431_080
    train(s, spy)
    assert shapes[9] == {"conv1.weight": (20, 1, 5, 5), "conv2.weight": (50, 20, 5, 5), "fc1.weight": (500, 800),
                         "fc2.weight": (10, 500)}
    thinned = {"conv1.weight": (4, 1, 5, 5), "conv2.weight": (10, 4, 5, 5), "fc1.weight": (500, 160),
               "fc2.weight": (10, 500)}
    assert shapes[10] == shapes[19] == thinned
    assert sum(p.numel() for p in s.model.parameters()) == 86_624
    momentum = s.optimizer.state[s.model.conv2.weight]["momentum_buffer"]
    assert momentum.shape == s.model.conv2.weight.shape


def test_group_lasso_example_removes_the_filters_its_penalty_zeroed():
    s = setup(by_name("simplenet_mnist.group_lasso.yaml"))
    with torch.no_grad():
        s.model.conv2.weight[:10] *= 1e-4  # filters already below the threshold
    terms = train(s).terms
    assert s.model.conv1.weight.shape == (20, 1, 5, 5)
    assert s.model.conv2.weight.shape == (40, 20, 5, 5)
    assert s.model.fc1.weight.shape == (500, 640)
    assert [e for e, steps in terms.items() if steps == [{"GroupLassoRegularizer_loss"}] * 2] == list(range(12))
    assert all(terms[e] == [set(), set()] for e in range(12, 20))


def test_l1_example_keeps_the_zeros_of_its_last_regularized_step_through_fine_tuning():
    s = setup(by_name("lenet300_100.l1.yaml"))
    with torch.no_grad():
        s.model.fc2.weight[:, :50] *= 1e-4  # below the strength: zeroed by the thresholding
    zeros_after_window: list[torch.Tensor] = []

    def spy(epoch: int, minibatch_id: int) -> None:
        if (epoch, minibatch_id) == (12, 0):
            zeros_after_window.append(s.model.fc2.weight.detach() == 0)

    terms = train(s, spy).terms
    assert all(terms[e] == [{"L1Regularizer_loss"}] * 2 for e in range(12))
    assert all(terms[e] == [set(), set()] for e in range(12, 20))
    (zeros,) = zeros_after_window
    assert int(zeros.sum()) >= 1000
    assert torch.equal(s.model.fc2.weight.detach() == 0, zeros)


@pytest.mark.parametrize("path", [by_name("lenet300_100.qat8.yaml"), by_name("lenet300_100.qat4.yaml")],
                         ids=["qat8", "qat4"])
def test_qat_examples_evaluate_with_weights_of_their_bit_width(path):
    s = setup(path)
    train(s)
    (quantizer,) = s.sched.instances.values()
    bits = int(re.search(r"qat(\d+)", path.name).group(1))
    assert quantizer.default_qbits.wts == quantizer.default_qbits.acts == bits
    s.model.eval()
    quantized = quantizer.quantized_params()
    for layer in ("fc1", "fc2", "fc3"):
        weight = quantized[f"{layer}.weight"]
        assert max(len(torch.unique(row)) for row in weight) <= 2 ** bits
        assert not torch.equal(weight, getattr(s.model, layer).weight)
        x = torch.rand(3, weight.shape[1])
        expected = F.linear(x, weight, getattr(s.model, layer).bias)
        torch.testing.assert_close(getattr(s.model, layer)(x), expected)


def test_kd_example_distils_every_step_from_the_command_lines_teacher():
    s = setup(by_name("lenet300_100.kd.yaml"))
    assert s.args.kd_teacher == "simplenet_mnist"
    (distiller,) = kd.distillers_of(s.sched)
    assert distiller.teacher is s.teacher
    assert (distiller.temperature, distiller.loss_wts) == (4.0, kd.DistillationLossWeights(0.7, 0.3, 0.0))
    before = {n: p.detach().clone() for n, p in s.teacher.named_parameters()}
    terms = train(s).terms
    assert terms == {e: [{kd.LOSS_TERM_NAME}] * len(s.data) for e in range(s.args.epochs)}
    assert all(torch.equal(p, before[n]) for n, p in s.teacher.named_parameters())
