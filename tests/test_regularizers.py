"""Regularizers: Distiller's loss terms and thresholds, the regularizer policy, drop-filter."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hookprune
from hookprune import ScheduleError, models
from hookprune.pruning.base import ArgumentError
from hookprune.pruning.levels import agp_target
from hookprune.regularization import (
    DropFilterRegularizer,
    GroupLassoRegularizer,
    GroupVarianceRegularizer,
    L1Regularizer,
)
from hookprune.regularization.drop_filter import filter_scales
from hookprune.testing import random_batches, train


class TinyConvNet(nn.Module):
    """Two convolutions and two Linear layers over the 64 features of the test loop, seen as 8x8 images."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3)
        self.conv2 = nn.Conv2d(6, 8, 3)
        self.fc1 = nn.Linear(8 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor, conv2_weight: torch.Tensor | None = None) -> torch.Tensor:
        x = F.relu(self.conv1(x.view(-1, 1, 8, 8)))
        x = self.conv2(x) if conv2_weight is None else F.conv2d(x, conv2_weight, self.conv2.bias)
        x = F.relu(x)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


@pytest.fixture
def net() -> TinyConvNet:
    torch.manual_seed(0)
    return TinyConvNet()


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)


def total_loss(regularizer, model: nn.Module) -> torch.Tensor:
    running = torch.tensor(0.0)
    for name, param in model.named_parameters():
        term = regularizer.penalty(name, param)
        if term is not None:
            running = running + term
    return running


# -- loss terms against their definitions -------------------------------------------------------------

def group_norms_by_loops(w: torch.Tensor, structure: str) -> list[torch.Tensor]:
    """The L2 norm of every group, one group at a time (the definition, not the vectorised code)."""
    if structure == "Rows":
        return [w[i].norm() for i in range(w.shape[0])]
    if structure == "Cols":
        return [w[:, j].norm() for j in range(w.shape[1])]
    if structure == "2D":
        return [w[f, c].norm() for f in range(w.shape[0]) for c in range(w.shape[1])]
    if structure == "Filters":
        return [w[f].norm() for f in range(w.shape[0])]
    if structure == "Channels":
        return [((w[:, c] ** 2).sum() + 1e-8).sqrt() for c in range(w.shape[1])]
    assert structure == "4D"
    return [w.norm()]


GROUP_CASES = [
    ("Rows", "fc1.weight", ("Rows",)),
    ("Cols", "fc1.weight", ("Cols",)),
    ("Rows+Cols", "fc1.weight", ("Rows", "Cols")),
    ("Cols+Rows", "fc1.weight", ("Rows", "Cols")),
    ("2D", "conv2.weight", ("2D",)),
    ("Channels", "conv2.weight", ("Channels",)),
    ("Filters", "conv2.weight", ("Filters",)),
    ("3D", "conv2.weight", ("Filters",)),
    ("4D", "conv2.weight", ("4D",)),
    ("Channels+4D", "conv2.weight", ("Channels", "4D")),
    ("4D+Channels", "conv2.weight", ("Channels", "4D")),
]


def test_l1_loss_is_strength_times_the_sum_of_magnitudes(net):
    reg = L1Regularizer("l1", net, {"conv1.weight": 0.01, "module.fc1.weight": 0.002})
    expected = 0.01 * net.conv1.weight.abs().sum() + 0.002 * net.fc1.weight.abs().sum()
    torch.testing.assert_close(total_loss(reg, net), expected)
    assert set(reg.reg_regims) == {"conv1.weight", "fc1.weight"}
    assert reg.penalty("conv2.weight", net.conv2.weight) is None


@pytest.mark.parametrize(("group_type", "param_name", "structures"), GROUP_CASES)
def test_group_lasso_loss_is_strength_times_the_sum_of_group_norms(net, group_type, param_name, structures):
    reg = GroupLassoRegularizer("gl", net, {param_name: [0.3, group_type]})
    weight = net.get_parameter(param_name)
    expected = 0.3 * sum(sum(group_norms_by_loops(weight, s)) for s in structures)
    loss = total_loss(reg, net)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0


