"""Export a compressed model to ONNX with ``torch.onnx.export``: dense, masked, thinned or fake-quantized.

A masked model is exported with its masks multiplied into the weights, a thinned one as the smaller model it is.
A model quantized by a range-linear quantizer is exported in ONNX's QDQ form: a QuantizeLinear/DequantizeLinear
pair on every tensor the quantizer quantizes, on the quantizer's own grid (:mod:`hookprune.deploy.grid`), and
every quantized weight stored as 8-bit integers feeding a DequantizeLinear; the bias of a layer whose input and
weight are quantized is stored as 32-bit integers on the grid of their product, as hookprune's post-training
quantization computes it. Activations are stored as uint8 (a signed grid shifted by 128: the same grid) and
weights as int8, the combination ONNX Runtime's x86 kernels run fastest; it fuses these patterns into its
integer kernels (QLinearConv, QGemm).

Agreement with PyTorch. A dense, masked or thinned file computes what the model computes, up to float32
reassociation. A QDQ file puts every integer where hookprune puts it, except where ``x / s`` with ``s`` rounded to
float32 lands on the other side of a tie than ``scale * x`` (one step), and at the end of the range, where a
training quantizer lets a tie round one step past the 8-bit range and QuantizeLinear saturates: so a single
activation is at most one step of its grid away, and the outputs usually agree to a few steps of the last grid.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.ao.quantization.fx._decomposed  # registers torch.ops.quantized_decomposed, which export to QDQ
import torch.nn.functional as F
from torch import fx, nn

from hookprune.deploy.errors import DeployError, require
from hookprune.deploy.grid import INT8, UINT8, Grid, to_grid
from hookprune.deploy.plan import MODEL_INPUT, QuantPlan, quant_plan
from hookprune.quantization.affine import QParams
from hookprune.quantization.base import Quantizer

#: ONNX's opset the files are written in (per-channel QDQ needs 13 or later)
OPSET = 18


class QDQ(nn.Module):
    """Quantize and dequantize a tensor on a fixed grid (exported as a QuantizeLinear/DequantizeLinear pair)."""

    def __init__(self, grid: Grid) -> None:
        super().__init__()
        self.grid = grid
        self.per_tensor = grid.item() if grid.axis is None else None
        self.register_buffer("scale", grid.scale.float())
        self.register_buffer("zero_point", grid.zero_point.to(torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid, ops = self.grid, torch.ops.quantized_decomposed
        dtype = torch.uint8 if grid.quant_min >= 0 else torch.int8
        if self.per_tensor is not None:
            scale, zero_point = self.per_tensor
            q = ops.quantize_per_tensor(x, scale, zero_point, grid.quant_min, grid.quant_max, dtype)
            return ops.dequantize_per_tensor(q, scale, zero_point, grid.quant_min, grid.quant_max, dtype)
        assert grid.axis is not None
        q = ops.quantize_per_channel(x, self.scale, self.zero_point, grid.axis, grid.quant_min, grid.quant_max, dtype)
        return ops.dequantize_per_channel(q, self.scale, self.zero_point, grid.axis, grid.quant_min, grid.quant_max,
                                          dtype)


class QDQWeight(nn.Module):
    """A convolution or linear layer whose weight is fake-quantized on a fixed grid in its forward pass."""

    def __init__(self, module: nn.Module, grid: Grid) -> None:
        super().__init__()
        self.layer = module
        self.quantize = QDQ(grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.quantize(self.layer.weight)
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, weight, self.layer.bias)
        return self.layer._conv_forward(x, weight, self.layer.bias)


def activation_grid(params: QParams, what: str) -> Grid:
    """An activation grid as the file stores it: uint8 (a signed grid shifted by 128), the activation type ONNX
    Runtime's x86 integer kernels are fastest with (u8 activations, s8 weights)."""
    return to_grid(params, UINT8, what)


