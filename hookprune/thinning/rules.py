"""Layer rules: how each module type relates to channel spaces, and how thinning slices it.

The channel analysis (:mod:`hookprune.thinning.graph`) looks a called module's rule up by type,
following the MRO, so a subclass of ``nn.Conv2d`` gets the convolution rule unless it has its own.
A module type without a rule blocks: every channel that reaches it stays. The built-in rules cover
torch's convolutions, linear layers, BatchNorms, PReLU, Flatten and the zero-preserving activations,
pooling and dropout; :func:`register_layer_rule` adds one for a layer of your own (the idea of
Torch-Pruning's ``register_customized_layer``, as data rather than a pruning class).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from torch import nn


class Relation(enum.Enum):
    """What a module does to the channels (dimension 1) of the tensor it reads."""

    #: starts a new space: its filters are the output channels and it reads its input's channels
    #: through its weight (Conv, Linear)
    PRODUCES = "produces"
    #: has one entry per channel of its input's space and outputs that same space (BatchNorm, PReLU
    #: with a parameter per channel, depthwise convolution)
    CHANNELWISE = "channelwise"
    #: treats each channel on its own, keeps an all-zero channel all zero and has nothing to slice
    #: (ReLU, pooling, dropout)
    PASSES = "passes"
    #: reshapes like ``torch.flatten(x, module.start_dim, module.end_dim)``
    FLATTENS = "flattens"
    #: the analysis cannot follow it: the spaces that reach it keep every channel
    BLOCKS = "blocks"


@dataclass(frozen=True, eq=False)
class LayerRule:
    """How thinning treats one module type.

    Names are attributes of the module. On the *output* side (a producer's filters, a channelwise
    module's channels) ``out_size`` counts the channels and is set to the number kept, with every
    attribute in ``same_as_out``; each tensor in ``out_tensors`` (a parameter or buffer, possibly
    None on some instances) is sliced along its dimension. On the *input* side of a producer,
    ``in_size`` and ``in_tensors`` do the same for the channels it reads. ``weight`` is the
    producer's tensor whose slices are its filters and input channels (what ``remove_filters`` and
    ``remove_channels`` test for zeros). ``dependents`` are the output-side parameters
    ``remove_filters`` zeroes and masks at the removed channels first, because they would make a
    zero channel non-zero (biases, BatchNorm's scale and shift).
    """

    relation: Relation
    out_size: str = ""
    out_tensors: Mapping[str, int] = field(default_factory=dict)
    same_as_out: tuple[str, ...] = ()
    dependents: tuple[str, ...] = ()
    in_size: str = ""
    in_tensors: Mapping[str, int] = field(default_factory=dict)
    weight: str = "weight"
    #: the rank the input must have for its dimension 1 to be the channels the module reads (Linear: 2)
    rank: int | None = None
    #: why the module blocks (BLOCKS), appended to "reaches module 'name', which ..."
    reason: str = ""
    #: why a zero channel stays non-zero after this CHANNELWISE module whatever is masked, so
    #: ``remove_filters`` keeps its channels (a BatchNorm without affine parameters)
    unforced: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.relation, Relation):
            raise TypeError(f"LayerRule's relation must be a Relation, got {self.relation!r}")
        for name in ("out_size", "in_size", "weight", "reason", "unforced"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"LayerRule's {name} must be a string, got {getattr(self, name)!r}")
        for name in ("out_tensors", "in_tensors"):
            value = getattr(self, name)
            if not isinstance(value, Mapping) or not all(
                    isinstance(k, str) and k and isinstance(d, int) and not isinstance(d, bool) and d >= 0
                    for k, d in value.items()):
                raise TypeError(f"LayerRule's {name} must map tensor names to dimensions (ints >= 0), "
                                f"got {value!r}")
            object.__setattr__(self, name, MappingProxyType(dict(value)))
        for name in ("same_as_out", "dependents"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) and v for v in value):
                raise TypeError(f"LayerRule's {name} must be a tuple of attribute names, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if self.rank is not None and (not isinstance(self.rank, int) or isinstance(self.rank, bool)
                                      or self.rank < 1):
            raise TypeError(f"LayerRule's rank must be a positive int or None, got {self.rank!r}")
        self._check_fields()

    def _check_fields(self) -> None:
        """Each relation takes the fields it uses and needs the ones it cannot do without."""
        allowed, needed = _FIELDS.get(self.relation, (set(), set()))
        given = {name for name in _OPTIONAL if getattr(self, name)}
        relation = self.relation.name
        if given - allowed:
            raise ValueError(f"a {relation} LayerRule takes no {', '.join(sorted(given - allowed))}")
        if needed - given:
            raise ValueError(f"a {relation} LayerRule needs {', '.join(sorted(needed - given))}")
        if self.relation is Relation.PRODUCES and not (self.weight in self.out_tensors
                                                       and self.weight in self.in_tensors):
            raise ValueError(f"a PRODUCES LayerRule's weight '{self.weight}' must be in out_tensors and in_tensors")
        stray = [d for d in self.dependents if d not in self.out_tensors]
        if stray:
            raise ValueError(f"LayerRule's dependents {', '.join(stray)} must be in out_tensors (their dimension "
                             "comes from there)")


_OPTIONAL = ("out_size", "out_tensors", "same_as_out", "dependents", "in_size", "in_tensors", "rank", "reason",
             "unforced")
_OUTPUT_SIDE = {"out_size", "out_tensors", "same_as_out", "dependents", "rank"}
#: relation -> (fields it takes, fields it needs); the others take none of the optional fields
_FIELDS: dict[Relation, tuple[set[str], set[str]]] = {
    Relation.PRODUCES: (_OUTPUT_SIDE | {"in_size", "in_tensors"}, {"out_size", "out_tensors", "in_size", "in_tensors"}),
    Relation.CHANNELWISE: (_OUTPUT_SIDE | {"unforced"}, {"out_size"}),
    Relation.BLOCKS: ({"reason"}, set()),
}


#: A rule, or a function of the module that returns its rule (when it depends on the instance, as a
#: convolution's does on ``groups``).
RuleSource = LayerRule | Callable[[nn.Module], LayerRule]

_RULES: dict[type[nn.Module], RuleSource] = {}


def register_layer_rule(layer_type: type[nn.Module], rule: RuleSource, *, replace: bool = False) -> None:
    """Tell thinning how to treat ``layer_type`` and its subclasses (unless they have their own rule).

    ``rule`` is a :class:`LayerRule` or a function taking the module and returning one. A type that
    already has its own rule (built-in ones included) is refused unless ``replace`` is true.
    """
    if not isinstance(layer_type, type) or not issubclass(layer_type, nn.Module):
        raise TypeError(f"register_layer_rule needs a subclass of torch.nn.Module, got {layer_type!r}")
    if not isinstance(rule, LayerRule) and (isinstance(rule, type) or not callable(rule)):
        raise TypeError(f"the rule for {layer_type.__name__} must be a LayerRule or a function of the module "
                        f"returning one, got {rule!r}")
    if layer_type in _RULES and not replace:
        raise ValueError(f"{layer_type.__module__}.{layer_type.__qualname__} already has a layer rule; "
                         "pass replace=True to replace it")
    _RULES[layer_type] = rule


def unregister_layer_rule(layer_type: type[nn.Module]) -> None:
    """Remove the rule registered for exactly ``layer_type`` (its subclasses fall back to their bases' rules)."""
    if layer_type not in _RULES:
        raise ValueError(f"{getattr(layer_type, '__qualname__', layer_type)} has no layer rule of its own")
    del _RULES[layer_type]


def registered_rule(layer_type: type[nn.Module]) -> RuleSource | None:
    """What :func:`register_layer_rule` holds for ``layer_type`` or its nearest base class in MRO order
    (a rule or a function of the module); None when none has one. Reuse a built-in one with it:
    ``register_layer_rule(MyConv, registered_rule(nn.Conv2d))``."""
    for cls in layer_type.__mro__:
        source = _RULES.get(cls)
        if source is not None:
            return source
    return None


def layer_rule(module: nn.Module) -> LayerRule | None:
    """The rule for ``module`` (see :func:`registered_rule`), applied to the instance; None when it has none."""
    source = registered_rule(type(module))
    if source is None or isinstance(source, LayerRule):
        return source
    rule = source(module)
    if not isinstance(rule, LayerRule):
        raise TypeError(f"the layer rule function for {type(module).__name__} returned {rule!r}, not a LayerRule")
    return rule


# -- built-in rules ---------------------------------------------------------------------------------


def _conv_rule(rank: int) -> Callable[[nn.Module], LayerRule]:
    producer = LayerRule(Relation.PRODUCES, out_size="out_channels", out_tensors={"weight": 0, "bias": 0},
                         dependents=("bias",), in_size="in_channels", in_tensors={"weight": 1}, rank=rank)
    depthwise = LayerRule(Relation.CHANNELWISE, out_size="out_channels", out_tensors={"weight": 0, "bias": 0},
                          same_as_out=("in_channels", "groups"), dependents=("bias",), rank=rank)
    grouped = LayerRule(Relation.BLOCKS, reason="is a grouped convolution")

    def rule(conv: nn.Module) -> LayerRule:
        if conv.groups == 1:
            return producer
        return depthwise if conv.groups == conv.in_channels == conv.out_channels else grouped

    return rule


_BATCHNORM = LayerRule(Relation.CHANNELWISE, out_size="num_features",
                       out_tensors={"weight": 0, "bias": 0, "running_mean": 0, "running_var": 0},
                       dependents=("weight", "bias"))
_BATCHNORM_PLAIN = LayerRule(Relation.CHANNELWISE, out_size="num_features",
                             out_tensors={"running_mean": 0, "running_var": 0}, unforced="has no affine parameters")
_PRELU = LayerRule(Relation.CHANNELWISE, out_size="num_parameters", out_tensors={"weight": 0})
_PASSES = LayerRule(Relation.PASSES)
_NONZERO = LayerRule(Relation.BLOCKS, reason="maps zero to non-zero")

#: Modules that act on each channel separately and map an all-zero channel to an all-zero channel.
ZERO_PRESERVING: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.Tanh,
    nn.Softsign, nn.Tanhshrink, nn.Hardshrink, nn.Softshrink, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.ZeroPad2d, nn.Upsample,
)

register_layer_rule(nn.Conv1d, _conv_rule(3))
register_layer_rule(nn.Conv2d, _conv_rule(4))
register_layer_rule(nn.Conv3d, _conv_rule(5))
register_layer_rule(nn.Linear, LayerRule(Relation.PRODUCES, out_size="out_features",
                                         out_tensors={"weight": 0, "bias": 0}, dependents=("bias",),
                                         in_size="in_features", in_tensors={"weight": 1}, rank=2))
register_layer_rule(nn.modules.batchnorm._BatchNorm, lambda bn: _BATCHNORM if bn.affine else _BATCHNORM_PLAIN)
register_layer_rule(nn.PReLU, lambda prelu: _PRELU if prelu.num_parameters > 1 else _PASSES)
register_layer_rule(nn.Hardtanh, lambda ht: _PASSES if ht.min_val <= 0 <= ht.max_val else _NONZERO)
register_layer_rule(nn.Flatten, LayerRule(Relation.FLATTENS))
for _type in ZERO_PRESERVING:
    register_layer_rule(_type, _PASSES)
