"""The quantizer base: Distiller's ``Quantizer`` API (``prepare_model()``, ``quantize_params()``) on plain modules.

Weights stay the module's own ``weight`` / ``bias`` parameters, so pruning masks (keyed by parameter name and
applied in place after every step) keep working. With ``train_with_fp_copy`` (the quantization-aware-training
default) the float parameters are trained and every forward pass computes with their fake-quantized values (the
gradient passes straight through); without it, ``quantize_params()`` overwrites the parameters with their quantized
values, as Distiller does. Activations are fake-quantized by forward hooks on the modules Distiller would replace,
whose state (ranges, clip values) belongs to the quantizer and travels in its ``state_dict()``, not the model's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from hookprune.errors import ArgumentError
from hookprune.hookspecs import hookimpl
from hookprune.quantization.affine import check_bits
from hookprune.quantization.overrides import ModuleSettings, QBits, parse_overrides, resolve_modules

#: a parameter's quantization: float tensor in, fake-quantized tensor out (differentiable)
ParamFn = Callable[[torch.Tensor], torch.Tensor]


class ParamToQuant(NamedTuple):
    """One quantized parameter: its module, attribute (``weight`` or ``bias``), bit width and function."""

    full_name: str
    module_name: str
    module: nn.Module
    attr: str
    num_bits: int
    fn: ParamFn


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (the CPU for a model without any)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def follow_device(module: nn.Module, device: torch.device) -> None:
    """Move ``module``'s state to ``device`` in place (parameters keep their identity, so optimizers keep them)."""
    for tensor in module.parameters():
        if tensor.device != device:
            module.to(device)
        return
    for tensor in module.buffers():
        if tensor.device != device:
            module.to(device)
        return