def qdq_module(plan: QuantPlan) -> fx.GraphModule:
    """The plan's float copy with a fake-quantization node on every quantized tensor and quantized weights."""
    gm = plan.graph_module
    graph = gm.graph
    modules = dict(gm.named_modules())

    def qdq(params: QParams, label: str, what: str) -> str:
        name = f"qdq_{label.replace('.', '_') or 'input'}"
        gm.add_submodule(name, QDQ(activation_grid(params, what)))
        return name

    def after(node: fx.Node, target: str) -> None:
        with graph.inserting_after(node):
            new = graph.call_module(target, (node,))
        node.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)

    for node in list(graph.nodes):
        if node.op == "placeholder" and MODEL_INPUT in plan.layers:
            params = plan.layers[MODEL_INPUT].output
            if params is not None and not any(n.op == "call_module" and n.target == "qdq_input" for n in graph.nodes):
                after(node, qdq(params, MODEL_INPUT, "the model's input"))
            continue
        if node.op != "call_module" or node.target not in plan.layers:
            continue
        layer = plan.layers[node.target]
        if layer.input is not None:
            target = qdq(layer.input, f"{node.target}_in", f"the input of '{node.target}'")
            with graph.inserting_before(node):
                node.update_arg(0, graph.call_module(target, (node.args[0],)))
        if layer.weight is not None:
            module = modules[node.target]
            assert layer.weight_values is not None
            with torch.no_grad():
                module.weight.copy_(layer.weight_values)
            grid = to_grid(layer.weight, INT8, f"the weight of '{node.target}'")
            gm.set_submodule(node.target, QDQWeight(module, grid))
        if layer.output is not None:
            after(node, qdq(layer.output, f"{node.target}_out", f"the output of '{node.target}'"))
    graph.lint()
    gm.recompile()
    return gm


@dataclass(frozen=True)
class ExportReport:
    """An exported file: where, its size, and the largest difference of ONNX Runtime's outputs from PyTorch's on
    the example input (None when not checked)."""

    path: Path
    size_bytes: int
    max_abs_diff: float | None
    quantized: bool


def export_onnx(model: nn.Module, path: str | os.PathLike[str], example_input: torch.Tensor, *,
                quantizer: Quantizer | None = None, masks: Mapping[str, torch.Tensor] | None = None,
                check: bool = True) -> ExportReport:
    """Write ``model`` to ``path`` as ONNX (batch size dynamic), in QDQ form when ``quantizer`` is given, with
    ``masks`` (parameter name -> keep mask) folded into the weights; with ``check``, run the file in ONNX Runtime
    on ``example_input`` and report the largest difference from ``model``'s own output."""
    require("onnxscript", "ONNX export")
    onnx = require("onnx", "ONNX export")
    plan = quant_plan(model, quantizer, masks)
    module = qdq_module(plan).cpu() if quantizer is not None else plan.graph_module.cpu()
    example = example_input.detach().cpu()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module.requires_grad_(False)
    batch = torch.export.Dim("batch", min=1)
    try:
        torch.onnx.export(module, (example,), str(path), dynamo=True, opset_version=OPSET, input_names=["input"],
                          output_names=["output"], dynamic_shapes=({0: batch},), verbose=False,
                          external_data=False)
    except Exception as exc:  # the exporter reports unsupported operators in many exception types
        first = " ".join(str(exc).split())[:300]
        raise DeployError(f"torch.onnx.export cannot export {type(plan.graph_module).__name__}: {first}") from None
    proto = onnx.load(str(path))
    strip_metadata(proto)
    if quantizer is not None:
        fold_quantized_initializers(proto)
    onnx.save(proto, str(path))
    diff = None
    if check:
        training = model.training
        with torch.no_grad():
            expected = unwrap_output(model.eval()(example_input))
        model.train(training)
        got = run_onnx(path, example)
        diff = float((torch.from_numpy(got) - expected.detach().float().cpu()).abs().max())
    return ExportReport(path, path.stat().st_size, diff, quantizer is not None)


def unwrap_output(output: Any) -> torch.Tensor:
    """A classifier's output tensor (the first element of a tuple or list)."""
    while isinstance(output, tuple | list):
        output = output[0]
    return output


