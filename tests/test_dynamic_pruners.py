"""Activation-ranked filter pruners, feature-map reconstruction, network surgery and Baidu's RNN pruner."""

from __future__ import annotations

import copy
import io
import itertools
import math

import pytest
import torch
from torch import nn

import hookprune
from hookprune.pruning.activation import ActivationAPoZRankedFilterPruner
from hookprune.pruning.baidu_rnn import BaiduRNNPruner, baidu_threshold
from hookprune.pruning.levels import agp_target
from hookprune.pruning.splicing import SplicingPruner
from hookprune.pruning.structures import count_to_prune
from hookprune.testing import random_batches, train

# -- models and a loop ------------------------------------------------------------------------------


class ConvBNNet(nn.Module):
    """conv -> BN -> ReLU -> pooled -> fc1 -> ReLU -> fc2: the BN-ReLU pair of ResNets, and a Linear
    layer followed directly by a ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.fc1 = nn.Linear(8, 6)
        self.fc2 = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        return self.fc2(torch.relu(self.fc1(x)))


class WordLM(nn.Module):
    """PyTorch's word-language-model example, tiny: ``encoder`` / ``rnn`` (LSTM) / ``decoder``."""

    def __init__(self, ntoken: int = 30, width: int = 12) -> None:
        super().__init__()
        self.encoder = nn.Embedding(ntoken, width)
        self.rnn = nn.LSTM(width, width, 2)
        self.decoder = nn.Linear(width, ntoken)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        output, _ = self.rnn(self.encoder(tokens))
        return self.decoder(output)


def conv_net(channel_gain: dict[int, float] | None = None, channel_shift: dict[int, float] | None = None) -> ConvBNNet:
    """A ConvBNNet whose BN gives channel c the output ``gain * normalised + shift`` (default 1, 5)."""
    torch.manual_seed(0)
    model = ConvBNNet()
    with torch.no_grad():
        model.bn.weight.fill_(1.0)
        model.bn.bias.fill_(5.0)
        for c, gain in (channel_gain or {}).items():
            model.bn.weight[c] = gain
        for c, shift in (channel_shift or {}).items():
            model.bn.bias[c] = shift
    return model


