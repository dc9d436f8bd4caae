"""What a fake-quantized model quantizes, read off its quantizer and laid over the model's ``torch.fx`` graph.

The deployment copy of a model is a clean float copy (the quantizer's replaced forwards and hooks left behind,
in-place ReLUs made out-of-place) traced by ``torch.fx``. Each module the quantizer acts on gets a
:class:`LayerPlan`: the grid of its input (when it quantizes it), of its output, and of its weight with the
weight's values as the quantizer's forward pass uses them. Both the ONNX QDQ export and the int8 conversion
are built from it, so they quantize the same tensors on the same grids.

Post-training quantization (:class:`~hookprune.quantization.PostTrainLinearQuantizer`): a module's input is
quantized unless it comes straight from a module whose output is quantized (a functional result, ``flatten``
say, is quantized again, as hookprune's hooks do), every output is quantized, convolution and linear weights on
their own range (per output channel with ``per_channel_wts``). The ranges must come from calibration statistics:
ranges taken from each batch cannot be written into a file. Quantization-aware training
(:class:`~hookprune.quantization.QuantAwareTrainRangeLinearQuantizer`): the model's input and the ReLU outputs
on their tracked ranges, the weights on their current range.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import fx, nn

from hookprune.deploy.errors import DeployError
from hookprune.quantization.affine import QParams, fake_quantize, tensor_qparams
from hookprune.quantization.base import Quantizer
from hookprune.quantization.post_train import PostTrainLinearQuantizer
from hookprune.quantization.range_linear import QuantAwareTrainRangeLinearQuantizer

#: the placeholder's name in :attr:`QuantPlan.layers`: the model's own input
MODEL_INPUT = ""


@dataclass
class LayerPlan:
    """How one module (or, under :data:`MODEL_INPUT`, the model's input) is quantized; None: left in float."""

    input: QParams | None = None
    output: QParams | None = None
    weight: QParams | None = None
    weight_values: torch.Tensor | None = None


@dataclass
class QuantPlan:
    """A traced float copy of the model and the plan of every module its quantizer acts on, by module name."""

    graph_module: fx.GraphModule
    layers: dict[str, LayerPlan]
    quantizer: Quantizer | None


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DataParallel / DistributedDataParallel wrappers."""
    while isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
        model = model.module
    return model


def float_copy(model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """A copy of ``model`` in eval mode computing in float with its own modules' forwards: without the forwards and
    hooks a quantizer installs (or any other hook: none can be exported), ReLUs out of place, and ``masks``
    (parameter name -> keep mask) multiplied into the parameters."""
    model = unwrap(model)
    saved = [(m, m.__dict__.pop("forward", None), dict(m._forward_hooks), dict(m._forward_pre_hooks))
             for m in model.modules()]
    try:
        for module, _, _, _ in saved:
            module._forward_hooks.clear()
            module._forward_pre_hooks.clear()
        clone = copy.deepcopy(model).eval()
    finally:
        for module, forward, hooks, pre_hooks in saved:
            if forward is not None:
                module.forward = forward
            module._forward_hooks.update(hooks)
            module._forward_pre_hooks.update(pre_hooks)
    for module in clone.modules():
        if isinstance(module, nn.ReLU | nn.ReLU6 | nn.Hardtanh | nn.LeakyReLU):
            module.inplace = False
    if masks:
        params = dict(clone.named_parameters())
        with torch.no_grad():
            for name, mask in masks.items():
                key = name.removeprefix("module.").replace(".module.", ".")
                if key not in params:
                    raise DeployError(f"a mask names '{name}', which is not a parameter of the model")
                params[key].mul_(mask.to(params[key].device, params[key].dtype))
    return clone


def trace(model: nn.Module) -> fx.GraphModule:
    """``model`` traced by ``torch.fx``; a :class:`DeployError` naming the failure when it cannot be."""
    try:
        return fx.symbolic_trace(model)
    except Exception as exc:  # fx raises whatever the model's forward raises on proxies
        first = " ".join(str(exc).split())[:200]
        raise DeployError(f"torch.fx cannot trace {type(model).__name__} to place the quantization: {first}") from None


def _ptq_layers(quantizer: PostTrainLinearQuantizer, gm: fx.GraphModule) -> dict[str, LayerPlan]:
    if quantizer.stats_path is None and quantizer.activation_stats is None:
        raise DeployError("PostTrainLinearQuantizer without calibration statistics takes its ranges from each "
                          "batch, which no file can hold; calibrate it (calibrate(batches) or "
                          "model_activation_stats) before exporting")
    if not quantizer.prepared:
        raise DeployError("PostTrainLinearQuantizer: call prepare_model() before exporting, so that its ranges are set")
    quantized_outputs = {name for name, layer in quantizer.layers.items() if layer.static_out is not None}
    plans: dict[str, LayerPlan] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target not in quantizer.layers:
            continue
        layer = quantizer.layers[node.target]
        plan = LayerPlan(output=layer.static_out)
        source = node.args[0] if node.args else None
        from_quantized = (isinstance(source, fx.Node) and source.op == "call_module"
                          and source.target in quantized_outputs)
        if layer.quantize_inputs and not from_quantized:
            plan.input = layer.static_inputs.get(0)
            if plan.input is None and layer.out.num_bits is not None:
                raise DeployError(f"PostTrainLinearQuantizer: the calibration statistics have no input range of "
                                  f"'{node.target}', so its input would be quantized on each batch's range")
        if layer.kind == "param":
            weight = layer.module.weight.detach()
            plan.weight = tensor_qparams(weight, layer.weight_bits, layer.weight_mode,
                                         layer.per_channel and weight.dim() >= 2)
            plan.weight_values = fake_quantize(weight, plan.weight)
        if layer.out.num_bits is not None and plan.output is None:
            raise DeployError(f"PostTrainLinearQuantizer: the calibration statistics have no output range of "
                              f"'{node.target}', so its output would be quantized on each batch's range")
        plans[node.target] = plan
    return plans


def _qat_layers(quantizer: QuantAwareTrainRangeLinearQuantizer, gm: fx.GraphModule) -> dict[str, LayerPlan]:
    plans: dict[str, LayerPlan] = {}
    if quantizer.inputs_quant is not None:
        plans[MODEL_INPUT] = LayerPlan(output=quantizer.inputs_quant.qparams())
    for name, act in quantizer.activation_quantizers.items():
        plans.setdefault(name, LayerPlan()).output = act.qparams()
    if quantizer.train_with_fp_copy:
        per_channel = quantizer.per_channel_wts
        for ptq in quantizer.params_to_quantize:
            if ptq.attr != "weight" or not isinstance(ptq.module, nn.Conv2d | nn.Conv3d | nn.Linear):
                continue
            weight = ptq.module.weight.detach()
            params = tensor_qparams(weight, ptq.num_bits, quantizer.mode.weights, per_channel and weight.dim() >= 2)
            plan = plans.setdefault(ptq.module_name, LayerPlan())
            plan.weight, plan.weight_values = params, ptq.fn(weight).detach()
    return plans


def quant_plan(model: nn.Module, quantizer: Quantizer | None = None,
               masks: Mapping[str, torch.Tensor] | None = None) -> QuantPlan:
    """The traced float copy of ``model`` (``masks`` folded in) and what ``quantizer`` quantizes in it."""
    gm = trace(float_copy(model, masks))
    if quantizer is None:
        return QuantPlan(gm, {}, None)
    if quantizer.model is not model and quantizer.model is not unwrap(model):
        raise DeployError(f"the {type(quantizer).__name__} given quantizes another model")
    if isinstance(quantizer, PostTrainLinearQuantizer):
        return QuantPlan(gm, _ptq_layers(quantizer, gm), quantizer)
    if isinstance(quantizer, QuantAwareTrainRangeLinearQuantizer):
        if not quantizer.prepared:
            raise DeployError("QuantAwareTrainRangeLinearQuantizer: the quantizer is not installed on the model "
                              "(prepare_model() or a schedule's quantizer policy)")
        return QuantPlan(gm, _qat_layers(quantizer, gm), quantizer)
    raise DeployError(f"{type(quantizer).__name__}: QDQ export and int8 conversion know the range-linear quantizers "
                      "(PostTrainLinearQuantizer, QuantAwareTrainRangeLinearQuantizer), whose integers are affine in "
                      "the float values")
