"""Distiller's ranked structure pruners: exact counts, the structures chosen, Leader groups, AGP
levels, random draws that resume bit for bit, load-time errors, and corpus schedules run through."""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import hookprune
from hookprune import ScheduleError, models
from hookprune.errors import ScheduleWarning
from hookprune.pruning.base import ArgumentError
from hookprune.pruning.levels import agp_target
from hookprune.pruning.ranked import (
    BernoulliFilterPruner,
    BernoulliFilterPruner_AGP,
    L1RankedStructureParameterPruner,
    L1RankedStructureParameterPruner_AGP,
    L2RankedStructureParameterPruner,
    RandomLevelStructureParameterPruner,
    StructureParameterPruner,
)
from hookprune.pruning.structures import (
    check_group_type,
    count_to_prune,
    expand_structure_mask,
    num_structures,
    prune_lowest,
    structure_scores,
)
from tests.conftest import CORPUS
from tests.test_corpus import manifest, missing_pieces

# -- a small conv net and a loop that drives a schedule with it --------------------------------------


class SmallNet(nn.Module):
    """conv1 (8 filters) -> conv2 (16) -> conv3 (16, added back to conv2's output) -> fc (16 -> 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        x = torch.relu(x + self.conv3(x))
        return self.fc(x.mean(dim=(2, 3)))


def small_net(seed: int = 0) -> SmallNet:
    torch.manual_seed(seed)
    return SmallNet()


def set_scales(weight: torch.Tensor, scales: list[float], dim: int = 0) -> None:
    """Give structure i along ``dim`` the mean absolute value ``scales[i]`` (random signs)."""
    signs = torch.where(torch.rand(weight.shape, generator=torch.Generator().manual_seed(1)) < 0.5, -1.0, 1.0)
    shape = [1] * weight.dim()
    shape[dim] = len(scales)
    with torch.no_grad():
        weight.copy_(signs * torch.tensor(scales).view(shape))


def zeroed(mask: torch.Tensor, dim: int = 0) -> list[int]:
    """Indices of the structures along ``dim`` that ``mask`` zeroes entirely (others must be whole)."""
    per = mask.transpose(0, dim).reshape(mask.shape[dim], -1)
    assert bool((per.all(dim=1) | ~per.any(dim=1)).all()), "a structure is partly masked"
    return (~per.any(dim=1)).nonzero().flatten().tolist()


def drive(sched: hookprune.CompressionScheduler, model: nn.Module, optimizer: torch.optim.Optimizer,
          epochs: int, start_epoch: int = 0, batch: tuple[int, ...] = (2, 3, 8, 8),
          after_begin: Callable[[int], None] | None = None) -> None:
    """A plain training loop on a conv input: one tiny minibatch per epoch."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*batch, generator=gen)
    for epoch in range(start_epoch, epochs):
        sched.fire("on_epoch_begin", epoch=epoch)
        if after_begin is not None:
            after_begin(epoch)
        step = {"epoch": epoch, "minibatch_id": 0, "minibatches_per_epoch": 1}
        sched.fire("on_minibatch_begin", **step)
        out = model(x)
        loss = sched.fire("before_backward", **step, loss=out.float().square().mean())
        optimizer.zero_grad()
        loss.backward()
        sched.fire("before_optimizer_step", **step)
        optimizer.step()
        sched.fire("on_minibatch_end", **step)
        sched.fire("on_epoch_end", epoch=epoch, metrics={"min": float(loss.detach()), "max": 0.0})


def schedule(pruner: dict[str, Any], epochs: list[int] | None = None, args: dict[str, Any] | None = None,
             window: tuple[int, int, int] | None = None) -> dict[str, Any]:
    policy: dict[str, Any] = {"pruner": {"instance_name": "p", **({"args": args} if args else {})}}
    if window is not None:
        policy.update(starting_epoch=window[0], ending_epoch=window[1], frequency=window[2])
    else:
        policy["epochs"] = epochs or [0]
    return {"version": 1, "pruners": {"p": pruner}, "policies": [policy]}


def load(pruner: dict[str, Any], model: nn.Module, **kwargs: Any) -> hookprune.CompressionScheduler:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return hookprune.load(schedule(pruner, **kwargs), model, optimizer)


# -- structures: counts, scores, masks ---------------------------------------------------------------


