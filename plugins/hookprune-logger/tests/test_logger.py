"""The logger, auto-loaded through its entry point, under a short AGP + L1 + LR-decay schedule on
LeNet-300-100 and scikit-learn's digits: the exact CSV rows, the same scalars in TensorBoard, the
environment's configuration, and nothing at all when it is not configured."""

from __future__ import annotations

import csv
import os
import struct
import subprocess
import sys
from pathlib import Path

import hookprune_logger
import pytest
import torch
from sklearn.datasets import load_digits
from tensorboard.backend.event_processing import event_accumulator

import hookprune
from hookprune import testing
from hookprune.models import create_model

MINIBATCHES = 3
EPOCHS = 4
WEIGHTS = ["fc1.weight", "fc2.weight", "fc3.weight"]

SCHEDULE = """\
version: 1
pruners:
  agp:
    class: AutomatedGradualPruner
    initial_sparsity: 0.1
    final_sparsity: 0.5
    weights: [fc1.weight, fc2.weight]
regularizers:
  l1:
    class: L1Regularizer
    reg_regims: {fc3.weight: 0.001}
lr_schedulers:
  decay:
    class: ExponentialLR
    gamma: 0.5
policies:
  - pruner: {instance_name: agp}
    starting_epoch: 0
    ending_epoch: 3
    frequency: 1
  - regularizer: {instance_name: l1}
    starting_epoch: 1
    ending_epoch: 3
  - lr_scheduler: {instance_name: decay}
    starting_epoch: 0
    ending_epoch: 4
"""


@pytest.fixture(autouse=True)
def environment(monkeypatch, tmp_path):
    """Each test starts unconfigured, in an empty working folder, on one thread."""
    for name in (hookprune_logger.ENV_DIR, hookprune_logger.ENV_EVERY, hookprune_logger.ENV_FORMATS):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits() -> list[tuple[torch.Tensor, torch.Tensor]]:
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    return [(x[i * 32:(i + 1) * 32], y[i * 32:(i + 1) * 32]) for i in range(MINIBATCHES)]


