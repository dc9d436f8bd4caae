"""Plain training loops that fire hookprune's events, shared by the tests."""

from __future__ import annotations

import torch


def run(sched, model, optimizer, data, epochs, start_epoch=0, loss_fn=None, spy=None, fire=None):
    """Fire every event of epochs ``start_epoch .. epochs - 1`` over ``data`` (a list of ``(x, y)``);
    ``spy(epoch, minibatch_id)`` runs before each forward pass. Returns the losses ``before_backward``
    gave back."""
    fire = fire or sched.fire
    loss_fn = loss_fn or torch.nn.functional.cross_entropy
    losses = []
    for epoch in range(start_epoch, epochs):
        fire("on_epoch_begin", epoch=epoch)
        for i, (x, y) in enumerate(data):
            step = {"epoch": epoch, "minibatch_id": i, "minibatches_per_epoch": len(data)}
            fire("on_minibatch_begin", **step)
            if spy is not None:
                spy(epoch, i)
            loss = fire("before_backward", **step, loss=loss_fn(model(x), y))
            losses.append(loss.detach())
            optimizer.zero_grad()
            loss.backward()
            fire("before_optimizer_step", **step)
            optimizer.step()
            fire("on_minibatch_end", **step)
        fire("on_epoch_end", epoch=epoch, metrics={"min": float(losses[-1]), "max": 0.0})
    return losses


def train(sched, model, optimizer, epochs, batches=2, fire=None, seed=0, start_epoch=0):
    """:func:`run` over ``batches`` random LeNet-sized minibatches (64 features, 10 classes)."""
    gen = torch.Generator().manual_seed(seed)
    data = [(torch.randn(8, 64, generator=gen), torch.randint(0, 10, (8,), generator=gen)) for _ in range(batches)]
    return run(sched, model, optimizer, data, epochs, start_epoch=start_epoch, fire=fire)
