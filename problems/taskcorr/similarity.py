"""A measured task similarity to set beside the learned task weights σ(W).

σ(w_j)_i is what the upper level learned to weight training group i with for validation group j;
the paper reads it as their correlation. This module measures one such correlation directly: the
cosine between the gradient of training group i's loss and that of validation group j's loss, at
network θ_j, each over all samples of its group. A positive cosine means a step on B_i also lowers
the loss on V_j; a training group of pure noise should show a cosine near or below zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .groups import ReconGroup
from .loss import LossWeights, reconstruction_loss
from .optimal_control import OptimalControlNet

__all__ = ["gradient_similarity", "group_gradient"]


def group_gradient(
    net: OptimalControlNet, group: ReconGroup, loss_weights: LossWeights | None = None, *, batch_size: int = 8
) -> Tensor:
    """∇_θ of the mean of ℓ over every sample of ``group`` (flattened, float64, on the CPU)."""
    loss_weights = loss_weights or LossWeights()
    params = list(net.parameters())
    device, dtype = params[0].device, params[0].dtype
    complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    total = [torch.zeros_like(p) for p in params]
    for start in range(0, len(group), batch_size):
        b = group.batch(slice(start, start + batch_size))
        recon = net(b.kspace.to(device, complex_dtype), b.masks.to(device, dtype))
        loss = reconstruction_loss(recon, b.coils.to(device, complex_dtype), loss_weights).sum() / len(group)
        for t, g in zip(total, torch.autograd.grad(loss, params, allow_unused=True)):
            if g is not None:
                t.add_(g)
    return torch.cat([t.detach().double().flatten().cpu() for t in total])


def gradient_similarity(
    nets: Sequence[OptimalControlNet],
    train_groups: Sequence[ReconGroup],
    val_groups: Sequence[ReconGroup],
    loss_weights: LossWeights | None = None,
) -> Tensor:
    """``[N, M]``: cos(∇ℓ(θ_j; B_i), ∇ℓ(θ_j; V_j)) with θ_j = ``nets[j]`` (``nets[0]`` for every column when
    there is one network)."""
    if len(nets) not in (1, len(val_groups)):
        raise ValueError(f"gradient_similarity: {len(nets)} networks for {len(val_groups)} validation groups")
    out = torch.zeros(len(train_groups), len(val_groups), dtype=torch.float64)
    for j, val in enumerate(val_groups):
        net = nets[j] if len(nets) > 1 else nets[0]
        target = group_gradient(net, val, loss_weights)
        for i, train in enumerate(train_groups):
            out[i, j] = torch.nn.functional.cosine_similarity(group_gradient(net, train, loss_weights), target, dim=0)
    return out
