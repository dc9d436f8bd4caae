"""Thinning removes zero filters and channels exactly: same outputs, exact shapes, state that follows."""

from __future__ import annotations

import copy
import io
import math
import warnings

import pytest
import torch
import torchvision
from torch import nn

import hookprune
from hookprune import models
from hookprune._engine import registry as plugins
from hookprune.errors import ScheduleWarning
from hookprune.thinning import (
    StructureRemover,
    ThinningError,
    apply_recipes,
    batchnorm_followers,
    channel_graph,
    plan_thinning,
    remove_channels,
    remove_filters,
)

# -- helpers ------------------------------------------------------------------------------------------


def calibrate(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial scale, shift and statistics, so a zeroed filter's channel is a
    non-zero constant after it (as in a trained network)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) - 0.5)
                m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
    return model


def mask_structures(sched: hookprune.CompressionScheduler, structures: dict[str, tuple[int, list[int]]]) -> None:
    """Mask whole slices (``dim``, indices) of the named parameters and apply the masks."""
    params = dict(sched.model.named_parameters())
    for name, (dim, index) in structures.items():
        mask = torch.ones_like(params[name], dtype=torch.bool)
        mask.index_fill_(dim, torch.tensor(index), False)
        sched.masks[name] = mask
    sched.masks.apply()