def test_group_lasso_on_known_tensors():
    reg = GroupLassoRegularizer("gl", None, {"w": [0.1, "Filters"], "m": [1.0, "Rows"], "c": [1.0, "Cols"]})
    w = torch.tensor([3.0, 4.0, 0.0, 1.0]).view(2, 1, 1, 2)          # filters [3, 4] and [0, 1]
    m = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    torch.testing.assert_close(reg.penalty("w", w), torch.tensor(0.6))
    torch.testing.assert_close(reg.penalty("m", m), torch.tensor(6.0))
    torch.testing.assert_close(reg.penalty("c", m), torch.tensor(3.0 + math.sqrt(17.0)))


def test_group_variance_loss_is_strength_over_the_variance_of_channel_norms(net):
    reg = GroupVarianceRegularizer("gv", net, {"conv2.weight": [0.002, "Channels"]})
    norms = torch.stack(group_norms_by_loops(net.conv2.weight, "Channels"))
    mean = norms.mean()
    unbiased_variance = ((norms - mean) ** 2).sum() / (len(norms) - 1)
    torch.testing.assert_close(total_loss(reg, net), 0.002 / unbiased_variance)
    assert reg.threshold_criteria is None


# -- thresholds ---------------------------------------------------------------------------------------

def group_weights(shape: tuple[int, ...], structure: str, low: list[int]) -> torch.Tensor:
    """Magnitudes in [0.5, 1) with random signs, and the groups ``low`` of ``structure`` scaled by 0.01."""
    gen = torch.Generator().manual_seed(1)
    w = (0.5 + 0.5 * torch.rand(shape, generator=gen)) * torch.where(torch.rand(shape, generator=gen) < 0.5, -1, 1)
    for g in low:
        if structure in ("Rows", "Filters"):
            w[g] *= 0.01
        elif structure in ("Cols", "Channels"):
            w[:, g] *= 0.01
        elif structure == "2D":
            w[g // shape[1], g % shape[1]] *= 0.01
        else:
            w *= 0.01
    return w


def expected_keep(shape: tuple[int, ...], structure: str, low: list[int]) -> torch.Tensor:
    keep = torch.ones(shape, dtype=torch.bool)
    for g in low:
        if structure in ("Rows", "Filters"):
            keep[g] = False
        elif structure in ("Cols", "Channels"):
            keep[:, g] = False
        elif structure == "2D":
            keep[g // shape[1], g % shape[1]] = False
        else:
            keep[...] = False
    return keep


def threshold_mask(regularizer, param: torch.Tensor, name: str) -> torch.Tensor | None:
    return regularizer.threshold_mask(name, param)


@pytest.mark.parametrize("criteria", ["Mean_Abs", "Max"])
@pytest.mark.parametrize(("group_type", "shape", "structure", "low"), [
    ("Rows", (5, 7), "Rows", [0, 3]),
    ("Cols", (5, 7), "Cols", [2, 6]),
    ("2D", (4, 3, 3, 3), "2D", [0, 5, 11]),
    ("Filters", (4, 3, 3, 3), "Filters", [1, 2]),
    ("3D", (4, 3, 3, 3), "Filters", [3]),
    ("Channels", (4, 3, 3, 3), "Channels", [1]),
    ("4D", (4, 3, 3, 3), "4D", [0]),
])
def test_threshold_zeroes_exactly_the_groups_at_or_below_the_strength(criteria, group_type, shape, structure, low):
    reg = GroupLassoRegularizer("gl", None, {"w": [0.1, group_type]}, threshold_criteria=criteria)
    mask = threshold_mask(reg, group_weights(shape, structure, low), "w")
    assert mask is not None and mask.dtype == torch.bool
    assert torch.equal(mask, expected_keep(shape, structure, low))


def test_a_4d_group_above_the_threshold_gives_no_mask():
    reg = GroupLassoRegularizer("gl", None, {"w": [0.1, "4D"]}, threshold_criteria="Mean_Abs")
    assert threshold_mask(reg, group_weights((4, 3, 3, 3), "4D", []), "w") is None


@pytest.mark.parametrize(("group_type", "shape", "first", "second"), [
    ("Rows+Cols", (5, 7), ("Rows", [1]), ("Cols", [4])),
    ("Channels+4D", (4, 3, 3, 3), ("Channels", [2]), ("Channels", [])),
])
def test_combined_types_zero_an_element_when_any_of_its_groups_falls_below(group_type, shape, first, second):
    w = group_weights(shape, *first)
    for g in second[1]:
        w[:, g] *= 0.01
    reg = GroupLassoRegularizer("gl", None, {"w": [0.1, group_type]}, threshold_criteria="Max")
    expected = expected_keep(shape, *first) & expected_keep(shape, *second)
    assert torch.equal(threshold_mask(reg, w, "w"), expected)


def test_mean_abs_and_max_differ_and_a_score_equal_to_the_threshold_is_zeroed():
    w = torch.zeros(3, 2, 3, 3)
    w[0, 0, 0, 0] = 1.0      # one large element: passes Max, fails Mean_Abs (1/18)
    w[1] = 0.5               # exactly the threshold under both criteria
    w[2] = 0.6
    keep_filters = {}
    for criteria in ("Mean_Abs", "Max"):
        reg = GroupLassoRegularizer("gl", None, {"w": [0.5, "Filters"]}, threshold_criteria=criteria)
        keep_filters[criteria] = threshold_mask(reg, w, "w").flatten(1).all(dim=1).tolist()
    assert keep_filters == {"Mean_Abs": [False, False, True], "Max": [True, False, True]}


def test_l1_threshold_zeroes_the_elements_at_or_below_the_strength():
    reg = L1Regularizer("l1", None, {"w": 0.1}, threshold_criteria="Mean_Abs")
    w = torch.tensor([[0.05, -0.1, 0.2], [-0.3, 0.0, 0.11]])
    assert threshold_mask(reg, w, "w").tolist() == [[False, False, True], [True, False, True]]
    assert threshold_mask(L1Regularizer("l1", None, {"w": 0.1}), w, "w") is None


# -- argument errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("cls", "regims", "kwargs", "message"), [
    (GroupLassoRegularizer, {"conv2.weight": [0.1, "Filter"]}, {},
     r"reg_regims\['conv2.weight'\]: unknown group type 'Filter' \(did you mean 'Filters'\?\)"),
    (GroupLassoRegularizer, {"conv2.weight": [0.1, "Rows"]}, {},
     r"'Rows' groups need a 2-D \(Linear\) weight, not a parameter of shape \(8, 6, 3, 3\)"),
    (GroupLassoRegularizer, {"fc1.weight": [0.1, "Channels"]}, {},
     r"'Channels' groups need a 4-D \(Conv2d\) weight, not a parameter of shape \(32, 128\)"),
    (GroupLassoRegularizer, {"conv2.weight": [-0.1, "Filters"]}, {}, r"the strength must be a number >= 0, got -0.1"),
    (GroupLassoRegularizer, {"conv2.weight": 0.1}, {}, r"must be \[strength, group_type\], got 0.1"),
    (GroupLassoRegularizer, {"conv2.weight": [0.1, "Filters"]}, {"threshold_criteria": "mean_abs"},
     r"'threshold_criteria' must be one of Mean_Abs, Max or null, got 'mean_abs' \(did you mean 'Mean_Abs'\?\)"),
    (GroupVarianceRegularizer, {"conv2.weight": [0.1, "Filters"]}, {},
     r"unknown group type 'Filters'; group types are: Channels$"),
    (GroupVarianceRegularizer, {"conv1.weight": [0.1, "Channels"]}, {}, r"needs at least 2 input channels"),
    (L1Regularizer, {"*": 0.1}, {}, r"L1Regularizer needs each parameter named; '\*' is not accepted"),
    (L1Regularizer, {"fc3.weight": 0.1}, {}, r"the model has no parameter 'fc3.weight'"),
    (L1Regularizer, {"fc1.weight": "strong"}, {}, r"the strength must be a number >= 0, got 'strong'"),
])
def test_bad_arguments_raise_an_argument_error_naming_the_argument(net, cls, regims, kwargs, message):
    with pytest.raises(ArgumentError, match=message) as info:
        cls("r", net, regims, **kwargs)
    assert info.value.argument in (f"reg_regims['{next(iter(regims))}']", "threshold_criteria")


