"""A real third-party distribution (tests/plugin_dist), installed into a separate folder and loaded
through entry points in subprocesses, so this process never imports its auto-loaded hook plugin."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

PLUGIN_DIST = Path(__file__).parent / "plugin_dist"
DIST_NAME = "hookprune-testplugin"
DIST_VERSION = tomllib.loads((PLUGIN_DIST / "pyproject.toml").read_text())["project"]["version"]
DISABLE_AUTOLOAD = "HOOKPRUNE_DISABLE_PLUGIN_AUTOLOAD"

EPOCHS = 5
MINIBATCHES = 2
SPARSITY = 0.3
PENALTY = 0.001

COUNTING_SCHEDULE = f"""\
version: 1
pruners:
  counter:
    class: CountingPruner
    weights: [module.fc1.weight, fc2.weight]
    sparsity: {SPARSITY}
    penalty: {PENALTY}
policies:
  - pruner:
      instance_name: counter
    starting_epoch: 1
    ending_epoch: 4
    frequency: 2
"""

AGP_SCHEDULE = """\
version: 1
pruners:
  agp:
    class: AutomatedGradualPruner
    initial_sparsity: 0.1
    final_sparsity: 0.5
    weights: [fc1.weight]
policies:
  - pruner:
      instance_name: agp
    starting_epoch: 0
    ending_epoch: 3
    frequency: 1
"""

# A plain training loop driven by hookprune.fire; prints a JSON report on its last line.
LOOP_SCRIPT = f"""\
import json
import sys

import torch

import hookprune
from hookprune.models import create_model

torch.manual_seed(0)
model = create_model("lenet300_100", input_features=64)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
sched = hookprune.load(sys.argv[1], model, optimizer)
criterion = torch.nn.CrossEntropyLoss()
batches = [(torch.randn(8, 64), torch.randint(0, 10, (8,))) for _ in range({MINIBATCHES})]
params = dict(model.named_parameters())
counter = sched.instances.get("counter")
steps = []
for epoch in range({EPOCHS}):
    hookprune.fire("on_epoch_begin", epoch=epoch)
    for i, (x, y) in enumerate(batches):
        mb = dict(epoch=epoch, minibatch_id=i, minibatches_per_epoch={MINIBATCHES})
        hookprune.fire("on_minibatch_begin", **mb)
        loss = criterion(model(x), y)
        total = hookprune.fire("before_backward", loss=loss, **mb)
        step = {{"epoch": epoch, "minibatch_id": i, "components": sorted(sched.loss_components),
                "total_is_loss": torch.equal(total, loss)}}
        if counter is not None:
            squares = sum(params[w].pow(2).sum() for w in counter.weights)
            expected_term = counter.penalty * squares
            term = sched.loss_components.get("counting_penalty")
            step["term_exact"] = term is not None and torch.equal(term, expected_term)
            step["total_exact"] = term is not None and torch.equal(total, loss + expected_term)
        steps.append(step)
        total.backward()
        hookprune.fire("before_optimizer_step", **mb)
        optimizer.step()
        optimizer.zero_grad()
        hookprune.fire("on_minibatch_end", **mb)
    hookprune.fire("on_epoch_end", epoch=epoch, metrics={{"min": 0.0}})

tracer_loaded = "hookprune_testplugin.tracer" in sys.modules
from hookprune_testplugin import tracer  # noqa: E402

report = {{
    "steps": steps,
    "zeros": {{name: int((p == 0).sum()) for name, p in params.items()}},
    "numel": {{name: p.numel() for name, p in params.items()}},
    "tracer_loaded": tracer_loaded,
    "epochs_seen": tracer.EPOCHS_SEEN,
}}
if counter is not None:
    state = sched.state_dict()
    fresh = hookprune.build(sys.argv[1], model, optimizer)
    fresh.load_state_dict(state)
    report.update(
        weights=counter.weights,
        seen=counter.seen,
        state=state["instances"].get("counter"),
        restored_seen_count=fresh.instances["counter"].seen_count,
    )
print(json.dumps(report))
"""

NO_IMPORT_SCRIPT = """\
import sys

import torch

import hookprune
from hookprune._engine import registry as plugins
from hookprune.models import create_model

# Installed and visible, yet not imported unless a schedule names it.
assert "CountingPruner" in plugins.class_providers(), sorted(plugins.class_providers())
model = create_model("lenet300_100", input_features=64)
sched = hookprune.load(sys.argv[1], model, torch.optim.SGD(model.parameters(), lr=0.1))
hookprune.fire("on_epoch_begin", epoch=0)
assert sched.masks, "the AGP pruner set no mask"
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "hookprune_testplugin")
print("loaded:", loaded)
sys.exit(1 if loaded else 0)
"""


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the plugin distribution is installed into (offline, without its dependencies)."""
    root = tmp_path_factory.mktemp("plugin")
    source = root / "src"
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    shutil.copytree(PLUGIN_DIST, source)
    site = root / "site"
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           "PIP_NO_CACHE_DIR": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--quiet", "--target", str(site), str(source)],
        capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, f"pip install failed:\n{proc.stdout}\n{proc.stderr}"
    assert (site / "hookprune_testplugin" / "__init__.py").is_file()
    return site


