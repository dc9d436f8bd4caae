"""A plain training loop that fires hookprune's events, shared by the tests."""

from __future__ import annotations

import torch


def train(sched, model, optimizer, epochs, batches=2, fire=None, seed=0, start_epoch=0):
    """A plain training loop driven by ``fire``; returns the losses ``before_backward`` gave back."""
    fire = fire or sched.fire
    gen = torch.Generator().manual_seed(seed)
    data = [(torch.randn(8, 64, generator=gen), torch.randint(0, 10, (8,), generator=gen)) for _ in range(batches)]
    losses = []
    for epoch in range(start_epoch, epochs):
        fire("on_epoch_begin", epoch=epoch)
        for i, (x, y) in enumerate(data):
            fire("on_minibatch_begin", epoch=epoch, minibatch_id=i, minibatches_per_epoch=batches)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss = fire("before_backward", epoch=epoch, minibatch_id=i, minibatches_per_epoch=batches, loss=loss)
            losses.append(loss.detach())
            optimizer.zero_grad()
            loss.backward()
            fire("before_optimizer_step", epoch=epoch, minibatch_id=i, minibatches_per_epoch=batches)
            optimizer.step()
            fire("on_minibatch_end", epoch=epoch, minibatch_id=i, minibatches_per_epoch=batches)
        fire("on_epoch_end", epoch=epoch, metrics={"min": float(losses[-1]), "max": 0.0})
    return losses
