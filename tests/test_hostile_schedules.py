"""Hostile schedules: whatever a file holds, the outcome is a scheduler or one ``path:line:col`` line, fast.

A seeded mutation fuzzer (``tests/hostile.py``) turns Distiller's schedules into mutants and builds
each on a meta-device model of its architecture; then explicit cases pin the exact line for each
kind of problem the reader refuses and for the LR schedulers' argument checks.
"""

from __future__ import annotations

import copy
import functools
import gc
import re
import time
import warnings
from pathlib import Path

import pytest
import torch

from hookprune import models
from hookprune._engine import registry
from hookprune.config import lr_arguments, reader
from hookprune.config.builder import build
from hookprune.errors import MAX_MESSAGE_CHARS, ScheduleError
from tests import hostile
from tests.test_corpus import manifest, missing_pieces
from tests.test_schedule_errors import BASE, check_in_process, one_line, variant

SEED = 19
#: thirty of each operator; about 30 s on two busy cores
MUTANTS = 30 * len(hostile.OPERATORS)
#: the most one hostile schedule may take, reading and building included
SECONDS = 2.0
#: operators whose every mutant the reader must refuse
ALWAYS_REFUSED = ("tag", "control-character", "deep-nesting", "huge", "unhashable-key")

ONE_LINE_AT = r":\d+:\d+: [^\n]+"


@pytest.fixture(params=["libyaml", "python"])
def yaml_parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with libyaml's parser and with PyYAML's pure-Python one (used when libyaml is missing)."""
    if request.param == "libyaml":
        if not hasattr(reader, "_LibyamlLoader"):
            pytest.skip("PyYAML was built without libyaml")
        monkeypatch.setattr(reader, "_ScheduleLoader", reader._LibyamlLoader)
    else:
        monkeypatch.setattr(reader, "_ScheduleLoader", reader._PythonLoader)
    return request.param


def refusal(text: str) -> str:
    """The one line the reader gives for ``text`` read as ``s.yaml``."""
    with pytest.raises(ScheduleError) as info:
        reader.loads(text, "s.yaml")
    return str(info.value)


# -- the fuzzer ------------------------------------------------------------------------------------


def run_mutants(corpus: Path, tmp_path: Path, operators: dict[str, hostile.Operator], count: int
                ) -> tuple[list[str], dict[str, set[str]]]:
    """Build ``count`` mutants; return what went wrong (escapes, malformed lines, slowness) and each
    operator's outcomes ("built", "refused", "escaped")."""
    schedules = [(schedule, arch, (corpus / schedule).read_text(encoding="utf-8"))
                 for schedule, arch in manifest() if not missing_pieces(corpus / schedule, arch)]
    architectures: dict[str, torch.nn.Module] = {}
    path = tmp_path / "mutant.yaml"
    failures: list[str] = []
    outcomes: dict[str, set[str]] = {name: set() for name in operators}
    for mutant in hostile.mutants(SEED, count, schedules, operators):
        path.write_bytes(mutant.data)
        if mutant.arch not in architectures:
            architectures[mutant.arch] = models.create_model(mutant.arch, device="meta")
        model = copy.deepcopy(architectures[mutant.arch])
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                build(path, model, optimizer)
            outcome = "built"
        except ScheduleError as exc:
            outcome = "refused"
            if not re.fullmatch(re.escape(str(path)) + ONE_LINE_AT, str(exc)):
                failures.append(f"{mutant}: not one 'path:line:col: message' line: {str(exc)[:300]!r}")
        except Exception as exc:
            outcome = "escaped"
            failures.append(f"{mutant}: {type(exc).__name__} escaped: {str(exc)[:300]}")
        seconds = time.perf_counter() - start
        if seconds > SECONDS:
            failures.append(f"{mutant}: took {seconds:.1f} s")
        outcomes[mutant.operator].add(outcome)
    return failures, outcomes


