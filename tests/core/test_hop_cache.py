"""A lower loss may compute a value from the upper's parameters once per hypergradient and reuse it
through ``level.hop_cache`` (RM-MetaL's support features): every method that recomputes the loss
several times must then give the same hypergradient as when the value is recomputed each time."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from engines import Graph, Level


def feature_graph(method: str, cached: bool) -> Graph:
    """Lower: linear heads on features ``tanh(x θ)``; upper: θ (the feature map) on a validation loss."""
    torch.manual_seed(0)
    x, y = torch.randn(32, 5, dtype=torch.float64), torch.randn(32, 3, dtype=torch.float64)
    x_val, y_val = torch.randn(16, 5, dtype=torch.float64), torch.randn(16, 3, dtype=torch.float64)

    def features(level: Level, inputs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(inputs @ level.backbone.module.weight.T)

    def head_loss(level: Level, _batch: object) -> torch.Tensor:
        if cached and not level.in_real_step:
            if "features" not in level.hop_cache:
                level.hop_cache["features"] = features(level, x)
            feats = level.hop_cache["features"]
        else:
            feats = features(level, x)
        return (level.module(feats) - y).pow(2).mean() + 0.1 * level.module.weight.pow(2).sum()

    def val_loss(level: Level, _batch: object) -> torch.Tensor:
        return (level.heads.module(torch.tanh(x_val @ level.module.weight.T)) - y_val).pow(2).mean()

    heads = Level(
        "heads",
        nn.Linear(4, 3).double(),
        functools.partial(torch.optim.SGD, lr=0.1),
        head_loss,
        hypergrad=method,
        unroll=2,
    )
    backbone = Level(
        "backbone", nn.Linear(5, 4, bias=False).double(), functools.partial(torch.optim.SGD, lr=0.1), val_loss
    )
    g = Graph(f"cache-{method}")
    g.add(heads, backbone)
    g.bilevel(lower=heads, upper=backbone)
    return g


@pytest.mark.parametrize("method", ["darts", "sama", "one_step", "cg", "neumann", "exact"])
def test_a_value_cached_across_recomputations_gives_the_uncached_hypergradient(method):
    results = {}
    for cached in (False, True):
        g = feature_graph(method, cached)
        g.run(steps=4, device="cpu", progress=False)
        results[cached] = g["backbone"].hypergradients["backbone<-heads"][0]
    assert torch.allclose(results[True], results[False], rtol=1e-10, atol=1e-14)
    assert results[True].abs().max() > 0