def onnx_session(path: str | os.PathLike[str], threads: int | None = None) -> Any:
    """An ONNX Runtime session on the CPU for the file at ``path`` (``threads`` intra-op threads)."""
    ort = require("onnxruntime", "Running an ONNX file")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(path: str | os.PathLike[str] | Any, x: torch.Tensor) -> np.ndarray:
    """The first output of the ONNX file at ``path`` (or an open session) on ``x``."""
    session = path if hasattr(path, "run") else onnx_session(path)
    return session.run(None, {session.get_inputs()[0].name: x.detach().cpu().numpy()})[0]


# -- rewriting the exported graph ----------------------------------------------------------------


def strip_metadata(proto: Any) -> None:
    """Drop the exporter's per-node metadata (source locations, stack traces): it serves debugging, not
    inference, and in a QDQ graph of many small nodes it can outweigh the int8 weights."""
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        del value.metadata_props[:]


def fold_quantized_initializers(proto: Any) -> None:
    """Store each fake-quantized weight as the integers QuantizeLinear would produce (an int8 initializer feeding
    the DequantizeLinear), and the bias of a Conv or Gemm whose input and weight are dequantized as int32 on the
    grid of their product; the float copies go. Works on the model in place."""
    onnx = require("onnx", "ONNX export")
    from onnx import helper, numpy_helper

    graph = proto.graph
    inits = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    new_inits: dict[str, np.ndarray] = {}
    dropped: set[int] = set()
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for i, node in enumerate(graph.node):
        if node.op_type != "QuantizeLinear" or node.input[0] not in inits:
            continue
        x, scale = inits[node.input[0]], inits.get(node.input[1])
        zero_point = inits.get(node.input[2]) if len(node.input) > 2 else None
        if scale is None or zero_point is None:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * x.ndim
        if scale.ndim:
            shape[axis] = -1
        info = np.iinfo(zero_point.dtype)
        q = np.rint(x / scale.reshape(shape)) + zero_point.reshape(shape).astype(np.int64)
        low, high = info.min, info.max
        output = node.output[0]
        following = consumers.get(output, [])
        if len(following) == 1 and following[0].op_type == "Clip" and all(n in inits for n in following[0].input[1:]):
            clip = following[0]
            low, high = (int(inits[n]) for n in clip.input[1:3])
            dropped.add(list(graph.node).index(clip))
            output = clip.output[0]
        new_inits[output] = np.clip(q, low, high).astype(zero_point.dtype)
        dropped.add(i)
    biases: list[tuple[Any, np.ndarray, str]] = []
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or node.input[2] not in inits:
            continue
        x_dq, w_dq = producers.get(node.input[0]), producers.get(node.input[1])
        if not (x_dq is not None and w_dq is not None and x_dq.op_type == w_dq.op_type == "DequantizeLinear"):
            continue
        x_scale, w_scale = inits.get(x_dq.input[1]), inits.get(w_dq.input[1])
        if x_scale is None or w_scale is None or x_scale.ndim or w_dq.input[0] not in new_inits:
            continue
        bias_scale = (x_scale * w_scale).astype(np.float32).reshape(-1)
        bias = inits[node.input[2]]
        if bias_scale.size not in (1, bias.size):
            continue
        q = np.clip(np.rint(bias / bias_scale), -(2**31), 2**31 - 1).astype(np.int32)
        biases.append((node, bias_scale if bias_scale.size > 1 else bias_scale.reshape(()), q))
    nodes = [node for i, node in enumerate(graph.node) if i not in dropped]
    for n, (node, bias_scale, q) in enumerate(biases):
        name = f"{node.input[2]}_int32_{n}"
        new_inits[name] = q
        new_inits[f"{name}_scale"] = bias_scale
        dq = helper.make_node("DequantizeLinear", [name, f"{name}_scale"], [f"{name}_dequantized"],
                              name=f"{name}_DequantizeLinear", axis=0)
        nodes.insert(nodes.index(node), dq)
        node.input[2] = dq.output[0]
    used = {name for node in nodes for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in new_inits.items())
    onnx.checker.check_model(proto)
