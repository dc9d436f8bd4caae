"""Shared fixtures: small real models and the Distiller schedule corpus."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hookprune import models

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "distiller-schedules"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny inputs run fastest on one thread; several threads spin against each other on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def corpus() -> Path:
    if not (CORPUS / "MANIFEST.tsv").is_file():
        pytest.skip(f"the Distiller schedule corpus is not at {CORPUS}")
    return CORPUS


@pytest.fixture
def lenet() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.create_model("lenet300_100", input_features=64)
