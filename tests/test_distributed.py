"""Distributed data parallel training: identical masks on every rank, sharded data, the example under torchrun.

The unit tests start two gloo processes on the CPU; the example runs under ``torch.distributed.run``.
"""

from __future__ import annotations

import gc
import importlib
import os
import re
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import hookprune
from hookprune import distributed, hookimpl, models, testing
from hookprune.testing import random_batches, train
from tests.test_compress_classifier import AGP, app, error_line, final_state

WORLD = 2


# -- two gloo processes --------------------------------------------------------------------------------------

#: the scenarios the two processes run, one after the other, each saving a dict per rank
SCENARIOS = ("divergent_random_masks", "agp_on_the_ddp_model", "changes_between_backward_and_step",
             "observers_that_never_set_masks")


def _entry(rank: int, folder: str, module: str, scenarios: tuple[str, ...]) -> None:
    torch.set_num_threads(1)
    # cpu:gloo is not plain gloo, so the small collectives run on a group of their own, as they do beside nccl
    dist.init_process_group("cpu:gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=120))
    functions = importlib.import_module(module)
    try:
        for scenario in scenarios:
            out = Path(folder, scenario)
            out.mkdir(exist_ok=True)
            getattr(functions, scenario)(rank, out)
    finally:
        gc.collect()  # DDP's reducer, often held in a reference cycle, goes before its process group
        dist.destroy_process_group()


def run_scenarios(folder: Path, module: str, scenarios: tuple[str, ...]) -> dict[str, list[dict]]:
    """Start two processes joined in a gloo group; each runs ``module``'s functions named ``scenarios``, one after the
    other, as ``scenario(rank, folder)``, each saving ``rank{rank}.pt`` there. Returns every scenario's two dicts."""
    mp.spawn(_entry, args=(str(folder), module, scenarios), nprocs=WORLD, join=True)
    return {scenario: [torch.load(folder / scenario / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
            for scenario in scenarios}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict[str, list[dict]]:
    """Every scenario's results on rank 0 and rank 1, from one start of two processes."""
    return run_scenarios(tmp_path_factory.mktemp("ranks"), __name__, SCENARIOS)


def lenet() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.create_model("lenet300_100", input_features=64)


def shard(rank: int, batches: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Minibatches that differ from rank to rank, as a data shard does."""
    return random_batches(batches, seed=100 + rank)


def random_keep(shape: torch.Size, rank: int, epoch: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1000 * rank + epoch)
    return torch.rand(shape, generator=gen) > 0.5


class RankRandomPruner:
    """A pruner whose masks differ on every rank: random, seeded by the rank."""

    def __init__(self, weight: str) -> None:
        self.weight = weight

    @hookimpl
    def on_epoch_begin(self, scheduler, epoch):
        param = scheduler.masks.index.params[scheduler.masks.resolve(self.weight)]
        scheduler.masks[self.weight] = random_keep(param.shape, dist.get_rank(), epoch)


def masks_of(sched) -> dict[str, torch.Tensor]:
    return {name: mask.clone() for name, mask in sched.masks.items()}


def params_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def divergent_random_masks(rank: int, folder: Path) -> None:
    model = DistributedDataParallel(lenet())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = hookprune.CompressionScheduler(model, optimizer=optimizer)
    sched.add_policy(RankRandomPruner("fc1.weight"), starting_epoch=0, ending_epoch=3)
    train(sched, model, optimizer, shard(rank), epochs=5)
    compared = distributed.verify_masks(sched)

    bare = lenet()
    unsynced = hookprune.CompressionScheduler(bare)
    unsynced.add_policy(RankRandomPruner("fc2.weight"), starting_epoch=0, ending_epoch=1)
    unsynced.fire("on_epoch_begin", epoch=0)
    try:
        distributed.verify_masks(unsynced)
        mismatch = ""
    except distributed.MaskMismatchError as exc:
        mismatch = str(exc)
    torch.save({"masks": masks_of(sched), "params": params_of(model), "broadcasts": sched.mask_sync.broadcasts,
                "compared": compared, "mismatch": mismatch}, folder / f"rank{rank}.pt")


def test_random_masks_that_differ_per_rank_become_rank_0s_everywhere_and_a_divergent_rank_is_detected(two_ranks):
    results = two_ranks["divergent_random_masks"]
    expected = random_keep(torch.Size([300, 64]), rank=0, epoch=2)
    assert random_keep(torch.Size([300, 64]), rank=1, epoch=2).ne(expected).any(), "the ranks would disagree"
    for result in results:
        assert list(result["masks"]) == ["module.fc1.weight"]
        assert torch.equal(result["masks"]["module.fc1.weight"], expected), "rank 0's mask of the last pruning epoch"
        assert result["params"]["module.fc1.weight"][~expected].eq(0).all()
        assert result["broadcasts"] == 3, "one broadcast per epoch in which the masks changed, none after"
        assert result["compared"] == 1
    for name, tensor in results[0]["params"].items():
        assert torch.equal(results[1]["params"][name], tensor), f"DDP keeps {name} identical on both ranks"
    expected_error = "masks differ from rank 0's: rank 1 differs in fc2.weight"
    assert results[0]["mismatch"] == results[1]["mismatch"] == expected_error, "raised on every rank"


SCHEDULE = {
    "version": 1,
    "pruners": {"agp": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.05, "final_sparsity": 0.9,
                        "weights": ["fc1.weight", "module.fc2.weight"]}},
    "policies": [{"pruner": {"instance_name": "agp"}, "starting_epoch": 0, "ending_epoch": 4, "frequency": 1}],
}


def agp_on_the_ddp_model(rank: int, folder: Path) -> None:
    model = DistributedDataParallel(lenet())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = hookprune.build(SCHEDULE, model, optimizer)
    attached = sched.mask_sync is not None
    train(sched, model, optimizer, shard(rank, batches=3), epochs=5)
    distributed.verify_masks(sched)
    torch.save({"attached": attached, "masks": masks_of(sched), "params": params_of(model),
                "broadcasts": sched.mask_sync.broadcasts}, folder / f"rank{rank}.pt")


def test_a_schedule_built_on_the_ddp_model_resolves_names_with_or_without_module_and_prunes_exactly(two_ranks):
    results = two_ranks["agp_on_the_ddp_model"]
    for result in results:
        assert result["attached"], "a scheduler built on a DDP model synchronizes its masks by itself"
        assert sorted(result["masks"]) == ["module.fc1.weight", "module.fc2.weight"]
        for name, numel in (("module.fc1.weight", 300 * 64), ("module.fc2.weight", 100 * 300)):
            assert int((~result["masks"][name]).sum()) == int(0.9 * numel)
            assert int(result["params"][name].eq(0).sum()) == int(0.9 * numel)
        assert result["broadcasts"] == 4, "AGP recomputes the masks at each of its 4 epochs"
    for name, mask in results[0]["masks"].items():
        assert torch.equal(results[1]["masks"][name], mask)


class MidStepMeddler:
    """In epoch 1, between backward and the optimizer step: rank 0 adds a mask for fc3 and drops fc2's, rank 1
    drops fc1's."""

    @hookimpl
    def before_optimizer_step(self, scheduler, minibatch_id):
        if minibatch_id != 0:
            return
        if dist.get_rank() == 0:
            keep = torch.ones(10, 100, dtype=torch.bool)
            keep[:, :50] = False
            scheduler.masks["fc3.weight"] = keep
            del scheduler.masks["fc2.weight"]
        else:
            del scheduler.masks["fc1.weight"]


def changes_between_backward_and_step(rank: int, folder: Path) -> None:
    model = lenet()
    net = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = hookprune.CompressionScheduler(model, optimizer=optimizer)
    sync = distributed.synchronize_masks(sched)
    for name in ("fc1.weight", "fc2.weight"):
        sched.masks[name] = random_keep(model.get_parameter(name).shape, rank=0, epoch=0)
    seen = {}

    def spy(epoch, minibatch_id):
        if (epoch, minibatch_id) == (1, 1):
            seen.update(masks=masks_of(sched), fc3=model.fc3.weight.detach().clone())

    sched.add_policy(MidStepMeddler(), epochs=[1])
    train(sched, net, optimizer, shard(rank), epochs=2, before_forward=spy)
    own_group = distributed._control_group() is not dist.group.WORLD
    torch.save({**seen, "broadcasts": sync.broadcasts, "own_group": own_group}, folder / f"rank{rank}.pt")


def test_masks_changed_between_backward_and_the_optimizer_step_reach_every_rank_before_the_step_is_masked(two_ranks):
    results = two_ranks["changes_between_backward_and_step"]
    for result in results:
        assert result["own_group"]
        assert sorted(result["masks"]) == ["fc1.weight", "fc3.weight"], "rank 0's set of masks: fc2's dropped"
        assert result["fc3"][:, :50].eq(0).all() and result["fc3"][:, 50:].ne(0).all(), \
            "fc3 was masked after the optimizer step of the minibatch that set its mask"
        assert result["broadcasts"] == 2, "the masks set before training, then the mid-step change"
    for name, mask in results[0]["masks"].items():
        assert torch.equal(results[1]["masks"][name], mask)
    assert torch.equal(results[0]["fc3"], results[1]["fc3"])


class Observer:
    """A hook plugin that reads the masks around every minibatch and declares that it never assigns one."""

    sets_masks = False

    def __init__(self) -> None:
        self.reads = 0

    @hookimpl
    def on_minibatch_begin(self, scheduler):
        self.reads += len(scheduler.masks)

    @hookimpl
    def on_minibatch_end(self, scheduler):
        self.reads += len(scheduler.masks)


class UndeclaredObserver(Observer):
    """The same hooks, without the declaration: the engine must assume they may set masks."""

    sets_masks = True


def observers_that_never_set_masks(rank: int, folder: Path) -> None:
    result = {}
    for observer in (Observer(), UndeclaredObserver()):
        model = DistributedDataParallel(lenet())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        sched = hookprune.build(SCHEDULE, model, optimizer)   # no auto-loaded plugin: see tests/conftest.py
        sched.add_policy(observer, starting_epoch=0, ending_epoch=5)
        train(sched, model, optimizer, shard(rank, batches=3), epochs=5)
        distributed.verify_masks(sched)
        result[type(observer).__name__] = {"exchanges": sched.mask_sync.exchanges,
                                           "broadcasts": sched.mask_sync.broadcasts,
                                           "reads": observer.reads, "masks": masks_of(sched)}
    torch.save(result, folder / f"rank{rank}.pt")


def test_hooks_declared_never_to_set_masks_cost_no_collective_per_minibatch(two_ranks):
    for result in two_ranks["observers_that_never_set_masks"]:
        declared, undeclared = result["Observer"], result["UndeclaredObserver"]
        assert declared["reads"] == undeclared["reads"] == 5 * 3 * 2 * 2, "both saw every minibatch"
        assert declared["broadcasts"] == undeclared["broadcasts"] == 4
        assert declared["exchanges"] == 4, "one flag exchange after each epoch whose AGP hook ran (0-3), none per step"
        assert undeclared["exchanges"] == 5 * 3, "an undeclared hook plugin costs one exchange per minibatch"
        for name, mask in declared["masks"].items():
            assert torch.equal(undeclared["masks"][name], mask)


# -- the launch environment and the data shards --------------------------------------------------------------


def test_the_torchrun_environment_is_read_and_a_bad_value_named():
    assert distributed.launch_environment({}) is None
    launch = distributed.launch_environment({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1",
                                             "LOCAL_WORLD_SIZE": "2"})
    assert launch == distributed.LaunchEnvironment(rank=3, world_size=4, local_rank=1, local_world_size=2)
    assert distributed.launch_environment({"RANK": "0", "WORLD_SIZE": "1"}).local_world_size == 1
    with pytest.raises(ValueError, match=r"^the environment variable LOCAL_RANK='x' is not an integer"):
        distributed.launch_environment({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "x"})
    with pytest.raises(ValueError, match="RANK=2, WORLD_SIZE=2"):
        distributed.launch_environment({"RANK": "2", "WORLD_SIZE": "2"})


def order(loader) -> list[int]:
    return list(iter(loader.sampler))


def test_each_rank_trains_on_its_shard_of_one_order_that_is_a_function_of_seed_and_epoch():
    # imported here: the two-process workers import this module and need no torchvision
    from hookprune.apputils.data_loaders import DataError, load_data, set_epoch

    whole, valid, test, _ = load_data("digits", "lenet300_100", seed=5)
    shards = [load_data("digits", "lenet300_100", seed=5, num_replicas=3, rank=r) for r in range(3)]
    n = len(whole.sampler)
    assert n % 3 != 0, "the split needs padding to be shared by 3 ranks"
    by_epoch = []
    for epoch in (0, 1):
        set_epoch(whole, epoch)
        full = order(whole)
        for loader, *_ in shards:
            set_epoch(loader, epoch)
        parts = [order(loader) for loader, *_ in shards]
        assert [len(p) for p in parts] == [-(-n // 3)] * 3, "every rank takes the same number of steps"
        padded = full + full[: 3 * len(parts[0]) - n]
        assert [padded[r::3] for r in range(3)] == parts
        again, *_ = load_data("digits", "lenet300_100", seed=5, num_replicas=3, rank=1)
        set_epoch(again, epoch)
        assert order(again) == parts[1], "a pure function of (seed, epoch)"
        by_epoch.append(parts)
    assert by_epoch[0] != by_epoch[1], "each epoch shuffles anew"
    for index, split in ((1, valid), (2, test)):
        pieces = [order(loader_set[index]) for loader_set in shards]
        assert sorted(pieces[0] + pieces[1] + pieces[2]) == sorted(order(split)), "each sample on exactly one rank"
    with pytest.raises(DataError, match=r"^rank must be an integer in \[0, 1\] for num_replicas 2, got 2$"):
        load_data("digits", "lenet300_100", num_replicas=2, rank=2)


# -- the example application -----------------------------------------------------------------------------------


def layer_rows(stdout: str) -> dict[str, str]:
    return dict(re.findall(r"^(fc\d\.weight) .* (\d+\.\d\d)%$", stdout, re.M))


def test_torchrun_prunes_like_one_process_writes_one_run_folder_and_resumes_bit_identical(tmp_path):
    common = ["--compress", str(AGP), "--deterministic", "--epochs", "12"]
    whole = app("-a", "lenet300_100", *common, "-o", str(tmp_path / "whole"), cwd=tmp_path, ranks=2)

    # the levels one process reaches (tests/test_compress_classifier.py): exact, whatever the number of ranks
    assert layer_rows(whole.stdout) == {"fc1.weight": "90.00", "fc2.weight": "90.00", "fc3.weight": "80.00"}
    assert "masks identical on all 2 ranks (3 masks compared)" in whole.stdout
    assert "distributed data parallel: 2 processes (gloo), 647 training samples each" in whole.stdout
    assert whole.stdout.count("run folder ") == 1 and whole.stdout.count("Test top-1") == 1, "rank 0 alone prints"
    (folder,) = (tmp_path / "whole").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == [
        "lenet300_100.log", "lenet300_100_best.pth.tar", "lenet300_100_checkpoint.pth.tar", "summary.json",
        "training.png"]
    weights, masks, summary = final_state(folder)
    assert set(masks) == {"fc1.weight", "fc2.weight", "fc3.weight"}, "the bare model's names, without module."
    assert summary["sparsity"] == pytest.approx(100 * (1 - 5120 / 50200))
    assert summary["top1"] >= 90.0

    app("-a", "lenet300_100", *common[:-1], "6", "-o", str(tmp_path / "part"), cwd=tmp_path, ranks=2)
    (part,) = (tmp_path / "part").iterdir()
    resumed = app("--resume-from", str(part / "lenet300_100_checkpoint.pth.tar"), *common, "-o",
                  str(tmp_path / "resumed"), cwd=tmp_path, ranks=2)
    assert "at epoch 6" in resumed.stdout
    (again,) = (tmp_path / "resumed").iterdir()
    weights_r, masks_r, summary_r = final_state(again)
    for name in weights:
        assert torch.equal(weights[name], weights_r[name]), name
    for name in masks:
        assert torch.equal(masks[name], masks_r[name]), name
    assert summary_r == summary


def test_distillation_under_torchrun_is_refused_with_one_line(tmp_path):
    # rank 1 of a torchrun job: the environment torchrun gives it
    result = app("-a", "lenet300_100", "--kd-teacher", "lenet300_100", "-o", str(tmp_path / "out"), cwd=tmp_path,
                 check=False, env={"RANK": "1", "WORLD_SIZE": "2"})
    assert error_line(result) == (
        "compress_classifier.py: error: rank 1: --kd-teacher: knowledge distillation is not supported under torchrun "
        "(the teacher and the distillation loss would run outside DistributedDataParallel); distil in one process")
    assert not any(tmp_path.iterdir())


def test_one_process_needs_no_mask_synchronization():
    sched = hookprune.CompressionScheduler(lenet())
    assert distributed.synchronize_masks_if_distributed(sched) is None
    assert sched.mask_sync is None


def test_rank_reports_that_differ_in_a_mask_or_a_weight_are_told_apart():
    def report(mask: torch.Tensor, weight: torch.Tensor, broadcasts: int = 2) -> dict:
        return {"masks": {"fc1.weight": mask}, "broadcasts": broadcasts, "compared": 1, "mismatch": "",
                "weight": weight}

    keep = torch.tensor([[True, False], [False, True]])
    weight = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    testing.check_rank_reports([report(keep, weight), report(keep.clone(), weight.clone())], "fc1.weight")
    with pytest.raises(AssertionError, match=r"rank 1: fc1\.weight"):
        testing.check_rank_reports([report(keep, weight), report(~keep, weight)], "fc1.weight")
    with pytest.raises(AssertionError):
        testing.check_rank_reports([report(keep, weight), report(keep, weight + 1)], "fc1.weight")
    with pytest.raises(AssertionError):
        testing.check_rank_reports([report(keep, weight, 0), report(keep, weight, 0)], "fc1.weight")
    with pytest.raises(AssertionError):
        testing.check_rank_reports([report(keep, torch.ones(2, 2)), report(keep, torch.ones(2, 2))], "fc1.weight")


def _sum_of_ranks(rank: int, folder: Path) -> dict:
    total = torch.tensor([rank + 1])
    dist.all_reduce(total)
    return {"rank": rank, "world": dist.get_world_size(), "env": int(os.environ["LOCAL_RANK"]), "total": total,
            "folder": str(folder)}


def test_run_ranks_starts_each_process_in_a_process_group_as_torchrun_does(tmp_path):
    reports = testing.run_ranks(_sum_of_ranks, 2, tmp_path)
    assert [(r["rank"], r["world"], r["env"], int(r["total"])) for r in reports] == [(0, 2, 0, 3), (1, 2, 1, 3)]
    assert {r["folder"] for r in reports} == {str(tmp_path)}
