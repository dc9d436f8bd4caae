"""Parameter names in a schedule: plain, DataParallel-wrapped, or ``re:`` regular expressions."""

from __future__ import annotations

import pytest
import torch

import hookprune
from hookprune.errors import ScheduleError
from hookprune.testing import random_batches, train


def schedule(weights, levels=None):
    pruner = {"class": "AutomatedGradualPruner", "initial_sparsity": 0.1, "final_sparsity": 0.5,
              "weights": weights}
    data = {"version": 1, "pruners": {"p": pruner},
            "policies": [{"pruner": {"instance_name": "p"}, "starting_epoch": 0, "ending_epoch": 3}]}
    if levels is not None:
        data["pruners"]["lvl"] = {"class": "SparsityLevelParameterPruner", "levels": levels}
        data["policies"].append({"pruner": {"instance_name": "lvl"}, "starting_epoch": 0, "ending_epoch": 1})
    return data


def test_regex_selects_every_matching_weight_in_model_order(lenet):
    sched = hookprune.load(schedule([r"re:fc[12]\.weight"]), lenet)
    assert sched.instances["p"].params_names == ["fc1.weight", "fc2.weight"]


def test_regex_without_module_matches_a_wrapped_model(lenet):
    wrapped = torch.nn.Sequential()
    wrapped.add_module("module", lenet)
    sched = hookprune.load(schedule([r"re:fc[12]\.weight"]), wrapped)
    assert sched.instances["p"].params_names == ["module.fc1.weight", "module.fc2.weight"]


def test_regex_and_names_combine_without_repeats(lenet):
    sched = hookprune.load(schedule(["fc2.weight", r"re:fc\d\.weight"]), lenet)
    assert sched.instances["p"].params_names == ["fc2.weight", "fc1.weight", "fc3.weight"]


def test_regex_pruning_ends_at_the_exact_level(lenet):
    opt = torch.optim.SGD(lenet.parameters(), lr=0.1)
    sched = hookprune.load(schedule(r"re:fc[12]\.weight"), lenet, opt)
    train(sched, lenet, opt, random_batches(), epochs=3)
    for name in ("fc1.weight", "fc2.weight"):
        weight = dict(lenet.named_parameters())[name]
        assert int((weight == 0).sum()) == int(0.5 * weight.numel())
    assert int((lenet.fc3.weight == 0).sum()) == 0


def test_table_keys_explicit_names_win_over_regex(lenet):
    sched = hookprune.load(schedule(["fc3.weight"], levels={r"re:fc\d\.weight": 0.25, "fc2.weight": 0.75}), lenet)
    assert sched.instances["lvl"].levels == {"fc2.weight": 0.75, "fc1.weight": 0.25, "fc3.weight": 0.25}


@pytest.mark.parametrize(("weights", "message"), [
    (["re:conv.*"], "regular expression 'conv.*' matches no parameter of the model"),
    (["re:fc[1"], "bad regular expression 'fc[1'"),
])
def test_bad_regex_is_one_line_naming_it(lenet, tmp_path, weights, message):
    import yaml

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(schedule(weights), sort_keys=False))
    with pytest.raises(ScheduleError) as info:
        hookprune.load(path, lenet)
    text = str(info.value)
    assert text.startswith(f"{path}:") and "\n" not in text
    assert f"pruners.p (AutomatedGradualPruner): {message}" in text
