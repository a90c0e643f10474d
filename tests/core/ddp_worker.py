"""Run by tests/core/test_distributed.py under `torchrun --nproc_per_node 2` on CPU (gloo)."""

import functools
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from engines import DataStream, EarlyStopping, Graph, Level, run


class Indexed(torch.utils.data.Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 4, generator=g)
        self.y = (self.x.sum(1) > 0).long()

    def __len__(self):
        return 64

    def __getitem__(self, i):
        return self.x[i], self.y[i], i


def build(seen: list[list[int]]) -> Graph:
    torch.manual_seed(0)  # same initial weights on both ranks (rank 0's are broadcast anyway)
    x_val, y_val = torch.randn(32, 4), torch.randint(0, 2, (32,))

    def train_ce(level, batch):
        x, y, idx = batch
        if not seen or seen[-1] != idx.tolist():  # hypergradients recompute the loss on the same batch
            seen.append(idx.tolist())
        return nn.functional.cross_entropy(level.module(x * torch.sigmoid(level.gates.module.weight.squeeze(1))), y)

    plateau = functools.partial(torch.optim.lr_scheduler.ReduceLROnPlateau, mode="max", patience=0, factor=0.5)
    net = Level(
        "net",
        nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)),
        functools.partial(torch.optim.SGD, lr=0.1),
        train_ce,
        DataStream(Indexed(), batch_size=8),
        hypergrad="darts",
        scheduler=plateau,
    )
    gates = Level(
        "gates",
        nn.Linear(1, 4, bias=False),
        functools.partial(torch.optim.Adam, lr=0.1),
        lambda lv, _: nn.functional.cross_entropy(lv.net.module(x_val), y_val),
    )
    g = Graph("ddp")
    g.add(net, gates)
    g.bilevel(lower=net, upper=gates)
    return g


def main(out: Path) -> None:
    rank = dist.get_rank() if dist.is_initialized() else int(__import__("os").environ["RANK"])
    summary = {}
    for mode in ("early", "complete"):
        seen: list[list[int]] = []
        g = build(seen)
        scores = iter([0.1, 0.2, 0.3, 0.25, 0.2, 0.1, 0.0, 0.0, 0.0, 0.0])
        stopping = EarlyStopping(patience=2) if mode == "early" else None
        # rank 0 validates: only its validate function is ever called
        result = run(
            g,
            12,
            out=out / mode,
            device="cpu",
            progress=False,
            validate=lambda _, s=scores: {"score": next(s)},
            valid_every=2,
            early_stopping=stopping,
            checkpoint_every=4,
        )
        torch.save(
            {n: p.detach() for n, p in g["net"].module.state_dict().items()}
            | {"gates": g["gates"].module.weight.detach()},
            out / f"params_{mode}_{rank}.pt",
        )
        summary[mode] = {
            "world": dist.get_world_size(),
            "steps": result.steps,
            "stop": result.stop_reason,
            "seen": seen,
            "lr": g["net"].optimizer.param_groups[0]["lr"],
            "best": result.best,
        }
    (out / f"rank_{rank}.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
