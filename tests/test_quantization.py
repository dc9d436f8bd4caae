"""Quantization: Distiller's integers at exact and near ties in every mode, the quantizers against an independent
reference of Distiller's arithmetic, overrides, PACT's clip values, accuracy on real data, pruning together with
quantization, resume, statistics and schedule errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

import hookprune
from hookprune import ScheduleError, models
from hookprune.quantization import (
    LearnedClippedLinearQuantization,
    LinearQuantMode,
    PACTQuantizer,
    PostTrainLinearQuantizer,
    QuantAwareTrainRangeLinearQuantizer,
    collect_activation_stats,
    fake_quantize,
    load_stats,
    qparams,
    save_stats,
)
from hookprune.testing import random_batches, train

MODES = ["SYMMETRIC", "SYMMETRIC_RESTRICTED", "ASYMMETRIC_UNSIGNED", "ASYMMETRIC_SIGNED"]


def reference_params(bits: int, mode: str, low: torch.Tensor, high: torch.Tensor):
    """Distiller's scale and zero point for ``[low, high]`` (``q = round(scale * x - zero_point)``), written out
    independently in float32 as Distiller computes them, and its integer range."""
    low, high = torch.as_tensor(low, dtype=torch.float32), torch.as_tensor(high, dtype=torch.float32)
    half = 2 ** (bits - 1)
    if mode.startswith("SYMMETRIC"):
        n = half - 1 if mode == "SYMMETRIC_RESTRICTED" else (2**bits - 1) / 2
        sat = torch.maximum(low.abs(), high.abs())
        scale = n / torch.where(sat == 0, torch.full_like(sat, n), sat)
        qmin = -(half - 1) if mode == "SYMMETRIC_RESTRICTED" else -half
        return scale, torch.zeros_like(scale), qmin, half - 1
    n = 2**bits - 1
    low, high = low.clamp(max=0), high.clamp(min=0)
    scale = n / torch.where(high - low == 0, torch.full_like(low, n), high - low)
    zero_point = torch.round(scale * low)
    if mode == "ASYMMETRIC_SIGNED":
        return scale, zero_point + half, -half, half - 1
    return scale, zero_point, 0, n


def reference(t: torch.Tensor, bits: int, mode: str, low: torch.Tensor, high: torch.Tensor, clamp: bool = True):
    """Distiller's quantization of ``t`` over ``[low, high]``: the integers ``round(scale * t - zero_point)``
    (clamped to the range for post-training quantization; its training quantizers leave them as rounded) and the
    dequantized ``(q + zero_point) / scale``."""
    scale, zero_point, qmin, qmax = reference_params(bits, mode, low, high)
    q = torch.round(scale * t - zero_point)
    if clamp:
        q = torch.clamp(q, qmin, qmax)
    return q, (q + zero_point) / scale


def per_channel_view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1))) if v.dim() else v


def integers(y: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """The integers behind dequantized values."""
    return torch.round(y * scale - zero_point)


def after(value: float, toward: float) -> float:
    """The float32 next to ``value`` in the direction of ``toward``."""
    return float(np.nextafter(np.float32(value), np.float32(toward)))


# -- Distiller's rounding at ties ----------------------------------------------------------------------------------


def test_symmetric_8bit_largest_magnitude_rounds_like_distiller():
    x = torch.tensor([-1.0, 0.5, 0.25])
    params = qparams(8, LinearQuantMode.SYMMETRIC, x.min(), x.max())
    assert params.scale.tolist() == [127.5] and params.zero_point.tolist() == [0.0]
    y = fake_quantize(x, params)
    assert integers(y, params.scale, params.zero_point).tolist() == [-128, 64, 32]
    assert torch.equal(y, torch.tensor([-128.0, 64.0, 32.0]) / 127.5)


# (mode, range, inputs, Distiller's integers). Each input is an exact tie (``scale * x - zero_point`` is a whole
# number and a half in float32), the float32 next to one, or a range end; ties go to the even integer.
TIE_CASES = [
    ("SYMMETRIC", (-1.0, 1.0),  # scale 127.5
     [-1.0, 1.0, 0.2, -0.2, 0.6, after(0.2, 0), after(0.2, 1), after(-0.6, 0), after(-0.6, -1)],
     [-128, 127, 26, -26, 76, 25, 26, -76, -77]),
    ("SYMMETRIC_RESTRICTED", (-1.0, 1.0),  # scale 127
     [-1.0, 1.0, 1.5 / 127, 2.5 / 127, -2.5 / 127, after(2.5 / 127, 1), after(-1.5 / 127, 0)],
     [-127, 127, 2, 2, -2, 3, -1]),
    ("ASYMMETRIC_UNSIGNED", (-1.0, 0.5),  # scale 170, zero point -170
     # 170 * after(0.25, 1) is 42.500004, and adding 170 rounds it onto the tie 212.5
     [-1.0, 0.5, 0.25, after(0.25, 1), after(0.25, 0), -0.25, 0.5 / 170, 1.5 / 170],
     [0, 255, 212, 212, 212, 128, 170, 172]),
    ("ASYMMETRIC_SIGNED", (-1.0, 0.5),  # scale 170, zero point -42
     [-1.0, 0.5, 0.25, after(0.25, 1), after(0.25, 0), -0.25, -43.5 / 170, -44.5 / 170],
     [-128, 127, 84, 84, 84, 0, -2, -2]),
]


@pytest.mark.parametrize(("mode", "bounds", "values", "expected"), TIE_CASES, ids=[c[0] for c in TIE_CASES])
def test_exact_and_near_ties_round_like_distiller(mode, bounds, values, expected):
    x = torch.tensor(values)
    params = qparams(8, LinearQuantMode[mode], torch.tensor(bounds[0]), torch.tensor(bounds[1]))
    scale, zero_point, qmin, qmax = reference_params(8, mode, torch.tensor(bounds[0]), torch.tensor(bounds[1]))
    assert torch.equal(params.scale, scale.reshape(1)) and torch.equal(params.zero_point, zero_point.reshape(1))
    assert (params.quant_min, params.quant_max) == (qmin, qmax)
    y = fake_quantize(x, params)
    assert integers(y, params.scale, params.zero_point).tolist() == expected
    q = torch.tensor(expected, dtype=torch.float32)
    assert torch.equal(y, (q + zero_point) / scale)


def test_per_channel_ties_round_like_distiller():
    w = torch.tensor([[-1.0, 0.2, 0.6, 1.0], [-2.0, 0.4, 1.2, after(0.4, 1)]])
    low, high = w.amin(1), w.amax(1)
    params = qparams(8, LinearQuantMode.SYMMETRIC, low, high, axis=0)
    assert params.scale.tolist() == [127.5, 63.75]
    y = fake_quantize(w, params)
    assert integers(y, params.scale.reshape(-1, 1), 0).tolist() == [[-128, 26, 76, 127], [-128, 26, 76, 26]]
    _, w_ref = reference(w, 8, "SYMMETRIC", low.reshape(-1, 1), high.reshape(-1, 1))
    assert torch.equal(y, w_ref)


def test_training_quantizers_leave_the_integers_unclamped_as_distiller_does():
    """At symmetric mode's range end ``+127.5`` rounds to 128: Distiller's training quantizers keep it and pass the
    gradient; post-training quantization clamps it to 127 and the gradient of a clamped value is zero."""
    x = torch.tensor([1.0, -0.2, 0.5], requires_grad=True)
    params = qparams(8, LinearQuantMode.SYMMETRIC, torch.tensor(-1.0), torch.tensor(1.0))
    trained = fake_quantize(x, params, clamp=False)
    assert integers(trained.detach(), params.scale, 0).tolist() == [128, -26, 64]
    trained.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0]
    x.grad = None
    evaluated = fake_quantize(x, params)
    assert integers(evaluated.detach(), params.scale, 0).tolist() == [127, -26, 64]
    evaluated.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0]

    layer = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -0.2, 0.5]]))
    quantizer = QuantAwareTrainRangeLinearQuantizer(nn.Sequential(layer), bits_activations=None, bits_weights=8,
                                                    bits_bias=None, mode="SYMMETRIC")
    quantizer.prepare_model()
    assert integers(quantizer.quantized_params()["0.weight"], 127.5, 0).tolist() == [[128, -26, 64]]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_fake_quantized_forward_matches_distiller_reference(mode, per_channel, kind):
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
    q_ref, w_ref = reference(w, 4, mode, per_channel_view(low, w), per_channel_view(high, w), clamp=False)
    w_q = quantizer.quantized_params()["0.weight"]
    assert torch.equal(w_q, w_ref)
    assert len(torch.unique(q_ref)) <= (17 * w.shape[0] if per_channel else 17)
    y = model(x)
    b = layer.bias.detach()
    assert torch.equal(y, F.linear(x, w_ref, b) if kind == "linear" else F.conv2d(x, w_ref, b))
    assert not torch.equal(y, F.linear(x, w, b) if kind == "linear" else F.conv2d(x, w, b))


@pytest.mark.parametrize("mode", MODES)
def test_ema_activation_quantization_matches_reference(mode):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU())
    quantizer = QuantAwareTrainRangeLinearQuantizer(model, bits_activations=3, bits_weights=None, bits_bias=None,
                                                    mode=mode, quantize_inputs=False)
    quantizer.prepare_model()
    x = torch.randn(16, 10)
    out = model(x)
    relu = torch.relu(model[0](x)).detach()
    # one training step: the bias-corrected EMA equals this batch's range
    tracker = quantizer.activation_quantizers["1"]
    low, high = tracker.tracked_min.reshape(()), tracker.tracked_max.reshape(())
    if mode.startswith("SYMMETRIC"):
        high = torch.maximum(low.abs(), high.abs())
        low = -high
    _, ref = reference(relu.clamp(low, high), 3, mode, tracker.tracked_min.reshape(()),
                       tracker.tracked_max.reshape(()), clamp=False)
    assert torch.equal(out, ref)
    assert len(torch.unique(out)) <= 9
    assert float(tracker.tracked_max) == pytest.approx(float(relu.max()), rel=1e-6)
    assert float(tracker.iter_count) == 1.0


def reference_post_training_layer(layer: nn.Module, x: torch.Tensor, bits: int, mode: str, per_channel: bool,
                                  stats: dict | None, bits_accum: int = 32) -> torch.Tensor:
    """Distiller's post-training computation of one convolution or linear layer, written out independently:
    integer input and weights with their zero points added, the bias on the accumulator's grid (quantized on its
    own symmetric grid first when no statistics give the ranges), the accumulator clamped to ``bits_accum`` bits,
    and the output requantized from the accumulator with ``output scale / accumulator scale``."""
    accum_min, accum_max = -(2 ** (bits_accum - 1)), 2 ** (bits_accum - 1) - 1
    in_range = (stats["inputs"][0]["min"], stats["inputs"][0]["max"]) if stats else (x.min(), x.max())
    x_scale, x_zp, x_min, x_max = reference_params(bits, mode, *in_range)
    x_int = torch.clamp(torch.round(x_scale * x - x_zp), x_min, x_max) + x_zp
    w = layer.weight.detach()
    flat = w.reshape(w.shape[0], -1)
    view = [-1] + [1] * (w.dim() - 1)
    w_range = (flat.amin(1).reshape(view), flat.amax(1).reshape(view)) if per_channel else (w.min(), w.max())
    w_scale, w_zp, w_min, w_max = reference_params(bits, mode, *w_range)
    w_int = torch.clamp(torch.round(w_scale * w - w_zp), w_min, w_max) + w_zp
    accum_scale = (x_scale * w_scale).reshape(-1)
    b = layer.bias.detach()
    if stats:
        b_int = torch.clamp(torch.round(accum_scale * b), accum_min, accum_max)
    else:
        b_scale, _, _, _ = reference_params(bits_accum, "SYMMETRIC", b.min(), b.max())
        base = torch.clamp(torch.round(b_scale * b), accum_min, accum_max)
        b_int = torch.clamp(torch.round(accum_scale / b_scale * base), accum_min, accum_max)
    linear = isinstance(layer, nn.Linear)
    accum = F.linear(x_int, w_int, b_int) if linear else F.conv2d(x_int, w_int, b_int, padding=layer.padding)
    accum = torch.clamp(accum, accum_min, accum_max)
    if accum_scale.numel() > 1:
        accum_scale = accum_scale.reshape(1, -1) if linear else accum_scale.reshape(1, -1, 1, 1)
    y = accum / accum_scale
    out_range = (stats["output"]["min"], stats["output"]["max"]) if stats else (y.min(), y.max())
    y_scale, y_zp, y_min, y_max = reference_params(bits, mode, *out_range)
    q = torch.clamp(torch.round(y_scale / accum_scale * accum - y_zp), y_min, y_max)
    return (q + y_zp) / y_scale


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("with_stats", [False, True])
def test_post_training_layer_matches_distiller_reference(mode, per_channel, kind, with_stats):
    """Weights, bias, input and output of one layer, bit for bit, on many inputs: the symmetric modes put the
    largest magnitude of each tensor on a tie, which only Distiller's exact operations resolve the same way."""
    torch.manual_seed(0)
    stats = None
    if with_stats:
        stats = {"inputs": {0: {"min": -2.5, "max": 3.0, "avg_min": -1.0, "avg_max": 2.0}},
                 "output": {"min": -1.5, "max": 1.25, "avg_min": -1.0, "avg_max": 1.0}}
    for _ in range(40):
        layer = nn.Linear(6, 4) if kind == "linear" else nn.Conv2d(2, 3, 3, padding=1)
        x = 3 * (torch.randn(3, 6) if kind == "linear" else torch.randn(2, 2, 4, 4))
        expected = reference_post_training_layer(layer, x, 8, mode, per_channel, stats)
        model = nn.Sequential(layer)
        quantizer = PostTrainLinearQuantizer(model, bits_activations=8, bits_parameters=8, bits_accum=32, mode=mode,
                                             per_channel_wts=per_channel,
                                             model_activation_stats={"0": stats} if stats else None)
        quantizer.prepare_model()
        model.eval()
        with torch.no_grad():
            assert torch.equal(model(x), expected)


