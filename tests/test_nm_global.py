"""N:M sparsity and global magnitude pruning, on real layers and through schedules."""

from __future__ import annotations

import pytest
import torch

import hookprune
from hookprune.pruning.levels import agp_target
from hookprune.pruning.nm import nm_keep_mask
from hookprune.selection import global_keep_masks
from hookprune.testing import random_batches, train

WEIGHTS = ["fc1.weight", "fc2.weight", "fc3.weight"]


def groups_along_inputs(tensor: torch.Tensor, m: int) -> torch.Tensor:
    """Rows of m consecutive inputs: (out, in, *kernel) -> (out * prod(kernel) * in / m, m)."""
    return tensor.movedim(1, -1).reshape(-1, m)


def reference_nm(weights: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Group by group: keep the n largest magnitudes, pruning the lowest index first among equals."""
    groups = groups_along_inputs(weights.abs(), m)
    keep = torch.ones_like(groups, dtype=torch.bool)
    for row, values in enumerate(groups.tolist()):
        order = sorted(range(m), key=lambda i: (values[i], i))
        for i in order[: m - n]:
            keep[row, i] = False
    return keep.view(weights.movedim(1, -1).shape).movedim(-1, 1)


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (4, 8), (3, 5)])
def test_nm_mask_on_linear_and_conv_weights(n, m):
    torch.manual_seed(0)
    linear = torch.nn.Linear(8 * m, 6).weight
    conv = torch.nn.Conv2d(4 * m, 5, kernel_size=3).weight
    for weights in (linear, conv):
        keep = nm_keep_mask(weights, n, m)
        assert keep.shape == weights.shape and keep.dtype == torch.bool
        assert (groups_along_inputs(keep, m).sum(dim=1) == n).all()
        assert torch.equal(keep, reference_nm(weights.detach(), n, m))


def test_nm_groups_run_along_input_channels_at_each_kernel_position():
    weights = torch.zeros(1, 4, 1, 2)
    weights[0, :, 0, 0] = torch.tensor([4.0, 1.0, 3.0, 2.0])  # position (0, 0): channels 0 and 2 win
    weights[0, :, 0, 1] = torch.tensor([1.0, 2.0, 3.0, 4.0])  # position (0, 1): channels 2 and 3 win
    keep = nm_keep_mask(weights, 2, 4)
    assert keep[0, :, 0, 0].tolist() == [True, False, True, False]
    assert keep[0, :, 0, 1].tolist() == [False, False, True, True]


def test_nm_ties_prune_the_lowest_index_first():
    keep = nm_keep_mask(torch.full((2, 8), -0.5), 2, 4)
    assert keep.tolist() == [[False, False, True, True] * 2] * 2


def nm_schedule(n, m, weights):
    return {"version": 1,
            "pruners": {"nm": {"class": "NMSparsityPruner", "n": n, "m": m, "weights": weights}},
            "policies": [{"pruner": {"instance_name": "nm"}, "starting_epoch": 0, "ending_epoch": 2,
                          "frequency": 1}]}


def test_nm_pruner_runs_from_a_schedule(lenet):
    optimizer = torch.optim.SGD(lenet.parameters(), lr=0.1, momentum=0.9)
    sched = hookprune.load(nm_schedule(2, 4, WEIGHTS), lenet, optimizer)
    train(sched, lenet, optimizer, random_batches(), epochs=3)
    for name, param in lenet.named_parameters():
        if name in WEIGHTS:
            nonzero = groups_along_inputs(param.detach() != 0, 4).sum(dim=1)
            assert (nonzero == 2).all(), name
            assert torch.equal(sched.masks[name], nm_keep_mask(param, 2, 4))
    assert "fc1.bias" not in sched.masks


def test_nm_pruner_refuses_bad_arguments_and_shapes(lenet):
    for n, m, message in ((4, 4, r"'n' \(4\) must be smaller than 'm' \(4\)"),
                          (5, 4, r"'n' \(5\) must be smaller than 'm' \(4\)"),
                          (1, 0, r"'m' must be an integer >= 1, got 0"),
                          (0, 4, r"'n' must be an integer >= 1, got 0")):
        with pytest.raises(hookprune.ScheduleError, match=rf"pruners\.nm \(NMSparsityPruner\): {message}"):
            hookprune.load(nm_schedule(n, m, ["fc2.weight"]), lenet)
    sched = hookprune.load(nm_schedule(2, 8, ["fc1.weight", "fc2.weight"]), lenet)
    expected = (r"^NMSparsityPruner 'nm': 'fc2\.weight' has shape \(100, 300\): "
                r"its input dimension 300 is not a multiple of m=8")
    with pytest.raises(ValueError, match=expected):
        sched.fire("on_epoch_begin", epoch=0)
    sched = hookprune.load(nm_schedule(2, 4, ["fc1.bias"]), lenet)
    with pytest.raises(ValueError, match=r"'fc1\.bias' has shape \(300,\)"):
        sched.fire("on_epoch_begin", epoch=0)


def weight_zeros(model: torch.nn.Module) -> dict[str, int]:
    return {name: int((p == 0).sum()) for name, p in model.named_parameters() if name in WEIGHTS}


def test_global_magnitude_pruner_reaches_the_exact_global_sparsity(lenet):
    optimizer = torch.optim.SGD(lenet.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    schedule = {"version": 1,
                "pruners": {"global": {"class": "GlobalMagnitudePruner", "sparsity": 0.7, "weights": WEIGHTS}},
                "policies": [{"pruner": {"instance_name": "global"}, "epochs": [0]}]}
    sched = hookprune.load(schedule, lenet, optimizer)
    params = dict(lenet.named_parameters())
    expected = global_keep_masks({name: params[name].detach().clone() for name in WEIGHTS}, 0.7)
    train(sched, lenet, optimizer, random_batches(), epochs=3)
    total = sum(params[name].numel() for name in WEIGHTS)
    zeros = weight_zeros(lenet)
    assert sum(zeros.values()) == int(0.7 * total)
    for name in WEIGHTS:
        assert torch.equal(sched.masks[name], expected[name])
        assert zeros[name] == int((~expected[name]).sum())
    # one threshold, not one level per layer: the layers end at different sparsities
    assert len({round(zeros[name] / params[name].numel(), 3) for name in WEIGHTS}) == 3


def test_global_agp_follows_the_cubic_schedule_exactly(lenet):
    optimizer = torch.optim.SGD(lenet.parameters(), lr=0.1, momentum=0.9)
    schedule = {"version": 1,
                "pruners": {"gagp": {"class": "GlobalAutomatedGradualPruner", "initial_sparsity": 0.05,
                                     "final_sparsity": 0.85, "weights": ["module.fc1.weight", *WEIGHTS[1:]]}},
                "policies": [{"pruner": {"instance_name": "gagp", "args": {"keep_mask": True}},
                              "starting_epoch": 1, "ending_epoch": 8, "frequency": 2}]}
    sched = hookprune.load(schedule, lenet, optimizer)
    total = sum(p.numel() for name, p in lenet.named_parameters() if name in WEIGHTS)
    target = 0.0
    for epoch in range(10):
        if epoch in range(1, 8, 2):
            target = agp_target(0.05, 0.85, 1, 8, 2, epoch)
        train(sched, lenet, optimizer, random_batches(seed=epoch), epochs=epoch + 1, start_epoch=epoch)
        assert sum(weight_zeros(lenet).values()) == int(target * total), epoch
    assert target == pytest.approx(0.85)


def test_global_agp_refuses_a_window_too_short(lenet):
    schedule = {"version": 1,
                "pruners": {"gagp": {"class": "GlobalAutomatedGradualPruner", "initial_sparsity": 0.1,
                                     "final_sparsity": 0.5, "weights": WEIGHTS}},
                "policies": [{"pruner": {"instance_name": "gagp"}, "starting_epoch": 0, "ending_epoch": 2,
                              "frequency": 2}]}
    with pytest.raises(hookprune.ScheduleError, match="an AGP policy needs at least two pruning epochs"):
        hookprune.load(schedule, lenet)
    schedule["pruners"]["gagp"]["final_sparsity"] = 0.1
    with pytest.raises(hookprune.ScheduleError,
                       match=r"'final_sparsity' \(0\.1\) must be greater than 'initial_sparsity' \(0\.1\)"):
        hookprune.load(schedule, lenet)
