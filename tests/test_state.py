"""Everything that decides a future step is in ``state_dict``: a resumed run is bit-identical."""

from __future__ import annotations

import io

import pytest
import torch

import hookprune
from hookprune import models
from hookprune.testing import random_batches, train

SCHEDULE = {
    "version": 1,
    "pruners": {
        "agp": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.1, "final_sparsity": 0.8,
                "weights": ["fc1.weight", "fc2.weight"]},
        "sens": {"class": "SensitivityPruner", "sensitivities": {"fc3.weight": 0.5}},
    },
    "lr_schedulers": {"decay": {"class": "ExponentialLR", "gamma": 0.8}},
    "policies": [
        {"pruner": {"instance_name": "agp"}, "starting_epoch": 0, "ending_epoch": 5, "frequency": 1},
        {"pruner": {"instance_name": "sens"}, "epochs": [1, 3, 5]},
        {"lr_scheduler": {"instance_name": "decay"}, "starting_epoch": 2, "ending_epoch": 8},
    ],
}


def fresh(resumed_epoch=None):
    torch.manual_seed(0)
    model = models.create_model("lenet300_100", input_features=64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched = hookprune.load(SCHEDULE, model, optimizer, resumed_epoch=resumed_epoch)
    return model, optimizer, sched


def test_resumed_run_is_bit_identical_to_the_uninterrupted_one():
    model_a, opt_a, sched_a = fresh()
    train(sched_a, model_a, opt_a, random_batches(), epochs=7)

    model_b, opt_b, sched_b = fresh()
    train(sched_b, model_b, opt_b, random_batches(), epochs=3)
    buffer = io.BytesIO()
    torch.save({"model": model_b.state_dict(), "optimizer": opt_b.state_dict(),
                "compression_sched": sched_b.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)

    model_c, opt_c, sched_c = fresh(resumed_epoch=2)
    model_c.load_state_dict(checkpoint["model"])
    opt_c.load_state_dict(checkpoint["optimizer"])
    sched_c.load_state_dict(checkpoint["compression_sched"])
    train(sched_c, model_c, opt_c, random_batches(), epochs=7, start_epoch=3)

    for (name, a), c in zip(model_a.state_dict().items(), model_c.state_dict().values(), strict=True):
        assert torch.equal(a, c), name
    assert sched_a.masks.keys() == sched_c.masks.keys()
    for name in sched_a.masks:
        assert torch.equal(sched_a.masks[name], sched_c.masks[name])
    assert opt_a.param_groups[0]["lr"] == opt_c.param_groups[0]["lr"]
    assert sched_c.instances["sens"].stddevs == sched_a.instances["sens"].stddevs


def test_lr_follows_distillers_closed_form():
    model, optimizer, sched = fresh()
    train(sched, model, optimizer, random_batches(1), epochs=5)
    # ExponentialLR policy from epoch 2: Distiller steps to epoch + 1 in closed form
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.8**5)


def test_distiller_checkpoint_masks_load(lenet):
    sched = hookprune.CompressionScheduler(lenet)
    float_mask = (torch.rand(100, 300) > 0.5).float()
    sched.load_state_dict({"masks_dict": {"module.fc2.weight": float_mask, "module.fc1.weight": None}},
                          normalize_dataparallel_keys=True)
    assert torch.equal(sched.masks["fc2.weight"], float_mask.bool())
    assert "fc1.weight" not in sched.masks
    sched.fire("on_minibatch_begin", epoch=0, minibatch_id=0, minibatches_per_epoch=1)
    assert torch.all(lenet.fc2.weight[~float_mask.bool()] == 0)


def test_state_for_another_model_is_refused(lenet):
    sched = hookprune.CompressionScheduler(lenet)
    with pytest.raises(hookprune.ScheduleError, match=r"the saved masks do not fit the model: "
                                                      r"the model has no parameter .conv1.weight."):
        sched.load_state_dict({"masks_dict": {"conv1.weight": torch.ones(3)}})
    with pytest.raises(hookprune.ScheduleError, match="no 'masks_dict'"):
        sched.load_state_dict({})
