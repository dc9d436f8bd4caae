"""Shared fixtures: small real models and the Distiller schedule corpus.

The core suite runs without auto-loaded hook plugins (``HOOKPRUNE_DISABLE_PLUGIN_AUTOLOAD=1``, inherited by the
processes the tests start), so it does not depend on which plugin distributions happen to be installed; tests of
auto-loading give their subprocesses an environment without it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from hookprune import models
from hookprune._engine import registry

os.environ[registry.DISABLE_AUTOLOAD_ENV] = "1"
registry.refresh()

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
