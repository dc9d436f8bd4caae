"""HookpruneCallback and HookpruneTrainer: the plain loop's results, every event, accumulation, the learning rate,
refusals and checkpoints."""

from __future__ import annotations

import shutil
from typing import Any

import hookprune
import pytest
import torch
import torch.nn.functional as F
from hookprune.testing import EventRecorder
from transformers import Trainer, TrainerCallback
from transformers_support import (
    BATCH,
    BATCHES,
    EXAMPLE_SCHEDULE,
    TRAIN,
    VAL,
    Classifier,
    arguments,
    lenet,
    plain_loop,
    sgd,
)

from hookprune_transformers import STATE_FILE, HookpruneCallback, HookpruneSetupError, HookpruneTrainer, ScheduleOwnedLR

PRUNERS = {
    "fc_pruner": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.05, "final_sparsity": 0.9,
                  "weights": ["fc1.weight", "fc2.weight"]},
    "out_pruner": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.05, "final_sparsity": 0.8,
                   "weights": ["fc3.weight"]},
}
PRUNING = [{"pruner": {"instance_name": name}, "starting_epoch": 0, "ending_epoch": 3, "frequency": 1}
           for name in PRUNERS]
#: the example schedule's final levels, reached at epoch 2, and no learning-rate or loss changes
PRUNE_ONLY = {"pruners": PRUNERS, "policies": PRUNING}
#: the same pruning with an L1 penalty on fc3
WITH_L1 = {"pruners": PRUNERS,
           "regularizers": {"l1": {"class": "L1Regularizer", "reg_regims": {"fc3.weight": 0.01}}},
           "policies": [*PRUNING, {"regularizer": {"instance_name": "l1"}, "starting_epoch": 0, "ending_epoch": 4}]}
#: the same pruning, then an exponential decay of the rate from epoch 3 on
WITH_DECAY = {"pruners": PRUNERS, "lr_schedulers": {"decay": {"class": "ExponentialLR", "gamma": 0.5}},
              "policies": [*PRUNING, {"lr_scheduler": {"instance_name": "decay"}, "starting_epoch": 3,
                                      "ending_epoch": 6}]}
LEVELS = {"fc1.weight": "90.00", "fc2.weight": "90.00", "fc3.weight": "80.00"}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny inputs run fastest, and reproducibly, on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Watch(TrainerCallback):
    """Adds an EventRecorder to the schedule, and checks after every optimizer step that masked weights are 0."""

    def __init__(self, hp: HookpruneCallback) -> None:
        self.hp, self.recorder, self.checked = hp, EventRecorder(), 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.hp.scheduler.add_policy(self.recorder, starting_epoch=0, ending_epoch=100)

    def on_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        assert_masked_zero(self.hp.scheduler, model.net)
        self.checked += 1


def assert_masked_zero(sched: Any, net: torch.nn.Module) -> None:
    params = dict(net.named_parameters())
    for name in sched.masks:
        assert not params[name].detach()[~sched.masks[name]].any(), name


def sparsity_percent(sched: Any) -> dict[str, str]:
    return {layer.name: f"{100 * layer.sparsity:.2f}" for layer in sched.sparsity()}


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), (_, y) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(x.detach(), y.detach()), name


def make(tmp_path: Any, schedule: Any, epochs: int, *extra: TrainerCallback, trainer_cls: type = HookpruneTrainer,
         model: Classifier | None = None, cb_kwargs: dict[str, Any] | None = None,
         **overrides: Any) -> tuple[Trainer, Classifier, HookpruneCallback]:
    hp = HookpruneCallback(schedule, submodule="net", **(cb_kwargs or {}))
    model = model or Classifier()
    evaluating = overrides.get("eval_strategy", "no") != "no"
    t = trainer_cls(model=model, args=arguments(tmp_path, epochs, **overrides), train_dataset=TRAIN,
                    eval_dataset=VAL if evaluating else None, optimizers=(sgd(model.parameters()), None),
                    callbacks=[hp, *extra])
    return t, model, hp


def test_plain_trainer_prunes_to_the_exact_levels_of_the_plain_loop(tmp_path):
    t, model, hp = make(tmp_path, PRUNE_ONLY, 4, trainer_cls=Trainer)
    watch = Watch(hp)
    t.add_callback(watch)
    t.train()
    assert sparsity_percent(hp.scheduler) == LEVELS
    assert watch.checked == 4 * BATCHES
    reference, _, _ = plain_loop(PRUNE_ONLY, 4)
    assert_same_weights(model.net, reference)


