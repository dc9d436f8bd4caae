"""SNIPPruner on LeNet-300-100 and scikit-learn's digits: exact counts, the most sensitive connections kept,
loading by class name from the entry point, one-line argument errors, and checkpoints."""

from __future__ import annotations

import copy
import io
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch
from hookprune_snip import SNIPPruner
from sklearn.datasets import load_digits

import hookprune
from hookprune.models import create_model

WEIGHTS = ["fc1.weight", "fc2.weight", "fc3.weight"]
MINIBATCHES = 3
EPOCHS = 2
LR = 0.1
MOMENTUM = 0.9

SCHEDULE = """\
version: 1
pruners:
  snip:
    class: SNIPPruner
    sparsity: {sparsity}
    scope: {scope}
    batches: {batches}
    weights: [module.fc1.weight, fc2.weight, fc3.weight]
policies:
  - pruner:
      instance_name: snip
    starting_epoch: 0
    ending_epoch: 2
"""


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny inputs run fastest, and reproducibly, on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Three minibatches of 32 digits (8x8 pixels flattened to 64 features, scaled to [0, 1])."""
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    return [(x[i * 32:(i + 1) * 32], y[i * 32:(i + 1) * 32]) for i in range(MINIBATCHES)]


def build(tmp_path: Path, sparsity: float = 0.9, scope: str = "global", batches: int = 1, seed: int = 0):
    """A seeded LeNet-300-100, SGD with momentum, and the scheduler SCHEDULE describes (the active one)."""
    torch.manual_seed(seed)
    model = create_model("lenet300_100", input_features=64)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    path = tmp_path / "snip.yaml"
    path.write_text(SCHEDULE.format(sparsity=sparsity, scope=scope, batches=batches))
    return hookprune.load(path, model, optimizer), model, optimizer


def steps(epochs: int = EPOCHS) -> list[tuple[int, int]]:
    return [(epoch, i) for epoch in range(epochs) for i in range(MINIBATCHES)]


def run(sched, model, optimizer, data, pairs) -> None:
    """Fire every event of the (epoch, minibatch) pairs; an epoch begins at minibatch 0 and ends at the last."""
    for epoch, i in pairs:
        if i == 0:
            sched.fire("on_epoch_begin", epoch=epoch)
        step = {"epoch": epoch, "minibatch_id": i, "minibatches_per_epoch": MINIBATCHES}
        sched.fire("on_minibatch_begin", **step)
        x, y = data[i]
        loss = sched.fire("before_backward", **step, loss=torch.nn.functional.cross_entropy(model(x), y))
        optimizer.zero_grad()
        loss.backward()
        sched.fire("before_optimizer_step", **step)
        optimizer.step()
        sched.fire("on_minibatch_end", **step)
        if i == MINIBATCHES - 1:
            sched.fire("on_epoch_end", epoch=epoch)


def sensitivities(model, data, batches: int) -> dict[str, torch.Tensor]:
    """``sum of w * dL/dw`` over the first ``batches`` minibatches, on a copy trained like the loop trains."""
    model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    params = dict(model.named_parameters())
    total = {name: torch.zeros_like(params[name]) for name in WEIGHTS}
    for x, y in data[:batches]:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        for name in WEIGHTS:
            total[name] += params[name].detach() * params[name].grad
        optimizer.step()
    return total


def stable_sort_keep(scores: dict[str, torch.Tensor], sparsity: float, scope: str) -> dict[str, torch.Tensor]:
    """Keep-masks by a full stable sort of ``|score|``: the ``int(sparsity * n)`` first ones are dropped."""
    def keep_of(flat: torch.Tensor) -> torch.Tensor:
        keep = torch.ones(flat.numel(), dtype=torch.bool)
        keep[torch.sort(flat, stable=True).indices[: int(sparsity * flat.numel())]] = False
        return keep

    if scope == "layer":
        return {name: keep_of(s.abs().flatten()).view_as(s) for name, s in scores.items()}
    keep = keep_of(torch.cat([s.abs().flatten() for s in scores.values()]))
    return dict(zip(scores, (k.view_as(s) for k, s in zip(keep.split([s.numel() for s in scores.values()]),
                                                             scores.values(), strict=True)), strict=True))


def test_equal_scores_are_removed_lowest_index_first_in_the_order_of_weights():
    model = torch.nn.Linear(3, 2)
    layer = SNIPPruner("snip", model, ["weight"], sparsity=0.5, scope="layer")
    scores = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 2.0]])
    assert layer.keep_masks({"weight": scores})["weight"].tolist() == [[False, False, True], [False, True, True]]
    assert SNIPPruner("snip", model, ["weight"], sparsity=0.0).keep_masks(
        {"weight": scores})["weight"].all()
    both = SNIPPruner("snip", model, ["weight", "bias"], sparsity=0.375, scope="global")
    keep = both.keep_masks({"weight": torch.tensor([[1.0, 3.0, 1.0], [3.0, 3.0, 3.0]]),
                            "bias": torch.tensor([-1.0, 0.0])})
    assert keep["weight"].tolist() == [[False, True, False], [True, True, True]]
    assert keep["bias"].tolist() == [True, False]


def test_global_scope_keeps_the_most_sensitive_connections(tmp_path, digits):
    sched, model, optimizer = build(tmp_path, sparsity=0.9, scope="global")
    expected = stable_sort_keep(sensitivities(model, digits, 1), 0.9, "global")
    run(sched, model, optimizer, digits, steps())
    params = dict(model.named_parameters())
    total = sum(params[name].numel() for name in WEIGHTS)
    assert sum(int((~sched.masks[name]).sum()) for name in WEIGHTS) == int(0.9 * total) == 45180
    for name in WEIGHTS:
        assert torch.equal(sched.masks[name], expected[name]), name
        # the engine kept the removed connections at zero through both epochs' optimizer steps
        assert torch.equal(params[name] != 0, expected[name]), name
    snip = sched.instances["snip"]
    assert (snip.pruned, snip.pruned_epoch, snip.batches_seen) == (True, 0, 1)


def test_kept_scores_are_never_below_removed_ones(tmp_path, digits):
    sched, model, optimizer = build(tmp_path, sparsity=0.5, scope="global")
    scores = torch.cat([s.abs().flatten() for s in sensitivities(model, digits, 1).values()])
    magnitudes = torch.cat([model.get_parameter(name).detach().abs().flatten() for name in WEIGHTS])
    run(sched, model, optimizer, digits, steps(1))
    keep = torch.cat([sched.masks[name].flatten() for name in WEIGHTS])
    assert int((~keep).sum()) == int(0.5 * keep.numel())
    assert scores[keep].min() >= scores[~keep].max()
    # SNIP is not magnitude pruning: some kept weights started smaller than some removed ones
    assert magnitudes[keep].min() < magnitudes[~keep].max()


def test_layer_scope_prunes_each_weight_to_its_level(tmp_path, digits):
    sched, model, optimizer = build(tmp_path, sparsity=0.75, scope="layer")
    expected = stable_sort_keep(sensitivities(model, digits, 1), 0.75, "layer")
    run(sched, model, optimizer, digits, steps())
    params = dict(model.named_parameters())
    for name in WEIGHTS:
        assert int((params[name] == 0).sum()) == int(0.75 * params[name].numel()), name
        assert torch.equal(sched.masks[name], expected[name]), name


@pytest.mark.parametrize(("batches", "seen"), [(2, 2), (5, MINIBATCHES)])
def test_scores_add_up_over_the_first_minibatches(tmp_path, digits, batches, seen):
    """``batches: 5`` in an epoch of three minibatches prunes at the epoch's last minibatch."""
    sched, model, optimizer = build(tmp_path, sparsity=0.6, scope="global", batches=batches)
    expected = stable_sort_keep(sensitivities(model, digits, seen), 0.6, "global")
    masks_after: dict[tuple[int, int], int] = {}
    for pair in steps():
        run(sched, model, optimizer, digits, [pair])
        masks_after[pair] = len(sched.masks)
    assert [pair for pair, n in masks_after.items() if n] == steps()[seen - 1:]
    for name in WEIGHTS:
        assert torch.equal(sched.masks[name], expected[name]), name
    snip = sched.instances["snip"]
    assert (snip.pruned_epoch, snip.batches_seen) == (0, seen)


