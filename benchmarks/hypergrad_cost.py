"""Cost of each hypergradient method on a small convolutional bilevel problem.

Usage: python benchmarks/hypergrad_cost.py --out DIR [--device auto|cpu|cuda] [--rounds N] [--threads T]

Problem: a 4-layer CNN with BatchNorm (lower, non-convex; its loss marks the logits so implicit
methods can use Gauss-Newton curvature) classifies 32x32 images with one learnable loss weight per
training image (upper, Meta-Weight-Net style), scored on a validation batch. For every method this
measures one *outer step* (K lower steps, then the upper step with its hypergradient) against one
plain training step of the same CNN.

Timing is interleaved round-robin: in every round each method takes one outer step and the plain
CNN one step, so load on the machine affects all methods alike; the ratio to the plain step of the
same round is summarised by its median and interquartile range over ``--rounds`` rounds, with the
thread count fixed (``--threads``). Peak memory is the peak tensor memory of one outer step (CUDA
peak allocated on GPU; live CPU tensor storages on CPU, see engines/memory.py). For implicit
methods each row also reports the median relative residual reached and products done per solve.
Writes DIR/hypergrad_cost.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from engines import DataStream, Graph, Level, Runner, resolve_device, track_peak_memory

CASES: list[tuple[str, str, int, dict]] = [
    ("darts", "darts", 1, {}),
    ("sama", "sama", 1, {}),
    ("one_step", "one_step", 1, {}),
    ("cg (defaults)", "cg", 1, {}),
    ("cg, double-VJP products", "cg", 1, {"jvp": "reverse"}),
    ("cg_warm (defaults)", "cg_warm", 1, {}),
    (
        "cg, Hessian, damping 0.1 (5 it.)",
        "cg",
        1,
        {"maxiter": 5, "tol": 0.0, "damping": 0.1, "curvature": "hessian", "adaptive_damping": False},
    ),
    ("cg, Hessian, MINRES", "cg", 1, {"curvature": "hessian", "solver": "minres"}),
    ("neumann (5 it., Gauss-Newton)", "neumann", 1, {"iterations": 5, "alpha": 0.02}),
    ("betty_cg (5 it.)", "betty_cg", 1, {"iterations": 5}),
    ("first_order", "first_order", 1, {}),
    ("exact", "exact", 1, {}),
    ("exact", "exact", 5, {}),
    ("exact, checkpointed", "exact", 1, {"checkpoint": True}),
    ("exact, checkpointed", "exact", 5, {"checkpoint": True}),
    ("cg_warm (defaults)", "cg_warm", 5, {}),
]


class Images(torch.utils.data.Dataset):
    def __init__(self, n: int = 256):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, 32, 32, generator=g)
        self.y = torch.randint(0, 10, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], i


def cnn() -> nn.Module:
    def block(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(
        *block(3, 32), *block(32, 32), *block(32, 64), *block(64, 64), nn.Flatten(), nn.Linear(64 * 2 * 2, 10)
    )


def build(method: str | None, unroll: int, options: dict, batch: int, backend: str | None = None) -> Graph:
    """The program: per-example weights (upper) of the CNN (lower); ``method=None``: the CNN alone (plain
    training). ``backend``: the CNN is ``torch.compile(cnn, backend=backend)``."""
    torch.manual_seed(0)
    data = Images()
    x_val, y_val = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))

    def weighted_ce(level, b):
        x, y, idx = b
        logits = level.mark_output(level.module(x))
        ce = nn.functional.cross_entropy(logits, y, reduction="none")
        if method is None:
            return ce.mean()
        return (torch.sigmoid(level.weights.module(idx)).squeeze(1) * ce).mean()

    def val_ce(level, _):
        dtype = next(level.net.module.parameters()).dtype
        return nn.functional.cross_entropy(level.net.module(x_val.to(level.device, dtype)), y_val.to(level.device))

    net = Level(
        "net",
        cnn() if backend is None else torch.compile(cnn(), backend=backend),
        functools.partial(torch.optim.Adam, lr=1e-3),
        weighted_ce,
        DataStream(data, batch_size=batch),
        hypergrad=method or "darts",
        unroll=unroll,
        options=options,
    )
    g = Graph("cost")
    g.add(net)
    if method is not None:
        g.add(Level("weights", nn.Embedding(len(data), 1), functools.partial(torch.optim.Adam, lr=1e-2), val_ce))
        g.bilevel(lower="net", upper="weights")
    return g


class Case:
    """One method's runner, stepped one outer step at a time."""

    def __init__(
        self, label: str, method: str | None, unroll: int, options: dict, device: torch.device, batch: int, rounds: int
    ):
        self.label, self.method, self.unroll, self.options = label, method, unroll, options
        self.graph = build(method, unroll, options, batch)
        self.runner = Runner(self.graph, (rounds + 4) * unroll, device=device, progress=False)
        self.device = device
        self.times: list[float] = []
        self.solves: list[dict] = []
        for _ in range(2):  # warm-up (allocator, first Adam state, recorded trajectories, damping adapted)
            self.outer_step()

    def outer_step(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        for _ in range(self.unroll):
            self.runner.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if self.method is not None:
            hop = self.graph["weights"].hypergradient_report.get("weights<-net", {}).get("net->weights", {})
            self.solves.append(hop)
        return time.perf_counter() - t0

    def peak_memory(self) -> tuple[int, str]:
        with track_peak_memory(self.device) as mem:
            for _ in range(self.unroll):
                self.runner.step()
        return mem.peak_bytes, mem.method


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return q[0], statistics.median(values), q[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for hypergrad_cost.json")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds (one outer step of every method each)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (fixed for every method)")
    parser.add_argument("--batch", type=int, default=32, help="images per batch")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    plain = Case("plain step", None, 1, {}, device, args.batch, args.rounds)
    cases = [Case(label, m, k, o, device, args.batch, args.rounds) for label, m, k, o in CASES]
    for _ in range(args.rounds):
        base = plain.outer_step()
        plain.times.append(base)
        for case in cases:
            case.times.append(case.outer_step() / base)  # ratio to the plain step of this round
    plain_peak, how = plain.peak_memory()
    print(
        f"plain step on {device} ({args.threads} thread(s)): median {statistics.median(plain.times) * 1e3:.1f} ms, "
        f"peak {plain_peak / 2**20:.1f} MiB ({how})"
    )
    print(f"{'method':<34} {'K':>2} {'time x plain (IQR)':>22} {'peak x plain':>13} {'residual':>9} {'products':>9}")
    rows = []
    for case in cases:
        peak, _ = case.peak_memory()
        low, median, high = quartiles(case.times)
        solves = [s for s in case.solves[2:] if "residual" in s]
        residual = statistics.median(s["residual"] for s in solves) if solves else None
        products = (
            statistics.median(s["products"] for s in case.solves[2:] if "products" in s)
            if any("products" in s for s in case.solves)
            else None
        )
        row = {
            "method": case.label,
            "hypergrad": case.method,
            "unroll": case.unroll,
            "options": case.options,
            "device": str(device),
            "threads": args.threads,
            "rounds": args.rounds,
            "time_ratio": median,
            "time_ratio_q1": low,
            "time_ratio_q3": high,
            "peak_memory_bytes": peak,
            "memory_ratio": peak / plain_peak,
            "plain_peak_memory_bytes": plain_peak,
            "plain_step_s": statistics.median(plain.times),
            "memory_method": how,
            "batch": args.batch,
            "median_relative_residual": residual,
            "median_products": products,
            "final_damping": case.solves[-1].get("damping") if case.solves else None,
        }
        rows.append(row)
        res = f"{residual:.1e}" if residual is not None else "-"
        prod = f"{products:.0f}" if products is not None else "-"
        print(
            f"{case.label:<34} {case.unroll:>2} {median:>8.2f} ({low:.2f}-{high:.2f})    {peak / plain_peak:>10.2f}   "
            f"{res:>9} {prod:>9}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hypergrad_cost.json").write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out / 'hypergrad_cost.json'}")


if __name__ == "__main__":
    main()
