"""HookpruneCallback under Lightning's DDP strategy: two gloo processes on the CPU end with rank 0's masks.

Each process is started as a launcher such as ``torchrun`` would start it (``LOCAL_RANK`` set, the process group
joined), then runs ``Trainer(strategy="ddp", accelerator="cpu", devices=2)``. The pruner draws its sparsity level
at random and the ranks seed their generators differently, so without synchronization their masks differ.
"""

from __future__ import annotations

from pathlib import Path

import hookprune
import pytest
import torch
from hookprune import testing
from lightning.pytorch.strategies import DDPStrategy
from lightning_support import Digits, loaders, trainer

from hookprune_lightning import HookpruneCallback

WORLD = 2
#: a random level in [0.2, 0.8] of fc1's input columns, drawn again in each of two epochs
RANDOM_SCHEDULE = {
    "pruners": {"random": {"class": "RandomLevelStructureParameterPruner", "group_type": "Rows",
                           "sparsity_range": [0.2, 0.8], "weights": ["fc1.weight", "fc2.weight"]}},
    "policies": [{"pruner": {"instance_name": "random"}, "starting_epoch": 0, "ending_epoch": 2, "frequency": 1}],
}


def _rank_main(rank: int, folder: Path) -> dict:
    module = Digits()
    torch.manual_seed(1000 + rank)  # no seed shared between the ranks: each draws its own levels
    cb = HookpruneCallback(RANDOM_SCHEDULE, submodule="model")
    ddp = DDPStrategy(process_group_backend="gloo")
    run = trainer(2, [cb], strategy=ddp, devices=WORLD, limit_train_batches=4, limit_val_batches=1)
    run.fit(module, *loaders())
    assert cb.scheduler is not None

    # the same schedule on the same weights, without the callback: each rank keeps its own draw
    bare = Digits().model
    torch.manual_seed(1000 + rank)
    alone = hookprune.load(RANDOM_SCHEDULE, bare)
    alone.fire("on_epoch_begin", epoch=0)
    return testing.rank_mask_report(cb.scheduler, alone, module.model.fc1.weight)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    return testing.run_ranks(_rank_main, WORLD, tmp_path_factory.mktemp("ddp"))


def test_ddp_ranks_end_with_rank_zeros_masks(ranks):
    testing.check_rank_reports(ranks, "fc1.weight")
    assert ranks[0]["masks"].keys() == {"fc1.weight", "fc2.weight"}


def test_without_synchronization_the_random_draws_differ(ranks):
    assert ranks[0]["mismatch"] == ranks[1]["mismatch"] == "masks differ from rank 0's: rank 1 differs in " \
        "fc1.weight, fc2.weight"
