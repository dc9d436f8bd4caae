"""Mixed precision: a schedule under ``torch.autocast`` (bfloat16, float16) with ``torch.amp.GradScaler`` on the CPU.

A step the scaler skips (a gradient is inf or NaN) must leave masks, weights and the schedule's state as a step that
never happened would: masks still applied, pruned weights exactly zero, nothing of a pruner's state touched.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import hookprune
from hookprune import models
from hookprune.testing import random_batches, train

WEIGHTS = ("fc1.weight", "fc2.weight", "fc3.weight")


def schedule(args: dict[str, bool]) -> dict:
    return {"version": 1,
            "pruners": {"agp": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.05, "final_sparsity": 0.9,
                                "weights": list(WEIGHTS)}},
            "lr_schedulers": {"decay": {"class": "ExponentialLR", "gamma": 0.9}},
            "policies": [{"pruner": {"instance_name": "agp", "args": args}, "starting_epoch": 0, "ending_epoch": 4,
                          "frequency": 1},
                         {"lr_scheduler": {"instance_name": "decay"}, "starting_epoch": 0, "ending_epoch": 5,
                          "frequency": 1}]}


def lenet() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.create_model("lenet300_100", input_features=64)


def assert_pruned_zero(sched, model: torch.nn.Module) -> None:
    for name, mask in sched.masks.items():
        assert model.get_parameter(name)[~mask].eq(0).all(), f"{name}: pruned weights are exactly zero"


#: the minibatch whose input holds an infinity: its gradients are NaN, so the scaler skips its step
POISONED = (1, 1)


def run(args: dict[str, bool], poison: bool):
    """Five epochs in bfloat16 autocast with a GradScaler. With ``poison`` the POISONED minibatch's gradients are
    NaN and the scaler skips its step; without, that minibatch fires its events but runs no backward pass and no
    step at all."""
    model = lenet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    sched = hookprune.build(schedule(args), model, optimizer)
    scaler = torch.amp.GradScaler("cpu")
    batches = random_batches(3, seed=7)
    for epoch in range(5):
        sched.fire("on_epoch_begin", epoch=epoch)
        for i, (x, y) in enumerate(batches):
            step = {"epoch": epoch, "minibatch_id": i, "minibatches_per_epoch": len(batches)}
            poisoned = (epoch, i) == POISONED
            if poisoned and poison:
                x = x.clone()
                x[0, 0] = float("inf")
            sched.fire("on_minibatch_begin", **step)
            if epoch < 4 or not args.get("mask_on_forward_only"):  # forward-only masks act within the policy alone
                assert_pruned_zero(sched, model)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y)
            loss = sched.fire("before_backward", **step, loss=loss)
            optimizer.zero_grad()
            if poisoned and not poison:
                sched.fire("before_optimizer_step", **step)
            else:
                scaler.scale(loss).backward()
                sched.fire("before_optimizer_step", **step)
                scaler.step(optimizer)
                scaler.update()
            sched.fire("on_minibatch_end", **step)
            if not args.get("mask_on_forward_only"):
                assert_pruned_zero(sched, model)
        sched.fire("on_epoch_end", epoch=epoch, metrics={})
    return sched, model, scaler


@pytest.mark.parametrize("args", [{}, {"mask_on_forward_only": True, "mask_gradients": True},
                                  {"use_double_copies": True}], ids=["masks", "forward-only", "double copies"])
def test_a_step_the_gradient_scaler_skips_leaves_what_a_step_never_taken_leaves(args):
    skipped_sched, skipped_model, scaler = run(args, poison=True)
    plain_sched, plain_model, plain_scaler = run(args, poison=False)
    assert scaler.get_scale() == plain_scaler.get_scale() / 2, "the scaler saw the NaN gradients and skipped once"
    for name, param in plain_model.named_parameters():
        assert torch.equal(skipped_model.get_parameter(name), param), name
        assert torch.isfinite(skipped_model.get_parameter(name)).all()
    assert list(skipped_sched.masks) == list(WEIGHTS)
    for name in WEIGHTS:
        mask = skipped_sched.masks[name]
        assert torch.equal(mask, plain_sched.masks[name])
        assert int((~mask).sum()) == int(0.9 * mask.numel())
    skipped_state, plain_state = skipped_sched.state_dict(), plain_sched.state_dict()
    assert skipped_state["instances"] == plain_state["instances"] and skipped_state["epoch"] == plain_state["epoch"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_autocast_with_a_scaler_reaches_the_exact_levels_with_every_pruned_weight_zero(dtype):
    model = lenet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = hookprune.build(schedule({}), model, optimizer)
    seen = set()
    model.fc2.register_forward_hook(lambda module, args, output: seen.add(output.dtype))
    losses = train(sched, model, optimizer, random_batches(3, seed=7), epochs=5, autocast=dtype,
                   scaler=torch.amp.GradScaler("cpu"))
    assert seen == {dtype}, "the forward pass ran in autocast"
    assert torch.isfinite(torch.stack(losses)).all()
    for name in WEIGHTS:
        param, mask = model.get_parameter(name), sched.masks[name]
        assert param.dtype == torch.float32, "the weights and their masks stay in float32"
        assert int((~mask).sum()) == int(0.9 * mask.numel()) == int(param.eq(0).sum())
