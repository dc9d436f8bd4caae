"""Which instance hears which event, in which order, and what ``before_backward`` returns."""

from __future__ import annotations

import pytest
import torch

import hookprune
from hookprune import LossTerm, hookimpl
from hookprune.testing import EventRecorder, random_batches, train


class Recorder:
    """Records every event with its epoch and minibatch."""

    def __init__(self, log: list, tag: str) -> None:
        self.log = log
        self.tag = tag

    @hookimpl
    def on_epoch_begin(self, epoch):
        self.log.append((self.tag, "on_epoch_begin", epoch, None))

    @hookimpl
    def on_minibatch_begin(self, epoch, minibatch_id):
        self.log.append((self.tag, "on_minibatch_begin", epoch, minibatch_id))

    @hookimpl
    def before_backward(self, epoch, minibatch_id, loss):
        self.log.append((self.tag, "before_backward", epoch, minibatch_id))

    @hookimpl
    def before_optimizer_step(self, epoch, minibatch_id):
        self.log.append((self.tag, "before_optimizer_step", epoch, minibatch_id))

    @hookimpl
    def on_minibatch_end(self, epoch, minibatch_id):
        self.log.append((self.tag, "on_minibatch_end", epoch, minibatch_id))

    @hookimpl
    def on_epoch_end(self, epoch, metrics):
        self.log.append((self.tag, "on_epoch_end", epoch, None))


def expected_events(tag, epochs, batches=2):
    events = []
    for e in epochs:
        events.append((tag, "on_epoch_begin", e, None))
        for i in range(batches):
            events += [(tag, name, e, i) for name in ("on_minibatch_begin", "before_backward",
                                                     "before_optimizer_step", "on_minibatch_end")]
        events.append((tag, "on_epoch_end", e, None))
    return events


def test_instance_hears_every_event_of_its_window_and_nothing_else(lenet):
    log: list = []
    sched = hookprune.CompressionScheduler(lenet)
    sched.add_policy(Recorder(log, "r"), starting_epoch=1, ending_epoch=6, frequency=2)
    train(sched, lenet, torch.optim.SGD(lenet.parameters(), lr=0.1), random_batches(), epochs=7)
    assert log == expected_events("r", [1, 3, 5])


def test_the_event_recorder_plugin_authors_use_records_the_loops_events(lenet):
    recorder = EventRecorder()
    sched = hookprune.CompressionScheduler(lenet)
    sched.add_policy(recorder, starting_epoch=0, ending_epoch=2)
    train(sched, lenet, torch.optim.SGD(lenet.parameters(), lr=0.1), random_batches(), epochs=2)
    assert [("r", *event) for event in recorder.log] == expected_events("r", [0, 1])
    assert recorder.minibatches_per_epoch == {2}
    assert (recorder.count("on_epoch_end"), recorder.count("before_backward")) == (2, 4)
    assert [set(m) for m in recorder.metrics] == [{"min", "max"}] * 2
    assert recorder.metrics[1]["max"] == 0.0
    assert sched.loss_components == {}


def test_epochs_list_and_two_windows_union(lenet):
    log: list = []
    sched = hookprune.CompressionScheduler(lenet)
    rec = Recorder(log, "r")
    sched.add_policy(rec, epochs=[0, 4])
    sched.add_policy(rec, starting_epoch=2, ending_epoch=3)
    train(sched, lenet, torch.optim.SGD(lenet.parameters(), lr=0.1), random_batches(1), epochs=5)
    assert log == expected_events("r", [0, 2, 4], batches=1)


def test_instances_run_in_policy_order_lr_schedulers_last(lenet):
    log: list = []
    optimizer = torch.optim.SGD(lenet.parameters(), lr=0.1)
    sched = hookprune.CompressionScheduler(lenet, optimizer=optimizer)

    class LRWatcher(hookprune.LRPolicy):
        @hookimpl
        def on_epoch_end(self, scheduler, epoch, metrics):
            log.append(("lr", "on_epoch_end", epoch, None))

    sched.add_policy(LRWatcher(torch.optim.lr_scheduler.StepLR(optimizer, 1)), epochs=[0])
    sched.add_policy(Recorder(log, "a"), epochs=[0])
    sched.add_policy(Recorder(log, "b"), epochs=[0])
    train(sched, lenet, optimizer, random_batches(1), epochs=1)
    ends = [entry[0] for entry in log if entry[1] == "on_epoch_end"]
    assert ends == ["a", "b", "lr"]
    begins = [entry[0] for entry in log if entry[1] == "on_epoch_begin"]
    assert begins == ["a", "b"]