def image_batches(n: int, seed: int = 0, batch: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return random_batches(n, (3, 6, 6), classes=4, size=batch, seed=seed)


def pruner_schedule(cls: str, policy: dict, **kwargs) -> dict:
    return {"version": 1, "pruners": {"p": {"class": cls, **kwargs}},
            "policies": [{"pruner": {"instance_name": "p"}, **policy}]}


def pruned_filters(mask: torch.Tensor) -> list[int]:
    return [i for i in range(mask.shape[0]) if not mask[i].any()]


def all_forward_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


# -- activation-ranked filter pruners -----------------------------------------------------------------


def test_apoz_prunes_exactly_the_filters_whose_relu_output_is_always_zero():
    # BN maps channels 2 and 5 to a constant -1: the ReLU after it always outputs zero (APoZ 1)
    model = conv_net(channel_gain={2: 0.0, 5: 0.0}, channel_shift={2: -1.0, 5: -1.0})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = hookprune.load(pruner_schedule("ActivationAPoZRankedFilterPruner", {"epochs": [0]},
                                           group_type="Filters", desired_sparsity=0.25,
                                           weights=["conv.weight", "fc1.weight"]), model, optimizer)
    train(sched, model, optimizer, image_batches(3), epochs=1)
    assert pruned_filters(sched.masks["conv.weight"]) == [2, 5]
    assert torch.count_nonzero(model.conv.weight.detach().flatten(1).abs().sum(1)) == 6
    # fc1 has 6 neurons: int(0.25 * 6) = 1 is pruned, whatever it is
    assert len(pruned_filters(sched.masks["fc1.weight"])) == 1
    # the conv's activations were measured on its BatchNorm's output, fc1's on its own
    pruner = sched.instances["p"]
    assert pruner._followers == {"conv.weight": ("bn", 1), "fc1.weight": ("fc1", -1)}


def test_apoz_ties_prune_the_lowest_index_first():
    dead = {1: 0.0, 4: 0.0, 6: 0.0}
    model = conv_net(channel_gain=dead, channel_shift={c: -2.0 for c in dead})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = hookprune.load(pruner_schedule("ActivationAPoZRankedFilterPruner", {"epochs": [0]},
                                           group_type="3D", desired_sparsity=0.25, weights=["conv.weight"]),
                           model, optimizer)
    train(sched, model, optimizer, image_batches(2), epochs=1)
    assert pruned_filters(sched.masks["conv.weight"]) == [1, 4]


def test_mean_prunes_the_filters_with_the_lowest_mean_activation():
    # constant BN outputs: channel c always outputs relu(shift[c]); none is ever exactly zero
    shifts = {0: 0.9, 1: 0.2, 2: 0.7, 3: 0.05, 4: 0.6, 5: 0.4, 6: 0.8, 7: 0.3}
    model = conv_net(channel_gain=dict.fromkeys(shifts, 0.0), channel_shift=shifts)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001)
    sched = hookprune.load(pruner_schedule("ActivationMeanRankedFilterPruner", {"epochs": [0]},
                                           group_type="Filters", desired_sparsity=0.5, weights=["conv.weight"]),
                           model, optimizer)
    train(sched, model, optimizer, image_batches(2), epochs=1)
    assert pruned_filters(sched.masks["conv.weight"]) == [1, 3, 5, 7]
    # APoZ ranks these all equal (no zeros), so it prunes by index
    model = conv_net(channel_gain=dict.fromkeys(shifts, 0.0), channel_shift=shifts)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001)
    sched = hookprune.load(pruner_schedule("ActivationAPoZRankedFilterPruner", {"epochs": [0]},
                                           group_type="Filters", desired_sparsity=0.5, weights=["conv.weight"]),
                           model, optimizer)
    train(sched, model, optimizer, image_batches(2), epochs=1)
    assert pruned_filters(sched.masks["conv.weight"]) == [0, 1, 2, 3]


def test_first_epoch_waits_for_one_minibatch_of_statistics_then_later_epochs_use_the_previous_one():
    model = conv_net(channel_gain={6: 0.0}, channel_shift={6: -1.0})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = hookprune.load(pruner_schedule("ActivationAPoZRankedFilterPruner_AGP",
                                           {"starting_epoch": 0, "ending_epoch": 3},
                                           initial_sparsity=0.1, final_sparsity=0.5, group_type="Filters",
                                           weights=["conv.weight"]), model, optimizer)
    pruner = sched.instances["p"]
    seen = []

    def spy(epoch, minibatch_id):
        mask = sched.masks.get("conv.weight")
        seen.append((epoch, minibatch_id, None if mask is None else len(pruned_filters(mask))))
        if minibatch_id == 0 and epoch > 0:
            # ranked by the whole previous epoch: its statistics were moved aside at its end
            assert pruner.ranking["conv.weight"].count == 3 * 4 * 36
    train(sched, model, optimizer, image_batches(3), epochs=3, before_forward=spy)
    counts = [count_to_prune(8, agp_target(0.1, 0.5, 0, 3, 1, e), param_name="conv.weight") for e in range(3)]
    assert counts == [0, 3, 4]
    # 0.1 of 8 filters is 0: nothing to wait for; then 3 and 4 filters from the start of the epoch
    assert seen == [(0, 0, None), (0, 1, None), (0, 2, None), (1, 0, 3), (1, 1, 3), (1, 2, 3),
                    (2, 0, 4), (2, 1, 4), (2, 2, 4)]
    assert 6 in pruned_filters(sched.masks["conv.weight"])