def test_a_bad_group_type_points_at_its_schedule_line(net, tmp_path):
    path = tmp_path / "ssl.yaml"
    path.write_text("version: 1\nregularizers:\n  ssl:\n    class: GroupLassoRegularizer\n    reg_regims:\n"
                    "      module.conv2.weight: [0.002, Filterz]\n    threshold_criteria: Mean_Abs\n"
                    "policies:\n  - regularizer: {instance_name: ssl}\n    starting_epoch: 0\n    ending_epoch: 2\n")
    with pytest.raises(ScheduleError, match=rf"^{path}:6:7: regularizers.ssl \(GroupLassoRegularizer\): "
                                            r"reg_regims\['conv2.weight'\]: unknown group type 'Filterz' "
                                            r"\(did you mean 'Filters'\?\); group types are: 2D, Rows, Cols"):
        hookprune.build(path, net, sgd(net))


# -- the regularizer policy -----------------------------------------------------------------------------

def regularizer_schedule(spec: dict, keep_mask: bool = False, starting_epoch: int = 0, ending_epoch: int = 2,
                         pruners: dict | None = None, pruner_policies: list | None = None) -> dict:
    policy = {"regularizer": {"instance_name": "reg", "args": {"keep_mask": keep_mask}},
              "starting_epoch": starting_epoch, "ending_epoch": ending_epoch, "frequency": 1}
    return {"version": 1, "pruners": pruners or {}, "regularizers": {"reg": spec},
            "policies": [*(pruner_policies or []), policy]}


