"""Graphs for the hypergradient doctor's tests, built in float64 so nothing depends on float32 kernels."""

from __future__ import annotations

import functools

import torch
from torch import nn

from engines import DataStream, Graph, Level

DTYPE = torch.float64


class Examples(torch.utils.data.Dataset):
    """Two-class points with their index (the per-example weight they use); a quarter of the labels flipped."""

    def __init__(self, n: int = 48, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 6, generator=g, dtype=DTYPE)
        y = (self.x[:, 0] - self.x[:, 1] > 0).long()
        flip = torch.rand(n, generator=g) < 0.25
        self.y = torch.where(flip, 1 - y, y)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], i


class Weights(nn.Module):
    """One logit per training example."""

    def __init__(self, n: int):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(n, dtype=DTYPE))


def reweighting(method: str = "cg", *, unroll: int = 5, options: dict | None = None, seed: int = 0) -> Graph:
    """Per-example weights (upper, Adam) over an MLP classifier (lower, Adam, K = ``unroll``) trained on the
    weighted cross-entropy; the upper loss is the validation cross-entropy. Far from a lower optimum at
    the start, which implicit methods assume."""
    torch.manual_seed(seed)
    train = Examples(48, seed)
    g_val = torch.Generator().manual_seed(seed + 1)
    x_val = torch.randn(32, 6, generator=g_val, dtype=DTYPE)
    y_val = (x_val[:, 0] - x_val[:, 1] > 0).long()
    net = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 2)).to(DTYPE)

    def weighted_ce(level: Level, batch) -> torch.Tensor:
        x, y, index = batch
        w = torch.sigmoid(level.weights.module.logits[index])
        ce = nn.functional.cross_entropy(level.mark_output(level.module(x)), y, reduction="none")
        return (w * ce).mean()

    def val_ce(level: Level, _) -> torch.Tensor:
        return nn.functional.cross_entropy(level.classifier.module(x_val), y_val)

    classifier = Level(
        "classifier",
        net,
        functools.partial(torch.optim.Adam, lr=0.02),
        weighted_ce,
        DataStream(train, batch_size=16, seed=seed),
        hypergrad=method,
        unroll=unroll,
        options=options,
    )
    weights = Level("weights", Weights(len(train)), functools.partial(torch.optim.Adam, lr=0.05), val_ce)
    graph = Graph("reweighting")
    graph.add(classifier, weights)
    graph.bilevel(lower=classifier, upper=weights)
    return graph
