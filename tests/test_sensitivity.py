"""Sensitivity analysis: exact zero counts per level and group, the structures chosen, the model left
bit-identical (also when evaluation fails), the result's shape, the CSV round trip, the plot, errors."""

from __future__ import annotations

import functools
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

import hookprune
from hookprune import models
from hookprune.pruning.ranked import L1RankedStructureParameterPruner
from hookprune.sensitivity import (
    perform_sensitivity_analysis,
    sensitivities_from_csv,
    sensitivities_to_csv,
    sensitivities_to_png,
)

LEVELS = [0.0, 0.25, 0.5, 0.9, 1.0]


def _lenet() -> nn.Module:
    torch.manual_seed(0)
    return models.create_model("lenet300_100", input_features=64)


def _simplenet() -> nn.Module:
    torch.manual_seed(0)
    return models.create_model("simplenet_mnist")


def _batch(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    shape = (64,) if isinstance(model.fc1, nn.Linear) and model.fc1.in_features == 64 else (1, 28, 28)
    return torch.randn(6, *shape, generator=generator), torch.randint(0, 10, (6,), generator=generator)


class Recorder:
    """A test_func that evaluates on one tiny batch and records every parameter at each call."""

    def __init__(self, model: nn.Module) -> None:
        self.inputs, self.labels = _batch(model)
        self.seen: list[dict[str, torch.Tensor]] = []

    def __call__(self, model: nn.Module) -> tuple[float, float, float]:
        self.seen.append({name: p.detach().clone() for name, p in model.named_parameters()})
        with torch.no_grad():
            logits = model(self.inputs)
        top5 = logits.topk(5, dim=1).indices
        top1 = float((top5[:, 0] == self.labels).float().mean() * 100)
        in_top5 = float((top5 == self.labels[:, None]).any(dim=1).float().mean() * 100)
        return top1, in_top5, float(nn.functional.cross_entropy(logits, self.labels))


def _bits(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone().view(torch.int32) if t.dtype == torch.float32 else t.clone()
            for name, t in state.items()}


def _assert_bit_identical(before: dict[str, torch.Tensor], model: nn.Module) -> None:
    after = _bits(model.state_dict())
    assert after.keys() == before.keys()
    for name in before:
        assert torch.equal(before[name], after[name]), name


def test_element_levels_zero_exactly_the_smallest_magnitudes_of_one_parameter_at_a_time():
    model = _lenet()
    original = {name: p.detach().clone() for name, p in model.named_parameters()}
    recorder = Recorder(model)
    perform_sensitivity_analysis(model, ["fc2.weight", "fc1.weight"], LEVELS, recorder)
    assert len(recorder.seen) == 2 * len(LEVELS)
    calls = iter(recorder.seen)
    for name in ["fc2.weight", "fc1.weight"]:
        for level in LEVELS:
            seen = next(calls)
            pruned = seen[name] == 0
            assert int(pruned.sum()) == int(level * original[name].numel())
            assert torch.equal(seen[name][~pruned], original[name][~pruned])
            if 0 < level < 1:
                magnitude = original[name].abs()
                assert magnitude[pruned].max() <= magnitude[~pruned].min()
            for other, values in seen.items():
                if other != name:
                    assert torch.equal(values, original[other]), (name, level, other)


@pytest.mark.parametrize(("group", "group_type", "dim"), [("filter", "Filters", 0), ("channel", "Channels", 1)])
def test_structure_levels_zero_the_lowest_l1_structures_as_the_ranked_pruner_does(group, group_type, dim):
    model = _simplenet()
    weight = model.conv2.weight.detach().clone()
    count = weight.shape[dim]
    per_structure = weight.numel() // count
    recorder = Recorder(model)
    levels = [0.0, 0.1, 0.5, 0.95, 1.0]
    result = perform_sensitivity_analysis(model, ["conv2.weight"], levels, recorder, group=group)
    assert list(result["conv2.weight"]) == levels
    l1 = weight.abs().transpose(0, dim).reshape(count, -1).sum(dim=1)
    for level, seen in zip(levels, recorder.seen, strict=True):
        zeroed = (seen["conv2.weight"] == 0).transpose(0, dim).reshape(count, -1)
        gone = zeroed.all(dim=1)
        k = int(level * count)
        assert int(gone.sum()) == k
        assert int(zeroed.sum()) == k * per_structure
        assert torch.equal(gone.nonzero().flatten().sort().values, l1.argsort()[:k].sort().values)
        if 0 < level < 1:
            pruner = L1RankedStructureParameterPruner("ranked", group_type, level, ["conv2.weight"])
            sched = hookprune.CompressionScheduler(model)
            sched.add_policy(pruner, epochs=[0])
            sched.fire("on_epoch_begin", epoch=0)
            assert torch.equal(seen["conv2.weight"] != 0, sched.masks["conv2.weight"])
        for other in ("conv1.weight", "fc1.weight"):
            assert torch.equal(seen[other], model.get_parameter(other))


def test_model_is_bit_identical_with_mode_and_requires_grad_as_found():
    model = _simplenet()
    model.eval()
    model.fc1.train()
    model.conv1.weight.requires_grad_(False)
    before = _bits(model.state_dict())

    def meddling_test(model: nn.Module) -> tuple[float, float, float]:
        model.train()
        for p in model.parameters():
            p.requires_grad_(True)
        return 1.0, 2.0, 3.0

    perform_sensitivity_analysis(model, ["conv1.weight", "conv2.weight", "fc2.weight"], [0.3, 0.7], meddling_test)
    _assert_bit_identical(before, model)
    assert [m.training for m in model.modules()] == [m is model.fc1 for m in model.modules()]
    assert [p.requires_grad for p in model.parameters()] == [p is not model.conv1.weight for p in model.parameters()]


def test_model_is_restored_when_the_test_function_raises():
    model = _lenet()
    before = _bits(model.state_dict())
    calls = []

    def failing_test(model: nn.Module) -> tuple[float, float, float]:
        calls.append(int((model.fc1.weight == 0).sum()))
        if len(calls) == 2:
            raise RuntimeError("evaluation failed")
        return 0.0, 0.0, 0.0

    with pytest.raises(RuntimeError, match="evaluation failed"):
        perform_sensitivity_analysis(model, ["fc1.weight"], [0.5, 0.8, 0.9], failing_test)
    assert calls == [int(0.5 * 300 * 64), int(0.8 * 300 * 64)]
    _assert_bit_identical(before, model)


def test_result_keys_follow_the_names_and_levels_as_given():
    model = _lenet()
    recorder = Recorder(model)
    levels = [0.5, 0.0, 0.5, 0.2]
    result = perform_sensitivity_analysis(model, ["fc3.weight", "module.fc1.weight", "fc2.bias"], levels, recorder)
    assert isinstance(result, OrderedDict)
    assert list(result) == ["fc3.weight", "module.fc1.weight", "fc2.bias"]
    for sensitivity in result.values():
        assert isinstance(sensitivity, OrderedDict)
        assert list(sensitivity) == [0.5, 0.0, 0.2]
        assert all(len(v) == 3 and all(type(x) is float for x in v) for v in sensitivity.values())
    assert len(recorder.seen) == 3 * 3
    assert result["fc3.weight"][0.0] == result["module.fc1.weight"][0.0] == result["fc2.bias"][0.0]
    assert result["fc3.weight"][0.5] != result["fc3.weight"][0.0]


def test_model_is_passed_by_keyword_to_a_partial_like_distillers_test():
    model = _lenet()
    inputs, labels = _batch(model)

    def evaluate(data: tuple[torch.Tensor, torch.Tensor], model: nn.Module, scale: float) -> tuple[float, ...]:
        with torch.no_grad():
            loss = nn.functional.cross_entropy(model(data[0]), data[1])
        return 10.0, 20.0, float(loss) * scale

    test_func = functools.partial(evaluate, data=(inputs, labels), scale=2.0)
    result = perform_sensitivity_analysis(model, ["fc1.weight"], [0.0], test_func)
    with torch.no_grad():
        expected = float(nn.functional.cross_entropy(model(inputs), labels)) * 2.0
    assert result["fc1.weight"][0.0] == (10.0, 20.0, expected)


def test_progress_bar_counts_every_parameter_and_level(capsys):
    pytest.importorskip("tqdm")
    model = _lenet()
    perform_sensitivity_analysis(model, ["fc1.weight", "fc2.weight"], [0.1, 0.2, 0.3], Recorder(model), progress=True)
    assert "6/6" in capsys.readouterr().err


def test_progress_without_tqdm_runs_without_a_bar(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    model = _lenet()
    result = perform_sensitivity_analysis(model, ["fc1.weight"], [0.1, 0.2], Recorder(model), progress=True)
    assert list(result["fc1.weight"]) == [0.1, 0.2]
    assert capsys.readouterr().err == ""


def _sample() -> OrderedDict[str, OrderedDict[float, tuple[float, float, float]]]:
    model = _simplenet()
    return perform_sensitivity_analysis(model, ["conv1.weight", "fc1.weight"], [0.0, 0.05, 0.1 + 0.2, 1.0],
                                        Recorder(model))


def test_csv_has_distillers_columns_and_reads_back_exactly(tmp_path: Path):
    result = _sample()
    path = tmp_path / "sensitivity.csv"
    sensitivities_to_csv(result, path)
    lines = path.read_text().splitlines()
    assert lines[0] == "parameter,sparsity,top1,top5,loss"
    assert len(lines) == 1 + 2 * 4
    assert lines[1].startswith("conv1.weight,0.0,")
    back = sensitivities_from_csv(path)
    assert back == result
    assert list(back) == list(result)
    assert [list(s) for s in back.values()] == [list(s) for s in result.values()]


def test_csv_with_a_wrong_header_or_row_is_refused(tmp_path: Path):
    bad_header = tmp_path / "header.csv"
    bad_header.write_text("name,level,acc\nfc1.weight,0.1,50\n")
    with pytest.raises(ValueError, match=r"header.csv:1: a sensitivity CSV starts with the header "
                                         r"parameter,sparsity,top1,top5,loss"):
        sensitivities_from_csv(bad_header)
    bad_row = tmp_path / "row.csv"
    bad_row.write_text("parameter,sparsity,top1,top5,loss\nfc1.weight,0.1,50,90,1.5\nfc1.weight,0.2,high,90,1\n")
    with pytest.raises(ValueError, match=r"row.csv:3: sparsity, top1, top5 and loss must be numbers"):
        sensitivities_from_csv(bad_row)


def test_png_is_written(tmp_path: Path):
    path = tmp_path / "sensitivity.png"
    sensitivities_to_png(_sample(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_png_with_many_parameters_is_written(tmp_path: Path):
    many = OrderedDict((f"layer{i}.weight", OrderedDict((s, (100.0 - i * s, 100.0, s)) for s in (0.0, 0.5, 0.9)))
                       for i in range(60))
    path = tmp_path / "many.png"
    sensitivities_to_png(many, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_png_without_matplotlib_says_how_to_install_it(monkeypatch, tmp_path: Path):
    for module in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=r"^sensitivities_to_png needs matplotlib: pip install matplotlib$"):
        sensitivities_to_png(_sample(), tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


@pytest.mark.parametrize(("names", "levels", "group", "message"), [
    (["conv2.weight", "fc1.weigth"], [0.5], "element",
     r"^the model has no parameter 'fc1.weigth' \(did you mean 'fc1.weight'"),
    (["conv1.weight"], [0.5], "filters",
     r"^group must be one of element, filter, channel; got 'filters' \(did you mean 'filter'\?\)$"),
    (["conv2.weight", "fc1.weight"], [0.5], "filter",
     r"^group 'filter' prunes filters of 4-D convolution weights; parameter 'fc1.weight' has shape \(500, 800\)$"),
    (["conv1.weight", "fc2.weight"], [0.5], "channel",
     r"^group 'channel' prunes channels of 4-D convolution weights; parameter 'fc2.weight' has shape \(10, 500\)$"),
    (["conv1.weight"], [0.2, 1.5], "element", r"^every sparsity level must be a number within \[0, 1\], got 1.5$"),
    (["conv1.weight", "module.conv1.weight"], [0.2], "element",
     r"^parameter 'module.conv1.weight' is listed twice \(also as 'conv1.weight'\)$"),
])
def test_bad_input_is_refused_before_any_evaluation(names, levels, group, message):
    model = _simplenet()
    recorder = Recorder(model)
    with pytest.raises(ValueError, match=message):
        perform_sensitivity_analysis(model, names, levels, recorder, group=group)
    assert recorder.seen == []


def test_a_result_that_is_not_three_numbers_is_refused():
    model = _lenet()
    with pytest.raises(TypeError, match=r"the result for 'fc1.weight' at sparsity 0.5 must be three numbers"):
        perform_sensitivity_analysis(model, ["fc1.weight"], [0.5], lambda m: 97.0)
