"""Step windows: a policy counting global steps (minibatches over the whole run) rather than epochs, so that a
single epoch can prune gradually."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

import hookprune
from hookprune import hookimpl, models
from hookprune.errors import ScheduleError
from hookprune.pruning.levels import agp_target

BATCH = 64
DIGITS = load_digits()
X = torch.tensor(DIGITS.data / 16, dtype=torch.float32)
Y = torch.tensor(DIGITS.target, dtype=torch.long)
#: 1797 digits in batches of 64: 29 minibatches per epoch
BATCHES = [(X[i:i + BATCH], Y[i:i + BATCH]) for i in range(0, len(Y), BATCH)]


def schedule(start: int = 4, end: int = 25, frequency: int = 3, **extra: object) -> dict:
    """AGP from 10% to 80% in fc1 and fc2 over the global steps ``range(start, end, frequency)``."""
    return {"version": 1,
            "pruners": {"agp": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.1, "final_sparsity": 0.8,
                                "weights": ["fc1.weight", "fc2.weight"]}},
            "policies": [{"pruner": {"instance_name": "agp"}, "starting_step": start, "ending_step": end,
                          "step_frequency": frequency, **extra}]}


def lenet() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = models.create_model("lenet300_100", input_features=64)
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)


def train(sched: hookprune.CompressionScheduler, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
          epochs: range, stop_after: int | None = None, start_batch: int = 0, seen: list | None = None) -> int:
    """The plain loop; returns the minibatch after which it stopped (``stop_after``), else -1. ``seen`` gets each
    step's (global step, fc1 sparsity) right after ``on_minibatch_begin``."""
    for epoch in epochs:
        if start_batch == 0:
            sched.fire("on_epoch_begin", epoch=epoch)
        for i in range(start_batch, len(BATCHES)):
            x, y = BATCHES[i]
            step = {"epoch": epoch, "minibatch_id": i, "minibatches_per_epoch": len(BATCHES)}
            sched.fire("on_minibatch_begin", **step)
            if seen is not None:
                seen.append((sched.global_step, (model.fc1.weight == 0).sum().item() / model.fc1.weight.numel()))
            loss = sched.fire("before_backward", **step, loss=F.cross_entropy(model(x), y))
            optimizer.zero_grad()
            loss.backward()
            sched.fire("before_optimizer_step", **step)
            optimizer.step()
            sched.fire("on_minibatch_end", **step)
            if stop_after is not None and i == stop_after:
                return i
        start_batch = 0
        sched.fire("on_epoch_end", epoch=epoch, metrics={})
    return -1


def test_agp_over_steps_follows_the_curve_and_reaches_the_final_level_at_its_last_step():
    model, optimizer = lenet()
    sched = hookprune.load(schedule(), model, optimizer)
    seen: list[tuple[int, float]] = []
    train(sched, model, optimizer, range(1), seen=seen)
    numel = model.fc1.weight.numel()
    expected = {step: int(agp_target(0.1, 0.8, 4, 25, 3, step) * numel) / numel for step in range(4, 25, 3)}
    assert [s for s, _ in seen] == list(range(len(BATCHES)))
    levels = dict(seen)
    assert all(levels[s] == 0 for s in range(4))
    for step, level in expected.items():
        assert levels[step] == level, step
        # between pruning steps the level holds: the masks are re-applied after every optimizer step
        assert all(levels[s] == level for s in range(step, min(step + 3, len(BATCHES))))
    assert levels[22] == int(0.8 * numel) / numel
    # halfway through the 18 steps the cubic has 1/8 of its way left: 0.8 - 0.7 / 8
    assert levels[13] == int(0.7125 * numel) / numel
    assert (model.fc1.weight == 0).sum().item() == int(0.8 * numel)
    assert (model.fc2.weight == 0).sum().item() == int(0.8 * model.fc2.weight.numel())


def test_a_step_window_spans_epochs_and_its_instance_hears_only_its_steps():
    model, optimizer = lenet()
    sched = hookprune.load(schedule(start=20, end=50, frequency=5), model, optimizer)
    heard: list[tuple[str, int]] = []
    sched.trace(lambda event, label, kwargs: heard.append((event, sched.global_step)))
    seen: list[tuple[int, float]] = []
    train(sched, model, optimizer, range(2), seen=seen)
    assert heard == [("on_minibatch_begin", step) for step in range(20, 50, 5)]
    assert sched.step_span() == (20, 45) and sched.epoch_span() is None
    assert dict(seen)[45] == int(0.8 * 300 * 64) / (300 * 64)


def test_resuming_mid_window_gives_the_uninterrupted_runs_masks_bit_for_bit():
    reference_model, reference_optimizer = lenet()
    reference = hookprune.load(schedule(start=10, end=50), reference_model, reference_optimizer)
    train(reference, reference_model, reference_optimizer, range(2))

    model, optimizer = lenet()
    sched = hookprune.load(schedule(start=10, end=50), model, optimizer)
    stopped = train(sched, model, optimizer, range(2), stop_after=17)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "sched": sched.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert saved["sched"]["global_step"] == 17

    resumed_model, resumed_optimizer = lenet()
    resumed = hookprune.load(schedule(start=10, end=50), resumed_model, resumed_optimizer)
    resumed.load_state_dict(saved["sched"])
    resumed_model.load_state_dict(saved["model"])
    resumed_optimizer.load_state_dict(saved["optimizer"])
    train(resumed, resumed_model, resumed_optimizer, range(2), start_batch=stopped + 1)

    assert resumed.global_step == reference.global_step == 2 * len(BATCHES) - 1
    reference_masks = reference.masks.state_dict()["masks"]
    assert set(reference_masks) == {"fc1.weight", "fc2.weight"}
    for name, mask in reference_masks.items():
        assert torch.equal(resumed.masks[name], mask), name
    for name, value in reference_model.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[name], value), name


