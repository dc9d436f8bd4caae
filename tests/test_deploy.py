"""Deployment: ONNX export (dense, masked, thinned, QDQ), int8 PyTorch models, 2:4 semi-structured weights.

Tolerances. A float file agrees with PyTorch to float32 reassociation (1e-4 here). A QDQ file holds hookprune's
grids and integers (checked exactly below); an activation can still land one step away where ``x / s`` with the
reciprocal rounded to float32 falls on the other side of a rounding tie than Distiller's ``scale * x``, or where a
training quantizer lets a tie round one step past the 8-bit range that QuantizeLinear saturates. The outputs must
therefore agree within 2% of their range, and the predicted classes on at least 99% of the digits.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest
import torch

import hookprune
from hookprune import models, testing
from hookprune.apputils.data_loaders import load_data
from hookprune.deploy import (
    DeployError,
    check_2to4,
    convert_to_pytorch,
    export_onnx,
    onnx_session,
    run_onnx,
    to_grid,
    to_semi_structured,
    unsupported_reason,
)
from hookprune.deploy.errors import require
from hookprune.deploy.grid import INT8, UINT8
from hookprune.quantization import DorefaQuantizer, LinearQuantMode, PostTrainLinearQuantizer, qparams
from hookprune.thinning import remove_filters

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

#: torch 2.14 deprecates its quantized tensors (the int8 modules still run); the warning is torch's
INT8_WARNING = "ignore:torch.quantize_per_tensor:UserWarning"


# -- data and training ---------------------------------------------------------------------------


def loaders(arch: str):
    train, _, test, shape = load_data("digits", arch, batch_size=64, validation_split=0.0, seed=0)
    return train, test, shape


def fit(model, train, schedule=None, epochs=2, lr=0.05):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    sched = hookprune.load(schedule, model, optimizer) if schedule else hookprune.CompressionScheduler(model)
    model.train()
    testing.train(sched, model, optimizer, train, epochs)
    return model.eval(), sched


def batches(loader):
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


def top1(output, y) -> float:
    return 100.0 * float((torch.as_tensor(output).argmax(1) == y).float().mean())


@pytest.fixture(scope="module")
def lenet():
    torch.manual_seed(0)
    train, test, _ = loaders("lenet300_100")
    model, _ = fit(models.create_model("lenet300_100", input_features=64), train, epochs=3, lr=0.1)
    return model, train, test


def post_trained(model, train, **settings):
    model = copy.deepcopy(model)
    quantizer = PostTrainLinearQuantizer(model, **settings)
    quantizer.calibrate([x for x, _ in train][:5])
    quantizer.prepare_model()
    return model.eval(), quantizer


def assert_close_quantized(got, expected):
    got, expected = torch.as_tensor(got), expected.detach()
    spread = float(expected.max() - expected.min())
    assert float((got - expected).abs().max()) <= 0.02 * spread
    assert float((got.argmax(1) == expected.argmax(1)).float().mean()) >= 0.99


# -- grids ---------------------------------------------------------------------------------------


@pytest.mark.filterwarnings(INT8_WARNING)
def test_distiller_parameters_become_the_same_grid_in_torch_convention():
    x = torch.linspace(-1.1, 3.2, 997)
    asym = qparams(8, LinearQuantMode.ASYMMETRIC_UNSIGNED, torch.tensor(-1.0), torch.tensor(3.0))
    assert float(asym.scale) == 63.75 and float(asym.zero_point) == -64  # q = round(63.75 x + 64)
    grid = to_grid(asym, UINT8, "x")
    assert grid.item() == (pytest.approx(1 / 63.75), 64) and (grid.quant_min, grid.quant_max) == (0, 255)
    distiller = torch.clamp(torch.round(asym.scale * x - asym.zero_point), 0, 255)
    q = grid.quantize(x)
    assert torch.equal(q.int_repr().float(), distiller)
    assert torch.allclose(q.dequantize(), (distiller + asym.zero_point) / asym.scale)
    sym = qparams(8, LinearQuantMode.SYMMETRIC, torch.tensor(-2.0), torch.tensor(1.0))
    signed, shifted = to_grid(sym, INT8, "x"), to_grid(sym, UINT8, "x")
    assert signed.item() == (pytest.approx(2 / 127.5), 0) and (signed.quant_min, signed.quant_max) == (-128, 127)
    assert shifted.item()[1] == 128 and (shifted.quant_min, shifted.quant_max) == (0, 255)


def test_a_grid_that_is_not_8_bits_is_refused_in_one_line():
    four = qparams(4, LinearQuantMode.SYMMETRIC, torch.tensor(-1.0), torch.tensor(1.0))
    with pytest.raises(DeployError, match=r"^the weight of 'fc1' is quantized to 4 bits; torch's quantized modules "
                                          r"and ONNX's QuantizeLinear hold 8-bit integers$"):
        to_grid(four, INT8, "the weight of 'fc1'")


def test_a_missing_optional_package_is_one_line(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
    with pytest.raises(DeployError, match=r"^Running an ONNX file needs the 'onnxruntime' package, which is not "
                                          r"installed: pip install 'hookprune\[deploy\]'$"):
        require("onnxruntime", "Running an ONNX file")


# -- ONNX ----------------------------------------------------------------------------------------


def test_dense_and_masked_models_export_and_match_pytorch(lenet, tmp_path):
    model, _, test = lenet
    x, _ = batches(test)
    dense = export_onnx(model, tmp_path / "dense.onnx", x)
    assert dense.max_abs_diff is not None and dense.max_abs_diff < 1e-4
    masks = {"fc1.weight": torch.rand_like(model.fc1.weight) > 0.7}
    masked = export_onnx(model, tmp_path / "masked.onnx", x, masks=masks)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        reference.fc1.weight.mul_(masks["fc1.weight"])
        assert float((torch.from_numpy(run_onnx(masked.path, x)) - reference(x)).abs().max()) < 1e-4
    weights = {init.name: onnx.numpy_helper.to_array(init) for init in onnx.load(masked.path).graph.initializer}
    fc1 = next(w for w in weights.values() if w.shape == (300, 64))
    assert torch.equal(torch.from_numpy(fc1 != 0), masks["fc1.weight"] & (model.fc1.weight != 0))
    assert not torch.equal(model.fc1.weight != 0, masks["fc1.weight"])  # the model itself is left as it was


def test_a_thinned_model_exports_smaller_and_matches(tmp_path):
    torch.manual_seed(0)
    model = models.create_model("simplenet_mnist").eval()
    with torch.no_grad():
        model.conv1.weight[5:].zero_()
        model.conv2.weight[10:].zero_()
    x = torch.rand(8, 1, 28, 28)
    dense = export_onnx(model, tmp_path / "dense.onnx", x)
    remove_filters(model, x[:2])
    assert model.conv1.out_channels == 5 and model.conv2.out_channels == 10
    thinned = export_onnx(model, tmp_path / "thinned.onnx", x)
    assert thinned.max_abs_diff is not None and thinned.max_abs_diff < 1e-4
    assert thinned.size_bytes < dense.size_bytes / 4


def qdq_nodes(path: Path):
    proto = onnx.load(path)
    inits = {init.name: onnx.numpy_helper.to_array(init) for init in proto.graph.initializer}
    return proto, inits


def test_post_training_quantization_exports_as_qdq_on_hookprunes_grids(lenet, tmp_path):
    model, train, test = lenet
    quantized, quantizer = post_trained(model, train, per_channel_wts=True, mode="ASYMMETRIC_UNSIGNED",
                                        clip_acts="AVG")
    x, y = batches(test)
    report = export_onnx(quantized, tmp_path / "ptq.onnx", x, quantizer=quantizer)
    with torch.no_grad():
        expected = quantized(x)
    got = run_onnx(report.path, x)
    assert_close_quantized(got, expected)
    assert abs(top1(got, y) - top1(expected, y)) <= 0.3
    proto, inits = qdq_nodes(report.path)
    ops = [node.op_type for node in proto.graph.node]
    assert ops.count("QuantizeLinear") == 6 and "Gemm" in ops  # each layer's input and output
    first = next(node for node in proto.graph.node if node.op_type == "QuantizeLinear")
    fc1_in = quantizer.layers["fc1"].static_inputs[0]
    assert float(inits[first.input[1]]) == pytest.approx(1 / float(fc1_in.scale))
    assert int(inits[first.input[2]]) == -int(fc1_in.zero_point)
    # fc1's weight is stored as Distiller's integers, one scale per output channel
    w_params = quantizer.layers["fc1"].current_weight
    stored = next(v for v in inits.values() if v.shape == (300, 64))
    assert str(stored.dtype) == "int8"
    view = w_params.scale.reshape(-1, 1)
    expected_q = torch.clamp(torch.round(view * model.fc1.weight - w_params.zero_point.reshape(-1, 1)), 0, 255) - 128
    assert torch.equal(torch.from_numpy(stored.astype("int64")), expected_q.long())
    assert report.size_bytes < export_onnx(model, tmp_path / "f.onnx", x, check=False).size_bytes / 2.5


def test_quantization_aware_training_exports_as_qdq(tmp_path):
    torch.manual_seed(0)
    train, test, _ = loaders("lenet300_100")
    schedule = {"quantizers": {"q": {"class": "QuantAwareTrainRangeLinearQuantizer", "bits_activations": 8,
                                     "bits_weights": 8, "mode": "SYMMETRIC", "per_channel_wts": True}},
                "policies": [{"quantizer": {"instance_name": "q"}, "starting_epoch": 0, "ending_epoch": 2}]}
    model, sched = fit(models.create_model("lenet300_100", input_features=64), train, schedule, lr=0.1)
    x, _ = batches(test)
    report = export_onnx(model, tmp_path / "qat.onnx", x, quantizer=sched.instances["q"])
    with torch.no_grad():
        assert_close_quantized(run_onnx(report.path, x), model(x))


def test_quantizers_without_an_affine_grid_are_refused(lenet, tmp_path):
    model = copy.deepcopy(lenet[0])
    quantizer = DorefaQuantizer(model, None, bits_activations=8, bits_weights=8)
    quantizer.prepare_model()
    with pytest.raises(DeployError, match=r"^DorefaQuantizer: QDQ export and int8 conversion know the range-linear "
                                          r"quantizers"):
        export_onnx(model, tmp_path / "d.onnx", torch.rand(2, 64), quantizer=quantizer)


def test_post_training_quantization_on_each_batch_range_cannot_be_exported(lenet, tmp_path):
    model = copy.deepcopy(lenet[0])
    quantizer = PostTrainLinearQuantizer(model)
    quantizer.prepare_model()
    with pytest.raises(DeployError, match=r"^PostTrainLinearQuantizer without calibration statistics takes its "
                                          r"ranges from each batch, which no file can hold"):
        export_onnx(model, tmp_path / "d.onnx", torch.rand(2, 64), quantizer=quantizer)


# -- int8 PyTorch --------------------------------------------------------------------------------


@pytest.mark.filterwarnings(INT8_WARNING)
def test_int8_model_keeps_the_fake_quantized_accuracy(lenet):
    model, train, test = lenet
    quantized, quantizer = post_trained(model, train)
    int8 = convert_to_pytorch(quantized, quantizer)
    x, y = batches(test)
    with torch.no_grad():
        fake, real = top1(quantized(x), y), top1(int8(x), y)
    assert fake > 90 and abs(real - fake) <= 1
    fc1 = int8.fc1
    assert isinstance(fc1, torch.ao.nn.intrinsic.quantized.LinearReLU)  # fused with relu1
    assert isinstance(int8.fc3, torch.ao.nn.quantized.Linear)
    w_params = quantizer.layers["fc1"].current_weight
    distiller = torch.clamp(torch.round(w_params.scale * model.fc1.weight), -128, 127)
    assert torch.equal(fc1.weight().int_repr().float(), distiller)
    assert fc1.weight().q_scale() == pytest.approx(1 / float(w_params.scale))


@pytest.mark.filterwarnings(INT8_WARNING)
def test_int8_resnet_adds_its_shortcuts_in_int8():
    torch.manual_seed(0)
    model = models.create_model("resnet20_cifar").eval()
    x = torch.rand(16, 3, 32, 32)
    quantizer = PostTrainLinearQuantizer(model)
    quantizer.calibrate([x])
    quantizer.prepare_model()
    int8 = convert_to_pytorch(model, quantizer)
    adds = [node for node in int8.graph.nodes if node.target is torch.ops.quantized.add]
    assert len(adds) == 9
    with torch.no_grad():
        assert float((int8(x) - model(x)).abs().max()) < 0.1 * float(model(x).abs().max())


def test_int8_conversion_needs_post_training_quantization(lenet):
    model = copy.deepcopy(lenet[0])
    quantizer = DorefaQuantizer(model, None, bits_activations=8, bits_weights=8)
    with pytest.raises(DeployError, match=r"^DorefaQuantizer: an int8 PyTorch model is made from a post-training "
                                          r"quantized one \(PostTrainLinearQuantizer\)$"):
        convert_to_pytorch(model, quantizer)


# -- 2:4 semi-structured sparsity ------------------------------------------------------------------


def test_2to4_weights_from_an_nm_schedule_pass_the_check_and_others_are_refused():
    torch.manual_seed(0)
    model = models.create_model("lenet300_100", input_features=64)
    with pytest.raises(DeployError, match=r"^'fc2.weight' is not 2:4 sparse: 7500 of its 7500 groups of 4 "
                                          r"consecutive inputs hold more than 2 non-zeros \(prune it with "
                                          r"NMSparsityPruner n=2 m=4 first\)$"):
        check_2to4(model.fc2.weight, "fc2.weight")
    schedule = {"pruners": {"nm": {"class": "NMSparsityPruner", "n": 2, "m": 4,
                                   "weights": ["fc1.weight", "fc2.weight", "fc3.weight"]}},
                "policies": [{"pruner": {"instance_name": "nm"}, "epochs": [0]}]}
    sched = hookprune.load(schedule, model)
    sched.fire("on_epoch_begin", epoch=0)
    sched.fire("on_minibatch_begin", epoch=0, minibatch_id=0, minibatches_per_epoch=1)
    for name in ("fc1", "fc2", "fc3"):
        check_2to4(getattr(model, name).weight, f"{name}.weight")
    with pytest.raises(DeployError, match=r"^'fc1.weight' has 63 inputs, not a multiple of 4"):
        check_2to4(torch.zeros(8, 63), "fc1.weight")


def test_semi_structured_conversion_is_refused_on_the_cpu_in_one_line():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert unsupported_reason("cpu") == ("2:4 semi-structured sparse weights need a CUDA GPU of compute capability "
                                         "8.0 or later (sparse tensor cores); the device is cpu")
    model = models.create_model("lenet300_100", input_features=64)
    with pytest.raises(DeployError, match=r"^2:4 semi-structured sparse weights need a CUDA GPU .*the device is cpu$"):
        to_semi_structured(model)


# -- the whole path: filter pruning, thinning, int8, ONNX Runtime -----------------------------------


FILTERS_AND_THINNING = {
    "pruners": {"filters": {"class": "L1RankedStructureParameterPruner", "group_type": "Filters",
                            "desired_sparsity": 0.7, "weights": ["conv1.weight", "conv2.weight"]}},
    "extensions": {"thinner": {"class": "FilterRemover", "thinning_func_str": "remove_filters",
                               "arch": "simplenet_mnist", "dataset": "mnist"}},
    "policies": [{"pruner": {"instance_name": "filters"}, "epochs": [1]},
                 {"extension": {"instance_name": "thinner"}, "epochs": [2]}],
}


def latency_ms(run, x, repeats=20) -> float:
    run(x)
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - tic)
    return 1e3 * sorted(times)[len(times) // 2]


@pytest.mark.filterwarnings(INT8_WARNING)
def test_filter_pruned_thinned_int8_onnx_model_keeps_accuracy_in_onnx_runtime(tmp_path, capsys):
    torch.manual_seed(0)
    train, test, _ = loaders("simplenet_mnist")
    dense, _ = fit(models.create_model("simplenet_mnist"), train, epochs=2, lr=0.02)
    model, _ = fit(copy.deepcopy(dense), train, FILTERS_AND_THINNING, epochs=4, lr=0.02)
    assert (model.conv1.out_channels, model.conv2.out_channels) == (6, 15)
    quantized, quantizer = post_trained(model, train)
    x, y = batches(test)
    with torch.no_grad():
        pytorch_top1 = top1(quantized(x), y)
    dense_file = export_onnx(dense, tmp_path / "dense.onnx", x, check=False)
    small = export_onnx(quantized, tmp_path / "thinned_int8.onnx", x, quantizer=quantizer)
    session, dense_session = onnx_session(small.path, threads=1), onnx_session(dense_file.path, threads=1)
    ort_top1 = top1(run_onnx(session, x), y)
    assert pytorch_top1 > 90 and abs(ort_top1 - pytorch_top1) <= 1
    assert small.size_bytes < dense_file.size_bytes / 8  # 30% of the conv filters, fc1 with them, 1 byte a weight
    batch = x[:32]
    times = {"dense": latency_ms(lambda b: run_onnx(dense_session, b), batch),
             "thinned+int8": latency_ms(lambda b: run_onnx(session, b), batch)}
    with capsys.disabled():
        print(f"\nsimplenet_mnist on digits, ONNX Runtime, batch 32: dense {dense_file.size_bytes} bytes "
              f"{times['dense']:.2f} ms; thinned+int8 {small.size_bytes} bytes {times['thinned+int8']:.2f} ms; "
              f"top-1 PyTorch {pytorch_top1:.2f}%, ONNX Runtime {ort_top1:.2f}%")
