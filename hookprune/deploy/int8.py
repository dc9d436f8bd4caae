"""A real int8 PyTorch model from a post-training-quantized one: torch's quantized modules on hookprune's grids.

:func:`convert_to_pytorch` (Distiller's ``--qe-convert-pytorch``) rewrites the ``torch.fx`` graph of a model that
:class:`~hookprune.quantization.PostTrainLinearQuantizer` quantizes: each convolution and linear layer becomes
``torch.ao.nn.quantized.Conv2d`` / ``Linear`` (fused with a ReLU that follows it alone), with the quantizer's
integer weights (``torch.quantize_per_tensor`` or ``per_channel``, int8) and its output grid; BatchNorm becomes the
quantized BatchNorm2d; a residual addition ``torch.ops.quantized.add`` onto the grid its consumer quantizes its
input with; the model's input is quantized and its output dequantized by converted ``QuantStub`` / ``DeQuantStub``
(``torch.ao.nn.quantized.Quantize`` / ``DeQuantize``).
Pooling, flattening and ReLU run on the quantized tensors and keep their grid, where the simulation requantizes
each module's output on its own calibrated range; anything else runs in float between a dequantization and the
next quantization. Activations are stored as ``quint8`` (a signed grid shifted by 128), as the x86 and fbgemm
engines require.

torch 2.14 deprecates its quantized tensor type (pytorch issue 184982) in favour of torchao; these modules are
what torch itself still runs in int8 on the CPU, and they warn about it when they are built and run.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.ao.nn.intrinsic.quantized as nniq
import torch.ao.nn.quantized as nnq
from torch import fx, nn

from hookprune.deploy.errors import DeployError
from hookprune.deploy.grid import INT8, UINT8, Grid, to_grid
from hookprune.deploy.plan import LayerPlan, quant_plan
from hookprune.quantization.affine import QParams
from hookprune.quantization.post_train import PostTrainLinearQuantizer

#: modules that compute on a quantized tensor and keep its grid
KEEP_GRID_MODULES = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity,
                     nn.Dropout)
#: functions and methods that compute on a quantized tensor and keep its grid
KEEP_GRID_FUNCTIONS = {torch.flatten, torch.relu, torch.nn.functional.relu, torch.reshape,
                       torch.nn.functional.max_pool2d, torch.nn.functional.adaptive_avg_pool2d}
KEEP_GRID_METHODS = {"flatten", "view", "reshape", "relu", "contiguous"}
ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
#: engines that run the quantized modules, best first
ENGINES = ("x86", "fbgemm", "qnnpack")


def default_engine() -> str:
    """The first of :data:`ENGINES` this build of torch supports."""
    supported = torch.backends.quantized.supported_engines
    for engine in ENGINES:
        if engine in supported:
            return engine
    raise DeployError(f"this build of torch has no quantized engine for the CPU (it has {supported})")


def activation_grid(params: QParams, what: str) -> Grid:
    """An activation grid as torch's quantized CPU kernels store it: quint8."""
    return to_grid(params, UINT8, what)


def _quantized_layer(module: nn.Module, plan: LayerPlan, name: str, relu: bool) -> nn.Module:
    assert plan.weight is not None and plan.weight_values is not None and plan.output is not None
    weight = to_grid(plan.weight, INT8, f"the weight of '{name}'").quantize(plan.weight_values.float().cpu())
    scale, zero_point = activation_grid(plan.output, f"the output of '{name}'").item()
    bias = None if module.bias is None else module.bias.detach().float().cpu()
    if isinstance(module, nn.Linear):
        new = (nniq.LinearReLU if relu else nnq.Linear)(module.in_features, module.out_features,
                                                         module.bias is not None)
    elif isinstance(module, nn.Conv2d):
        cls = nniq.ConvReLU2d if relu else nnq.Conv2d
        new = cls(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                  module.dilation, module.groups, module.bias is not None, module.padding_mode)
    else:
        raise DeployError(f"'{name}' is a {type(module).__name__}; torch's quantized modules here are Conv2d and "
                          "Linear")
    new.set_weight_bias(weight, bias)
    new.scale, new.zero_point = scale, zero_point
    return new


def _quantized_batchnorm(module: nn.BatchNorm2d, plan: LayerPlan, name: str) -> nn.Module:
    assert plan.output is not None
    scale, zero_point = activation_grid(plan.output, f"the output of '{name}'").item()
    new = nnq.BatchNorm2d(module.num_features, module.eps, module.momentum)
    with torch.no_grad():
        for attr in ("weight", "bias", "running_mean", "running_var"):
            getattr(new, attr).copy_(getattr(module, attr))
    new.scale, new.zero_point = torch.tensor(scale), torch.tensor(zero_point)
    return new


