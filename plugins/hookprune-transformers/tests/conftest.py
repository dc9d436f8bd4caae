"""Fixtures shared by the plugin's tests."""

from __future__ import annotations

from typing import Any

import pytest
from torch.utils.data import SequentialSampler
from transformers import Trainer
from transformers_support import SAMPLING_ARGUMENT


@pytest.fixture(autouse=True)
def sequential_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """The training batches in the dataset's order, as the plain loops the tests compare with take them: what
    ``train_sampling_strategy="sequential"`` asks transformers 5 for, given to transformers 4.x's Trainer."""
    if not SAMPLING_ARGUMENT:
        def sampler(self: Trainer, train_dataset: Any = None) -> SequentialSampler:
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

        monkeypatch.setattr(Trainer, "_get_train_sampler", sampler)
