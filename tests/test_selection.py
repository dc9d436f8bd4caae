"""Exact selection: every path gives a stable full sort's answer, for any k, dtype and tie pattern."""

from __future__ import annotations

import pytest
import torch

from hookprune import selection
from hookprune.selection import (
    global_keep_masks,
    kth_smallest,
    level_keep_mask,
    prune_mask_smallest,
)

#: every way selection can run on the CPU: the default (a sort for small inputs, the histogram
#: above 32768 elements), the histogram forced on small inputs over several chunks, the plan
#: accelerators use (12-bit digits), and 5-bit digits, whose refinement takes several rounds
PLANS = {
    "default": selection._PLANS["cpu"],
    "histogram": selection._DevicePlan(digit_bits=16, chunk=97, sort_up_to=0),
    "accelerator": selection._DevicePlan(digit_bits=12, chunk=250, sort_up_to=0),
    "narrow": selection._DevicePlan(digit_bits=5, chunk=250, sort_up_to=0),
}
#: above the default plan's sort size, so that it takes the histogram path too
LARGE = 40_000


@pytest.fixture(params=list(PLANS))
def plan(request, monkeypatch):
    monkeypatch.setitem(selection._PLANS, "cpu", PLANS[request.param])
    return request.param


def stable_smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The reference: True at the first k positions of a stable ascending sort."""
    flat = values.reshape(-1)
    prune = torch.zeros(flat.numel(), dtype=torch.bool)
    prune[torch.sort(flat, stable=True).indices[:k]] = True
    return prune.view(values.shape)


def inputs(n: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(n)
    special = torch.randn(n, generator=gen)
    special[::3] = 0.0
    special[1::5] = -0.0
    special[2::7] = float("inf")
    special[4::11] = float("nan")
    special[6::13] = -float("nan")
    special[5::17] = -float("inf")
    return {
        "random": torch.randn(n, generator=gen),
        "ties": torch.randint(-4, 5, (n,), generator=gen).float(),
        "all-equal": torch.full((n,), -0.25),
        "float16": torch.randn(n, generator=gen).half(),
        "bfloat16": (torch.randn(n, generator=gen) * 1e3).bfloat16(),
        "float64": torch.randn(n, generator=gen, dtype=torch.float64) * 1e-300,
        "zeros, denormals, inf, nan": special,
    }


def ks(n: int) -> list[int]:
    return sorted({0, 1, 2, n // 7, n // 3, n // 2, n - 2, n - 1, n} & set(range(n + 1)))


def check_signed(n: int, k_values: list[int] | None = None) -> None:
    for kind, values in inputs(n).items():
        exact = values.float() if values.dtype in (torch.float16, torch.bfloat16) else values
        for k in k_values or ks(n):
            assert torch.equal(prune_mask_smallest(values, k), stable_smallest(exact, k)), (kind, k)


def check_magnitudes(n: int, sparsities: tuple[float, ...]) -> None:
    for kind, values in inputs(n).items():
        for sparsity in sparsities:
            k = int(sparsity * n)
            keep = level_keep_mask(values, sparsity)
            assert int((~keep).sum()) == k
            assert torch.equal(keep, ~stable_smallest(values.abs(), k)), (kind, sparsity)


@pytest.mark.parametrize("n", [1, 2, 5, 300])
def test_prune_mask_smallest_matches_a_stable_sort(plan, n):
    check_signed(n)


@pytest.mark.parametrize("n", [3, 300])
def test_level_mask_matches_a_stable_sort_of_magnitudes(plan, n):
    check_magnitudes(n, (0.0, 0.1, 1 / 3, 0.5, 0.9, 0.999, 1.0))


def test_large_inputs_take_the_histogram_and_match_a_stable_sort():
    check_signed(LARGE, [LARGE // 3])
    check_magnitudes(LARGE, (0.5,))


def test_zeros_left_by_an_earlier_step_are_pruned_first_and_by_position(plan):
    gen = torch.Generator().manual_seed(3)
    weights = torch.randn(20, 100, generator=gen)
    weights[:, ::2] = 0.0
    weights[0, 1] = 1e-42  # a denormal shares the zeros' histogram bin without being zero
    for sparsity in (0.3, 0.5, 0.501, 0.7):
        keep = level_keep_mask(weights, sparsity)
        assert torch.equal(keep, ~stable_smallest(weights.abs(), int(sparsity * weights.numel())))
    assert not level_keep_mask(weights, 0.501)[0, 1]


def test_integer_scores_and_a_2d_shape(plan):
    gen = torch.Generator().manual_seed(5)
    scores = torch.randint(-(1 << 40), 1 << 40, (64, 70), generator=gen)
    scores[:, :5] = 7
    for k in (0, 1, 999, 2240, 4480):
        assert torch.equal(prune_mask_smallest(scores, k), stable_smallest(scores, k))
    flags = torch.arange(100) % 3 == 0
    assert torch.equal(prune_mask_smallest(flags, 50), stable_smallest(flags.to(torch.int64), 50))


def test_negative_zero_ties_with_zero_by_position(plan):
    values = torch.tensor([0.0, -0.0, 1.0, -0.0, 0.0, -1.0] * 10)
    assert torch.equal(prune_mask_smallest(values, 13), stable_smallest(values, 13))
    keep = level_keep_mask(values, 0.5)
    assert torch.equal(keep, ~stable_smallest(values.abs(), 30))


def test_kth_smallest_is_the_sorted_value():
    gen = torch.Generator().manual_seed(9)
    values = torch.randn(50_000, generator=gen)
    ordered = torch.sort(values).values
    for k in (1, 777, 25_000, 50_000):
        assert kth_smallest(values, k) == ordered[k - 1]
    with pytest.raises(ValueError, match=r"k must be within \[1, 50000\], got 0"):
        kth_smallest(values, 0)


def concatenated_reference(tensors: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors.values()) else torch.float32
    flat = torch.cat([t.reshape(-1).to(dtype).abs() for t in tensors.values()])
    keep = ~stable_smallest(flat, int(sparsity * flat.numel()))
    return dict(zip(tensors, (m.view(t.shape) for m, t in
                              zip(keep.split([t.numel() for t in tensors.values()]), tensors.values(),
                                  strict=True)), strict=True))


def test_global_masks_equal_a_sort_of_the_concatenation(plan):
    gen = torch.Generator().manual_seed(11)
    tensors = {
        "conv": torch.randn(16, 3, 3, 3, generator=gen),
        "fc": torch.randn(60, 80, generator=gen) * 0.1,
        "empty": torch.empty(0, 4),
        "tied": torch.full((50,), 0.05),
        "half": (torch.randn(30, 30, generator=gen) * 0.1).half(),
    }
    total = sum(t.numel() for t in tensors.values())
    for sparsity in (0.0, 0.2, 0.5, 0.8337, 1.0):
        masks = global_keep_masks(tensors, sparsity)
        assert list(masks) == list(tensors)
        assert sum(int((~m).sum()) for m in masks.values()) == int(sparsity * total)
        expected = concatenated_reference(tensors, sparsity)
        for name in tensors:
            assert masks[name].shape == tensors[name].shape
            assert torch.equal(masks[name], expected[name]), (name, sparsity)


def test_global_ties_go_by_tensor_order_then_index(plan):
    tensors = {"b": torch.full((4, 10), 0.5), "a": torch.full((60,), -0.5), "c": torch.ones(10)}
    masks = global_keep_masks(tensors, 0.5)  # 55 of 110 zeroed: all 40 of "b", then 15 of "a"
    assert not masks["b"].any()
    assert torch.equal(masks["a"], torch.arange(60) >= 15)
    assert masks["c"].all()


def test_global_float64_with_float32_compares_exactly(plan):
    tensors = {"f64": torch.tensor([1e-40, 3.0, 2.0 + 1e-12], dtype=torch.float64),
               "f32": torch.tensor([2.0, 1e-39, 0.5])}
    masks = global_keep_masks(tensors, 0.5)  # 3 smallest: 1e-40, 1e-39, 0.5
    assert masks["f64"].tolist() == [False, True, True]
    assert masks["f32"].tolist() == [True, False, False]


def test_bad_input_is_refused_clearly():
    with pytest.raises(ValueError, match="'meta' device"):
        level_keep_mask(torch.empty(4, 4, device="meta"), 0.5)
    with pytest.raises(ValueError, match="'meta' device"):
        global_keep_masks({"w": torch.empty(3, device="meta")}, 0.5)
    with pytest.raises(ValueError, match=r"sparsity must be within \[0, 1\], got 1.5"):
        level_keep_mask(torch.ones(3), 1.5)
    with pytest.raises(TypeError, match=r"tensor 'w' must be float16, bfloat16, float32 or float64, got torch\.int64"):
        global_keep_masks({"w": torch.ones(3, dtype=torch.int64)}, 0.5)
    with pytest.raises(TypeError, match="scores must be real numbers"):
        prune_mask_smallest(torch.ones(3, dtype=torch.complex64), 1)
