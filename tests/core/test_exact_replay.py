"""``exact`` replays the real lower steps exactly, including parameters the real step did not update.

``torch.optim`` skips a parameter whose gradient is None: no weight decay, no momentum, no Adam moment
or step count. The differentiable replay must do the same, or it moves such a parameter (weight decay
pulls it towards zero) and differentiates a trajectory the run never took.
"""

import functools
import json

import pytest
import torch
from torch import nn

from engines import Graph, Level, Runner
from engines.closed_form import Vector

OPTIMIZERS = {
    "sgd": functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=0.2),
    "adam": functools.partial(torch.optim.Adam, lr=0.05, weight_decay=0.2),
    "adamw": functools.partial(torch.optim.AdamW, lr=0.05, weight_decay=0.2),
    "rmsprop": functools.partial(torch.optim.RMSprop, lr=0.01, momentum=0.9, weight_decay=0.2),
}


class WithUnused(nn.Module):
    """A used parameter vector and one no loss ever reads (a head left out of this configuration, say)."""

    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Parameter(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64))
        self.unused = nn.Parameter(torch.tensor([3.0, -2.0], dtype=torch.float64))

    def forward(self) -> torch.Tensor:
        return self.used


def _graph(optimizer: str, checkpoint: bool) -> Graph:
    def lower(lv, _):
        return ((lv.module() - lv.up.module()) ** 2).sum() + 0.1 * lv.module().pow(4).sum()

    def upper(lv, _):
        return (lv.low.module() - 1.0).pow(2).sum()

    g = Graph("unused")
    g.add(
        Level(
            "low",
            WithUnused(),
            OPTIMIZERS[optimizer],
            lower,
            hypergrad="exact",
            unroll=4,
            options={"checkpoint": checkpoint},
        )
    )
    g.add(Level("up", Vector(torch.tensor([0.2, 0.4, -0.3])), functools.partial(torch.optim.SGD, lr=0.1), upper))
    g.bilevel("low", "up")
    return g


@pytest.mark.parametrize("checkpoint", [False, True], ids=["full", "checkpointed"])
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_the_replay_keeps_a_parameter_without_gradient_where_the_real_step_left_it(tmp_path, optimizer, checkpoint):
    graph = _graph(optimizer, checkpoint)
    unused = graph["low"].module.unused
    start = unused.detach().clone()
    Runner(graph, 12, out=tmp_path, device="cpu", progress=False).run()
    assert torch.equal(unused.detach(), start)  # torch.optim never touched it
    assert not graph["low"].optimizer.state.get(unused)  # nor gave it any state
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    gaps = [ln["hypergradient"]["up<-low"]["low->up"]["replay_gap"] for ln in lines if ln["level"] == "up"]
    assert len(gaps) == 3
    assert all(gap < 1e-12 for gap in gaps), gaps  # without the skip, weight decay moved `unused`: gap 0.03-0.26