class QuantizedParamsForward:
    """Replaces a weight module's ``forward``: runs the module's own computation (``Linear``, ``Conv2d``/``Conv3d``,
    ``Embedding``) on its fake-quantized parameters, leaving the float parameters as they are."""

    def __init__(self, module: nn.Module, fns: Mapping[str, ParamFn]) -> None:
        self.module = module
        self.fns = dict(fns)

    def parameters(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The weight and bias the forward pass uses."""
        module = self.module
        weight = module.weight
        bias = getattr(module, "bias", None)
        if "weight" in self.fns:
            weight = self.fns["weight"](weight)
        if bias is not None and "bias" in self.fns:
            bias = self.fns["bias"](bias)
        return weight, bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.compute(x, *self.parameters())

    def compute(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The module's own computation on ``x`` with ``weight`` and ``bias`` in place of its parameters."""
        module = self.module
        if isinstance(module, nn.Linear):
            return F.linear(x, weight, bias)
        if isinstance(module, nn.Conv2d | nn.Conv3d):
            return module._conv_forward(x, weight, bias)
        assert isinstance(module, nn.Embedding)
        return F.embedding(x, weight, module.padding_idx, module.max_norm, module.norm_type,
                           module.scale_grad_by_freq, module.sparse)


class Quantizer(ABC):
    """Base of the quantizers: bit widths per module (defaults and ``overrides``), parameter quantization and
    activation hooks. Subclasses say how a parameter is quantized (:meth:`_param_fn`) and which modules get an
    activation quantizer (:meth:`_activation_quantizer`).

    :param bits_activations / bits_weights / bits_bias: default bit widths; None leaves that kind in float.
    :param overrides: module-name pattern -> settings, in order; the entry keyed by a module's exact name wins,
        else the first pattern that matches its whole name (``module.`` of DataParallel ignored).
    :param train_with_fp_copy: train float parameters and fake-quantize them in every forward pass (otherwise
        ``quantize_params()`` overwrites them with their quantized values).
    """

    #: override keys a subclass accepts besides bits_activations, bits_weights and bits_bias
    override_keys: tuple[str, ...] = ()
    #: its hooks quantize parameters and never assign a mask
    sets_masks = False
    refuses_sharding: str | None = ("it fake-quantizes each layer's whole weight, with ranges taken over the whole "
                                    "weight, which FSDP2 holds only during the forward and backward passes")

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                 bits_activations: int | None = None, bits_weights: int | None = None, bits_bias: int | None = None,
                 overrides: Mapping[str, Mapping[str, Any]] | None = None, train_with_fp_copy: bool = False) -> None:
        if not isinstance(train_with_fp_copy, bool):
            raise ArgumentError("train_with_fp_copy", f"'train_with_fp_copy' must be true or false, got "
                                f"{train_with_fp_copy!r}")
        self.model = model
        self.optimizer = optimizer
        self.default_qbits = QBits(check_bits("bits_activations", bits_activations),
                                   check_bits("bits_weights", bits_weights), check_bits("bits_bias", bits_bias))
        owner = type(self).__name__
        self.overrides = parse_overrides(overrides, owner, self.override_keys)
        self.module_settings: dict[str, ModuleSettings] = resolve_modules(model, self.default_qbits, self.overrides,
                                                                          owner)
        self.train_with_fp_copy = train_with_fp_copy
        self.prepared = False
        self._handles: list[Any] = []
        self._groups_added = False
        device = model_device(model)
        self.params_to_quantize: list[ParamToQuant] = []
        self.activation_quantizers: dict[str, nn.Module] = {}
        for name, settings in self.module_settings.items():
            for attr, bits in (("weight", settings.qbits.wts), ("bias", settings.qbits.bias)):
                if bits is None or not isinstance(getattr(settings.module, attr, None), nn.Parameter):
                    continue
                full_name = f"{name}.{attr}" if name else attr
                fn = self._param_fn(settings, attr, bits)
                self.params_to_quantize.append(ParamToQuant(full_name, name, settings.module, attr, bits, fn))
            act = self._activation_quantizer(settings)
            if act is not None:
                self.activation_quantizers[name] = act.to(device)

    # -- what subclasses define -----------------------------------------------------------------

    @abstractmethod
    def _param_fn(self, settings: ModuleSettings, attr: str, num_bits: int) -> ParamFn:
        """How parameter ``attr`` of a module is quantized to ``num_bits``."""

    def _activation_quantizer(self, settings: ModuleSettings) -> nn.Module | None:
        """The module that fake-quantizes this module's output (None to leave it in float)."""
        return None

    def _params_forward(self, module: nn.Module, fns: Mapping[str, ParamFn]) -> QuantizedParamsForward:
        """The forward that replaces ``module``'s own: its computation on the fake-quantized parameters."""
        return QuantizedParamsForward(module, fns)

    def _new_param_groups(self) -> list[dict[str, Any]]:
        """Parameter groups the quantizer adds to the optimizer (PACT's clip values)."""
        return []

    def _install_extra(self) -> list[Any]:
        """Install the hooks a subclass adds beyond the parameter and activation ones (the model's input
        quantization); returns their handles."""
        return []

    # -- Distiller's API --------------------------------------------------------------------------

    def prepare_model(self, dummy_input: Any = None) -> None:
        """Install the quantization on the model (once; later calls do nothing): the fake-quantized forward of
        every module with quantized parameters, the activation hooks, and the optimizer's new parameter groups.

        ``dummy_input`` is accepted for Distiller's call signature; no tracing is needed here.
        """
        if self.prepared:
            return
        groups = self._new_param_groups()
        if groups and self.optimizer is None:
            raise ValueError(f"{type(self).__name__} adds parameters to train ({', '.join(self._group_names())}): "
                             "it needs the optimizer")
        if self.train_with_fp_copy:
            by_module: dict[int, tuple[nn.Module, dict[str, ParamFn]]] = {}
            for ptq in self.params_to_quantize:
                by_module.setdefault(id(ptq.module), (ptq.module, {}))[1][ptq.attr] = ptq.fn
            for module, fns in by_module.values():
                module.forward = self._params_forward(module, fns)
        for name, act in self.activation_quantizers.items():
            module = self.module_settings[name].module
            self._handles.append(module.register_forward_hook(ActivationHook(act)))
        self._handles.extend(self._install_extra())
        if self.optimizer is not None and not self._groups_added:
            for group in groups:
                self.optimizer.add_param_group(group)
            self._groups_added = True
        self.prepared = True

    # -- as a schedule's quantizer ----------------------------------------------------------------

    def attach(self, scheduler: Any) -> None:
        """When first scheduled: install the quantization and quantize the parameters, as Distiller's
        ``QuantizationPolicy`` does when it is made."""
        self.prepare_model()
        self.quantize_params()

    @hookimpl
    def on_minibatch_end(self) -> None:
        """After each optimizer step of the policy: quantize the parameters again."""
        self.quantize_params()

    def remove(self) -> None:
        """Take the quantization off the model: hooks removed, the modules' own forward restored, in-place
        quantized parameters left as they are. The optimizer keeps the groups :meth:`prepare_model` added."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for ptq in self.params_to_quantize:
            if isinstance(ptq.module.__dict__.get("forward"), QuantizedParamsForward):
                del ptq.module.__dict__["forward"]
        self.prepared = False

    def quantize_params(self) -> None:
        """Quantize the parameters in place (without ``train_with_fp_copy``); with it, the forward pass
        fake-quantizes the float parameters itself and there is nothing to refresh."""
        if self.train_with_fp_copy:
            return
        with torch.no_grad():
            for ptq in self.params_to_quantize:
                tensor = getattr(ptq.module, ptq.attr)
                if tensor.is_meta:
                    continue
                tensor.copy_(ptq.fn(tensor))

    def quantized_params(self) -> dict[str, torch.Tensor]:
        """The values each quantized parameter takes in the forward pass, by its name in the model."""
        out = {}
        with torch.no_grad():
            for ptq in self.params_to_quantize:
                tensor = getattr(ptq.module, ptq.attr)
                out[ptq.full_name] = ptq.fn(tensor).detach() if self.train_with_fp_copy else tensor.detach().clone()
        return out

    def quantization_parameters(self) -> list[nn.Parameter]:
        """Parameters the quantizer itself trains (PACT's clip values), which ``model.parameters()`` leaves out."""
        return [p for act in self.activation_quantizers.values() for p in act.parameters()]

    def _group_names(self) -> list[str]:
        return [f"{name} clip value" for name, act in self.activation_quantizers.items() if list(act.parameters())]

    # -- state --------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything that decides the next step: activation ranges, EMA statistics, clip values."""
        return {"activations": {name: {k: v.detach().clone() for k, v in act.state_dict().items()}
                                for name, act in self.activation_quantizers.items() if act.state_dict()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output in place (trained clip values keep their identity)."""
        for name, values in state.get("activations", {}).items():
            act = self.activation_quantizers.get(name)
            if act is None:
                raise ValueError(f"{type(self).__name__}: the saved state quantizes the output of '{name}', "
                                 "which this quantizer does not")
            device = next(iter(act.state_dict().values())).device
            act.load_state_dict({k: torch.as_tensor(v).to(device) for k, v in values.items()})


class ActivationHook:
    """A forward hook that fake-quantizes a module's floating-point output with ``quantizer`` (which follows the
    output to its device and the module into training or evaluation mode)."""

    def __init__(self, quantizer: nn.Module) -> None:
        self.quantizer = quantizer

    def __call__(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> Any:
        if not isinstance(output, torch.Tensor) or not output.is_floating_point():
            return None
        follow_device(self.quantizer, output.device)
        self.quantizer.training = module.training
        return self.quantizer(output)