@pytest.mark.parametrize("accumulate", [1, 4])
def test_each_event_fires_once_per_optimizer_step_in_order(tmp_path, accumulate):
    t, _, hp = make(tmp_path, WITH_L1, 2, gradient_accumulation_steps=accumulate)
    watch = Watch(hp)
    t.add_callback(watch)
    t.train()
    rec = watch.recorder
    steps = -(-BATCHES // accumulate)
    assert rec.minibatches_per_epoch == {steps}
    assert rec.count("on_minibatch_begin") == rec.count("before_optimizer_step") == rec.count("on_minibatch_end")
    assert rec.count("on_minibatch_begin") == 2 * steps == watch.checked
    assert rec.count("before_backward") == 2 * BATCHES
    expected: list[tuple[str, int, int | None]] = []
    for epoch in range(2):
        expected.append(("on_epoch_begin", epoch, None))
        for step in range(steps):
            group = min(accumulate, BATCHES - step * accumulate)
            expected += [("on_minibatch_begin", epoch, step), *[("before_backward", epoch, step)] * group,
                         ("before_optimizer_step", epoch, step), ("on_minibatch_end", epoch, step)]
        expected.append(("on_epoch_end", epoch, None))
    assert rec.log == expected


def test_loss_terms_with_gradient_accumulation_match_the_plain_loop(tmp_path):
    t, model, hp = make(tmp_path, WITH_L1, 4, gradient_accumulation_steps=4)
    t.train()
    assert set(hp.scheduler.loss_components) == {"L1Regularizer_loss"}
    reference, _, _ = plain_loop(WITH_L1, 4, accumulate=4)
    assert_same_weights(model.net, reference)
    assert sparsity_percent(hp.scheduler) == LEVELS

    unregularized, _, _ = plain_loop(PRUNE_ONLY, 4, accumulate=4)
    assert model.net.fc3.weight.abs().sum() < unregularized.fc3.weight.abs().sum()


class TokenNormalized(Classifier):
    """A model that normalizes its summed loss by the accumulated batch's item count, as causal LMs do: the
    Trainer then passes ``num_items_in_batch`` and does not divide the loss by the accumulation steps."""

    def forward(self, pixels: torch.Tensor, labels: torch.Tensor | None = None, **kwargs: Any) -> dict[str, Any]:
        logits = self.net(pixels)
        return {"loss": F.cross_entropy(logits, labels, reduction="sum") / kwargs["num_items_in_batch"],
                "logits": logits}


def test_loss_terms_count_once_per_step_when_the_model_normalizes_over_the_accumulated_batch(tmp_path):
    schedule = {"regularizers": WITH_L1["regularizers"], "policies": WITH_L1["policies"][-1:]}
    t, model, _ = make(tmp_path, schedule, 2, model=TokenNormalized(), gradient_accumulation_steps=4)
    assert t.model_accepts_loss_kwargs
    t.train()

    reference = lenet()
    optimizer = sgd(reference.parameters())
    sched = hookprune.load(schedule, reference, optimizer)
    batches = [(TRAIN.x[i:i + BATCH], TRAIN.y[i:i + BATCH]) for i in range(0, len(TRAIN), BATCH)]
    groups = [batches[i:i + 4] for i in range(0, len(batches), 4)]
    for epoch in range(2):
        sched.fire("on_epoch_begin", epoch=epoch)
        for step_id, group in enumerate(groups):
            step = {"epoch": epoch, "minibatch_id": step_id, "minibatches_per_epoch": len(groups)}
            sched.fire("on_minibatch_begin", **step)
            items = sum(len(y) for _, y in group)
            for x, y in group:
                sched.fire("before_backward", **step, loss=torch.zeros(()))
                term = sum(sched.loss_components.values()) / len(group)
                (F.cross_entropy(reference(x), y, reduction="sum") / items + term).backward()
            sched.fire("before_optimizer_step", **step)
            optimizer.step()
            optimizer.zero_grad()
            sched.fire("on_minibatch_end", **step)
        sched.fire("on_epoch_end", epoch=epoch, metrics={})
    for (name, x), (_, y) in zip(model.net.named_parameters(), reference.named_parameters(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7, msg=name)


def test_example_schedule_takes_over_the_learning_rate(tmp_path):
    t, model, hp = make(tmp_path, EXAMPLE_SCHEDULE, 20, logging_strategy="epoch")
    t.train()
    assert isinstance(t.lr_scheduler, ScheduleOwnedLR)
    assert sparsity_percent(hp.scheduler) == LEVELS
    reference, ref_optimizer, _ = plain_loop(EXAMPLE_SCHEDULE, 20)
    assert_same_weights(model.net, reference)
    assert t.optimizer.param_groups[0]["lr"] == ref_optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.9**20)
    logged = [entry["learning_rate"] for entry in t.state.log_history if "learning_rate" in entry]
    # Logged at each epoch's last step: epoch 10 still ran at 0.1; its end set the rate to 0.1 * 0.9**11.
    assert logged[:11] == [0.1] * 11
    assert logged[11] == pytest.approx(0.1 * 0.9**11)


def test_epoch_end_gets_the_epochs_evaluation_metrics(tmp_path):
    t, _, hp = make(tmp_path, PRUNE_ONLY, 2, eval_strategy="epoch", cb_kwargs={"max_metric": "eval_accuracy"})
    watch = Watch(hp)
    t.add_callback(watch)
    t.train()
    evaluations = [entry for entry in t.state.log_history if "eval_loss" in entry]
    assert len(evaluations) == len(watch.recorder.metrics) == 2
    for metrics, logged in zip(watch.recorder.metrics, evaluations, strict=True):
        assert metrics["min"] == metrics["eval_loss"] == logged["eval_loss"]
        assert "max" not in metrics


def test_distillation_through_the_network_the_wrapper_calls(tmp_path):
    torch.manual_seed(1)
    teacher = lenet().requires_grad_(False)
    torch.nn.init.normal_(teacher.fc3.weight, std=1.0)
    schedule = {"distillers": {"kd": {"temperature": 4.0, "distill_weight": 0.5, "student_weight": 0.5}},
                "policies": [{"distiller": {"instance_name": "kd"}, "starting_epoch": 0, "ending_epoch": 2}]}
    t, model, hp = make(tmp_path, schedule, 2, cb_kwargs={"teacher": teacher})
    t.train()
    assert float(hp.scheduler.instances["kd"].last_distill_loss) > 0
    reference, _, _ = plain_loop(schedule, 2, teacher=teacher)
    assert_same_weights(model.net, reference)


@pytest.mark.parametrize(("schedule", "overrides", "trainer_cls", "message"), [
    (WITH_L1, {}, Trainer, r"the schedule adds loss terms .* use hookprune_transformers\.HookpruneTrainer"),
    (WITH_DECAY, {}, Trainer, r"the schedule has lr_schedulers, but the Trainer's own LR scheduler would set the "
                              r"rate too; use hookprune_transformers\.HookpruneTrainer"),
    (WITH_DECAY, {"lr_scheduler_type": "linear"}, HookpruneTrainer,
     r"TrainingArguments ask for lr_scheduler_type='linear' with 0 warm-up steps; set lr_scheduler_type='constant'"),
    (WITH_DECAY, {"warmup_steps": 5}, HookpruneTrainer, r"lr_scheduler_type='constant' with 5 warm-up steps"),
])
def test_refuses_what_the_trainer_cannot_do(tmp_path, schedule, overrides, trainer_cls, message):
    t, _, _ = make(tmp_path, schedule, 1, trainer_cls=trainer_cls, **overrides)
    with pytest.raises(HookpruneSetupError, match=message):
        t.train()


def test_refuses_a_given_lr_scheduler_a_missing_callback_and_an_unknown_submodule(tmp_path):
    model = Classifier()
    optimizer = sgd(model.parameters())
    t = HookpruneTrainer(model=model, args=arguments(tmp_path, 1), train_dataset=TRAIN,
                         optimizers=(optimizer, torch.optim.lr_scheduler.StepLR(optimizer, 1)),
                         callbacks=[HookpruneCallback(WITH_DECAY, submodule="net")])
    with pytest.raises(HookpruneSetupError, match=r"the Trainer was given an LR scheduler .* both would set"):
        t.train()
    with pytest.raises(HookpruneSetupError, match="needs exactly one HookpruneCallback in callbacks, got 0"):
        HookpruneTrainer(model=model, args=arguments(tmp_path, 1), train_dataset=TRAIN)
    t, _, _ = make(tmp_path, PRUNE_ONLY, 1, cb_kwargs={})
    t.hookprune.submodule = "body"
    with pytest.raises(HookpruneSetupError, match=r"no submodule 'body' \(its children: net\)"):
        t.train()


def test_the_trainers_own_rate_schedule_runs_when_the_schedule_sets_none(tmp_path):
    t, _, hp = make(tmp_path, WITH_L1, 1, lr_scheduler_type="linear")
    t.train()
    assert not isinstance(t.lr_scheduler, ScheduleOwnedLR)
    assert t.optimizer.param_groups[0]["lr"] == 0.0
    assert hp.scheduler is not None


@pytest.mark.parametrize("trainer_cls", [Trainer, HookpruneTrainer])
def test_checkpoint_resume_reproduces_the_uninterrupted_run(tmp_path, trainer_cls):
    schedule = WITH_DECAY if trainer_cls is HookpruneTrainer else PRUNE_ONLY
    straight, straight_model, straight_hp = make(tmp_path / "straight", schedule, 6, trainer_cls=trainer_cls)
    straight.train()

    first, _, _ = make(tmp_path / "run", schedule, 6, trainer_cls=trainer_cls, save_strategy="epoch")
    first.train()
    checkpoint = tmp_path / "run" / f"checkpoint-{4 * BATCHES}"
    saved = torch.load(checkpoint / STATE_FILE, weights_only=True)
    assert (saved["epoch"], saved["epoch_ended"]) == (3, True)
    assert set(saved["scheduler"]["masks_dict"]) == set(LEVELS)

    for later in (5, 6):  # so that resume_from_checkpoint=True finds the one after epoch 3
        shutil.rmtree(tmp_path / "run" / f"checkpoint-{later * BATCHES}")

    # Pruning ended at epoch 2: from here on only the restored masks keep momentum from reviving pruned weights.
    resumed, model, hp = make(tmp_path / "run", schedule, 6, trainer_cls=trainer_cls)
    watch = Watch(hp)
    resumed.add_callback(watch)
    resumed.train(resume_from_checkpoint=str(checkpoint) if trainer_cls is HookpruneTrainer else True)
    assert [e for name, e, _ in watch.recorder.log if name == "on_epoch_begin"] == [4, 5]
    assert_same_weights(model.net, straight_model.net)
    for name in straight_hp.scheduler.masks:
        assert torch.equal(hp.scheduler.masks[name], straight_hp.scheduler.masks[name])
    assert resumed.optimizer.param_groups[0]["lr"] == straight.optimizer.param_groups[0]["lr"]
    assert sparsity_percent(hp.scheduler) == LEVELS


@pytest.mark.parametrize(("save_steps", "step", "ended"), [
    (BATCHES + 5, 3 * (BATCHES + 5), False),  # inside epoch 3
    (4 * BATCHES, 4 * BATCHES, False),  # epoch 3's last step, saved before the Trainer ends the epoch
])
def test_resume_from_a_step_checkpoint_continues_the_epoch(tmp_path, save_steps, step, ended):
    straight, straight_model, _ = make(tmp_path / "straight", WITH_DECAY, 5)
    straight.train()
    first, _, _ = make(tmp_path / "run", WITH_DECAY, 5, save_strategy="steps", save_steps=save_steps)
    first.train()
    checkpoint = tmp_path / "run" / f"checkpoint-{step}"
    saved = torch.load(checkpoint / STATE_FILE, weights_only=True)
    assert (saved["epoch"], saved["epoch_ended"]) == (3, ended)

    resumed, model, hp = make(tmp_path / "run", WITH_DECAY, 5)
    watch = Watch(hp)
    resumed.add_callback(watch)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    epochs = [(name, e) for name, e, _ in watch.recorder.log if name in ("on_epoch_begin", "on_epoch_end")]
    # Epoch 3 is never begun again (the saved state began it) and ends exactly once, decaying the rate.
    assert epochs == [("on_epoch_end", 3), ("on_epoch_begin", 4), ("on_epoch_end", 4)]
    assert_same_weights(model.net, straight_model.net)
    assert resumed.optimizer.param_groups[0]["lr"] == straight.optimizer.param_groups[0]["lr"]


#: AGP from 5% to 90% in fc1 over the optimizer steps 2, 5, ..., 20 of a one-epoch fine-tune (23 steps)
BY_STEPS = {"pruners": {"agp": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.05, "final_sparsity": 0.9,
                                "weights": ["fc1.weight"]}},
            "policies": [{"pruner": {"instance_name": "agp"}, "starting_step": 2, "ending_step": 21,
                          "step_frequency": 3}]}


