"""Distiller's AGP AlexNet schedule, driven through Distiller's method names, matches Distiller."""

from __future__ import annotations

import torch
import torchvision

import hookprune
from hookprune.pruning.levels import agp_target

# NNZ per layer in the sparsity table Distiller logged for this schedule (in the file's comments)
DISTILLER_NNZ = {
    "features.0.weight": 23232,
    "features.3.weight": 116736,
    "features.6.weight": 232244,
    "features.8.weight": 504300,
    "features.10.weight": 336200,
    "classifier.1.weight": 3397387,
    "classifier.4.weight": 1509950,
    "classifier.6.weight": 1024000,
}
WINDOWS = {  # pruner -> (initial, final, start, end, frequency, layers)
    "conv2": (0.03, 0.62, 1, 11, 2, ["features.3.weight"]),
    "conv3": (0.03, 0.65, 1, 11, 2, ["features.6.weight"]),
    "conv45": (0.03, 0.43, 1, 11, 2, ["features.8.weight", "features.10.weight"]),
    "fc": (0.05, 0.91, 0, 18, 2, ["classifier.1.weight", "classifier.4.weight"]),
    "fc3": (0.05, 0.75, 0, 18, 2, ["classifier.6.weight"]),
}


def expected_sparsity(layer: str, epoch: int) -> float:
    for initial, final, start, end, freq, layers in WINDOWS.values():
        if layer in layers:
            pruned = [e for e in range(start, end, freq) if e <= epoch]
            if not pruned:
                return 0.0
            return agp_target(initial, final, start, end, freq, pruned[-1])
    return 0.0


def test_alexnet_agp_gives_distillers_sparsity_at_every_epoch(corpus):
    torch.manual_seed(0)
    model = torchvision.models.alexnet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
    sched = hookprune.load(corpus / "agp-pruning/alexnet.schedule_agp.yaml", model, optimizer)
    params = dict(model.named_parameters())
    for epoch in range(20):
        sched.on_epoch_begin(epoch)
        sched.on_minibatch_begin(epoch, 0, 1, optimizer)
        sched.before_parameter_optimization(epoch, 0, 1, optimizer)
        sched.on_minibatch_end(epoch, 0, 1, optimizer)
        for layer in DISTILLER_NNZ:
            numel = params[layer].numel()
            zeros = numel - int(torch.count_nonzero(params[layer]))
            assert zeros == int(expected_sparsity(layer, epoch) * numel), (layer, epoch)
        # the LR policy starts at epoch 24, so no LR step happens in these epochs
        sched.on_epoch_end(epoch, optimizer)
        assert optimizer.param_groups[0]["lr"] == 0.005
    nnz = {layer: int(torch.count_nonzero(params[layer])) for layer in DISTILLER_NNZ}
    assert nnz == DISTILLER_NNZ
