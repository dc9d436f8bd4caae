"""FSDP2 (``fully_shard``): masks on each rank's shard, exact selection across the shards, refusals, checkpoints.

Two gloo processes on the CPU (``fully_shard`` runs there on a CPU device mesh) train the same minibatches, so a
sharded run must give, bit for bit, the masks and weights of one process: the shards of each mask, stacked in
rank order, are the one-process mask.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

import hookprune
from hookprune import distributed, models, sharding
from hookprune.apputils.device import shard_model
from hookprune.selection import global_keep_masks, level_keep_mask, prune_mask_smallest
from hookprune.sparsity import sparsity_report
from hookprune.testing import random_batches, train
from tests.test_compress_classifier import AGP as AGP_SCHEDULE
from tests.test_compress_classifier import app, final_state, run_folder
from tests.test_distributed import layer_rows, run_scenarios

SCENARIOS = ("agp_like_one_process", "pruners_like_one_process", "refusals", "assigned_masks",
             "checkpoint_and_resume", "selection_across_shards")
LENET_WEIGHTS = ("fc1.weight", "fc2.weight", "fc3.weight")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> dict[str, list[dict]]:
    """Every scenario's results on rank 0 and rank 1, from one start of two processes."""
    return run_scenarios(tmp_path_factory.mktemp("fsdp"), __name__, SCENARIOS)


def lenet(classes: int = 3) -> torch.nn.Module:
    """LeNet-300-100 on 64 features; with 3 classes fc3's 3 rows split unevenly, 2 on rank 0 and 1 on rank 1."""
    torch.manual_seed(0)
    return models.create_model("lenet300_100", input_features=64, num_classes=classes)


def simplenet() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.create_model("simplenet_mnist")


