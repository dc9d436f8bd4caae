"""The example application under bad input and faults: one line on stderr and exit status 2, never a traceback,
never a hang, never a lost checkpoint."""

from __future__ import annotations

import errno
import importlib.util
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from hookprune.apputils import checkpoint as checkpoint_module
from hookprune.apputils.checkpoint import (
    CheckpointError,
    atomic_write,
    read_checkpoint,
    remove_unfinished_writes,
)

if TYPE_CHECKING:
    from collections.abc import Sequence as UnresolvedMilestones

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "examples" / "classifier_compression" / "compress_classifier.py"
AGP = ROOT / "examples" / "schedules" / "lenet300_100.agp.yaml"
PREFIX = "compress_classifier.py: error: "
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def load_app():
    spec = importlib.util.spec_from_file_location("compress_classifier_under_test", APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


app = load_app()


def fails(capsys, *argv: str) -> str:
    """Run the application in this process on ``argv``; the one line it printed on stderr for exit status 2."""
    status = app.main(list(argv))
    captured = capsys.readouterr()
    assert status == 2, (captured.out[-2000:], captured.err[-2000:])
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(PREFIX)
    return lines[0][len(PREFIX):]


def run_folder(out: Path) -> Path:
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    return folder


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """The run folder of one epoch of LeNet-300-100 on a fifth of the digits, with its checkpoint."""
    out = tmp_path_factory.mktemp("finished")
    assert app.main(["--epochs", "1", "--seed", "0", "--effective-train-size", "0.2", "-o", str(out)]) == 0
    return run_folder(out)


# -- bad values on the command line ------------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "expected"), [
    (["--lr", "nan"], "--lr nan: must be a finite number >= 0"),
    (["--lr", "-1"], "--lr -1.0: must be a finite number >= 0"),
    (["--lr", "inf"], "--lr inf: must be a finite number >= 0"),
    (["--momentum", "2"], "--momentum 2.0: must be a number within [0, 1)"),
    (["--wd", "nan"], "--wd nan: must be a finite number >= 0"),
    (["--epochs", "-1"], "--epochs -1: must be an integer from 0 to 9223372036854775807"),
    (["--epochs", "99999999999999999999"], "--epochs 99999999999999999999: must be an integer from 0 to "
                                           "9223372036854775807"),
    (["--seed", "9" * 400], f"--seed {'9' * 400}: must be an integer from 0 to 9223372036854775807"),
    (["--batch-size", "0"], "--batch-size 0: must be an integer from 1 to 9223372036854775807"),
    (["--print-freq", "0"], "--print-freq 0: must be an integer from 1 to 9223372036854775807"),
    (["--seed", "-1"], "--seed -1: must be an integer from 0 to 9223372036854775807"),
    (["--workers", "100000"], "--workers 100000: must be an integer from 0 to "),
    (["--vs", "1.5"], "--vs 1.5: must be a number within [0, 1)"),
    (["--effective-train-size", "0"], "--effective-train-size 0.0: must be a number within (0, 1]"),
    (["--effective-valid-size", "1.5"], "--effective-valid-size 1.5: must be a number within (0, 1]"),
    (["--effective-test-size", "nan"], "--effective-test-size nan: must be a number within (0, 1]"),
    (["--sense", "element", "--sense-range", "0.5", "0.1", "0.1"],
     "--sense-range 0.5 0.1 0.1: need 0 <= START <= STOP <= 1 and STEP > 0"),
    (["--sense", "element", "--sense-range", "0", "0.5", "0"],
     "--sense-range 0 0.5 0: need 0 <= START <= STOP <= 1 and STEP > 0"),
    (["--sense", "element", "--sense-range", "0", "0.5", "-0.1"],
     "--sense-range 0 0.5 -0.1: need 0 <= START <= STOP <= 1 and STEP > 0"),
    (["--sense", "element", "--sense-range", "0", "nan", "0.1"],
     "--sense-range 0 nan 0.1: need 0 <= START <= STOP <= 1 and STEP > 0"),
    (["--sense", "element", "--sense-range", "0", "1", "1e-300"],
     "--sense-range 0 1 1e-300: more than 1,001 levels; use a larger STEP"),
    (["--kd-teacher", "simplenet_mnist", "--kd-temp", "0"], "--kd-temperature 0.0: must be a finite number > 0"),
    (["--kd-teacher", "simplenet_mnist", "--kd-dw", "-1"], "--kd-distill-wt -1.0: must be a finite number >= 0"),
    (["--kd-teacher", "simplenet_mnist", "--kd-sw", "nan"], "--kd-student-wt nan: must be a finite number >= 0"),
    (["--kd-teacher", "simplenet_mnist", "--kd-start-epoch", "-1"],
     "--kd-start-epoch -1: must be an integer from 0 to 9223372036854775807"),
    (["--kd-teacher", "simplenet_mnist", "--kd-start-epoch", "5", "--epochs", "5"],
     "--kd-start-epoch 5: distillation would start after the last epoch (--epochs 5)"),
    (["--kd-teacher", "simplenet_mnist", "--kd-teacher-epochs", "-1"],
     "--kd-teacher-epochs -1: must be an integer from 0 to 9223372036854775807"),
    (["--kd-teacher", "simplenet_mnist", "--kd-teacher-lr", "inf"], "--kd-teacher-lr inf: must be a finite number "
                                                                     ">= 0"),
    (["--dist-timeout", "0"], "--dist-timeout 0.0: must be a number within (0, 604800]"),
    (["--name", "a/b"], "--name 'a/b': a name, not a path (no '/')"),
])
def test_a_value_out_of_range_is_one_line_naming_the_option(tmp_path, capsys, argv, expected):
    line = fails(capsys, *argv, "-o", str(tmp_path / "out"))
    assert line.startswith(expected)
    assert not (tmp_path / "out").exists(), "refused before anything is written"


