"""Small graphs shared by the engine tests: fast on CPU, yet with dropout, BatchNorm,
random per-item augmentation, Adam state and a scheduler, so resuming is non-trivial."""

from __future__ import annotations

import functools

import torch
from torch import nn

from engines import DataStream, Graph, Level


class NoisyPoints(torch.utils.data.Dataset):
    """Two-class points; ``sample(index, seed)`` adds seeded jitter (a random augmentation)."""

    def __init__(self, n: int = 96, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = (self.x[:, 0] + self.x[:, 1] > 0).long()

    def __len__(self) -> int:
        return len(self.x)

    def sample(self, index: int, seed: int):
        jitter = 0.1 * torch.randn(4, generator=torch.Generator().manual_seed(seed))
        return self.x[index] + jitter, self.y[index]


def classifier() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))


def reweighting_graph(
    method: str = "cg_warm", unroll: int = 2, seed: int = 0, options: dict | None = None, lower_loss=None
) -> Graph:
    """A classifier (lower) trained with learnable per-feature input gates (upper) on validation CE."""
    torch.manual_seed(seed)
    data = NoisyPoints(seed=seed)
    val = NoisyPoints(64, seed=seed + 1)
    x_val, y_val = val.x, val.y

    def train_ce(level, batch):
        x, y = batch
        gates = torch.sigmoid(level.gates.module.weight).squeeze(1)
        return nn.functional.cross_entropy(level.module(x * gates), y)

    def val_ce(level, _):
        return nn.functional.cross_entropy(level.net.module(x_val), y_val)

    if options is None and method in ("cg", "cg_warm"):
        options = {"maxiter": 5, "damping": 1.0}  # the MLP is non-convex: damp the Hessian
    net = Level(
        "net",
        classifier(),
        functools.partial(torch.optim.Adam, lr=0.05),
        lower_loss or train_ce,
        DataStream(data, batch_size=16, seed=seed),
        hypergrad=method,
        unroll=unroll,
        options=options,
        scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=7, gamma=0.5),
    )
    gates = Level("gates", nn.Linear(1, 4, bias=False), functools.partial(torch.optim.Adam, lr=0.05), val_ce)
    g = Graph("toy")
    g.add(net, gates)
    g.bilevel(lower=net, upper=gates)
    return g


def parameters(graph: Graph) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{k}": v.detach().clone()
        for name, lv in graph.levels.items()
        for k, v in lv.module.state_dict().items()
    }
