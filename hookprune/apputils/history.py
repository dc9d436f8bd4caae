"""A run's record of its epochs: which epoch is the best, the ``summary.json`` beside the checkpoints, and
the plot of accuracy and sparsity per epoch.

An epoch's entry is a dict with at least ``epoch``, ``val_top1``, ``sparsity`` (percent) and ``nonzeros``.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hookprune.apputils.checkpoint import CheckpointError, atomic_write
from hookprune.apputils.evaluation import Scores
from hookprune.apputils.training import EpochLoss
from hookprune.sparsity import LayerSparsity, total_sparsity


def epoch_entry(epoch: int, loss: EpochLoss, scores: Scores, rows: Sequence[LayerSparsity], lr: float,
                ) -> dict[str, Any]:
    """The history entry of epoch ``epoch``: its training losses, validation ``scores``, the weights' sparsity
    (percent) and non-zero count from the sparsity report ``rows``, and the learning rate ``lr``."""
    return {"epoch": epoch, "train_loss": loss.total, "train_objective": loss.objective,
            "loss_components": loss.components, "val_top1": scores.top1, "val_top5": scores.top5,
            "val_loss": scores.loss, "sparsity": 100 * total_sparsity(rows), "nonzeros": sum(r.nonzeros for r in rows),
            "lr": lr}


def layer_records(rows: Iterable[LayerSparsity]) -> list[dict[str, Any]]:
    """A sparsity report as ``summary.json`` lists its layers: plain values, the fractions in percent."""
    layers = []
    for row in rows:
        entry = row.as_dict()
        for key in ("sparsity", "filter", "channel", "row", "column"):
            entry[key] = None if entry[key] is None else 100 * entry[key]
        layers.append(entry)
    return layers


def best_key(entry: Mapping[str, Any]) -> tuple[int, float, int]:
    """Distiller's choice of the best epoch: the fewest non-zero weights (so a thinned model beats the masked
    one it came from), then the most accurate, then the latest. The best entry is ``max(history, key=best_key)``."""
    return (-entry["nonzeros"], entry["val_top1"], entry["epoch"])


#: the numbers of an epoch entry a resumed run reads back (the best epoch, the report)
ENTRY_NUMBERS = ("epoch", "val_top1", "nonzeros", "sparsity")


def resumed_history(checkpoint: Mapping[str, Any], path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The epoch entries of a checkpoint the application wrote (``extras.history``), each checked to hold the
    numbers a resumed run reads; raises :class:`~hookprune.apputils.checkpoint.CheckpointError` naming the file."""
    history = list((checkpoint.get("extras") or {}).get("history") or [])
    for index, entry in enumerate(history):
        bad = [k for k in ENTRY_NUMBERS if not isinstance(entry.get(k), int | float) or isinstance(entry.get(k), bool)]
        if bad:
            raise CheckpointError(f"checkpoint '{os.fspath(path)}' is malformed: epoch entry #{index + 1} of "
                                  f"'extras.history' lacks the number{'s' if len(bad) > 1 else ''} {', '.join(bad)}")
    return history


def write_json(data: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """``data`` as indented JSON with a final newline, written atomically (see :func:`atomic_write`)."""
    atomic_write((json.dumps(data, indent=2) + "\n").encode(), path)


def plot_training(history: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> None:
    """Validation top-1 and total weight sparsity per epoch, one panel each, as a PNG written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(7, 6), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(epochs, [h["val_top1"] for h in history], marker="o", label="validation top-1")
    top.set_ylabel("top-1 (%)")
    top.grid(alpha=0.3)
    top.legend(loc="lower right")
    bottom.plot(epochs, [h["sparsity"] for h in history], marker="o", color="tab:red")
    bottom.set_ylabel("weight sparsity (%)")
    bottom.set_xlabel("epoch")
    bottom.set_ylim(0, 100)
    bottom.grid(alpha=0.3)
    fig.suptitle("Accuracy and sparsity per epoch")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write(buffer.getvalue(), path)
