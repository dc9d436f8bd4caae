"""Faults in third-party plugins, with a real distribution installed into a separate folder and used in a
subprocess: a hook that raises is named (plugin, distribution, event) in the error; an entry point that fails
to import is reported once and breaks only the schedules that name it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

DIST_NAME = "hookprune-faultyplugin"
DIST_VERSION = "0.2.0"
LABEL = f"{DIST_NAME} {DIST_VERSION}"
MISSING = "No module named 'hookprune_faulty_missing_dependency'"

FILES = {
    "pyproject.toml": f"""\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "{DIST_NAME}"
version = "{DIST_VERSION}"
requires-python = ">=3.10"

[project.entry-points."hookprune.classes"]
RaisingPruner = "hookprune_faulty:RaisingPruner"
BrokenPruner = "hookprune_faulty.broken:BrokenPruner"

[project.entry-points.hookprune]
broken = "hookprune_faulty.broken"
reporter = "hookprune_faulty.reporter"

[tool.setuptools]
packages = ["hookprune_faulty"]
""",
    # the class is re-exported by the package, which its entry point names
    "hookprune_faulty/__init__.py": """\
from hookprune_faulty.pruners import RaisingPruner

__all__ = ["RaisingPruner"]
""",
    "hookprune_faulty/pruners.py": """\
from hookprune import hookimpl


class RaisingPruner:
    def __init__(self, name: str, fail_at: int) -> None:
        self.fail_at = fail_at

    @hookimpl
    def on_minibatch_begin(self, epoch: int) -> None:
        if epoch == self.fail_at:
            raise RuntimeError(f"disk full at epoch {epoch}")
""",
    "hookprune_faulty/broken.py": """\
import hookprune_faulty_missing_dependency  # noqa: F401


class BrokenPruner:
    pass
""",
    "hookprune_faulty/reporter.py": """\
import os

from hookprune import hookimpl


@hookimpl
def on_epoch_end(epoch: int) -> None:
    if os.environ.get("FAULTY_REPORTER_RAISES") == "1":
        raise ValueError(f"cannot write the report of epoch {epoch}")
""",
}

AGP = """\
version: 1
pruners:
  agp:
    class: AutomatedGradualPruner
    initial_sparsity: 0.2
    final_sparsity: 0.5
    weights: [fc1.weight]
policies:
  - pruner: {instance_name: agp}
    starting_epoch: 0
    ending_epoch: 2
"""

BROKEN = """\
version: 1
pruners:
  broken:
    class: BrokenPruner
policies:
  - pruner: {instance_name: broken}
    epochs: [0]
"""

RAISING = """\
version: 1
pruners:
  raiser:
    class: RaisingPruner
    fail_at: 1
policies:
  - pruner: {instance_name: raiser}
    starting_epoch: 0
    ending_epoch: 3
"""

# Builds schedulers with and without the faulty names; prints a JSON report on its last line.
SCRIPT = """\
import json
import os
import sys
import traceback
import warnings

import torch

import hookprune
from hookprune._engine import registry as plugins
from hookprune.models import create_model