@pytest.fixture
def providers_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The installed distributions do not change while mutants run: look their entry points up once."""
    monkeypatch.setattr(registry, "class_providers", functools.cache(registry.class_providers))


@pytest.mark.usefixtures("providers_once")
def test_mutants_of_the_corpus_build_or_give_one_line(corpus: Path, tmp_path: Path) -> None:
    failures, outcomes = run_mutants(corpus, tmp_path, hostile.OPERATORS, MUTANTS)
    assert not failures, f"seed {SEED}, {len(failures)} of {MUTANTS} mutants:\n" + "\n".join(failures)
    assert all(outcomes[name] == {"refused"} for name in ALWAYS_REFUSED), outcomes
    assert all(outcomes.values()), outcomes


def test_mutants_are_reproducible() -> None:
    schedules = [("s.yaml", "alexnet", BASE)]
    first = list(hostile.mutants(SEED, 2 * len(hostile.OPERATORS), schedules))
    assert first == list(hostile.mutants(SEED, 2 * len(hostile.OPERATORS), schedules))
    assert {m.operator for m in first} == set(hostile.OPERATORS)
    assert all(m.data != BASE.encode() for m in first if m.operator in ALWAYS_REFUSED)


# -- what the reader refuses -------------------------------------------------------------------------


def nested_mappings(depth: int) -> str:
    """``depth`` block mappings inside each other, a scalar at the bottom (``depth + 1`` levels)."""
    return "".join("  " * i + f"k{i}:\n" for i in range(depth)) + "  " * depth + "end\n"


def alias_bomb(levels: int) -> str:
    """``levels`` anchors, each a list of ten aliases of the one before: 10**levels strings expanded."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * 10)}]\n"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, levels)]
    return "".join(lines)


TAGGED = "a schedule holds only plain values, lists and mappings"
DEEP = "the schedule nests more than 64 levels deep here (aliases expanded); a schedule is limited to that depth"
NOT_FINITE = "is not a finite number; a schedule's numbers are finite"
INT64 = "does not fit in 64 bits; a schedule's integers lie within [-9223372036854775808, 9223372036854775807]"

