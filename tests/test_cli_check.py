"""``hookprune check``: the user's own model (``--model MODULE:FACTORY``), every error of a file at once, and what
the training loop will not provide (``--metrics``, ``--validation-freq``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hookprune import cli

#: a model factory module, as a user would keep next to their training script
MODELS = """\
import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Linear(16, 32)
        self.head = torch.nn.Linear(32, 4)

    def forward(self, x):
        return self.head(torch.relu(self.encoder(x)))


def build():
    return Net()


def broken():
    raise RuntimeError("no weights at\\n/data/net.pt")


def not_a_model():
    return 42


settings = {"width": 32}
"""

SCHEDULE = """\
version: 1
pruners:
  agp:
    class: AutomatedGradualPruner
    initial_sparsity: 0.05
    final_sparsity: 0.8
    weights: [encoder.weight, head.weight]
lr_schedulers:
  plateau:
    class: ReduceLROnPlateau
    mode: max
    patience: 2
policies:
  - pruner:
      instance_name: agp
    starting_step: 10
    ending_step: 200
    step_frequency: 10
  - lr_scheduler:
      instance_name: plateau
    starting_epoch: 0
    ending_epoch: 30
    frequency: 1
"""


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding the user's ``user_models.py`` and ``s.yaml``; sys.path restored afterwards."""
    (tmp_path / "user_models.py").write_text(MODELS)
    (tmp_path / "s.yaml").write_text(SCHEDULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "user_models", raising=False)
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, list[str]]:
    status = cli.main(["check", *args])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return status, captured.out, captured.err.splitlines()


def test_a_schedule_checks_against_the_users_own_model(user_dir, capsys):
    status, out, err = run(capsys, "s.yaml", "--model", "user_models:build")
    assert (status, err) == (0, [])
    assert out == "s.yaml: ok (2 instances, epochs 0..29, steps 10..190, model user_models:build)\n"


def test_a_misspelled_weight_of_the_users_model_is_found(user_dir, capsys):
    (user_dir / "s.yaml").write_text(SCHEDULE.replace("head.weight]", "haed.weight]"))
    status, out, err = run(capsys, "s.yaml", "--model", "user_models:build")
    assert (status, out) == (1, "")
    assert err == ["s.yaml:7:31: pruners.agp (AutomatedGradualPruner): the model has no parameter 'haed.weight' "
                   "(did you mean 'head.weight' or 'encoder.weight'?)"]


@pytest.mark.parametrize(("spec", "message"), [
    ("user_models", "--model 'user_models': give MODULE:FACTORY, a function that returns the model (e.g. "
                    "mypackage.models:build)"),
    ("no_such_module:build", "--model 'no_such_module:build': cannot import 'no_such_module': "
                             "ModuleNotFoundError: No module named 'no_such_module'"),
    ("user_models:biuld", "--model 'user_models:biuld': module 'user_models' has no 'biuld'"),
    ("user_models:settings", "--model 'user_models:settings': module 'user_models' has a non-callable 'settings'"),
    ("user_models:broken", "--model 'user_models:broken': broken() raised RuntimeError: no weights at "
                           "/data/net.pt"),
    ("user_models:not_a_model", "--model 'user_models:not_a_model': not_a_model() returned int, not a "
                                "torch.nn.Module"),
])
def test_a_model_that_cannot_be_built_is_one_line_and_status_2(user_dir, capsys, spec, message):
    status, out, err = run(capsys, "s.yaml", "--model", spec)
    assert (status, out, err) == (2, "", [f"hookprune check: {message}"])


def test_a_module_that_fails_to_import_is_one_line(user_dir, capsys):
    (user_dir / "bad_models.py").write_text("import torch\nraise ImportError('needs CUDA 13')\n")
    status, out, err = run(capsys, "s.yaml", "--model", "bad_models:build")
    assert (status, out, err) == (2, "", ["hookprune check: --model 'bad_models:build': cannot import 'bad_models': "
                                          "ImportError: needs CUDA 13"])


def test_arch_and_model_are_exclusive_and_one_is_required(user_dir, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["check", "s.yaml"])
    assert exited.value.code == 2
    assert "one of the arguments --arch/-a --model/-m is required" in capsys.readouterr().err