def test_schedule_names_the_class_installed_through_its_entry_point(tmp_path):
    found = [ep for ep in entry_points(group="hookprune.classes") if ep.name == "SNIPPruner"]
    assert [(ep.value, ep.dist.metadata["Name"]) for ep in found] == [("hookprune_snip:SNIPPruner", "hookprune-snip")]
    sched, _, _ = build(tmp_path)
    snip = sched.instances["snip"]
    assert type(snip) is SNIPPruner
    # hookprune hands the constructor the model's own spelling of 'module.fc1.weight'
    assert snip.weights == WEIGHTS
    assert (snip.name, snip.sparsity, snip.scope, snip.batches) == ("snip", 0.9, "global", 1)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("sparsity", "1.5", "5:15: pruners.snip (SNIPPruner): 'sparsity' must be a number within [0, 1), got 1.5"),
    ("sparsity", "-0.1", "5:15: pruners.snip (SNIPPruner): 'sparsity' must be a number within [0, 1), got -0.1"),
    ("scope", "per_layer", "6:12: pruners.snip (SNIPPruner): 'scope' must be 'global' or 'layer', got 'per_layer'"),
    ("batches", "0", "7:14: pruners.snip (SNIPPruner): 'batches' must be an integer >= 1, got 0"),
])
def test_bad_arguments_are_one_line_schedule_errors(tmp_path, key, value, message):
    text = SCHEDULE.format(sparsity=0.5, scope="global", batches=1).replace(
        f"{key}: {dict(sparsity=0.5, scope='global', batches=1)[key]}", f"{key}: {value}")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    model = create_model("lenet300_100", input_features=64)
    with pytest.raises(hookprune.ScheduleError) as err:
        hookprune.load(path, model)
    assert str(err.value) == f"{path}:{message}"


