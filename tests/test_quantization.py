"""Quantization: the fake-quantized arithmetic against an independent float64 reference, overrides, PACT's clip
values, accuracy on real data, pruning together with quantization, resume, statistics and schedule errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

import hookprune
from hookprune import ScheduleError, models
from hookprune.quantization import (
    LearnedClippedLinearQuantization,
    PACTQuantizer,
    PostTrainLinearQuantizer,
    QuantAwareTrainRangeLinearQuantizer,
    collect_activation_stats,
    load_stats,
    save_stats,
)
from hookprune.testing import random_batches, train

MODES = ["SYMMETRIC", "SYMMETRIC_RESTRICTED", "ASYMMETRIC_UNSIGNED", "ASYMMETRIC_SIGNED"]


def reference(t: torch.Tensor, bits: int, mode: str, low: torch.Tensor, high: torch.Tensor):
    """Distiller's affine quantization of ``t`` over ``[low, high]`` in float64, written out independently:
    ``q = clamp(round(s * t - zp))``, ``t' = (q + zp) / s``. Returns ``t'`` and the step ``1 / s``."""
    t, low, high = t.double(), low.double(), high.double()
    half = 2 ** (bits - 1)
    if mode.startswith("SYMMETRIC"):
        n = half - 1 if mode == "SYMMETRIC_RESTRICTED" else (2**bits - 1) / 2
        sat = torch.maximum(low.abs(), high.abs())
        sat = torch.where(sat == 0, torch.full_like(sat, n), sat)
        s, zp = n / sat, torch.zeros_like(sat)
        qmin, qmax = (-(half - 1) if mode == "SYMMETRIC_RESTRICTED" else -half), half - 1
    else:
        n = 2**bits - 1
        low, high = low.clamp(max=0), high.clamp(min=0)
        diff = torch.where(high - low == 0, torch.full_like(low, n), high - low)
        s = n / diff
        zp = torch.round(s * low)
        qmin, qmax = 0, n
        if mode == "ASYMMETRIC_SIGNED":
            zp, qmin, qmax = zp + half, -half, half - 1
    q = torch.clamp(torch.round(s * t - zp), qmin, qmax)
    return (q + zp) / s, 1 / s


def per_channel_view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1))) if v.dim() else v


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_fake_quantized_forward_matches_float64_reference(mode, per_channel, kind):
    torch.manual_seed(0)
    layer = nn.Linear(24, 16) if kind == "linear" else nn.Conv2d(3, 8, 3)
    model = nn.Sequential(layer)
    x = torch.randn(5, 24) if kind == "linear" else torch.randn(2, 3, 9, 9)
    quantizer = QuantAwareTrainRangeLinearQuantizer(model, bits_activations=None, bits_weights=4, bits_bias=None,
                                                    mode=mode, per_channel_wts=per_channel)
    quantizer.prepare_model()
    w = layer.weight.detach()
    if per_channel:
        flat = w.reshape(w.shape[0], -1)
        low, high = flat.amin(1), flat.amax(1)
    else:
        low, high = w.min(), w.max()
    w_ref, step = reference(w, 4, mode, per_channel_view(low, w), per_channel_view(high, w))
    w_q = quantizer.quantized_params()["0.weight"].double()
    step_full = torch.broadcast_to(step, w.shape)
    assert torch.all((w_q - w_ref).abs() <= step_full * (1 + 1e-6))
    assert ((w_q - w_ref).abs() <= 1e-5 * step_full).float().mean() >= 0.99
    assert len(torch.unique(w_q)) <= (16 * w.shape[0] if per_channel else 16)

    y = model(x).double()
    b = layer.bias.detach().double()
    if kind == "linear":
        y_ref = F.linear(x.double(), w_ref, b)
        bound = x.double().abs().sum(1, keepdim=True) * step.reshape(1, -1)
    else:
        y_ref = F.conv2d(x.double(), w_ref, b)
        bound = F.conv2d(x.double().abs(), torch.ones_like(w_ref)) * step.reshape(1, -1, 1, 1)
    assert torch.all((y - y_ref).abs() <= bound + 1e-9)
    assert not torch.equal(y, F.linear(x, w, layer.bias).double() if kind == "linear"
                           else F.conv2d(x, w, layer.bias).double())


@pytest.mark.parametrize("mode", MODES)
def test_ema_activation_quantization_matches_reference(mode):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU())
    quantizer = QuantAwareTrainRangeLinearQuantizer(model, bits_activations=3, bits_weights=None, bits_bias=None,
                                                    mode=mode, quantize_inputs=False)
    quantizer.prepare_model()
    x = torch.randn(16, 10)
    out = model(x).double()
    relu = torch.relu(model[0](x)).detach()
    # one training step: the bias-corrected EMA equals this batch's range
    ref, step = reference(relu, 3, mode, relu.min(), relu.max())
    assert torch.all((out - ref).abs() <= step + 1e-6)
    assert ((out - ref).abs() <= 1e-6).float().mean() >= 0.99
    assert len(torch.unique(out)) <= 8
    tracker = quantizer.activation_quantizers["1"]
    assert float(tracker.tracked_max) == pytest.approx(float(relu.max()), rel=1e-6)
    assert float(tracker.iter_count) == 1.0


def test_post_training_layer_matches_reference_grid():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 6))
    x = torch.randn(7, 12)
    stats = {"0": {"inputs": {0: {"min": -2.0, "max": 3.0, "avg_min": -1.0, "avg_max": 2.0, "mean": 0.0, "std": 1.0,
                                  "b": 0.8}},
                   "output": {"min": -1.5, "max": 2.5, "avg_min": -1.0, "avg_max": 2.0, "mean": 0.0, "std": 1.0,
                              "b": 0.8}}}
    quantizer = PostTrainLinearQuantizer(model, bits_activations=6, bits_parameters=6, bits_accum=32,
                                         mode="asymmetric_unsigned", model_activation_stats=stats)
    quantizer.prepare_model()
    with torch.no_grad():
        y = model(x).double()
    x_ref, _ = reference(x, 6, "ASYMMETRIC_UNSIGNED", torch.tensor(-2.0), torch.tensor(3.0))
    w = model[0].weight.detach()
    w_ref, _ = reference(w, 6, "ASYMMETRIC_UNSIGNED", w.min(), w.max())
    pre = F.linear(x_ref, w_ref, model[0].bias.detach().double())
    y_ref, step = reference(pre, 6, "ASYMMETRIC_UNSIGNED", torch.tensor(-1.5), torch.tensor(2.5))
    assert torch.all((y - y_ref).abs() <= step + 1e-6)
    assert ((y - y_ref).abs() <= 1e-6).float().mean() >= 0.95
    assert float(y.min()) >= -1.5 - float(step) - 1e-6 and float(y.max()) <= 2.5 + float(step) + 1e-6


def test_overrides_first_match_wins_and_an_exact_name_beats_patterns(lenet, tmp_path):
    path = tmp_path / "q.yaml"
    path.write_text(
        "quantizers:\n"
        "  q:\n"
        "    class: QuantAwareTrainRangeLinearQuantizer\n"
        "    bits_activations: 8\n"
        "    bits_weights: 8\n"
        "    bits_bias: null\n"
        "    overrides:\n"
        "      fc[12]: {bits_weights: 3}\n"
        "      fc.*: {bits_weights: 2, bits_activations: null}\n"
        "      fc2: {bits_weights: 5}\n"
        "      relu.*: {bits_activations: 4}\n"
        "policies:\n"
        "  - quantizer: {instance_name: q}\n"
        "    starting_epoch: 0\n"
        "    ending_epoch: 2\n")
    sched = hookprune.load(path, lenet, torch.optim.SGD(lenet.parameters(), lr=0.1))
    quantizer = sched.instances["q"]
    bits = {name: s.qbits for name, s in quantizer.module_settings.items() if name}
    assert bits["fc1"].wts == 3 and bits["fc1"].acts == 8       # the first pattern that matches
    assert bits["fc2"].wts == 5 and bits["fc2"].acts == 8       # the exact name, although listed last
    assert bits["fc3"].wts == 2 and bits["fc3"].acts is None    # only 'fc.*' matches
    assert bits["relu1"].acts == 4 and bits["relu1"].wts is None
    levels = {name: len(torch.unique(q)) for name, q in quantizer.quantized_params().items()}
    assert set(levels) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert levels["fc1.weight"] <= 8 and levels["fc2.weight"] <= 32 and levels["fc3.weight"] <= 4
    assert levels["fc2.weight"] > 8


def test_schedule_errors_name_the_argument(lenet, tmp_path):
    optimizer = torch.optim.SGD(lenet.parameters(), lr=0.1)
    path = tmp_path / "bad.yaml"
    path.write_text("quantizers:\n  q:\n    class: QuantAwareTrainRangeLinearQuantizer\n    mode: SYMETRIC\n")
    with pytest.raises(ScheduleError, match=r"bad.yaml:4:11: quantizers.q \(QuantAwareTrainRangeLinearQuantizer\): "
                                            r"'mode' must be one of SYMMETRIC, SYMMETRIC_RESTRICTED, "
                                            r"ASYMMETRIC_UNSIGNED, ASYMMETRIC_SIGNED \(case-insensitive\), "
                                            r"got 'SYMETRIC'"):
        hookprune.load(path, lenet, optimizer)
    path.write_text("quantizers:\n  q:\n    class: PACTQuantizer\n    overrides:\n      fc1: {clip_acts: AVG}\n")
    with pytest.raises(ScheduleError, match=r"bad.yaml:5:7: .*overrides\['fc1'\]: PACTQuantizer takes no override "
                                            r"'clip_acts'; overrides take: bits_activations, bits_weights, bits_bias"):
        hookprune.load(path, lenet, optimizer)
    path.write_text("quantizers:\n  q:\n    class: PostTrainLinearQuantizer\n    clip_acts: N_STD\n")
    with pytest.raises(ScheduleError, match=r"bad.yaml:4:16: .*clip_acts N_STD needs clip_n_stds"):
        hookprune.load(path, lenet)
    for spelling in ("asym_u", "Asymmetric_Signed", "sym"):
        QuantAwareTrainRangeLinearQuantizer(copy.deepcopy(lenet), mode=spelling)
    QuantAwareTrainRangeLinearQuantizer(copy.deepcopy(lenet), mode={"activations": "asym_u", "weights": "SYMMETRIC"})


def test_pact_clip_value_gets_pact_gradient():
    act = LearnedClippedLinearQuantization(4, 1.0)
    x = torch.tensor([-0.5, 0.0, 0.3, 0.99, 1.0, 2.0, 5.0], requires_grad=True)
    upstream = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    act(x).backward(upstream)
    assert float(act.clip_val.grad) == 5.0 + 6.0 + 7.0            # every element at or above the clip value
    assert x.grad.tolist() == [0.0, 0.0, 3.0, 4.0, 0.0, 0.0, 0.0]  # inside (0, clip)
    levels = act(torch.linspace(-1, 2, 101)).detach()
    assert len(torch.unique(levels)) == 16 and float(levels.max()) == 1.0 and float(levels.min()) == 0.0


def test_pact_clip_values_train_with_their_own_weight_decay(lenet):
    optimizer = torch.optim.SGD(lenet.parameters(), lr=0.1, weight_decay=0.0)
    quantizer = PACTQuantizer(lenet, optimizer, bits_activations=4, bits_weights=None, act_clip_init_val=1e-3,
                              act_clip_decay=0.5)
    quantizer.prepare_model()
    assert len(optimizer.param_groups) == 2
    assert optimizer.param_groups[1]["weight_decay"] == 0.5
    assert optimizer.param_groups[1]["params"] == quantizer.quantization_parameters()
    x = torch.rand(16, 64)
    F.cross_entropy(lenet(x), torch.randint(0, 10, (16,))).backward()
    grads = {name: float(act.clip_val.grad) for name, act in quantizer.activation_quantizers.items()}
    assert set(grads) == {"relu1", "relu2"} and all(g != 0 for g in grads.values())

    model = copy.deepcopy(lenet)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    big = PACTQuantizer(model, optimizer, bits_activations=4, bits_weights=None, act_clip_init_val=1e6,
                        act_clip_decay=0.5)
    big.prepare_model()
    model(torch.rand(4, 64)).sum().backward()
    assert all(float(act.clip_val.grad) == 0 for act in big.activation_quantizers.values())
    optimizer.step()
    assert big.clip_values() == {"relu1": 1e6 * (1 - 0.1 * 0.5), "relu2": 1e6 * (1 - 0.1 * 0.5)}
    with pytest.raises(ValueError, match=r"PACTQuantizer adds parameters to train \(relu1 clip value, relu2 clip "
                                         r"value\): it needs the optimizer"):
        PACTQuantizer(copy.deepcopy(lenet), None, bits_activations=4).prepare_model()


# -- accuracy on scikit-learn's digits ------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    data = sklearn_datasets.load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16
    y = torch.tensor(data.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[perm[:1400]], y[perm[:1400]], x[perm[1400:]], y[perm[1400:]]


def fit(digits, schedule=None, epochs=4):
    x_train, y_train, _, _ = digits
    torch.manual_seed(0)
    model = models.create_model("lenet300_100", input_features=64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = hookprune.load(schedule, model, optimizer) if schedule else hookprune.CompressionScheduler(model)
    for epoch in range(epochs):
        perm = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(epoch))
        steps = range(0, len(perm), 100)
        sched.fire("on_epoch_begin", epoch=epoch)
        for i, start in enumerate(steps):
            idx = perm[start:start + 100]
            step = {"epoch": epoch, "minibatch_id": i, "minibatches_per_epoch": len(steps)}
            sched.fire("on_minibatch_begin", **step)
            loss = sched.fire("before_backward", **step, loss=F.cross_entropy(model(x_train[idx]), y_train[idx]))
            optimizer.zero_grad()
            loss.backward()
            sched.fire("before_optimizer_step", **step)
            optimizer.step()
            sched.fire("on_minibatch_end", **step)
        sched.fire("on_epoch_end", epoch=epoch)
    return model, sched


def accuracy(model, digits):
    _, _, x_test, y_test = digits
    model.eval()
    with torch.no_grad():
        return 100.0 * float((model(x_test).argmax(1) == y_test).float().mean())


@pytest.fixture(scope="module")
def float_lenet(digits):
    model, _ = fit(digits)
    return model, accuracy(model, digits)


def qat_schedule(**settings):
    return {"quantizers": {"q": {"class": "QuantAwareTrainRangeLinearQuantizer", "bits_activations": 8,
                                 "bits_weights": 8, **settings}},
            "policies": [{"quantizer": {"instance_name": "q"}, "starting_epoch": 0, "ending_epoch": 4}]}


def test_8bit_quantization_aware_training_keeps_float_accuracy(digits, float_lenet):
    _, float_top1 = float_lenet
    assert float_top1 > 90
    model, sched = fit(digits, qat_schedule(mode="ASYMMETRIC_UNSIGNED", per_channel_wts=True))
    assert accuracy(model, digits) >= float_top1 - 1
    weights = sched.instances["q"].quantized_params()["fc1.weight"]
    assert all(len(torch.unique(row)) <= 256 for row in weights)


def test_8bit_post_training_quantization_keeps_float_accuracy(digits, float_lenet, tmp_path):
    trained, float_top1 = float_lenet
    model = copy.deepcopy(trained)
    stats_file = tmp_path / "stats" / "lenet_stats.yaml"
    schedule = {"quantizers": {"ptq": {"class": "PostTrainLinearQuantizer", "bits_activations": 8,
                                       "bits_parameters": 8, "mode": "ASYMMETRIC_UNSIGNED", "clip_acts": "AVG",
                                       "per_channel_wts": True, "model_activation_stats": str(stats_file)}}}
    quantizer = hookprune.load(schedule, model).instances["ptq"]
    with pytest.raises(ValueError, match=r"activation stats file '.*lenet_stats.yaml' does not exist; produce it "
                                         r"with hookprune.quantization.collect_activation_stats\(model, batches\)"):
        quantizer.prepare_model()
    stats_file.parent.mkdir()
    save_stats(collect_activation_stats(model, [digits[0]]), stats_file)
    quantizer = hookprune.load(schedule, model).instances["ptq"]
    quantizer.prepare_model()
    assert accuracy(model, digits) >= float_top1 - 2
    model.eval()
    with torch.no_grad():
        hidden = model.relu1(model.fc1(digits[2]))
    assert len(torch.unique(hidden)) <= 256
    assert not torch.equal(model(digits[2]), trained(digits[2]))
    quantizer.remove()
    assert torch.equal(model(digits[2]), trained(digits[2]))


# -- pruning together with quantization -----------------------------------------------------------


@pytest.mark.parametrize(("quantizer", "fp_copy"), [("QuantAwareTrainRangeLinearQuantizer", True),
                                                    ("QuantAwareTrainRangeLinearQuantizer", False),
                                                    ("DorefaQuantizer", True)])
def test_pruned_weights_stay_zero_after_quantization(lenet, quantizer, fp_copy):
    schedule = {
        "pruners": {"agp": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.05, "final_sparsity": 0.8,
                            "weights": ["fc1.weight", "fc2.weight"]}},
        "quantizers": {"q": {"class": quantizer, "bits_activations": 8, "bits_weights": 8,
                             "train_with_fp_copy": fp_copy, "overrides": {"fc3": {"bits_weights": None}}}},
        "policies": [{"pruner": {"instance_name": "agp"}, "starting_epoch": 0, "ending_epoch": 3},
                     {"quantizer": {"instance_name": "q"}, "starting_epoch": 0, "ending_epoch": 4}],
    }
    optimizer = torch.optim.SGD(lenet.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    sched = hookprune.load(schedule, lenet, optimizer)
    train(sched, lenet, optimizer, random_batches(3), epochs=4)
    quantized = sched.instances["q"].quantized_params()
    for name in ("fc1.weight", "fc2.weight"):
        mask = sched.masks[name]
        assert int((~mask).sum()) == int(0.8 * mask.numel())
        assert torch.count_nonzero(quantized[name][~mask]) == 0
        assert torch.count_nonzero(quantized[name][mask]) > 0.9 * int(mask.sum())
    if not fp_copy:
        assert torch.equal(lenet.fc1.weight.detach(), quantized["fc1.weight"])
        assert len(torch.unique(lenet.fc1.weight.detach())) <= 256


# -- state ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("settings", [
    {"class": "QuantAwareTrainRangeLinearQuantizer", "mode": "ASYMMETRIC_SIGNED", "ema_decay": 0.9},
    {"class": "PACTQuantizer", "act_clip_init_val": 2.0, "act_clip_decay": 1e-2},
])
def test_resume_reproduces_the_next_step_bit_for_bit(settings, tmp_path):
    schedule = {"quantizers": {"q": {"bits_activations": 4, "bits_weights": 4, **settings}},
                "policies": [{"quantizer": {"instance_name": "q"}, "starting_epoch": 0, "ending_epoch": 4}]}

    def fresh():
        torch.manual_seed(0)
        model = models.create_model("lenet300_100", input_features=64)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        return model, optimizer, hookprune.load(schedule, model, optimizer)

    model, optimizer, sched = fresh()
    train(sched, model, optimizer, random_batches(), epochs=3)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "compression_sched": sched.state_dict()}, path)
    train(sched, model, optimizer, random_batches(), epochs=4, start_epoch=3)

    resumed, resumed_optimizer, resumed_sched = fresh()
    checkpoint = torch.load(path, weights_only=True)
    resumed.load_state_dict(checkpoint["model"])
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    resumed_sched.load_state_dict(checkpoint["compression_sched"])
    train(resumed_sched, resumed, resumed_optimizer, random_batches(), epochs=4, start_epoch=3)

    for (name, a), (_, b) in zip(model.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    state, resumed_state = sched.instances["q"].state_dict(), resumed_sched.instances["q"].state_dict()
    assert state["activations"].keys() == {"relu1", "relu2"}
    for name, values in state["activations"].items():
        for key, value in values.items():
            assert torch.equal(value, resumed_state["activations"][name][key]), (name, key)
    x = torch.rand(3, 64)
    assert torch.equal(model(x), resumed(x))


# -- statistics and the corpus --------------------------------------------------------------------


def test_activation_stats_in_distillers_format_round_trip(lenet, tmp_path):
    x = torch.randn(32, 64)
    stats = collect_activation_stats(lenet, [x[:16], (x[16:], torch.zeros(16))])
    assert list(stats) == ["fc1", "relu1", "fc2", "relu2", "fc3"]
    with torch.no_grad():
        pre = lenet.fc1(x)
    relu_in = stats["relu1"]["inputs"][0]     # recorded before the in-place ReLU ran
    assert relu_in["min"] == pytest.approx(float(pre.min()), rel=1e-6)
    assert relu_in["avg_min"] == pytest.approx(float(pre.amin(1).mean()), rel=1e-6)
    assert relu_in["mean"] == pytest.approx(float(pre.double().mean()), rel=1e-6)
    assert relu_in["std"] == pytest.approx(float(pre.double().std(unbiased=False)), rel=1e-6)
    assert relu_in["b"] == pytest.approx(float((pre.double() - pre.double().mean()).abs().mean()), rel=1e-6)
    assert stats["relu1"]["output"]["min"] == 0.0 and relu_in["shape"] == "(16, 300)"
    path = tmp_path / "stats.yaml"
    save_stats(stats, path)
    assert yaml.safe_load(path.read_text())["fc1"]["inputs"][0]["max"] == stats["fc1"]["inputs"][0]["max"]
    assert load_stats(path) == stats


def test_distiller_stats_file_loads(corpus):
    stats = load_stats(corpus / "quantization/post_train_quant/stats/resnet18_quant_stats.yaml")
    assert stats["conv1"]["inputs"][0]["avg_max"] == pytest.approx(2.4849105119705195)
    assert stats["conv1"]["output"]["shape"] == "(256, 64, 112, 112)"
    assert "fc" in stats


def test_corpus_post_training_configs_build_without_their_stats_file(corpus, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    model = models.create_model("resnet18", device="meta")
    for name in ("resnet18_imagenet_post_train.yaml", "resnet18_imagenet_post_train_lapq.yaml",
                 "resnet18_imagenet_post_train_input_overrides.yaml"):
        copy = tmp_path / name
        copy.write_text((corpus / "quantization/post_train_quant" / name).read_text())
        quantizer = hookprune.build(copy, model).instances["post_train_quantizer"]
        assert isinstance(quantizer, PostTrainLinearQuantizer)
        assert quantizer.missing_stats_path == "../quantization/post_train_quant/stats/resnet18_quant_stats.yaml"
        with pytest.raises(ValueError, match=r"resnet18_quant_stats\.yaml' does not exist; produce it with"):
            quantizer.prepare_model()
    lapq = quantizer if name.endswith("lapq.yaml") else hookprune.build(
        corpus / "quantization/post_train_quant/resnet18_imagenet_post_train_lapq.yaml", model).instances[
        "post_train_quantizer"]
    bits = {n: s.qbits for n, s in lapq.module_settings.items()}
    assert bits["layer1.0.conv1"].wts == 4 and bits["layer1.0.conv1"].acts is None
    assert bits["layer4.1.conv2"].wts is None and bits["layer2.0.downsample.0"].wts == 4
    assert lapq.layers["layer1.0.relu"].quantize_inputs is False
    assert lapq.layers["layer1.0.relu"].out.num_bits == 4


@pytest.mark.parametrize("name", ["resnet18_imagenet_post_train.yaml", "resnet18_imagenet_post_train_lapq.yaml",
                                  "resnet18_imagenet_post_train_input_overrides.yaml"])
def test_corpus_post_training_configs_apply_with_the_corpus_stats(corpus, name):
    torch.manual_seed(0)
    model = models.create_model("resnet18").eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)
    quantizer = hookprune.build(corpus / "quantization/post_train_quant" / name, model).instances[
        "post_train_quantizer"]
    assert quantizer.missing_stats_path is None
    quantizer.prepare_model()
    with torch.no_grad():
        quantized = model(x)
    assert torch.isfinite(quantized).all()
    assert not torch.equal(quantized, reference)
    quantized_params = quantizer.quantized_params()
    assert quantized_params
    bits = 8 if "overrides" in name else 6
    for weight in quantized_params.values():
        assert max(channel.unique().numel() for channel in weight) <= 2 ** bits


def test_quantized_input_overrides_follow_distillers_rules():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    x = torch.randn(20, 8)
    stats = collect_activation_stats(model, [x])
    strict = PostTrainLinearQuantizer(copy.deepcopy(model), inputs_quant_auto_fallback=False,
                                      model_activation_stats=stats)
    strict.prepare_model()
    with pytest.raises(RuntimeError, match=r"input 0 of '0' does not come from a quantized module; give "
                                           r"overrides\['0'\].input_overrides\[0\] or set inputs_quant_auto_fallback"):
        strict.model(x)
    fixed = PostTrainLinearQuantizer(copy.deepcopy(model), inputs_quant_auto_fallback=False,
                                     model_activation_stats=stats,
                                     overrides={"0": {"input_overrides": {0: {"from_output": True}}}})
    fixed.prepare_model()
    out = fixed.model(x)
    assert out.shape == (20, 3)
    conflict = PostTrainLinearQuantizer(copy.deepcopy(model), model_activation_stats=stats,
                                        overrides={"1": {"input_overrides": {0: {"clip_acts": "AVG"}}}})
    conflict.prepare_model()
    with pytest.raises(RuntimeError, match=r"input 0 of '1' is already quantized by the module before it"):
        conflict.model(x)


def test_qat_trains_a_model_that_calls_one_relu_twice_per_forward():
    """torchvision's ResNet blocks reuse one ReLU module; its range quantizer runs twice per pass."""
    torch.manual_seed(0)
    model = models.create_model("resnet18", num_classes=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    schedule = {"quantizers": {"q": {"class": "QuantAwareTrainRangeLinearQuantizer", "bits_activations": 8,
                                     "bits_weights": 8, "mode": "ASYMMETRIC_UNSIGNED"}},
                "policies": [{"quantizer": {"instance_name": "q"}, "starting_epoch": 0, "ending_epoch": 2}]}
    sched = hookprune.load(schedule, model, optimizer)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 3])
    for epoch in range(2):
        step = {"epoch": epoch, "minibatch_id": 0, "minibatches_per_epoch": 1}
        sched.fire("on_epoch_begin", epoch=epoch)
        sched.fire("on_minibatch_begin", **step)
        loss = sched.fire("before_backward", **step, loss=F.cross_entropy(model(x), y))
        optimizer.zero_grad()
        loss.backward()
        assert model.conv1.weight.grad is not None and torch.isfinite(model.conv1.weight.grad).all()
        sched.fire("before_optimizer_step", **step)
        optimizer.step()
        sched.fire("on_minibatch_end", **step)
        sched.fire("on_epoch_end", epoch=epoch)