READER_CASES = {
    "nul": ("version: 1\npolicies: x\x00\n", "2:12: invalid YAML: character U+0000 is not allowed (YAML text "
                                              "holds no control characters, NUL included)"),
    "escape-after-crlf": ("version: 1\r\npolicies:\r\n  - \x1b[31m\r\n",
                          "3:5: invalid YAML: character U+001B is not allowed (YAML text holds no control "
                          "characters, NUL included)"),
    "surrogate": ("a: \ud800\n", "1:4: invalid YAML: character U+D800 is not allowed (YAML text holds no "
                                 "control characters, NUL included)"),
    "nested-mappings": (nested_mappings(64), f"64:127: {DEEP}"),
    "nested-flow-lists": ("[" * 64 + "1" + "]" * 64 + "\n", f"1:65: {DEEP}"),
    "nested-flow-mappings-100000": ("a: " + "{a: " * 100_000 + "1" + "}" * 100_000, f"1:253: {DEEP}"),
    "nested-through-an-alias": ("deep: &deep " + "[" * 40 + "1" + "]" * 40 + "\nuse: " + "[" * 24 + "*deep"
                                + "]" * 24 + "\n", f"2:30: {DEEP}"),
    "billion-laughs": (alias_bomb(9), "6:10: the schedule holds more than 200,000 values here (aliases "
                                      "expanded); a schedule is limited to that many"),
    "recursive-alias": ("a: &a [1, *a]\n", "1:11: alias '*a' stands for a list or mapping that contains it; "
                                           "a schedule cannot be recursive"),
    "undefined-alias": ("a: *nowhere\n", "1:4: invalid YAML: alias '*nowhere' names no anchor before it"),
    "anchor-twice": ("a: &x 1\nb: &x 2\n", "2:4: invalid YAML: anchor '&x' is defined twice (first at line 1)"),
    "timestamp-tag-on-a-key": ("!!timestamp 2020-01-01: x\n", f"1:1: YAML tag '!!timestamp' is not allowed: {TAGGED}"),
    "int-tag-on-a-key": ("policies:\n  - !!int starting_epoch: 0\n",
                         f"2:5: YAML tag '!!int' is not allowed: {TAGGED}"),
    "int-tag": ("gamma: !!int 0.1\n", f"1:8: YAML tag '!!int' is not allowed: {TAGGED}"),
    "str-tag": ("gamma: !!str 0.1\n", f"1:8: YAML tag '!!str' is not allowed: {TAGGED}"),
    "binary-tag": ("weights: !!binary aGVsbG8=\n", f"1:10: YAML tag '!!binary' is not allowed: {TAGGED}"),
    "set-tag": ("weights: !!set {a, b}\n", f"1:10: YAML tag '!!set' is not allowed: {TAGGED}"),
    "python-tag": ("x: !!python/object/apply:os.system ['true']\n",
                   f"1:4: YAML tag '!!python/object/apply:os.system' is not allowed: {TAGGED}"),
    "local-tag": ("x: !secret y\n", f"1:4: YAML tag '!secret' is not allowed: {TAGGED}"),
    "verbatim-tag": ("x: !<tag:example.com,2000:x> y\n",
                     f"1:4: YAML tag '!<tag:example.com,2000:x>' is not allowed: {TAGGED}"),
    "date": ("keep_mask: 2020-01-01\n", "1:12: '2020-01-01' reads as a date, which a schedule cannot hold; "
                                        "quote it to keep it as text"),
    "date-as-a-key": ("2020-01-01: x\n", "1:1: '2020-01-01' reads as a date, which a schedule cannot hold; "
                                         "quote it to keep it as text"),
    "inf": ("gamma: .inf\n", f"1:8: '.inf' {NOT_FINITE}"),
    "nan": ("gamma: .NaN\n", f"1:8: '.NaN' {NOT_FINITE}"),
    "float-overflow": ("gamma: 1.0e+999\n", f"1:8: '1.0e+999' {NOT_FINITE}"),
    "sexagesimal-overflow": ("x: " + "59:" * 200 + "1.5\n", f"1:4: '{'59:' * 13}5...' {NOT_FINITE}"),
    "int-above-64-bits": ("ending_epoch: 9223372036854775808\n", f"1:15: the integer '9223372036854775808' {INT64}"),
    "int-below-64-bits": ("starting_epoch: -9223372036854775809\n",
                          f"1:17: the integer '-9223372036854775809' {INT64}"),
    "int-of-5000-digits": ("x: " + "1" * 5000 + "\n", f"1:4: the integer '{'1' * 40}...' {INT64}"),
    "hex-of-40-digits": ("x: 0x" + "f" * 40 + "\n", f"1:4: the integer '0x{'f' * 38}...' {INT64}"),
    "digitless-binary": ("x: 0b_\n", "1:4: '0b_' is not a valid integer"),
    "list-as-a-key": ("[a, b]: 1\n", "1:1: a mapping key must be a plain value, not a list"),
    "mapping-as-a-key": ("{a: 1}: 2\n", "1:1: a mapping key must be a plain value, not a mapping"),
    "complex-key": ("? - a\n  - b\n: 1\n", "1:3: a mapping key must be a plain value, not a list"),
    "long-duplicate-key": ("k" * 1000 + ": 1\n" + "k" * 1000 + ": 2\n",
                           f"2:1: duplicate key '{'k' * 40}...' with a different value (first given at line 1)"),
    "two-documents": ("a: 1\n---\nb: 2\n", "2:1: invalid YAML: expected a single document in the stream: "
                                           "but found another document"),
}


@pytest.mark.parametrize("case", list(READER_CASES), ids=list(READER_CASES))
def test_reader_refuses_with_one_line(case: str, yaml_parser: str) -> None:
    text, expected = READER_CASES[case]
    start = time.perf_counter()
    assert refusal(text) == f"s.yaml:{expected}"
    assert time.perf_counter() - start < SECONDS


