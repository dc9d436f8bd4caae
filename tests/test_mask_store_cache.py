"""The mask store's per-step path: what it caches follows every change of masks and masker options, and
multiplying through the mask's byte view gives exactly what multiplying by the boolean mask gives."""

from __future__ import annotations

import pytest
import torch

import hookprune


def zeros(t: torch.Tensor) -> int:
    return int((t == 0).sum())


def perturb(model: torch.nn.Module) -> None:
    """What an optimizer step does to pruned weights: make them non-zero again."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)


def test_a_masker_option_set_directly_changes_what_is_remasked_after_the_step(lenet):
    sched = hookprune.CompressionScheduler(lenet)
    keep = torch.rand(lenet.fc1.weight.shape, generator=torch.Generator().manual_seed(0)) > 0.5
    sched.masks["fc1.weight"] = keep
    sched.masks.apply_after_step()
    assert zeros(lenet.fc1.weight) == int((~keep).sum())
    masker = sched.zeros_mask_dict["fc1.weight"]
    masker.mask_on_forward_only = True          # no flags_changed() call: the store must notice
    perturb(lenet)
    sched.masks.apply_after_step()
    assert zeros(lenet.fc1.weight) == 0
    masker.mask_on_forward_only = False
    sched.masks.apply_after_step()
    assert zeros(lenet.fc1.weight) == int((~keep).sum())


def test_gradient_masking_follows_the_option_and_a_replaced_mask_is_the_one_applied(lenet):
    sched = hookprune.CompressionScheduler(lenet)
    first = torch.zeros(lenet.fc2.weight.shape, dtype=torch.bool)
    first[:50] = True
    sched.masks["fc2.weight"] = first
    lenet(torch.randn(4, 64)).sum().backward()
    dense = lenet.fc2.weight.grad.clone()
    assert zeros(dense[50:]) < dense[50:].numel()
    sched.masks.mask_gradients()
    assert torch.equal(lenet.fc2.weight.grad, dense)
    sched.zeros_mask_dict["fc2.weight"].mask_gradients = True
    sched.masks.mask_gradients()
    assert torch.all(lenet.fc2.weight.grad[50:] == 0)
    assert torch.equal(lenet.fc2.weight.grad[:50], dense[:50])
    sched.masks.apply_after_step()
    second = torch.ones_like(first)
    second[:10] = False
    sched.masks["fc2.weight"] = second
    perturb(lenet)
    sched.masks.apply_after_step()
    assert zeros(lenet.fc2.weight) == 10 * lenet.fc2.weight.shape[1]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_byte_view_multiply_equals_boolean_multiply(dtype):
    values = torch.tensor([-2.0, float("inf"), float("nan"), 3.0, -0.5, float("-inf"), 0.0, -0.0], dtype=dtype)
    keep = torch.tensor([False, False, True, True, False, True, False, True])
    model = torch.nn.Linear(8, 1, bias=False).to(dtype)
    with torch.no_grad():
        model.weight.copy_(values)
    sched = hookprune.CompressionScheduler(model)
    sched.masks["weight"] = keep.view(1, 8)
    sched.masks.apply_after_step()
    expected = values * keep
    got = model.weight.detach().view(8)
    assert got.dtype == dtype
    assert torch.equal(got.isnan(), expected.isnan())
    assert torch.equal(got[~expected.isnan()], expected[~expected.isnan()])
    assert torch.equal(got.signbit(), expected.signbit())


def test_the_smallest_masks_are_remasked_from_float_copies_within_the_budget(lenet, monkeypatch):
    from hookprune._engine import masks as store_module

    # LeNet-300-100 on 64 features: fc3 (1,000), fc1 (19,200) and fc2 (30,000) float32 elements
    monkeypatch.setattr(store_module, "FLOAT_MULTIPLIER_BYTES", 4 * (1_000 + 19_200))
    sched = hookprune.CompressionScheduler(lenet)
    generator = torch.Generator().manual_seed(1)
    keeps = {name: torch.rand(lenet.get_parameter(name).shape, generator=generator) > 0.3
             for name in ("fc1.weight", "fc2.weight", "fc3.weight")}
    for name, keep in keeps.items():
        sched.masks[name] = keep
    sched.masks.apply_after_step()
    ((_, multipliers),) = sched.masks._groups
    dtypes = {name: m.dtype for name, m in zip(("fc1.weight", "fc2.weight", "fc3.weight"), multipliers, strict=True)}
    assert dtypes == {"fc1.weight": torch.float32, "fc2.weight": torch.uint8, "fc3.weight": torch.float32}
    copy = multipliers[0]
    perturb(lenet)
    sched.masks.apply_after_step()
    for name, keep in keeps.items():
        weight = lenet.get_parameter(name)
        assert zeros(weight) == int((~keep).sum()) and bool(weight[~keep].eq(0).all()), name
        assert sched.masks[name].dtype == torch.bool
    sched.masks["fc2.weight"] = keeps["fc2.weight"].clone()
    sched.masks.apply_after_step()
    assert sched.masks._groups[0][1][0] is copy, "an unchanged mask keeps its copy"
    sched.masks["fc1.weight"] = ~keeps["fc1.weight"]
    sched.masks.apply_after_step()
    assert torch.equal(sched.masks._groups[0][1][0], (~keeps["fc1.weight"]).float())