def train(schedule, epochs):
    model = create_model("lenet300_100", input_features=64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = hookprune.load(schedule, model, optimizer)
    x, y = torch.randn(4, 64), torch.randint(0, 10, (4,))
    for epoch in range(epochs):
        sched.fire("on_epoch_begin", epoch=epoch)
        step = dict(epoch=epoch, minibatch_id=0, minibatches_per_epoch=1)
        sched.fire("on_minibatch_begin", **step)
        loss = sched.fire("before_backward", **step, loss=torch.nn.functional.cross_entropy(model(x), y))
        optimizer.zero_grad()
        loss.backward()
        sched.fire("before_optimizer_step", **step)
        optimizer.step()
        sched.fire("on_minibatch_end", **step)
        sched.fire("on_epoch_end", epoch=epoch)
    return int((model.fc1.weight == 0).sum())


def failure(schedule, epochs):
    try:
        train(schedule, epochs)
    except Exception as exc:
        return "".join(traceback.format_exception(exc)).rstrip().splitlines()[-2:]
    return None


report = {}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    report["zeros"] = [train(sys.argv[1], 2) for _ in range(3)]
    try:
        train(sys.argv[2], 1)
    except hookprune.ScheduleError as exc:
        report["broken_schedule"] = str(exc)
    report["zeros"].append(train(sys.argv[1], 2))
report["load_warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught
                           if "hookprune-faultyplugin" in str(w.message)]
report["hook_plugins"] = sorted(p.provider.name for p in plugins.autoloaded_plugins())
report["raising_instance"] = failure(sys.argv[3], 3)
os.environ["FAULTY_REPORTER_RAISES"] = "1"
report["raising_hook_plugin"] = failure(sys.argv[1], 2)
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def faulty_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The faulty distribution, installed offline into a folder of its own."""
    root = tmp_path_factory.mktemp("faulty")
    source = root / "src"
    for name, text in FILES.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(text)
    site = root / "site"
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_CACHE_DIR": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
         "--target", str(site), str(source)],
        capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, f"pip install failed:\n{proc.stdout}\n{proc.stderr}"
    return site


def run_python(site: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HOOKPRUNE_DISABLE_PLUGIN_AUTOLOAD",
                                                             "FAULTY_REPORTER_RAISES")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=120, check=False)
    assert proc.returncode == 0, f"{args} exited with {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def report(faulty_site: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("faulty_run")
    paths = []
    for name, text in (("agp.yaml", AGP), ("broken.yaml", BROKEN), ("raising.yaml", RAISING), ("run.py", SCRIPT)):
        (folder / name).write_text(text)
        paths.append(str(folder / name))
    proc = run_python(faulty_site, [paths[3], *paths[:3]], folder)
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "folder": str(folder)}


def test_failed_hook_plugin_import_is_reported_once(report):
    assert report["load_warnings"] == [
        f"PluginLoadWarning: hookprune plugin 'broken' from {LABEL} failed to import and is skipped: "
        f"ModuleNotFoundError: {MISSING}"]
    # the distribution's other hook plugin is still registered
    assert "reporter" in report["hook_plugins"]
    assert "broken" not in report["hook_plugins"]


def test_schedules_not_naming_a_broken_class_run(report):
    # AGP's target at the last epoch of its 0..2 window is its final 50% of fc1's 300 x 64 weights
    assert report["zeros"] == [int(0.5 * 300 * 64)] * 4


def test_schedule_naming_a_broken_class_gets_one_line(report):
    path = Path(report["folder"]) / "broken.yaml"
    assert report["broken_schedule"] == (f"{path}:4:12: class 'BrokenPruner' from {LABEL} failed to import: "
                                         f"ModuleNotFoundError: {MISSING}")


def test_raising_schedule_instance_is_named_with_its_distribution_and_event(report):
    assert report["raising_instance"] == [
        "RuntimeError: disk full at epoch 1",
        f"hookprune: raised in hook 'on_minibatch_begin' of pruners.raiser (RaisingPruner) (from {LABEL})",
    ]


def test_raising_hook_plugin_is_named_with_its_distribution_and_event(report):
    assert report["raising_hook_plugin"] == [
        "ValueError: cannot write the report of epoch 0",
        f"hookprune: raised in hook 'on_epoch_end' of plugin 'reporter' (from {LABEL})",
    ]


def test_plugins_command_lists_the_rest_and_reports_the_failure_once(faulty_site, tmp_path):
    proc = run_python(faulty_site, ["-m", "hookprune", "plugins"], tmp_path)
    assert proc.stderr.count("failed to import") == 1, proc.stderr
    assert f"hookprune plugin 'broken' from {LABEL} failed to import" in proc.stderr
    listed = {line.split()[0]: line for line in proc.stdout.splitlines()[1:] if line.startswith("  ")}
    # classes are listed from their entry points, without importing them
    assert LABEL in listed["BrokenPruner"] and LABEL in listed["RaisingPruner"]
    assert "hooks: on_epoch_end" in listed["reporter"]
    assert "broken" not in listed