def test_from_the_command_line_a_bad_value_is_one_line_and_exit_status_2(tmp_path):
    result = subprocess.run([sys.executable, str(APP), "--lr", "nan", "-o", str(tmp_path)], env=ENV,
                            capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stderr, result.stdout) == (2, f"{PREFIX}--lr nan: must be a finite number "
                                                                    ">= 0\n", "")


@pytest.mark.parametrize(("argv", "expected"), [
    (["--lr", "abc"], "argument --lr/--learning-rate: invalid float value: 'abc'"),
    (["--epochs", "1.5"], "argument --epochs: invalid int value: '1.5'"),
    (["--sense-range", "0", "1"], "argument --sense-range: expected 3 arguments"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_what_the_parser_refuses_is_one_line_without_the_usage(capsys, argv, expected):
    with pytest.raises(SystemExit) as exit_:
        app.main(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"{PREFIX}{expected}; --help lists the options\n"


def test_paths_of_the_wrong_kind_are_one_line_and_never_block(tmp_path, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    afile = tmp_path / "afile"
    afile.write_text("x")
    out = str(tmp_path / "out")
    tic = time.monotonic()
    assert fails(capsys, "--compress", str(tmp_path), "-o", out) == f"--compress {tmp_path}: a folder, not a " \
                                                                    "schedule file"
    assert fails(capsys, "--compress", str(fifo), "-o", out) == f"--compress {fifo}: not a regular file (a pipe or " \
                                                                "a device?), not a schedule file"
    assert fails(capsys, "--compress", str(tmp_path / "none.yaml"), "-o", out) == \
        f"{tmp_path / 'none.yaml'}: no such schedule file"
    assert fails(capsys, "--resume-from", str(tmp_path / "none.pth"), "-o", out) == \
        f"checkpoint '{tmp_path / 'none.pth'}' does not exist"
    assert fails(capsys, "--kd-teacher", "simplenet_mnist", "--kd-resume", str(tmp_path / "none.pth"), "-o",
                 out) == f"teacher checkpoint '{tmp_path / 'none.pth'}' does not exist"
    assert fails(capsys, str(tmp_path / "nodata"), "-o", out) == f"DATA_DIR {tmp_path / 'nodata'}: no such folder"
    assert fails(capsys, str(afile), "-o", out) == f"DATA_DIR {afile}: not a folder"
    for option in ("--resume-from", "--exp-load-weights-from"):
        assert fails(capsys, option, str(fifo), "-o", out) == f"{option} {fifo}: not a regular file (a pipe or a " \
                                                              "device?), not a checkpoint file"
        assert fails(capsys, option, str(tmp_path), "-o", out) == f"{option} {tmp_path}: a folder, not a " \
                                                                  "checkpoint file"
    assert fails(capsys, "--kd-teacher", "simplenet_mnist", "--kd-resume", str(fifo), "-o", out).startswith(
        f"--kd-resume {fifo}: not a regular file")
    assert fails(capsys, "-o", str(afile)) == f"--out-dir {afile}: not a folder"
    assert time.monotonic() - tic < 30
    assert not (tmp_path / "out").exists()


def test_an_unreadable_schedule_is_one_line(tmp_path, capsys, monkeypatch):
    schedule = tmp_path / "locked.yaml"
    schedule.write_text(AGP.read_text())
    real_open = pathlib.Path.open

    def refuse(self, *args, **kwargs):
        if self == schedule:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "open", refuse)
    line = fails(capsys, "--compress", str(schedule), "--epochs", "0", "-o", str(tmp_path / "out"))
    assert line == f"{schedule}: cannot read the schedule: Permission denied"


def test_a_file_that_is_not_a_checkpoint_is_one_line(tmp_path, capsys):
    text = tmp_path / "notes.pth.tar"
    text.write_text("these are notes, not weights\n")
    for option in ("--resume-from", "--exp-load-weights-from"):
        assert fails(capsys, option, str(text), "--epochs", "0", "-o", str(tmp_path / "out")) == (
            f"checkpoint '{text}' is not a checkpoint: neither torch.save's zip archive nor a pickle")


# -- hostile schedules through the application ----------------------------------------------------------------------


HUGE_WINDOW = """\
version: 1
pruners:
  p: {class: AutomatedGradualPruner, initial_sparsity: 0.05, final_sparsity: 0.5, weights: [fc1.weight]}
policies:
  - pruner: {instance_name: p}
    starting_epoch: 0
    ending_epoch: 9223372036854775807
    frequency: 1
"""


@pytest.mark.parametrize(("text", "expected"), [
    ("policies: " + "[" * 100_000 + "]" * 100_000 + "\n", r"1:\d+: invalid YAML: .*nest"),
    ("version: 1\npolicies:\x00 []\n", r"2:10: invalid YAML: character U\+0000 is not allowed"),
    ("version: 1\npolicies: [\x85\x01]\n", r"3:1: invalid YAML: character U\+0001 is not allowed"),
    (HUGE_WINDOW.replace("instance_name: p}", "instance_name: [a]}"),
     r"5:29: 'instance_name' must name an instance of 'pruners', got a list"),
    (HUGE_WINDOW.replace("9223372036854775807", "9223372036854775808"),
     r"7:19: the integer '9223372036854775808' does not fit in 64 bits"),
    ("a: &a [*a]\n", r"1:8: alias '\*a' stands for a list or mapping that contains it"),
    ("".join(f"{'  ' * i}k{i}:\n" for i in range(70)), r"64:127: the schedule nests more than 64 levels deep"),
], ids=["deep flow lists", "NUL", "control character", "instance_name list", "int64 overflow", "recursive alias",
        "deep block lists"])
def test_a_hostile_schedule_is_one_line_at_its_place(tmp_path, capsys, text, expected):
    schedule = tmp_path / "hostile.yaml"
    schedule.write_text(text, encoding="utf-8")
    line = fails(capsys, "--compress", str(schedule), "--epochs", "1", "-o", str(tmp_path / "out"))
    assert line.startswith(f"{schedule}:")
    assert re.search(expected, line), line


def test_a_policy_window_to_the_last_64_bit_epoch_trains(tmp_path, capsys):
    schedule = tmp_path / "long.yaml"
    schedule.write_text(HUGE_WINDOW)
    assert app.main(["--compress", str(schedule), "--epochs", "1", "--effective-train-size", "0.1", "-o",
                     str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "note: the schedule acts until epoch 9223372036854775806, training stops after epoch 0" in out


@pytest.mark.parametrize(("cls", "arguments", "argument", "expected"), [
    ("MultiStepLR", "milestones: [2, 4]\n    gamma: ten", "gamma", "'gamma' must be a positive number, got 'ten'"),
    ("CyclicLR", "base_lr: 0.01\n    max_lr: 0.1\n    gamma: ten", "gamma",
     "'gamma' must be a positive number, got 'ten'"),
    ("LambdaLR", "lr_lambda: ten", "lr_lambda",
     "'lr_lambda' must be a Python function of the epoch (or a list of them), which a YAML schedule cannot hold"),
])
def test_lr_scheduler_arguments_torch_cannot_annotate_are_checked_at_load(tmp_path, capsys, cls, arguments,
                                                                           argument, expected):
    schedule = tmp_path / "lr.yaml"
    schedule.write_text(f"version: 1\nlr_schedulers:\n  decay:\n    class: {cls}\n    {arguments}\npolicies:\n"
                        "  - lr_scheduler: {instance_name: decay}\n    starting_epoch: 0\n    ending_epoch: 12\n"
                        "    frequency: 1\n")
    number = schedule.read_text().splitlines().index(
        next(row for row in schedule.read_text().splitlines() if row.strip().startswith(f"{argument}:"))) + 1
    line = fails(capsys, "--compress", str(schedule), "--epochs", "12", "-o", str(tmp_path / "out"))
    assert line.startswith(f"{schedule}:{number}:")
    assert f"lr_schedulers.decay ({cls}): {expected}" in line
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*/*.pth.tar")), "refused at load"


# -- checkpoints: a full disk, unfinished writes, bit flips, permissions --------------------------------------------


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_what_space_is_needed(tmp_path, capsys, monkeypatch):
    real_fsync = os.fsync
    writes = []

    def fsync(fd):
        name = os.readlink(f"/proc/self/fd/{fd}")
        if "_checkpoint.pth.tar." in name and name.endswith(".tmp"):
            writes.append(name)
            if len(writes) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(checkpoint_module.shutil, "disk_usage", lambda path: Usage(10 << 30, 10 << 30, 1536))
    line = fails(capsys, "--epochs", "3", "--seed", "0", "--effective-train-size", "0.1", "-o", str(tmp_path))
    folder = run_folder(tmp_path)
    last = folder / "lenet300_100_checkpoint.pth.tar"
    size = re.search(r"needs (\d+\.\d) KiB", line)
    assert size and line == (f"the disk holding {folder} is full: writing lenet300_100_checkpoint.pth.tar needs "
                             f"{size.group(1)} KiB of free space, 1.5 KiB is free; the previous "
                             "lenet300_100_checkpoint.pth.tar is kept whole")
    assert abs(float(size.group(1)) * 1024 - last.stat().st_size) < 2048, "the new checkpoint is as large"
    assert read_checkpoint(last)["epoch"] == 0, "the first epoch's checkpoint loads"
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


WRITER = """
import os, sys, time
from hookprune.apputils import checkpoint
def stall(fd):
    print("writing", flush=True)
    time.sleep(120)
os.fsync = stall
checkpoint.atomic_write(b"unfinished" * 1000, sys.argv[1])
"""


def unfinished_writer(path: Path) -> subprocess.Popen:
    """A process stopped inside :func:`atomic_write` of ``path``, its temporary file written and locked."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout.readline() == "writing\n"
    return proc


def test_writes_a_killed_run_left_are_removed_at_resume_and_a_live_write_is_kept(tmp_path, capsys, finished_run):
    folder = tmp_path / "run"
    folder.mkdir()
    for item in finished_run.iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    killed = unfinished_writer(folder / "lenet300_100_checkpoint.pth.tar")
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    killed.stdout.close()
    (orphan,) = [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert orphan.name.startswith(".lenet300_100_checkpoint.pth.tar.")

    live = unfinished_writer(tmp_path / "other.pth.tar")
    try:
        (running,) = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        assert remove_unfinished_writes(tmp_path) == [], "a write in progress is left alone"
        assert running.exists()
    finally:
        live.kill()
        live.wait(timeout=60)
        live.stdout.close()
    assert remove_unfinished_writes(tmp_path) == [running], "once its process is gone it is removed"

    assert app.main(["--resume-from", str(folder / "lenet300_100_checkpoint.pth.tar"), "--epochs", "1",
                     "-o", str(tmp_path / "resumed")]) == 0
    out = capsys.readouterr().out
    assert f"removed 1 unfinished write a killed run left in {folder}: {orphan.name}\n" in out
    assert not orphan.exists()
    assert (folder / "lenet300_100_checkpoint.pth.tar").read_bytes() == \
        (finished_run / "lenet300_100_checkpoint.pth.tar").read_bytes()


def test_a_flipped_bit_is_reported_and_an_unsealed_checkpoint_still_loads(tmp_path, capsys, finished_run):
    good = finished_run / "lenet300_100_checkpoint.pth.tar"
    data = bytearray(good.read_bytes())
    assert data.endswith(checkpoint_module.SEAL_PREFIX + data[-64:])
    weights = torch.load(good, weights_only=True)["state_dict"]["fc1.weight"]
    start = data.find(weights.numpy().tobytes()[:64])
    assert start > 0
    data[start + 1000] ^= 0x04
    flipped = tmp_path / "flipped.pth.tar"
    flipped.write_bytes(data)
    changed = torch.load(flipped, weights_only=True)["state_dict"]["fc1.weight"]
    assert not torch.equal(changed, weights), "torch.load alone reads the flipped bit as a weight"
    line = fails(capsys, "--resume-from", str(flipped), "-o", str(tmp_path / "out"))
    assert line == (f"checkpoint '{flipped}' is corrupt: its content does not match the SHA-256 checksum written "
                    "with it (a bit changed on the disk or in a copy); use an earlier checkpoint")

    plain = tmp_path / "plain.pth.tar"
    torch.save(torch.load(good, weights_only=True), plain)
    assert read_checkpoint(plain)["epoch"] == 0
    assert app.main(["--resume-from", str(plain), "--epochs", "1", "--summary"]) == 0
    assert "fc1.weight" in capsys.readouterr().out


def test_a_checkpoint_the_system_refuses_to_read_says_permission_denied(tmp_path, capsys, monkeypatch, finished_run):
    path = finished_run / "lenet300_100_checkpoint.pth.tar"

    def refuse(file, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(file))

    monkeypatch.setattr(checkpoint_module, "open", refuse, raising=False)
    line = fails(capsys, "--resume-from", str(path), "-o", str(tmp_path / "out"))
    assert line == f"checkpoint '{path}' cannot be read: permission denied"


def test_an_unwritable_run_folder_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(app, "new_run_folder", lambda out, name: (_ for _ in ()).throw(
        PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "out"))))
    assert fails(capsys, "--epochs", "0", "-o", str(tmp_path / "out")) == f"Permission denied: '{tmp_path / 'out'}'"


def test_a_sealed_write_round_trips_and_atomic_write_of_other_bytes_is_unchanged(tmp_path):
    path = tmp_path / "notes.txt"
    atomic_write(b"plain bytes", path)
    assert path.read_bytes() == b"plain bytes"
    with pytest.raises(CheckpointError, match="is not a checkpoint"):
        read_checkpoint(path)


# -- a stopped rank under torchrun -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("fault", [signal.SIGSTOP, signal.SIGKILL], ids=["stopped", "killed"])
def test_a_stopped_or_dead_rank_ends_the_job_with_one_line_naming_it(tmp_path, fault):
    # two gloo ranks started as torchrun starts them (env://); rank 1 is stopped or killed in the middle of training
    port = free_port()
    argv = [sys.executable, str(APP), "--epochs", "50", "-b", "8", "--print-freq", "1", "--seed", "0",
            "--dist-timeout", "3", "-o", str(tmp_path)]
    procs = []
    for rank in (0, 1):
        env = {**ENV, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
    tic = time.monotonic()
    try:
        while time.monotonic() - tic < 40:
            logs = list(tmp_path.glob("*/lenet300_100.log"))
            if logs and "epoch 1/50 [5/" in logs[0].read_text():
                break
            assert procs[0].poll() is None, procs[0].stderr.read()
            time.sleep(0.05)
        else:
            pytest.fail("training did not start")
        procs[1].send_signal(fault)
        stopped = time.monotonic()
        _, err = procs[0].communicate(timeout=40)
        ended = time.monotonic() - stopped
    finally:
        procs[1].kill()
        procs[1].wait(timeout=60)
        procs[1].stderr.close()
        if procs[0].poll() is None:
            procs[0].kill()
            procs[0].wait()
    assert procs[0].returncode == 2, err
    assert "Traceback" not in err
    assert err.strip().splitlines() == [f"{PREFIX}rank 1 did not answer within 3 s (--dist-timeout): stopped, hung "
                                        "or dead; the job ends (ranks still running: 0)"]
    assert ended < 20, "the collective timeout and the roll call, not torch's 30 minutes"


class _StepsWithWarmup(torch.optim.lr_scheduler.MultiStepLR):
    """A subclass torch's rules do not list, annotated with a name imported only for type checkers."""

    def __init__(self, optimizer: torch.optim.Optimizer, milestones: UnresolvedMilestones, gamma: float = 0.1,
                 warmup: int = 0, last_epoch: int = -1) -> None:
        self.warmup = warmup
        super().__init__(optimizer, milestones, gamma, last_epoch)


def test_a_scheduler_subclass_whose_annotations_do_not_all_resolve_is_checked_on_the_others():
    from hookprune.config import lr_arguments
    from hookprune.pruning.base import ArgumentError

    hints = lr_arguments.annotations_one_by_one(_StepsWithWarmup)
    assert hints["gamma"] is float and hints["warmup"] is int and "milestones" not in hints
    with pytest.raises(ArgumentError, match=r"^'gamma' must be a number, got 'ten'$"):
        lr_arguments.check(_StepsWithWarmup, {"milestones": [2, 4], "gamma": "ten"})
    with pytest.raises(ArgumentError, match=r"^'warmup' must be an integer, got 1\.5$"):
        lr_arguments.check(_StepsWithWarmup, {"milestones": [2, 4], "warmup": 1.5})
    lr_arguments.check(_StepsWithWarmup, {"milestones": "anything", "gamma": 0.5, "warmup": 2})


@pytest.mark.parametrize(("change", "expected"), [
    (lambda c: c.__setitem__("epoch", [1]), "'epoch' must be an integer, not list"),
    (lambda c: c.__setitem__("extras", 5), "'extras' must be a mapping, not int"),
    (lambda c: c["extras"].__setitem__("history", [1, 2]),
     "'extras.history' must be a list of mappings of plain values (one per epoch), not list"),
    (lambda c: c["extras"]["history"][0].__setitem__("val_top1", torch.ones(1)),
     "'extras.history' must be a list of mappings of plain values (one per epoch), not list"),
    (lambda c: c["extras"].__setitem__("rng", {"torch": torch.zeros(3), "python": 5}),
     "'extras.rng' must be the random generators' states, not dict"),
    (lambda c: c.__setitem__("optimizer_state_dict", {"state": 5}),
     "'optimizer_state_dict' must be an optimizer's state_dict() (a mapping with 'state' and 'param_groups')"),
    (lambda c: c.__setitem__("compression_sched", 5), "'compression_sched' must be a mapping"),
], ids=["epoch", "extras", "history", "history tensor", "rng", "optimizer", "schedule"])
def test_a_checkpoint_whose_entries_are_of_the_wrong_kind_is_one_line(tmp_path, capsys, finished_run, change,
                                                                       expected):
    checkpoint = read_checkpoint(finished_run / "lenet300_100_checkpoint.pth.tar")
    change(checkpoint)
    path = tmp_path / "odd.pth.tar"
    torch.save(checkpoint, path)
    for option in ("--resume-from", "--exp-load-weights-from"):
        line = fails(capsys, option, str(path), "--epochs", "2", "-o", str(tmp_path / "out"))
        assert line.startswith(f"checkpoint '{path}' is malformed: {expected}")


def test_a_resumed_history_without_the_numbers_a_run_reads_is_one_line(tmp_path, capsys, finished_run):
    checkpoint = read_checkpoint(finished_run / "lenet300_100_checkpoint.pth.tar")
    del checkpoint["extras"]["history"][0]["nonzeros"]
    path = tmp_path / "odd.pth.tar"
    torch.save(checkpoint, path)
    line = fails(capsys, "--resume-from", str(path), "--epochs", "2", "-o", str(tmp_path / "out"))
    assert line == f"checkpoint '{path}' is malformed: epoch entry #1 of 'extras.history' lacks the number nonzeros"