def test_before_backward_adds_every_term_and_names_them(lenet):
    class Penalty:
        @hookimpl
        def before_backward(self, model):
            return LossTerm("l2", 0.5 * model.fc1.weight.pow(2).sum())

    class Bare:
        @hookimpl
        def before_backward(self, loss):
            return 0.25 * loss

    class Silent:
        @hookimpl
        def before_backward(self, loss):
            return None

    sched = hookprune.CompressionScheduler(lenet)
    sched.add_policy(Penalty(), epochs=[0])
    sched.add_policy(Bare(), epochs=[0], name="quarter")
    sched.add_policy(Silent(), epochs=[0])
    loss = torch.tensor(2.0)
    total = sched.fire("before_backward", epoch=0, minibatch_id=0, minibatches_per_epoch=1, loss=loss)
    l2 = 0.5 * lenet.fc1.weight.pow(2).sum()
    assert torch.equal(total, loss + l2 + 0.25 * loss)
    assert list(sched.loss_components) == ["l2", "quarter"]
    assert torch.equal(sched.loss_components["quarter"], torch.tensor(0.5))
    # outside the window the loss comes back untouched
    untouched = sched.fire("before_backward", epoch=1, minibatch_id=0, minibatches_per_epoch=1, loss=loss)
    assert untouched is loss
    assert sched.loss_components == {}
    distiller_style = sched.before_backward_pass(0, 0, 1, loss, return_loss_components=True)
    assert torch.equal(distiller_style.overall_loss, total)
    assert [c.name for c in distiller_style.loss_components] == ["l2", "quarter"]


def test_bad_before_backward_return_is_named(lenet):
    class Wrong:
        @hookimpl
        def before_backward(self, loss):
            return "oops"

    sched = hookprune.CompressionScheduler(lenet)
    sched.add_policy(Wrong(), epochs=[0], name="wrong")
    with pytest.raises(TypeError, match="wrong: before_backward returned str"):
        sched.fire("before_backward", epoch=0, minibatch_id=0, minibatches_per_epoch=1, loss=torch.tensor(1.0))


def test_error_inside_a_hook_names_the_instance_and_event(lenet):
    class Broken:
        @hookimpl
        def on_epoch_begin(self, epoch):
            raise RuntimeError("boom")

    sched = hookprune.CompressionScheduler(lenet)
    sched.add_policy(Broken(), epochs=[0], name="broken")
    with pytest.raises(RuntimeError, match="boom") as err:
        sched.fire("on_epoch_begin", epoch=0)
    assert any("hook 'on_epoch_begin' of broken" in note for note in err.value.__notes__)


def test_distiller_style_policy_runs_unchanged(lenet):
    calls = []

    class OldPolicy:
        """Written against Distiller's ScheduledTrainingPolicy."""

        def on_epoch_begin(self, model, zeros_mask_dict, meta, **kwargs):
            calls.append(("begin", meta["current_epoch"], meta["starting_epoch"], meta["ending_epoch"]))
            zeros_mask_dict["fc3.weight"].mask = torch.ones_like(model.fc3.weight)

        def before_backward_pass(self, model, epoch, minibatch_id, minibatches_per_epoch, loss,
                                 zeros_mask_dict, optimizer=None):
            extra = torch.tensor(1.0)
            return hookprune.PolicyLoss(loss + extra, [hookprune.LossComponent("extra", extra)])

        def on_minibatch_end(self, model, epoch, minibatch_id, minibatches_per_epoch, zeros_mask_dict,
                             optimizer):
            calls.append(("step", epoch, minibatch_id))

        def on_epoch_end(self, model, zeros_mask_dict, meta, **kwargs):
            calls.append(("end", meta["current_epoch"], kwargs["metrics"]["min"]))

    sched = hookprune.CompressionScheduler(lenet)
    sched.add_policy(OldPolicy(), starting_epoch=0, ending_epoch=2)
    losses = train(sched, lenet, torch.optim.SGD(lenet.parameters(), lr=0.1), random_batches(1), epochs=3)
    assert [c[:2] for c in calls] == [("begin", 0), ("step", 0), ("end", 0), ("begin", 1), ("step", 1), ("end", 1)]
    assert calls[0][2:] == (0, 2)
    assert sched.masks["fc3.weight"].dtype == torch.bool
    assert sched.loss_components == {}  # epoch 2 is outside the window
    assert len(losses) == 3


def test_object_without_hooks_is_refused(lenet):
    sched = hookprune.CompressionScheduler(lenet)
    with pytest.raises(TypeError, match="has no hookimpls and none of Distiller's policy methods"):
        sched.add_policy(object(), epochs=[0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"starting_epoch": 2, "ending_epoch": 2}, "must be greater than 'starting_epoch'"),
        ({"starting_epoch": 0, "ending_epoch": 4, "frequency": 5}, "'frequency' must be between 1 and"),
        ({"epochs": [3, 1]}, "strictly increasing"),
        ({"epochs": []}, "at least one epoch"),
        ({"starting_epoch": None, "ending_epoch": 3}, "'starting_epoch' is required"),
    ],
)
def test_add_policy_checks_its_window(lenet, kwargs, message):
    sched = hookprune.CompressionScheduler(lenet)
    with pytest.raises(ValueError, match=message):
        sched.add_policy(Recorder([], "r"), **kwargs)
