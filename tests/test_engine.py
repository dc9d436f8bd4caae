"""The engine's contract with plugins: policies and windows, the schedule-class members it reads, tracing,
disabling hook plugins, and one protocol for built-ins and third parties alike."""

from __future__ import annotations

import ast
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import hookprune
from hookprune import hookimpl
from hookprune._engine.registry import PLUGINS_GROUP
from hookprune._engine.windows import Window
from hookprune.testing import EventRecorder, random_batches, train

ROOT = Path(__file__).resolve().parents[1]
STEP = {"epoch": 0, "minibatch_id": 0, "minibatches_per_epoch": 1}


def test_a_window_of_a_billion_epochs_costs_what_a_short_one_costs(lenet):
    sched = hookprune.CompressionScheduler(lenet)
    recorder = EventRecorder()
    tic = time.perf_counter()
    sched.add_policy(recorder, starting_epoch=0, ending_epoch=10**9, frequency=3)
    assert time.perf_counter() - tic < 0.5
    (policy,) = sched.scheduled
    assert (999_999_999 in policy.window, 999_999_998 in policy.window) == (True, False)
    assert policy.window.last == 999_999_999
    sched.fire("on_epoch_begin", epoch=999_999_999)
    assert recorder.log == [("on_epoch_begin", 999_999_999, None)]


def test_windows_intersect_exactly_as_their_epochs_do():
    assert Window(starting_epoch=0, ending_epoch=100, frequency=4).intersects(
        Window(starting_epoch=2, ending_epoch=100, frequency=6))            # 14, 26, ...
    assert not Window(starting_epoch=0, ending_epoch=100, frequency=4).intersects(
        Window(starting_epoch=1, ending_epoch=100, frequency=2))            # odd against multiples of 4
    assert not Window(starting_epoch=0, ending_epoch=10, frequency=3).intersects(Window(epochs=[1, 2, 4, 5, 7, 8]))
    assert Window(epochs=[9]).intersects(Window(starting_epoch=0, ending_epoch=10, frequency=3))


def test_one_instance_under_two_policies_with_a_common_epoch_is_refused(lenet):
    sched = hookprune.CompressionScheduler(lenet)
    recorder = EventRecorder()
    sched.add_policy(recorder, starting_epoch=0, ending_epoch=10, frequency=2, name="rec")
    with pytest.raises(ValueError, match=r"^rec: its policies #1 and #2 both cover epoch 4; give the policies of "
                                         r"one instance disjoint epochs$"):
        sched.add_policy(recorder, starting_epoch=1, ending_epoch=10, frequency=3, name="rec")
    sched.add_policy(recorder, epochs=[1, 3], name="rec")
    assert [p.window.first for p in sched.scheduled] == [0, 1]


def test_the_policy_an_instance_acts_under_is_the_one_covering_the_epoch(lenet):
    class Watcher:
        def __init__(self):
            self.seen = []

        @hookimpl
        def on_epoch_begin(self, scheduler, epoch):
            policy = scheduler.policy_of(self)
            self.seen.append((epoch, policy.index, dict(policy.args)))

        policy_args = {"tag": str}

    sched = hookprune.CompressionScheduler(lenet)
    watcher = Watcher()
    sched.add_policy(watcher, epochs=[0, 2], args={"tag": "a"})
    sched.add_policy(watcher, epochs=[1], args={"tag": "b"})
    for epoch in range(4):
        sched.fire("on_epoch_begin", epoch=epoch)
    assert watcher.seen == [(0, 0, {"tag": "a"}), (1, 1, {"tag": "b"}), (2, 0, {"tag": "a"})]
    assert sched.policy_of(watcher, 3) is None
    with pytest.raises(hookprune.ArgumentError,
                       match=r"unknown policy arg 'tg' \(did you mean 'tag'\?\); it takes: tag"):
        sched.add_policy(watcher, epochs=[5], args={"tg": "c"})


def test_the_engine_reads_the_schedule_class_members(lenet):
    class Full:
        runs_last = True
        sets_masks = False
        policy_args = {"every": int}

        def __init__(self):
            self.attached = 0
            self.checked = []
            self.log = []

        def check_policy(self, policy):
            if policy.arg("every", 1) < 1:
                raise hookprune.ArgumentError("every", "'every' must be >= 1")
            self.checked.append(policy.index)

        def attach(self, scheduler):
            self.attached += 1

        def idle_hooks(self, policy):
            return () if policy.arg("every", 1) == 1 else ("on_minibatch_begin",)

        @hookimpl
        def on_epoch_begin(self, epoch):
            self.log.append(("full", epoch))

        @hookimpl
        def on_minibatch_begin(self, epoch):
            self.log.append(("minibatch", epoch))

    class First:
        def __init__(self, log):
            self.log = log

        @hookimpl
        def on_epoch_begin(self, epoch):
            self.log.append(("first", epoch))

    sched = hookprune.CompressionScheduler(lenet)
    full = Full()
    sched.add_policy(full, epochs=[0])
    sched.add_policy(full, epochs=[1], args={"every": 2})
    sched.add_policy(First(full.log), epochs=[0, 1])
    with pytest.raises(hookprune.ArgumentError, match="'every' must be >= 1"):
        sched.add_policy(full, epochs=[2], args={"every": 0})
    assert (full.attached, full.checked) == (1, [0, 1])
    for epoch in (0, 1):
        sched.fire("on_epoch_begin", epoch=epoch)
        sched.fire("on_minibatch_begin", epoch=epoch, minibatch_id=0, minibatches_per_epoch=1)
    assert full.log == [("first", 0), ("full", 0), ("minibatch", 0), ("first", 1), ("full", 1)]


