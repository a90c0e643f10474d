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


def mlp_graph(
    method: str = "cg",
    options: dict | None = None,
    *,
    mark: bool = False,
    regulariser: bool = True,
    loss=None,
    module: nn.Module | None = None,
    upper_sign_flips: bool = False,
) -> Graph:
    """A non-convex 3-16-2 tanh MLP classifier (lower 'net', SGD) with a weight per training point (upper
    'weights', Adam), float64. ``mark``: the loss marks the logits; ``regulariser``: plus a weight decay
    term that reads θ directly; ``loss``/``module`` replace the lower loss / network; ``upper_sign_flips``:
    the upper loss changes sign every fourth step (a hypergradient that jumps)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=gen, dtype=torch.float64)
    y = (x[:, 0] * x[:, 1] > 0).long()
    data = torch.utils.data.TensorDataset(x, y, torch.arange(64))
    x_val, y_val = torch.randn(32, 3, dtype=torch.float64), torch.randint(0, 2, (32,))

    def lower(level, batch):
        xb, yb, idx = batch
        logits = level.module(xb)
        if mark:
            logits = level.mark_output(logits)
        weights = torch.sigmoid(level.weights.module(idx)).squeeze(1)
        ce = (weights * nn.functional.cross_entropy(logits, yb, reduction="none")).mean()
        reg = 1e-3 * sum(p.pow(2).sum() for p in level.module.parameters()) if regulariser else 0.0
        return ce + reg

    def upper(level, _):
        sign = -1.0 if upper_sign_flips and level.global_step % 4 == 2 else 1.0
        return sign * nn.functional.cross_entropy(level.net.module(x_val), y_val)

    g = Graph("mlp")
    net = module if module is not None else nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2)).double()
    sgd = functools.partial(torch.optim.SGD, lr=0.2)
    g.add(Level("net", net, sgd, loss or lower, DataStream(data, 16), hypergrad=method, options=options))
    g.add(Level("weights", nn.Embedding(64, 1).double(), functools.partial(torch.optim.Adam, lr=0.05), upper))
    g.bilevel("net", "weights")
    return g
