"""Text tables the application prints on request: the masks' sparsity (``--masks-sparsity``), the confusion matrix
(``--confusion``) and the best epochs so far (``--num-best-scores``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from hookprune.apputils.history import best_key


def masks_table(masks: Mapping[str, torch.Tensor]) -> str:
    """Each mask's shape, kept elements and sparsity (the share of elements it zeroes), with a total line."""
    if not masks:
        return "masks: none"
    width = max([len(name) for name in masks] + [len("Total")])
    lines = [f"{'Mask':<{width}}  {'Shape':<20} {'Kept':>12} {'Sparsity':>9}"]
    kept_all = numel_all = 0
    for name, mask in masks.items():
        kept, numel = int(torch.count_nonzero(mask)), mask.numel()
        kept_all, numel_all = kept_all + kept, numel_all + numel
        lines.append(f"{name:<{width}}  {tuple(mask.shape)!s:<20} {kept:>12} {100 * (1 - kept / numel):>8.2f}%")
    lines.append(f"{'Total':<{width}}  {'':<20} {kept_all:>12} {100 * (1 - kept_all / numel_all):>8.2f}%")
    return "\n".join(lines)


def confusion_table(matrix: torch.Tensor) -> str:
    """The confusion matrix, rows the true class and columns the predicted one, with each row's accuracy."""
    classes = matrix.shape[0]
    width = max(len(str(int(matrix.max()))) if matrix.numel() else 1, len(str(classes - 1)), 3)
    lines = ["Confusion matrix (rows: true class, columns: predicted class)",
             f"{'':>5} " + " ".join(f"{c:>{width}}" for c in range(classes)) + "  accuracy"]
    for c in range(classes):
        row = matrix[c]
        total = int(row.sum())
        accuracy = f"{100 * int(row[c]) / total:7.2f}%" if total else "      -"
        lines.append(f"{c:>5} " + " ".join(f"{int(v):>{width}}" for v in row) + f"  {accuracy}")
    return "\n".join(lines)


def best_scores(history: Sequence[Mapping[str, Any]], count: int) -> list[str]:
    """The ``count`` best epochs of ``history`` by Distiller's rule (:func:`best_key`), best first, one line each."""
    ranked = sorted(history, key=best_key, reverse=True)[:count]
    return [f"==> best [top-1 {e['val_top1']:.2f}%  top-5 {e['val_top5']:.2f}%  sparsity {e['sparsity']:.2f}%  "
            f"non-zero weights {e['nonzeros']}] on epoch {e['epoch'] + 1}" for e in ranked]
