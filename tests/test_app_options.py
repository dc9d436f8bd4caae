"""Distiller's remaining application options in compress_classifier.py, run in-process on the digits data: the
summaries, post-training quantization, thinnify, greedy filter pruning, activation statistics, the confusion
matrix, the best scores, the masks' sparsity, --verbose, --pretrained and the effective split sizes."""

from __future__ import annotations

import copy
import csv
import importlib.util
import re
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import hookprune
from hookprune import models, testing
from hookprune.apputils.checkpoint import load_weights, save_checkpoint
from hookprune.errors import ScheduleWarning
from hookprune.pruning.greedy import greedy_filter_pruning, prune_weakest_filters
from hookprune.quantization import load_stats

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "examples" / "classifier_compression" / "compress_classifier.py"
AGP = ROOT / "examples" / "schedules" / "lenet300_100.agp.yaml"
CORPUS = ROOT.parent / "shared" / "distiller-schedules"


@pytest.fixture(scope="module")
def app():
    """The application's ``main``, imported from its file."""
    spec = importlib.util.spec_from_file_location("compress_classifier_under_test", APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def run(app, capsys, *argv: str) -> str:
    """Run the application; its stdout (it must succeed)."""
    code = app([*argv])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    return out


def error_line(app, capsys, *argv: str) -> str:
    """The one line a bad command line gets, with exit status 2 and no traceback."""
    try:
        code = app([*argv])
    except SystemExit as exc:   # the argument parser's own errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def folder_of(out: Path) -> Path:
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    return folder


def top1_of(stdout: str) -> float:
    return float(re.search(r"Test top-1 (\d+\.\d+)%", stdout).group(1))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, app) -> Path:
    """LeNet-300-100 pruned 3 epochs by the AGP schedule on digits: its last checkpoint."""
    out = tmp_path_factory.mktemp("trained")
    assert app(["--compress", str(AGP), "--epochs", "3", "--seed", "0", "-o", str(out)]) == 0
    return folder_of(out) / "lenet300_100_checkpoint.pth.tar"


