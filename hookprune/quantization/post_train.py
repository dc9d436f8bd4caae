"""Post-training quantization (Distiller's ``PostTrainLinearQuantizer``), simulated in floating point.

Every leaf module is quantized for evaluation. Convolution and linear layers compute as Distiller's wrapper does,
on integers held in float tensors: quantized inputs and weights (per output channel with ``per_channel_wts``) with
their zero points added, a bias quantized to the accumulator's grid (``bits_accum`` bits at the input scale times
the weight scale), and the output requantized from the accumulator, so their outputs are Distiller's to the bit.
Every other leaf module's output is fake-quantized.
Activation ranges come from calibration statistics (``model_activation_stats``: a Distiller stats YAML, a dict, or
:meth:`PostTrainLinearQuantizer.calibrate`), clipped as ``clip_acts`` says, or from each batch when a module has no
statistics. A quantized output carries its quantization parameters to the module that consumes it, so that
module's input needs no second quantization; an input without them (the model's input, the result of a
functional operation) is quantized with the module's ``input_overrides`` or, with ``inputs_quant_auto_fallback``,
with its output settings. A quantized output modified in place afterwards (a residual ``out += identity``) counts
as unquantized when the fallback is on, and keeps its former parameters otherwise, as in Distiller. Graph-based
rewrites of Distiller's ``prepare_model`` (batch-norm folding, narrowing a range for a following ReLU) are not
applied. The float weights are left untouched.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from hookprune._engine.params import normalize_name
from hookprune.pruning.base import ArgumentError
from hookprune.quantization.affine import (
    ClipMode,
    LinearQuantMode,
    ModuleQuantMode,
    QParams,
    aciq_supports,
    check_bits,
    dynamic_range,
    fake_quantize,
    is_finite_number,
    parse_clip_mode,
    parse_mode,
    qparams,
    quantized_range,
    quoted,
    stats_range,
    tensor_qparams,
)
from hookprune.quantization.base import ParamFn, QuantizedParamsForward, Quantizer
from hookprune.quantization.overrides import ModuleSettings, QBits
from hookprune.quantization.stats import Stats, check_stats, collect_activation_stats, load_stats

#: the tensor attribute that carries a quantized output's parameters (and the tensor's version when tagged)
QPARAMS_ATTR = "hookprune_qparams"
_PARAM_LAYERS = (nn.Conv2d, nn.Conv3d, nn.Linear)
_INPUT_OVERRIDE_KEYS = ("from_output", "bits_activations", "mode", "clip_acts", "clip_n_stds", "clip_half_range")


class QuantSettings(NamedTuple):
    """How one activation tensor is quantized."""

    num_bits: int | None
    mode: LinearQuantMode
    clip: ClipMode
    n_stds: float | None
    half_range: bool


def _version(t: torch.Tensor) -> int:
    try:
        return t._version
    except RuntimeError:
        return -1


def tag(t: torch.Tensor, params: QParams) -> torch.Tensor:
    """Mark ``t`` as quantized with ``params`` (until it is modified in place)."""
    setattr(t, QPARAMS_ATTR, (params, _version(t)))
    return t


def tagged_qparams(t: torch.Tensor, *, stale: bool = False) -> QParams | None:
    """The parameters ``t`` was quantized with, unless it was modified in place since (``stale``: even then)."""
    found = getattr(t, QPARAMS_ATTR, None)
    if found is None or (found[1] != _version(t) and not stale):
        return None
    return found[0]


def _bool(argument: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ArgumentError(argument, f"{quoted(argument)} must be true or false, got {value!r}")
    return value


def _n_stds(argument: str, value: Any) -> float | None:
    if value is None:
        return None
    if not is_finite_number(value) or value <= 0:
        raise ArgumentError(argument, f"{quoted(argument)} must be a number > 0, got {value!r}")
    return float(value)


class _Layer:
    """The post-training quantization of one leaf module: ``param`` (convolution / linear), ``embedding`` or
    ``fake`` (output only)."""

    def __init__(self, owner: PostTrainLinearQuantizer, settings: ModuleSettings) -> None:
        self.owner = owner
        self.name = settings.name
        self.module = settings.module
        extra = dict(settings.extra)
        where = f"overrides[{settings.pattern!r}]" if settings.pattern is not None else None

        def arg(key: str) -> str:
            return f"{where}.{key}" if where and key in extra else key

        mode = parse_mode(extra["mode"], arg("mode")) if "mode" in extra else owner.mode
        clip = parse_clip_mode(extra["clip_acts"], arg("clip_acts")) if "clip_acts" in extra else owner.clip_acts
        n_stds = _n_stds(arg("clip_n_stds"), extra["clip_n_stds"]) if "clip_n_stds" in extra else owner.clip_n_stds
        half = _bool(arg("clip_half_range"), extra.get("clip_half_range", owner.clip_half_range))
        self.per_channel = _bool(arg("per_channel_wts"), extra.get("per_channel_wts", owner.per_channel_wts))
        self.auto_fallback = _bool(arg("inputs_quant_auto_fallback"),
                                   extra.get("inputs_quant_auto_fallback", owner.inputs_quant_auto_fallback))
        qbits: QBits = settings.qbits
        self.weight_mode = mode.weights
        self.weight_bits = qbits.wts
        self.bias_bits = qbits.bias
        if qbits.wts is not None and isinstance(self.module, _PARAM_LAYERS):
            self.kind = "param"
        elif qbits.wts is not None and isinstance(self.module, nn.Embedding):
            self.kind = "embedding"
        else:
            self.kind = "fake"
        self.out = self._check(QuantSettings(qbits.acts, mode.activations, clip, n_stds, half), arg("clip_acts"))
        default_inputs = self.kind == "param" or (self.kind == "fake" and not isinstance(self.module, _PARAM_LAYERS))
        self.quantize_inputs = default_inputs and _bool(arg("quantize_inputs"), extra.get("quantize_inputs", True))
        self.input_settings = self._input_overrides(extra.get("input_overrides"), arg("input_overrides"), mode)
        self.static_out: QParams | None = None
        self.static_inputs: dict[int, QParams] = {}
        self.current_input: QParams | None = None
        self.current_weight: QParams | None = None
        self.current_output: QParams | None = None

    def _check(self, settings: QuantSettings, argument: str) -> QuantSettings:
        if settings.num_bits is None:
            return settings
        if settings.clip is ClipMode.N_STD and settings.n_stds is None:
            raise ArgumentError(argument, f"{self.owner.label}: clip_acts N_STD needs clip_n_stds (module "
                                f"'{self.name}')")
        if settings.clip in (ClipMode.GAUSS, ClipMode.LAPLACE) and not aciq_supports(settings.clip,
                                                                                    settings.num_bits):
            raise ArgumentError(argument, f"{self.owner.label}: {settings.clip.name} clipping is tabulated for 1 to 8 "
                                f"bits, module '{self.name}' has {settings.num_bits}")
        return settings

    def _input_overrides(self, table: Any, argument: str, mode: ModuleQuantMode) -> dict[int, QuantSettings]:
        if table is None:
            return {}
        if not isinstance(table, Mapping):
            raise ArgumentError(argument, f"{argument} must map input indices to settings, got {table!r}")
        parsed: dict[int, QuantSettings] = {}
        for key, entry in table.items():
            where = f"{argument}[{key!r}]"
            try:
                idx = int(key)
            except (TypeError, ValueError):
                raise ArgumentError(argument, f"{where}: an input index must be an integer") from None
            if not isinstance(entry, Mapping):
                raise ArgumentError(argument, f"{where} must be a mapping of settings, got {entry!r}")
            unknown = [k for k in entry if k not in _INPUT_OVERRIDE_KEYS]
            if unknown:
                raise ArgumentError(argument, f"{where}: unknown setting '{unknown[0]}'; input overrides take: "
                                    f"{', '.join(_INPUT_OVERRIDE_KEYS)}")
            if _bool(f"{where}.from_output", entry.get("from_output", False)):
                parsed[idx] = self.out
                continue
            out = self.out
            parsed[idx] = self._check(QuantSettings(
                check_bits(f"{where}.bits_activations", entry.get("bits_activations", out.num_bits)),
                parse_mode(entry["mode"], f"{where}.mode").activations if "mode" in entry else mode.activations,
                parse_clip_mode(entry["clip_acts"], f"{where}.clip_acts") if "clip_acts" in entry else out.clip,
                _n_stds(f"{where}.clip_n_stds", entry.get("clip_n_stds", out.n_stds)),
                _bool(f"{where}.clip_half_range", entry.get("clip_half_range", out.half_range))), argument)
        return parsed

    # -- parameters --------------------------------------------------------------------------

    def weight_fn(self, w: torch.Tensor) -> torch.Tensor:
        assert self.weight_bits is not None
        per_channel = self.kind == "param" and self.per_channel and w.dim() >= 2
        params = tensor_qparams(w, self.weight_bits, self.weight_mode, per_channel)
        self.current_weight = params
        return fake_quantize(w, params)

    def bias_fn(self, b: torch.Tensor) -> torch.Tensor:
        assert self.bias_bits is not None
        x, w = self.current_input, self.current_weight
        if x is not None and x.axis is None and w is not None:
            qmin, qmax = quantized_range(self.bias_bits, LinearQuantMode.SYMMETRIC)
            scale = (x.scale.to(w.scale.device) * w.scale).reshape(-1)
            params = QParams(scale, torch.zeros_like(scale), qmin, qmax, w.axis)
        else:
            params = tensor_qparams(b, self.bias_bits, LinearQuantMode.SYMMETRIC)
        return fake_quantize(b, params)

    def integer_forward(self, compute: IntegerParamsForward, x: torch.Tensor, x_params: QParams,
                        w_params: QParams) -> tuple[torch.Tensor, QParams, torch.Tensor]:
        """Distiller's integer computation of this convolution or linear layer on the quantized input ``x``: the
        dequantized output, its parameters, and where its integers lie inside the range (before clamping)."""
        module = self.module
        channel_axis = -1 if isinstance(module, nn.Linear) else 1
        x_int = _integers(x, x_params) + x_params.zero_point
        weight = module.weight.detach().to(x.dtype)
        w_view = [-1] + [1] * (weight.dim() - 1)
        w_zero_point = w_params.zero_point.reshape(w_view) if w_params.axis is not None else w_params.zero_point
        w_int = _integers(weight, w_params) + w_zero_point
        accum_scale = x_params.scale * w_params.scale
        b_int = self._bias_integers(accum_scale, x.dtype)
        accum = compute.compute(x_int, w_int, b_int)
        if self.owner.bits_accum is not None:
            accum = torch.clamp(accum, *quantized_range(self.owner.bits_accum, LinearQuantMode.SYMMETRIC))
        if accum_scale.numel() > 1:
            view = [1] * accum.dim()
            view[channel_axis] = -1
            accum_scale = accum_scale.reshape(view)
        params = self.static_out.to(x.device) if self.static_out is not None else self._dynamic(accum / accum_scale,
                                                                                                 self.out)
        q = torch.round(params.scale / accum_scale * accum - params.zero_point)
        inside = (q >= params.quant_min) & (q <= params.quant_max)
        q = torch.clamp(q, params.quant_min, params.quant_max)
        return (q + params.zero_point) / params.scale, params, inside

    def _bias_integers(self, accum_scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
        """The bias on the accumulator's grid: quantized at ``accum_scale`` with calibration statistics; without
        them first on its own symmetric grid and then requantized, as Distiller's dynamic mode does."""
        bias = getattr(self.module, "bias", None)
        if bias is None:
            return None
        b = bias.detach().to(dtype)
        scale = accum_scale.reshape(-1) if accum_scale.numel() > 1 else accum_scale.reshape(())
        if self.bias_bits is None:
            return b * scale
        bounds = quantized_range(self.bias_bits, LinearQuantMode.SYMMETRIC)
        if self.static_out is None:
            own = tensor_qparams(b, self.bias_bits, LinearQuantMode.SYMMETRIC)
            b = torch.clamp(torch.round(own.scale * b - own.zero_point), *bounds) + own.zero_point
            scale = scale / own.scale.reshape(())
        return torch.clamp(torch.round(scale * b), *bounds)

    # -- activations -------------------------------------------------------------------------

    def refresh(self, stats: Mapping[str, Any] | None) -> None:
        """Compute the static parameters from this module's statistics (None: ranges from each batch)."""
        self.static_out, self.static_inputs = None, {}
        if stats is None:
            return
        if self.out.num_bits is not None:
            self.static_out = self._from_stats(stats["output"], self.out)
        for idx, rec in stats.get("inputs", {}).items():
            settings = self.input_settings.get(idx) or (self.out if self.auto_fallback else None)
            if settings is not None and settings.num_bits is not None:
                self.static_inputs[idx] = self._from_stats(rec, settings)

    @staticmethod
    def _from_stats(record: Mapping[str, Any], s: QuantSettings) -> QParams:
        assert s.num_bits is not None
        low, high = stats_range(record, s.num_bits, s.mode, s.clip, s.n_stds, s.half_range)
        return qparams(s.num_bits, s.mode, low, high)

    @staticmethod
    def _dynamic(t: torch.Tensor, s: QuantSettings) -> QParams:
        assert s.num_bits is not None
        low, high = dynamic_range(t, s.num_bits, s.mode, s.clip, s.n_stds, s.half_range)
        return qparams(s.num_bits, s.mode, low, high).to(t.device)

    def _input_qparams(self, idx: int, x: torch.Tensor) -> QParams | None:
        found = tagged_qparams(x)
        if found is not None:
            if idx in self.input_settings:
                raise RuntimeError(f"{self.owner.label}: input {idx} of '{self.name}' is already quantized by the "
                                   "module before it and also has input_overrides; remove one of them")
            return found
        settings = self.input_settings.get(idx)
        if settings is None:
            stale = tagged_qparams(x, stale=True)
            if not self.auto_fallback and stale is not None:
                return stale
            if not self.auto_fallback:
                raise RuntimeError(f"{self.owner.label}: input {idx} of '{self.name}' does not come from a quantized "
                                   f"module; give overrides['{self.name}'].input_overrides[{idx}] or set "
                                   "inputs_quant_auto_fallback")
            settings = self.out
        if settings.num_bits is None:
            return None
        static = self.static_inputs.get(idx)
        if static is not None:
            static = self.static_inputs[idx] = static.to(x.device)
            return static
        return self._dynamic(x, settings)

    def pre_hook(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        self.current_input = None
        if not self.quantize_inputs:
            return None
        new = list(args)
        for idx, x in enumerate(args):
            if not isinstance(x, torch.Tensor) or not x.is_floating_point():
                continue
            params = self._input_qparams(idx, x)
            if params is None:
                continue
            new[idx] = tag(fake_quantize(x, params), params)
            if idx == 0:
                self.current_input = params
        return tuple(new)

    def post_hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if not isinstance(output, torch.Tensor) or not output.is_floating_point():
            return None
        if self.kind == "embedding":
            return tag(output, self.current_weight) if self.current_weight is not None else None
        if self.out.num_bits is None:
            return None
        if self.current_output is not None:
            params, self.current_output = self.current_output, None
            return tag(output, params)
        params = self.static_out
        if params is not None:
            params = self.static_out = params.to(output.device)
        else:
            params = self._dynamic(output, self.out)
        return tag(fake_quantize(output, params), params)


def _integers(t: torch.Tensor, params: QParams) -> torch.Tensor:
    """``clamp(round(scale * t - zero_point))``, per channel along ``params.axis`` (the first dimension)."""
    scale, zero_point = params.scale, params.zero_point
    if params.axis is not None:
        view = [-1] + [1] * (t.dim() - 1)
        scale, zero_point = scale.reshape(view), zero_point.reshape(view)
    return torch.clamp(torch.round(scale * t - zero_point), params.quant_min, params.quant_max)


class IntegerParamsForward(QuantizedParamsForward):
    """A convolution or linear layer computed as Distiller's post-training wrapper computes it, so its output
    integers are Distiller's: input and weight integers with their zero points added, the bias on the accumulator's
    grid (input scale times weight scale), the accumulator clamped to ``bits_accum`` bits, and the output
    requantized from the accumulator with ``output scale / accumulator scale``. Without a quantized input or
    output it is the float computation on the fake-quantized parameters. When a gradient is wanted it is the float
    computation's, straight through, zero where the output was clamped."""

    def __init__(self, module: nn.Module, fns: Mapping[str, ParamFn], layer: _Layer) -> None:
        super().__init__(module, fns)
        self.layer = layer

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        layer.current_output = None
        x_params = layer.current_input
        weight, bias = self.parameters()
        if layer.out.num_bits is None or x_params is None or x_params.axis is not None:
            return self.compute(x, weight, bias)
        assert layer.current_weight is not None
        source_dtype = x.dtype
        with torch.no_grad():
            exact, params, inside = layer.integer_forward(
                self, x.detach().float() if source_dtype not in (torch.float32, torch.float64) else x.detach(),
                x_params.to(x.device), layer.current_weight)
        layer.current_output = params
        exact = exact.to(source_dtype)
        if not torch.is_grad_enabled() or not any(t is not None and t.requires_grad for t in (x, weight, bias)):
            return exact
        return _StraightThrough.apply(self.compute(x, weight, bias), exact, inside)


class _StraightThrough(torch.autograd.Function):
    """``exact`` in the forward pass; in the backward pass the gradient goes to ``approx`` where ``inside``."""

    @staticmethod
    def forward(ctx: Any, approx: torch.Tensor, exact: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inside)
        return exact.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None


class PostTrainLinearQuantizer(Quantizer):
    """Range-based linear post-training quantization for evaluation, with Distiller's parameters.

    ``bits_activations`` / ``bits_parameters`` / ``bits_accum`` (bias), ``mode`` (one mode, or ``activations`` and
    ``weights``), ``clip_acts`` (NONE, AVG, N_STD with ``clip_n_stds``, GAUSS, LAPLACE; ``clip_half_range`` for the
    ACIQ modes), ``per_channel_wts``, ``model_activation_stats`` (a stats YAML path or dict),
    ``inputs_quant_auto_fallback`` and ``overrides``, whose entries also take ``mode``, ``clip_acts``,
    ``clip_n_stds``, ``clip_half_range``, ``per_channel_wts``, ``quantize_inputs``, ``inputs_quant_auto_fallback``
    and ``input_overrides`` (input index -> ``from_output: true`` or its own settings).

    A stats file that does not exist yet is not an error when the quantizer is built (a schedule can name it
    before calibration); :meth:`calibrate` collects the statistics instead, and :meth:`prepare_model` refuses to
    run without one or the other. Call ``prepare_model()`` on the trained model, then evaluate in ``eval()`` mode.
    """

    override_keys = ("mode", "clip_acts", "clip_n_stds", "clip_half_range", "per_channel_wts", "input_overrides",
                     "quantize_inputs", "inputs_quant_auto_fallback")

    def __init__(self, model: nn.Module, bits_activations: int | None = 8, bits_parameters: int | None = 8,
                 bits_accum: int | None = 32, overrides: Mapping[str, Mapping[str, Any]] | None = None,
                 mode: str | LinearQuantMode | Mapping[str, str | LinearQuantMode] = LinearQuantMode.SYMMETRIC,
                 clip_acts: str | ClipMode = ClipMode.NONE, per_channel_wts: bool = False,
                 model_activation_stats: str | os.PathLike[str] | Mapping[str, Any] | None = None,
                 clip_n_stds: float | None = None, clip_half_range: bool = False,
                 inputs_quant_auto_fallback: bool = True) -> None:
        self.label = type(self).__name__
        self.mode = parse_mode(mode)
        self.clip_acts = parse_clip_mode(clip_acts)
        self.clip_n_stds = _n_stds("clip_n_stds", clip_n_stds)
        if self.clip_acts is ClipMode.N_STD and self.clip_n_stds is None:
            raise ArgumentError("clip_acts", "clip_acts N_STD needs clip_n_stds (the number of standard deviations)")
        self.clip_half_range = _bool("clip_half_range", clip_half_range)
        self.per_channel_wts = _bool("per_channel_wts", per_channel_wts)
        self.inputs_quant_auto_fallback = _bool("inputs_quant_auto_fallback", inputs_quant_auto_fallback)
        self.bits_accum = check_bits("bits_accum", bits_accum)
        self.stats_path: str | None = None
        self.missing_stats_path: str | None = None
        self.activation_stats: Stats | None = None
        if isinstance(model_activation_stats, str | os.PathLike):
            self.stats_path = os.fspath(model_activation_stats)
            if os.path.isfile(self.stats_path):
                try:
                    self.activation_stats = load_stats(self.stats_path)
                except (OSError, ValueError) as exc:
                    raise ArgumentError("model_activation_stats", str(exc)) from None
            else:
                self.missing_stats_path = self.stats_path
        elif isinstance(model_activation_stats, Mapping):
            try:
                self.activation_stats = check_stats(model_activation_stats)
            except ValueError as exc:
                raise ArgumentError("model_activation_stats", str(exc)) from None
        elif model_activation_stats is not None:
            raise ArgumentError("model_activation_stats", "'model_activation_stats' must be a stats YAML path or a "
                                f"mapping, got {model_activation_stats!r}")
        self.layers: dict[str, _Layer] = {}
        super().__init__(model, None, bits_activations, bits_parameters, self.bits_accum, overrides,
                         train_with_fp_copy=True)
        for name, settings in self.module_settings.items():
            leaf = not any(True for _ in settings.module.children())
            if leaf and name not in self.layers and settings.qbits.acts is not None:
                self.layers[name] = _Layer(self, settings)

    def _layer(self, settings: ModuleSettings) -> _Layer:
        layer = self.layers.get(settings.name)
        if layer is None:
            layer = self.layers[settings.name] = _Layer(self, settings)
        return layer

    def _param_fn(self, settings: ModuleSettings, attr: str, num_bits: int) -> ParamFn:
        layer = self._layer(settings)
        return layer.weight_fn if attr == "weight" else layer.bias_fn

    def _params_forward(self, module: nn.Module, fns: Mapping[str, ParamFn]) -> QuantizedParamsForward:
        for layer in self.layers.values():
            if layer.module is module and layer.kind == "param":
                return IntegerParamsForward(module, fns, layer)
        return super()._params_forward(module, fns)

    def calibrate(self, batches: Iterable[Any]) -> Stats:
        """Collect the activation statistics from ``batches`` on the float model (before :meth:`prepare_model`)
        and use them; returns them (``save_stats`` writes them where the schedule expects the file)."""
        if self.prepared:
            raise RuntimeError(f"{self.label}: calibrate the float model, before prepare_model()")
        self.activation_stats = collect_activation_stats(self.model, batches)
        self.missing_stats_path = None
        return self.activation_stats

    def prepare_model(self, dummy_input: Any = None) -> None:
        """Quantize the model for evaluation (see the class); refuses when the named stats file is missing."""
        if self.prepared:
            return
        if self.missing_stats_path is not None:
            raise ValueError(
                f"{self.label}: the activation stats file '{self.missing_stats_path}' does not exist; produce it with "
                "hookprune.quantization.collect_activation_stats(model, batches) and save_stats(stats, path), or "
                "call calibrate(batches) before prepare_model()")
        self._refresh()
        super().prepare_model(dummy_input)

    def _refresh(self) -> None:
        stats = self.activation_stats or {}
        for layer in self.layers.values():
            layer.refresh(stats.get(normalize_name(layer.name)))

    def _install_extra(self) -> list[Any]:
        handles = []
        for layer in self.layers.values():
            handles.append(layer.module.register_forward_pre_hook(layer.pre_hook))
            handles.append(layer.module.register_forward_hook(layer.post_hook))
        return handles

    def state_dict(self) -> dict[str, Any]:
        """The calibration statistics the quantization uses (None when every range comes from each batch)."""
        return {"activation_stats": self.activation_stats}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        stats = state.get("activation_stats")
        self.activation_stats = None if stats is None else check_stats(stats)
        if self.activation_stats is not None:
            self.missing_stats_path = None
        if self.prepared:
            self._refresh()