def test_the_named_loss_term_is_added_and_reported(net):
    opt = sgd(net)
    sched = hookprune.build({"version": 1, "regularizers": {
        "gl": {"class": "GroupLassoRegularizer", "reg_regims": {"conv2.weight": [0.01, "Filters"]}},
        "l1": {"class": "L1Regularizer", "reg_regims": {"fc1.weight": 0.001}}},
        "policies": [{"regularizer": {"instance_name": "gl"}, "starting_epoch": 0, "ending_epoch": 1},
                     {"regularizer": {"instance_name": "l1"}, "starting_epoch": 0, "ending_epoch": 1}]}, net, opt)
    x, y = torch.randn(4, 64), torch.tensor([0, 1, 2, 3])
    reference = copy.deepcopy(net)
    step = {"epoch": 0, "minibatch_id": 0, "minibatches_per_epoch": 1}
    sched.fire("on_epoch_begin", epoch=0)
    sched.fire("on_minibatch_begin", **step)
    loss = F.cross_entropy(net(x), y)
    total = sched.fire("before_backward", **step, loss=loss)
    group_lasso = 0.01 * sum(group_norms_by_loops(net.conv2.weight, "Filters"))
    l1 = 0.001 * net.fc1.weight.abs().sum()
    assert list(sched.loss_components) == ["GroupLassoRegularizer_loss", "L1Regularizer_loss"]
    torch.testing.assert_close(sched.loss_components["GroupLassoRegularizer_loss"], group_lasso)
    torch.testing.assert_close(sched.loss_components["L1Regularizer_loss"], l1)
    torch.testing.assert_close(total, loss + group_lasso + l1)
    total.backward()
    (F.cross_entropy(reference(x), y) + 0.01 * sum(group_norms_by_loops(reference.conv2.weight, "Filters"))
     + 0.001 * reference.fc1.weight.abs().sum()).backward()
    torch.testing.assert_close(net.conv2.weight.grad, reference.conv2.weight.grad)
    torch.testing.assert_close(net.fc1.weight.grad, reference.fc1.weight.grad)
    distiller_style = sched.before_backward_pass(0, 0, 1, loss, return_loss_components=True)
    assert [c.name for c in distiller_style.loss_components] == ["GroupLassoRegularizer_loss", "L1Regularizer_loss"]
    after_window = sched.fire("before_backward", epoch=1, minibatch_id=0, minibatches_per_epoch=1, loss=loss)
    assert after_window is loss and sched.loss_components == {}