def test_every_independent_error_of_a_file_is_reported_in_file_order(user_dir, capsys):
    (user_dir / "s.yaml").write_text("""\
version: 1
pruners:
  agp:
    class: AutomatedGradualPrunner
    initial_sparsity: 0.05
    final_sparsity: 0.8
    weights: [encoder.weight]
  level:
    class: SparsityLevelParameterPruner
    levels: {head.wieght: 0.5}
regularizers:
  l1:
    class: L1Regularizer
    reg_regims: {encoder.weight: 0.01}
lr_schedulers:
  decay:
    class: ExponentialLR
    gamma: 0.9
policies:
  - pruner:
      instance_name: agp
    starting_epoch: 0
    ending_epoch: 10
  - pruner:
      instance_name: level
    starting_epoch: 0
    ending_epoch: 10
  - regularizer:
      instance_name: l1
    starting_epoch: 5
    ending_epoch: 2
  - lr_scheduler:
      instance_name: decay
    starting_epoch: 0
    ending_step: 10
""")
    status, out, err = run(capsys, "s.yaml", "--model", "user_models:build")
    assert (status, out) == (1, "")
    # the policies of the two pruners that failed are not reported again
    assert [line.split(": ", 1)[0] for line in err] == ["s.yaml:4:12", "s.yaml:10:14", "s.yaml:31:19",
                                                         "s.yaml:35:5"]
    assert err[0].startswith("s.yaml:4:12: unknown class 'AutomatedGradualPrunner' (did you mean "
                             "'AutomatedGradualPruner'")
    assert err[1] == ("s.yaml:10:14: pruners.level (SparsityLevelParameterPruner): 'levels': the model has no "
                      "parameter 'head.wieght' (did you mean 'head.weight', 'encoder.weight' or 'head.bias'?)")
    assert err[2] == "s.yaml:31:19: policy #3: 'ending_epoch' (2) must be greater than 'starting_epoch' (5)"
    assert err[3] == ("s.yaml:35:5: policy #4: give either epochs (starting_epoch) or steps (ending_step), not "
                      "both")


def test_a_plateau_metric_the_loop_does_not_pass_is_found_before_training(user_dir, capsys):
    status, out, err = run(capsys, "s.yaml", "--model", "user_models:build", "--metrics", "min")
    assert (status, out) == (1, "")
    assert err == ["s.yaml:11:11: lr_schedulers.plateau (ReduceLROnPlateau): mode 'max' reads metrics['max'] at the "
                   "end of each epoch of its policy, but the loop passes 'min' (hookprune check --metrics)"]
    status, _, err = run(capsys, "s.yaml", "--model", "user_models:build", "--metrics", "")
    assert status == 1 and err[0].endswith("but the loop passes none (hookprune check --metrics)")
    assert run(capsys, "s.yaml", "--model", "user_models:build", "--metrics", "max,val_acc")[0] == 0


def test_a_plateau_stepping_in_an_epoch_without_validation_is_found_before_training(user_dir, capsys):
    status, out, err = run(capsys, "s.yaml", "--model", "user_models:build", "--validation-freq", "3")
    assert (status, out) == (1, "")
    assert err == ["s.yaml:21:21: policy #2: lr_schedulers.plateau (ReduceLROnPlateau) steps at the end of epoch 0, "
                   "which the loop does not validate (it validates every 3 epochs, after epochs 2, 5, ...), so "
                   "metrics['max'] would be missing; give the policy epochs it validates, e.g. starting_epoch: 2 "
                   "and frequency: 3"]
    (user_dir / "s.yaml").write_text(SCHEDULE.replace("starting_epoch: 0\n    ending_epoch: 30\n    frequency: 1",
                                                      "starting_epoch: 2\n    ending_epoch: 30\n    frequency: 3"))
    assert run(capsys, "s.yaml", "--model", "user_models:build", "--validation-freq", "3")[0] == 0
    status, _, err = run(capsys, "s.yaml", "--model", "user_models:build", "--validation-freq", "0")
    assert (status, err) == (2, ["hookprune check: --validation-freq must be at least 1, got 0"])


def test_the_command_imports_the_model_from_the_working_directory(user_dir):
    proc = subprocess.run([sys.executable, "-m", "hookprune", "check", "s.yaml", "--model", "user_models:build"],
                          cwd=user_dir, capture_output=True, text=True, timeout=120, check=False)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.endswith("model user_models:build)\n")
