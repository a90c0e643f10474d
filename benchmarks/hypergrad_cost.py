"""Cost of each hypergradient method on a small convolutional bilevel problem.

Usage: python benchmarks/hypergrad_cost.py --out DIR [--device auto|cpu|cuda] [--steps N]

Problem: a 4-layer CNN with BatchNorm (lower) classifies 32x32 images with one learnable
loss weight per training image (upper, Meta-Weight-Net style), scored on a validation batch.
For every method this measures one *outer step* (K lower steps, then the upper step with its
hypergradient) against one plain training step of the same CNN: the time ratio (median over
``--steps`` outer steps after warm-up) and the peak tensor memory ratio (CUDA peak allocated on
GPU; live CPU tensor storages on CPU, see engines/memory.py). Writes DIR/hypergrad_cost.json.
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
    ("neumann (5 it.)", "neumann", 1, {"iterations": 5, "alpha": 0.1}),
    ("betty_cg (5 it.)", "betty_cg", 1, {"iterations": 5}),
    ("cg (5 it.)", "cg", 1, {"maxiter": 5, "tol": 0.0, "damping": 0.1}),
    ("cg_warm (5 it.)", "cg_warm", 1, {"maxiter": 5, "tol": 0.0, "damping": 0.1}),
    ("first_order", "first_order", 1, {}),
    ("exact, K=1", "exact", 1, {}),
    ("exact, K=5", "exact", 5, {}),
    ("cg_warm (5 it.), K=5", "cg_warm", 5, {"maxiter": 5, "tol": 0.0, "damping": 0.1}),
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

    return nn.Sequential(*block(3, 32), *block(32, 32), *block(32, 64), *block(64, 64), nn.Flatten(),
                         nn.Linear(64 * 2 * 2, 10))


def build(method: str | None, unroll: int, options: dict, batch: int) -> Graph:
    torch.manual_seed(0)
    data = Images()
    x_val, y_val = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))

    def weighted_ce(level, b):
        x, y, idx = b
        ce = nn.functional.cross_entropy(level.module(x), y, reduction="none")
        if method is None:
            return ce.mean()
        return (torch.sigmoid(level.weights.module(idx)).squeeze(1) * ce).mean()

    def val_ce(level, _):
        return nn.functional.cross_entropy(level.net.module(x_val.to(level.device)), y_val.to(level.device))

    net = Level("net", cnn(), functools.partial(torch.optim.Adam, lr=1e-3), weighted_ce,
                DataStream(data, batch_size=batch), hypergrad=method or "darts", unroll=unroll, options=options)
    g = Graph("cost")
    g.add(net)
    if method is not None:
        g.add(Level("weights", nn.Embedding(len(data), 1), functools.partial(torch.optim.Adam, lr=1e-2), val_ce))
        g.bilevel(lower="net", upper="weights")
    return g


def measure(method: str | None, unroll: int, options: dict, device: torch.device, steps: int, batch: int) -> dict:
    """Median seconds and peak bytes of one outer step (``unroll`` global steps)."""
    graph = build(method, unroll, options, batch)
    runner = Runner(graph, (steps + 3) * unroll + unroll, device=device, progress=False)
    runner.start()
    for _ in range(2 * unroll):  # warm-up (allocator, first Adam state, recorded trajectories)
        runner.step()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(unroll):
            runner.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    with track_peak_memory(device) as mem:
        for _ in range(unroll):
            runner.step()
    runner.close()
    return {"time_s": statistics.median(times), "peak_bytes": mem.peak_bytes, "memory_method": mem.method}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for hypergrad_cost.json")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--steps", type=int, default=10, help="timed outer steps per method")
    parser.add_argument("--batch", type=int, default=32, help="images per batch")
    args = parser.parse_args()
    device = resolve_device(args.device)
    warnings.simplefilter("ignore")
    plain = measure(None, 1, {}, device, args.steps, args.batch)
    print(f"plain step of the lower level on {device}: {plain['time_s'] * 1e3:.1f} ms, "
          f"peak {plain['peak_bytes'] / 2**20:.1f} MiB ({plain['memory_method']})")
    rows = []
    print(f"{'method':<24} {'K':>2} {'ms/outer':>9} {'time x plain':>13} {'peak MiB':>9} {'memory x plain':>15}")
    for label, method, unroll, options in CASES:
        m = measure(method, unroll, options, device, args.steps, args.batch)
        row = {
            "method": label, "hypergrad": method, "unroll": unroll, "options": options, "device": str(device),
            "time_per_outer_step_s": m["time_s"], "time_ratio": m["time_s"] / plain["time_s"],
            "peak_memory_bytes": m["peak_bytes"], "memory_ratio": m["peak_bytes"] / plain["peak_bytes"],
            "plain_step_s": plain["time_s"], "plain_peak_memory_bytes": plain["peak_bytes"],
            "memory_method": m["memory_method"], "batch": args.batch,
        }
        rows.append(row)
        print(f"{label:<24} {unroll:>2} {m['time_s'] * 1e3:>9.1f} {row['time_ratio']:>13.2f} "
              f"{m['peak_bytes'] / 2**20:>9.1f} {row['memory_ratio']:>15.2f}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hypergrad_cost.json").write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out / 'hypergrad_cost.json'}")


if __name__ == "__main__":
    main()