def test_tracing_sees_every_hook_call_with_its_arguments_and_result(lenet):
    calls = []
    sched = hookprune.load({"pruners": {"agp": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.1,
                                                "final_sparsity": 0.5, "weights": ["fc1.weight"]}},
                            "regularizers": {"l1": {"class": "L1Regularizer", "reg_regims": {"fc2.weight": 0.001}}},
                            "policies": [{"pruner": {"instance_name": "agp"}, "starting_epoch": 0, "ending_epoch": 3},
                                         {"regularizer": {"instance_name": "l1"}, "epochs": [0]}]}, lenet)
    stop = sched.trace(lambda event, label, kwargs: calls.append((event, label, sorted(kwargs))),
                       lambda event, label, result: calls.append((event, label, type(result).__name__)))
    sched.fire("on_epoch_begin", epoch=0)
    sched.fire("before_backward", **STEP, loss=torch.tensor(1.0))
    stop()
    sched.fire("on_epoch_begin", epoch=1)
    assert calls == [
        ("on_epoch_begin", "pruners.agp (AutomatedGradualPruner)", ["epoch", "scheduler"]),
        ("on_epoch_begin", "pruners.agp (AutomatedGradualPruner)", "NoneType"),
        ("before_backward", "regularizers.l1 (L1Regularizer)", ["loss", "scheduler"]),
        ("before_backward", "regularizers.l1 (L1Regularizer)", "LossTerm"),
    ]


def test_hookprune_trace_prints_every_hook_call_to_stderr():
    code = ("import torch, hookprune\n"
            "from hookprune.testing import EventRecorder\n"
            "sched = hookprune.CompressionScheduler(torch.nn.Linear(2, 2))\n"
            "sched.add_policy(EventRecorder(), epochs=[0], name='recorder')\n"
            "sched.fire('on_epoch_begin', epoch=0)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**_env(), "HOOKPRUNE_TRACE": "1"})
    assert out.stderr.splitlines() == ["hookprune: on_epoch_begin -> recorder(epoch=0)"]


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "HOOKPRUNE_TRACE"}


def test_an_autoloaded_hook_plugin_can_be_disabled_by_name(lenet, monkeypatch):
    from hookprune._engine import registry, scheduler

    class Logger:
        sets_masks = False

        def __init__(self):
            self.epochs = []

        @hookimpl
        def on_epoch_begin(self, epoch):
            self.epochs.append(epoch)

    logger = Logger()
    provider = registry.Provider("tiny-logger", "tiny:plugin", "tiny-dist", "1.0", None)
    monkeypatch.setattr(scheduler, "autoloaded_plugins", lambda: (registry.LoadedPlugin(provider, logger),))
    sched = hookprune.CompressionScheduler(lenet)
    assert sched.plugins() == {f"{PLUGINS_GROUP}:tiny-logger": logger}
    sched.fire("on_epoch_begin", epoch=0)
    sched.disable_plugin("tiny-logger")
    sched.fire("on_epoch_begin", epoch=1)
    assert logger.epochs == [0] and sched.plugins() == {}
    with pytest.raises(ValueError, match=r"no auto-loaded hook plugin 'tiny-loger'; loaded: none"):
        sched.disable_plugin("tiny-loger")


def test_the_plugin_manager_is_private(lenet):
    sched = hookprune.CompressionScheduler(lenet)
    assert not hasattr(sched, "pm")


def test_built_in_classes_speak_only_the_hook_protocol():
    """Distiller's per-parameter protocol lives in the compatibility adapter alone; the engine knows no built-in."""
    for path in (ROOT / "hookprune").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if path.parts[-2] != "compat":
            assert "set_param_mask" not in text, path
            assert "zeros_mask_dict" not in text or path.name == "__init__.py", path
    algorithms = ("pruning", "regularization", "quantization", "thinning", "knowledge_distillation", "lr")
    for path in (ROOT / "hookprune" / "_engine").glob("*.py"):
        imported = [node for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                    if isinstance(node, ast.ImportFrom) and node.module]
        assert not [n.module for n in imported if any(f"hookprune.{a}" in n.module for a in algorithms)
                    and n.module != "hookprune.thinning"], path


def test_built_in_and_third_party_classes_reach_hooks_the_same_way(lenet):
    sched = hookprune.load({"pruners": {"agp": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.1,
                                                "final_sparsity": 0.5, "weights": ["fc1.weight"]}},
                            "policies": [{"pruner": {"instance_name": "agp"}, "starting_epoch": 0, "ending_epoch": 3}]},
                           lenet)
    agp = sched.instances["agp"]
    assert list(sched.plugins().values()) == [agp]
    assert sched.policy_of(agp, 0).kind == "pruner"
    train(sched, lenet, torch.optim.SGD(lenet.parameters(), lr=0.1), random_batches(1), epochs=3)
    assert int((lenet.fc1.weight == 0).sum()) == int(0.5 * lenet.fc1.weight.numel())