class Levels(TrainerCallback):
    """fc1's pruned fraction at each optimizer step, once the schedule's on_minibatch_begin has run."""

    def __init__(self, hp: HookpruneCallback) -> None:
        self.hp, self.seen = hp, {}

    def on_step_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        weight = model.net.fc1.weight
        self.seen[state.global_step] = (weight == 0).sum().item() / weight.numel()


def test_a_one_epoch_fine_tune_reaches_its_agp_level_over_steps_exactly(tmp_path):
    from hookprune.pruning.levels import agp_target

    t, model, hp = make(tmp_path, BY_STEPS, 1, trainer_cls=Trainer)
    levels = Levels(hp)
    t.add_callback(levels)
    t.train()
    numel = model.net.fc1.weight.numel()
    assert BATCHES == 23 and t.state.global_step == BATCHES and hp.scheduler.global_step == BATCHES - 1
    level = 0.0
    for step in range(BATCHES):
        if step in range(2, 21, 3):
            level = int(agp_target(0.05, 0.9, 2, 21, 3, step) * numel) / numel
        assert levels.seen[step] == level, step
    # half the 18 steps gone at step 11: 0.9 - 0.85 / 8 of the way left
    assert levels.seen[11] == int((0.9 - 0.85 / 8) * numel) / numel
    assert levels.seen[20] == int(0.9 * numel) / numel
    assert sparsity_percent(hp.scheduler) == {"fc1.weight": "90.00"}
    assert_masked_zero(hp.scheduler, model.net)