def test_hooks_exist_only_during_the_forward_passes_of_the_policys_epochs():
    model = conv_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = hookprune.load(pruner_schedule("ActivationMeanRankedFilterPruner_AGP", {"epochs": [1, 2]},
                                           initial_sparsity=0.2, final_sparsity=0.5, group_type="Filters",
                                           weights=["conv.weight"]), model, optimizer)
    during_forward = []
    model.register_forward_pre_hook(lambda module, args: during_forward.append(all_forward_hooks(module)))
    between = []
    train(sched, model, optimizer, image_batches(2), epochs=4,
        before_forward=lambda epoch, i: between.append((epoch, i, all_forward_hooks(model))))
    # the model's own pre-hook is a forward *pre* hook, so every count is the pruner's alone
    assert [(e, i, n) for e, i, n in between] == [
        (0, 0, 0), (0, 1, 0),
        (1, 0, 2), (1, 1, 1),   # first pass: the conv and the BatchNorm; then only the BatchNorm
        (2, 0, 1), (2, 1, 1),
        (3, 0, 0), (3, 1, 0)]
    assert during_forward == [0, 0, 2, 1, 1, 1, 0, 0]
    assert all_forward_hooks(model) == 0
    # an evaluation pass inside the window (outside a training minibatch) is not measured
    count = sched.instances["p"].ranking["conv.weight"].count
    sched.fire("on_epoch_begin", epoch=2)
    with torch.no_grad():
        model(torch.randn(2, 3, 6, 6))
    assert sched.instances["p"].collecting == {}
    assert sched.instances["p"].ranking["conv.weight"].count == count