def sharded(model: torch.nn.Module, mesh_shape: tuple[int, ...] = (2,)) -> torch.nn.Module:
    if mesh_shape == (2,):
        return shard_model(model, torch.device("cpu"))
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", mesh_shape, mesh_dim_names=("replicate", "shard"))
    for module in (m for m in model.children() if next(m.parameters(), None) is not None):
        fully_shard(module, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def whole(sched) -> dict[str, torch.Tensor]:
    """The scheduler's masks as whole tensors (gathered from the shards: for comparisons only)."""
    return {name: mask.full_tensor() if sharding.is_sharded(mask) else mask
            for name, mask in sched.state_dict()["masks_dict"].items()}


def same_weights(model: torch.nn.Module, reference: torch.nn.Module) -> bool:
    mine = {name: p.full_tensor() if sharding.is_sharded(p) else p.detach() for name, p in model.named_parameters()}
    return all(torch.equal(mine[name], p.detach()) for name, p in reference.named_parameters())


def training(schedule: dict[str, Any], build, shard: bool, batches, epochs: int = 4):
    model = build()
    if shard:
        sharded(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = hookprune.build({"version": 1, **schedule}, model, optimizer)
    train(sched, model, optimizer, batches, epochs=epochs)
    return sched, model, optimizer


AGP = {"pruners": {"agp": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.05, "final_sparsity": 0.9,
                           "weights": list(LENET_WEIGHTS)}},
       "lr_schedulers": {"decay": {"class": "ExponentialLR", "gamma": 0.9}},
       "policies": [{"pruner": {"instance_name": "agp"}, "starting_epoch": 0, "ending_epoch": 4, "frequency": 1},
                    {"lr_scheduler": {"instance_name": "decay"}, "starting_epoch": 0, "ending_epoch": 6,
                     "frequency": 1}]}


def lenet_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return random_batches(3, classes=3, seed=7)


# -- an AGP schedule -----------------------------------------------------------------------------------------


def agp_like_one_process(rank: int, folder: Path) -> None:
    sched, model, _ = training(AGP, lenet, True, lenet_batches(), epochs=6)
    reference, reference_model, _ = training(AGP, lenet, False, lenet_batches(), epochs=6)
    hsdp_sched, hsdp_model, _ = training(AGP, lambda: sharded(lenet(), (1, 2)), False, lenet_batches(), epochs=6)
    rows = [(r.name, r.shape, r.nonzeros, r.row, r.column) for r in sparsity_report(model)]
    torch.save({"masks": {name: mask.clone() for name, mask in sched.masks.items()},
                "shards": {name: tuple(sharding.local(p).shape) for name, p in model.named_parameters()},
                "reference": dict(reference.masks.items()),
                "same_weights": same_weights(model, reference_model),
                "report": rows,
                "reference_report": [(r.name, r.shape, r.nonzeros, r.row, r.column)
                                      for r in sparsity_report(reference_model)],
                "hsdp": {name: mask.clone() for name, mask in hsdp_sched.masks.items()},
                "hsdp_same_weights": same_weights(hsdp_model, reference_model),
                "verified": distributed.verify_masks(sched)},
               folder / f"rank{rank}.pt")


def test_agp_on_fsdp2_gives_the_masks_of_one_process_split_by_rows_one_byte_per_local_element(ranks):
    results = ranks["agp_like_one_process"]
    reference = results[0]["reference"]
    assert list(reference) == list(LENET_WEIGHTS)
    for name, mask in reference.items():
        shards = [r["masks"][name] for r in results]
        assert [tuple(s.shape) for s in shards] == [r["shards"][name] for r in results], "each rank's own rows"
        assert all(s.dtype == torch.bool and s.element_size() == 1 for s in shards)
        assert sum(int((~s).sum()) for s in shards) == int((~mask).sum()) == int(0.9 * mask.numel()), name
        assert torch.equal(torch.cat(shards), mask), f"{name}: the shards together are the one-process mask"
    assert [r["shards"]["fc3.weight"] for r in results] == [(2, 100), (1, 100)], "fc3 splits unevenly"
    for result in results:
        assert result["same_weights"], "the sharded run trains exactly as one process"
        assert result["report"] == result["reference_report"], "the sparsity report counts over the whole weights"
        assert result["verified"] == 3


def test_a_two_dimensional_mesh_replicating_its_shards_selects_over_the_sharded_dimension(ranks):
    results = ranks["agp_like_one_process"]
    for name, mask in results[0]["reference"].items():
        assert torch.equal(torch.cat([r["hsdp"][name] for r in results]), mask), name
    assert all(r["hsdp_same_weights"] for r in results)


# -- other pruners and the masking options -------------------------------------------------------------------

CONV = ["conv1.weight", "conv2.weight"]
LINEAR = ["fc1.weight", "fc2.weight"]


def policy(kind: str = "pruner", args: dict[str, Any] | None = None, start: int = 0) -> list[dict[str, Any]]:
    return [{kind: {"instance_name": "p", **({"args": args} if args else {})}, "starting_epoch": start,
             "ending_epoch": 3, "frequency": 1}]


#: schedules that must give the same masks and weights sharded as in one process: (model, pruner, policy)
PRUNERS: dict[str, tuple[str, dict[str, Any], list[dict[str, Any]]]] = {
    "global AGP": ("lenet", {"class": "GlobalAutomatedGradualPruner", "initial_sparsity": 0.1, "final_sparsity": 0.8,
                             "weights": LINEAR}, policy()),
    "levels": ("lenet", {"class": "SparsityLevelParameterPruner", "levels": {"fc1.weight": 0.5, "fc3.weight": 0.7}},
               policy()),
    "thresholds": ("lenet", {"class": "MagnitudeParameterPruner", "thresholds": {"*": 0.03}}, policy()),
    "splicing": ("lenet", {"class": "SplicingPruner", "sensitivities": {"fc1.weight": 0.3}, "low_thresh_mult": 0.9,
                           "hi_thresh_mult": 1.1}, policy()),
    "2:4": ("simplenet", {"class": "NMSparsityPruner", "n": 2, "m": 4, "weights": ["conv2.weight", "fc1.weight"]},
            policy()),
    "forward-only masks, masked gradients": (
        "lenet", {"class": "AutomatedGradualPruner", "initial_sparsity": 0.1, "final_sparsity": 0.8, "weights": LINEAR},
        policy(args={"mask_on_forward_only": True, "mask_gradients": True})),
    "double copies": ("lenet", {"class": "AutomatedGradualPruner", "initial_sparsity": 0.1, "final_sparsity": 0.8,
                                "weights": LINEAR}, policy(args={"use_double_copies": True})),
    "L1 filters AGP": ("simplenet", {"class": "L1RankedStructureParameterPruner_AGP", "group_type": "Filters",
                                     "initial_sparsity": 0.1, "final_sparsity": 0.5, "weights": CONV}, policy()),
    "L2 channels": ("simplenet", {"class": "L2RankedStructureParameterPruner", "group_type": "Channels",
                                  "desired_sparsity": 0.5, "weights": ["conv2.weight"]}, policy()),
    "gradient-ranked filters": ("simplenet", {"class": "GradientRankedFilterPruner", "group_type": "Filters",
                                              "desired_sparsity": 0.5, "weights": CONV}, policy(start=1)),
    "random filters": ("simplenet", {"class": "RandomRankedFilterPruner", "group_type": "Filters",
                                     "desired_sparsity": 0.5, "weights": CONV, "seed": 3}, policy()),
    "thresholded structures": ("simplenet", {"class": "StructureParameterPruner", "threshold_criteria": "Mean_Abs",
                                             "reg_regims": {"conv1.weight": [0.1, "Filters"],
                                                            "conv2.weight": [0.02, "Channels"]}}, policy()),
}


def pruners_like_one_process(rank: int, folder: Path) -> None:
    results = {}
    for case, (arch, pruner, policies) in PRUNERS.items():
        build = lenet if arch == "lenet" else simplenet
        shape = (64,) if arch == "lenet" else (1, 28, 28)
        batches = random_batches(2, shape=shape, classes=3, seed=7)
        schedule = {"pruners": {"p": pruner}, "policies": policies}
        sched, model, _ = training(schedule, build, True, batches)
        reference, reference_model, _ = training(schedule, build, False, batches)
        masks, expected = whole(sched), dict(reference.masks.items())
        results[case] = {"names": sorted(masks), "expected_names": sorted(expected),
                         "same_masks": all(torch.equal(masks[n], expected[n]) for n in expected if n in masks),
                         "same_weights": same_weights(model, reference_model),
                         "pruned": sum(int((~m).sum()) for m in expected.values())}
    torch.save(results, folder / f"rank{rank}.pt")


@pytest.mark.parametrize("case", PRUNERS)
def test_element_and_structure_pruners_and_masking_options_act_on_the_shards_as_on_the_whole(ranks, case):
    for result in ranks["pruners_like_one_process"]:
        outcome = result[case]
        assert outcome["names"] == outcome["expected_names"] and outcome["names"]
        assert outcome["pruned"] > 0
        assert outcome["same_masks"], "the shards together are the one-process masks"
        assert outcome["same_weights"]


# -- what cannot act on shards: one line at load time --------------------------------------------------------

REFUSED = {
    "activations": ({"pruners": {"p": {"class": "ActivationAPoZRankedFilterPruner", "group_type": "Filters",
                                       "desired_sparsity": 0.5, "weights": ["conv1.weight"]}}, "policies": policy()},
                    "pruners.p (ActivationAPoZRankedFilterPruner): cannot act on a model whose parameters FSDP2 "
                    "shards (fully_shard): it ranks filters by the activations each rank sees of its own data, so "
                    "the ranks would prune different filters"),
    "feature maps": ({"pruners": {"p": {"class": "FMReconstructionChannelPruner", "group_type": "Channels",
                                        "desired_sparsity": 0.5, "weights": ["conv2.weight"]}}, "policies": policy()},
                     "it re-fits the kept weights on feature maps each rank samples from its own data"),
    "blocks": ({"pruners": {"p": {"class": "L1RankedStructureParameterPruner", "group_type": "Blocks",
                                  "desired_sparsity": 0.5, "weights": ["conv2.weight"],
                                  "kwargs": {"block_shape": [2, 2, 5, 5]}}}, "policies": policy()},
               "group_type Blocks tiles rows that FSDP2 splits between ranks"),
    "thinning": ({"extensions": {"p": {"class": "FilterRemover", "thinning_func_str": "remove_filters",
                                       "arch": "simplenet_mnist", "dataset": "mnist"}},
                  "policies": policy("extension")},
                 "it removes filters and channels from the layers, whose shards FSDP2 cannot resize"),
    "regularizer": ({"regularizers": {"p": {"class": "L1Regularizer", "reg_regims": {"fc1.weight": 0.001}}},
                     "policies": policy("regularizer")},
                    "its loss term is computed from the sharded weights"),
    "quantizer": ({"quantizers": {"p": {"class": "QuantAwareTrainRangeLinearQuantizer", "bits_activations": 8,
                                        "bits_weights": 8}}, "policies": policy("quantizer")},
                  "it fake-quantizes each layer's whole weight"),
}


def refusals(rank: int, folder: Path) -> None:
    messages = {}
    for case, (schedule, _) in REFUSED.items():
        model = sharded(simplenet())
        try:
            hookprune.build({"version": 1, **schedule}, model, torch.optim.SGD(model.parameters(), lr=0.1))
            messages[case] = ""
        except hookprune.ScheduleError as exc:
            messages[case] = str(exc)
    model = sharded(lenet())
    try:
        distributed.synchronize_masks(hookprune.CompressionScheduler(model))
        messages["synchronize"] = ""
    except ValueError as exc:
        messages["synchronize"] = str(exc)
    torch.save(messages, folder / f"rank{rank}.pt")


@pytest.mark.parametrize("case", REFUSED)
def test_what_cannot_act_on_shards_is_refused_at_load_time_with_one_line_naming_why(ranks, case):
    expected = REFUSED[case][1]
    for messages in ranks["refusals"]:
        message = messages[case]
        assert message.startswith("<schedule>:") and "\n" not in message
        assert ": cannot act on a model whose parameters FSDP2 shards (fully_shard): " in message
        assert expected in message


def test_masks_of_shards_are_not_broadcast_as_ddp_masks_are(ranks):
    for messages in ranks["refusals"]:
        assert messages["synchronize"] == (
            "the model's parameters are sharded by FSDP2 (fully_shard): each rank keeps the masks of its own shards, "
            "which need no synchronization; synchronize_masks is for DistributedDataParallel")


# -- masks a plugin assigns ----------------------------------------------------------------------------------


def assigned_masks(rank: int, folder: Path) -> None:
    from torch.distributed.tensor import Shard, distribute_tensor

    model = sharded(lenet())
    sched = hookprune.CompressionScheduler(model)
    param = model.fc1.weight
    gen = torch.Generator().manual_seed(5)
    full = [torch.rand(300, 64, generator=gen) > 0.5 for _ in range(3)]
    out: dict[str, Any] = {}
    sched.masks["fc1.weight"] = full[0]
    out["from_whole"] = sched.masks["fc1.weight"].clone()
    sched.masks["fc1.weight"] = full[1][150 * rank:150 * (rank + 1)]
    out["from_local"] = sched.masks["fc1.weight"].clone()
    sched.masks["module.fc1.weight"] = distribute_tensor(full[2], param.device_mesh, [Shard(0)])
    out["from_dtensor"] = sched.masks["fc1.weight"].clone()
    sched.masks["fc1.weight"] = level_keep_mask(param, 0.25)
    out["from_level"] = sched.masks["fc1.weight"].clone()
    out["level_zeros"] = int((~whole(sched)["fc1.weight"]).sum())
    try:
        sched.masks["fc1.weight"] = torch.ones(10, 64, dtype=torch.bool)
    except ValueError as exc:
        out["wrong_shape"] = str(exc)
    sched.masks.apply()
    out["weight"] = sharding.local(param).detach().clone()
    state = sched.state_dict()["masks_dict"]["fc1.weight"]
    out["state_is_dtensor"] = sharding.is_sharded(state)
    out["state_whole"] = state.full_tensor()
    torch.save(out, folder / f"rank{rank}.pt")


def test_a_mask_is_assigned_whole_as_this_ranks_shard_or_as_a_dtensor_and_read_back_as_the_shard(ranks):
    gen = torch.Generator().manual_seed(5)
    full = [torch.rand(300, 64, generator=gen) > 0.5 for _ in range(3)]
    for rank, out in enumerate(ranks["assigned_masks"]):
        rows = slice(150 * rank, 150 * (rank + 1))
        assert torch.equal(out["from_whole"], full[0][rows]), "a whole mask: each rank keeps its rows"
        assert torch.equal(out["from_local"], full[1][rows]), "a mask of the shard's shape is the shard's"
        assert torch.equal(out["from_dtensor"], full[2][rows])
        assert out["from_level"].shape == (150, 64)
        assert out["level_zeros"] == int(0.25 * 300 * 64), "level_keep_mask selects over the whole weight"
        assert out["wrong_shape"] == ("mask for 'fc1.weight' has shape (10, 64), the parameter (300, 64) (this rank's "
                                      "shard (150, 64))")
        assert out["weight"][~out["from_level"]].eq(0).all() and out["weight"][out["from_level"]].ne(0).all()
        assert out["state_is_dtensor"], "state_dict() holds each sharded mask as a DTensor"
    assert torch.equal(ranks["assigned_masks"][0]["state_whole"],
                       torch.cat([out["from_level"] for out in ranks["assigned_masks"]]))


# -- checkpoints with torch.distributed.checkpoint ------------------------------------------------------------


def checkpoint_and_resume(rank: int, folder: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    batches = lenet_batches()
    sched, model, optimizer = training(AGP, lenet, True, batches, epochs=6)
    uninterrupted = whole(sched)
    uninterrupted_weights = {n: p.full_tensor() for n, p in model.named_parameters()}

    sched, model, optimizer = training(AGP, lenet, True, batches, epochs=2)
    path = str(folder / "checkpoint")
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optimizer_state, "sched": sharding.sharded_state_dict(sched)},
             checkpoint_id=path)

    model = sharded(lenet())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = hookprune.build({"version": 1, **AGP}, model, optimizer)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optimizer_state, "sched": sharding.state_template(sched, path, "sched")}
    dcp.load(state, checkpoint_id=path, planner=sharding.SafeLoadPlanner())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    sharding.load_sharded_state_dict(sched, state["sched"])
    loaded = {name: mask.clone() for name, mask in sched.masks.items()}
    epoch = sched.epoch
    train(sched, model, optimizer, batches, epochs=6, start_epoch=2)
    resumed = whole(sched)
    torch.save({"same_masks": sorted(resumed) == sorted(uninterrupted)
                and all(torch.equal(resumed[n], uninterrupted[n]) for n in resumed),
                "same_weights": all(torch.equal(p.full_tensor(), uninterrupted_weights[n])
                                    for n, p in model.named_parameters()),
                "loaded": loaded, "epoch": epoch, "files": sorted(os.listdir(path))}, folder / f"rank{rank}.pt")