def filters_zeroed(weight: torch.Tensor) -> list[int]:
    return [f for f in range(weight.shape[0]) if not weight[f].any()]


def ssl_net(net: TinyConvNet) -> TinyConvNet:
    """conv2 with filter magnitudes in [0.3, 0.6), filters 1 and 4 a hundred times smaller, positive biases."""
    with torch.no_grad():
        w = net.conv2.weight
        w.copy_((0.3 + 0.3 * torch.rand_like(w)) * torch.sign(torch.randn_like(w)) * 0.2)
        w[1] *= 0.01
        w[4] *= 0.01
        net.conv2.bias.fill_(0.5)
    return net


FILTER_SSL = {"class": "GroupLassoRegularizer", "reg_regims": {"conv2.weight": [0.02, "Filters"]},
              "threshold_criteria": "Mean_Abs"}


def test_keep_mask_keeps_the_thresholded_filters_zero_after_the_window(net):
    net, opt = ssl_net(net), sgd(net)
    sched = hookprune.build(regularizer_schedule(FILTER_SSL, keep_mask=True), net, opt)
    train(sched, net, opt, random_batches(), epochs=5)
    assert filters_zeroed(net.conv2.weight) == [1, 4]
    assert filters_zeroed(sched.masks["conv2.weight"]) == [1, 4]


def test_without_keep_mask_the_threshold_mask_is_discarded_after_each_minibatch(net):
    net, opt = ssl_net(net), sgd(net)
    sched = hookprune.build(regularizer_schedule(FILTER_SSL, keep_mask=False), net, opt)
    train(sched, net, opt, random_batches(), epochs=2)
    assert filters_zeroed(net.conv2.weight) == [1, 4]
    assert "conv2.weight" not in sched.masks
    train(sched, net, opt, random_batches(), epochs=4, start_epoch=2)
    assert filters_zeroed(net.conv2.weight) == []


def run_and_watch(sched, model, opt, epochs, watch, batches=3):
    """The test loop, calling ``watch(epoch)`` after every ``on_minibatch_end``."""
    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 64, generator=gen), torch.randint(0, 10, (8,), generator=gen)) for _ in range(batches)]
    for epoch in range(epochs):
        sched.fire("on_epoch_begin", epoch=epoch)
        for i, (x, y) in enumerate(data):
            step = {"epoch": epoch, "minibatch_id": i, "minibatches_per_epoch": batches}
            sched.fire("on_minibatch_begin", **step)
            loss = sched.fire("before_backward", **step, loss=F.cross_entropy(model(x), y))
            opt.zero_grad()
            loss.backward()
            sched.fire("before_optimizer_step", **step)
            opt.step()
            sched.fire("on_minibatch_end", **step)
            watch(epoch)
        sched.fire("on_epoch_end", epoch=epoch, metrics={})


AGP = {"agp": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.05, "final_sparsity": 0.5,
               "weights": ["fc1.weight"]}}
AGP_POLICY = [{"pruner": {"instance_name": "agp"}, "starting_epoch": 0, "ending_epoch": 4, "frequency": 1}]
L1_THRESHOLD = {"class": "L1Regularizer", "reg_regims": {"fc1.weight": 0.01}, "threshold_criteria": "Mean_Abs"}