def zero_entries(model: nn.Module, entries: dict[str, list[int]]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, index in entries.items():
            params[name][index] = 0


def assert_same_outputs(model: nn.Module, reference: nn.Module, x: torch.Tensor) -> None:
    """Equal outputs in eval mode and in train mode (batch statistics; dropout drawn alike)."""
    for training in (False, True):
        model.train(training)
        reference.train(training)
        torch.manual_seed(0)
        out = model(x)
        torch.manual_seed(0)
        expected = reference(x)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return calibrate(torchvision.models.resnet18(num_classes=10)).double()


def bn(prefix: str, n: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{attr}": (n,) for attr in ("weight", "bias", "running_mean", "running_var")}


class CatDepthwise(nn.Module):
    """Two branches joined by ``torch.cat``, a depthwise convolution, a pointwise one, and ``flatten`` of a
    2x2 map before the classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(8, 6, 1, bias=False), nn.BatchNorm2d(6), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(11, 11, 3, padding=1, groups=11), nn.BatchNorm2d(11), nn.ReLU())
        self.pw = nn.Sequential(nn.Conv2d(11, 7, 1), nn.BatchNorm2d(7))
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(7 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.cat([self.a(x), self.b(x)], dim=1)
        x = self.pw(self.dw(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def cat_depthwise() -> nn.Module:
    torch.manual_seed(0)
    return calibrate(CatDepthwise()).double()


# -- remove_filters ------------------------------------------------------------------------------------


def test_resnet18_filters_are_removed_exactly():
    model = resnet18()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    sched = hookprune.CompressionScheduler(model)
    mask_structures(sched, {
        "layer1.0.conv1.weight": (0, [0, 3, 5]),     # inside a block: 3 filters go
        "conv1.weight": (0, [7, 9]),                 # the layer1 residual stream: channel 7 is zero in
        "layer1.0.conv2.weight": (0, [7, 9]),        # all three producers, channel 9 in two of them
        "layer1.1.conv2.weight": (0, [7]),
        "layer4.1.conv1.weight": (0, [2, 4]),
        "layer4.1.conv2.weight": (0, [1]),           # one of three producers of the layer4 stream
    })
    masked_names = set(sched.masks)
    # the masked model, with the BatchNorms of the removed channels zeroed by hand
    reference = copy.deepcopy(model)
    zero_entries(reference, {"layer1.0.bn1.weight": [0, 3, 5], "layer1.0.bn1.bias": [0, 3, 5],
                             "bn1.weight": [7], "bn1.bias": [7], "layer1.0.bn2.weight": [7],
                             "layer1.0.bn2.bias": [7], "layer1.1.bn2.weight": [7], "layer1.1.bn2.bias": [7],
                             "layer4.1.bn1.weight": [2, 4], "layer4.1.bn1.bias": [2, 4]})
    before = shapes(model)
    count = sum(p.numel() for p in model.parameters())

    plan = plan_thinning(model, "remove_filters", x, sched.masks)
    created = plan.mask_dependents(sched.masks)
    # the dependents are masked like any pruned weight, and the masked model is the reference
    assert sorted(created) == sorted(f"{prefix}.{attr}" for prefix in ("bn1", "layer1.0.bn1", "layer1.0.bn2",
                                                                       "layer1.1.bn2", "layer4.1.bn1")
                                     for attr in ("weight", "bias"))
    assert torch.nonzero(~sched.masks["layer1.0.bn1.bias"]).flatten().tolist() == [0, 3, 5]
    for (name, value), expected_value in zip(model.state_dict().items(), reference.state_dict().values(),
                                             strict=True):
        assert torch.equal(value, expected_value), name
    recipe = plan.execute(masks=sched.masks)

    expected = {
        "conv1.weight": (63, 3, 7, 7), **bn("bn1", 63),
        "layer1.0.conv1.weight": (61, 63, 3, 3), **bn("layer1.0.bn1", 61),
        "layer1.0.conv2.weight": (63, 61, 3, 3), **bn("layer1.0.bn2", 63),
        "layer1.1.conv1.weight": (64, 63, 3, 3),
        "layer1.1.conv2.weight": (63, 64, 3, 3), **bn("layer1.1.bn2", 63),
        "layer2.0.conv1.weight": (128, 63, 3, 3), "layer2.0.downsample.0.weight": (128, 63, 1, 1),
        "layer4.1.conv1.weight": (510, 512, 3, 3), **bn("layer4.1.bn1", 510),
        "layer4.1.conv2.weight": (512, 510, 3, 3),
    }
    assert shapes(model) == {**before, **expected}
    removed = sum(math.prod(before[n]) - math.prod(s) for n, s in expected.items() if "running" not in n)
    assert count - sum(p.numel() for p in model.parameters()) == removed == 25581
    assert (model.conv1.out_channels, model.layer1[0].conv1.out_channels, model.layer1[0].bn1.num_features,
            model.layer1[0].conv2.in_channels, model.layer2[0].downsample[0].in_channels) == (63, 61, 61, 61, 63)
    assert_same_outputs(model, reference, x)
    # stored masks follow the new shapes; the BatchNorm masks used on the way are gone again
    assert set(sched.masks) == masked_names
    params = dict(model.named_parameters())
    assert all(sched.masks[n].shape == params[n].shape for n in sched.masks)
    assert bool(sched.masks["layer1.0.conv1.weight"].all())
    assert model.thinning_recipes == [recipe]


def test_residual_channels_go_only_when_zero_in_every_producer():
    model = resnet18()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    sched = hookprune.CompressionScheduler(model)
    mask_structures(sched, {"conv1.weight": (0, [5]), "layer1.0.conv2.weight": (0, [5])})
    before = shapes(model)
    assert remove_filters(model, x, sched.masks) is None
    assert shapes(model) == before
    assert not hasattr(model, "thinning_recipes")

    mask_structures(sched, {"layer1.1.conv2.weight": (0, [5])})
    remove_filters(model, x, sched.masks)
    assert (model.conv1.out_channels, model.layer1[0].conv2.out_channels, model.layer1[1].conv2.out_channels,
            model.layer2[0].conv1.in_channels) == (63, 63, 63, 63)


def test_concatenation_depthwise_and_flatten():
    model = cat_depthwise()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    sched = hookprune.CompressionScheduler(model)
    fc_weight = model.fc.weight.detach().clone()
    mask_structures(sched, {"a.0.weight": (0, [2]), "b.0.weight": (0, [0, 4]), "pw.0.weight": (0, [3]),
                            "fc.weight": (0, [1])})   # a row of the classifier reaches the output: it stays
    # after cat, a's channel 2 sits at 2 and b's channels 0 and 4 at 6 and 10
    reference = copy.deepcopy(model)
    zero_entries(reference, {"a.1.weight": [2], "a.1.bias": [2], "b.0.bias": [0, 4], "b.1.weight": [0, 4],
                             "b.1.bias": [0, 4], "dw.0.bias": [2, 6, 10], "dw.1.weight": [2, 6, 10],
                             "dw.1.bias": [2, 6, 10], "pw.0.bias": [3], "pw.1.weight": [3], "pw.1.bias": [3]})
    naive = copy.deepcopy(model)
    before = shapes(model)

    plan = plan_thinning(model, "remove_filters", x, sched.masks)
    assert plan.removed_channels() == {"a.0": [2], "b.0": [0, 4], "pw.0": [3]}
    plan.execute(masks=sched.masks)

    assert shapes(model) == {
        **before,
        "a.0.weight": (5, 8, 1, 1), **bn("a.1", 5),
        "b.0.weight": (3, 8, 3, 3), "b.0.bias": (3,), **bn("b.1", 3),
        "dw.0.weight": (8, 1, 3, 3), "dw.0.bias": (8,), **bn("dw.1", 8),
        "pw.0.weight": (6, 8, 1, 1), "pw.0.bias": (6,), **bn("pw.1", 6),
        "fc.weight": (4, 24),
    }
    assert (model.dw[0].groups, model.dw[0].in_channels, model.dw[0].out_channels, model.fc.in_features,
            model.fc.out_features) == (8, 8, 8, 24, 4)
    # flatten puts channel c of the 2x2 map at columns 4c..4c+3: channel 3's columns are gone
    kept = [c for c in range(28) if c // 4 != 3]
    torch.testing.assert_close(model.fc.weight.detach()[[0, 2, 3]], fc_weight[[0, 2, 3]][:, kept])
    assert bool((model.fc.weight[1] == 0).all())
    assert_same_outputs(model, reference, x)
    model.eval()
    naive.eval()
    assert not torch.allclose(model(x), naive(x), atol=1e-3), "a zeroed filter before BatchNorm is not a zero channel"


def test_dataparallel_names_and_a_plain_model_share_recipes():
    wrapped = nn.DataParallel(cat_depthwise())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    sched = hookprune.CompressionScheduler(wrapped)
    mask_structures(sched, {"module.b.0.weight": (0, [1])})
    recipe = remove_filters(wrapped, x, sched.masks)
    assert recipe is not None
    assert recipe["modules"]["module.b.0"] == {"out_channels": 4}
    assert sched.masks["module.b.0.weight"].shape == (4, 8, 3, 3)
    plain = cat_depthwise()
    apply_recipes(plain, [recipe])
    plain.load_state_dict(wrapped.module.state_dict())
    plain.eval()
    wrapped.eval()
    torch.testing.assert_close(plain(x), wrapped(x), rtol=0, atol=0)


def test_mobilenet_v2_expansion_filters_take_the_depthwise_channels_along():
    torch.manual_seed(0)
    model = calibrate(torchvision.models.mobilenet_v2(num_classes=10)).double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    sched = hookprune.CompressionScheduler(model)
    mask_structures(sched, {"features.2.conv.0.0.weight": (0, [1, 5, 9]),
                            "features.2.conv.2.weight": (0, [0]), "features.3.conv.2.weight": (0, [0])})
    naive = copy.deepcopy(model)
    plan = plan_thinning(model, "remove_filters", x, sched.masks)
    plan.mask_dependents(sched.masks)
    reference = copy.deepcopy(model)
    plan.execute(masks=sched.masks)

    depthwise = model.features[2].conv[1][0]
    assert (depthwise.groups, depthwise.in_channels, depthwise.out_channels) == (93, 93, 93)
    assert depthwise.weight.shape == (93, 1, 3, 3)
    assert model.features[2].conv[2].weight.shape == (23, 93, 1, 1)
    assert model.features[4].conv[0][0].in_channels == 23
    assert_same_outputs(model, reference, x)
    # the network damps the removed channels' influence on the logits; after block 4 it is plain to see
    assert_same_outputs(model.features[:5], reference.features[:5], x)
    naive.eval()
    reference.eval()
    assert not torch.allclose(naive.features[:5](x), reference.features[:5](x), atol=1e-3)


def test_removing_every_channel_is_refused_and_nothing_changes():
    model = resnet18()
    sched = hookprune.CompressionScheduler(model)
    mask_structures(sched, {"layer1.0.conv1.weight": (0, list(range(64))), "layer2.0.conv1.weight": (0, [0])})
    before = shapes(model)
    with pytest.raises(ThinningError, match=r"remove_filters: every filter of layer1.0.conv1 is zero"):
        remove_filters(model, torch.randn(2, 3, 32, 32, dtype=torch.float64), sched.masks)
    assert shapes(model) == before


class Unfollowed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.shared = nn.Conv2d(4, 4, 1)
        self.b = nn.Conv2d(3, 4, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.shared(self.shared(self.a(x)))
        b = torch.sigmoid(self.b(x))
        return self.head(torch.cat([a, b], 1))


def test_channels_the_analysis_cannot_follow_stay():
    model = Unfollowed()
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        for conv in (model.a, model.b, model.head):
            conv.weight[0] = 0
            conv.bias[0] = 0
    blocked = {space.producers[0]: space.blocked[0] for space in channel_graph(model, x).spaces() if space.blocked}
    assert blocked == {
        "a": "reaches module 'shared', which is called more than once",
        "b": "reaches function 'sigmoid'",
        "head": "reaches the model's output",
    }
    assert remove_filters(model, x) is None


class Gate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.sum() > 0 else -x


class Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.gate = Gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.conv(x))


def test_an_untraceable_model_gets_one_clear_error_and_no_surgery():
    model = Gated()
    with torch.no_grad():
        model.conv.weight[1] = 0
    before = shapes(model)
    with pytest.raises(ThinningError, match=r"torch.fx cannot trace module 'gate' \(Gate\): .*control flow.*"
                                            r"nothing was changed"):
        remove_filters(model, torch.randn(2, 3, 8, 8))
    assert shapes(model) == before
    assert not hasattr(model, "thinning_recipes")


# -- remove_channels -----------------------------------------------------------------------------------


def test_remove_channels_takes_the_producing_filters_along():
    model = resnet18()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    sched = hookprune.CompressionScheduler(model)
    # layer1.0.conv2 alone reads layer1.0.conv1's output; layer1.1.conv1 is one of four readers of the stream
    mask_structures(sched, {"layer1.0.conv2.weight": (1, [1, 2]), "layer1.1.conv1.weight": (1, [4])})
    reference = copy.deepcopy(model)
    remove_channels(model, x, sched.masks)
    assert model.layer1[0].conv1.weight.shape == (62, 64, 3, 3)
    assert model.layer1[0].bn1.num_features == 62
    assert model.layer1[0].conv2.weight.shape == (64, 62, 3, 3)
    assert model.layer1[1].conv1.weight.shape == (64, 64, 3, 3)
    assert_same_outputs(model, reference, x)


# -- optimizer state, recipes, checkpoints -------------------------------------------------------------


@pytest.mark.parametrize("make_optimizer", [
    lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
    lambda params: torch.optim.Adam(params, lr=1e-3, amsgrad=True),
], ids=["sgd-momentum", "adam"])
def test_optimizer_state_follows_and_training_continues(make_optimizer):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    optimizer = make_optimizer(model.parameters())
    sched = hookprune.CompressionScheduler(model, optimizer=optimizer)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    mask_structures(sched, {"layer1.0.conv1.weight": (0, [0, 3])})
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    sched.masks.apply()
    conv1, conv2 = model.layer1[0].conv1.weight, model.layer1[0].conv2.weight
    old = {name: {k: v.clone() for k, v in optimizer.state[p].items()} for name, p in
           (("conv1", conv1), ("conv2", conv2))}
    old_grad = conv2.grad.clone()

    remove_filters(model, x, sched.masks, optimizer)

    keep = [c for c in range(64) if c not in (0, 3)]
    for p in model.parameters():
        for key, value in optimizer.state[p].items():
            assert value.dim() == 0 or value.shape == p.shape, key
        assert p.grad is None or p.grad.shape == p.shape
    for key, value in old["conv1"].items():
        if value.dim():
            torch.testing.assert_close(optimizer.state[conv1][key], value[keep], rtol=0, atol=0)
    for key, value in old["conv2"].items():
        if value.dim():
            torch.testing.assert_close(optimizer.state[conv2][key], value[:, keep], rtol=0, atol=0)
    torch.testing.assert_close(conv2.grad, old_grad[:, keep], rtol=0, atol=0)
    # the last step's loss (and its graph) is still alive, as in a training loop
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    assert conv1.grad.shape == conv1.shape == (62, 64, 3, 3)


def test_recipes_round_trip_through_a_weights_only_checkpoint():
    model = resnet18()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    sched = hookprune.CompressionScheduler(model)
    mask_structures(sched, {"layer1.0.conv1.weight": (0, [0, 3]), "layer2.1.conv1.weight": (0, [7])})
    remove_filters(model, x, sched.masks)
    mask_structures(sched, {"layer1.0.conv2.weight": (1, [5])})
    remove_channels(model, x, sched.masks)
    assert model.layer1[0].conv1.out_channels == 61
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "compression_sched": sched.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    assert len(checkpoint["compression_sched"]["thinning_recipes"]) == 2
    model.eval()

    # without a scheduler
    fresh = torchvision.models.resnet18(num_classes=10).double()
    assert apply_recipes(fresh, checkpoint["compression_sched"]["thinning_recipes"]) == 2
    fresh.load_state_dict(checkpoint["model"])
    fresh.eval()
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    assert apply_recipes(fresh, checkpoint["compression_sched"]["thinning_recipes"]) == 0

    # through a fresh scheduler: recipes first, then the masks, then the model's state
    other = torchvision.models.resnet18(num_classes=10).double()
    fresh_sched = hookprune.CompressionScheduler(other)
    fresh_sched.load_state_dict(checkpoint["compression_sched"])
    other.load_state_dict(checkpoint["model"])
    other.eval()
    torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)
    assert {n: m.shape for n, m in fresh_sched.masks.items()} == {n: m.shape for n, m in sched.masks.items()}

    with pytest.raises(hookprune.ScheduleError, match=r"the saved thinning recipes do not fit the model: the "
                                                      r"model has no module 'layer1.0.conv1'"):
        hookprune.CompressionScheduler(CatDepthwise()).load_state_dict(checkpoint["compression_sched"])
    shifted = copy.deepcopy(checkpoint["compression_sched"]["thinning_recipes"][:1])
    shifted[0]["parameters"]["layer2.1.conv1.weight"][0][1] = 129
    with pytest.raises(ThinningError, match=r"'layer2.1.conv1.weight' has shape \(128, 128, 3, 3\); the recipe "
                                            r"expects size 129 along dimension 0"):
        apply_recipes(torchvision.models.resnet18(num_classes=10), shifted)


# -- the schedule extensions ---------------------------------------------------------------------------


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class FilterZeroer:
    """Masks the listed filters of ``conv1.weight`` (a stand-in for a filter pruner)."""

    def __init__(self, filters: list[int]) -> None:
        self.filters = filters

    def set_param_mask(self, param, param_name, zeros_mask_dict, meta):
        if param_name == "conv1.weight":
            mask = torch.ones_like(param, dtype=torch.bool)
            mask[self.filters] = False
            zeros_mask_dict[param_name].mask = mask


THINNING_SCHEDULE = {
    "version": 1,
    "extensions": {"net_thinner": {"class": "FilterRemover", "thinning_func_str": "remove_filters",
                                   "arch": "small", "dataset": "cifar10"}},
    "lr_schedulers": {"decay": {"class": "ExponentialLR", "gamma": 0.9}},
    "policies": [{"extension": {"instance_name": "net_thinner"}, "epochs": [2]},
                 {"lr_scheduler": {"instance_name": "decay"}, "starting_epoch": 0, "ending_epoch": 6}],
}


def build_run():
    torch.manual_seed(0)
    model = SmallNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched = hookprune.load(THINNING_SCHEDULE, model, optimizer)
    sched.add_policy(hookprune.PruningPolicy(FilterZeroer([1, 6]), {"keep_mask": True}), starting_epoch=0,
                     ending_epoch=2)
    return model, optimizer, sched


def run_epochs(sched, model, optimizer, start, stop, seen=None, shape=(3, 32, 32), batch=4):
    """Two minibatches of ``batch`` random inputs of ``shape`` per epoch (drawn from the epoch's seed); with
    ``seen``, appends (epoch, minibatch, conv1 filters) at each forward pass."""
    for epoch in range(start, stop):
        gen = torch.Generator().manual_seed(epoch)
        sched.fire("on_epoch_begin", epoch=epoch)
        for i in range(2):
            step = {"epoch": epoch, "minibatch_id": i, "minibatches_per_epoch": 2}
            sched.fire("on_minibatch_begin", **step)
            if seen is not None:
                seen.append((epoch, i, model.conv1.out_channels))
            x, y = torch.randn(batch, *shape, generator=gen), torch.randint(0, 10, (batch,), generator=gen)
            loss = sched.fire("before_backward", **step, loss=nn.functional.cross_entropy(model(x), y))
            optimizer.zero_grad()
            loss.backward()
            sched.fire("before_optimizer_step", **step)
            optimizer.step()
            sched.fire("on_minibatch_end", **step)
        sched.fire("on_epoch_end", epoch=epoch, metrics={})


def test_filter_remover_thins_once_at_the_first_minibatch_of_its_epochs():
    model, optimizer, sched = build_run()
    seen: list[tuple[int, int, int]] = []
    run_epochs(sched, model, optimizer, 0, 4, seen)
    assert seen == [(0, 0, 8), (0, 1, 8), (1, 0, 8), (1, 1, 8), (2, 0, 6), (2, 1, 6), (3, 0, 6), (3, 1, 6)]
    assert isinstance(sched.instances["net_thinner"], StructureRemover)
    assert len(model.thinning_recipes) == 1
    assert model.bn1.num_features == model.conv2.in_channels == 6
    assert sched.state_dict()["thinning_recipes"] == model.thinning_recipes
    assert sched.state_dict()["instances"]["net_thinner"] == {"thinned_epoch": 2}
    assert sched.masks["conv1.weight"].shape == (6, 3, 3, 3)


def test_a_thinned_run_resumes_bit_for_bit():
    model_a, opt_a, sched_a = build_run()
    run_epochs(sched_a, model_a, opt_a, 0, 5)

    model_b, opt_b, sched_b = build_run()
    run_epochs(sched_b, model_b, opt_b, 0, 3)
    buffer = io.BytesIO()
    torch.save({"model": model_b.state_dict(), "optimizer": opt_b.state_dict(),
                "compression_sched": sched_b.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)

    model_c, opt_c, sched_c = build_run()
    sched_c.load_state_dict(checkpoint["compression_sched"])
    model_c.load_state_dict(checkpoint["model"])
    opt_c.load_state_dict(checkpoint["optimizer"])
    run_epochs(sched_c, model_c, opt_c, 3, 5)

    assert model_c.thinning_recipes and model_c.conv1.out_channels == 6
    for (name, a), c in zip(model_a.state_dict().items(), model_c.state_dict().values(), strict=True):
        assert torch.equal(a, c), name


@pytest.mark.parametrize(("key", "value", "message"), [
    ("thinning_func_str", "remove_filter", r"'thinning_func_str' must be one of remove_filters, remove_channels, "
                                           r"got 'remove_filter' \(did you mean 'remove_filters'\?\)"),
    ("dataset", "cifar-10", r"unknown dataset 'cifar-10' \(did you mean 'cifar10'"),
])
def test_bad_extension_arguments_point_at_their_line(key, value, message):
    schedule = copy.deepcopy(THINNING_SCHEDULE)
    schedule["extensions"]["net_thinner"][key] = value
    with pytest.raises(hookprune.ScheduleError, match=message):
        hookprune.load(schedule, SmallNet())


def test_the_three_distiller_names_are_registered():
    providers = plugins.class_providers()
    for name in ("FilterRemover", "ChannelRemover", "StructureRemover"):
        assert providers[name][0].value == f"hookprune.thinning.extensions:{name}"


# -- fold_batchnorm ------------------------------------------------------------------------------------


class ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(torch.relu(self.conv2(self.bn(self.conv(x)))))


@pytest.mark.parametrize(("fold", "pruned"), [(False, 3), (True, 0)])
def test_fold_batchnorm_ranks_the_weights_scaled_by_the_following_batchnorm(fold, pruned):
    model = ConvBN()
    with torch.no_grad():
        model.conv.weight.copy_(torch.tensor([4.0, 3.0, 2.0, 1.0]).view(4, 1, 1, 1))
        model.bn.weight.copy_(torch.tensor([0.01, 1.0, 1.0, 1.0]))   # filter 0 barely reaches the output
        model.bn.running_var.fill_(1.0 - model.bn.eps)
    schedule = {
        "version": 1,
        "pruners": {"level": {"class": "SparsityLevelParameterPruner", "levels": {"conv.weight": 0.25}}},
        "policies": [{"pruner": {"instance_name": "level", "args": {"fold_batchnorm": fold}}, "epochs": [0]}],
    }
    sched = hookprune.load(schedule, model)
    sched.fire("on_epoch_begin", epoch=0)
    sched.fire("on_minibatch_begin", epoch=0, minibatch_id=0, minibatches_per_epoch=1)
    expected = torch.ones(4, 1, 1, 1, dtype=torch.bool)
    expected[pruned] = False
    assert torch.equal(sched.masks["conv.weight"], expected)
    # the mask applies to the real weight
    assert model.conv.weight.flatten().tolist() == [0.0 if i == pruned else 4.0 - i for i in range(4)]


def test_only_a_batchnorm_directly_after_a_conv_is_folded():
    model = ConvBN()
    assert {name: (type(c).__name__, type(b).__name__) for name, (c, b) in batchnorm_followers(model).items()} == \
        {"conv.weight": ("Conv2d", "BatchNorm2d")}


# -- the corpus: AGP filter pruning, then thinning, on ResNet-20 -----------------------------------------


def missing_for_resnet20_filters() -> list[str]:
    missing = [] if "resnet20_cifar" in models.architectures() else ["the resnet20_cifar model"]
    try:
        plugins.resolve_class("L1RankedStructureParameterPruner_AGP")
    except (hookprune.ScheduleError, ImportError):
        missing.append("L1RankedStructureParameterPruner_AGP")
    return missing


def test_resnet20_filters_schedule_prunes_thins_and_keeps_the_outputs(corpus):
    missing = missing_for_resnet20_filters()
    if missing:
        pytest.skip(f"needs {' and '.join(missing)}")
    path = corpus / "agp-pruning/resnet20_filters.schedule_agp.yaml"
    torch.manual_seed(0)
    model = models.create_model("resnet20_cifar")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScheduleWarning)
        sched = hookprune.load(path, model, optimizer)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([3, 7])
    block_convs = [f"layer2.{i}.conv1.weight" for i in range(3)]
    stream = ["layer2.0.conv2.weight", "layer2.0.downsample.0.weight", "layer2.1.conv2.weight",
              "layer2.2.conv2.weight"]
    for epoch in range(sched.epoch_span()[1] + 1):
        sched.fire("on_epoch_begin", epoch=epoch)
        step = {"epoch": epoch, "minibatch_id": 0, "minibatches_per_epoch": 1}
        if epoch == 30:   # the net_thinner's epoch
            params = dict(model.named_parameters())
            zero = {n: (params[n].detach().flatten(1) == 0).all(1) for n in block_convs + stream}
            gone = torch.stack([zero[n] for n in stream]).all(0)
            reference = copy.deepcopy(model)
            count = sum(p.numel() for p in model.parameters())
        sched.fire("on_minibatch_begin", **step)
        if epoch == 30:
            z = [int(zero[n].sum()) for n in block_convs]
            assert z == [16, 16, 16]   # final_sparsity 0.5 of 32 filters
            w = 32 - int(gone.sum())   # the stage's residual width: channels zero in all four producers
            assert model.layer2[0].conv2.out_channels == w and model.layer3[0].conv1.in_channels == w
            r = 32 - w
            removed = (32 * 16 * 9 - 16 * 16 * 9) + 2 * 16              # layer2.0.conv1, bn1
            removed += (32 * 32 * 9 - w * 16 * 9) + 2 * r               # layer2.0.conv2, bn2
            removed += (32 * 16 - w * 16) + 2 * r                       # layer2.0.downsample
            removed += 2 * ((32 * 32 * 9 - 16 * w * 9) + 2 * 16 + (32 * 32 * 9 - w * 16 * 9) + 2 * r)  # 2.1, 2.2
            removed += 64 * 9 * r + 64 * r                              # layer3.0.conv1, downsample inputs
            assert count - sum(p.numel() for p in model.parameters()) == removed
            ref_params = dict(reference.named_parameters())
            with torch.no_grad():   # the masks the other pruners set this epoch, applied after the hooks
                for name, mask in sched.masks.items():
                    if mask.shape == ref_params[name].shape:
                        ref_params[name].mul_(mask)
            plan_thinning(reference, "remove_filters", x).mask_dependents()
            assert_same_outputs(model, reference, x)
        loss = sched.fire("before_backward", **step, loss=nn.functional.cross_entropy(model(x), y))
        optimizer.zero_grad()
        loss.backward()
        sched.fire("before_optimizer_step", **step)
        optimizer.step()
        sched.fire("on_minibatch_end", **step)
        sched.fire("on_epoch_end", epoch=epoch, metrics={})
    assert len(model.thinning_recipes) == 1
    fine = dict(model.named_parameters())["layer3.1.conv1.weight"]
    assert int((fine == 0).sum()) == int(0.7 * fine.numel())


# -- the example input: given, from a dataset, or the model's own ------------------------------------------


class DigitsNet(nn.Module):
    """A convolutional net for 8x8 one-channel digits (a shape no dataset of the table has), whose flattened
    features feed a linear layer: traced at any other size it fails."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(torch.flatten(torch.relu(self.conv2(x)), 1))


def digits_run(thinning_epochs: list[int], **remover: object):
    torch.manual_seed(0)
    model = DigitsNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    schedule = {"version": 1,
                "extensions": {"net_thinner": {"class": "FilterRemover", "thinning_func_str": "remove_filters",
                                               **remover}},
                "policies": [{"extension": {"instance_name": "net_thinner"}, "epochs": thinning_epochs}]}
    sched = hookprune.load(schedule, model, optimizer)
    sched.add_policy(hookprune.PruningPolicy(FilterZeroer([1, 6]), {"keep_mask": True}), starting_epoch=0,
                     ending_epoch=4)
    return model, optimizer, sched


def digits_epochs(sched, model, optimizer, start, stop):
    """Two minibatches of 8x8 digits-shaped inputs per epoch; returns (epoch, minibatch, conv1 filters) at each
    forward pass."""
    seen: list[tuple[int, int, int]] = []
    run_epochs(sched, model, optimizer, start, stop, seen, shape=(1, 8, 8), batch=5)
    return seen


def test_a_model_of_any_input_shape_is_thinned_with_the_input_it_was_called_with():
    model, optimizer, sched = digits_run([1])
    seen = digits_epochs(sched, model, optimizer, 0, 2)
    assert seen == [(0, 0, 8), (0, 1, 8), (1, 0, 6), (1, 1, 6)]
    assert model.bn1.num_features == model.conv2.in_channels == 6
    assert sched.state_dict()["instances"]["net_thinner"] == {
        "thinned_epoch": 1, "seen_inputs": [{"shape": [2, 1, 8, 8], "dtype": "float32"}]}


def test_before_any_forward_call_it_thins_at_the_second_minibatch():
    model, optimizer, sched = digits_run([0])
    assert digits_epochs(sched, model, optimizer, 0, 1) == [(0, 0, 8), (0, 1, 6)]


def test_an_explicit_input_shape_thins_at_the_first_minibatch():
    model, optimizer, sched = digits_run([0], input_shape=[1, 8, 8])
    assert digits_epochs(sched, model, optimizer, 0, 1) == [(0, 0, 6), (0, 1, 6)]
    assert sched.state_dict()["instances"]["net_thinner"] == {"thinned_epoch": 0}


def test_a_resumed_run_knows_the_input_it_saw_and_thins_where_the_uninterrupted_one_did():
    model, optimizer, sched = digits_run([2])
    digits_epochs(sched, model, optimizer, 0, 2)
    state = sched.state_dict()
    model_b, optimizer_b, sched_b = digits_run([2])
    sched_b.load_state_dict(state)
    assert digits_epochs(sched_b, model_b, optimizer_b, 2, 3) == [(2, 0, 6), (2, 1, 6)]


def test_an_epoch_without_a_forward_call_is_refused_rather_than_left_unthinned():
    sched = digits_run([0])[2]
    sched.fire("on_epoch_begin", epoch=0)
    sched.fire("on_minibatch_begin", epoch=0, minibatch_id=0, minibatches_per_epoch=1)
    with pytest.raises(ThinningError, match=r"^FilterRemover 'net_thinner': epoch 0 ended without a forward call of "
                                            r"the model, so it was not thinned; give 'input_shape' or 'dataset'\n"):
        sched.fire("on_epoch_end", epoch=0)


@pytest.mark.parametrize(("remover", "message"), [
    ({"input_shape": [1, 0, 8]}, r"extensions\.net_thinner \(FilterRemover\): 'input_shape' must be a list of "
                                 r"positive sizes \(one sample's shape, without the batch dimension\), "
                                 r"got \[1, 0, 8\]"),
    ({"input_shape": [1, 8, 8], "dataset": "mnist"}, r"give 'dataset' or 'input_shape', not both"),
])
def test_bad_input_shapes_are_refused(remover, message):
    with pytest.raises(hookprune.ScheduleError, match=message):
        digits_run([0], **remover)


def test_a_model_called_with_keywords_only_is_refused_naming_why():
    model, _, sched = digits_run([0])
    sched.fire("on_epoch_begin", epoch=0)
    sched.fire("on_minibatch_begin", epoch=0, minibatch_id=0, minibatches_per_epoch=1)
    model(x=torch.zeros(2, 1, 8, 8))
    with pytest.raises(ThinningError, match=r"^FilterRemover 'net_thinner': epoch 0 ended with the model called only "
                                            r"with other than positional tensors \(keyword arguments, say\), which "
                                            r"cannot show its input shape, so it was not thinned"):
        sched.fire("on_epoch_end", epoch=0)