def test_statistics_survive_a_state_dict_round_trip_and_a_resumed_run_ranks_the_same():
    schedule = pruner_schedule("ActivationAPoZRankedFilterPruner_AGP", {"starting_epoch": 0, "ending_epoch": 4},
                               initial_sparsity=0.1, final_sparsity=0.6, group_type="Filters",
                               weights=["conv.weight"])
    data = image_batches(2, seed=3)

    def fresh():
        model = conv_net(channel_gain={0: 0.5, 3: 0.3}, channel_shift={0: 0.1, 3: -0.2, 7: 0.4})
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        return model, optimizer, hookprune.load(schedule, model, optimizer)

    model_a, opt_a, sched_a = fresh()
    train(sched_a, model_a, opt_a, data, epochs=4)

    model_b, opt_b, sched_b = fresh()
    train(sched_b, model_b, opt_b, data, epochs=2)
    buffer = io.BytesIO()
    torch.save({"model": model_b.state_dict(), "optimizer": opt_b.state_dict(),
                "sched": sched_b.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)

    model_c, opt_c, sched_c = fresh()
    model_c.load_state_dict(checkpoint["model"])
    opt_c.load_state_dict(checkpoint["optimizer"])
    sched_c.load_state_dict(checkpoint["sched"])
    saved, restored = sched_b.instances["p"], sched_c.instances["p"]
    assert torch.equal(restored.ranking["conv.weight"].total, saved.ranking["conv.weight"].total)
    assert restored.ranking["conv.weight"].count == saved.ranking["conv.weight"].count
    assert torch.equal(restored.filter_scores("conv.weight"), saved.filter_scores("conv.weight"))
    train(sched_c, model_c, opt_c, data, epochs=4, start_epoch=2)
    assert torch.equal(sched_a.masks["conv.weight"], sched_c.masks["conv.weight"])
    for (name, a), c in zip(model_a.state_dict().items(), model_c.state_dict().values(), strict=True):
        assert torch.equal(a, c), name


def test_leader_dependency_gives_every_weight_the_leaders_filters():
    model = conv_net(channel_gain={1: 0.0}, channel_shift={1: -1.0})
    model.conv2 = nn.Conv2d(3, 8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = hookprune.load(pruner_schedule("ActivationAPoZRankedFilterPruner", {"epochs": [0]},
                                           group_type="Filters", desired_sparsity=0.125, group_dependency="Leader",
                                           weights=["conv.weight", "conv2.weight"]), model, optimizer)
    train(sched, model, optimizer, image_batches(2), epochs=1)
    assert pruned_filters(sched.masks["conv.weight"]) == [1]
    assert pruned_filters(sched.masks["conv2.weight"]) == [1]


@pytest.mark.parametrize(("spec", "message"), [
    ({"weights": ["fc1.bias"]}, "'fc1.bias' is not the weight of a convolution or linear layer"),
    ({"weights": ["bn.weight"]}, "'bn.weight' is not the weight of a convolution or linear layer"),
    ({"group_type": "Channels"}, "'group_type' must be one of Filters, 3D; got 'Channels'"),
    ({"desired_sparsity": 1.5}, "'desired_sparsity' must be within [0, 1), got 1.5"),
    ({"group_dependency": "Follower"}, "'group_dependency' must be Leader (or left out), got 'Follower'"),
])
def test_activation_pruner_argument_errors_point_at_the_argument(spec, message):
    args = {"group_type": "Filters", "desired_sparsity": 0.5, "weights": ["conv.weight"], **spec}
    with pytest.raises(hookprune.ScheduleError) as info:
        hookprune.load(pruner_schedule("ActivationAPoZRankedFilterPruner", {"epochs": [0]}, **args), conv_net())
    assert message in str(info.value)


def test_agp_activation_pruner_refuses_a_window_too_short():
    with pytest.raises(hookprune.ScheduleError, match="needs at least two pruning epochs"):
        hookprune.load(pruner_schedule("ActivationMeanRankedFilterPruner_AGP", {"epochs": [3]},
                                       initial_sparsity=0.1, final_sparsity=0.5, group_type="Filters",
                                       weights=["conv.weight"]), conv_net())


# -- feature-map reconstruction ----------------------------------------------------------------------


def redundant_net(out_layer: nn.Module) -> nn.Sequential:
    """A 1x1 conv spreading 3 channels over 8 (so 8 channels carry 3 channels' information),
    followed by the layer under test."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 1, bias=False), out_layer)


def test_fm_reconstruction_restores_the_layer_output_that_plain_channel_pruning_loses():
    model = redundant_net(nn.Conv2d(8, 6, 3, padding=1))
    dense = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = hookprune.load(pruner_schedule("FMReconstructionChannelPruner", {"epochs": [0]},
                                           group_type="Channels", desired_sparsity=0.5, weights=["1.weight"]),
                           model, optimizer)
    masked_before = []
    data = [(torch.randn(8, 3, 6, 6), None) for _ in range(3)]
    train(sched, model, optimizer, data, epochs=1, loss_fn=lambda out, y: out.square().mean(),
        before_forward=lambda e, i: masked_before.append("1.weight" in sched.masks))
    # 8 channels x 3 x 3 = 72 inputs per output; one minibatch gives 8 samples x 10 positions = 80 rows,
    # so pruning happens before the second minibatch
    assert masked_before == [False, True, True]
    mask = sched.masks["1.weight"]
    kept = mask[0, :, 0, 0]
    l1 = dense[1].weight.detach().abs().mean(dim=(0, 2, 3))
    assert (~kept).nonzero().flatten().tolist() == sorted(l1.argsort()[:4].tolist())
    assert torch.all(model[1].weight[:, ~kept] == 0)
    plain = copy.deepcopy(dense)
    with torch.no_grad():
        plain[1].weight.mul_(mask)
        x = torch.randn(16, 3, 6, 6)
        target = dense(x)
        reconstructed_error = (model(x) - target).norm() / target.norm()
        plain_error = (plain(x) - target).norm() / target.norm()
    assert plain_error > 0.1
    assert reconstructed_error < 1e-4
    assert all_forward_hooks(model) == 0


def test_fm_reconstruction_of_a_linear_layer_with_too_few_samples_prunes_at_the_epoch_end():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8, bias=False), nn.Linear(8, 5))
    dense = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = hookprune.load(pruner_schedule("FMReconstructionChannelPruner", {"epochs": [0]},
                                           group_type="Channels", desired_sparsity=0.25, weights=["1.weight"]),
                           model, optimizer)
    # 4 rows per minibatch, 8 inputs per output: the two minibatches give exactly 8 rows by the epoch's end
    data = [(torch.randn(4, 3), None) for _ in range(2)]
    masked_before = []
    train(sched, model, optimizer, data, epochs=1, loss_fn=lambda out, y: out.square().mean(),
        before_forward=lambda e, i: masked_before.append("1.weight" in sched.masks))
    assert masked_before == [False, False]
    kept = sched.masks["1.weight"][0]
    assert int((~kept).sum()) == 2
    with torch.no_grad():
        x = torch.randn(32, 3)
        target = dense(x)
        assert (model(x) - target).norm() / target.norm() < 1e-4
        assert torch.equal(model[1].bias, dense[1].bias)


def test_fm_reconstruction_samples_and_generator_survive_a_state_dict_round_trip():
    schedule = pruner_schedule("FMReconstructionChannelPruner", {"epochs": [0]}, group_type="Channels",
                               desired_sparsity=0.5, weights=["1.weight"], n_points_per_fm=4, seed=7)
    model_a = redundant_net(nn.Conv2d(8, 6, 3, padding=1))
    model_b = copy.deepcopy(model_a)
    sched_a = hookprune.load(schedule, model_a)
    sched_b = hookprune.load(schedule, model_b)
    x0, x1, x2 = (torch.randn(8, 3, 6, 6) for _ in range(3))
    step = dict(epoch=0, minibatches_per_epoch=3)
    sched_a.fire("on_epoch_begin", epoch=0)
    sched_a.fire("on_minibatch_begin", minibatch_id=0, **step)
    model_a(x0)
    sched_a.fire("on_minibatch_end", minibatch_id=0, **step)
    # 8 samples x 4 positions = 32 rows of the 72 needed: still waiting, with samples and drawn positions
    state = torch.load(_saved(sched_a.state_dict()), weights_only=True)
    assert state["instances"]["p"]["pending"] == {"1.weight": 0.5}
    sched_b.fire("on_epoch_begin", epoch=0)
    sched_b.load_state_dict(state)
    for sched, model in ((sched_a, model_a), (sched_b, model_b)):
        for i, x in ((1, x1), (2, x2)):
            sched.fire("on_minibatch_begin", minibatch_id=i, **step)
            model(x)
            sched.fire("on_minibatch_end", minibatch_id=i, **step)
        sched.fire("on_epoch_end", epoch=0)
    assert torch.equal(sched_a.masks["1.weight"], sched_b.masks["1.weight"])
    assert torch.equal(model_a[1].weight, model_b[1].weight)
    assert int((~sched_a.masks["1.weight"][0, :, 0, 0]).sum()) == 4


def test_fm_reconstruction_fit_is_ordinary_least_squares_when_the_samples_determine_it():
    from hookprune.pruning.fm_reconstruction import reconstruct

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=gen, dtype=torch.float64)
    w = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    keep = torch.tensor([True, False, True, True, False, True])
    expected = torch.linalg.lstsq(x[:, keep], x @ w.T).solution.T
    assert torch.allclose(reconstruct(x, w, keep), expected, atol=1e-10)


@pytest.mark.parametrize(("layer", "message"), [
    (nn.Conv2d(8, 8, 3, groups=2), "the convolution has groups=2"),
    (nn.Conv2d(8, 6, 3, padding=1, padding_mode="reflect"), "pads with 'reflect'"),
    (nn.Conv1d(8, 6, 3), "only Conv2d and Linear layers are supported"),
])
def test_fm_reconstruction_refuses_layers_it_cannot_refit(layer, message):
    with pytest.raises(hookprune.ScheduleError) as info:
        hookprune.load(pruner_schedule("FMReconstructionChannelPruner", {"epochs": [0]}, group_type="Channels",
                                       desired_sparsity=0.5, weights=["1.weight"]), redundant_net(layer))
    assert "'1.weight' cannot be pruned with feature-map reconstruction" in str(info.value)
    assert message in str(info.value)


# -- splicing (dynamic network surgery) --------------------------------------------------------------


def test_splicing_keeps_the_previous_decision_between_the_thresholds_and_splices_above_the_high_one():
    layer = nn.Linear(5, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.1, 0.2, 0.5, 1.0, 2.0], [0.3, 0.4, 0.6, 0.8, 1.1]]))
    sched = hookprune.CompressionScheduler(layer)
    pruner = SplicingPruner("s", {"weight": 0.5}, low_thresh_mult=0.9, hi_thresh_mult=1.1)
    magnitude = layer.weight.detach().abs()
    base = magnitude.mean().item() + magnitude.std().item() * 0.5
    low, high = base * 0.9, base * 1.1
    assert pruner.thresholds(layer.weight, "weight", 0.5) == pytest.approx((low, high))
    assert 0.8 < low < 0.9 and 1.0 < high < 1.1

    sched.add_policy(pruner, epochs=[0])
    sched.fire("on_epoch_begin", epoch=0)
    # 1.0 lies between the thresholds and starts out kept (no mask yet: everything is kept)
    assert sched.masks["weight"].tolist() == [[False, False, False, True, True], [False, False, False, False, True]]
    with torch.no_grad():
        layer.weight[0, 2] = 0.95    # pruned, now between the thresholds: stays pruned
        layer.weight[0, 1] = -1.2   # pruned, now above the high threshold in magnitude: spliced back
        layer.weight[0, 3] = 0.85    # kept, now below the low threshold: pruned
        layer.weight[1, 4] = 0.9     # kept, now between the thresholds: stays kept
        layer.weight[1, 0] = 5.0     # an outlier does not move the thresholds, fixed at the first call
    sched.fire("on_epoch_begin", epoch=0)
    assert sched.masks["weight"].tolist() == [[False, True, False, False, True], [True, False, False, False, True]]
    assert pruner.thresholds(layer.weight, "weight", 0.5) == pytest.approx((low, high))


def test_splicing_sensitivity_grows_linearly_with_the_epoch():
    pruner = SplicingPruner("s", {"*": 0.2}, 0.9, 1.1, sensitivity_multiplier=0.015)
    sched = hookprune.CompressionScheduler(nn.Linear(2, 2))
    sched.add_policy(pruner, starting_epoch=10, ending_epoch=40)
    step = pruner.step(sched, sched.policy_of(pruner, 30), 30)
    assert pruner.sensitivity("any.weight", step) == pytest.approx(0.2 * (20 * 0.015 + 1))
    assert SplicingPruner("s", {"a.weight": 0.2}, 0.9, 1.1).sensitivity("b.weight", step) is None


def test_splicing_runs_every_minibatch_forward_only_as_distillers_network_surgery_schedule():
    torch.manual_seed(0)
    model = conv_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    schedule = pruner_schedule("SplicingPruner", {"starting_epoch": 0, "ending_epoch": 3, "frequency": 1},
                               low_thresh_mult=0.9, hi_thresh_mult=1.1, sensitivity_multiplier=0.015,
                               sensitivities={"module.conv.weight": 0.5, "fc1.weight": 0.3})
    schedule["policies"][0]["pruner"]["args"] = {"keep_mask": True, "mini_batch_pruning_frequency": 1,
                                                 "mask_on_forward_only": True}
    sched = hookprune.load(schedule, model, optimizer)
    pruner = sched.instances["p"]
    train(sched, model, optimizer, image_batches(3), epochs=3)
    assert set(pruner.magnitude_stats) == {"conv.weight", "fc1.weight"}
    for name in ("conv.weight", "fc1.weight"):
        zeros = int((~sched.masks[name]).sum())
        assert 0 < zeros < sched.masks[name].numel()
        # keep_mask: after the window the weights are masked for good
        assert torch.all(model.get_parameter(name)[~sched.masks[name]] == 0)
    state = torch.load(_saved(sched.state_dict()), weights_only=True)
    restored = SplicingPruner("p", {"*": 0.5}, 0.9, 1.1)
    restored.load_state_dict(state["instances"]["p"])
    assert restored.magnitude_stats == pruner.magnitude_stats


def _saved(obj) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


def test_splicing_refuses_a_high_threshold_below_the_low_one():
    with pytest.raises(hookprune.ScheduleError, match=r"'hi_thresh_mult' \(0.5\) must be at least 'low_thresh_mult'"):
        hookprune.load(pruner_schedule("SplicingPruner", {"epochs": [0]}, low_thresh_mult=0.9, hi_thresh_mult=0.5,
                                       sensitivities={"*": 0.1}), conv_net())


# -- Baidu's RNN pruner --------------------------------------------------------------------------------


def distiller_baidu_threshold(q, offset, mult, start, end, freq, epoch):
    """Distiller's BaiduRNNPruner.set_param_mask arithmetic, written out independently."""
    ramp_epoch = offset + start
    start_slope = (2 * q * freq) / (2 * (ramp_epoch - start) + 3 * (end - ramp_epoch))
    ramp_slope = start_slope * mult
    if epoch < ramp_epoch:
        return start_slope * (epoch - start + 1) / freq
    return (start_slope * (ramp_epoch - start + 1) + ramp_slope * (epoch - ramp_epoch + 1)) / freq


def test_baidu_threshold_follows_distillers_ramp():
    # ih_l0 of the corpus schedule: q 0.17, offset 3, mult 2, epochs 4..21 every 3
    thresholds = [baidu_threshold(0.17, 3, 2, 4, 21, 3, e) for e in range(4, 21, 3)]
    assert thresholds == [distiller_baidu_threshold(0.17, 3, 2, 4, 21, 3, e) for e in range(4, 21, 3)]
    slope = 2 * 0.17 / (2 * 3 + 3 * 14)
    assert thresholds[0] == pytest.approx(slope)                       # epoch 4: the start slope, once
    assert thresholds[1] == pytest.approx(slope * 4 + 2 * slope * 1)  # epoch 7: ramping at twice the slope
    assert all(b > a for a, b in itertools.pairwise(thresholds))


def test_baidu_pruner_masks_every_weight_at_or_below_the_epochs_threshold(corpus):
    torch.manual_seed(0)
    model = WordLM()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    sched = hookprune.load(corpus / "baidu-rnn-pruning/word_lang_model.schedule_baidu_rnn.yaml", model, optimizer)
    windows = {"rnn.weight_ih_l0": (0.17, 4, 21), "rnn.weight_hh_l0": (0.11, 4, 21),
               "rnn.weight_ih_l1": (0.18, 5, 22), "rnn.weight_hh_l1": (0.15, 5, 22),
               "encoder.weight": (0.16, 6, 23)}
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 30, (7, 2), generator=gen)
    checked = 0
    for epoch in range(24):
        before = {name: model.get_parameter(name).detach().clone() for name in windows}
        sched.fire("on_epoch_begin", epoch=epoch)
        for name, (q, start, end) in windows.items():
            if epoch in range(start, end, 3):
                threshold = distiller_baidu_threshold(q, 3, 2, start, end, 3, epoch)
                assert torch.equal(sched.masks[name], before[name].abs() > threshold), (name, epoch)
                checked += 1
        step = dict(epoch=epoch, minibatch_id=0, minibatches_per_epoch=1)
        sched.fire("on_minibatch_begin", **step)
        out = model(tokens[:-1])
        loss = sched.fire("before_backward", **step, loss=nn.functional.cross_entropy(out.reshape(-1, 30),
                                                                                       tokens[1:].reshape(-1)))
        optimizer.zero_grad()
        loss.backward()
        sched.fire("before_optimizer_step", **step)
        optimizer.step()
        sched.fire("on_minibatch_end", **step)
        sched.fire("on_epoch_end", epoch=epoch)
    assert checked == 5 * 6
    assert "decoder.weight" not in sched.masks
    last = distiller_baidu_threshold(0.17, 3, 2, 4, 21, 3, 19)
    assert torch.all(model.rnn.weight_ih_l0.detach().abs()[~sched.masks["rnn.weight_ih_l0"]] == 0)
    assert int((~sched.masks["rnn.weight_ih_l0"]).sum()) > 0 and last > 0.1


def test_baidu_minibatch_granularity_raises_the_threshold_inside_an_epoch():
    torch.manual_seed(0)
    model = WordLM()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = hookprune.load(pruner_schedule("BaiduRNNPruner", {"starting_epoch": 2, "ending_epoch": 8},
                                           q=0.3, ramp_epoch_offset=2, ramp_slope_mult=1.5,
                                           weights=["rnn.weight_hh_l0"], ramp_granularity="minibatch"),
                           model, optimizer)
    weight = model.rnn.weight_hh_l0.detach().clone()
    tokens = torch.randint(0, 30, (5, 2))
    data = [(tokens[:-1], tokens[1:])] * 4
    kept = []
    train(sched, model, optimizer, data, epochs=4, start_epoch=2,
        loss_fn=lambda out, y: nn.functional.cross_entropy(out.reshape(-1, 30), y.reshape(-1)),
        before_forward=lambda e, i: kept.append(sched.masks["rnn.weight_hh_l0"].clone()))
    for n, mask in enumerate(kept):
        epoch, minibatch_id = 2 + n // 4, n % 4
        threshold = baidu_threshold(0.3, 2, 1.5, 2, 8, 1, epoch + minibatch_id / 4)
        assert torch.equal(mask, weight.abs() > threshold), (epoch, minibatch_id)
    assert kept[0].sum() > kept[3].sum() > kept[4].sum() > kept[7].sum()
    # at each epoch's first minibatch the threshold is Distiller's epoch threshold
    pruner = sched.instances["p"]
    assert pruner.threshold(sched.policy_of(pruner, 3), 3) == baidu_threshold(0.3, 2, 1.5, 2, 8, 1, 3.0)


def test_baidu_pruner_refuses_a_ramp_offset_beyond_its_window():
    with pytest.raises(hookprune.ScheduleError, match="the ramp must start before the window ends"):
        hookprune.load(pruner_schedule("BaiduRNNPruner", {"starting_epoch": 0, "ending_epoch": 2},
                                       q=0.1, ramp_epoch_offset=6, ramp_slope_mult=2,
                                       weights=["rnn.weight_hh_l0"]), WordLM())
    with pytest.raises(hookprune.ScheduleError, match="'ramp_epoch_offset' must be an integer >= 0"):
        hookprune.load(pruner_schedule("BaiduRNNPruner", {"epochs": [0]}, q=0.1, ramp_epoch_offset=-1,
                                       ramp_slope_mult=2, weights=["rnn.weight_hh_l0"]), WordLM())


def test_constructed_directly_the_pruners_keep_distillers_signatures():
    model = conv_net()
    apoz = ActivationAPoZRankedFilterPruner("a", "Filters", 0.5, ["conv.weight"], model)
    assert apoz.desired_sparsity == 0.5 and apoz.params_names == ["conv.weight"]
    baidu = BaiduRNNPruner("b", q=0.1, ramp_epoch_offset=1, ramp_slope_mult=2, weights="x.weight")
    assert baidu.params_names == ["x.weight"] and math.isclose(baidu.q, 0.1)
