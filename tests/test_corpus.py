"""Distiller's own schedules pass ``hookprune check`` against their architectures."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from hookprune import cli, models
from hookprune._engine import registry as plugins
from hookprune.config.reader import read_schedule
from hookprune.errors import ScheduleError, ScheduleWarning
from tests.conftest import CORPUS


def manifest() -> list[tuple[str, str]]:
    path = CORPUS / "MANIFEST.tsv"
    if not path.is_file():
        return []
    rows = [line.split("\t") for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return [(schedule, arch.strip()) for schedule, arch in rows]


def missing_pieces(path: Path, arch: str) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScheduleWarning)
        data, _ = read_schedule(path)
    classes = {spec["class"] for section in ("pruners", "regularizers", "quantizers", "lr_schedulers",
                                             "extensions")
               for spec in (data.get(section) or {}).values()}
    missing = [f"class {name}" for name in sorted(classes) if name not in plugins.class_providers()]
    if arch not in models.architectures():
        missing.append(f"architecture {arch}")
    return missing


@pytest.mark.parametrize(("schedule", "arch"), manifest() or [pytest.param("-", "-", marks=pytest.mark.skip(
    reason=f"the Distiller schedule corpus is not at {CORPUS}"))])
def test_corpus_schedule_passes_check(schedule, arch, capsys):
    path = CORPUS / schedule
    missing = missing_pieces(path, arch)
    if missing:
        pytest.skip(f"needs {', '.join(missing)}, which no installed distribution provides")
    status = cli.main(["check", str(path), "--arch", arch])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert all(line.startswith(f"warning: {path}:") for line in err.splitlines()), err
    assert out.startswith(f"{path}: ok (")


def test_identical_repeated_key_is_a_warning_and_a_differing_one_an_error(corpus, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ScheduleWarning)
        read_schedule(corpus / "ssl/ssl_channels-removal_training.yaml")
    assert [str(w.message).split("/")[-1] for w in caught] == [
        "ssl_channels-removal_training.yaml:77:7: key 'module.layer2.1.conv2.weight' repeats line 75 "
        "with the same value",
        "ssl_channels-removal_training.yaml:83:7: key 'module.layer3.1.conv2.weight' repeats line 81 "
        "with the same value",
    ]
    bad = tmp_path / "bad.yaml"
    bad.write_text("pruners:\n  p:\n    class: A\n    class: B\n")
    with pytest.raises(ScheduleError, match=r"bad.yaml:4:5: duplicate key 'class' with a different value"):
        read_schedule(bad)


def test_corpus_has_72_schedules(corpus):
    assert len(manifest()) == 72