@pytest.mark.parametrize(("kwargs", "argument", "message"), [
    ({"weights": []}, "weights", "'weights' must list at least one parameter"),
    ({"weights": ["fc4.weight"]}, "weights", "'weights': the model has no parameter 'fc4.weight'"),
    ({"weights": ["fc1.weight", "fc1.weight"]}, "weights", "'weights' lists 'fc1.weight' twice"),
    ({"sparsity": 1}, "sparsity", "'sparsity' must be a number within [0, 1), got 1"),
    ({"scope": "all"}, "scope", "'scope' must be one of global, layer, got 'all'"),
    ({"batches": True}, "batches", "'batches' must be an integer >= 1, got True"),
])
def test_bad_arguments_from_python_name_the_argument(kwargs, argument, message):
    from hookprune.pruning.base import ArgumentError

    model = create_model("lenet300_100", input_features=64)
    args = {"name": "snip", "model": model, "weights": ["fc1.weight"], "sparsity": 0.5, **kwargs}
    with pytest.raises(ArgumentError) as err:
        SNIPPruner(**args)
    assert (err.value.argument, str(err.value)) == (argument, message)


def checkpoint(sched, model, optimizer) -> dict:
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "compression_sched": sched.state_dict()}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def resume(tmp_path, saved, **schedule):
    sched, model, optimizer = build(tmp_path, seed=1, **schedule)
    sched.load_state_dict(saved["compression_sched"])
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    return sched, model, optimizer


@pytest.mark.parametrize("stop", [MINIBATCHES, 1], ids=["after-epoch-0", "between-scoring-minibatches"])
def test_resumed_run_matches_the_uninterrupted_one(tmp_path, digits, stop):
    schedule = {"sparsity": 0.8, "scope": "layer", "batches": 2}
    whole, whole_model, whole_optimizer = build(tmp_path, **schedule)
    run(whole, whole_model, whole_optimizer, digits, steps())

    first, model, optimizer = build(tmp_path, **schedule)
    run(first, model, optimizer, digits, steps()[:stop])
    saved = checkpoint(first, model, optimizer)
    state = saved["compression_sched"]["instances"]["snip"]
    assert state["pruned"] == (stop >= 2)
    assert sorted(state["scores"]) == ([] if stop >= 2 else WEIGHTS)

    sched, model, optimizer = resume(tmp_path, saved, **schedule)
    snip = sched.instances["snip"]
    assert (snip.pruned, snip.batches_seen) == (stop >= 2, min(stop, 2))
    run(sched, model, optimizer, digits, steps()[stop:])
    assert snip.pruned_epoch == 0  # epoch 1 is in the policy too, and does not prune again
    for name in WEIGHTS:
        assert torch.equal(sched.masks[name], whole.masks[name]), name
    for (name, param), expected in zip(model.named_parameters(), whole_model.parameters(), strict=True):
        assert torch.equal(param, expected), name


def test_a_weight_without_gradient_is_named(tmp_path, digits):
    sched, model, optimizer = build(tmp_path)
    model.fc3.weight.requires_grad_(False)
    with pytest.raises(RuntimeError, match=r"'fc3\.weight' has no gradient at before_optimizer_step") as err:
        run(sched, model, optimizer, digits, steps(1))
    assert any("hook 'before_optimizer_step' of pruners.snip (SNIPPruner) (from hookprune-snip 0.1.0)" in note
               for note in err.value.__notes__)


def test_policy_levels_do_not_apply(tmp_path, digits):
    torch.manual_seed(0)
    model = create_model("lenet300_100", input_features=64)
    path = tmp_path / "levels.yaml"
    path.write_text(SCHEDULE.format(sparsity=0.5, scope="layer", batches=1).replace(
        "      instance_name: snip\n", "      instance_name: snip\n      args: {levels: {fc1.weight: 0.3}}\n"))
    with pytest.raises(hookprune.ScheduleError) as err:
        hookprune.load(path, model, torch.optim.SGD(model.parameters(), lr=LR))
    assert str(err.value).startswith(f"{path}:")
    assert str(err.value).endswith(": policy for 'snip': SNIPPruner 'snip' takes its level from 'sparsity' and "
                                   "'scope'; a policy's 'levels' does not apply")
