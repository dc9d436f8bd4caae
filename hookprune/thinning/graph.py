"""Channel dependencies of a model, read from its ``torch.fx`` graph.

A *channel space* is a set of channels (dimension 1) that several tensors of the traced graph share:
the output of a convolution or linear layer (the space's *producer*) and every tensor reached from
it through operations that treat each channel on its own and keep an all-zero channel all zero
(BatchNorm, ReLU and friends, pooling, dropout, depthwise convolution, ``flatten`` before a linear
layer). A residual ``add`` joins the spaces of its operands into one, so channel ``c`` of a ResNet
stage is one channel of one space with several producers; ``torch.cat`` along dimension 1 places
spaces side by side at offsets. A convolution or linear layer that reads a space is its *consumer*.

How a called module relates to spaces comes from its :class:`~hookprune.thinning.rules.LayerRule`,
looked up by type. Anything the analysis does not know (a module type without a rule, an unlisted
operation, the model's output, a reshape other than a flatten, a module called twice, a parameter
used outside its module) *blocks* the spaces that reach it: their channels are never removed. Being
conservative keeps the surgery exact.
"""

from __future__ import annotations

import builtins
import math
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from hookprune.thinning.rules import LayerRule, Relation, layer_rule, registered_rule


class ThinningError(ValueError):
    """Thinning cannot go ahead; the model was left unchanged."""


# -- tracing -------------------------------------------------------------------------------------


class _NamingTracer(fx.Tracer):
    """A tracer that remembers which module it was inside when tracing failed, and keeps every module
    with a layer rule whole (torch's own modules are kept whole anyway; a custom layer would otherwise
    be traced into)."""

    def __init__(self) -> None:
        super().__init__()
        self._stack: list[tuple[str, str]] = []
        self.failed_in: tuple[str, str] | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return registered_rule(type(m)) is not None or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        self._stack.append((self.path_of_module(m), type(m).__name__))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = self._stack[-1]
            raise
        finally:
            self._stack.pop()


def unwrap(model: nn.Module) -> tuple[nn.Module, str]:
    """The module to trace and the prefix its names carry in ``model`` (``module.`` under DataParallel/DDP)."""
    prefix = ""
    while isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
        model = model.module
        prefix += "module."
    return model, prefix


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model`` (unwrapped from DataParallel); a ThinningError names the module that failed."""
    inner, _ = unwrap(model)
    tracer = _NamingTracer()
    try:
        graph = tracer.trace(inner)
    except Exception as exc:
        where = tracer.failed_in
        culprit = (f"module '{where[0]}' ({where[1]})" if where and where[0]
                   else f"the forward of {type(inner).__name__}")
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise ThinningError(f"torch.fx cannot trace {culprit}: {detail}. Thinning and fold_batchnorm need a "
                            "symbolically traceable model; nothing was changed") from exc
    return fx.GraphModule(inner, graph)


# -- conv -> BatchNorm pairs (fold_batchnorm) ----------------------------------------------------------


def batchnorm_followers(model: nn.Module) -> dict[str, tuple[nn.Conv2d, nn.modules.batchnorm._BatchNorm]]:
    """``{conv weight name: (conv, bn)}`` for every Conv2d whose output feeds exactly one BatchNorm directly.

    BatchNorms without running statistics are left out: there is nothing to fold.
    """
    inner, prefix = unwrap(model)
    gm = trace(model)
    modules = dict(inner.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    found: dict[str, tuple[nn.Conv2d, nn.modules.batchnorm._BatchNorm]] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or calls[node.target] != 1:
            continue
        conv = modules[node.target]
        if not isinstance(conv, nn.Conv2d):
            continue
        bns = [u for u in node.users if u.op == "call_module"
               and isinstance(modules[u.target], nn.modules.batchnorm._BatchNorm)]
        if len(bns) != 1 or calls[bns[0].target] != 1:
            continue
        bn = modules[bns[0].target]
        if bn.running_var is None or bn.num_features != conv.out_channels:
            continue
        found[f"{prefix}{node.target}.weight"] = (conv, bn)
    return found


def fold_batchnorm_weight(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """``conv.weight`` scaled per filter by the BatchNorm that follows: ``gamma / sqrt(running_var + eps)``."""
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.affine:
            scale = bn.weight * scale
        return conv.weight.detach() * scale.view(-1, *([1] * (conv.weight.dim() - 1)))


# -- channel spaces ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """One space's channels inside a tensor's dimension 1: ``factor`` elements per channel (H*W after flatten)."""

    space: int
    factor: int


Layout = tuple[Segment, ...]


@dataclass(frozen=True)
class Use:
    """A module that indexes a space's channels: position ``offset + c * factor + s`` for channel c, s < factor."""

    module: str
    offset: int
    factor: int

    def positions(self, channels: Sequence[int]) -> list[int]:
        """The module's positions that ``channels`` of the space occupy."""
        return [self.offset + c * self.factor + s for c in channels for s in range(self.factor)]


