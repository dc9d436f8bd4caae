"""The application's deployment options on the digits data: --export-onnx and --qe-convert-pytorch."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_compress_classifier import AGP, app, error_line, run_folder

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

PTQ = """\
quantizers:
  ptq:
    class: PostTrainLinearQuantizer
    bits_activations: 8
    bits_parameters: 8
    mode: SYMMETRIC
    per_channel_wts: true
"""


def best_checkpoint(out: Path) -> Path:
    (ckpt,) = run_folder(out).glob("*_best.pth.tar")
    return ckpt


@pytest.fixture(scope="module")
def pruned_lenet(tmp_path_factory) -> Path:
    """LeNet-300-100 pruned by the README's AGP schedule for 3 epochs on digits, exported to ONNX at the end."""
    out = tmp_path_factory.mktemp("agp")
    result = app("-a", "lenet300_100", "--epochs", "3", "--compress", str(AGP), "--seed", "0", "-o", str(out),
                 "--export-onnx", cwd=out)
    return out, result


def test_export_onnx_writes_the_pruned_model_that_onnx_runtime_runs_like_pytorch(pruned_lenet):
    out, result = pruned_lenet
    path = run_folder(out) / "model.onnx"
    line = re.search(r"exported (\S+) \(float, ([\d,]+) bytes\); ONNX Runtime's outputs on a test batch of 32 differ "
                     r"from PyTorch's by at most (\S+)", result.stdout)
    assert line is not None, result.stdout[-2000:]
    assert Path(line.group(1)) == path and int(line.group(2).replace(",", "")) == path.stat().st_size
    assert float(line.group(3)) < 1e-4
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1] == 64
    weights = [onnx.numpy_helper.to_array(init) for init in onnx.load(path).graph.initializer]
    fc1 = next(w for w in weights if w.shape == (300, 64))
    assert (fc1 == 0).mean() > 0.3  # the masks of the schedule's first epochs are in the file


def test_qe_convert_pytorch_keeps_the_fake_quantized_accuracy_and_exports_qdq(pruned_lenet, tmp_path):
    out, _ = pruned_lenet
    schedule = tmp_path / "ptq.yaml"
    schedule.write_text(PTQ)
    result = app("-a", "lenet300_100", "--evaluate", "--exp-load-weights-from", str(best_checkpoint(out)),
                 "--compress", str(schedule), "--qe-convert-pytorch", "--export-onnx", "int8.onnx", "-o",
                 str(tmp_path), cwd=tmp_path)
    assert "PostTrainLinearQuantizer: calibrated on 10 training batches" in result.stdout
    found = re.search(r"int8 PyTorch model \((\w+) engine.*\): test top-1 (\S+)% against (\S+)% fake-quantized",
                      result.stdout)
    assert found is not None, result.stdout[-2000:]
    real, fake = float(found.group(2)), float(found.group(3))
    assert fake > 85 and abs(real - fake) <= 1
    assert re.search(r"exported \S+int8.onnx \(QDQ \(PostTrainLinearQuantizer\)", result.stdout)
    ops = {node.op_type for node in onnx.load(run_folder(tmp_path) / "int8.onnx").graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert "Traceback" not in result.stderr and "deprecated" not in result.stderr


def test_qe_convert_pytorch_without_a_post_training_quantizer_is_one_line(tmp_path):
    result = app("-a", "lenet300_100", "--epochs", "0", "--qe-convert-pytorch", "-o", str(tmp_path), cwd=tmp_path,
                 check=False)
    assert error_line(result) == ("compress_classifier.py: error: --qe-convert-pytorch converts a post-training "
                                  "quantized model: give --quantize-eval, or a schedule with a "
                                  "PostTrainLinearQuantizer")


def test_quantize_eval_is_the_quantizer_qe_convert_pytorch_converts(pruned_lenet, tmp_path):
    out, _ = pruned_lenet
    result = app("-a", "lenet300_100", "--evaluate", "--exp-load-weights-from", str(best_checkpoint(out)),
                 "--quantize-eval", "--qe-calibration", "0.2", "--qe-convert-pytorch", "-o", str(tmp_path),
                 cwd=tmp_path)
    assert "calibrated on" not in result.stdout  # --qe-calibration's statistics, not the 10 batches' fallback
    found = re.search(r"int8 PyTorch model \((\w+) engine.*\): test top-1 (\S+)% against (\S+)% fake-quantized",
                      result.stdout)
    assert found is not None, result.stdout[-2000:]
    real, fake = float(found.group(2)), float(found.group(3))
    assert fake > 85 and abs(real - fake) <= 1


@pytest.mark.parametrize(("argv", "message"), [
    (["--export-onnx", ""], "--export-onnx '': give a file name (default model.onnx in the run folder)"),
    (["--export-onnx", "--summary"], "--export-onnx with --summary: --summary produces no model to deploy"),
    (["--qe-convert-pytorch", "--sense", "filter"],
     "--qe-convert-pytorch with --sense: --sense produces no model to deploy"),
])
def test_deployment_options_that_cannot_run_are_one_line(tmp_path, argv, message):
    result = app("-a", "lenet300_100", *argv, "-o", str(tmp_path), cwd=tmp_path, check=False)
    assert error_line(result) == f"compress_classifier.py: error: {message}"


def test_export_without_the_onnx_packages_is_one_line(tmp_path):
    blocked = tmp_path / "blocked" / "onnxscript"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('blocked for this test')\n")
    import os

    env = {"PYTHONPATH": os.pathsep.join([str(blocked.parent), os.environ.get("PYTHONPATH", "")])}
    result = app("-a", "lenet300_100", "--epochs", "0", "--export-onnx", "-o", str(tmp_path), cwd=tmp_path,
                 check=False, env=env)
    assert error_line(result) == ("compress_classifier.py: error: ONNX export needs the 'onnxscript' package, which "
                                  "is not installed: pip install 'hookprune[deploy]'")


def test_help_lists_the_deployment_options(tmp_path):
    text = " ".join(app("--help", cwd=tmp_path).stdout.split())
    assert "--export-onnx [PATH]" in text and "--qe-convert-pytorch" in text