def test_add_policy_takes_a_step_window():
    model, optimizer = lenet()
    sched = hookprune.CompressionScheduler(model, optimizer=optimizer)
    pruner = hookprune.load(schedule(), model, optimizer).instances["agp"]
    sched.add_policy(hookprune.PruningPolicy(pruner, {}), starting_step=0, ending_step=4, step_frequency=3)
    seen: list[tuple[int, float]] = []
    train(sched, model, optimizer, range(1), seen=seen)
    assert dict(seen)[3] == int(0.8 * 300 * 64) / (300 * 64)
    with pytest.raises(ValueError, match=r"give either epochs or steps, not both \('ending_epoch' and 'starting_step'"):
        sched.add_policy(hookprune.PruningPolicy(pruner, {}), ending_epoch=3, starting_step=0, ending_step=4)


@pytest.mark.parametrize(("extra", "drop", "message"), [
    ({"starting_epoch": 0}, (), r"s\.yaml:\d+:\d+: policy #1: give either epochs \(starting_epoch\) or steps "
                                r"\(starting_step, ending_step, step_frequency\), not both$"),
    ({}, ("ending_step",), r"s\.yaml:\d+:\d+: policy #1: 'ending_step' is required$"),
    ({"ending_step": 4}, (), r"s\.yaml:\d+:\d+: policy #1: 'ending_step' \(4\) must be greater than "
                             r"'starting_step' \(4\)$"),
    ({"step_frequency": 0}, (), r"s\.yaml:\d+:\d+: policy #1: 'step_frequency' must be between 1 and "
                                r"ending_step - starting_step \(21\), got 0$"),
    ({"step_frequency": 21}, (), r"s\.yaml:\d+:\d+: pruners\.agp \(AutomatedGradualPruner\): an AGP policy needs "
                                 r"at least two pruning steps: ending_step - starting_step \(21\) must exceed "
                                 r"step_frequency \(21\)$"),
])
def test_bad_step_windows_are_one_line_naming_the_yaml_position(tmp_path, extra, drop, message):
    import yaml

    data = schedule()
    policy = data["policies"][0]
    policy.update(extra)
    for key in drop:
        del policy[key]
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    model, optimizer = lenet()
    with pytest.raises(ScheduleError) as raised:
        hookprune.load(str(path), model, optimizer)
    assert "\n" not in str(raised.value)
    assert raised.match(message)


@pytest.mark.parametrize(("args", "message"), [
    ({"mini_batch_pruning_frequency": 2}, "'mini_batch_pruning_frequency' counts minibatches within epochs"),
    ({"keep_mask": True}, "'keep_mask' acts at epoch boundaries, which a step window does not have"),
])
def test_epoch_bound_pruner_args_are_refused_under_a_step_window(args, message):
    data = schedule()
    data["policies"][0]["pruner"]["args"] = args
    model, optimizer = lenet()
    with pytest.raises(ScheduleError, match=message):
        hookprune.load(data, model, optimizer)


def test_an_lr_scheduler_under_a_step_window_is_refused():
    data = {"version": 1, "lr_schedulers": {"decay": {"class": "ExponentialLR", "gamma": 0.9}},
            "policies": [{"lr_scheduler": {"instance_name": "decay"}, "starting_step": 0, "ending_step": 10}]}
    model, optimizer = lenet()
    with pytest.raises(ScheduleError, match="implements only epoch hooks, which a step window never calls"):
        hookprune.load(data, model, optimizer)


class Heard:
    """Records each minibatch event it hears with the global step and the window it acts under, and every epoch
    event."""

    def __init__(self) -> None:
        self.log: list[tuple[str, int, object]] = []

    @hookimpl
    def on_epoch_begin(self, epoch: int) -> None:
        self.log.append(("on_epoch_begin", epoch, None))

    @hookimpl
    def on_minibatch_begin(self, scheduler) -> None:
        self.log.append(("on_minibatch_begin", scheduler.global_step, scheduler.policy_of(self).window))

    @hookimpl
    def on_minibatch_end(self, scheduler) -> None:
        self.log.append(("on_minibatch_end", scheduler.global_step, scheduler.policy_of(self).window))


def test_one_instance_under_several_step_windows_hears_each_and_no_epoch_event():
    model, optimizer = lenet()
    sched = hookprune.CompressionScheduler(model, optimizer=optimizer)
    heard = Heard()
    sched.add_policy(heard, starting_step=2, ending_step=8, step_frequency=3)
    sched.add_policy(heard, starting_step=27, ending_step=31)
    first, second = (policy.window for policy in sched.scheduled)
    train(sched, model, optimizer, range(2))
    assert heard.log == [(event, step, first if step < 8 else second) for step in (2, 5, 27, 28, 29, 30)
                         for event in ("on_minibatch_begin", "on_minibatch_end")]
    with pytest.raises(ValueError, match=r"both cover step 29; give the policies of one instance disjoint steps"):
        sched.add_policy(heard, starting_step=29, ending_step=40)
    with pytest.raises(ValueError, match=r"its policy #3 counts epochs and an earlier one counts steps; give the "
                                         r"policies of one instance windows of one kind"):
        sched.add_policy(heard, starting_epoch=3, ending_epoch=4)
