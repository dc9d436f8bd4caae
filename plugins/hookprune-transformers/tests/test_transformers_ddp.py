"""HookpruneCallback under a distributed Trainer run: two gloo processes on the CPU end with rank 0's masks.

Each process is started as ``torchrun`` would start it (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` set, the process
group joined), so the Trainer runs data parallel on the CPU. The pruner draws its sparsity level at random and the
ranks' Trainer seeds differ, so without synchronization their masks differ.
"""

from __future__ import annotations

from pathlib import Path

import hookprune
import pytest
import torch
from hookprune import testing
from torch.utils.data import Subset
from transformers import Trainer
from transformers_support import TRAIN, Classifier, arguments

from hookprune_transformers import HookpruneCallback

WORLD = 2
#: a random level in [0.2, 0.8] of the input columns of fc1 and fc2, drawn again in each of two epochs
RANDOM_SCHEDULE = {
    "pruners": {"random": {"class": "RandomLevelStructureParameterPruner", "group_type": "Rows",
                           "sparsity_range": [0.2, 0.8], "weights": ["fc1.weight", "fc2.weight"]}},
    "policies": [{"pruner": {"instance_name": "random"}, "starting_epoch": 0, "ending_epoch": 2, "frequency": 1}],
}


def _rank_main(rank: int, folder: Path) -> dict:
    model = Classifier()
    cb = HookpruneCallback(RANDOM_SCHEDULE, submodule="net")
    # each rank's own seed: the pruner's generator starts from it
    args = arguments(folder / f"out{rank}", 2, seed=1000 + rank)
    run = Trainer(model=model, args=args, train_dataset=Subset(TRAIN, range(512)), callbacks=[cb])
    assert run.args.world_size == WORLD
    run.train()
    assert cb.scheduler is not None

    # the same schedule on the same weights, without the callback: each rank keeps its own draw
    bare = Classifier().net
    torch.manual_seed(1000 + rank)
    alone = hookprune.load(RANDOM_SCHEDULE, bare)
    alone.fire("on_epoch_begin", epoch=0)
    return testing.rank_mask_report(cb.scheduler, alone, model.net.fc1.weight)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    return testing.run_ranks(_rank_main, WORLD, tmp_path_factory.mktemp("ddp"))


def test_distributed_ranks_end_with_rank_zeros_masks(ranks):
    testing.check_rank_reports(ranks, "fc1.weight")
    assert ranks[0]["masks"].keys() == {"fc1.weight", "fc2.weight"}


def test_without_synchronization_the_random_draws_differ(ranks):
    assert ranks[0]["mismatch"] == ranks[1]["mismatch"] == "masks differ from rank 0's: rank 1 differs in " \
        "fc1.weight, fc2.weight"
