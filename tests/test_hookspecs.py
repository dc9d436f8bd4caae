"""The hook specification is the public contract: names, arguments and the event enum agree."""

from __future__ import annotations

import inspect

import pytest
import torch

import hookprune
from hookprune import Event, hookimpl, hookspecs
from hookprune._engine.registry import HOOK_NAMES
from hookprune.events import EVENT_ARGS

STEP = ("scheduler", "model", "optimizer", "epoch", "minibatch_id", "minibatches_per_epoch")
CONTRACT = {
    "on_epoch_begin": ("scheduler", "model", "optimizer", "epoch"),
    "on_minibatch_begin": STEP,
    "before_backward": (*STEP, "loss"),
    "before_optimizer_step": STEP,
    "on_minibatch_end": STEP,
    "on_epoch_end": ("scheduler", "model", "optimizer", "epoch", "metrics"),
}


def test_hooks_have_exactly_the_documented_arguments():
    assert set(HOOK_NAMES) == set(CONTRACT)
    for name, args in CONTRACT.items():
        spec = getattr(hookspecs, name)
        assert tuple(inspect.signature(spec).parameters) == args
        assert spec.__doc__ and len(spec.__doc__.strip()) > 20


def test_event_enum_mirrors_the_hook_names():
    assert [e.value for e in Event] == list(CONTRACT)
    for event, args in EVENT_ARGS.items():
        assert ("scheduler", "model", "optimizer", *args) == CONTRACT[event.value]


def test_unknown_event_is_rejected_with_the_valid_ones(lenet):
    sched = hookprune.CompressionScheduler(lenet)
    with pytest.raises(ValueError, match="unknown event 'on_epoch_start'; events are: on_epoch_begin, "):
        sched.fire("on_epoch_start", epoch=0)


def test_missing_and_unexpected_arguments_are_named(lenet):
    sched = hookprune.CompressionScheduler(lenet)
    with pytest.raises(TypeError, match="missing minibatches_per_epoch; unexpected batch"):
        sched.fire("on_minibatch_begin", epoch=0, minibatch_id=0, batch=3)


def test_misspelled_hook_names_the_plugin_and_where_it_is(lenet):
    class Typo:
        @hookimpl
        def on_epoch_start(self, epoch):
            pass

    sched = hookprune.CompressionScheduler(lenet)
    with pytest.raises(hookprune.ScheduleError) as err:
        sched.add_policy(Typo(), starting_epoch=0, ending_epoch=2, name="typo")
    message = str(err.value)
    assert "test_hookspecs.py:" in message
    assert "typo (from module tests.test_hookspecs) implements unknown hook 'on_epoch_start'" in message
    assert "(did you mean 'on_epoch_end' or 'on_epoch_begin'?)" in message


def test_hook_argument_with_a_default_is_refused(lenet):
    class Defaulted:
        @hookimpl
        def on_epoch_begin(self, epoch=0):
            pass

    sched = hookprune.CompressionScheduler(lenet)
    with pytest.raises(hookprune.ScheduleError, match="argument 'epoch' of hook 'on_epoch_begin' has a default"):
        sched.add_policy(Defaulted(), epochs=[0])


def test_hook_asking_for_an_argument_it_is_not_given(lenet):
    class Greedy:
        @hookimpl
        def on_epoch_begin(self, loss):
            pass

    sched = hookprune.CompressionScheduler(lenet)
    with pytest.raises(hookprune.ScheduleError, match="asks for argument 'loss', which it is not given"):
        sched.add_policy(Greedy(), epochs=[0])


def test_module_level_fire_needs_an_active_scheduler(lenet):
    from hookprune._engine import scheduler as scheduler_module

    scheduler_module.set_active(None)
    with pytest.raises(RuntimeError, match="no active compression scheduler"):
        hookprune.fire("on_epoch_begin", epoch=0)
    sched = hookprune.CompressionScheduler(lenet)
    with sched:
        assert hookprune.active() is sched
        hookprune.fire(Event.ON_EPOCH_BEGIN, epoch=0)
    assert sched.epoch == 0
    torch.manual_seed(0)
