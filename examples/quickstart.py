"""Compress LeNet-300-100 on scikit-learn's digits with an AGP schedule, driven by hookprune.fire.

    python examples/quickstart.py [--schedule examples/schedules/lenet300_100.agp.yaml] [--epochs 20]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from sklearn.datasets import load_digits

import hookprune
from hookprune import models
from hookprune.sparsity import format_table

HERE = Path(__file__).resolve().parent


def digits(seed: int) -> tuple[torch.utils.data.TensorDataset, torch.utils.data.TensorDataset]:
    """The 1797 8x8 digits, scaled to [0, 1], split 80/20 with a fixed permutation."""
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(x))
    train, test = order[:cut], order[cut:]
    return (torch.utils.data.TensorDataset(x[train], y[train]), torch.utils.data.TensorDataset(x[test], y[test]))


def accuracy(model: torch.nn.Module, data: torch.utils.data.TensorDataset) -> float:
    model.eval()
    with torch.no_grad():
        x, y = data.tensors
        return float((model(x).argmax(1) == y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedule", default=str(HERE / "schedules" / "lenet300_100.agp.yaml"))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    train_set, test_set = digits(args.seed)
    loader = torch.utils.data.DataLoader(train_set, batch_size=32, shuffle=True,
                                         generator=torch.Generator().manual_seed(args.seed))
    model = models.create_model("lenet300_100", input_features=64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    criterion = torch.nn.CrossEntropyLoss()
    hookprune.load(args.schedule, model, optimizer)

    steps = len(loader)
    for epoch in range(args.epochs):
        hookprune.fire("on_epoch_begin", epoch=epoch)
        model.train()
        for i, (x, y) in enumerate(loader):
            hookprune.fire("on_minibatch_begin", epoch=epoch, minibatch_id=i, minibatches_per_epoch=steps)
            loss = criterion(model(x), y)
            loss = hookprune.fire("before_backward", epoch=epoch, minibatch_id=i, minibatches_per_epoch=steps,
                                  loss=loss)
            optimizer.zero_grad()
            loss.backward()
            hookprune.fire("before_optimizer_step", epoch=epoch, minibatch_id=i, minibatches_per_epoch=steps)
            optimizer.step()
            hookprune.fire("on_minibatch_end", epoch=epoch, minibatch_id=i, minibatches_per_epoch=steps)
        top1 = accuracy(model, test_set)
        hookprune.fire("on_epoch_end", epoch=epoch, metrics={"min": float(loss), "max": top1})
        sparsity = hookprune.active().total_sparsity()
        print(f"epoch {epoch:3d}  loss {float(loss):.4f}  top1 {100 * top1:6.2f}%  "
              f"lr {optimizer.param_groups[0]['lr']:.4f}  sparsity {100 * sparsity:6.2f}%")

    print()
    print(format_table(hookprune.active().sparsity()))
    print(f"\nTest top-1: {100 * accuracy(model, test_set):.2f}%")


if __name__ == "__main__":
    main()
