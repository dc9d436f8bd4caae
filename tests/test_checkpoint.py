"""Checkpoints: atomic writes, weights-only reads, and the one-line refusals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import hookprune
from hookprune.apputils.checkpoint import (
    CheckpointError,
    atomic_save,
    model_state,
    read_checkpoint,
    save_checkpoint,
)

SCHEDULE = {
    "version": 1,
    "pruners": {"p": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.1, "final_sparsity": 0.5,
                      "weights": ["fc1.weight"]}},
    "quantizers": {"q": {"class": "QuantAwareTrainRangeLinearQuantizer", "bits_activations": 8, "bits_weights": 4,
                         "bits_bias": 32}},
    "policies": [{"pruner": {"instance_name": "p"}, "starting_epoch": 0, "ending_epoch": 2, "frequency": 1},
                 {"quantizer": {"instance_name": "q"}, "starting_epoch": 0, "ending_epoch": 2, "frequency": 1}],
}


def test_save_checkpoint_writes_distillers_keys_readable_without_running_code(tmp_path, lenet):
    optimizer = torch.optim.SGD(lenet.parameters(), lr=0.1, momentum=0.9)
    sched = hookprune.build(SCHEDULE, lenet, optimizer)
    sched.fire("on_epoch_begin", epoch=0)
    path = save_checkpoint(0, "lenet300_100", lenet, optimizer, sched, {"history": [{"top1": 90.0}]},
                           is_best=True, name="run", dir=tmp_path)
    assert path == tmp_path / "run_checkpoint.pth.tar"
    assert (tmp_path / "run_best.pth.tar").read_bytes() == path.read_bytes()
    checkpoint = read_checkpoint(path)
    assert set(checkpoint) == {"epoch", "arch", "state_dict", "optimizer_state_dict", "compression_sched",
                               "thinning_recipes", "quantizer_metadata", "extras"}
    assert checkpoint["compression_sched"]["masks_dict"]["fc1.weight"].dtype == torch.bool
    assert checkpoint["quantizer_metadata"]["q"]["type"] == "QuantAwareTrainRangeLinearQuantizer"
    assert checkpoint["quantizer_metadata"]["q"]["bits_weights"] == 4
    assert "fc1.weight" in checkpoint["quantizer_metadata"]["q"]["quantized_params"]
    assert checkpoint["extras"] == {"history": [{"top1": 90.0}]}
    assert model_state(checkpoint).keys() == lenet.state_dict().keys()


def test_a_failed_write_leaves_the_previous_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth.tar"
    atomic_save({"epoch": 1}, path)

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"epoch": 2}, path)
    assert read_checkpoint(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth.tar"]


WRITER = """
import sys, torch
from hookprune.apputils.checkpoint import atomic_save
ramp = torch.arange(4_000_000, dtype=torch.float64)
epoch = 0
while True:
    atomic_save({"epoch": epoch, "weights": ramp + epoch}, sys.argv[1])
    print(epoch, flush=True)
    epoch += 1
"""


def test_a_process_killed_while_writing_leaves_a_complete_checkpoint(tmp_path):
    path = tmp_path / "ckpt.pth.tar"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        proc.stdout.readline()
        time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        proc.stdout.close()
    checkpoint = read_checkpoint(path)
    expected = torch.arange(4_000_000, dtype=torch.float64) + checkpoint["epoch"]
    assert torch.equal(checkpoint["weights"], expected)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".tmp")] == ["ckpt.pth.tar"]


@pytest.mark.parametrize(("content", "expected"), [
    (b"", "is incomplete or corrupt"),
    (b"not a checkpoint at all", "is not a checkpoint: neither torch.save's zip archive nor a pickle"),
])
def test_unreadable_files_are_one_line(tmp_path, content, expected):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert str(err.value).startswith(f"checkpoint '{path}' {expected}")
    assert "\n" not in str(err.value)


def test_missing_and_non_dict_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint '.*nothere' does not exist$"):
        read_checkpoint(tmp_path / "nothere")
    with pytest.raises(CheckpointError, match="is a folder, not a checkpoint file"):
        read_checkpoint(tmp_path)
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="holds a list, not a checkpoint dict"):
        read_checkpoint(tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="holds no model weights"):
        model_state({"epoch": 3}, "x.pth")