def test_a_flow_list_100000_deep_is_refused_at_once(yaml_parser: str) -> None:
    start = time.perf_counter()
    line = refusal("policies: " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert time.perf_counter() - start < SECONDS
    # libyaml refuses flow nesting past its own limit before the reader's is reached
    expected = ("1:1010: invalid YAML: while increasing flow level: exceeded maximum nesting depth"
                if yaml_parser == "libyaml" else f"1:74: {DEEP}")
    assert line == f"s.yaml:{expected}"


def test_what_a_schedule_may_hold(yaml_parser: str) -> None:
    text = ("a: 9223372036854775807\nb: -9223372036854775808\nc: [=, <<, yes, ~, 1_000, 0x10, 1:30, '2020-01-01']\n"
            "base: &base {gamma: 0.9, last_epoch: -1}\nd:\n  <<: *base\n  step_size: 3\ne: " + nested_mappings(0)
            + "f: " + "[" * 62 + "1" + "]" * 62 + "\n")
    data = reader.loads(text, "s.yaml")
    assert data["a"] == 2**63 - 1 and data["b"] == -(2**63)
    assert data["c"] == ["=", "<<", True, None, 1000, 16, 90, "2020-01-01"]
    assert data["d"] == {"gamma": 0.9, "last_epoch": -1, "step_size": 3}
    assert reader.loads(nested_mappings(63), "s.yaml") is not None


def test_values_count_aliases_expanded(monkeypatch: pytest.MonkeyPatch, yaml_parser: str) -> None:
    # the mapping, 'a', the list and its two items, 'b', and the alias standing for the list's three values
    text = "a: &x [1, 2]\nb: *x\n"
    monkeypatch.setattr(reader, "MAX_VALUES", 9)
    assert reader.loads(text, "s.yaml") == {"a": [1, 2], "b": [1, 2]}
    monkeypatch.setattr(reader, "MAX_VALUES", 8)
    assert refusal(text) == ("s.yaml:2:4: the schedule holds more than 8 values here (aliases expanded); a "
                             "schedule is limited to that many")


def test_repeated_aliases_build_a_schedule(lenet: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "aliases.yaml"
    path.write_text("""\
version: 1
pruners:
  fc1_pruner: &agp
    class: AutomatedGradualPruner
    initial_sparsity: 0.05
    final_sparsity: &final 0.5
    weights: [fc1.weight]
  fc2_pruner:
    <<: *agp
    weights: [fc2.weight]
lr_schedulers:
  decay: {class: MultiStepLR, milestones: [2, 4], gamma: *final}
policies:
  - pruner: {instance_name: fc1_pruner}
    starting_epoch: 0
    ending_epoch: &end 6
    frequency: 2
  - pruner: {instance_name: fc2_pruner}
    starting_epoch: 0
    ending_epoch: *end
    frequency: 2
  - lr_scheduler: {instance_name: decay}
    starting_epoch: 0
    ending_epoch: *end
""", encoding="utf-8")
    sched = build(path, lenet, torch.optim.SGD(lenet.parameters(), lr=0.1))
    assert set(sched.instances) == {"fc1_pruner", "fc2_pruner", "decay"}
    assert sched.instances["fc2_pruner"].params_names == ["fc2.weight"]
    assert sched.instances["fc2_pruner"].final_sparsity == 0.5
    assert sched.instances["decay"].gamma == 0.5


def test_an_error_quoting_a_huge_value_stays_short(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bomb = ", ".join(["&l0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
                     + [f"&l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 5)])
    path = tmp_path / "version.yaml"
    path.write_text(variant("version: 1", f"version: [{bomb}]"), encoding="utf-8")
    status, _, err = check_in_process(path, capsys)
    line = one_line(err)
    assert status == 1
    assert line.startswith(f"{path}:1:10: unsupported schedule version [[1, 1, 1, 1, 1, 1, 1, 1, 1, 1], [[1, 1")
    assert line.endswith("...") and len(line) == len(f"{path}:1:10: ") + MAX_MESSAGE_CHARS


def test_a_file_past_the_size_limit_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_bytes(b"a: 1\n#" + b"x" * reader.MAX_SCHEDULE_BYTES)
    start = time.perf_counter()
    with pytest.raises(ScheduleError) as info:
        reader.read_schedule(path)
    assert time.perf_counter() - start < SECONDS
    assert str(info.value) == (f"{path}:2:9999996: the schedule is longer than 10,000,000 bytes, the most a "
                               "schedule may hold; it passes that limit here")
    text = "a: 1\n#" + "é" * (reader.MAX_SCHEDULE_BYTES // 2)
    assert refusal(text) == ("s.yaml:2:4999999: the schedule is longer than 10,000,000 bytes, the most a "
                             "schedule may hold; it passes that limit here")


def test_a_file_that_is_not_utf8_is_refused_where_it_stops_being_text(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("version: 1\r\n# é\n".encode() + b"# caf\xe9\n")
    with pytest.raises(ScheduleError) as info:
        reader.read_schedule(path)
    assert str(info.value) == f"{path}:3:6: not a UTF-8 text file (invalid continuation byte at byte 22)"


# -- LR schedulers' arguments ------------------------------------------------------------------------

#: id -> (the LR scheduler's lines in BASE, in place of ExponentialLR's; the expected line after the path)
LR_CASES = {
    "gamma-a-string": ("    class: ExponentialLR\n    gamma: \"0.1\"",
                       "11:12: lr_schedulers.pruning_lr (ExponentialLR): 'gamma' must be a number, got '0.1'"),
    "gamma-negative": ("    class: ExponentialLR\n    gamma: -100",
                       "11:12: lr_schedulers.pruning_lr (ExponentialLR): 'gamma' must be a positive number, "
                       "got -100"),
    "step-gamma-zero": ("    class: StepLR\n    step_size: 3\n    gamma: 0",
                        "12:12: lr_schedulers.pruning_lr (StepLR): 'gamma' must be a positive number, got 0"),
    "step-size-fractional": ("    class: StepLR\n    step_size: 2.5",
                             "11:16: lr_schedulers.pruning_lr (StepLR): 'step_size' must be an integer, got 2.5"),
    "step-size-zero": ("    class: StepLR\n    step_size: 0",
                       "11:16: lr_schedulers.pruning_lr (StepLR): 'step_size' must be a positive integer, got 0"),
    **{f"milestones-{name}": (f"    class: MultiStepLR\n    milestones: {value}",
                              f"11:17: lr_schedulers.pruning_lr (MultiStepLR): 'milestones' must be a list of "
                              f"strictly increasing integers >= 0, got {shown}")
       for name, value, shown in [("a-string", '"30,60"', "'30,60'"), ("a-mapping", "{a: 1}", "{'a': 1}"),
                                  ("decreasing", "[60, 30]", "[60, 30]"), ("repeated", "[30, 30]", "[30, 30]"),
                                  ("negative", "[-1, 5]", "[-1, 5]"), ("fractional", "[1.5, 3]", "[1.5, 3]"),
                                  ("booleans", "[true]", "[True]")]},
    "lambda": ("    class: LambdaLR\n    lr_lambda: 'lambda epoch: 0.9 ** epoch'",
               "11:16: lr_schedulers.pruning_lr (LambdaLR): 'lr_lambda' must be a Python function of the epoch "
               "(or a list of them), which a YAML schedule cannot hold; build the scheduler in Python and "
               "schedule it with sched.add_policy(hookprune.LRPolicy(...), ...)"),
    "multiplicative": ("    class: MultiplicativeLR\n    lr_lambda: 0.95",
                       "11:16: lr_schedulers.pruning_lr (MultiplicativeLR): 'lr_lambda' must be a Python function "
                       "of the epoch (or a list of them), which a YAML schedule cannot hold; build the scheduler "
                       "in Python and schedule it with sched.add_policy(hookprune.LRPolicy(...), ...)"),
    "sequential": ("    class: SequentialLR\n    schedulers: [warmup, decay]\n    milestones: [5]",
                   "11:17: lr_schedulers.pruning_lr (SequentialLR): 'schedulers' must be a list of LR scheduler "
                   "objects, which a YAML schedule cannot hold; declare each scheduler under 'lr_schedulers' "
                   "with its own policy and epochs"),
    "chained": ("    class: ChainedScheduler\n    schedulers: [warmup, decay]",
                "11:17: lr_schedulers.pruning_lr (ChainedScheduler): 'schedulers' must be a list of LR scheduler "
                "objects, which a YAML schedule cannot hold; declare each scheduler under 'lr_schedulers' with "
                "its own policy and epochs"),
    "plateau-mode": ("    class: ReduceLROnPlateau\n    mode: maximum",
                     "11:11: lr_schedulers.pruning_lr (ReduceLROnPlateau): 'mode' must be 'min' or 'max', "
                     "got 'maximum'"),
    "plateau-factor-one": ("    class: ReduceLROnPlateau\n    factor: 1.0",
                           "11:13: lr_schedulers.pruning_lr (ReduceLROnPlateau): 'factor' must be a number within "
                           "(0, 1), got 1.0"),
    "plateau-patience": ("    class: ReduceLROnPlateau\n    patience: -1",
                         "11:15: lr_schedulers.pruning_lr (ReduceLROnPlateau): 'patience' must be an integer "
                         ">= 0, got -1"),
    "plateau-min-lr": ("    class: ReduceLROnPlateau\n    min_lr: [0.1, -0.1]",
                       "11:13: lr_schedulers.pruning_lr (ReduceLROnPlateau): 'min_lr' must be a number >= 0, or a "
                       "list of them (one per parameter group), got [0.1, -0.1]"),
    "cyclic-mode": ("    class: CyclicLR\n    base_lr: 0.01\n    max_lr: 0.1\n    mode: sawtooth",
                    "13:11: lr_schedulers.pruning_lr (CyclicLR): 'mode' must be 'triangular', 'triangular2' or "
                    "'exp_range', got 'sawtooth'"),
    "cyclic-scale-fn": ("    class: CyclicLR\n    base_lr: 0.01\n    max_lr: 0.1\n    scale_fn: 'lambda x: 1'",
                        "13:15: lr_schedulers.pruning_lr (CyclicLR): 'scale_fn' must be a Python function (or "
                        "null), which a YAML schedule cannot hold; build the scheduler in Python and schedule it "
                        "with sched.add_policy(hookprune.LRPolicy(...), ...)"),
    "cyclic-max-lr": ("    class: CyclicLR\n    base_lr: 0.01\n    max_lr: high",
                      "12:13: lr_schedulers.pruning_lr (CyclicLR): 'max_lr' must be a number >= 0, or a list of "
                      "them (one per parameter group), got 'high'"),
    "one-cycle-steps": ("    class: OneCycleLR\n    max_lr: 0.1\n    epochs: 10",
                        "9:3: lr_schedulers.pruning_lr (OneCycleLR): give 'total_steps', or both 'epochs' and "
                        "'steps_per_epoch'"),
    "one-cycle-pct-start": ("    class: OneCycleLR\n    max_lr: 0.1\n    total_steps: 100\n    pct_start: 1",
                            "13:16: lr_schedulers.pruning_lr (OneCycleLR): 'pct_start' must be a decimal number "
                            "(such as 0.3) within [0, 1], got 1"),
    "one-cycle-anneal": ("    class: OneCycleLR\n    max_lr: 0.1\n    total_steps: 100\n    anneal_strategy: cosine",
                         "13:22: lr_schedulers.pruning_lr (OneCycleLR): 'anneal_strategy' must be 'cos' or "
                         "'linear', got 'cosine'"),
    "warm-restarts-t-mult": ("    class: CosineAnnealingWarmRestarts\n    T_0: 10\n    T_mult: 0",
                             "12:13: lr_schedulers.pruning_lr (CosineAnnealingWarmRestarts): 'T_mult' must be a "
                             "positive integer, got 0"),
    "cosine-eta-min": ("    class: CosineAnnealingLR\n    T_max: 10\n    eta_min: -0.1",
                       "12:14: lr_schedulers.pruning_lr (CosineAnnealingLR): 'eta_min' must be a number >= 0, "
                       "got -0.1"),
    "constant-factor-zero": ("    class: ConstantLR\n    factor: 0",
                             "11:13: lr_schedulers.pruning_lr (ConstantLR): 'factor' must be a number within "
                             "(0, 1], got 0"),
    "linear-end-factor": ("    class: LinearLR\n    end_factor: 2",
                          "11:17: lr_schedulers.pruning_lr (LinearLR): 'end_factor' must be a number within "
                          "[0, 1], got 2"),
    "polynomial-neither": ("    class: PolynomialLR\n    power: 2",
                           "9:3: lr_schedulers.pruning_lr (PolynomialLR): give exactly one of 'T_max' "
                           "(Distiller's name) or 'total_iters' (torch's)"),
    "polynomial-both": ("    class: PolynomialLR\n    T_max: 10\n    total_iters: 10",
                        "11:12: lr_schedulers.pruning_lr (PolynomialLR): give exactly one of 'T_max' "
                        "(Distiller's name) or 'total_iters' (torch's)"),
    "multi-gamma-lengths": ("    class: MultiStepMultiGammaLR\n    milestones: [3, 6]\n    gammas: [0.1]",
                            "12:13: lr_schedulers.pruning_lr (MultiStepMultiGammaLR): 'gammas' must hold one number "
                            "per milestone (2), got 1"),
    "multi-gamma-negative": ("    class: MultiStepMultiGammaLR\n    milestones: [3]\n    gammas: [-0.1]",
                             "12:13: lr_schedulers.pruning_lr (MultiStepMultiGammaLR): 'gammas' must be a list of "
                             "positive numbers, got [-0.1]"),
    "last-epoch": ("    class: ExponentialLR\n    gamma: 0.9\n    last_epoch: -2",
                   "12:17: lr_schedulers.pruning_lr (ExponentialLR): 'last_epoch' must be an integer >= -1, got -2"),
}


@pytest.mark.parametrize("case", list(LR_CASES), ids=list(LR_CASES))
def test_lr_scheduler_arguments_are_checked(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines, expected = LR_CASES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(variant("    class: ExponentialLR\n    gamma: 0.9", lines), encoding="utf-8")
    status, out, err = check_in_process(path, capsys)
    assert (status, out) == (1, "")
    assert one_line(err) == f"{path}:{expected}"


#: class -> settings every rule of the class accepts (non-default values, lists per parameter group)
VALID_LR_SETTINGS = {
    "StepLR": "step_size: 3, gamma: 0.5, last_epoch: -1",
    "MultiStepLR": "milestones: [2, 5], gamma: 0.5",
    "ConstantLR": "factor: 0.5, total_iters: 4",
    "LinearLR": "start_factor: 0.25, end_factor: 1, total_iters: 4",
    "ExponentialLR": "gamma: 0.95",
    "CosineAnnealingLR": "T_max: 10, eta_min: 0.001",
    "ReduceLROnPlateau": "mode: max, factor: 0.5, patience: 2, threshold: 0.01, threshold_mode: abs, cooldown: 1, "
                         "min_lr: [0.001], eps: 0",
    "CyclicLR": "base_lr: 0.01, max_lr: [0.1], step_size_up: 4, step_size_down: 2, mode: exp_range, gamma: 0.99, "
                "scale_fn: null, scale_mode: iterations, cycle_momentum: true, base_momentum: 0.8, max_momentum: 0.9",
    "CosineAnnealingWarmRestarts": "T_0: 5, T_mult: 2, eta_min: 0",
    "OneCycleLR": "max_lr: 0.1, epochs: 4, steps_per_epoch: 10, pct_start: 0.25, anneal_strategy: linear, "
                  "cycle_momentum: true, base_momentum: [0.85], max_momentum: 0.95, div_factor: 10, "
                  "final_div_factor: 100, three_phase: true",
    "PolynomialLR": "T_max: 10, power: 0.5",
    "MultiStepMultiGammaLR": "milestones: [2, 4], gammas: [0.5, 0.2]",
}
#: classes whose required arguments only Python can give
PYTHON_ONLY = ("LambdaLR", "MultiplicativeLR", "SequentialLR", "ChainedScheduler")


def test_every_registered_lr_scheduler_has_rules() -> None:
    registered = {provider.value: name for name, (provider, *_) in registry.class_providers().items()
                  if provider.value.split(":")[0] in ("torch.optim.lr_scheduler", "hookprune.lr")}
    assert set(registered) == set(lr_arguments.RULES)
    assert set(registered.values()) == set(VALID_LR_SETTINGS) | set(PYTHON_ONLY)


@pytest.mark.parametrize("class_name", list(VALID_LR_SETTINGS))
def test_valid_lr_settings_build(class_name: str, lenet: torch.nn.Module) -> None:
    schedule = (f"lr_schedulers:\n  lr: {{class: {class_name}, {VALID_LR_SETTINGS[class_name]}}}\n"
                "policies:\n  - lr_scheduler: {instance_name: lr}\n    starting_epoch: 0\n    ending_epoch: 4\n")
    optimizer = torch.optim.SGD(lenet.parameters(), lr=0.1, momentum=0.9)
    sched = build(reader.loads(schedule, "s.yaml"), lenet, optimizer)
    assert type(sched.instances["lr"]).__name__ == class_name


# -- policies: windows, instance names and args ------------------------------------------------------------

POLICY_CASES = {
    "an instance_name that is a list": (
        variant("      instance_name: conv_pruner\n", "      instance_name: [conv_pruner]\n"),
        "14:22: 'instance_name' must name an instance of 'pruners', got a list"),
    "an instance_name that is a mapping": (
        variant("      instance_name: conv_pruner\n", "      instance_name: {a: 1}\n"),
        "14:22: 'instance_name' must name an instance of 'pruners', got a mapping"),
    "policy levels as a number": (
        variant("      instance_name: conv_pruner\n", "      instance_name: conv_pruner\n      args: {levels: 5}\n"),
        "15:22: policy for 'conv_pruner': 'levels' must map parameter names (or '*') to numbers, got 5"),
    "policy levels as a list": (
        variant("      instance_name: conv_pruner\n",
                "      instance_name: conv_pruner\n      args: {levels: [0.5]}\n"),
        "15:22: policy for 'conv_pruner': 'levels' must map parameter names (or '*') to numbers, got [0.5]"),
    "policy levels above 1 for a pruner that sets its own level": (
        variant("      instance_name: conv_pruner\n",
                "      instance_name: conv_pruner\n      args: {levels: {'*': 1.5}}\n"),
        "15:23: policy for 'conv_pruner': 'levels['*']' must be within [0, 1), got 1.5"),
    "policy levels for a pruner that sets its own level": (
        variant("      instance_name: conv_pruner\n",
                "      instance_name: conv_pruner\n      args: {levels: {'*': 0.5}}\n"),
        "15:22: policy for 'conv_pruner': AutomatedGradualPruner takes its level from the AGP schedule "
        "(initial_sparsity, final_sparsity); a policy's 'levels' does not apply"),
    "a keep_mask that is not a boolean": (
        variant("      instance_name: conv_pruner\n",
                "      instance_name: conv_pruner\n      args: {keep_mask: 2021-01-01}\n"),
        "15:25: '2021-01-01' reads as a date, which a schedule cannot hold; quote it to keep it as text"),
    "a keep_mask that is a number": (
        variant("      instance_name: conv_pruner\n",
                "      instance_name: conv_pruner\n      args: {keep_mask: 2}\n"),
        "15:25: policy for 'conv_pruner': 'keep_mask' must be true or false, got 2"),
}


@pytest.mark.parametrize("case", POLICY_CASES, ids=list(POLICY_CASES))
def test_policies_are_checked_with_one_line(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text, expected = POLICY_CASES[case]
    path = tmp_path / "s.yaml"
    path.write_text(text)
    status, _, err = check_in_process(path, capsys)
    assert (status, one_line(err)) == (1, f"{path}:{expected}")


@pytest.mark.parametrize("ending", ["1000000000", "9223372036854775807"])
def test_a_window_of_a_billion_epochs_and_more_checks_at_once(ending: str, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(variant("    ending_epoch: 10\n", f"    ending_epoch: {ending}\n"))
    tic = time.perf_counter()
    status, out, err = check_in_process(path, capsys)
    assert time.perf_counter() - tic < SECONDS
    assert (status, err) == (0, "")
    assert f"epochs 0..{range(0, int(ending), 2)[-1]}" in out


def test_ten_thousand_policies_load_in_linear_time(lenet: torch.nn.Module) -> None:
    def schedule(count: int) -> dict:
        return {"pruners": {"p": {"class": "SparsityLevelParameterPruner", "levels": {"fc1.weight": 0.5}}},
                "policies": [{"pruner": {"instance_name": "p"}, "epochs": [i]} for i in range(count)]}

    def seconds(count: int) -> float:
        """The best of three builds, with the cyclic garbage collector held off: its passes over the growing heap
        of the suite's earlier tests come at moments that have nothing to do with the schedule's size."""
        times = []
        gc.collect()
        gc.disable()
        try:
            for _ in range(3):
                tic = time.perf_counter()
                build(schedule(count), lenet)
                times.append(time.perf_counter() - tic)
        finally:
            gc.enable()
        return min(times)

    seconds(100)
    small, large = seconds(2_000), seconds(10_000)
    assert large < 10 * small, (small, large)      # five times the policies: linear is 5x, quadratic 25x
    assert large < 10.0
