"""Layer rules: a layer of your own is blocked until it has a rule, thinned exactly with one; bad rules are refused."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

from hookprune.thinning import (
    LayerRule,
    Relation,
    ThinningError,
    apply_recipes,
    channel_graph,
    layer_rule,
    plan_thinning,
    register_layer_rule,
    registered_rule,
    remove_channels,
    remove_filters,
    unregister_layer_rule,
)
from tests.test_thinning import assert_same_outputs, shapes, zero_entries


class Scale(nn.Module):
    """A learned scale and shift per channel: ``x * weight[c] + bias[c]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.weight = nn.Parameter(torch.rand(channels) + 0.5)
        self.bias = nn.Parameter(torch.rand(channels) - 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class Dense(nn.Module):
    """A linear layer that keeps its weight as (inputs, outputs): ``x @ weight + bias``."""

    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.inputs, self.outputs = inputs, outputs
        self.weight = nn.Parameter(torch.randn(inputs, outputs) / inputs ** 0.5)
        self.bias = nn.Parameter(torch.randn(outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


SCALE_RULE = LayerRule(Relation.CHANNELWISE, out_size="channels", out_tensors={"weight": 0, "bias": 0},
                       dependents=("bias",))
DENSE_RULE = LayerRule(Relation.PRODUCES, out_size="outputs", out_tensors={"weight": 1, "bias": 0},
                       dependents=("bias",), in_size="inputs", in_tensors={"weight": 0}, rank=2)


class ScaledNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.scale1 = Scale(8)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.scale2 = Scale(6)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.hidden = Dense(6 * 4, 5)
        self.head = Dense(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.scale1(self.conv1(x)))
        x = torch.relu(self.scale2(self.conv2(x)))
        x = torch.relu(self.hidden(torch.flatten(self.pool(x), 1)))
        return self.head(x)


def scaled_net() -> nn.Module:
    torch.manual_seed(0)
    return ScaledNet().double()


def masked(model: nn.Module, structures: dict[str, tuple[int, list[int]]]) -> dict[str, torch.Tensor]:
    """Keep-masks that drop whole slices (``dim``, indices) of the named parameters, applied to the weights."""
    params = dict(model.named_parameters())
    masks = {}
    with torch.no_grad():
        for name, (dim, index) in structures.items():
            mask = torch.ones_like(params[name], dtype=torch.bool)
            mask.index_fill_(dim, torch.tensor(index), False)
            params[name].mul_(mask)
            masks[name] = mask
    return masks


X = torch.randn(2, 3, 8, 8, dtype=torch.float64)
FILTERS = {"conv1.weight": (0, [1, 4]), "conv2.weight": (0, [0]), "hidden.weight": (1, [2])}


@pytest.fixture
def custom_rules():
    register_layer_rule(Scale, SCALE_RULE)
    register_layer_rule(Dense, DENSE_RULE)
    yield
    unregister_layer_rule(Scale)
    unregister_layer_rule(Dense)


def test_a_layer_without_a_rule_keeps_its_channels():
    model = scaled_net()
    masks = masked(model, FILTERS)
    before = shapes(model)
    blocked = {space.producers[0]: space.blocked for space in channel_graph(model, X).spaces()}
    assert blocked["conv1"] == ["reaches function 'mul', which combines tensors whose channels do not line up"]
    assert remove_filters(model, X, masks) is None
    assert shapes(model) == before


def test_a_registered_rule_thins_a_custom_layer_exactly(custom_rules):
    model = scaled_net()
    masks = masked(model, FILTERS)
    reference = copy.deepcopy(model)
    zero_entries(reference, {"scale1.bias": [1, 4], "conv2.bias": [0], "scale2.bias": [0], "hidden.bias": [2]})
    before = shapes(model)

    plan = plan_thinning(model, "remove_filters", X, masks)
    assert plan.removed_channels() == {"conv1": [1, 4], "conv2": [0], "hidden": [2]}
    assert sorted(plan.mask_dependents(masks)) == ["conv2.bias", "hidden.bias", "scale1.bias", "scale2.bias"]
    for (name, value), expected in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.equal(value, expected), name
    recipe = plan.execute(masks=masks)

    assert shapes(model) == {
        **before,
        "conv1.weight": (6, 3, 3, 3), "scale1.weight": (6,), "scale1.bias": (6,),
        "conv2.weight": (5, 6, 3, 3), "conv2.bias": (5,), "scale2.weight": (5,), "scale2.bias": (5,),
        "hidden.weight": (20, 4), "hidden.bias": (4,), "head.weight": (4, 3),
    }
    assert (model.scale1.channels, model.scale2.channels, model.hidden.inputs, model.hidden.outputs,
            model.head.inputs) == (6, 5, 20, 4, 4)
    assert recipe["modules"]["scale1"] == {"channels": 6}
    assert_same_outputs(model, reference, X)
    assert {name: mask.shape for name, mask in masks.items()} == {
        "conv1.weight": (6, 3, 3, 3), "conv2.weight": (5, 6, 3, 3), "hidden.weight": (20, 4)}

    fresh = ScaledNet().double()
    assert apply_recipes(fresh, [recipe]) == 1
    fresh.load_state_dict(model.state_dict())
    assert (fresh.scale1.channels, fresh.hidden.outputs) == (6, 4)
    fresh.eval()
    model.eval()
    torch.testing.assert_close(fresh(X), model(X), rtol=0, atol=0)


def test_remove_channels_reads_a_custom_weight_along_its_input_dimension(custom_rules):
    model = scaled_net()
    masks = masked(model, {"head.weight": (0, [1, 3])})
    reference = copy.deepcopy(model)
    remove_channels(model, X, masks)
    assert (model.hidden.weight.shape, model.hidden.bias.shape, model.head.weight.shape) == ((24, 3), (3,), (3, 3))
    assert model.hidden.outputs == model.head.inputs == 3
    assert_same_outputs(model, reference, X)


class TaggedConv(nn.Conv2d):
    """A convolution subclass that only adds a tag."""

    tag = "tagged"


class TaggedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.conv1 = TaggedConv(6, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.bn1(self.conv1(torch.relu(self.stem(x))))))


def test_a_subclass_of_a_builtin_layer_takes_its_rule_unless_it_has_its_own():
    torch.manual_seed(0)
    model = TaggedNet().double()
    assert layer_rule(model.conv1) is layer_rule(nn.Conv2d(6, 6, 3))
    masks = masked(model, {"conv1.weight": (0, [2]), "stem.weight": (0, [4])})
    reference = copy.deepcopy(model)
    zero_entries(reference, {"stem.bias": [4], "conv1.bias": [2], "bn1.weight": [2], "bn1.bias": [2]})
    remove_filters(model, X, masks)
    assert (model.stem.out_channels, model.conv1.in_channels, model.conv1.out_channels, model.bn1.num_features,
            model.conv2.in_channels) == (5, 5, 5, 5, 5)
    assert model.conv1.weight.shape == (5, 5, 3, 3)
    assert_same_outputs(model, reference, X)

    register_layer_rule(TaggedConv, LayerRule(Relation.BLOCKS, reason="is tagged"))
    try:
        other = TaggedNet().double()
        blocked = {space.producers[0]: space.blocked for space in channel_graph(other, X).spaces()}
        assert blocked == {"stem": ["reaches module 'conv1', which is tagged"],
                           "conv2": ["reaches the model's output"]}
    finally:
        unregister_layer_rule(TaggedConv)
    assert layer_rule(model.conv1) is layer_rule(nn.Conv2d(6, 6, 3))


class Padded(nn.Module):
    """A 1x1 convolution of the zero-padded input, with the attributes and tensors of ``nn.Conv2d``."""

    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.groups = inputs, outputs, 1
        self.weight = nn.Parameter(torch.randn(outputs, inputs, 1, 1))
        self.bias = nn.Parameter(torch.randn(outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(nn.functional.pad(x, (1, 1, 1, 1)), self.weight, self.bias)


def test_a_builtin_rule_can_be_reused_for_a_wrapper():
    register_layer_rule(Padded, registered_rule(nn.Conv2d))
    try:
        assert layer_rule(Padded(3, 4)) is layer_rule(nn.Conv2d(3, 4, 1))
    finally:
        unregister_layer_rule(Padded)
    assert layer_rule(Padded(3, 4)) is None


def test_builtin_rules_follow_the_instance():
    assert layer_rule(nn.Conv2d(4, 4, 3, groups=4)).relation is Relation.CHANNELWISE
    assert layer_rule(nn.Conv2d(4, 4, 3, groups=4)).same_as_out == ("in_channels", "groups")
    assert layer_rule(nn.Conv2d(4, 8, 3, groups=2)).reason == "is a grouped convolution"
    assert layer_rule(nn.ConvTranspose2d(4, 4, 3)) is None
    assert layer_rule(nn.BatchNorm2d(4, affine=False)).unforced == "has no affine parameters"
    assert layer_rule(nn.PReLU(4)).relation is Relation.CHANNELWISE
    assert layer_rule(nn.PReLU()).relation is Relation.PASSES
    assert layer_rule(nn.Hardtanh(0.5, 2.0)).reason == "maps zero to non-zero"
    assert layer_rule(nn.ReLU6()).relation is Relation.PASSES
    assert layer_rule(nn.Flatten()).relation is Relation.FLATTENS


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda: register_layer_rule("Scale", SCALE_RULE), TypeError,
     "register_layer_rule needs a subclass of torch.nn.Module, got 'Scale'"),
    (lambda: register_layer_rule(Scale, "channelwise"), TypeError,
     "the rule for Scale must be a LayerRule or a function of the module returning one, got 'channelwise'"),
    (lambda: register_layer_rule(nn.Conv2d, SCALE_RULE), ValueError,
     "torch.nn.modules.conv.Conv2d already has a layer rule; pass replace=True to replace it"),
    (lambda: unregister_layer_rule(Scale), ValueError, "Scale has no layer rule of its own"),
    (lambda: LayerRule("channelwise"), TypeError, "LayerRule's relation must be a Relation, got 'channelwise'"),
    (lambda: LayerRule(Relation.CHANNELWISE, out_tensors={"weight": 0}), ValueError,
     "a CHANNELWISE LayerRule needs out_size"),
    (lambda: LayerRule(Relation.PASSES, out_size="channels"), ValueError, "a PASSES LayerRule takes no out_size"),
    (lambda: LayerRule(Relation.PASSES, reason="why"), ValueError, "a PASSES LayerRule takes no reason"),
    (lambda: LayerRule(Relation.CHANNELWISE, out_size="c", in_size="d"), ValueError,
     "a CHANNELWISE LayerRule takes no in_size"),
    (lambda: LayerRule(Relation.CHANNELWISE, out_size="c", out_tensors={"weight": -1}), TypeError,
     "LayerRule's out_tensors must map tensor names to dimensions (ints >= 0), got {'weight': -1}"),
    (lambda: LayerRule(Relation.CHANNELWISE, out_size="c", out_tensors={"weight": 0}, dependents=("bias",)),
     ValueError, "LayerRule's dependents bias must be in out_tensors (their dimension comes from there)"),
    (lambda: LayerRule(Relation.PRODUCES, out_size="o", out_tensors={"w": 0}, in_size="i", in_tensors={"w": 1}),
     ValueError, "a PRODUCES LayerRule's weight 'weight' must be in out_tensors and in_tensors"),
], ids=["type", "rule", "taken", "unregister", "relation", "size", "passes", "reason", "input", "dimension",
        "dependent", "weight"])
def test_bad_registrations_are_refused(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()


@pytest.mark.parametrize(("rule", "message"), [
    (LayerRule(Relation.CHANNELWISE, out_size="num_channels", out_tensors={"weight": 0}),
     "the layer rule for Scale names 'num_channels', which is not an int attribute of module 'scale1'"),
    (LayerRule(Relation.CHANNELWISE, out_size="channels", out_tensors={"gain": 0}),
     "the layer rule for Scale names 'gain', which is not a parameter or buffer of module 'scale1'"),
    (LayerRule(Relation.CHANNELWISE, out_size="channels", out_tensors={"weight": 1}),
     "the layer rule for Scale names dimension 1 of 'weight', which has shape (8,) in module 'scale1'"),
    (lambda scale: "channelwise",
     "the layer rule function for Scale returned 'channelwise', not a LayerRule"),
], ids=["size", "tensor", "dimension", "function"])
def test_a_rule_that_does_not_fit_its_module_is_refused_before_anything_changes(rule, message):
    model = scaled_net()
    masks = masked(model, FILTERS)
    before = shapes(model)
    register_layer_rule(Scale, rule)
    try:
        with pytest.raises((ThinningError, TypeError), match=re.escape(message)):
            remove_filters(model, X, masks)
    finally:
        unregister_layer_rule(Scale)
    assert shapes(model) == before