def test_thresholding_never_clobbers_a_pruning_mask(net):
    opt = sgd(net)
    sched = hookprune.build(regularizer_schedule(L1_THRESHOLD, ending_epoch=6, pruners=AGP,
                                                 pruner_policies=AGP_POLICY), net, opt)
    weight, numel = net.fc1.weight, net.fc1.weight.numel()
    seen = {"pruned": 0, "extra_zeros": 0}

    def watch(epoch):
        mask = sched.masks["fc1.weight"]
        pruned = int((~mask).sum())
        assert pruned == int(agp_target(0.05, 0.5, 0, 4, 1, min(epoch, 3)) * numel)
        assert pruned >= seen["pruned"]
        assert not weight[~mask].any()
        if epoch < 6:
            assert not weight[weight.abs() <= 0.01].any()
        assert torch.equal(sched.zeros_mask_dict["module.fc1.weight"].mask, mask)
        seen["pruned"] = pruned
        seen["extra_zeros"] = max(seen["extra_zeros"], int((weight == 0).sum()) - pruned)

    run_and_watch(sched, net, opt, epochs=8, watch=watch)
    assert seen["pruned"] == int(0.5 * numel)
    assert seen["extra_zeros"] > 0


def test_a_kept_threshold_mask_is_the_and_of_both_masks(net):
    opt = sgd(net)
    sched = hookprune.build(regularizer_schedule(L1_THRESHOLD, keep_mask=True, ending_epoch=1, pruners=AGP,
                                                 pruner_policies=AGP_POLICY), net, opt)
    masks = []
    run_and_watch(sched, net, opt, epochs=1, watch=lambda epoch: masks.append(sched.masks["fc1.weight"].clone()))
    pruning, kept = masks[-2], masks[-1]
    assert int((~pruning).sum()) == int(0.05 * pruning.numel())
    assert torch.equal(kept, pruning & (net.fc1.weight.detach().abs() > 0.01))
    assert int((~kept).sum()) > int((~pruning).sum())
    assert torch.equal(sched.zeros_mask_dict["fc1.weight"].mask, kept)


# -- Distiller's schedules ------------------------------------------------------------------------------

def test_an_ssl_schedule_from_the_corpus_runs_on_resnet20(corpus):
    model = models.create_model("resnet20_cifar")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = hookprune.load(corpus / "ssl/ssl_4D-removal_training.yaml", model, opt)
    step = {"epoch": 0, "minibatch_id": 0, "minibatches_per_epoch": 1}
    sched.fire("on_epoch_begin", epoch=0)
    loss = F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([1, 2]))
    total = sched.fire("before_backward", **step, loss=loss)
    names = ["layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2", "layer1.2.conv2",
             "layer2.1.conv2", "layer2.2.conv2", "layer3.1.conv2", "layer3.2.conv2"]
    expected = 0.004 * sum(model.get_parameter(f"{n}.weight").norm() for n in names)
    torch.testing.assert_close(sched.loss_components["GroupLassoRegularizer_loss"], expected)
    torch.testing.assert_close(total, loss + expected)


# -- drop-filter ----------------------------------------------------------------------------------------

def drop_filter_sched(model: nn.Module, regims: dict, ending_epoch: int = 2, **kwargs):
    spec = {"class": "DropFilterRegularizer", "reg_regims": regims, **kwargs}
    return hookprune.build(regularizer_schedule(spec, ending_epoch=ending_epoch), model, sgd(model))


def one_step(sched, model, x, y, epoch=0, minibatch_id=0):
    step = {"epoch": epoch, "minibatch_id": minibatch_id, "minibatches_per_epoch": 4}
    sched.fire("on_minibatch_begin", **step)
    out = model(x)
    loss = F.cross_entropy(out, y)
    model.zero_grad()
    loss.backward()
    sched.fire("on_minibatch_end", **step)
    return out