# -- bad values --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "expected"), [
    (["--summary", "computer"], "--summary computer: unknown report (did you mean 'compute'?); choose from sparsity, "
                                "compute, model, modules, png"),
    (["--evaluate", "--qe", "--qe-mode", "asym"], "--qe-mode asym: unknown (did you mean 'sym', 'asym_u' or "
                                                  "'asym_s'?); choose from sym, sym_restr, asym_s, asym_u"),
    (["--evaluate", "--qe", "--qe-clip-acts", "mean"], "--qe-clip-acts mean: unknown; choose from none, avg, n_std, "
                                                       "gauss, laplace"),
    (["--evaluate", "--qe", "--qe-bits-acts", "0"], "--qe-bits-acts 0: a bit width is from 1 to 32"),
    (["--evaluate", "--qe", "--qe-clip-acts", "n_std"], "--qe-clip-acts n_std needs --qe-clip-n-stds"),
    (["--evaluate", "--qe", "--qe-calibration", "1.5"], "--qe-calibration 1.5: the fraction of the data must be in "
                                                        "(0, 1]"),
    (["--evaluate", "--qe", "--qe-stats-file", "missing.yaml"], "--qe-stats-file missing.yaml: no such file"),
    (["--evaluate", "--qe", "--qe-config-file", "missing.yaml"], "--qe-config-file missing.yaml: no such file"),
    (["--qe"], "--quantize-eval quantizes a trained model for evaluation: add --evaluate"),
    (["--greedy"], "--greedy needs --greedy-target-density"),
    (["--greedy", "--greedy-target-density", "1.2"], "--greedy-target-density 1.2: must be in (0, 1)"),
    (["--greedy", "--greedy-target-density", "0.5", "--greedy-pruning-step", "0"],
     "--greedy-pruning-step 0.0: must be in (0, 1)"),
    (["--greedy", "--greedy-target-density", "0.5", "--greedy-finetuning-policy", "linear"],
     "--greedy-finetuning-policy linear: unknown; choose from constant, linear-grow"),
    (["--act-stats", "training"], "--act-stats training: unknown phase; choose from train, valid, test"),
    (["--num-best-scores", "0"], "--num-best-scores 0: must be >= 1"),
    (["--thinnify"], "--thinnify thins a trained model: give it with --resume-from or --exp-load-weights-from"),
    (["--pretrained", "nowhere.pth"], "--pretrained nowhere.pth: no such file (nothing is downloaded)"),
    (["--evaluate", "--qe", "--qe-bits-wts", "eight"], "argument --qe-bits-wts/--qebw: invalid int value: 'eight'"),
    (["--greedy", "--evaluate"], "argument --evaluate: not allowed with argument --greedy"),
    (["--num-best-scores", "many"], "argument --num-best-scores: invalid int value: 'many'"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_option_values_get_one_line_and_exit_2(app, capsys, tmp_path, argv, expected):
    line = error_line(app, capsys, *argv, "-o", str(tmp_path / "out"))
    assert line.startswith(f"compress_classifier.py: error: {expected}")
    assert not (tmp_path / "out").exists()


def test_every_option_is_in_the_help(app, capsys):
    with pytest.raises(SystemExit):
        app(["--help"])
    text = capsys.readouterr().out
    for option in ("--summary", "--quantize-eval", "--qe", "--qe-mode", "--qe-bits-acts", "--qe-bits-wts",
                   "--qe-per-channel", "--qe-clip-acts", "--qe-stats-file", "--qe-calibration", "--qe-config-file",
                   "--thinnify", "--greedy", "--greedy-target-density", "--greedy-pruning-step",
                   "--greedy-finetuning-policy", "--act-stats", "--confusion", "--num-best-scores",
                   "--masks-sparsity", "--verbose", "--pretrained", "--effective-train-size", "--effective-valid-size",
                   "--effective-test-size"):
        assert re.search(rf"(^|[ ,]){re.escape(option)}[ ,\n]", text, re.M), option
    assert "sparsity|compute|model|modules|png" in text


# -- summaries ---------------------------------------------------------------------------------------------------


def test_summary_model_modules_and_png(app, capsys, tmp_path):
    out = run(app, capsys, "-a", "simplenet_mnist", "--summary", "model", "--summary", "modules", "--summary", "png",
              "-o", str(tmp_path))
    assert "SimpleNetMNIST(\n  (conv1): Conv2d(1, 20, kernel_size=(5, 5), stride=(1, 1))" in out
    assert re.search(r"^\(model\)\s+SimpleNetMNIST$", out, re.M)
    assert re.findall(r"^(\S+)\s+(Conv2d|Linear)$", out, re.M) == [("conv1", "Conv2d"), ("conv2", "Conv2d"),
                                                                   ("fc1", "Linear"), ("fc2", "Linear")]
    png = folder_of(tmp_path) / "simplenet_mnist.png"
    assert f"model graph: {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_png_without_matplotlib_says_what_to_install(app, capsys, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    line = error_line(app, capsys, "--summary", "png", "-o", str(tmp_path))
    assert line == ("compress_classifier.py: error: --summary png draws with matplotlib, which is not installed: "
                    "pip install matplotlib")


def test_summary_compute_counts_masked_zeros_apart_from_structures(app, capsys, trained):
    out = run(app, capsys, "--summary", "compute", "--exp-load-weights-from", str(trained))
    state = torch.load(trained, weights_only=True)["state_dict"]
    dense = 64 * 300 + 300 * 100 + 100 * 10
    nonzero = sum(int(torch.count_nonzero(state[f"fc{i}.weight"])) for i in (1, 2, 3))
    assert nonzero < dense
    total = re.search(r"^Total\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)$", out, re.M)
    assert [int(v.replace(",", "")) for v in total.groups()] == [dense, dense, nonzero, dense, dense, nonzero]
    assert (f"MACs: dense {dense:,}; removed structures 0 (0.00%); zeros {dense - nonzero:,} "
            f"({100 * (dense - nonzero) / dense:.2f}%); left {nonzero:,}") in out


def resnet20_spatial(name: str) -> int:
    """Output positions of a ResNet-20 layer on 32x32 CIFAR images: 32x32 in the stem and stage 1, then halved."""
    if name == "fc":
        return 1
    stage = int(name[5]) if name.startswith("layer") else 1
    return (32 // 2 ** (stage - 1)) ** 2


def test_summary_compute_after_resnet20_filter_thinning_reports_the_removed_macs_exactly(app, capsys, tmp_path):
    path = CORPUS / "agp-pruning" / "resnet20_filters.schedule_agp.yaml"
    if not path.is_file():
        pytest.skip(f"the Distiller schedule corpus is not at {CORPUS}")
    torch.manual_seed(0)
    model = models.create_model("resnet20_cifar")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScheduleWarning)
        sched = hookprune.load(path, model, optimizer)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([3, 7])
    testing.train(sched, model, optimizer, [(x, y)], epochs=31)  # the net_thinner acts at epoch 30
    assert len(model.thinning_recipes) == 1
    checkpoint = save_checkpoint(30, "resnet20_cifar", model, scheduler=sched, dir=tmp_path)

    out = run(app, capsys, "-a", "resnet20_cifar", "--summary", "compute", "--exp-load-weights-from", str(checkpoint))
    dense_model = models.create_model("resnet20_cifar")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    dense = sum(m.weight.numel() * resnet20_spatial(n) for n, m in dense_model.named_modules()
                if isinstance(m, nn.Conv2d | nn.Linear))
    thinned = sum(m.weight.numel() * resnet20_spatial(n) for n, m in layers.items())
    nonzero = sum(int(torch.count_nonzero(m.weight)) * resnet20_spatial(n) for n, m in layers.items())
    assert dense == 40_813_184 and thinned < dense and nonzero < thinned
    assert (f"MACs: dense {dense:,}; removed structures {dense - thinned:,} ({100 * (dense - thinned) / dense:.2f}%); "
            f"zeros {thinned - nonzero:,} ({100 * (thinned - nonzero) / dense:.2f}%); left {nonzero:,}") in out
    for name, module in layers.items():
        row = re.search(rf"^{re.escape(name)}\s+\S+\s+\(.*?\)\s+(.*)$", out, re.M).group(1).replace(",", "").split()
        assert int(row[1]) == module.weight.numel() and int(row[4]) == module.weight.numel() * resnet20_spatial(name)


# -- post-training quantization ----------------------------------------------------------------------------------


def test_quantize_eval_from_the_command_line_keeps_accuracy_and_calibrates(app, capsys, tmp_path, trained):
    float_top1 = top1_of(run(app, capsys, "--evaluate", "--exp-load-weights-from", str(trained),
                             "-o", str(tmp_path / "float")))
    out = run(app, capsys, "--evaluate", "--qe", "--exp-load-weights-from", str(trained), "-o", str(tmp_path / "q8"))
    assert ("post-training quantization: activations 8 bits, weights 8 bits, accumulator 32 bits, mode "
            "SYMMETRIC/SYMMETRIC, clipping NONE, activation ranges from each batch (dynamic)") in out
    assert abs(top1_of(out) - float_top1) <= 1.0

    out = run(app, capsys, "--evaluate", "--quantize-eval", "--qe-mode", "asym_u", "--qe-bits-acts", "6",
              "--qe-bits-wts", "6", "--qe-per-channel", "--qe-clip-acts", "avg", "--qe-calibration", "0.25",
              "--exp-load-weights-from", str(trained), "-o", str(tmp_path / "calibrated"))
    assert ("activations 6 bits, weights 6 bits per channel, accumulator 32 bits, mode ASYMMETRIC_UNSIGNED/"
            "ASYMMETRIC_UNSIGNED, clipping AVG, activation ranges from calibration statistics") in out
    stats_file = folder_of(tmp_path / "calibrated") / "acts_quantization_stats.yaml"
    stats = load_stats(stats_file)
    assert set(stats) == {"fc1", "relu1", "fc2", "relu2", "fc3"}
    calibrated = top1_of(out)
    assert abs(calibrated - float_top1) <= 3.0

    again = run(app, capsys, "--evaluate", "--qe", "--qe-mode", "asym_u", "--qe-bits-acts", "6", "--qe-bits-wts", "6",
                "--qe-per-channel", "--qe-clip-acts", "avg", "--qe-stats-file", str(stats_file),
                "--exp-load-weights-from", str(trained), "-o", str(tmp_path / "from-file"))
    assert top1_of(again) == calibrated, "the saved statistics give the calibrated run's quantization"

    config = tmp_path / "ptq.yaml"
    config.write_text(yaml.safe_dump({"quantizers": {"post_train_quantizer": {
        "class": "PostTrainLinearQuantizer", "bits_activations": 6, "bits_parameters": 6, "mode": "ASYMMETRIC_UNSIGNED",
        "clip_acts": "AVG", "per_channel_wts": True, "model_activation_stats": str(stats_file)}}}))
    from_config = run(app, capsys, "--evaluate", "--qe", "--qe-config-file", str(config),
                      "--exp-load-weights-from", str(trained), "-o", str(tmp_path / "config"))
    assert top1_of(from_config) == calibrated


def test_calibration_alone_writes_the_statistics_and_exits(app, capsys, tmp_path, trained):
    out = run(app, capsys, "--qe-calibration", "0.1", "--exp-load-weights-from", str(trained), "-o", str(tmp_path))
    assert "Test top-1" not in out
    assert set(load_stats(folder_of(tmp_path) / "acts_quantization_stats.yaml")) == {"fc1", "relu1", "fc2", "relu2",
                                                                                    "fc3"}


def test_a_config_file_without_a_post_training_quantizer_is_refused(app, capsys, tmp_path, trained):
    config = tmp_path / "none.yaml"
    config.write_text("quantizers:\n  q:\n    class: QuantAwareTrainRangeLinearQuantizer\n")
    line = error_line(app, capsys, "--evaluate", "--qe", "--qe-config-file", str(config),
                      "--exp-load-weights-from", str(trained), "-o", str(tmp_path / "out"))
    assert "needs the optimizer" in line or "must hold one PostTrainLinearQuantizer, it holds 0" in line


# -- thinnify and greedy -----------------------------------------------------------------------------------------


def test_thinnify_removes_zero_filters_saves_a_loadable_model_and_keeps_its_outputs(app, capsys, tmp_path):
    torch.manual_seed(0)
    model = models.create_model("simplenet_mnist")
    with torch.no_grad():   # pruned filters, their biases with them: thinning then keeps every output
        model.conv1.weight[[1, 4, 7]] = 0
        model.conv1.bias[[1, 4, 7]] = 0
        model.conv2.weight[::2] = 0
        model.conv2.bias[::2] = 0
    source = save_checkpoint(0, "simplenet_mnist", model, dir=tmp_path, name="zeros")
    out = run(app, capsys, "-a", "simplenet_mnist", "--thinnify", "--verbose", "--exp-load-weights-from",
              str(source), "-o", str(tmp_path / "thin"))
    thinned = folder_of(tmp_path / "thin") / "simplenet_mnist_thinned_checkpoint.pth.tar"
    assert f"thinned model: {thinned}" in out
    state = torch.load(thinned, weights_only=True)
    assert tuple(state["state_dict"]["conv1.weight"].shape) == (17, 1, 5, 5)
    assert tuple(state["state_dict"]["conv2.weight"].shape) == (25, 17, 5, 5)
    assert tuple(state["state_dict"]["fc1.weight"].shape) == (500, 400)
    before = sum(p.numel() for p in model.parameters())
    after = sum(t.numel() for t in state["state_dict"].values())
    assert f"thinned: {before:,} -> {after:,} parameters" in out

    fresh = models.create_model("simplenet_mnist")
    load_weights(fresh, thinned, "simplenet_mnist")
    x = torch.randn(4, 1, 28, 28)
    model.eval()
    fresh.eval()
    torch.testing.assert_close(fresh(x), model(x), rtol=1e-5, atol=1e-5)


def test_verbose_prints_the_librarys_debug_messages(app, capsys, tmp_path):
    torch.manual_seed(0)
    model = models.create_model("simplenet_mnist")
    with torch.no_grad():
        model.conv1.weight[0] = 0
    source = save_checkpoint(0, "simplenet_mnist", model, dir=tmp_path, name="zeros")
    argv = ["-a", "simplenet_mnist", "--thinnify", "--exp-load-weights-from", str(source)]
    assert app([*argv, "--verbose", "-o", str(tmp_path / "a")]) == 0
    assert "hookprune.thinning.remove: remove_filters removed 1 channels from 1 spaces" in capsys.readouterr().err
    assert app([*argv, "-o", str(tmp_path / "b")]) == 0
    assert "remove_filters removed" not in capsys.readouterr().err


class TinyCNN(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(),
                         nn.AvgPool2d(2), nn.Flatten(), nn.Linear(12 * 16, 10))


@pytest.fixture(scope="module")
def digits_cnn():
    """A tiny CNN trained on 600 of the 8x8 digits; the last 397 score it."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8) / 16
    y = torch.tensor(y)
    torch.manual_seed(0)
    model = TinyCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(30):
        loss = nn.functional.cross_entropy(model(x[:600]), y[:600])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, x[1400:], y[1400:]


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return 100 * float((model(x).argmax(1) == y).float().mean())


def test_greedy_pruning_removes_the_filters_that_hurt_least_until_the_target_density(digits_cnn):
    trained, x, y = digits_cnn
    model = copy.deepcopy(trained)
    example = x[:1]
    score = lambda m: accuracy(m, x, y)  # noqa: E731
    dense_macs = 8 * 9 * 64 + 12 * 8 * 9 * 64 + 10 * 192
    history = []
    steps = greedy_filter_pruning(model, example, score, target_density=0.5, pruning_step=0.25,
                                  on_step=lambda s: history.append((copy.deepcopy(model), s)))
    assert steps and [s.iteration for s in steps] == list(range(1, len(steps) + 1))
    assert steps[-1].density <= 0.5 < (steps[-2].density if len(steps) > 1 else 1.0)
    conv1, conv2 = model[0], model[2]
    assert steps[-1].macs == conv1.out_channels * 9 * 64 + conv2.out_channels * conv1.out_channels * 9 * 64 \
        + 10 * conv2.out_channels * 16
    assert steps[-1].density == pytest.approx(steps[-1].macs / dense_macs)
    assert accuracy(model, x, y) == steps[-1].score, "the model is the winning candidate"
    assert len(model.thinning_recipes) == len(steps)
    # each step kept the best of the candidates: pruning the other layer instead scores no higher
    before = trained
    for pruned, step in history:
        for layer in ("0", "2"):
            other = copy.deepcopy(before)
            count = max(1, int(0.25 * other.get_submodule(layer).out_channels))
            if prune_weakest_filters(other, layer, count, example):
                assert accuracy(other, x, y) <= step.score
        before = pruned
    assert accuracy(model, x, y) >= accuracy(trained, x, y) - 25


def test_greedy_from_the_command_line_saves_each_iteration_and_reaches_the_density(app, capsys, tmp_path):
    out = run(app, capsys, "-a", "simplenet_mnist", "--greedy", "--greedy-target-density", "0.6",
              "--greedy-pruning-step", "0.3", "--greedy-ft-epochs", "1", "--greedy-finetuning-policy", "linear-grow",
              "--lr", "0.01", "--effective-valid-size", "0.5", "-o", str(tmp_path), "--seed", "0")
    folder = folder_of(tmp_path)
    with (folder / "greedy.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    densities = [float(row["compute_density"]) for row in rows]
    assert densities[-1] <= 0.6 < min(densities[:-1], default=1.0)
    assert densities == sorted(densities, reverse=True)
    assert len(re.findall(r"^greedy iteration \d+: \d+ filters of conv[12] removed", out, re.M)) == len(rows)
    last = sorted(folder.glob("greedy__*_checkpoint.pth.tar"))[-1]
    assert last.name.startswith(f"greedy__{len(rows):03d}__")
    summary = run(app, capsys, "-a", "simplenet_mnist", "--summary", "compute", "--exp-load-weights-from", str(last))
    macs = re.search(r"^Total(?:\s+[\d,]+){4}\s+([\d,]+)", summary, re.M).group(1)
    assert int(macs.replace(",", "")) == int(rows[-1]["macs"])
    assert "Test top-1" in out


# -- reports during training, activation statistics, pretrained weights, split sizes -------------------------------


def test_training_reports_best_scores_masks_confusion_and_activation_statistics(app, capsys, tmp_path):
    out = run(app, capsys, "--compress", str(AGP), "--epochs", "2", "--seed", "0", "--num-best-scores", "2",
              "--masks-sparsity", "--confusion", "--act-stats", "train", "test", "-o", str(tmp_path))
    best = re.findall(r"^==> best \[top-1 (\S+)%.*non-zero weights (\d+)\] on epoch (\d+)$", out, re.M)
    assert [b[2] for b in best] == ["1", "2", "1"], "epoch 2 is sparser, so it ranks first"
    assert len(re.findall(r"^Mask\s+Shape\s+Kept\s+Sparsity$", out, re.M)) == 2
    last = re.findall(r"^fc1\.weight\s+\(300, 64\)\s+(\d+)\s+(\S+)%$", out, re.M)[-1]
    checkpoint = torch.load(folder_of(tmp_path) / "lenet300_100_checkpoint.pth.tar", weights_only=True)
    mask = checkpoint["compression_sched"]["masks_dict"]["fc1.weight"]
    assert int(last[0]) == int(mask.sum()) and float(last[1]) == pytest.approx(100 * (1 - float(mask.float().mean())),
                                                                              abs=0.005)
    matrix = out[out.index("Confusion matrix"):].splitlines()[2:12]
    counts = [[int(v) for v in row.split()[1:11]] for row in matrix]
    assert sum(map(sum, counts)) == 360
    correct = sum(counts[c][c] for c in range(10))
    assert top1_of(out) == pytest.approx(100 * correct / 360, abs=0.005)
    folder = folder_of(tmp_path)
    assert not (folder / "act_stats_valid.yaml").exists()
    test_stats = yaml.safe_load((folder / "act_stats_test.yaml").read_text())
    assert list(test_stats) == ["fc1", "relu1", "fc2", "relu2", "fc3"]
    assert test_stats["fc1"]["shape"] == [300] and test_stats["fc1"]["elements"] == 360 * 300
    assert test_stats["relu1"]["min"] == 0 and 0 < test_stats["relu1"]["sparsity"] < 1
    assert yaml.safe_load((folder / "act_stats_train.yaml").read_text())["fc3"]["elements"] == 2 * 1294 * 10


def test_pretrained_reads_a_local_file_or_the_folder_of_the_environment_variable(app, capsys, tmp_path, trained,
                                                                               monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("HOOKPRUNE_PRETRAINED", raising=False)
    expected = top1_of(run(app, capsys, "--evaluate", "--exp-load-weights-from", str(trained),
                           "-o", str(tmp_path / "a")))
    out = run(app, capsys, "--evaluate", "--pretrained", str(trained), "-o", str(tmp_path / "b"))
    assert f"pretrained weights: {trained}" in out and top1_of(out) == expected

    weights = tmp_path / "weights"
    weights.mkdir()
    torch.save(torch.load(trained, weights_only=True)["state_dict"], weights / "lenet300_100.pth")
    monkeypatch.setenv("HOOKPRUNE_PRETRAINED", str(weights))
    assert top1_of(run(app, capsys, "--evaluate", "--pretrained", "-o", str(tmp_path / "c"))) == expected
    monkeypatch.setenv("HOOKPRUNE_PRETRAINED", str(tmp_path))
    line = error_line(app, capsys, "--evaluate", "--pretrained", "-o", str(tmp_path / "d"))
    assert line == (f"compress_classifier.py: error: --pretrained: no local weights for 'lenet300_100' (looked at "
                    f"{tmp_path}/lenet300_100.pth, {tmp_path}/lenet300_100.pth.tar); give --pretrained PATH or put "
                    "lenet300_100.pth in the folder $HOOKPRUNE_PRETRAINED names (nothing is downloaded)")


def test_effective_split_sizes_keep_the_leading_fractions(app, capsys, tmp_path):
    out = run(app, capsys, "--epochs", "1", "--effective-train-size", "0.5", "--effective-valid-size", "0.5",
              "--effective-test-size", "0.25", "--confusion", "-o", str(tmp_path))
    assert "lenet300_100 on digits (647 training samples of shape (64,))" in out
    matrix = out[out.index("Confusion matrix"):].splitlines()[2:12]
    assert sum(int(v) for row in matrix for v in row.split()[1:11]) == 90
    line = error_line(app, capsys, "--effective-test-size", "0", "-o", str(tmp_path / "bad"))
    assert line == "compress_classifier.py: error: --effective-test-size 0.0: must be a number within (0, 1]"