def train(tmp_path: Path, digits) -> tuple[hookprune.CompressionScheduler, dict]:
    """Train under SCHEDULE and record, independently of the logger, what it should have logged."""
    torch.manual_seed(0)
    model = create_model("lenet300_100", input_features=64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    path = tmp_path / "schedule.yaml"
    path.write_text(SCHEDULE)
    sched = hookprune.load(path, model, optimizer)
    assert hookprune_logger.plugin in sched.plugins().values(), "the logger is not auto-loaded: is it installed?"
    seen: dict = {"minibatches": {}, "epochs": {}}
    epoch_lr: list[float] = []
    losses: list[float] = []
    terms: dict[str, float] = {}
    components: dict[str, list[float]] = {}

    def fire(event: str, **kwargs):
        """Fire ``event``, then note what the logger sees of it."""
        result = sched.fire(event, **kwargs)
        epoch = kwargs["epoch"]
        if event == "on_epoch_begin":
            epoch_lr.append(optimizer.param_groups[0]["lr"])
            losses.clear()
            components.clear()
        elif event == "before_backward":
            losses.append(float(kwargs["loss"].detach()))
            terms.clear()
            terms.update({name: float(value.detach()) for name, value in sched.loss_components.items()})
            for name, value in terms.items():
                components.setdefault(name, []).append(value)
        elif event == "on_minibatch_end":
            seen["minibatches"][(epoch, kwargs["minibatch_id"])] = {
                "loss": losses[-1], **{f"loss_component/{n}": v for n, v in terms.items()},
                "lr/group0": optimizer.param_groups[0]["lr"], **sparsity(model)}
        elif event == "on_epoch_end":
            seen["epochs"][epoch] = {
                "loss": sum(losses) / len(losses),
                **{f"loss_component/{n}": sum(v) / len(v) for n, v in components.items()},
                "lr/group0": epoch_lr[-1],
                **sparsity(model),
                "metric/min": losses[-1], "metric/max": 10.0 * epoch, "metric/top5": 99.5,
            }
        return result

    def metrics(epoch: int) -> dict:
        return {"min": losses[-1], "max": 10.0 * epoch, "top5": torch.tensor(99.5), "note": "text", "best": True}

    testing.train(sched, model, optimizer, digits, EPOCHS, fire=fire, metrics=metrics)
    return sched, seen


def sparsity(model: torch.nn.Module) -> dict[str, float]:
    params = dict(model.named_parameters())
    zeros = {name: int((params[name] == 0).sum()) for name in WEIGHTS}
    values = {f"sparsity/{name}": zeros[name] / params[name].numel() for name in WEIGHTS}
    values["sparsity/total"] = sum(zeros.values()) / sum(params[name].numel() for name in WEIGHTS)
    return values


def run_folders(log_dir: Path) -> list[Path]:
    return sorted(p for p in log_dir.iterdir() if p.is_dir())


def read_csv(folder: Path) -> list[dict[str, str]]:
    with (folder / hookprune_logger.CSV_NAME).open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == hookprune_logger.CSV_COLUMNS
        return list(reader)


def as_float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def test_epoch_rows_hold_the_exact_values(monkeypatch, tmp_path, digits):
    monkeypatch.setenv(hookprune_logger.ENV_DIR, str(tmp_path / "logs"))
    sched, seen = train(tmp_path, digits)
    [folder] = run_folders(tmp_path / "logs")
    rows = read_csv(folder)
    expected = [(str(epoch), "", str(epoch), f"epoch/{tag}", value)
                for epoch, values in seen["epochs"].items() for tag, value in values.items()]
    assert [(r["epoch"], r["minibatch_id"], r["step"], r["tag"], float(r["value"])) for r in rows] == expected
    # the L1 term exists in epochs 1 and 2 only, the AGP pruner reaches its final 50% in epoch 2
    component = "epoch/loss_component/L1Regularizer_loss"
    assert [r["epoch"] for r in rows if r["tag"] == component] == ["1", "2"]
    fc1 = [float(r["value"]) for r in rows if r["tag"] == "epoch/sparsity/fc1.weight"]
    assert fc1[2:] == [int(0.5 * 300 * 64) / (300 * 64)] * 2
    assert [float(r["value"]) for r in rows if r["tag"] == "epoch/lr/group0"] == [0.1, 0.05, 0.025, 0.0125]
    hookprune_logger.close(sched)


def test_tensorboard_holds_the_same_scalars(monkeypatch, tmp_path, digits):
    monkeypatch.setenv(hookprune_logger.ENV_DIR, str(tmp_path / "logs"))
    monkeypatch.setenv(hookprune_logger.ENV_EVERY, "2")
    sched, _ = train(tmp_path, digits)
    [folder] = run_folders(tmp_path / "logs")
    rows = read_csv(folder)
    events = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.SCALARS: 0})
    events.Reload()
    tags = list(dict.fromkeys(r["tag"] for r in rows))
    assert sorted(events.Tags()["scalars"]) == sorted(tags)
    for tag in tags:
        expected = [(int(r["step"]), as_float32(float(r["value"]))) for r in rows if r["tag"] == tag]
        assert [(e.step, e.value) for e in events.Scalars(tag)] == expected, tag
    hookprune_logger.close(sched)


def test_every_nth_minibatch_is_logged(monkeypatch, tmp_path, digits):
    monkeypatch.setenv(hookprune_logger.ENV_DIR, str(tmp_path / "logs"))
    monkeypatch.setenv(hookprune_logger.ENV_EVERY, "2")
    monkeypatch.setenv(hookprune_logger.ENV_FORMATS, "csv")
    _, seen = train(tmp_path, digits)
    [folder] = run_folders(tmp_path / "logs")
    assert [p.name for p in folder.iterdir()] == [hookprune_logger.CSV_NAME]
    rows = [r for r in read_csv(folder) if r["tag"].startswith("minibatch/")]
    # steps 1, 3, 5, ... counted over the run: epoch * 3 + minibatch_id
    logged = [(epoch, i) for epoch in range(EPOCHS) for i in range(MINIBATCHES) if (epoch * MINIBATCHES + i) % 2 == 1]
    expected = [(str(epoch), str(i), str(epoch * MINIBATCHES + i), f"minibatch/{tag}", value)
                for epoch, i in logged for tag, value in seen["minibatches"][(epoch, i)].items()]
    assert [(r["epoch"], r["minibatch_id"], r["step"], r["tag"], float(r["value"])) for r in rows] == expected


