"""The default implicit method on a non-convex level that marks no outputs: what it solves and what it learns.

Usage: python benchmarks/nonconvex_default.py --out DIR [--steps N]

Problem (float64): a 2-16-16-1 tanh MLP (lower, SGD) regresses a smooth function from 64 training points,
a quarter of whose targets are corrupted; one learnable weight per training point (upper, Adam) is fit
on 64 clean validation points (validation MSE). The lower loss calls ``level.module(x)`` and marks
nothing. Compared over ``--steps`` lower steps (an outer step after every lower step, or after every
``K`` for ``exact``):

* ``cg (defaults)`` — curvature ``"auto"``: Gauss-Newton through the module's outputs;
* ``cg, curvature="hessian"`` — what ``"auto"`` resolved to before module outputs counted as marked;
* ``cg, outputs marked`` — the same loss with ``level.mark_output`` (must equal the default);
* ``exact`` — iterative differentiation through the last 5 lower steps (``unroll=5``);
* ``darts`` — the first-order finite-difference approximation.

Printed per run: the median and largest relative residual of the solves, the final damping, the
validation MSE at the end and the mean learned weight of the corrupted and of the clean points.
Writes DIR/nonconvex_default.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import warnings
from pathlib import Path

import torch
from torch import nn

from engines import DataStream, Graph, Level, Runner


def data(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(64, 2, generator=g, dtype=torch.float64) * 4 - 2
    y = torch.sin(x[:, :1] * 1.5) * torch.cos(x[:, 1:])
    corrupt = torch.zeros(64, dtype=torch.bool)
    corrupt[torch.randperm(64, generator=g)[:16]] = True
    y_train = torch.where(corrupt[:, None], -y + torch.randn(64, 1, generator=g, dtype=torch.float64), y)
    xv = torch.rand(64, 2, generator=g, dtype=torch.float64) * 4 - 2
    return {"x": x, "y": y_train, "xv": xv, "yv": torch.sin(xv[:, :1] * 1.5) * torch.cos(xv[:, 1:]), "corrupt": corrupt}


def program(method: str, options: dict, unroll: int, mark: bool, d: dict) -> Graph:
    torch.manual_seed(0)
    train = torch.utils.data.TensorDataset(d["x"], d["y"], torch.arange(64))

    def lower(level, batch):
        x, y, idx = batch
        out = level.module(x)
        if mark:
            out = level.mark_output(out)
        weights = torch.sigmoid(level.weights.module(idx))
        return (weights * (out - y) ** 2).mean()

    def upper(level, _):
        return ((level.net.module(d["xv"]) - d["yv"]) ** 2).mean()

    net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1)).double()
    weights = nn.Embedding(64, 1).double()
    nn.init.constant_(weights.weight, 2.0)
    g = Graph("nonconvex")
    g.add(
        Level(
            "net",
            net,
            functools.partial(torch.optim.SGD, lr=0.1),
            lower,
            DataStream(train, 32, seed=0),
            hypergrad=method,
            options=options,
            unroll=unroll,
        )
    )
    g.add(Level("weights", weights, functools.partial(torch.optim.Adam, lr=0.1), upper))
    g.bilevel("net", "weights")
    return g


RUNS: list[tuple[str, str, dict, int, bool]] = [
    ("cg (defaults)", "cg", {}, 1, False),
    ('cg, curvature="hessian"', "cg", {"curvature": "hessian"}, 1, False),
    ("cg, outputs marked", "cg", {}, 1, True),
    ("exact (K=5)", "exact", {}, 5, False),
    ("darts", "darts", {}, 1, False),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for nonconvex_default.json")
    parser.add_argument("--steps", type=int, default=150, help="lower steps")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    d = data()
    rows = []
    print(
        f"{'run':<26} {'median res.':>11} {'max res.':>9} {'damping':>8} {'val. MSE':>9} {'w corrupt':>9} {'w clean':>8}"
    )
    for label, method, options, unroll, mark in RUNS:
        graph = program(method, options, unroll, mark, d)
        runner = Runner(graph, args.steps, device="cpu", progress=False, precision="fp64")
        hops = []
        for _ in range(args.steps):
            runner.step()
            report = graph["weights"].hypergradient_report.get("weights<-net", {}).get("net->weights", {})
            if graph["net"].count % unroll == 0 and "residual" in report:
                hops.append(report)
        runner.close()
        with torch.no_grad():
            mse = float(((graph["net"].module(d["xv"]) - d["yv"]) ** 2).mean())
            w = torch.sigmoid(graph["weights"].module.weight.squeeze(1))
        residuals = [h["residual"] for h in hops]
        row = {
            "run": label,
            "hypergrad": method,
            "options": options,
            "unroll": unroll,
            "marked": mark,
            "steps": args.steps,
            "median_residual": statistics.median(residuals) if residuals else None,
            "max_residual": max(residuals) if residuals else None,
            "final_damping": hops[-1]["damping"] if hops else None,
            "curvature": hops[-1]["curvature"] if hops else None,
            "validation_mse": mse,
            "weight_corrupt": float(w[d["corrupt"]].mean()),
            "weight_clean": float(w[~d["corrupt"]].mean()),
        }
        rows.append(row)
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        print(
            f"{label:<26} {fmt(row['median_residual'], '.1e'):>11} {fmt(row['max_residual'], '.1e'):>9} "
            f"{fmt(row['final_damping'], '.2g'):>8} {mse:>9.4f} {row['weight_corrupt']:>9.3f} {row['weight_clean']:>8.3f}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "nonconvex_default.json").write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out / 'nonconvex_default.json'}")


if __name__ == "__main__":
    main()
