"""HookpruneCallback under Trainer.fit: the plain loop's results, every event, accumulation, refusals, checkpoints."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from hookprune.testing import EventRecorder
from lightning_support import (
    BATCHES,
    EXAMPLE_SCHEDULE,
    Digits,
    lenet,
    loaders,
    plain_loop,
    sgd,
    trainer,
)

from hookprune_lightning import HookpruneCallback, HookpruneSetupError

L1_SCHEDULE = {
    "pruners": {"fc_pruner": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.05, "final_sparsity": 0.9,
                              "weights": ["fc1.weight", "fc2.weight"]}},
    "regularizers": {"l1": {"class": "L1Regularizer", "reg_regims": {"fc3.weight": 0.01}}},
    "policies": [{"pruner": {"instance_name": "fc_pruner"}, "starting_epoch": 0, "ending_epoch": 3, "frequency": 1},
                 {"regularizer": {"instance_name": "l1"}, "starting_epoch": 0, "ending_epoch": 4}],
}


#: the example schedule's levels reached by epoch 3, then four epochs of LR decay under the final masks
SHORT_SCHEDULE = {
    "pruners": {"fc_pruner": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.05, "final_sparsity": 0.9,
                              "weights": ["fc1.weight", "fc2.weight"]},
                "out_pruner": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.05, "final_sparsity": 0.8,
                               "weights": ["fc3.weight"]}},
    "lr_schedulers": {"decay": {"class": "ExponentialLR", "gamma": 0.9}},
    "policies": [{"pruner": {"instance_name": "fc_pruner"}, "starting_epoch": 0, "ending_epoch": 4, "frequency": 1},
                 {"pruner": {"instance_name": "out_pruner"}, "starting_epoch": 0, "ending_epoch": 4, "frequency": 1},
                 {"lr_scheduler": {"instance_name": "decay"}, "starting_epoch": 4, "ending_epoch": 8, "frequency": 1}],
}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny inputs run fastest, and reproducibly, on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class AddRecorder(pl.Callback):
    """Adds an EventRecorder to the scheduler the HookpruneCallback built, for every epoch."""

    def __init__(self, hookprune_cb: HookpruneCallback, epochs: int) -> None:
        self.hookprune_cb, self.epochs, self.recorder = hookprune_cb, epochs, EventRecorder()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.hookprune_cb.scheduler.add_policy(self.recorder, starting_epoch=0, ending_epoch=self.epochs)


class MaskedStayZero(pl.Callback):
    """After every batch whose optimizer step ran, checks that every masked weight is exactly zero."""

    def __init__(self, hookprune_cb: HookpruneCallback) -> None:
        self.hookprune_cb, self.checked, self.stepped = hookprune_cb, 0, False

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self.stepped = True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.stepped:
            assert_masked_zero(self.hookprune_cb.scheduler, pl_module.model)
            self.checked += 1
        self.stepped = False


def assert_masked_zero(sched: Any, model: torch.nn.Module) -> None:
    params = dict(model.named_parameters())
    assert len(sched.masks) > 0
    for name in sched.masks:
        assert not params[name].detach()[~sched.masks[name]].any(), name


def fit(schedule: Any, epochs: int, *extra: pl.Callback, accumulate: int = 1, module: pl.LightningModule | None = None,
        **cb_kwargs: Any) -> tuple[pl.Trainer, Digits, HookpruneCallback]:
    cb = HookpruneCallback(schedule, submodule="model", **cb_kwargs)
    module = module or Digits()
    t = trainer(epochs, [cb, *extra], accumulate_grad_batches=accumulate)
    t.fit(module, *loaders())
    return t, module, cb


def sparsity_percent(sched: Any) -> dict[str, str]:
    return {layer.name: f"{100 * layer.sparsity:.2f}" for layer in sched.sparsity()}


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), (_, y) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(x.detach(), y.detach()), name


def test_example_schedule_reaches_the_plain_loops_exact_levels_and_weights():
    hp = HookpruneCallback(EXAMPLE_SCHEDULE, submodule="model")
    checker = MaskedStayZero(hp)
    t = trainer(20, [hp, checker])
    module = Digits()
    t.fit(module, *loaders())
    sched = hp.scheduler
    assert sparsity_percent(sched) == {"fc1.weight": "90.00", "fc2.weight": "90.00", "fc3.weight": "80.00"}
    assert checker.checked == 20 * BATCHES
    assert_masked_zero(sched, module.model)

    reference, ref_optimizer, ref_sched = plain_loop(EXAMPLE_SCHEDULE, 20)
    assert sparsity_percent(ref_sched) == sparsity_percent(sched)
    assert_same_weights(module.model, reference)
    assert t.optimizers[0].param_groups[0]["lr"] == ref_optimizer.param_groups[0]["lr"] < 0.1
    assert module.training_step.__func__ is Digits.training_step  # the callback's wrapper is gone after fit


@pytest.mark.parametrize("accumulate", [1, 3])
def test_each_event_fires_once_per_optimizer_step_in_order(accumulate):
    hp = HookpruneCallback(EXAMPLE_SCHEDULE, submodule="model")
    adder = AddRecorder(hp, epochs=2)
    checker = MaskedStayZero(hp)
    trainer(2, [hp, adder, checker], accumulate_grad_batches=accumulate).fit(Digits(), *loaders())
    rec = adder.recorder
    steps = -(-BATCHES // accumulate)
    assert rec.minibatches_per_epoch == {steps}
    assert (rec.count("on_epoch_begin"), rec.count("on_epoch_end")) == (2, 2)
    assert rec.count("on_minibatch_begin") == rec.count("before_optimizer_step") == rec.count("on_minibatch_end")
    assert rec.count("on_minibatch_begin") == 2 * steps
    assert rec.count("before_backward") == 2 * BATCHES
    assert checker.checked == 2 * steps

    expected: list[tuple[str, int, int | None]] = []
    for epoch in range(2):
        expected.append(("on_epoch_begin", epoch, None))
        for step in range(steps):
            group = min(accumulate, BATCHES - step * accumulate)
            expected += [("on_minibatch_begin", epoch, step), *[("before_backward", epoch, step)] * group,
                         ("before_optimizer_step", epoch, step), ("on_minibatch_end", epoch, step)]
        expected.append(("on_epoch_end", epoch, None))
    assert rec.log == expected


def test_epoch_end_receives_the_validation_metrics():
    hp = HookpruneCallback(EXAMPLE_SCHEDULE, submodule="model", max_metric="val_acc")
    adder = AddRecorder(hp, epochs=2)
    t = trainer(2, [hp, adder])
    t.fit(Digits(), *loaders())
    last = adder.recorder.metrics[-1]
    assert last["min"] == last["val_loss"] == pytest.approx(float(t.callback_metrics["val_loss"]))
    assert last["max"] == last["val_acc"] > 0.5


def test_regularizer_term_trains_the_model_as_in_the_plain_loop():
    _, module, cb = fit(L1_SCHEDULE, 4)
    assert set(cb.scheduler.loss_components) == {"L1Regularizer_loss"}
    reference, _, _ = plain_loop(L1_SCHEDULE, 4)
    assert_same_weights(module.model, reference)

    without = {**L1_SCHEDULE, "regularizers": {}, "policies": L1_SCHEDULE["policies"][:1]}
    _, unregularized, _ = fit(without, 4)
    fc3 = unregularized.model.fc3.weight.detach().abs().sum()
    assert module.model.fc3.weight.detach().abs().sum() < fc3


def test_gradient_accumulation_matches_the_plain_loop_with_loss_terms():
    _, module, cb = fit(L1_SCHEDULE, 4, accumulate=4)
    reference, _, ref_sched = plain_loop(L1_SCHEDULE, 4, accumulate=4)
    assert_same_weights(module.model, reference)
    assert sparsity_percent(cb.scheduler) == sparsity_percent(ref_sched)
    assert sparsity_percent(cb.scheduler)["fc1.weight"] == "90.00"


def test_distillation_runs_the_teacher_beside_the_students_forward():
    torch.manual_seed(1)
    teacher = lenet().requires_grad_(False)
    torch.nn.init.normal_(teacher.fc3.weight, std=1.0)
    schedule = {"distillers": {"kd": {"temperature": 4.0, "distill_weight": 0.5, "student_weight": 0.5}},
                "policies": [{"distiller": {"instance_name": "kd"}, "starting_epoch": 0, "ending_epoch": 2}]}
    _, module, cb = fit(schedule, 2, teacher=teacher)
    assert set(cb.scheduler.loss_components) == {"distillation"}
    reference, _, _ = plain_loop(schedule, 2, teacher=teacher)
    assert_same_weights(module.model, reference)
    assert float(cb.scheduler.instances["kd"].last_distill_loss) > 0


class Manual(Digits):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False


class TwoOptimizers(Manual):
    def configure_optimizers(self) -> Any:
        return [sgd(self.model.fc1.parameters()), sgd(self.model.fc2.parameters())]


class WithLRScheduler(Digits):
    def configure_optimizers(self) -> Any:
        optimizer = sgd(self.parameters())
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5)}


@pytest.mark.parametrize(("module", "message"), [
    (Manual, r"manual optimization \(automatic_optimization = False\) is not supported"),
    (TwoOptimizers, r"configure_optimizers\(\) returned 2 optimizers; a schedule drives exactly one"),
    (WithLRScheduler, r"the schedule has lr_schedulers and configure_optimizers\(\) returns an LR scheduler too"),
])
def test_refuses_setups_it_cannot_drive(module, message):
    with pytest.raises(HookpruneSetupError, match=message):
        fit(EXAMPLE_SCHEDULE, 1, module=module())


def test_the_modules_lr_scheduler_is_kept_when_the_schedule_sets_no_rate():
    t, _, cb = fit(L1_SCHEDULE, 2, module=WithLRScheduler())
    assert t.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**2)
    assert sparsity_percent(cb.scheduler)["fc1.weight"] == "79.38"  # AGP at epoch 1 of 0-2


def test_refuses_a_second_callback_and_an_unknown_submodule():
    callbacks = [HookpruneCallback(EXAMPLE_SCHEDULE, submodule="model"), HookpruneCallback(L1_SCHEDULE)]
    with pytest.raises(RuntimeError, match="more than one stateful callback of type `HookpruneCallback`"):
        trainer(1, callbacks)
    with pytest.raises(HookpruneSetupError, match=r"no submodule 'net' \(its children: model\)"):
        trainer(1, [HookpruneCallback(EXAMPLE_SCHEDULE, submodule="net")]).fit(Digits(), *loaders())


def test_a_schedule_error_names_the_yaml_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(EXAMPLE_SCHEDULE.read_text().replace("fc3.weight", "fc4.weight"))
    with pytest.raises(ValueError, match=rf"{path}:\d+:\d+: .*fc4\.weight"):
        fit(path, 1)


def test_checkpoint_resume_reproduces_the_uninterrupted_run(tmp_path):
    straight_trainer, straight, straight_cb = fit(SHORT_SCHEDULE, 8)

    first = trainer(5, [HookpruneCallback(SHORT_SCHEDULE, submodule="model")])
    first.fit(Digits(), *loaders())
    ckpt = tmp_path / "epoch5.ckpt"
    first.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=True)
    state = saved["callbacks"]["HookpruneCallback"]["scheduler"]
    assert state["epoch"] == 4
    assert set(state["masks_dict"]) == {"fc1.weight", "fc2.weight", "fc3.weight"}

    # Pruning ended at epoch 3: from here on only the restored masks keep momentum from reviving pruned weights.
    resumed_cb = HookpruneCallback(SHORT_SCHEDULE, submodule="model")
    adder = AddRecorder(resumed_cb, epochs=8)
    resumed = trainer(8, [resumed_cb, adder])
    module = Digits()
    resumed.fit(module, *loaders(), ckpt_path=ckpt)
    assert [e for name, e, _ in adder.recorder.log if name == "on_epoch_begin"] == [5, 6, 7]
    assert_same_weights(module.model, straight.model)
    for name in straight_cb.scheduler.masks:
        assert torch.equal(resumed_cb.scheduler.masks[name], straight_cb.scheduler.masks[name])
    assert resumed.optimizers[0].param_groups[0]["lr"] == straight_trainer.optimizers[0].param_groups[0]["lr"]
    assert sparsity_percent(resumed_cb.scheduler) == {"fc1.weight": "90.00", "fc2.weight": "90.00",
                                                      "fc3.weight": "80.00"}


def test_a_one_epoch_fit_prunes_gradually_over_optimizer_steps_as_the_plain_loop_does():
    # 23 batches in groups of 2: 12 optimizer steps, AGP at steps 1, 3, ..., 11
    steps = -(-BATCHES // 2)
    schedule = {"pruners": {"agp": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.05,
                                    "final_sparsity": 0.9, "weights": ["fc1.weight", "fc2.weight"]}},
                "policies": [{"pruner": {"instance_name": "agp"}, "starting_step": 1, "ending_step": steps,
                              "step_frequency": 2}]}
    _, module, hp = fit(schedule, 1, accumulate=2)
    assert hp.scheduler.global_step == steps - 1 == 11
    assert sparsity_percent(hp.scheduler) == {"fc1.weight": "90.00", "fc2.weight": "90.00"}
    reference, _, ref_sched = plain_loop(schedule, 1, accumulate=2)
    assert ref_sched.global_step == hp.scheduler.global_step
    assert_same_weights(module.model, reference)
    assert_masked_zero(hp.scheduler, module.model)


def test_losses_from_a_training_step_dict_get_the_terms():
    class DictStep(Digits):
        def training_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
            x, y = batch
            loss = F.cross_entropy(self(x), y)
            return {"loss": loss, "objective": loss.detach()}

    _, module, _ = fit(L1_SCHEDULE, 4, module=DictStep())
    reference, _, _ = plain_loop(L1_SCHEDULE, 4)
    assert_same_weights(module.model, reference)


def test_hookprune_plugins_lists_this_integration_with_its_distribution(capsys):
    from importlib.metadata import version

    from hookprune.cli import main

    assert main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = lines[lines.index("Trainer integrations (entry point group 'hookprune.integrations'):") + 1:]
    expected = ["lightning", "hookprune-lightning", version("hookprune-lightning")]
    assert any(line.split()[:3] == expected for line in listed), listed