def test_resuming_a_step_window_mid_epoch_gives_the_uninterrupted_masks(tmp_path):
    straight, straight_model, straight_hp = make(tmp_path / "straight", BY_STEPS, 1, trainer_cls=Trainer)
    straight.train()
    first, _, _ = make(tmp_path / "run", BY_STEPS, 1, trainer_cls=Trainer, save_strategy="steps", save_steps=10)
    first.train()
    checkpoint = tmp_path / "run" / "checkpoint-10"
    assert torch.load(checkpoint / STATE_FILE, weights_only=True)["scheduler"]["global_step"] == 9

    resumed, model, hp = make(tmp_path / "run", BY_STEPS, 1, trainer_cls=HookpruneTrainer)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert hp.scheduler.global_step == straight_hp.scheduler.global_step == BATCHES - 1
    assert torch.equal(hp.scheduler.masks["fc1.weight"], straight_hp.scheduler.masks["fc1.weight"])
    assert_same_weights(model.net, straight_model.net)


def test_resume_without_the_schedules_state_is_refused(tmp_path):
    first, _, _ = make(tmp_path, PRUNE_ONLY, 1, trainer_cls=Trainer, save_strategy="epoch")
    first.train()
    (tmp_path / f"checkpoint-{BATCHES}" / STATE_FILE).unlink()
    resumed, _, _ = make(tmp_path, PRUNE_ONLY, 2, trainer_cls=Trainer)
    with pytest.raises(HookpruneSetupError, match=rf"resumes at global step {BATCHES}, but .*{STATE_FILE}' does not "
                                                  "exist, so the masks and the schedule's progress would be lost"):
        resumed.train(resume_from_checkpoint=True)


def test_hookprune_plugins_lists_this_integration_with_its_distribution(capsys):
    from importlib.metadata import version

    from hookprune.cli import main

    assert main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = lines[lines.index("Trainer integrations (entry point group 'hookprune.integrations'):") + 1:]
    expected = ["transformers", "hookprune-transformers", version("hookprune-transformers")]
    assert any(line.split()[:3] == expected for line in listed), listed
