"""The ``--summary`` reports other than sparsity: compute (MACs and weights per layer, dense against compressed),
the model as PyTorch prints it, its modules by name and type, and a drawing of its graph."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from hookprune.apputils.errors import AppError
from hookprune.compute import LayerCompute, layer_compute

#: ``--summary`` values, as Distiller names them
SUMMARY_CHOICES = ("sparsity", "compute", "model", "modules", "png")


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.2f}%" if whole else "-"


def _breakdown(what: str, dense: int, thinned: int, nonzero: int) -> str:
    return (f"{what}: dense {dense:,}; removed structures {dense - thinned:,} ({_percent(dense - thinned, dense)}); "
            f"zeros {thinned - nonzero:,} ({_percent(thinned - nonzero, dense)}); left {nonzero:,} "
            f"({_percent(nonzero, dense)})")


def compute_table(dense: Sequence[LayerCompute], compressed: Sequence[LayerCompute]) -> str:
    """Per convolution and linear layer: weights and MACs per sample of the dense model, of the compressed one's
    shapes (what thinning left) and of its non-zero weights, then the totals and what each kind of compression
    removed: ``structures`` (filters, channels removed by thinning: smaller shapes) and ``zeros`` (elements masked
    to zero inside the remaining shapes). ``dense`` and ``compressed`` are the same architecture's layers."""
    by_name = {layer.name: layer for layer in dense}
    missing = [layer.name for layer in compressed if layer.name not in by_name]
    if missing or len(dense) != len(compressed):
        raise AppError(f"--summary compute: the compressed model's layers do not match the dense model's "
                       f"({', '.join(missing) or 'a different layer count'})")
    width = max([len(layer.name) for layer in compressed] + [len("Total")])
    heads = ("Weights", "Thinned", "Non-zero", "MACs", "Thinned MACs", "Non-zero MACs")
    lines = [f"{'Name':<{width}}  {'Type':<7} {'Shape':<18} " + " ".join(f"{h:>13}" for h in heads)]
    sums = [0] * 6
    for layer in compressed:
        ref = by_name[layer.name]
        cells = (ref.weights, layer.weights, layer.nonzeros, ref.macs, layer.macs, layer.nonzero_macs)
        sums = [a + b for a, b in zip(sums, cells, strict=True)]
        lines.append(f"{layer.name:<{width}}  {layer.kind:<7} {layer.weight_shape!s:<18} "
                     + " ".join(f"{c:>13,}" for c in cells))
    lines.append(f"{'Total':<{width}}  {'':<7} {'':<18} " + " ".join(f"{c:>13,}" for c in sums))
    weights, thinned, nonzeros, macs, thinned_macs, nonzero_macs = sums
    lines.append(_breakdown("MACs", macs, thinned_macs, nonzero_macs))
    lines.append(_breakdown("Weights", weights, thinned, nonzeros))
    return "\n".join(lines)


def compute_summary(dense: nn.Module, compressed: nn.Module, example_input: Any) -> str:
    """:func:`compute_table` of ``dense`` (a freshly built model of the architecture) against ``compressed``."""
    return compute_table(layer_compute(dense, example_input), layer_compute(compressed, example_input))


def modules_table(model: nn.Module) -> str:
    """Every module's name and type, one a line, the model itself first as ``(model)``."""
    rows = [(name or "(model)", type(module).__name__) for name, module in model.named_modules()]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {kind}" for name, kind in rows)


def draw_graph(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Draw ``model``'s graph (traced by torch.fx: modules, functions, inputs and output) as a PNG at ``path``,
    one row per depth from the input; returns the path. Needs matplotlib, else an :class:`AppError` saying so."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise AppError("--summary png draws with matplotlib, which is not installed: pip install matplotlib"
                       ) from None
    from hookprune.thinning import ThinningError, trace

    try:
        graph = trace(model).graph
    except ThinningError as exc:
        raise AppError(f"--summary png: {exc}") from None
    depth: dict[Any, int] = {}
    rows: dict[int, list[Any]] = {}
    for node in graph.nodes:
        depth[node] = 1 + max((depth[n] for n in node.all_input_nodes), default=-1)
        rows.setdefault(depth[node], []).append(node)
    where = {node: (i - (len(row) - 1) / 2, -level) for level, row in rows.items() for i, node in enumerate(row)}
    wide = max(len(row) for row in rows.values())
    fig = Figure(figsize=(max(4.0, 2.6 * wide), max(3.0, 0.7 * len(rows))))
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    modules = dict(model.named_modules())
    for node, (x, y) in where.items():
        for src in node.all_input_nodes:
            sx, sy = where[src]
            ax.annotate("", (x, y + 0.18), (sx, sy - 0.18), arrowprops={"arrowstyle": "->", "color": "0.4"})
        if node.op == "call_module":
            label, color = f"{node.target}\n{type(modules[node.target]).__name__}", "#cfe2f3"
        elif node.op in ("call_function", "call_method"):
            label, color = getattr(node.target, "__name__", str(node.target)), "#fff2cc"
        else:
            label, color = node.op if node.op == "output" else node.name, "#d9ead3"
        ax.text(x, y, label, ha="center", va="center", fontsize=7,
                bbox={"boxstyle": "round", "facecolor": color, "edgecolor": "0.5"})
    ax.set_xlim(-wide / 2 - 0.5, wide / 2 + 0.5)
    ax.set_ylim(-len(rows) + 0.4, 0.6)
    fig.savefig(path, dpi=100)
    return Path(path)