def test_post_training_gradient_passes_straight_through_except_where_clamped():
    """The layer's values are Distiller's integers; its gradient is the float layer's on the quantized tensors,
    zero for every integer the range clamped (the weight 1.0 and the output 5.0 here)."""
    layer = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(2))
    model = nn.Sequential(layer)
    stats = {"0": {"inputs": {0: {"min": -8.0, "max": 8.0}}, "output": {"min": -1.0, "max": 1.0}}}
    PostTrainLinearQuantizer(model, mode="SYMMETRIC", model_activation_stats=stats).prepare_model()
    x = torch.tensor([[0.1, 5.0]], requires_grad=True)
    y = model(x)
    # input scale 127.5 / 8: 0.1 -> 2, 5.0 -> 80; weight scale 127.5: 1.0 -> 127.5 -> 128, clamped to 127;
    # output 2 * 127 * 127.5 / (15.9375 * 127.5) = 15.9 -> 16, and 80 * 127 / 15.9375 = 637.5 -> 127
    assert integers(y.detach(), 127.5, 0).tolist() == [[16, 127]]
    with torch.no_grad():
        assert torch.equal(model(x), y)
    y.sum().backward()
    w_q = torch.tensor(127.0) / 127.5
    _, x_q = reference(x.detach(), 8, "SYMMETRIC", torch.tensor(-8.0), torch.tensor(8.0))
    assert torch.equal(x.grad, torch.stack([w_q, torch.tensor(0.0)]).reshape(1, 2))
    assert torch.equal(layer.weight.grad, torch.tensor([[0.0, float(x_q[0, 1])], [0.0, 0.0]]))


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
