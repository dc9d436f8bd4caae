"""Malformed schedules: every problem is one line ``path:line:col: message`` naming the culprit.

Each case is a variant of one valid schedule (``BASE``), written to a file and checked through the
real ``hookprune check`` command; a few also run in a subprocess, to prove that no traceback
reaches stderr, and through the library (``hookprune.load``), which raises ``ScheduleError`` with
the same text.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

import hookprune
from hookprune import cli, models

ARCH = "alexnet"

#: A valid schedule for torchvision's AlexNet; the cases below change one thing in it. Line numbers
#: in the cases refer to this text (a case that inserts lines says so).
BASE = """\
version: 1
pruners:
  conv_pruner:
    class: AutomatedGradualPruner
    initial_sparsity: 0.05
    final_sparsity: 0.5
    weights: [features.module.3.weight]
lr_schedulers:
  pruning_lr:
    class: ExponentialLR
    gamma: 0.9
policies:
  - pruner:
      instance_name: conv_pruner
    starting_epoch: 0
    ending_epoch: 10
    frequency: 2
  - lr_scheduler:
      instance_name: pruning_lr
    starting_epoch: 0
    ending_epoch: 20
    frequency: 1
"""

#: Replaced by the test's tmp_path in a case's text.
TMP = "@TMP@"


def variant(old: str, new: str) -> str:
    """BASE with its one occurrence of ``old`` replaced by ``new``."""
    assert BASE.count(old) == 1, f"{old!r} is not unique in BASE"
    return BASE.replace(old, new)


@dataclass(frozen=True)
class Case:
    id: str
    text: str | bytes
    line: int
    col: int | None
    contains: tuple[str, ...]
    #: at least one of these must appear (e.g. either spelling of a suggested parameter name)
    any_of: tuple[str, ...] = ()
    #: none of these may appear (internal names, awkward phrasing)
    absent: tuple[str, ...] = ()
    marks: tuple = field(default=())


AGP_ONE_EPOCH = "    starting_epoch: 0\n    ending_epoch: 10\n    frequency: 2\n"

#: A torch LR scheduler whose constructor would raise ZeroDivisionError (step_size_up / total_size).
CYCLIC_LR_ZERO_STEP = variant("    class: ExponentialLR\n    gamma: 0.9",
                              "    class: CyclicLR\n    base_lr: 0.1\n    max_lr: 1.0\n    step_size_up: 0")
#: A torch LR scheduler whose constructor raises ValueError (one min_lr per parameter group, and there is one).
PLATEAU_TWO_MIN_LRS = variant("    class: ExponentialLR\n    gamma: 0.9",
                              "    class: ReduceLROnPlateau\n    min_lr: [0.1, 0.2]")

CASES = [
    # -- YAML reading -------------------------------------------------------------------------
    Case("duplicate-key-in-pruner",
         variant("    final_sparsity: 0.5\n", "    final_sparsity: 0.5\n    final_sparsity: 0.6\n"),
         7, 5, ("duplicate key 'final_sparsity'", "line 6")),
    Case("duplicate-key-top-level",
         BASE + "pruners:\n  other_pruner:\n    class: AutomatedGradualPruner\n",
         23, 1, ("duplicate key 'pruners'", "line 2")),
    Case("unsafe-tag-object-apply",
         variant("    final_sparsity: 0.5",
                 f'    final_sparsity: !!python/object/apply:os.system ["touch {TMP}/pwned"]'),
         6, 21, ("python/object/apply:os.system", "not allowed")),
    Case("unsafe-tag-python-name",
         variant("class: AutomatedGradualPruner", "class: !!python/name:os.system ''"),
         4, 12, ("python/name:os.system", "not allowed")),
    Case("empty-file", "", 1, 1, ("empty",)),
    Case("only-comments", "# nothing to see here\n", 1, 1, ("empty",)),
    Case("only-a-list", "- pruners\n- policies\n", 1, 1, ("mapping", "list"), absent=("LocList",)),
    Case("bad-indentation",
         variant("    initial_sparsity: 0.05", "   initial_sparsity: 0.05"),
         5, None, ("invalid YAML",)),
    Case("tab-indentation",
         variant("    initial_sparsity: 0.05", "\tinitial_sparsity: 0.05"),
         5, 1, ("invalid YAML",), any_of=("'\\t'", "tab character")),
    Case("not-utf8", BASE.encode() + b"# caf\xe9\n", 23, 6, ("not a UTF-8 text file", "at byte 459")),
    Case("nul-byte",
         variant("    final_sparsity: 0.5", "    final_sparsity: 0.5\x00"),
         6, 24, ("invalid YAML", "U+0000")),
    Case("alias-bomb",
         variant("    final_sparsity: 0.5", "    final_sparsity: [&l0 [" + ", ".join(["lol"] * 10) + "], "
                 + ", ".join(f"&l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)) + "]"),
         6, None, ("more than 200,000 values", "aliases expanded")),
    Case("deep-nesting",
         variant("    weights: [features.module.3.weight]", "    weights: " + "[" * 100_000 + "]" * 100_000),
         7, None, ("nest",)),
    Case("date",
         variant("    final_sparsity: 0.5", "    final_sparsity: 2020-01-01"),
         6, 21, ("'2020-01-01'", "date")),
    # -- top level ----------------------------------------------------------------------------
    Case("unknown-section",
         variant("pruners:\n", "prunners:\n"),
         2, 1, ("'prunners'", "'pruners'")),
    Case("version-2",
         variant("version: 1", "version: 2"),
         1, 10, ("version", "2")),
    Case("section-is-a-list",
         "version: 1\npruners:\n  - conv_pruner\n",
         3, 3, ("'pruners'", "list"), absent=("LocList",)),
    # -- instances ----------------------------------------------------------------------------
    Case("misspelled-class",
         variant("class: AutomatedGradualPruner", "class: AutomatedGradualPrunr"),
         4, 12, ("'AutomatedGradualPrunr'", "'AutomatedGradualPruner'")),
    Case("missing-class",
         variant("    class: AutomatedGradualPruner\n", ""),
         3, 3, ("conv_pruner", "'class'")),
    Case("misspelled-kwarg",
         variant("    final_sparsity: 0.5", "    final_sparsty: 0.5"),
         6, 5, ("conv_pruner", "'final_sparsty'", "'final_sparsity'")),
    Case("missing-required-kwarg",
         variant("    final_sparsity: 0.5\n", ""),
         3, 3, ("conv_pruner", "missing", "'final_sparsity'")),
    Case("wrong-type-string-sparsity",
         variant("    final_sparsity: 0.5", '    final_sparsity: "high"'),
         6, 21, ("conv_pruner", "'final_sparsity'", "'high'")),
    Case("wrong-type-int-weights",
         variant("    weights: [features.module.3.weight]", "    weights: 3"),
         7, 14, ("conv_pruner", "'weights'", "got 3"),
         absent=("a list of a string",)),
    Case("sparsity-above-one",
         variant("    final_sparsity: 0.5", "    final_sparsity: 1.5"),
         6, 21, ("conv_pruner", "'final_sparsity'", "1.5")),
    Case("initial-above-final",
         variant("    initial_sparsity: 0.05", "    initial_sparsity: 0.6"),
         6, 21, ("conv_pruner", "'final_sparsity'", "'initial_sparsity'", "0.6")),
    Case("misspelled-parameter-flow-list",
         variant("features.module.3.weight]", "features.module.3.weigth]"),
         7, 15, ("conv_pruner", "'features.module.3.weigth'"),
         any_of=("'features.module.3.weight'", "'features.3.weight'")),
    Case("misspelled-parameter-block-list",  # inserts a line: the culprit is on line 9
         variant("    weights: [features.module.3.weight]\n",
                 "    weights:\n      - features.module.3.bias\n      - features.module.3.weigth\n"),
         9, 9, ("'features.module.3.weigth'",),
         any_of=("'features.module.3.weight'", "'features.3.weight'")),
    Case("magnitude-pruner-without-default-threshold",  # lines 4-7 become 4-6
         variant("    class: AutomatedGradualPruner\n    initial_sparsity: 0.05\n    final_sparsity: 0.5\n"
                 "    weights: [features.module.3.weight]\n",
                 "    class: MagnitudeParameterPruner\n    thresholds:\n"
                 "      features.module.3.weight: 0.1\n"),
         6, 7, ("conv_pruner", "'thresholds'", "'*'")),
    Case("level-out-of-range-points-at-its-entry",  # lines 4-7 become 4-8
         variant("    class: AutomatedGradualPruner\n    initial_sparsity: 0.05\n    final_sparsity: 0.5\n"
                 "    weights: [features.module.3.weight]\n",
                 "    class: SparsityLevelParameterPruner\n    levels:\n      features.module.0.weight: 0.5\n"
                 "      features.module.3.weight: 1.5\n"),
         7, 7, ("conv_pruner", "levels['features.3.weight']", "1.5")),
    Case("lr-scheduler-unknown-kwarg",
         variant("    gamma: 0.9", "    gama: 0.9"),
         11, 5, ("pruning_lr", "ExponentialLR", "'gama'", "'gamma'")),
    Case("lr-argument-checked-before-the-constructor",  # the LR scheduler grows by two lines
         CYCLIC_LR_ZERO_STEP,
         13, 19, ("pruning_lr", "CyclicLR", "'step_size_up' must be a positive integer, got 0")),
    Case("constructor-raises",
         PLATEAU_TWO_MIN_LRS,
         9, 3, ("lr_schedulers.pruning_lr (ReduceLROnPlateau): expected 1 min_lrs, got 2",)),
    # -- policies -----------------------------------------------------------------------------
    Case("unknown-instance-name",
         variant("instance_name: conv_pruner", "instance_name: conv_prunr"),
         14, 22, ("'conv_prunr'", "'conv_pruner'")),
    Case("instance-of-another-section",
         variant("instance_name: conv_pruner", "instance_name: pruning_lr"),
         14, 22, ("'pruning_lr'", "'lr_schedulers'", "'pruners'")),
    Case("ending-not-after-starting",
         variant("    ending_epoch: 10", "    ending_epoch: 0"),
         16, 19, ("'ending_epoch'", "'starting_epoch'")),
    Case("frequency-zero",
         variant("    frequency: 2", "    frequency: 0"),
         17, 16, ("'frequency'", "got 0")),
    Case("negative-starting-epoch",
         variant("    starting_epoch: 0\n    ending_epoch: 10", "    starting_epoch: -1\n    ending_epoch: 10"),
         15, 21, ("'starting_epoch'", "-1")),
    Case("epochs-not-increasing",  # three lines become one
         variant(AGP_ONE_EPOCH, "    epochs: [3, 2, 5]\n"),
         15, 13, ("'epochs'", "increasing", "[3, 2, 5]")),
    Case("epochs-and-starting-epoch",
         variant("    frequency: 2\n", "    frequency: 2\n    epochs: [1, 3]\n"),
         18, 5, ("'epochs'", "starting_epoch")),
    Case("misspelled-policy-key",
         variant("    frequency: 2", "    frequncy: 2"),
         17, 5, ("'frequncy'", "'frequency'")),
    Case("unknown-pruner-policy-arg",
         variant("      instance_name: conv_pruner\n",
                 "      instance_name: conv_pruner\n      args:\n        keep_masks: true\n"),
         16, 9, ("conv_pruner", "'keep_masks'", "'keep_mask'")),
    Case("mask-gradients-without-mask-on-forward-only",
         variant("      instance_name: conv_pruner\n",
                 "      instance_name: conv_pruner\n      args:\n        mask_gradients: true\n"),
         16, 25, ("conv_pruner", "'mask_gradients'", "mask_on_forward_only")),
    Case("agp-window-too-short",
         variant(AGP_ONE_EPOCH, "    starting_epoch: 0\n    ending_epoch: 1\n    frequency: 1\n"),
         14, 22, ("conv_pruner", "AutomatedGradualPruner", "ending_epoch", "frequency")),
]


def _params(cases: list[Case]) -> list:
    return [pytest.param(c, id=c.id, marks=c.marks) for c in cases]


def write_case(case: Case, tmp_path: Path) -> Path:
    path = tmp_path / f"{case.id}.yaml"
    if isinstance(case.text, bytes):
        path.write_bytes(case.text)
    else:
        path.write_text(case.text.replace(TMP, str(tmp_path)), encoding="utf-8")
    return path


def check_in_process(path: Path | str, capsys: pytest.CaptureFixture[str], arch: str = ARCH
                     ) -> tuple[int, str, str]:
    status = cli.main(["check", str(path), "--arch", arch])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def check_in_subprocess(path: Path, arch: str = ARCH) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hookprune", "check", str(path), "--arch", arch],
                          capture_output=True, text=True, timeout=120, check=False)


def one_line(stderr: str) -> str:
    """The single line of ``stderr``; fails when there are more, or none."""
    assert "Traceback" not in stderr
    assert stderr.endswith("\n"), repr(stderr)
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def assert_reports(case: Case, path: Path, line: str) -> None:
    """``line`` is ``path:line:col: message`` as the case expects."""
    if case.line:
        match = re.match(rf"{re.escape(str(path))}:(\d+):(\d+): (.+)$", line)
        assert match, line
        assert int(match[1]) == case.line, line
        if case.col is not None:
            assert int(match[2]) == case.col, line
        message = match[3]
    else:
        assert line.startswith(f"{path}: "), line
        message = line[len(f"{path}: "):]
    for text in case.contains:
        assert text in message, f"{text!r} not in {line!r}"
    if case.any_of:
        assert any(text in message for text in case.any_of), f"none of {case.any_of} in {line!r}"
    for text in case.absent:
        assert text not in message, f"{text!r} in {line!r}"


@pytest.fixture(scope="module")
def alexnet() -> torch.nn.Module:
    return models.create_model(ARCH, device="meta")


# -- the CLI ----------------------------------------------------------------------------------


def test_base_schedule_is_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "base.yaml"
    path.write_text(BASE, encoding="utf-8")
    status, out, err = check_in_process(path, capsys)
    assert (status, err) == (0, "")
    assert out.startswith(f"{path}: ok")


@pytest.mark.parametrize("case", _params(CASES))
def test_check_reports_one_line(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_case(case, tmp_path)
    status, out, err = check_in_process(path, capsys)
    assert status == 1, (out, err)
    assert out == ""
    assert_reports(case, path, one_line(err))
    assert not (tmp_path / "pwned").exists()


CASES_BY_ID = {c.id: c for c in CASES}


@pytest.mark.parametrize("case_id", ["unsafe-tag-object-apply", "misspelled-parameter-flow-list", "deep-nesting"])
def test_subprocess_has_no_traceback(case_id: str, tmp_path: Path) -> None:
    case = CASES_BY_ID[case_id]
    path = write_case(case, tmp_path)
    proc = check_in_subprocess(path)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert_reports(case, path, one_line(proc.stderr))
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("failure", [MemoryError(), RecursionError("maximum recursion depth exceeded"),
                                     OverflowError("Python int too large to convert to C long")],
                         ids=["memory", "recursion", "overflow"])
def test_check_gives_one_line_for_any_failure(failure: Exception, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def build(*args: object, **kwargs: object) -> None:
        raise failure

    monkeypatch.setattr("hookprune.config.builder.check", build)
    path = tmp_path / "base.yaml"
    path.write_text(BASE, encoding="utf-8")
    status, out, err = check_in_process(path, capsys)
    assert (status, out) == (1, "")
    detail = f": {failure}" if str(failure) else ""
    assert one_line(err) == f"{path}: {type(failure).__name__}{detail}"


def test_missing_schedule_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nowhere.yaml"
    status, _, err = check_in_process(path, capsys)
    assert status == 1
    assert one_line(err) == f"{path}: no such schedule file"


def test_schedule_path_is_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = check_in_process(tmp_path, capsys)
    assert status == 1
    assert one_line(err).startswith(f"{tmp_path}: ")


def test_unknown_arch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "base.yaml"
    path.write_text(BASE, encoding="utf-8")
    status, out, err = check_in_process(path, capsys, arch="alexnett")
    assert status != 0
    assert out == ""
    line = one_line(err)
    assert "'alexnett'" in line and "'alexnet'" in line, line


def test_corpus_alexnet_agp_passes(corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = corpus / "agp-pruning" / "alexnet.schedule_agp.yaml"
    status, out, err = check_in_process(path, capsys)
    assert (status, err) == (0, "")
    assert out.startswith(f"{path}: ok (6 instances")


# -- the library ------------------------------------------------------------------------------


@pytest.mark.parametrize("case_id", ["misspelled-class", "misspelled-parameter-block-list", "frequency-zero",
                                     "lr-scheduler-unknown-kwarg", "only-a-list"])
def test_load_raises_the_cli_line(case_id: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  alexnet: torch.nn.Module) -> None:
    path = write_case(CASES_BY_ID[case_id], tmp_path)
    status, _, err = check_in_process(path, capsys)
    assert status == 1
    optimizer = torch.optim.SGD(alexnet.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(hookprune.ScheduleError) as info:
        hookprune.load(path, alexnet, optimizer)
    assert isinstance(info.value, ValueError)
    assert str(info.value) == one_line(err)


def test_load_wraps_any_constructor_failure(tmp_path: Path, alexnet: torch.nn.Module) -> None:
    path = tmp_path / "plateau.yaml"
    path.write_text(PLATEAU_TWO_MIN_LRS, encoding="utf-8")
    optimizer = torch.optim.SGD(alexnet.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(hookprune.ScheduleError) as info:
        hookprune.load(path, alexnet, optimizer)
    assert str(info.value) == f"{path}:9:3: lr_schedulers.pruning_lr (ReduceLROnPlateau): expected 1 min_lrs, got 2"


def _dict_schedule(**pruner: object) -> dict:
    return {
        "version": 1,
        "pruners": {"conv_pruner": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.05,
                                    "final_sparsity": 0.5, "weights": ["features.module.3.weight"],
                                    **pruner}},
        "policies": [{"pruner": {"instance_name": "conv_pruner"},
                      "starting_epoch": 0, "ending_epoch": 10, "frequency": 2}],
    }


def test_load_dict_valid(alexnet: torch.nn.Module) -> None:
    sched = hookprune.load(_dict_schedule(), alexnet)
    assert set(sched.instances) == {"conv_pruner"}


@pytest.mark.parametrize(("pruner", "expected"), [
    ({"class": "AutomatedGradualPrunr"}, ("'AutomatedGradualPrunr'", "'AutomatedGradualPruner'")),
    ({"final_sparsty": 0.5}, ("'final_sparsty'", "'final_sparsity'")),
    ({"weights": ["features.module.3.weigth"]}, ("'features.module.3.weigth'", "'features.3.weight'")),
], ids=["misspelled-class", "misspelled-kwarg", "misspelled-parameter"])
def test_load_dict_raises_one_line(pruner: dict, expected: tuple[str, ...], alexnet: torch.nn.Module) -> None:
    with pytest.raises(hookprune.ScheduleError) as info:
        hookprune.load(_dict_schedule(**pruner), alexnet)
    text = str(info.value)
    assert "\n" not in text
    for part in expected:
        assert part in text, text