@pytest.mark.parametrize(("n", "fraction", "group_size", "rounding", "expected"), [
    (32, 0.5, 1, math.floor, 16),
    (10, 0.29, 1, math.floor, 2),
    (10, 0.21, 1, math.ceil, 3),
    (10, 0.25, 1, round, 2),
    (32, 0.3, 4, math.floor, 8),     # floor(9.6) = 9, then down to a multiple of 4
    (32, 0.3, 4, math.ceil, 12),     # ceil(9.6) = 10, then up to a multiple of 4
    (16, 0.99, 4, math.ceil, 12),    # rounds up to all 16: one group is kept, as Distiller does
    (8, 0.95, 1, math.ceil, 7),
    (8, 0.1, 1, math.floor, 0),
])
def test_count_to_prune_is_distillers_count(n, fraction, group_size, rounding, expected):
    assert count_to_prune(n, fraction, group_size, rounding, param_name="w") == expected


def test_count_to_prune_refuses_every_structure():
    with pytest.raises(ValueError, match=r"^pruning all 8 filters of 'conv2.weight' would disconnect the layer"):
        count_to_prune(8, 1.0, param_name="conv2.weight", structure="filters")
    with pytest.raises(ValueError, match=r"^pruning all 2 channels of 'w' would disconnect the layer"):
        count_to_prune(2, 0.5, 4, math.ceil, param_name="w", structure="channels")


def test_structure_scores_are_length_normalised_norms():
    w = torch.randn(6, 4, 3, 3)
    assert torch.allclose(structure_scores(w, "Filters"), w.abs().mean(dim=(1, 2, 3)))
    assert torch.allclose(structure_scores(w, "3d", p=2), w.flatten(1).norm(dim=1) / 36)
    assert torch.allclose(structure_scores(w, "channels"), w.abs().mean(dim=(0, 2, 3)))
    assert torch.allclose(structure_scores(w, "2D"), w.abs().mean(dim=(2, 3)).flatten())
    assert torch.allclose(structure_scores(w, "Filters", p=math.inf), w.abs().amax(dim=(1, 2, 3)))
    blocks = structure_scores(w, "Blocks", block_shape=[1, 2, 1, 1])   # 2 consecutive channels at one tap
    assert blocks.shape == (6 * 2 * 9,)
    assert torch.isclose(blocks[0], (w[0, 0, 0, 0].abs() + w[0, 1, 0, 0].abs()) / 2)
    assert torch.isclose(blocks[9], (w[0, 2, 0, 0].abs() + w[0, 3, 0, 0].abs()) / 2)
    fc = torch.randn(5, 7)
    assert torch.allclose(structure_scores(fc, "Rows"), fc.abs().mean(dim=1))
    assert torch.allclose(structure_scores(fc, "Cols", p=2), fc.norm(dim=0) / 5)
    assert torch.allclose(structure_scores(fc, "Channels"), fc.abs().mean(dim=0))
    grouped = structure_scores(w, "Filters", group_size=2)
    assert torch.allclose(grouped, w.reshape(3, -1).abs().mean(dim=1))


def test_expand_structure_mask_zeroes_whole_structures():
    shape = (6, 4, 3, 3)
    keep = torch.tensor([True, False, True, True, False, True])
    mask = expand_structure_mask(keep, shape, "Filters")
    assert mask.shape == shape and mask.dtype == torch.bool
    assert zeroed(mask) == [1, 4]
    assert zeroed(expand_structure_mask(torch.tensor([False, True, True, False]), shape, "Channels"), 1) == [0, 3]
    cols = expand_structure_mask(torch.tensor([True, False, True]), (4, 3), "Cols")
    assert zeroed(cols, 1) == [1]
    blocks_keep = torch.ones(6 * 2 * 9, dtype=torch.bool)
    blocks_keep[9] = False                                   # filter 0, channels 2-3, tap (0, 0)
    mask = expand_structure_mask(blocks_keep, shape, "Blocks", [1, 2, 1, 1])
    assert (~mask).nonzero().tolist() == [[0, 2, 0, 0], [0, 3, 0, 0]]
    assert zeroed(expand_structure_mask(torch.tensor([True, False, True]), shape, "Filters", group_size=2)) == [2, 3]


