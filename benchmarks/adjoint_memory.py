"""Peak memory and time of one gradient of the optimal-control network: autograd against the adjoint paths.

Usage: python benchmarks/adjoint_memory.py --out DIR [--device auto|cpu|cuda] [--phases 2 4 8 16]
                                           [--size 64] [--coils 4] [--batch 4] [--width 16] [--features 16]

For every number of phases T and every gradient path of problems/taskcorr/optimal_control.py (``autograd``;
``adjoint``: states stored, costates by per-phase vector-Jacobian products; ``adjoint_checkpointed``:
every ceil(sqrt(T))-th state stored, segments recomputed) this measures one forward pass plus one
backward pass of the reconstruction loss, in float32: the peak tensor memory above the parameters
and data (CUDA peak allocated on GPU; live CPU tensor storages on CPU, see engines/memory.py) and
the median wall-clock time over ``--repeats`` runs after one warm-up. It also checks that the three
gradients agree. Writes DIR/adjoint_memory.json and prints a Markdown table (T, method, peak bytes,
time).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from engines import resolve_device, track_peak_memory
from problems.mri import fft2c, sampling_mask, simulate_coil_maps
from problems.taskcorr import LossWeights, reconstruction_loss
from problems.taskcorr.optimal_control import GRADIENT_PATHS, ControlNetConfig, OptimalControlNet


def problem(args: argparse.Namespace, phases: int, device: torch.device):
    torch.manual_seed(0)
    config = ControlNetConfig(
        coils=args.coils, phases=phases, width=args.width, features=args.features, kernel=args.kernel
    )
    net = OptimalControlNet(config).to(device)
    shape = (args.size, args.size)
    images = torch.rand(args.batch, *shape)
    coils = (simulate_coil_maps(shape, args.coils) * images[:, None].to(torch.complex64)).to(device)
    mask = sampling_mask("radial", 0.25, shape).to(device)
    return net, mask * fft2c(coils), mask, coils


def one_gradient(net: OptimalControlNet, kspace: torch.Tensor, mask: torch.Tensor, coils: torch.Tensor) -> list:
    loss = reconstruction_loss(net(kspace, mask), coils, LossWeights()).sum()
    return list(torch.autograd.grad(loss, list(net.parameters())))


def measure(args: argparse.Namespace, phases: int, path: str, device: torch.device) -> tuple[dict, list]:
    net, kspace, mask, coils = problem(args, phases, device)
    net.gradient = path
    grads = one_gradient(net, kspace, mask, coils)  # warm-up
    with track_peak_memory(device) as mem:
        grads = one_gradient(net, kspace, mask, coils)
    times = []
    for _ in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        one_gradient(net, kspace, mask, coils)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    row = {
        "T": phases,
        "method": path,
        "peak_bytes": mem.peak_bytes,
        "time_s": statistics.median(times),
        "checkpoint_every": net.checkpoint_every if path == "adjoint_checkpointed" else None,
        "measured_by": mem.method,
    }
    return row, [g.detach().cpu() for g in grads]


def markdown(rows: list[dict]) -> str:
    lines = [
        "| T | method | peak bytes | peak MiB | × autograd | time (ms) | max rel. gradient difference |",
        "|---|---|---|---|---|---|---|",
    ]
    base = {r["T"]: r["peak_bytes"] for r in rows if r["method"] == "autograd"}
    for r in rows:
        lines.append(
            f"| {r['T']} | {r['method']} | {r['peak_bytes']} | {r['peak_bytes'] / 2**20:.2f} | "
            f"{r['peak_bytes'] / base[r['T']]:.3f} | {1e3 * r['time_s']:.1f} | "
            f"{r['gradient_difference']:.1e} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for adjoint_memory.json")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--phases", type=int, nargs="+", default=[2, 4, 8, 16], help="values of T")
    parser.add_argument("--size", type=int, default=64, help="image side (pixels)")
    parser.add_argument("--coils", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--width", type=int, default=16, help="channels of the k-space block and J, J̃")
    parser.add_argument("--features", type=int, default=16, help="channels of g, g̃")
    parser.add_argument("--kernel", type=int, default=3, help="kernel of g, g̃")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row (median)")
    args = parser.parse_args(argv)
    if min(args.phases) < 1:
        parser.error(f"--phases must be >= 1, got {args.phases}")
    device = resolve_device(args.device)
    rows = []
    for phases in args.phases:
        reference = None
        for path in GRADIENT_PATHS:
            row, grads = measure(args, phases, path, device)
            if reference is None:
                reference = grads
            row["gradient_difference"] = max(
                float((g - r).norm() / r.norm().clamp_min(1e-30)) for g, r in zip(grads, reference)
            )
            row.update(
                size=args.size,
                coils=args.coils,
                batch=args.batch,
                width=args.width,
                features=args.features,
                kernel=args.kernel,
                device=str(device),
            )
            rows.append(row)
            print(
                f"[adjoint_memory] T={phases:>3} {path:>21}: {row['peak_bytes'] / 2**20:8.2f} MiB "
                f"{1e3 * row['time_s']:8.1f} ms"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "adjoint_memory.json").write_text(json.dumps(rows, indent=1))
    print(markdown(rows))
    return rows


if __name__ == "__main__":
    main()