class _Converter:
    def __init__(self, plan_layers: dict[str, LayerPlan], gm: fx.GraphModule) -> None:
        self.layers = plan_layers
        self.gm = gm
        self.graph = gm.graph
        self.modules = dict(gm.named_modules())
        self.grid: dict[fx.Node, Grid] = {}
        self.fused: set[fx.Node] = set()
        self.count = 0

    def _module_name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def quantize(self, node: fx.Node, params: QParams, before: fx.Node, what: str) -> fx.Node:
        """A converted QuantStub (``nnq.Quantize``) on ``node``, inserted before ``before``, with ``params``."""
        grid = activation_grid(params, what)
        scale, zero_point = grid.item()
        name = self._module_name("quant")
        self.gm.add_submodule(name, nnq.Quantize(scale, zero_point, torch.quint8))
        with self.graph.inserting_before(before):
            new = self.graph.call_module(name, (node,))
        self.grid[new] = grid
        return new

    def dequantize(self, node: fx.Node, before: fx.Node) -> fx.Node:
        name = self._module_name("dequant")
        self.gm.add_submodule(name, nnq.DeQuantize())
        with self.graph.inserting_before(before):
            return self.graph.call_module(name, (node,))

    def float_args(self, node: fx.Node) -> None:
        """Dequantize every quantized tensor ``node`` takes."""
        def visit(arg: Any) -> Any:
            if isinstance(arg, fx.Node) and arg in self.grid:
                return self.dequantize(arg, node)
            return arg
        node.args = fx.node.map_aggregate(node.args, visit)
        node.kwargs = fx.node.map_aggregate(node.kwargs, visit)

    def quantized_input(self, node: fx.Node, plan: LayerPlan) -> bool:
        """Make ``node``'s first argument quantized (with the plan's input grid when it arrives in float)."""
        source = node.args[0]
        if isinstance(source, fx.Node) and source in self.grid:
            return True
        if plan.input is None or not isinstance(source, fx.Node):
            return False
        node.update_arg(0, self.quantize(source, plan.input, node, f"the input of '{node.target}'"))
        return True

    def call_module(self, node: fx.Node) -> None:
        name = str(node.target)
        module = self.modules[name]
        plan = self.layers.get(name)
        if plan is not None and plan.weight is not None:
            if not self.quantized_input(node, plan):
                raise DeployError(f"'{name}' gets an input the quantizer leaves in float; torch's quantized "
                                  "layers need a quantized input")
            users = list(node.users)
            relu = (len(users) == 1 and users[0].op == "call_module"
                    and isinstance(self.modules.get(str(users[0].target)), nn.ReLU))
            self.gm.set_submodule(name, _quantized_layer(module, plan, name, relu))
            assert plan.output is not None
            self.grid[node] = activation_grid(plan.output, f"the output of '{name}'")
            if relu:
                self.fused.add(users[0])
            return
        if (plan is not None and isinstance(module, nn.BatchNorm2d) and plan.output is not None
                and self.quantized_input(node, plan)):
            self.gm.set_submodule(name, _quantized_batchnorm(module, plan, name))
            self.grid[node] = activation_grid(plan.output, f"the output of '{name}'")
            return
        if isinstance(module, KEEP_GRID_MODULES) and node.args and node.args[0] in self.grid:
            self.grid[node] = self.grid[node.args[0]]  # type: ignore[index]
            return
        self.float_args(node)

    def call_function(self, node: fx.Node) -> None:
        first = node.args[0] if node.args else None
        keeps = node.target in KEEP_GRID_FUNCTIONS or (node.op == "call_method" and node.target in KEEP_GRID_METHODS)
        if keeps and isinstance(first, fx.Node) and first in self.grid:
            self.grid[node] = self.grid[first]
            return
        if node.target in ADD_FUNCTIONS or (node.op == "call_method" and node.target in ("add", "add_")):
            params = self.consumer_input(node)
            tensors = [a for a in node.args[:2] if isinstance(a, fx.Node)]
            if params is not None and len(tensors) == 2 and not node.kwargs:
                for i, arg in enumerate(tensors):
                    if arg not in self.grid:
                        node.update_arg(i, self.quantize(arg, params, node, f"an addend of '{node.name}'"))
                grid = activation_grid(params, f"the sum '{node.name}'")
                scale, zero_point = grid.item()
                node.op, node.target = "call_function", torch.ops.quantized.add
                node.args = (node.args[0], node.args[1], scale, zero_point)
                self.grid[node] = grid
                return
        if node.target in (getattr, len) or (node.op == "call_method" and node.target in ("size", "dim")):
            return
        self.float_args(node)

    def consumer_input(self, node: fx.Node) -> QParams | None:
        """The grid the only consumer of ``node`` quantizes its input with, if it is a quantized module."""
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module":
            return None
        plan = self.layers.get(str(users[0].target))
        return None if plan is None else plan.input

    def run(self) -> fx.GraphModule:
        for node in list(self.graph.nodes):
            if node in self.fused:
                node.replace_all_uses_with(node.args[0])
                self.graph.erase_node(node)
            elif node.op == "call_module":
                self.call_module(node)
            elif node.op in ("call_function", "call_method"):
                self.call_function(node)
            elif node.op == "output":
                self.float_args(node)
        self.graph.eliminate_dead_code()
        self.graph.lint()
        self.gm.delete_all_unused_submodules()
        self.gm.recompile()
        return self.gm


def convert_to_pytorch(model: nn.Module, quantizer: PostTrainLinearQuantizer, engine: str | None = None
                       ) -> fx.GraphModule:
    """The int8 PyTorch model of ``model`` as ``quantizer`` (prepared, calibrated) quantizes it, for the CPU and
    ``engine`` (default: :func:`default_engine`; it is made torch's current engine, which running the model needs).
    """
    if not isinstance(quantizer, PostTrainLinearQuantizer):
        raise DeployError(f"{type(quantizer).__name__}: an int8 PyTorch model is made from a post-training "
                          "quantized one (PostTrainLinearQuantizer)")
    engine = engine or default_engine()
    if engine not in torch.backends.quantized.supported_engines:
        raise DeployError(f"quantized engine '{engine}': this build of torch supports "
                          f"{', '.join(torch.backends.quantized.supported_engines)}")
    torch.backends.quantized.engine = engine
    plan = quant_plan(model, quantizer)
    gm = plan.graph_module.cpu()
    return _Converter(plan.layers, gm).run()