def test_prune_lowest_prunes_exactly_k_with_ties_by_lowest_index():
    keep = prune_lowest(torch.tensor([1.0, 0.5, 0.5, 0.5, 2.0]), 2)
    assert keep.tolist() == [True, False, False, True, True]


def test_group_type_names_follow_distiller():
    assert check_group_type("3D") == "Filters"
    assert check_group_type("filters") == "Filters"
    assert num_structures((16, 8, 3, 3), "Blocks", [4, 2, 1, 3]) == 4 * 4 * 3 * 1
    with pytest.raises(ArgumentError, match=r"'group_type' must be one of Filters, 3D, Channels, Rows, Cols, "
                                            r"Blocks, 2D, 4D; got 'Kernels'"):
        check_group_type("Kernels")


# -- which structures the ranked pruners zero ----------------------------------------------------------


def test_l1_filters_zero_exactly_the_lowest_and_leave_other_weights_alone():
    model = small_net()
    scales = [0.9, 0.1, 0.5, 0.3, 1.2, 0.2, 0.8, 0.05, 1.0, 0.6, 0.7, 0.4, 1.1, 0.15, 0.25, 0.35]
    set_scales(model.conv2.weight, scales)
    conv1_before = model.conv1.weight.detach().clone()
    sched = load({"class": "L1RankedStructureParameterPruner", "group_type": "Filters", "desired_sparsity": 0.5,
                  "weights": ["conv2.weight"]}, model)
    drive(sched, model, sched.optimizer, 1)
    lowest = sorted(sorted(range(16), key=lambda i: scales[i])[:8])
    assert zeroed(sched.masks["conv2.weight"]) == lowest
    assert zeroed(model.conv2.weight.detach() != 0) == lowest
    assert set(sched.masks) == {"conv2.weight"}
    assert not torch.equal(model.conv1.weight.detach(), conv1_before)   # trained, never masked
    assert bool((model.conv1.weight != 0).all())


def test_l1_and_l2_rank_differently():
    model = small_net()
    with torch.no_grad():
        model.conv2.weight.fill_(0.3)
        model.conv2.weight[0].zero_()
        model.conv2.weight[0, 0, 0, 0] = 20.0    # mean |w| 0.28 (lowest L1), but a large L2
    w = model.conv2.weight
    l1 = L1RankedStructureParameterPruner("p", "Filters", 0.0625, ["conv2.weight"])
    l2 = L2RankedStructureParameterPruner("p", "Filters", 0.0625, ["conv2.weight"])
    assert prune_lowest(l1.structure_ranking(w, "conv2.weight"), 1).tolist().index(False) == 0
    assert prune_lowest(l2.structure_ranking(w, "conv2.weight"), 1).tolist().index(False) == 1