@dataclass
class Space:
    """One set of channels shared by tensors of the graph, and every module that indexes them."""

    #: number of channels
    size: int
    #: modules whose filters are the channels (PRODUCES rules: convolutions with groups 1, linear layers)
    producers: list[str] = field(default_factory=list)
    #: modules with one entry per channel (CHANNELWISE rules: BatchNorm, depthwise convolution, PReLU)
    channelwise: list[Use] = field(default_factory=list)
    #: producers of other spaces that read these channels through their weight
    consumers: list[Use] = field(default_factory=list)
    #: why no channel may go (the space reaches something the analysis does not follow)
    blocked: list[str] = field(default_factory=list)
    #: why a zero filter's channel cannot be made exactly zero (BatchNorm without affine parameters)
    unforced: list[str] = field(default_factory=list)


class ChannelGraph:
    """The channel spaces of a traced model (names as ``model.named_modules()`` spells them)."""

    def __init__(self, model: nn.Module, modules: dict[str, nn.Module]) -> None:
        self.model = model
        self.modules = modules
        #: the layer rule of every module that produces, reads or is channelwise to a space
        self.rules: dict[str, LayerRule] = {}
        self._spaces: list[Space] = []
        self._parent: list[int] = []

    def new_space(self, size: int, producer: str) -> int:
        """A space of ``size`` channels that ``producer`` creates; returns its id."""
        self._spaces.append(Space(size, producers=[producer]))
        self._parent.append(len(self._parent))
        return len(self._parent) - 1

    def find(self, space: int) -> int:
        """The representative of ``space`` after unions."""
        root = space
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[space] != root:
            self._parent[space], space = root, self._parent[space]
        return root

    def space(self, space: int) -> Space:
        """The space ``space`` belongs to now."""
        return self._spaces[self.find(space)]

    def union(self, a: int, b: int) -> None:
        """Make ``a`` and ``b`` one space (an ``add`` of their tensors ties channel c of both)."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        sa, sb = self._spaces[ra], self._spaces[rb]
        sa.producers += sb.producers
        sa.channelwise += sb.channelwise
        sa.consumers += sb.consumers
        sa.blocked += sb.blocked
        sa.unforced += sb.unforced
        self._parent[rb] = ra

    def spaces(self) -> list[Space]:
        """Every distinct space, in the order their first producer appears in the graph."""
        return [self._spaces[i] for i in range(len(self._spaces)) if self.find(i) == i]


# Functions that act on each channel separately and map an all-zero channel to an all-zero channel.
_ZERO_FUNCTIONS: set[Any] = {
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.elu, F.celu, F.selu, F.gelu, F.silu,
    F.mish, F.hardswish, F.hardtanh, torch.tanh, F.tanh, F.softsign, F.dropout, F.dropout1d, F.dropout2d,
    F.dropout3d, F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
    F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.interpolate, torch.clone,
}
_ZERO_METHODS = {"relu", "relu_", "tanh", "tanh_", "contiguous", "clone"}
_ADD = {operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub, "add", "add_", "sub", "sub_"}
_MUL = {operator.mul, operator.imul, torch.mul, "mul", "mul_"}
_DIV = {operator.truediv, operator.itruediv, torch.div, "div", "div_"}
_CAT = {torch.cat, torch.concat, torch.concatenate}
_FLATTEN = {torch.flatten, "flatten"}
_RESHAPE = {torch.reshape, "view", "reshape"}
_MEAN = {torch.mean, "mean"}
_METADATA_METHODS = {"size", "dim"}
_METADATA_ATTRIBUTES = {"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad"}


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None else None


def _arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _describe(node: fx.Node) -> str:
    target = node.target
    if node.op == "call_module":
        return f"module '{target}'"
    if node.op == "call_method":
        return f"method '.{target}()'"
    return f"function '{getattr(target, '__name__', target)}'"


_MISSING = object()


def _check_rule(name: str, m: nn.Module, rule: LayerRule) -> None:
    """Refuse a rule that names what module ``name`` does not have, before anything is planned or changed."""
    def refuse(what: str) -> ThinningError:
        return ThinningError(f"the layer rule for {type(m).__name__} names {what}; fix the rule registered "
                             "with register_layer_rule. Nothing was changed")

    for attr in filter(None, (rule.out_size, rule.in_size, *rule.same_as_out)):
        value = getattr(m, attr, None)
        if not isinstance(value, int) or isinstance(value, bool):
            raise refuse(f"'{attr}', which is not an int attribute of module '{name}'")
    params = dict(m.named_parameters(recurse=False))
    buffers = dict(m.named_buffers(recurse=False))
    for attr, dim in [*rule.out_tensors.items(), *rule.in_tensors.items()]:
        tensor = params.get(attr, buffers.get(attr))
        if tensor is None and getattr(m, attr, _MISSING) is not None:
            raise refuse(f"'{attr}', which is not a parameter or buffer of module '{name}'")
        if tensor is not None and dim >= tensor.dim():
            raise refuse(f"dimension {dim} of '{attr}', which has shape {tuple(tensor.shape)} in module '{name}'")
    for attr in rule.dependents:
        if attr not in params and getattr(m, attr, _MISSING) is not None:
            raise refuse(f"the dependent '{attr}', which is not a parameter of module '{name}'")
    if rule.relation is Relation.PRODUCES and rule.weight not in params:
        raise refuse(f"the weight '{rule.weight}', which is not a parameter of module '{name}'")


class _Builder:
    def __init__(self, graph: ChannelGraph, gm: fx.GraphModule) -> None:
        self.g = graph
        self.gm = gm
        self.layouts: dict[fx.Node, Layout | None] = {}
        self.tainted = self._tainted_modules()

    def _tainted_modules(self) -> dict[str, str]:
        """Modules whose tensors may not be sliced: called twice, or sharing a parameter with other code."""
        modules = self.g.modules
        tainted: dict[str, str] = {}
        calls: dict[str, int] = {}
        for node in self.gm.graph.nodes:
            if node.op == "call_module":
                calls[node.target] = calls.get(node.target, 0) + 1
        for name, count in calls.items():
            m = modules[name]
            if count > 1 and (any(True for _ in m.parameters()) or any(True for _ in m.buffers())):
                tainted[name] = "is called more than once"
        owners: dict[int, list[str]] = {}
        for mod_name, m in modules.items():
            for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)]:
                owners.setdefault(id(t), []).append(mod_name)
        for names in owners.values():
            if len(names) > 1:
                for n in names:
                    tainted[n] = "shares a tensor with another module"
        for node in self.gm.graph.nodes:
            if node.op == "get_attr":
                owner = node.target.rpartition(".")[0]
                tainted[owner] = f"has its tensor '{node.target}' used directly by the forward"
        return tainted

    # -- helpers --

    def layout(self, value: Any) -> Layout | None:
        return self.layouts.get(value) if isinstance(value, fx.Node) else None

    def block(self, nodes: Iterable[Any], reason: str) -> None:
        for n in nodes:
            lay = self.layout(n)
            for seg in lay or ():
                self.g.space(seg.space).blocked.append(reason)

    def unknown(self, node: fx.Node, reason: str | None = None) -> None:
        self.block(node.all_input_nodes, f"reaches {_describe(node)}" + (f", which {reason}" if reason else ""))
        self.layouts[node] = None

    def width(self, lay: Layout) -> int:
        return sum(self.g.space(s.space).size * s.factor for s in lay)

    def attach(self, lay: Layout, module: str, role: str) -> None:
        offset = 0
        for seg in lay:
            space = self.g.space(seg.space)
            getattr(space, role).append(Use(module, offset, seg.factor))
            offset += space.size * seg.factor

    def align(self, layouts: Sequence[Layout]) -> bool:
        first = layouts[0]
        for other in layouts[1:]:
            if len(other) != len(first) or any(
                    a.factor != b.factor or self.g.space(a.space).size != self.g.space(b.space).size
                    for a, b in zip(first, other, strict=True)):
                return False
        for other in layouts[1:]:
            for a, b in zip(first, other, strict=True):
                self.g.union(a.space, b.space)
        return True

    # -- visiting --

    def visit(self, node: fx.Node) -> None:
        if node.op in ("placeholder", "get_attr"):
            self.layouts[node] = None
        elif node.op == "output":
            self.block(node.all_input_nodes, "reaches the model's output")
        elif node.op == "call_module":
            self.call_module(node)
        else:
            self.call_function(node)
        if self.layouts.get(node) is not None and _shape(node) is None:
            self.unknown(node, "does not return a single tensor")

    def call_module(self, node: fx.Node) -> None:
        name = node.target
        m = self.g.modules[name]
        if name in self.tainted:
            self.unknown(node, self.tainted[name])
            return
        x = node.args[0] if node.args else None
        extra_inputs = [n for n in node.all_input_nodes if n is not x]
        if extra_inputs:
            self.unknown(node, "takes more than one tensor")
            return
        rule = layer_rule(m)
        if rule is None:
            self.unknown(node)
        elif rule.relation is Relation.BLOCKS:
            self.unknown(node, rule.reason or None)
        elif rule.relation is Relation.PASSES:
            self.layouts[node] = self.layout(x)
        elif rule.relation is Relation.FLATTENS:
            self.flatten(node, x, getattr(m, "start_dim", None), getattr(m, "end_dim", None))
        else:
            self.sliced_module(node, x, m, rule)

    def sliced_module(self, node: fx.Node, x: Any, m: nn.Module, rule: LayerRule) -> None:
        """A module the surgery changes: it starts a space and reads one (PRODUCES) or follows one (CHANNELWISE)."""
        name = node.target
        _check_rule(name, m, rule)
        lay, in_shape = self.layout(x), _shape(x)
        if rule.rank is not None and (in_shape is None or len(in_shape) != rule.rank):
            self.unknown(node, f"reads a tensor that is not {rule.rank}-D")
            return
        self.g.rules[name] = rule
        if rule.relation is Relation.PRODUCES:
            if lay is not None:
                if self.width(lay) == getattr(m, rule.in_size):
                    self.attach(lay, name, "consumers")
                else:
                    self.block([x], f"reaches module '{name}' in an unexpected layout")
            self.layouts[node] = (Segment(self.g.new_space(getattr(m, rule.out_size), name), 1),)
        elif lay is None:
            self.layouts[node] = None
        elif self.width(lay) == getattr(m, rule.out_size):
            self.attach(lay, name, "channelwise")
            if rule.unforced:
                for seg in lay:
                    self.g.space(seg.space).unforced.append(f"module '{name}' {rule.unforced}")
            self.layouts[node] = lay
        else:
            self.block([x], f"reaches module '{name}' in an unexpected layout")
            self.layouts[node] = None

    def call_function(self, node: fx.Node) -> None:
        target = node.target
        key: Any = target
        x = node.args[0] if node.args else None
        metadata = (node.op == "call_method" and target in _METADATA_METHODS) or (
            target is builtins.getattr and _arg(node, 1, "name") in _METADATA_ATTRIBUTES)
        if metadata or (target is operator.getitem and self.layout(x) is None and _shape(x) is None):
            self.layouts[node] = None
        elif key in _ZERO_FUNCTIONS or (node.op == "call_method" and key in _ZERO_METHODS):
            if key is F.hardtanh and not _arg(node, 1, "min_val", -1.0) <= 0 <= _arg(node, 2, "max_val", 1.0):
                self.unknown(node, "maps zero to non-zero")
                return
            tensors = [n for n in node.all_input_nodes if _shape(n) is not None]
            if len(tensors) != 1:
                self.unknown(node, "takes more than one tensor")
                return
            self.layouts[node] = self.layout(tensors[0])
        elif key in _ADD or key in _MUL or key in _DIV:
            self.binary(node, key)
        elif key in _CAT:
            self.cat(node)
        elif key in _FLATTEN:
            self.flatten(node, x, _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1))
        elif key in _RESHAPE:
            self.reshape(node, x)
        elif key in _MEAN:
            self.mean(node, x)
        else:
            self.unknown(node)

    def binary(self, node: fx.Node, key: Any) -> None:
        a = node.args[0] if node.args else node.kwargs.get("input")
        b = node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
        sa, sb = _shape(a), _shape(b)
        if sa is not None and sb is not None:
            la, lb = self.layout(a), self.layout(b)
            if key in _DIV:
                self.unknown(node, "divides two tensors")
            elif la is None and lb is None:
                self.layouts[node] = None
            elif (la is not None and lb is not None and len(sa) == len(sb) >= 2 and sa[1] == sb[1]
                  and self.align([la, lb])):
                self.layouts[node] = la
            else:
                self.unknown(node, "combines tensors whose channels do not line up")
        elif sa is not None and key not in _ADD:
            self.layouts[node] = self.layout(a)
        elif sb is not None and key in _MUL:
            self.layouts[node] = self.layout(b)
        else:
            self.unknown(node, "adds a constant" if key in _ADD else None)

    def cat(self, node: fx.Node) -> None:
        tensors = _arg(node, 0, "tensors")
        dim = _arg(node, 1, "dim", 0)
        if not isinstance(tensors, list | tuple) or not tensors or not isinstance(dim, int):
            self.unknown(node)
            return
        shapes = [_shape(t) for t in tensors]
        layouts = [self.layout(t) for t in tensors]
        if any(s is None for s in shapes) or any(lay is None for lay in layouts):
            self.unknown(node, "joins tensors the analysis does not follow")
            return
        rank = len(shapes[0])  # type: ignore[arg-type]
        if dim % rank == 1:
            self.layouts[node] = tuple(seg for lay in layouts for seg in lay)  # type: ignore[union-attr]
        elif self.align(layouts):  # type: ignore[arg-type]
            self.layouts[node] = layouts[0]
        else:
            self.unknown(node, "joins tensors whose channels do not line up")

    def flatten(self, node: fx.Node, x: Any, start: Any, end: Any) -> None:
        lay, shape, out = self.layout(x), _shape(x), _shape(node)
        if lay is None or shape is None or out is None:
            self.unknown(node)
            return
        rank = len(shape)
        if not (isinstance(start, int) and isinstance(end, int)) or start % rank != 1 or end % rank != rank - 1:
            self.unknown(node, "does not flatten everything after dimension 1")
            return
        factor = math.prod(shape[2:])
        self.layouts[node] = tuple(Segment(s.space, s.factor * factor) for s in lay)

    def reshape(self, node: fx.Node, x: Any) -> None:
        sizes = list(node.args[1:]) if node.op == "call_method" else [_arg(node, 1, "shape")]
        if len(sizes) == 1 and isinstance(sizes[0], list | tuple):
            sizes = list(sizes[0])
        shape, out = _shape(x), _shape(node)
        if len(sizes) == 2 and sizes[1] == -1 and shape is not None and out is not None and len(shape) >= 2 \
                and len(out) == 2 and out[0] == shape[0]:
            self.flatten(node, x, 1, -1)
        else:
            self.unknown(node, "reshapes to a fixed size")

    def mean(self, node: fx.Node, x: Any) -> None:
        dims = _arg(node, 1, "dim")
        shape = _shape(x)
        if shape is None or dims is None:
            self.unknown(node)
            return
        dims = [dims] if isinstance(dims, int) else list(dims)
        if len(shape) >= 3 and all(isinstance(d, int) and d % len(shape) >= 2 for d in dims):
            self.layouts[node] = self.layout(x)
        else:
            self.unknown(node, "averages across channels or the batch")


def channel_graph(model: nn.Module, example_input: Any) -> ChannelGraph:
    """Trace ``model``, run ``example_input`` through it for shapes (eval mode, no gradients, modes
    restored), and build its channel spaces. Module names carry DataParallel's ``module.`` prefix."""
    inner, prefix = unwrap(model)
    gm = trace(model)
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    modes = {m: m.training for m in inner.modules()}
    try:
        inner.eval()
        with torch.no_grad():
            ShapeProp(gm).propagate(*inputs)
    except Exception as exc:
        shapes = ", ".join(str(tuple(t.shape)) for t in inputs if isinstance(t, torch.Tensor))
        raise ThinningError(f"running {type(inner).__name__} on the example input ({shapes}) failed: "
                            f"{' '.join(str(exc).split())}; nothing was changed") from exc
    finally:
        for m, mode in modes.items():
            m.training = mode
    modules = dict(inner.named_modules())
    graph = ChannelGraph(model, modules)
    builder = _Builder(graph, gm)
    for node in gm.graph.nodes:
        builder.visit(node)
    if prefix:
        graph.modules = {f"{prefix}{k}": v for k, v in modules.items()}
        graph.rules = {f"{prefix}{k}": v for k, v in graph.rules.items()}
        for space in graph.spaces():
            space.producers = [f"{prefix}{p}" for p in space.producers]
            space.channelwise = [Use(f"{prefix}{u.module}", u.offset, u.factor) for u in space.channelwise]
            space.consumers = [Use(f"{prefix}{u.module}", u.offset, u.factor) for u in space.consumers]
    return graph
