"""Top-1 and top-5 accuracy and mean loss of a classifier over a data split, summed over the ranks of a
distributed run."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hookprune import distributed
from hookprune.apputils.errors import AppError


@dataclass
class Scores:
    """Top-1 and top-5 accuracy (percent) and mean loss over a data split."""

    top1: float
    top5: float
    loss: float


def evaluate(model: nn.Module, loader: torch.utils.data.DataLoader, device: torch.device,
             reduce: bool = False, confusion: torch.Tensor | None = None) -> Scores:
    """Accuracy and cross-entropy of ``model`` over ``loader``, in eval mode and without gradients.

    With ``reduce`` (distributed training: ``loader`` reads this rank's shard), the counts and sums are added
    over all ranks, so every rank gets the scores of the whole split. The bare model runs, with rank 0's buffers:
    DistributedDataParallel's forward would broadcast buffers, a collective that shards of unequal length cannot
    match call for call. An empty split raises :class:`AppError`. ``confusion``, a classes x classes integer
    tensor, receives the count of each (true class, predicted class) pair, summed over the ranks with ``reduce``.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    if reduce:
        distributed.broadcast_buffers(model)
    model.eval()
    count, loss_sum, hits1, hits5 = 0, 0.0, 0, 0
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            out = model(x)
            loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
            top = out.topk(min(5, out.shape[1]), dim=1).indices
            hits1 += int((top[:, 0] == y).sum())
            hits5 += int((top == y[:, None]).any(dim=1).sum())
            count += len(y)
            if confusion is not None:
                classes = confusion.shape[0]
                pairs = y.cpu() * classes + top[:, 0].cpu()
                confusion += torch.bincount(pairs, minlength=classes * classes).view(classes, classes)
    if reduce:
        sums = distributed.all_sum([count, loss_sum, hits1, hits5])
        count, loss_sum, hits1, hits5 = int(sums[0]), sums[1], int(sums[2]), int(sums[3])
        if confusion is not None:
            summed = distributed.all_sum(confusion.flatten().tolist())
            confusion.copy_(torch.tensor(summed, dtype=torch.float64).round().view_as(confusion))
    if not count:
        raise AppError("the evaluation split is empty: lower --vs or raise --effective-*-size")
    return Scores(100 * hits1 / count, 100 * hits5 / count, loss_sum / count)