def test_channels_rows_and_blocks_counts():
    model = small_net()
    set_scales(model.conv2.weight, [0.5, 0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.6], dim=1)
    sched = load({"class": "L1RankedStructureParameterPruner", "group_type": "Channels", "desired_sparsity": 0.25,
                  "weights": ["conv2.weight"]}, model)
    sched.fire("on_epoch_begin", epoch=0)
    assert zeroed(sched.masks["conv2.weight"], 1) == [1, 3]

    # Distiller's ranked "Rows" of a Linear weight are its columns (the input features)
    model = small_net()
    sched = load({"class": "L2RankedStructureParameterPruner", "group_type": "Rows", "desired_sparsity": 0.5,
                  "weights": ["fc.weight"]}, model)
    sched.fire("on_epoch_begin", epoch=0)
    w = model.fc.weight.detach()
    expected = sorted(torch.argsort(w.norm(dim=0), stable=True)[:8].tolist())
    assert zeroed(sched.masks["fc.weight"], 1) == expected

    model = small_net()
    sched = load({"class": "L1RankedStructureParameterPruner", "group_type": "Blocks", "desired_sparsity": 0.5,
                  "kwargs": {"block_shape": [1, 4, 1, 1]}, "weights": ["conv2.weight", "conv3.weight"]}, model)
    sched.fire("on_epoch_begin", epoch=0)
    for name, channels in (("conv2.weight", 8), ("conv3.weight", 16)):
        mask = sched.masks[name]
        per_block = mask.view(16, channels // 4, 4, 9)
        assert bool((per_block.all(dim=2) | ~per_block.any(dim=2)).all())
        assert int((~per_block.any(dim=2)).sum()) == 16 * (channels // 4) * 9 // 2


def test_group_size_and_rounding_fn():
    model = small_net()
    set_scales(model.conv2.weight, [float(i + 1) for i in range(16)])
    sched = load({"class": "L1RankedStructureParameterPruner", "group_type": "Filters", "desired_sparsity": 0.3,
                  "group_size": 4, "rounding_fn": "math.ceil", "weights": ["conv2.weight"]}, model)
    sched.fire("on_epoch_begin", epoch=0)
    assert zeroed(sched.masks["conv2.weight"]) == list(range(8))      # ceil(4.8)=5 -> 8, in whole groups of 4


def test_leader_decides_the_filters_of_every_listed_weight():
    model = small_net()
    set_scales(model.conv2.weight, [0.01 * (16 - i) for i in range(16)])    # leader: the last filters lowest
    set_scales(model.conv3.weight, [0.01 * (i + 1) for i in range(16)])     # on its own: the first ones
    sched = load({"class": "L1RankedStructureParameterPruner_AGP", "initial_sparsity": 0.25, "final_sparsity": 0.5,
                  "group_type": "Filters", "group_dependency": "Leader",
                  "weights": ["conv2.weight", "conv3.weight"]}, model, window=(0, 3, 1))
    seen = []

    def check(epoch: int) -> None:
        a, b = zeroed(sched.masks["conv2.weight"]), zeroed(sched.masks["conv3.weight"])
        k = int(agp_target(0.25, 0.5, 0, 3, 1, epoch) * 16)
        leader_scores = model.conv2.weight.detach().abs().mean(dim=(1, 2, 3))
        assert a == b == sorted(torch.argsort(leader_scores, stable=True)[:k].tolist())
        seen.append(a)

    drive(sched, model, sched.optimizer, 3, after_begin=check)
    assert seen[0] == list(range(12, 16))
    assert len(seen[-1]) == 8


def test_agp_variant_reaches_the_exact_final_count_through_load_and_training():
    model = small_net()
    sched = load({"class": "L1RankedStructureParameterPruner_AGP", "initial_sparsity": 0.1, "final_sparsity": 0.7,
                  "group_type": "Filters", "weights": ["module.conv2.weight", "conv1.weight"]}, model,
                 window=(1, 8, 2))
    counts: dict[int, tuple[int, ...]] = {}

    def record(epoch: int) -> None:
        counts[epoch] = tuple(len(zeroed(sched.masks[n])) if n in sched.masks else 0
                              for n in ("conv1.weight", "conv2.weight"))

    drive(sched, model, sched.optimizer, 9, after_begin=record)
    for epoch in (1, 3, 5, 7):
        target = agp_target(0.1, 0.7, 1, 8, 2, epoch)
        assert counts[epoch] == (int(target * 8), int(target * 16)), epoch
    assert counts[8] == (int(0.7 * 8), int(0.7 * 16)) == (5, 11)
    assert len(zeroed(model.conv2.weight.detach() != 0)) == 11


def test_policy_levels_override_desired_sparsity():
    model = small_net()
    sched = load({"class": "L1RankedStructureParameterPruner", "group_type": "Filters", "desired_sparsity": 0.25,
                  "weights": ["conv1.weight", "conv2.weight"]}, model, args={"levels": {"conv2.weight": 0.75}})
    sched.fire("on_epoch_begin", epoch=0)
    assert len(zeroed(sched.masks["conv1.weight"])) == 2
    assert len(zeroed(sched.masks["conv2.weight"])) == 12


def test_a_policy_level_that_would_prune_every_filter_is_refused_at_load():
    with pytest.raises(ScheduleError, match=r"policy for 'p': 'levels\['conv1.weight'\]' must be within \[0, 1\), "
                                            r"got 1.0$"):
        load({"class": "L1RankedStructureParameterPruner", "group_type": "Filters", "desired_sparsity": 0.5,
              "weights": ["conv1.weight"]}, small_net(), args={"levels": {"conv1.weight": 1.0}})


# -- load-time errors ------------------------------------------------------------------------------------


PRUNER_YAML = """\
version: 1
pruners:
  p:
    class: {cls}
    desired_sparsity: 0.5
    group_type: {group_type}
    rounding_fn: {rounding_fn}
    weights: [conv2.weight]
policies:
  - pruner: {{instance_name: p}}
    epochs: [0]
"""


@pytest.mark.parametrize(("cls", "group_type", "rounding_fn", "where", "message"), [
    ("L1RankedStructureParameterPruner", "Kernels", "floor", "6:17",
     "'group_type' must be one of Filters, 3D, Channels, Rows, Blocks; got 'Kernels'"),
    ("L2RankedStructureParameterPruner", "Filters", "numpy.floor", "7:18",
     "'rounding_fn' must be one of floor, math.floor, ceil, math.ceil, round; got 'numpy.floor'"),
    ("RandomRankedFilterPruner", "Channels", "floor", "6:17",
     "'group_type' must be one of Filters, 3D; got 'Channels'"),
    ("L1RankedStructureParameterPruner", "Rows", "floor", "8:14",
     "'conv2.weight': Rows need a 2-D weight, got shape (16, 8, 3, 3)"),
])
def test_bad_arguments_are_one_line_schedule_errors(tmp_path, cls, group_type, rounding_fn, where, message):
    text = PRUNER_YAML.format(cls=cls, group_type=group_type, rounding_fn=rounding_fn)
    if cls == "RandomRankedFilterPruner":
        text = text.replace("    rounding_fn: floor\n", "")
    path = tmp_path / "sched.yaml"
    path.write_text(text)
    with pytest.raises(ScheduleError) as info:
        hookprune.load(path, small_net())
    text = str(info.value)
    assert "\n" not in text
    assert text == f"{path}:{where}: pruners.p ({cls}): {message}"


def test_leader_group_of_different_sizes_is_refused_at_load():
    with pytest.raises(ScheduleError, match=r"group_dependency Leader: 'conv1.weight' has 8 filters but the "
                                            r"leader 'conv2.weight' has 16"):
        load({"class": "L1RankedStructureParameterPruner", "group_type": "Filters", "desired_sparsity": 0.5,
              "group_dependency": "Leader", "weights": ["conv2.weight", "conv1.weight"]}, small_net())


def test_agp_window_too_short_is_refused_at_load():
    with pytest.raises(ScheduleError, match=r"an AGP policy needs at least two pruning epochs"):
        load({"class": "BernoulliFilterPruner_AGP", "initial_sparsity": 0.1, "final_sparsity": 0.5,
              "group_type": "Filters", "weights": ["conv2.weight"]}, small_net(), window=(0, 2, 2))


# -- random draws: Bernoulli, noise, random ranking and levels, all resumable --------------------------------


RANDOM_PRUNERS = [
    {"class": "BernoulliFilterPruner", "desired_sparsity": 0.4, "group_type": "Filters",
     "weights": ["conv2.weight", "conv3.weight"], "seed": 3},
    {"class": "L1RankedStructureParameterPruner", "desired_sparsity": 0.5, "group_type": "Filters", "noise": 1.0,
     "weights": ["conv2.weight", "conv3.weight"], "seed": 3},
    {"class": "RandomRankedFilterPruner_AGP", "initial_sparsity": 0.2, "final_sparsity": 0.6,
     "group_type": "Filters", "weights": ["conv2.weight", "conv3.weight"], "seed": 3},
    {"class": "RandomLevelStructureParameterPruner", "sparsity_range": [0.1, 0.6], "group_type": "Filters",
     "group_dependency": "Leader", "weights": ["conv2.weight", "conv3.weight"], "seed": 3},
]


def masks_by_epoch(pruner: dict[str, Any], epochs: int, resume_at: int | None = None) -> list[list[list[int]]]:
    """The zeroed filters of each weight after each epoch's masks are set; with ``resume_at``, the run
    is checkpointed there and finished by a fresh model and scheduler loaded from the checkpoint."""
    recorded: list[list[list[int]]] = []
    model = small_net()
    sched = load(pruner, model, window=(0, epochs, 1))

    def record(epoch: int) -> None:
        recorded.append([zeroed(sched.masks[n]) for n in ("conv2.weight", "conv3.weight")])

    drive(sched, model, sched.optimizer, resume_at or epochs, after_begin=record)
    if resume_at is not None:
        buffer = io.BytesIO()
        torch.save({"model": model.state_dict(), "optimizer": sched.optimizer.state_dict(),
                    "compression_sched": sched.state_dict()}, buffer)
        buffer.seek(0)
        checkpoint = torch.load(buffer, weights_only=True)
        model = small_net(seed=7)
        model.load_state_dict(checkpoint["model"])
        sched = load(pruner, model, window=(0, epochs, 1))
        sched.optimizer.load_state_dict(checkpoint["optimizer"])
        sched.load_state_dict(checkpoint["compression_sched"])
        drive(sched, model, sched.optimizer, epochs, start_epoch=resume_at, after_begin=record)
    return recorded


@pytest.mark.parametrize("pruner", RANDOM_PRUNERS, ids=lambda p: p["class"])
def test_random_draws_resume_bit_for_bit(pruner):
    uninterrupted = masks_by_epoch(pruner, 6)
    assert masks_by_epoch(pruner, 6, resume_at=3) == uninterrupted
    assert len({str(m) for m in uninterrupted}) > 1, "the draws should change from epoch to epoch"


def test_a_different_seed_draws_differently():
    first = masks_by_epoch(RANDOM_PRUNERS[0], 4)
    assert masks_by_epoch({**RANDOM_PRUNERS[0], "seed": 4}, 4) != first


def test_bernoulli_drops_whole_filters_and_never_a_whole_layer():
    weight = torch.randn(4, 2, 3, 3)
    pruner = BernoulliFilterPruner("p", "Filters", 0.9, ["w"], seed=0)
    drops = []
    for _ in range(200):
        keep = pruner.keep_map(weight, "w", 0.9)
        assert keep is not None and bool(keep.any())
        drops.append(int((~keep).sum()))
    assert 2.5 < sum(drops) / len(drops) < 3.0     # about 0.9 * 4, conditioned on keeping one filter
    agp = BernoulliFilterPruner_AGP("p", 0.05, 0.5, "3D", ["w"], seed=0)
    assert (agp.initial_sparsity, agp.final_sparsity, agp.desired_sparsity) == (0.05, 0.5, None)


def test_random_level_draws_a_level_within_its_range():
    pruner = RandomLevelStructureParameterPruner("p", "Filters", [0.25, 0.5], ["w"], seed=0)
    weight = torch.randn(16, 2, 1, 1)
    counts = set()
    for _ in range(50):
        keep = pruner.keep_map(weight, "w", pruner.level.level("w", None))
        counts.add(int((~keep).sum()))
    assert counts <= set(range(4, 9)) and len(counts) > 2


# -- gradient ranking ---------------------------------------------------------------------------------------


def test_gradient_ranking_prunes_the_lowest_weight_times_gradient():
    model = small_net()
    sched = load({"class": "GradientRankedFilterPruner", "desired_sparsity": 0.25, "group_type": "Filters",
                  "weights": ["conv1.weight"]}, model, epochs=[0, 1])
    with pytest.raises(ValueError, match=r"'conv1.weight' has no gradient yet; it ranks filters by weight \* "
                                         r"gradient, so start its policy after an epoch of training"):
        sched.fire("on_epoch_begin", epoch=0)
    with torch.no_grad():
        model.conv1.weight.fill_(1.0)
    model.conv1.weight.grad = torch.ones_like(model.conv1.weight) * torch.tensor(
        [0.5, -2.0, 1.0, 3.0, -0.1, 2.0, -1.0, 0.2]).view(8, 1, 1, 1)
    sched.fire("on_epoch_begin", epoch=1)
    assert zeroed(sched.masks["conv1.weight"]) == [1, 6]


# -- thresholding -------------------------------------------------------------------------------------------


def test_structure_parameter_pruner_thresholds_structures():
    model = small_net()
    set_scales(model.conv2.weight, [0.1, 0.5, 0.05, 0.9] * 4)
    with torch.no_grad():
        model.fc.weight.fill_(0.01)
        model.fc.weight[3, 5] = 1.0
    sched = load({"class": "StructureParameterPruner", "threshold_criteria": "Mean_Abs",
                  "reg_regims": {"conv2.weight": [0.2, "Filters"]}}, model)
    sched.fire("on_epoch_begin", epoch=0)
    assert zeroed(sched.masks["conv2.weight"]) == [0, 2, 4, 6, 8, 10, 12, 14]

    sched = load({"class": "StructureParameterPruner", "threshold_criteria": "Max",
                  "reg_regims": {"fc.weight": [0.5, "Cols"]}}, model)
    sched.fire("on_epoch_begin", epoch=0)
    assert zeroed(sched.masks["fc.weight"], 1) == [i for i in range(16) if i != 5]

    sched = load({"class": "StructureParameterPruner", "threshold_criteria": "Mean_Abs",
                  "reg_regims": {"conv1.weight": [100.0, "3D"]}}, model)
    with pytest.raises(ValueError, match=r"^pruning all 8 filters of 'conv1.weight' would disconnect the layer"):
        sched.fire("on_epoch_begin", epoch=0)
    with pytest.raises(ArgumentError, match=r"'threshold_criteria' must be Mean_Abs or Max, got 'L1'"):
        StructureParameterPruner("p", model, {"conv1.weight": [0.1, "3D"]}, "L1")


def test_state_dict_round_trip_restores_the_generator():
    pruner = L1RankedStructureParameterPruner_AGP("p", 0.1, 0.5, "Filters", ["w"], noise=0.5, seed=11)
    state = pruner.state_dict()
    first = torch.rand(3, generator=pruner.generator)
    pruner.load_state_dict(state)
    assert torch.equal(torch.rand(3, generator=pruner.generator), first)


# -- Distiller's own schedules ----------------------------------------------------------------------------------


CORPUS_CASES = [case for case in manifest() if case[0] in {
    "agp-pruning/resnet20_filters.schedule_agp_4.yaml",
    "drop_filter/resnet20_cifar_randomlevel_training.yaml",
    "drop_filter/plain20_cifar_dropfilter_training.yaml",
}] or [pytest.param("-", "-", marks=pytest.mark.skip(reason=f"the Distiller schedule corpus is not at {CORPUS}"))]


def _structure_dim(instance: Any) -> int:
    return 1 if instance.structure in ("Channels", "Cols") else 0


@pytest.mark.parametrize(("path", "arch"), CORPUS_CASES)
def test_corpus_schedule_runs_and_ends_at_its_structured_level(path, arch):
    missing = missing_pieces(CORPUS / path, arch)
    if missing:
        pytest.skip(f"needs {', '.join(missing)}, which no installed distribution provides")
    torch.manual_seed(0)
    model = models.create_model(arch)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScheduleWarning)
        sched = hookprune.load(CORPUS / path, model, optimizer)
    ours = {p: p.instance for p in sched.scheduled
            if p.kind == "pruner" and type(p.instance).__module__ == "hookprune.pruning.ranked"}
    assert ours, "the schedule uses none of the ranked pruners"
    claims: dict[str, int] = {}
    for instance in sched.instances.values():
        for name in getattr(instance, "params_names", ()):
            claims[name] = claims.get(name, 0) + 1
    checked: set[str] = set()

    def check(epoch: int) -> None:
        for policy, pruner in ours.items():
            if epoch != policy.window.last:
                continue
            for name in pruner.params_names:
                if claims[name] > 1:
                    continue
                mask = sched.masks[name]
                dim = _structure_dim(pruner)
                if pruner.structure == "Blocks":
                    n = num_structures(mask.shape, "Blocks", pruner.block_shape)
                    blocks = structure_scores(mask.float(), "Blocks", block_shape=pruner.block_shape)
                    assert bool(((blocks == 0) | (blocks == 1)).all())
                    assert int((blocks == 0).sum()) == count_to_prune(n, pruner.final_sparsity, param_name=name)
                elif pruner.final_sparsity is not None and not isinstance(pruner, BernoulliFilterPruner_AGP):
                    n = mask.shape[dim]
                    expected = count_to_prune(n, pruner.final_sparsity, pruner.group_size, pruner.rounding_fn,
                                              param_name=name)
                    assert len(zeroed(mask, dim)) == expected, name
                elif isinstance(pruner, RandomLevelStructureParameterPruner):
                    low, high = pruner.sparsity_range
                    assert int(low * mask.shape[0]) <= len(zeroed(mask)) <= int(high * mask.shape[0]), name
                else:
                    assert len(zeroed(mask)) < mask.shape[0], name
                checked.add(pruner.name)

    last = sched.epoch_span()[1] + 1
    side = 8 if arch.endswith("_cifar") else 32     # CIFAR models pool adaptively; ImageNet ones downsample 32x
    drive(sched, model, optimizer, last, batch=(2, 3, side, side), after_begin=check)
    assert checked == {pruner.name for pruner in ours.values()}
