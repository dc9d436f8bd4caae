"""Masks: booleans, exact levels, re-applied after every step, Distiller's policy options."""

from __future__ import annotations

import pytest
import torch

import hookprune
from hookprune.selection import level_keep_mask, prune_mask_smallest
from hookprune.testing import random_batches, train


def agp_schedule(**args):
    policy = {"pruner": {"instance_name": "p"}, "starting_epoch": 0, "ending_epoch": 3, "frequency": 1}
    if args:
        policy["pruner"]["args"] = args
    return {
        "version": 1,
        "pruners": {"p": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.2, "final_sparsity": 0.7,
                          "weights": ["module.fc1.weight", "fc2.weight"]}},
        "policies": [policy],
    }


def zeros(t: torch.Tensor) -> int:
    return int((t == 0).sum())


def test_momentum_and_weight_decay_do_not_revive_pruned_weights(lenet):
    optimizer = torch.optim.SGD(lenet.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
    sched = hookprune.load(agp_schedule(), lenet, optimizer)
    train(sched, lenet, optimizer, random_batches(), epochs=6, fire=hookprune.fire)
    for name in ("fc1.weight", "fc2.weight"):
        mask = sched.masks[name]
        assert mask.dtype == torch.bool and mask.element_size() == 1
        weight = dict(lenet.named_parameters())[name]
        assert zeros(weight) == int(0.7 * weight.numel())
        assert torch.all(weight[~mask] == 0)
    assert "fc3.weight" not in sched.masks


def test_forward_only_masks_let_gradients_update_and_keep_mask_ends_it(lenet):
    optimizer = torch.optim.SGD(lenet.parameters(), lr=0.5, momentum=0.9)
    sched = hookprune.load(agp_schedule(mask_on_forward_only=True, keep_mask=True), lenet, optimizer)
    x = torch.randn(4, 64)
    sched.fire("on_epoch_begin", epoch=0)
    sched.fire("on_minibatch_begin", epoch=0, minibatch_id=0, minibatches_per_epoch=1)
    assert zeros(lenet.fc1.weight) == int(0.2 * lenet.fc1.weight.numel())
    lenet(x).sum().backward()
    optimizer.step()
    sched.fire("on_minibatch_end", epoch=0, minibatch_id=0, minibatches_per_epoch=1)
    assert zeros(lenet.fc1.weight) < int(0.2 * lenet.fc1.weight.numel())  # updated, not re-masked
    sched.fire("on_epoch_end", epoch=0)
    for epoch in (1, 2):
        sched.fire("on_epoch_begin", epoch=epoch)
        sched.fire("on_minibatch_begin", epoch=epoch, minibatch_id=0, minibatches_per_epoch=1)
        sched.fire("on_epoch_end", epoch=epoch)
    # keep_mask at the window's end makes the mask permanent
    assert not sched.zeros_mask_dict["fc1.weight"].mask_on_forward_only
    assert zeros(lenet.fc1.weight) == int(0.7 * lenet.fc1.weight.numel())


def test_mask_gradients_zeroes_masked_gradients_before_the_step(lenet):
    optimizer = torch.optim.SGD(lenet.parameters(), lr=0.1)
    sched = hookprune.load(agp_schedule(mask_on_forward_only=True, mask_gradients=True), lenet, optimizer)
    sched.fire("on_epoch_begin", epoch=0)
    sched.fire("on_minibatch_begin", epoch=0, minibatch_id=0, minibatches_per_epoch=1)
    lenet(torch.randn(4, 64)).sum().backward()
    sched.fire("before_optimizer_step", epoch=0, minibatch_id=0, minibatches_per_epoch=1)
    mask = sched.masks["fc1.weight"]
    assert torch.all(lenet.fc1.weight.grad[~mask] == 0)
    assert torch.any(lenet.fc1.weight.grad[mask] != 0)


def test_double_copies_restore_dense_weights_before_the_step(lenet):
    optimizer = torch.optim.SGD(lenet.parameters(), lr=0.0)
    dense = lenet.fc1.weight.detach().clone()
    sched = hookprune.load(agp_schedule(use_double_copies=True, mask_on_forward_only=True), lenet, optimizer)
    sched.fire("on_epoch_begin", epoch=0)
    sched.fire("on_minibatch_begin", epoch=0, minibatch_id=0, minibatches_per_epoch=1)
    assert zeros(lenet.fc1.weight) == int(0.2 * dense.numel())
    lenet(torch.randn(4, 64)).sum().backward()
    sched.fire("before_optimizer_step", epoch=0, minibatch_id=0, minibatches_per_epoch=1)
    assert torch.equal(lenet.fc1.weight.detach(), dense)


def test_discard_masks_at_minibatch_end(lenet):
    optimizer = torch.optim.SGD(lenet.parameters(), lr=0.1)
    sched = hookprune.load(agp_schedule(discard_masks_at_minibatch_end=True), lenet, optimizer)
    sched.fire("on_epoch_begin", epoch=0)
    assert len(sched.masks) == 2
    sched.fire("on_minibatch_end", epoch=0, minibatch_id=0, minibatches_per_epoch=1)
    assert len(sched.masks) == 0


def test_mini_batch_pruning_frequency_prunes_within_the_epoch(lenet):
    optimizer = torch.optim.SGD(lenet.parameters(), lr=0.1)
    schedule = {
        "pruners": {"p": {"class": "SparsityLevelParameterPruner", "levels": {"fc1.weight": 0.1}}},
        "policies": [{"pruner": {"instance_name": "p", "args": {"mini_batch_pruning_frequency": 2}},
                      "epochs": [0]}],
    }
    sched = hookprune.load(schedule, lenet, optimizer)
    seen = []
    pruner = sched.instances["p"]
    for level, minibatch in ((0.3, 1), (0.5, 2)):
        pruner.levels = {"fc1.weight": level}
        sched.fire("on_minibatch_begin", epoch=0, minibatch_id=minibatch, minibatches_per_epoch=4)
        seen.append(zeros(lenet.fc1.weight))
    assert seen == [0, int(0.5 * lenet.fc1.weight.numel())]


def test_skip_first_minibatch_sets_the_first_masks_at_the_second_minibatch(lenet):
    optimizer = torch.optim.SGD(lenet.parameters(), lr=0.1)
    sched = hookprune.load(agp_schedule(skip_first_minibatch=True), lenet, optimizer)
    sched.fire("on_epoch_begin", epoch=0)
    sched.fire("on_minibatch_begin", epoch=0, minibatch_id=0, minibatches_per_epoch=4)
    assert len(sched.masks) == 0 and zeros(lenet.fc1.weight) == 0
    sched.fire("on_minibatch_begin", epoch=0, minibatch_id=1, minibatches_per_epoch=4)
    assert zeros(lenet.fc1.weight) == int(0.2 * lenet.fc1.weight.numel())
    sched.fire("on_epoch_begin", epoch=1)
    sched.fire("on_minibatch_begin", epoch=1, minibatch_id=0, minibatches_per_epoch=4)
    assert zeros(lenet.fc1.weight) == int(agp_level(1) * lenet.fc1.weight.numel()), "later epochs as usual"


def agp_level(epoch: int) -> float:
    """agp_schedule's target at ``epoch`` (0.2 to 0.7 over epochs 0..2)."""
    from hookprune.pruning.levels import agp_target

    return agp_target(0.2, 0.7, 0, 3, 1, epoch)


def test_masks_accept_any_spelling_and_check_shape(lenet):
    sched = hookprune.CompressionScheduler(lenet)
    sched.masks["module.fc3.weight"] = torch.zeros(10, 100)
    assert sched.masks["fc3.weight"].dtype == torch.bool
    assert list(sched.masks) == ["fc3.weight"]
    with pytest.raises(ValueError, match=r"mask for 'fc2.weight' has shape \(3,\), the parameter \(100, 300\)"):
        sched.masks["fc2.weight"] = torch.ones(3, dtype=torch.bool)
    with pytest.raises(KeyError, match=r"the model has no parameter 'fc9\.weight'"):
        sched.masks["fc9.weight"] = torch.ones(1)
    sched.fire("on_minibatch_begin", epoch=0, minibatch_id=0, minibatches_per_epoch=1)
    assert zeros(lenet.fc3.weight) == lenet.fc3.weight.numel()


def test_selection_matches_a_stable_full_sort_with_ties():
    gen = torch.Generator().manual_seed(1)
    values = torch.randint(0, 7, (1000,), generator=gen).float()
    for k in (0, 1, 137, 500, 999, 1000):
        mask = prune_mask_smallest(values, k)
        order = torch.sort(values, stable=True).indices
        expected = torch.zeros(1000, dtype=torch.bool)
        expected[order[:k]] = True
        assert torch.equal(mask, expected)


@pytest.mark.parametrize("sparsity", [0.0, 0.29, 0.5, 0.905, 0.999])
def test_level_mask_zeroes_exactly_int_sparsity_times_numel(sparsity):
    weights = torch.randn(301, 17)
    weights[0, :10] = 0.5  # ties
    keep = level_keep_mask(weights, sparsity)
    assert int((~keep).sum()) == int(sparsity * weights.numel())


def test_sparsity_report_reads_the_weights(lenet):
    sched = hookprune.CompressionScheduler(lenet)
    sched.masks["fc2.weight"] = level_keep_mask(lenet.fc2.weight, 0.25)
    sched.mask_all_weights()
    (row,) = sched.sparsity()
    assert (row.name, row.shape, row.sparsity) == ("fc2.weight", (100, 300), 0.25)
    total = 0.25 * 30000 / (300 * 64 + 30000 + 1000)
    assert sched.total_sparsity() == pytest.approx(total)