def test_tensorboard_only(monkeypatch, tmp_path, digits):
    monkeypatch.setenv(hookprune_logger.ENV_DIR, str(tmp_path / "logs"))
    monkeypatch.setenv(hookprune_logger.ENV_FORMATS, " TensorBoard ")
    sched, _ = train(tmp_path, digits)
    [folder] = run_folders(tmp_path / "logs")
    assert [p.name.split(".")[0] for p in folder.iterdir()] == ["events"]
    hookprune_logger.close(sched)


def test_each_scheduler_logs_into_its_own_folder(monkeypatch, tmp_path, digits):
    monkeypatch.setenv(hookprune_logger.ENV_DIR, str(tmp_path / "logs"))
    monkeypatch.setenv(hookprune_logger.ENV_FORMATS, "csv")
    train(tmp_path, digits)
    train(tmp_path, digits)
    folders = run_folders(tmp_path / "logs")
    assert len(folders) == 2
    assert read_csv(folders[0]) == read_csv(folders[1])


def _rank_logs(rank: int, folder: str) -> None:
    """One of two gloo processes: a scheduler on each rank, one epoch fired."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
    try:
        sched = hookprune.CompressionScheduler(create_model("lenet300_100", input_features=64))
        sched.fire("on_epoch_begin", epoch=0)
        sched.fire("on_epoch_end", epoch=0, metrics={"rank": rank})
        hookprune_logger.close(sched)
    finally:
        torch.distributed.destroy_process_group()


def test_under_torch_distributed_rank_zero_alone_logs(monkeypatch, tmp_path):
    monkeypatch.setenv(hookprune_logger.ENV_DIR, str(tmp_path / "logs"))
    monkeypatch.setenv(hookprune_logger.ENV_FORMATS, "csv")
    torch.multiprocessing.spawn(_rank_logs, args=(str(tmp_path),), nprocs=2, join=True)
    [folder] = run_folders(tmp_path / "logs")
    assert [r["value"] for r in read_csv(folder) if r["tag"] == "epoch/metric/rank"] == ["0.0"]


def test_unconfigured_logger_does_nothing(tmp_path, digits):
    sched, _ = train(tmp_path, digits)
    assert hookprune_logger.plugin.run_of(sched) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["schedule.yaml"]


def test_unconfigured_logger_imports_no_tensorboard(tmp_path):
    script = (
        "import sys, torch, hookprune\n"
        "from hookprune.models import create_model\n"
        "model = create_model('lenet300_100', input_features=64)\n"
        "sched = hookprune.CompressionScheduler(model)\n"
        "import hookprune_logger\n"
        "assert hookprune_logger.plugin in sched.plugins().values()\n"
        "sched.fire('on_epoch_begin', epoch=0)\n"
        "sched.fire('on_epoch_end', epoch=0)\n"
        "print(sorted(m for m in sys.modules if 'tensorboard' in m))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKPRUNE_")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("name", "value", "message"), [
    (hookprune_logger.ENV_EVERY, "often", "HOOKPRUNE_LOG_EVERY='often': give a whole number of minibatches "
                                          "(0 logs at the end of each epoch only)"),
    (hookprune_logger.ENV_FORMATS, "csv,json", "HOOKPRUNE_LOG_FORMATS='csv,json': unknown format 'json'; "
                                               "give csv or tensorboard, or both comma-separated"),
])
def test_malformed_configuration_names_the_variable(monkeypatch, tmp_path, name, value, message):
    monkeypatch.setenv(hookprune_logger.ENV_DIR, str(tmp_path / "logs"))
    monkeypatch.setenv(name, value)
    model = create_model("lenet300_100", input_features=64)
    sched = hookprune.CompressionScheduler(model)
    with pytest.raises(ValueError) as err:
        sched.fire("on_epoch_begin", epoch=0)
    assert str(err.value) == message
    assert err.value.__notes__ == [
        "hookprune: raised in hook 'on_epoch_begin' of plugin 'logger' (from hookprune-logger 0.1.0)"]
    assert not (tmp_path / "logs").exists()
