"""Class names resolve through entry points, lazily; LR schedulers from torch and Distiller."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import torch

import hookprune
from hookprune._engine import registry as plugins
from hookprune.lr import MultiStepMultiGammaLR, PolynomialLR

TORCH_SCHEDULERS = sorted(
    name for name, obj in vars(torch.optim.lr_scheduler).items()
    if inspect.isclass(obj) and not name.startswith("_") and name != "LRScheduler"
    and issubclass(obj, torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau)
)


@pytest.mark.parametrize("name", TORCH_SCHEDULERS)
def test_every_torch_lr_scheduler_is_available_by_name(name):
    resolved = plugins.resolve_class(name)
    assert resolved.__name__ == name
    providers = plugins.class_providers()[name]
    assert [p.distribution for p in providers] == ["hookprune"]


def test_builtins_are_listed_in_hookprunes_own_entry_points():
    for name in ("AutomatedGradualPruner", "MagnitudeParameterPruner", "SensitivityPruner",
                 "SparsityLevelParameterPruner", "MultiStepMultiGammaLR", "PolynomialLR"):
        (provider,) = plugins.class_providers()[name]
        assert provider.distribution == "hookprune"
        assert provider.value.startswith("hookprune.")


def test_two_distributions_giving_one_name_is_an_error_naming_both(monkeypatch):
    real = plugins.class_providers()["StepLR"][0]
    twin = plugins.Provider("StepLR", "other_pkg.lr:StepLR", "other-dist", "2.0", real.entry_point)
    monkeypatch.setattr(plugins, "class_providers", lambda: {"StepLR": (real, twin)})
    with pytest.raises(hookprune.ScheduleError, match=r"class 'StepLR' is provided by more than one distribution: "
                                                      r"hookprune 0\.1\.0 \(torch.optim.lr_scheduler:StepLR\) and "
                                                      r"other-dist 2\.0 \(other_pkg.lr:StepLR\)"):
        plugins.resolve_class("StepLR")


def test_classes_are_imported_only_when_a_schedule_names_them():
    code = (
        "import sys, torch, hookprune\n"
        "m = torch.nn.Linear(4, 4)\n"
        "hookprune.load({'pruners': {'p': {'class': 'AutomatedGradualPruner', 'initial_sparsity': 0.1,"
        " 'final_sparsity': 0.5, 'weights': ['weight']}},"
        " 'policies': [{'pruner': {'instance_name': 'p'}, 'starting_epoch': 0, 'ending_epoch': 3}]}, m)\n"
        "print('hookprune.pruning.magnitude' in sys.modules, 'hookprune.pruning.ranked' in sys.modules,"
        " 'hookprune.lr' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False", "False"]


def test_polynomial_lr_takes_distillers_t_max_or_torchs_total_iters():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = PolynomialLR(opt, T_max=10, power=2)
    for epoch in (3, 7, 10):
        sched._update_lr(epoch)
        assert opt.param_groups[0]["lr"] == pytest.approx((1 - epoch / 10) ** 2)
    with pytest.raises(ValueError, match="exactly one of 'T_max'"):
        PolynomialLR(opt, T_max=3, total_iters=3)


def test_multistep_multigamma_multiplies_cumulatively():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = MultiStepMultiGammaLR(opt, milestones=[2, 4], gammas=[0.1, 0.5])
    lrs = []
    for epoch in range(6):
        sched._update_lr(epoch)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([1, 1, 0.1, 0.1, 0.05, 0.05])
    with pytest.raises(ValueError, match="Milestones should be a list of increasing integers"):
        MultiStepMultiGammaLR(opt, milestones=[4, 2], gammas=[0.1, 0.5])
    with pytest.raises(ValueError, match="same length"):
        MultiStepMultiGammaLR(opt, milestones=[2], gammas=[0.1, 0.5])


def test_reduce_lr_on_plateau_reads_metrics_by_mode(lenet):
    optimizer = torch.optim.SGD(lenet.parameters(), lr=1.0)
    schedule = {"lr_schedulers": {"plateau": {"class": "ReduceLROnPlateau", "mode": "min", "patience": 0,
                                              "factor": 0.5}},
                "policies": [{"lr_scheduler": {"instance_name": "plateau"}, "starting_epoch": 0,
                              "ending_epoch": 10}]}
    sched = hookprune.load(schedule, lenet, optimizer)
    for epoch in range(3):
        sched.on_epoch_end(epoch, optimizer, metrics={"min": 1.0, "max": 50.0})
    assert optimizer.param_groups[0]["lr"] == 0.25
    with pytest.raises(ValueError, match=r"needs metrics\['min'\]"):
        sched.on_epoch_end(3, optimizer)


def test_lr_scheduler_without_optimizer_is_a_schedule_error(lenet):
    schedule = {"lr_schedulers": {"decay": {"class": "StepLR", "step_size": 2}},
                "policies": [{"lr_scheduler": {"instance_name": "decay"}, "starting_epoch": 0, "ending_epoch": 4}]}
    with pytest.raises(hookprune.ScheduleError, match=r"needs the optimizer: pass it to hookprune\.load"):
        hookprune.load(schedule, lenet)


def test_plugins_listing_into_a_closed_pipe_ends_quietly():
    reader = subprocess.Popen(["head", "-n", "1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    writer = subprocess.run([sys.executable, "-m", "hookprune", "plugins"], stdout=reader.stdin,
                            stderr=subprocess.PIPE, text=True, check=False)
    reader.stdin.close()
    first = reader.stdout.read().decode()
    reader.stdout.close()
    reader.wait()
    assert first.startswith("Schedule classes")
    assert writer.returncode == 0 and "Traceback" not in writer.stderr
