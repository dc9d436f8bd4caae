"""Parameter names in a schedule: plain, DataParallel-wrapped, or ``re:`` regular expressions (which warn when a
pruner's catches 1-D parameters, unless written ``re+1d:``)."""

from __future__ import annotations

import warnings

import pytest
import torch

import hookprune
from hookprune.errors import ScheduleError, ScheduleWarning
from hookprune.sparsity import format_table, sparsity_report
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


def _yaml_schedule(tmp_path, weights):
    import yaml

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(schedule(weights), sort_keys=False))
    return path


def test_a_pruners_regex_that_catches_biases_warns_naming_them(lenet, tmp_path):
    path = _yaml_schedule(tmp_path, ["re:fc.*"])
    with pytest.warns(ScheduleWarning) as caught:
        sched = hookprune.load(path, lenet)
    assert [str(w.message) for w in caught] == [
        f"{path}:8:7: pruners.p (AutomatedGradualPruner): 're:fc.*' selects 3 1-D parameters (fc1.bias, fc2.bias, "
        "fc3.bias), which will be pruned like weights; narrow the pattern (e.g. to names ending in '.weight' with "
        "more than one dimension), or write 're+1d:fc.*' to prune them on purpose"]
    # the warning changes nothing: the pattern still selects them
    assert sched.instances["p"].params_names == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight",
                                                 "fc3.bias"]


def test_re_1d_prunes_biases_on_purpose_and_the_table_shows_them(lenet, tmp_path):
    opt = torch.optim.SGD(lenet.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sched = hookprune.load(_yaml_schedule(tmp_path, ["re+1d:fc[12].*"]), lenet, opt)
    train(sched, lenet, opt, random_batches(), epochs=3)
    assert int((lenet.fc1.bias == 0).sum()) == int(0.5 * lenet.fc1.bias.numel()) == 150
    rows = sparsity_report(lenet, masked=list(sched.masks))
    assert [r.name for r in rows] == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight"]
    table = format_table(rows).splitlines()
    assert table[2].split() == ["fc1.bias", "(300,)", "150", "-", "-", "-", "-", "50.00%"]
    assert [r.name for r in sparsity_report(lenet)] == ["fc1.weight", "fc2.weight", "fc3.weight"]


def test_names_and_other_sections_never_warn_about_1d_parameters(lenet):
    data = schedule(["fc1.weight", "fc1.bias"])
    data["regularizers"] = {"l1": {"class": "L1Regularizer", "reg_regims": {"re:fc.*": 0.01}}}
    data["policies"].append({"regularizer": {"instance_name": "l1"}, "starting_epoch": 0, "ending_epoch": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sched = hookprune.load(data, lenet)
    assert sched.instances["p"].params_names == ["fc1.weight", "fc1.bias"]


def test_check_prints_the_1d_warning_and_accepts_the_schedule(tmp_path, capsys):
    from hookprune import cli

    path = _yaml_schedule(tmp_path, ["re:fc[12].*"])
    assert cli.main(["check", str(path), "--arch", "lenet300_100"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {path}:8:7: pruners.p (AutomatedGradualPruner): 're:fc[12].*' selects 2 1-D parameters " \
           "(fc1.bias, fc2.bias)" in err
