"""2:4 semi-structured sparse weights (``torch.sparse.to_sparse_semi_structured``) for sparse tensor cores.

A schedule with ``NMSparsityPruner`` (``n: 2``, ``m: 4``) leaves at most two non-zeros in every four consecutive
inputs of a weight; on a CUDA GPU of compute capability 8.0 or later (Ampere and newer) torch stores such a Linear
weight compressed (half the values plus 2-bit indices) and multiplies it on the sparse tensor cores. Elsewhere the
conversion is refused in one line, and so is a weight that is not 2:4 sparse (the compression would drop weights).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from hookprune.deploy.errors import DeployError

#: torch's semi-structured kernels need this compute capability or later
MIN_CAPABILITY = (8, 0)


def unsupported_reason(device: torch.device | str) -> str | None:
    """Why ``device`` cannot run 2:4 semi-structured sparse weights, or None when it can."""
    device = torch.device(device)
    need = ("2:4 semi-structured sparse weights need a CUDA GPU of compute capability "
            f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or later (sparse tensor cores)")
    if device.type != "cuda" or not torch.cuda.is_available():
        return f"{need}; the device is {device}"
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        return f"{need}; {torch.cuda.get_device_name(device)} has {capability[0]}.{capability[1]}"
    return None


def dense_groups(weight: torch.Tensor) -> int:
    """How many groups of four consecutive inputs (along dimension 1) of ``weight`` hold more than two non-zeros
    (a 2-D weight whose input dimension is not a multiple of 4 counts every row)."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return weight.shape[0] if weight.dim() else 1
    return int(((weight.detach().reshape(-1, 4) != 0).sum(dim=1) > 2).sum())


def check_2to4(weight: torch.Tensor, name: str) -> None:
    """A :class:`DeployError` naming ``name`` unless ``weight`` is a 2-D weight with at most two non-zeros in every
    four consecutive inputs."""
    if weight.dim() != 2:
        raise DeployError(f"'{name}' has shape {tuple(weight.shape)}: 2:4 semi-structured sparsity is for the 2-D "
                          "weights of Linear layers")
    if weight.shape[1] % 4:
        raise DeployError(f"'{name}' has {weight.shape[1]} inputs, not a multiple of 4: it cannot be 2:4 sparse")
    dense = dense_groups(weight)
    if dense:
        raise DeployError(f"'{name}' is not 2:4 sparse: {dense} of its {weight.numel() // 4} groups of 4 consecutive "
                          "inputs hold more than 2 non-zeros (prune it with NMSparsityPruner n=2 m=4 first)")


def to_semi_structured(model: nn.Module, names: Iterable[str] | None = None) -> dict[str, str | None]:
    """Replace the weights of the Linear layers ``names`` (default: every Linear layer) by 2:4 semi-structured
    sparse tensors, for inference. Every listed weight must be 2:4 sparse, and the model must be on a device that
    supports it, else a :class:`DeployError` in one line and nothing changes. Returns, per layer, None when it was
    converted, or why torch's kernels do not take its shape or dtype (the layer then stays dense)."""
    params = next(iter(model.parameters()), None)
    device = params.device if params is not None else torch.device("cpu")
    reason = unsupported_reason(device)
    if reason is not None:
        raise DeployError(reason)
    linears = {name: module for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    wanted = list(linears) if names is None else list(names)
    for name in wanted:
        if name not in linears:
            raise DeployError(f"'{name}' is not a Linear layer of the model")
        check_2to4(linears[name].weight, f"{name}.weight")
    from torch.sparse import to_sparse_semi_structured

    result: dict[str, str | None] = {}
    for name in wanted:
        module = linears[name]
        try:
            sparse = to_sparse_semi_structured(module.weight.detach())
        except (RuntimeError, ValueError) as exc:
            result[name] = " ".join(str(exc).split())
            continue
        module.weight = nn.Parameter(sparse, requires_grad=False)
        result[name] = None
    return result