def test_sharded_masks_save_and_resume_with_torch_distributed_checkpoint_as_the_uninterrupted_run(ranks):
    for result in ranks["checkpoint_and_resume"]:
        assert result["epoch"] == 1
        assert sorted(result["loaded"]) == list(LENET_WEIGHTS)
        assert result["same_masks"], "a resumed run's masks are the uninterrupted run's"
        assert result["same_weights"]
    assert ranks["checkpoint_and_resume"][0]["files"] == [".metadata", "__0_0.distcp", "__1_0.distcp"], \
        "each rank wrote its own shards"
    assert [tuple(r["loaded"]["fc3.weight"].shape) for r in ranks["checkpoint_and_resume"]] == [(2, 100), (1, 100)]


# -- the selection itself ------------------------------------------------------------------------------------


def selection_cases() -> list[tuple[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    cases = []
    for shape in [(7, 3), (1, 5), (301, 200)]:
        for kind in ("values", "ties", "zeros", "nan", "bfloat16", "float64"):
            t = torch.randn(shape, generator=gen)
            if kind == "ties":
                t = torch.round(t * 4) / 4
            elif kind == "zeros":
                t[t.abs() < 0.8] = 0
            elif kind == "nan":
                t[t > 1.5] = float("nan")
            elif kind == "bfloat16":
                t = t.to(torch.bfloat16)
            elif kind == "float64":
                t = torch.round(t.double() * 8) / 8
            cases.append((f"{kind} {shape}", t))
    return cases


def selection_across_shards(rank: int, folder: Path) -> None:
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    mesh = init_device_mesh("cpu", (2,))
    cases = selection_cases()
    wrong = []
    for label, t in cases:
        shards = distribute_tensor(t, mesh, [Shard(0)])
        for sparsity in (0.0, 0.1, 0.5, 0.9, 0.999, 1.0):
            if not torch.equal(level_keep_mask(shards, sparsity).full_tensor(), level_keep_mask(t, sparsity)):
                wrong.append(f"level {label} {sparsity}")
        if t.dtype != torch.bfloat16:
            for k in (1, t.numel() // 2, t.numel() - 1):
                if not torch.equal(prune_mask_smallest(shards, k).full_tensor(), prune_mask_smallest(t, k)):
                    wrong.append(f"smallest {label} {k}")
    tensors = dict(cases[:12])
    dtensors = {n: distribute_tensor(t, mesh, [Shard(0)]) for n, t in tensors.items()}
    for sparsity in (0.1, 0.5, 0.9):
        expected, got = global_keep_masks(tensors, sparsity), global_keep_masks(dtensors, sparsity)
        wrong += [f"global {n} {sparsity}" for n in tensors if not torch.equal(got[n].full_tensor(), expected[n])]

    sent: list[int] = []
    original = sharding.ShardGroup.all_sum

    def counting(self, tensor):
        sent.append(tensor.numel() * 8)
        return original(self, tensor)

    sharding.ShardGroup.all_sum = counting
    try:
        level_keep_mask(distribute_tensor(torch.randn(600, 300, generator=torch.Generator().manual_seed(1)), mesh,
                                          [Shard(0)]), 0.7)
    finally:
        sharding.ShardGroup.all_sum = original
    torch.save({"wrong": wrong, "sent": sent, "group": dist.get_world_size()}, folder / f"rank{rank}.pt")


def test_level_global_and_smallest_selection_across_shards_equal_one_process_exactly(ranks):
    for result in ranks["selection_across_shards"]:
        assert result["wrong"] == []


def test_a_float32_weight_costs_one_histogram_and_two_small_refinements_per_selection(ranks):
    for result in ranks["selection_across_shards"]:
        assert result["sent"] == [8 * 2**16, 8 * 2**8, 8 * 2**8], "bytes all-reduced per rank, as the docs state"


# -- the example application under torchrun --fsdp -----------------------------------------------------------


def test_torchrun_fsdp_prunes_exactly_writes_whole_checkpoints_and_resumes_bit_identical(tmp_path):
    common = ["--compress", str(AGP_SCHEDULE), "--deterministic", "--fsdp"]
    whole_run = app("-a", "lenet300_100", *common, "--epochs", "12", "-o", str(tmp_path / "whole"), cwd=tmp_path,
                    ranks=2)
    assert layer_rows(whole_run.stdout) == {"fc1.weight": "90.00", "fc2.weight": "90.00", "fc3.weight": "80.00"}
    assert "fully sharded data parallel (FSDP2): 2 processes (gloo), 647 training samples each" in whole_run.stdout
    assert "masks sharded over 2 ranks, each holding its rows of the same 3 masks" in whole_run.stdout
    assert whole_run.stdout.count("Test top-1") == 1, "rank 0 alone prints"
    folder = run_folder(tmp_path / "whole")
    weights, masks, summary = final_state(folder)
    assert {name: tuple(mask.shape) for name, mask in masks.items()} == {
        "fc1.weight": (300, 64), "fc2.weight": (100, 300), "fc3.weight": (10, 100)}, "gathered whole on rank 0"
    assert summary["sparsity"] == pytest.approx(100 * (1 - 5120 / 50200)) and summary["top1"] >= 90.0
    assert summary["hyperparameters"]["fsdp"] is True

    app("-a", "lenet300_100", *common, "--epochs", "6", "-o", str(tmp_path / "part"), cwd=tmp_path, ranks=2)
    checkpoint = run_folder(tmp_path / "part") / "lenet300_100_checkpoint.pth.tar"
    resumed = app("--resume-from", str(checkpoint), *common, "--epochs", "12", "-o", str(tmp_path / "resumed"),
                  cwd=tmp_path, ranks=2)
    assert "at epoch 6" in resumed.stdout
    weights_r, masks_r, summary_r = final_state(run_folder(tmp_path / "resumed"))
    for name in weights:
        assert torch.equal(weights[name], weights_r[name]), name
    for name in masks:
        assert torch.equal(masks[name], masks_r[name]), name
    assert summary_r == summary

    alone = app("--resume-from", str(folder / "lenet300_100_checkpoint.pth.tar"), "--evaluate", "-o",
                str(tmp_path / "alone"), cwd=tmp_path)
    assert f"Test top-1 {summary['top1']:.2f}%" in alone.stdout, "one process reads the sharded run's checkpoint"
