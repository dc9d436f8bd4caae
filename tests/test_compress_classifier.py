"""The example application, run as a user runs it: compress_classifier.py on the digits data."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "examples" / "classifier_compression" / "compress_classifier.py"
AGP = ROOT / "examples" / "schedules" / "lenet300_100.agp.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def app(*argv: str, cwd: Path, check: bool = True, timeout: int = 300, ranks: int = 0,
        env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the application in ``cwd`` with ``env`` added to the environment; under
    ``torchrun --nproc_per_node=ranks`` when ``ranks`` is given."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"] if ranks else []
    # torchrun leaves its log folders and error files in the temporary directory: keep them in the test's own.
    environ = {**ENV, **(env or {}), **({"TMPDIR": str(cwd)} if ranks else {})}
    result = subprocess.run([sys.executable, *launcher, str(APP), *argv], cwd=cwd, env=environ, capture_output=True,
                            text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def run_folder(out: Path) -> Path:
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    return folder


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one line the application prints for bad input (and that there is no traceback)."""
    assert result.returncode == 2, (result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_the_readme_command_prunes_lenet_on_digits_to_the_schedule_and_keeps_accuracy(tmp_path):
    out = app("-a", "lenet300_100", "--compress", str(AGP), "-o", str(tmp_path), "--seed", "0", cwd=tmp_path)
    rows = dict(re.findall(r"^(fc\d\.weight) .* (\d+\.\d\d)%$", out.stdout, re.M))
    assert rows == {"fc1.weight": "90.00", "fc2.weight": "90.00", "fc3.weight": "80.00"}
    top1 = float(re.search(r"Test top-1 (\d+\.\d+)%", out.stdout).group(1))
    assert top1 >= 95.0

    folder = run_folder(tmp_path)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["complete"] is True
    assert summary["top1"] == pytest.approx(top1, abs=0.005)
    assert 0 < summary["loss"] < 1 and summary["top5"] >= summary["top1"]
    assert summary["sparsity"] == pytest.approx(100 * (1 - 5120 / 50200))
    layers = {layer["name"]: layer for layer in summary["layers"]}
    assert layers["fc1.weight"]["sparsity"] == pytest.approx(90.0)
    assert layers["fc1.weight"]["shape"] == [300, 64] and layers["fc1.weight"]["filter"] is None
    assert [e["epoch"] for e in summary["epochs"]] == list(range(20))
    assert summary["epochs"][9]["sparsity"] == pytest.approx(summary["sparsity"])
    assert summary["schedule"]["text"] == AGP.read_text()
    assert len(summary["timings"]["epoch_s"]) == 20
    for png in ("training.png",):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    checkpoint = torch.load(folder / "lenet300_100_checkpoint.pth.tar", weights_only=True)
    assert checkpoint["epoch"] == 19 and checkpoint["arch"] == "lenet300_100"
    assert set(checkpoint["compression_sched"]["masks_dict"]) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert (folder / "lenet300_100_best.pth.tar").is_file()


def final_state(folder: Path) -> tuple[dict, dict, dict]:
    checkpoint = torch.load(folder / "lenet300_100_checkpoint.pth.tar", weights_only=True)
    summary = json.loads((folder / "summary.json").read_text())
    del summary["timings"]
    return checkpoint["state_dict"], checkpoint["compression_sched"]["masks_dict"], summary


def test_a_run_killed_mid_epoch_and_resumed_ends_bit_identical_to_an_uninterrupted_one(tmp_path):
    common = ["-a", "lenet300_100", "--compress", str(AGP), "--epochs", "6", "--deterministic", "-b", "8",
              "--print-freq", "1"]
    whole, killed, resumed = tmp_path / "whole", tmp_path / "killed", tmp_path / "resumed"
    app(*common, "-o", str(whole), cwd=tmp_path)

    proc = subprocess.Popen([sys.executable, str(APP), *common, "-o", str(killed)], cwd=tmp_path, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        log = None
        while time.monotonic() < deadline:
            logs = list(killed.glob("*/lenet300_100.log"))
            if logs and "epoch 4/6 [20/" in logs[0].read_text():
                log = logs[0]
                break
            time.sleep(0.05)
        assert log is not None, "the run did not reach epoch 4"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    text = log.read_text()
    assert "epoch 3/6  loss" in text and "epoch 4/6  loss" not in text, "killed in the middle of epoch 4"
    checkpoint = log.parent / "lenet300_100_checkpoint.pth.tar"
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 2

    out = app("--resume-from", str(checkpoint), "--compress", str(AGP), "--epochs", "6", "--deterministic",
              "-b", "8", "-o", str(resumed), cwd=tmp_path)
    assert "resumed" in out.stdout and "at epoch 3" in out.stdout

    weights, masks, summary = final_state(run_folder(whole))
    weights_r, masks_r, summary_r = final_state(run_folder(resumed))
    assert weights.keys() == weights_r.keys() and masks.keys() == masks_r.keys()
    for name in weights:
        assert torch.equal(weights[name], weights_r[name]), name
    for name in masks:
        assert torch.equal(masks[name], masks_r[name]), name
    assert summary == summary_r


FILTERS = """\
version: 1
pruners:
  filters:
    class: L1RankedStructureParameterPruner_AGP
    initial_sparsity: 0.1
    final_sparsity: 0.5
    group_type: Filters
    weights: [conv1.weight, conv2.weight]
extensions:
  net_thinner: {class: FilterRemover, thinning_func_str: remove_filters, arch: simplenet_mnist, dataset: mnist}
lr_schedulers:
  decay: {class: ExponentialLR, gamma: 0.8}
policies:
  - pruner: {instance_name: filters}
    starting_epoch: 0
    ending_epoch: 2
    frequency: 1
  - extension: {instance_name: net_thinner}
    epochs: [2]
  - lr_scheduler: {instance_name: decay}
    starting_epoch: 0
    ending_epoch: 4
    frequency: 1
"""


def test_a_thinned_model_resumes_into_its_smaller_shape_bit_identical(tmp_path):
    schedule = tmp_path / "filters.yaml"
    schedule.write_text(FILTERS)
    common = ["-a", "simplenet_mnist", "--compress", str(schedule), "--deterministic", "--effective-train-size",
              "0.3"]
    app(*common, "--epochs", "4", "-o", str(tmp_path / "whole"), cwd=tmp_path)
    app(*common, "--epochs", "3", "-o", str(tmp_path / "part"), cwd=tmp_path)
    part = run_folder(tmp_path / "part") / "simplenet_mnist_checkpoint.pth.tar"
    out = app(*common, "--epochs", "4", "--resume-from", str(part), "-o", str(tmp_path / "resumed"), cwd=tmp_path)
    assert re.search(r"^conv1\.weight\s+\(10, 1, 5, 5\)", out.stdout, re.M), "10 of conv1's 20 filters are removed"
    assert re.search(r"^conv2\.weight\s+\(25, 10, 5, 5\)", out.stdout, re.M)
    whole = torch.load(run_folder(tmp_path / "whole") / "simplenet_mnist_checkpoint.pth.tar", weights_only=True)
    resumed = torch.load(run_folder(tmp_path / "resumed") / "simplenet_mnist_checkpoint.pth.tar", weights_only=True)
    assert whole["state_dict"]["fc1.weight"].shape == (500, 25 * 4 * 4)
    for name, tensor in whole["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], tensor), name
    assert resumed["optimizer_state_dict"]["state"][0]["momentum_buffer"].shape == (10, 1, 5, 5)
    assert len(resumed["thinning_recipes"]) == 1
    summaries = [json.loads((run_folder(tmp_path / d) / "summary.json").read_text()) for d in ("whole", "resumed")]
    for summary in summaries:
        del summary["timings"]
    assert summaries[0] == summaries[1]
    assert summaries[0]["best_epoch"] == 3, "the thinned model has the fewest non-zero weights"


def test_a_truncated_checkpoint_is_refused_with_one_line(tmp_path):
    app("-a", "lenet300_100", "--epochs", "1", "-o", str(tmp_path / "run"), cwd=tmp_path)
    good = run_folder(tmp_path / "run") / "lenet300_100_checkpoint.pth.tar"
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pth.tar"
    truncated.write_bytes(data[: len(data) // 2])
    line = error_line(app("--resume-from", str(truncated), "-o", str(tmp_path / "again"), cwd=tmp_path, check=False))
    assert line.startswith(f"compress_classifier.py: error: checkpoint '{truncated}' is incomplete or corrupt")
    assert not (tmp_path / "again").exists() or not any((tmp_path / "again").iterdir())


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch ran-code",))


def test_a_checkpoint_that_would_run_code_is_refused_and_the_code_never_runs(tmp_path):
    evil = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {}, "epoch": 0, "arch": "lenet300_100", "extras": _RunsCode()}, evil)
    for option in ("--resume-from", "--exp-load-weights-from"):
        line = error_line(app(option, str(evil), "-o", str(tmp_path), cwd=tmp_path, check=False))
        assert f"checkpoint '{evil}' refused: it holds an object that loading without running code does not " \
               "allow" in line
        assert "posix.system" in line
    assert not (tmp_path / "ran-code").exists()


def test_evaluate_summary_and_sensitivity_read_a_finished_run(tmp_path):
    app("-a", "lenet300_100", "--compress", str(AGP), "--epochs", "12", "--seed", "1", "-o", str(tmp_path / "train"),
        cwd=tmp_path)
    best = run_folder(tmp_path / "train") / "lenet300_100_best.pth.tar"

    table = app("--summary", "--exp-load-weights-from", str(best), cwd=tmp_path).stdout
    assert re.search(r"^fc1\.weight\s+\(300, 64\)\s+1920 .* 90\.00%$", table, re.M)
    assert re.search(r"^Total .* 89\.80%$", table, re.M)

    out = app("--evaluate", "--exp-load-weights-from", str(best), "-o", str(tmp_path / "eval"), cwd=tmp_path)
    summary = json.loads((run_folder(tmp_path / "eval") / "summary.json").read_text())
    assert summary["top1"] == pytest.approx(float(re.search(r"Test top-1 (\d+\.\d+)%", out.stdout).group(1)),
                                            abs=0.005)
    assert summary["top1"] > 90 and summary["sparsity"] == pytest.approx(89.80, abs=0.01)

    app("--sense", "element", "--sense-range", "0", "0.9", "0.3", "--exp-load-weights-from", str(best),
        "-o", str(tmp_path / "sense"), cwd=tmp_path)
    folder = run_folder(tmp_path / "sense")
    rows = (folder / "sensitivity.csv").read_text().splitlines()
    assert rows[0] == "parameter,sparsity,top1,top5,loss"
    assert [r.split(",")[:2] for r in rows[1:5]] == [["fc1.weight", s] for s in ("0.0", "0.3", "0.6", "0.9")]
    assert len(rows) == 1 + 3 * 4
    assert (folder / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"


def test_distillation_options_train_a_teacher_of_another_input_shape_and_log_the_term(tmp_path):
    out = app("-a", "lenet300_100", "--epochs", "2", "--kd-teacher", "simplenet_mnist", "--kd-teacher-epochs", "1",
              "--kd-temp", "4", "--kd-dw", "0.7", "--kd-sw", "0.3", "-o", str(tmp_path), cwd=tmp_path)
    assert "training the teacher simplenet_mnist for 1 epochs" in out.stdout
    assert re.search(r"epoch 2/2  loss \S+ \(objective \S+, distillation \S+\)", out.stdout)
    folder = run_folder(tmp_path)
    summary = json.loads((folder / "summary.json").read_text())
    assert set(summary["epochs"][0]["loss_components"]) == {"distillation"}
    assert summary["distillation"]["teacher"] == "simplenet_mnist"
    teacher = torch.load(folder / "teacher_checkpoint.pth.tar", weights_only=True)
    checkpoint = torch.load(folder / "lenet300_100_checkpoint.pth.tar", weights_only=True)
    for name, tensor in teacher["state_dict"].items():
        assert torch.equal(checkpoint["extras"]["kd_teacher"][name], tensor)

    again = app("-a", "lenet300_100", "--epochs", "1", "--kd-teacher", "simplenet_mnist", "--compress", str(AGP),
                "--kd-resume", str(folder / "teacher_checkpoint.pth.tar"), "-o", str(tmp_path / "loaded"),
                cwd=tmp_path)
    assert f"weights from {folder / 'teacher_checkpoint.pth.tar'}" in again.stdout
    assert "training the teacher" not in again.stdout
    assert re.search(r"epoch 1/1  loss \S+ \(objective \S+, distillation \S+\)", again.stdout), \
        "a schedule without distillers is pruned while the command line's teacher distils"


@pytest.mark.parametrize(("argv", "expected"), [
    (["-a", "lenet300_10"], "--arch lenet300_10: unknown architecture (did you mean 'lenet300_100'"),
    (["--dataset", "mnist", "-a", "simplenet_mnist", "nowhere"], "nowhere"),
    (["--gpus", "7", "--epochs", "0"], "--gpus 7: this machine has"),
    (["--kd-teacher", "simplenet_mnist", "--kd-resume", "missing.pth"],
     "teacher checkpoint 'missing.pth' does not exist"),
    (["--kd-teacher", "lenet300_100", "--kd-teacher-epochs", "0", "--kd-tw", "0.5"],
     "the teacher weight must be 0"),
])
def test_bad_command_lines_get_one_line(tmp_path, argv, expected):
    if "--gpus" in argv and torch.cuda.device_count() > 7:
        pytest.skip("this machine has eight GPUs")
    line = error_line(app(*argv, "-o", str(tmp_path), cwd=tmp_path, check=False))
    assert line.startswith("compress_classifier.py: error: ")
    assert expected in line


def test_a_bad_schedule_is_reported_at_its_line(tmp_path):
    schedule = tmp_path / "bad.yaml"
    schedule.write_text(AGP.read_text().replace("final_sparsity: 0.90", "final_sparsity: 1.5"))
    line = error_line(app("--compress", str(schedule), "-o", str(tmp_path / "out"), cwd=tmp_path, check=False))
    number = AGP.read_text().splitlines().index("    final_sparsity: 0.90") + 1
    assert line.startswith(f"compress_classifier.py: error: {schedule}:{number}:")
    assert "final_sparsity" in line


# -- mixed precision and torch.compile ------------------------------------------------------------------------


def top1_of(stdout: str) -> float:
    return float(re.search(r"Test top-1 (\d+\.\d+)%", stdout).group(1))


@pytest.fixture(scope="module")
def eager_agp(tmp_path_factory) -> tuple[dict[str, str], float]:
    """The per-layer levels and test top-1 of 12 epochs of the AGP schedule in full precision, uncompiled."""
    folder = tmp_path_factory.mktemp("eager")
    out = app("--compress", str(AGP), "--deterministic", "--epochs", "12", "-o", str(folder), cwd=folder)
    return dict(re.findall(r"^(fc\d\.weight) .* (\d+\.\d\d)%$", out.stdout, re.M)), top1_of(out.stdout)


@pytest.mark.parametrize("stack", [["--amp"], ["--amp", "fp16"], ["--compile", "aot_eager"]],
                         ids=["amp bf16", "amp fp16", "compile"])
def test_mixed_precision_and_compiled_runs_reach_the_schedules_levels_at_eagers_accuracy(tmp_path, eager_agp, stack):
    levels, top1 = eager_agp
    out = app("--compress", str(AGP), "--deterministic", "--epochs", "12", *stack, "-o", str(tmp_path),
              cwd=tmp_path)
    assert dict(re.findall(r"^(fc\d\.weight) .* (\d+\.\d\d)%$", out.stdout, re.M)) == levels == {
        "fc1.weight": "90.00", "fc2.weight": "90.00", "fc3.weight": "80.00"}
    assert abs(top1_of(out.stdout) - top1) <= 1.5, "within noise of full precision (1 test image: 0.28 points)"
    if stack == ["--compile", "aot_eager"]:
        assert top1_of(out.stdout) == top1, "aot_eager computes eager's numbers"
    summary = json.loads((run_folder(tmp_path) / "summary.json").read_text())
    expected = {"amp": "bf16" if stack == ["--amp"] else "fp16" if "fp16" in stack else None,
                "compile": "aot_eager" if "--compile" in stack else None, "fsdp": False}
    assert {key: summary["hyperparameters"][key] for key in expected} == expected
    assert "training with " in out.stdout


@pytest.mark.parametrize(("argv", "env", "expected"), [
    (["--fsdp"], {}, "--fsdp shards the model over the processes of a torchrun job; start the run with torchrun "
                     "--nproc_per_node=N"),
    (["--fsdp", "--amp", "fp16"], {"RANK": "1", "WORLD_SIZE": "2"},
     "rank 1: --amp fp16 with --fsdp: the gradient scaler would decide on each rank's gradient shards alone; use "
     "--amp bf16, which needs no scaler"),
    (["--fsdp", "--sense", "element"], {"RANK": "0", "WORLD_SIZE": "2"},
     "--fsdp with --sense: --sense reads or prunes whole weights; run it in one process"),
    (["--amp", "--evaluate"], {}, "--amp with --evaluate: mixed precision applies to training, and --evaluate trains "
                                  "nothing"),
    (["--compile", "inductr"], {}, "--compile inductr: unknown torch.compile backend (did you mean 'inductor'"),
], ids=["fsdp outside torchrun", "fp16 scaler on shards", "fsdp sensitivity", "amp evaluation", "backend"])
def test_training_stack_options_that_cannot_run_together_get_one_line(tmp_path, argv, env, expected):
    line = error_line(app(*argv, "-o", str(tmp_path / "out"), cwd=tmp_path, check=False, env=env))
    assert line.startswith("compress_classifier.py: error: ")
    assert expected in line
    assert not (tmp_path / "out").exists()
