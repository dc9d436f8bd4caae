"""What a model computes: the multiply-accumulates (MACs) and weights of each convolution and linear layer.

A layer's MACs are its weight's elements times the output positions each weight element is used at (the
output's spatial size for a convolution, the positions before the last dimension for a linear layer), per
sample; biases are not counted, as in Distiller's ``model_performance_summary``. The count follows the layer's
current shapes, so a thinned model reports what its smaller layers compute, and ``nonzero_macs`` counts only the
non-zero weight elements (what a sparse kernel would compute).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

#: the layers counted: the ones that hold the MACs of a classifier
COUNTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class LayerCompute:
    """One layer's weights and MACs per sample, for the shapes it has now."""

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    weights: int
    nonzeros: int
    macs: int
    nonzero_macs: int


def layer_compute(model: nn.Module, example_input: Any) -> list[LayerCompute]:
    """Run ``model`` once on ``example_input`` (eval mode, no gradients) and return, in call order, the weights and
    MACs per sample of every convolution and linear layer it called. The batch size of ``example_input`` does not
    matter; a layer called twice counts twice."""
    names = {id(m): n for n, m in model.named_modules()}
    found: list[LayerCompute] = []

    def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        weight = module.weight.detach()
        per_sample = tuple(output.shape[1:])
        positions = math.prod(per_sample[:-1]) if isinstance(module, nn.Linear) else math.prod(per_sample[1:])
        nonzeros = int(torch.count_nonzero(weight))
        found.append(LayerCompute(names.get(id(module), type(module).__name__), type(module).__name__,
                                  tuple(weight.shape), per_sample, weight.numel(), nonzeros,
                                  weight.numel() * positions, nonzeros * positions))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, COUNTED)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return found


def total_macs(layers: Sequence[LayerCompute]) -> int:
    """The MACs per sample of all ``layers`` (dense for their shapes)."""
    return sum(layer.macs for layer in layers)