def run_python(site: Path, args: list[str], *, autoload: bool = True, disabled: str | None = None,
               cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH")) if p)
    env.pop(DISABLE_AUTOLOAD, None)
    if not autoload:
        env[DISABLE_AUTOLOAD] = "1"
    if disabled is not None:
        env["HOOKPRUNE_DISABLE_PLUGINS"] = disabled
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120, check=False)
    assert proc.returncode == 0, (f"{args} exited with {proc.returncode}\nstdout:\n{proc.stdout}\n"
                                  f"stderr:\n{proc.stderr}")
    return proc


def run_loop(site: Path, folder: Path, schedule: str, *, autoload: bool = True,
             disabled: str | None = None) -> dict[str, Any]:
    script = folder / "loop.py"
    script.write_text(LOOP_SCRIPT)
    schedule_path = folder / "schedule.yaml"
    schedule_path.write_text(schedule)
    proc = run_python(site, [str(script), str(schedule_path)], autoload=autoload, disabled=disabled, cwd=folder)
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def counting_run(plugin_site: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 5-epoch loop under the CountingPruner schedule, with hook plugins auto-loaded."""
    return run_loop(plugin_site, tmp_path_factory.mktemp("counting"), COUNTING_SCHEDULE)


def expected_events(epochs: list[int]) -> list[list[Any]]:
    events: list[list[Any]] = []
    for epoch in epochs:
        events.append(["on_epoch_begin", epoch, None])
        for i in range(MINIBATCHES):
            events += [[name, epoch, i] for name in
                       ("on_minibatch_begin", "before_backward", "before_optimizer_step", "on_minibatch_end")]
        events.append(["on_epoch_end", epoch, None])
    return events


def test_counting_pruner_runs_only_in_its_epochs(counting_run: dict[str, Any]) -> None:
    report = counting_run
    # hookprune hands the constructor the model's own names for 'module.'-wrapped spellings.
    assert report["weights"] == ["fc1.weight", "fc2.weight"]
    assert report["seen"] == expected_events([1, 3])
    assert report["state"] == {"seen_count": len(expected_events([1, 3]))}
    assert report["restored_seen_count"] == report["state"]["seen_count"]


def test_counting_pruner_adds_its_loss_term(counting_run: dict[str, Any]) -> None:
    steps = counting_run["steps"]
    assert len(steps) == EPOCHS * MINIBATCHES
    for step in steps:
        where = (step["epoch"], step["minibatch_id"])
        if step["epoch"] in (1, 3):
            assert step["components"] == ["counting_penalty"], where
            assert step["term_exact"], where
            assert step["total_exact"], where
        else:
            assert step["components"] == [], where
            assert step["total_is_loss"], where


def test_counting_pruner_masks_stay_applied(counting_run: dict[str, Any]) -> None:
    zeros, numel = counting_run["zeros"], counting_run["numel"]
    for name in ("fc1.weight", "fc2.weight"):
        assert zeros[name] == int(SPARSITY * numel[name]), name
    for name in set(zeros) - {"fc1.weight", "fc2.weight"}:
        assert zeros[name] == 0, name


def test_tracer_sees_every_epoch(counting_run: dict[str, Any]) -> None:
    assert counting_run["tracer_loaded"]
    assert counting_run["epochs_seen"] == list(range(EPOCHS))


def test_tracer_not_loaded_when_autoload_disabled(plugin_site: Path, tmp_path: Path) -> None:
    report = run_loop(plugin_site, tmp_path, COUNTING_SCHEDULE, autoload=False)
    assert not report["tracer_loaded"]
    assert report["epochs_seen"] == []
    # The schedule's own class still loads through its entry point.
    assert report["seen"] == expected_events([1, 3])


def test_a_hook_plugin_disabled_by_name_is_not_loaded(plugin_site: Path, tmp_path: Path) -> None:
    report = run_loop(plugin_site, tmp_path, COUNTING_SCHEDULE, disabled="other, tracer")
    assert not report["tracer_loaded"]
    assert report["epochs_seen"] == []
    assert report["seen"] == expected_events([1, 3])


def test_plugins_command_lists_the_distribution(plugin_site: Path, tmp_path: Path) -> None:
    proc = run_python(plugin_site, ["-m", "hookprune", "plugins"], cwd=tmp_path)
    lines = proc.stdout.splitlines()
    label = f"{DIST_NAME} {DIST_VERSION}"
    counting = [line for line in lines if line.split()[:1] == ["CountingPruner"]]
    assert len(counting) == 1, proc.stdout
    assert label in counting[0] and "hookprune_testplugin:CountingPruner" in counting[0], proc.stdout
    tracer = [line for line in lines if line.split()[:1] == ["tracer"]]
    assert len(tracer) == 1, proc.stdout
    assert label in tracer[0] and "hookprune_testplugin.tracer" in tracer[0], proc.stdout
    assert "on_epoch_end" in tracer[0], proc.stdout


def test_unnamed_class_is_not_imported(plugin_site: Path, tmp_path: Path) -> None:
    script = tmp_path / "no_import.py"
    script.write_text(NO_IMPORT_SCRIPT)
    schedule = tmp_path / "agp.yaml"
    schedule.write_text(AGP_SCHEDULE)
    proc = run_python(plugin_site, [str(script), str(schedule)], autoload=False, cwd=tmp_path)
    assert "loaded: []" in proc.stdout
