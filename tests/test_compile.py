"""torch.compile: a compiled model trains under a schedule as the eager one does, and changing masks recompiles nothing.

The masks multiply the parameters in place outside the compiled graph, which takes the parameters as inputs, so
a new mask is new data, not a new graph. ``aot_eager`` runs the graph dynamo captures op by op, giving eager's
numbers bit for bit; the inductor tests (C++ code generated and compiled with gcc) take longer and are marked slow.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

import hookprune
from hookprune import models
from hookprune.testing import random_batches, train

WEIGHTS = ("fc1.weight", "fc2.weight", "fc3.weight")
SCHEDULE = {"version": 1,
            "pruners": {"agp": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.05, "final_sparsity": 0.9,
                                "weights": list(WEIGHTS)}},
            "policies": [{"pruner": {"instance_name": "agp"}, "starting_epoch": 0, "ending_epoch": 4,
                          "frequency": 1}]}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def lenet() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.create_model("lenet300_100", input_features=64)


def agp_run(backend: str | None, epochs: int = 5):
    """AGP over LeNet for ``epochs`` epochs, the model compiled with ``backend`` (None: eager). Returns the
    scheduler, the model, the losses and the compiled frames counted after the first epoch and at the end."""
    model = lenet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = hookprune.build(SCHEDULE, model, optimizer)
    net = model if backend is None else torch.compile(model, backend=backend)
    batches = random_batches(3, seed=7)
    losses = train(sched, net, optimizer, batches, epochs=1)
    after_first = (dict(counters["frames"]), counters["stats"]["unique_graphs"])
    losses += train(sched, net, optimizer, batches, epochs=epochs, start_epoch=1)
    at_end = (dict(counters["frames"]), counters["stats"]["unique_graphs"])
    return sched, model, torch.stack(losses), after_first, at_end


def test_a_compiled_model_trains_with_eagers_masks_and_losses_and_new_masks_recompile_nothing():
    eager, eager_model, eager_losses, _, _ = agp_run(None)
    sched, model, losses, after_first, at_end = agp_run("aot_eager")
    assert after_first == ({"total": 1, "ok": 1}, 1), "one frame compiled into one graph in the first epoch"
    assert at_end == after_first, "AGP's new masks in epochs 1-3 cause no recompilation"
    assert torch.equal(losses, eager_losses)
    for name in WEIGHTS:
        assert torch.equal(sched.masks[name], eager.masks[name])
        assert int((~sched.masks[name]).sum()) == int(0.9 * model.get_parameter(name).numel())
        assert torch.equal(model.get_parameter(name), eager_model.get_parameter(name))


def test_a_schedule_on_the_module_torch_compile_returns_names_parameters_as_the_eager_model_does(tmp_path):
    model = lenet()
    compiled = torch.compile(model, backend="aot_eager")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = hookprune.build(SCHEDULE, compiled, optimizer)
    train(sched, compiled, optimizer, random_batches(2, seed=7), epochs=2)
    assert list(sched.masks) == [f"_orig_mod.{name}" for name in WEIGHTS]
    assert torch.equal(sched.masks["fc1.weight"], sched.masks["_orig_mod.fc1.weight"])
    eager = hookprune.build(SCHEDULE, lenet(), None)
    eager.load_state_dict(sched.state_dict())
    assert list(eager.masks) == list(WEIGHTS), "a checkpoint of the compiled model loads into the eager one"


QUANTIZERS = {
    "range linear (QAT)": {"class": "QuantAwareTrainRangeLinearQuantizer", "bits_activations": 8, "bits_weights": 8,
                           "mode": "ASYMMETRIC_UNSIGNED", "ema_decay": 0.999, "per_channel_wts": True},
    "DoReFa": {"class": "DorefaQuantizer", "bits_activations": 8, "bits_weights": 4},
    "PACT": {"class": "PACTQuantizer", "bits_activations": 4, "bits_weights": 4},
    "WRPN": {"class": "WRPNQuantizer", "bits_activations": 4, "bits_weights": 4},
}


def quantized_run(quantizer: dict, backend: str | None) -> torch.Tensor:
    model = lenet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = hookprune.build({"version": 1, "quantizers": {"q": quantizer},
                             "policies": [{"quantizer": {"instance_name": "q"}, "starting_epoch": 0,
                                           "ending_epoch": 2}]}, model, optimizer)
    net = model if backend is None else torch.compile(model, backend=backend, fullgraph=True)
    return torch.stack(train(sched, net, optimizer, random_batches(2, seed=7), epochs=2))


@pytest.mark.parametrize("name", QUANTIZERS)
def test_fake_quantized_modules_compile_into_one_graph_and_train_as_eager(name):
    losses = quantized_run(QUANTIZERS[name], "aot_eager")   # fullgraph: a graph break would raise
    assert counters["graph_break"] == {}
    assert torch.equal(losses, quantized_run(QUANTIZERS[name], None))


@pytest.mark.slow
def test_inductor_trains_with_eagers_masks_and_new_masks_recompile_nothing():
    eager, _, eager_losses, _, _ = agp_run(None)
    sched, _, losses, after_first, at_end = agp_run("inductor")
    assert after_first[1] == 1 and at_end == after_first
    torch.testing.assert_close(losses, eager_losses, rtol=1e-5, atol=1e-6)
    for name in WEIGHTS:
        assert torch.equal(sched.masks[name], eager.masks[name])


@pytest.mark.slow
def test_the_range_linear_quantizer_compiles_with_inductor():
    losses = quantized_run(QUANTIZERS["range linear (QAT)"], "inductor")
    torch.testing.assert_close(losses, quantized_run(QUANTIZERS["range linear (QAT)"], None), rtol=1e-4, atol=1e-5)