def test_drop_filter_forward_and_gradient_are_those_of_the_masked_convolution(net):
    sched = drop_filter_sched(net, {"conv2.weight": 0.5}, frequency=2, seed=3)
    x, y = torch.randn(4, 64), torch.tensor([0, 1, 2, 3])
    before = net.conv2.weight.detach().clone()
    sched.fire("on_epoch_begin", epoch=0)
    torch.testing.assert_close(one_step(sched, net, x, y), net(x))
    out = one_step(sched, net, x, y, minibatch_id=1)
    grad = net.conv2.weight.grad.clone()

    keep = torch.rand(8, generator=torch.Generator().manual_seed(3)) >= 0.5
    assert 0 < int(keep.sum()) < 8
    l1 = before.abs().sum(dim=(1, 2, 3))
    factor = max(0.2, float(l1[keep].sum() / l1.sum()))
    weight = before.clone().requires_grad_(True)
    masked = weight * keep.view(-1, 1, 1, 1) / factor
    expected = net(x, conv2_weight=masked)
    F.cross_entropy(expected, y).backward()
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(grad, weight.grad)
    assert torch.equal(net.conv2.weight, before)
    assert not net.conv2._forward_hooks
    torch.testing.assert_close(one_step(sched, net, x, y, minibatch_id=2), net(x))


def test_filter_scales_divide_by_the_kept_l1_fraction_at_least_point_two():
    weight = torch.tensor([1.0, 9.0]).view(2, 1, 1, 1)
    torch.testing.assert_close(filter_scales(weight, torch.tensor([True, False])), torch.tensor([5.0, 0.0]))
    torch.testing.assert_close(filter_scales(weight, torch.tensor([False, True])), torch.tensor([0.0, 1 / 0.9]))
    torch.testing.assert_close(filter_scales(torch.zeros(2, 1, 1, 1), torch.tensor([True, False])),
                               torch.tensor([1.0, 0.0]))


def test_drop_filter_acts_only_in_training_and_in_its_epochs(net):
    sched = drop_filter_sched(net, {"*": 0.5}, ending_epoch=1, frequency=1, seed=0)
    reg = sched.instances["reg"]
    assert list(reg.drop_probabilities) == ["conv1", "conv2"]
    x, y = torch.randn(4, 64), torch.tensor([0, 1, 2, 3])
    sched.fire("on_epoch_begin", epoch=0)
    net.eval()
    assert torch.equal(one_step(sched, net, x, y), net(x))
    net.train()
    assert not torch.allclose(one_step(sched, net, x, y), net(x))
    sched.fire("on_epoch_begin", epoch=1)
    assert torch.equal(one_step(sched, net, x, y, epoch=1), net(x))
    assert reg.minibatches == 1


def test_drop_filter_resumes_with_the_same_draws(net):
    twin = copy.deepcopy(net)
    x, y = torch.randn(4, 64), torch.tensor([0, 1, 2, 3])
    first = drop_filter_sched(net, {"conv1.weight": 0.3, "*": 0.5}, frequency=2, seed=7)
    first.fire("on_epoch_begin", epoch=0)
    for i in range(3):
        one_step(first, net, x, y, minibatch_id=i)
    resumed = drop_filter_sched(twin, {"conv1.weight": 0.3, "*": 0.5}, frequency=2, seed=99)
    resumed.load_state_dict(first.state_dict())
    resumed.fire("on_epoch_begin", epoch=0)
    assert first.instances["reg"].drop_probabilities == {"conv1": 0.3, "conv2": 0.5}
    expected = one_step(first, net, x, y, minibatch_id=3)
    torch.testing.assert_close(one_step(resumed, twin, x, y, minibatch_id=3), expected)


@pytest.mark.parametrize(("regims", "kwargs", "argument", "message"), [
    ({"fc1.weight": 0.5}, {}, "reg_regims['fc1.weight']",
     r"filters are dropped from Conv2d weights only; 'fc1.weight' is the weight of a Linear"),
    ({"conv2.bias": 0.5}, {}, "reg_regims['conv2.bias']", r"'conv2.bias' is the bias of a Conv2d"),
    ({"conv2.weight": 1.0}, {}, "reg_regims['conv2.weight']", r"must be within \[0, 1\), got 1.0"),
    ({"conv2.weight": 0.5}, {"frequency": 0}, "frequency", r"'frequency' must be an integer >= 1, got 0"),
])
def test_drop_filter_argument_errors(net, regims, kwargs, argument, message):
    with pytest.raises(ArgumentError, match=message) as info:
        DropFilterRegularizer("df", net, regims, **kwargs)
    assert info.value.argument == argument
