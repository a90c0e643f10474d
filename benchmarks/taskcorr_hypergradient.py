"""W's hypergradient in the task-correlation recipe: each candidate against the gradient of what is trained.

Usage: python benchmarks/taskcorr_hypergradient.py --out DIR [--w-steps 150] [--every 10] [--inner-steps 2]
                                                   [--methods darts one_step ...] [--phases 2 4 8]

Audit (problems/taskcorr/audit.py): a 16×16 instance (the embedded MNI152 slices; training groups T1
radial 30 %, T1 Cartesian 25 %, T2 radial 30 %; validation T1 and T2 radial 25 %; 2 coils, T = 2,
width 4, Adam 1e-2 on θ, 0.1 on W; float64) is trained for --w-steps W-steps with each candidate; at
W-step 1 and every --every-th, the whole state is copied into a graph using `exact` and both take
the same inner loop of k θ-steps: the cosine and relative error of the candidate's hypergradient to
`exact`'s (the total derivative of the validation loss after the k real θ-steps) are recorded.

Memory: the peak tensor memory of one W-step (k θ-steps and the hypergradient; float32, 32×32,
4 coils, width 8) against the number of phases T, per method (engines.track_peak_memory).

Writes DIR/taskcorr_hypergradient.json and prints both tables.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "taskcorr"))
from taskcorr_fixtures import builder, config, groups, load_mni  # noqa: E402

from engines import track_peak_memory  # noqa: E402
from engines.golden import default_dtype  # noqa: E402
from problems.taskcorr.audit import InnerLoops, audit  # noqa: E402

CANDIDATES: dict[str, tuple[str, dict[str, Any]]] = {
    "darts": ("darts", {}),
    "sama": ("sama", {}),
    "one_step": ("one_step", {}),
    "adjoint_unroll, Hessian dropped": ("adjoint_unroll", {"hessian": False}),
    "adjoint_unroll, finite differences": ("adjoint_unroll", {"products": "finite_difference"}),
    "adjoint_unroll": ("adjoint_unroll", {}),
}
MEMORY_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "darts": ("darts", {}),
    "exact": ("exact", {}),
    "adjoint_unroll": ("adjoint_unroll", {}),
}


def audits(args: argparse.Namespace) -> list[dict[str, Any]]:
    with default_dtype(torch.float64):
        train, val = groups(load_mni())
    build = builder(train, val, config(), args.inner_steps)
    rows = []
    for label in args.methods:
        points = audit(build, CANDIDATES[label], w_steps=args.w_steps, every=args.every)
        for p in points:
            rows.append({"method": label, "k": args.inner_steps, **vars(p)})
        worst = min(p.cosine for p in points)
        print(f"[audit] {label:>36}: min cosine {worst:+.3f} over {len(points)} audits", flush=True)
    return rows


def memory(args: argparse.Namespace) -> list[dict[str, Any]]:
    train, val = groups(load_mni(32), coils=4)
    rows = []
    for phases in args.phases:
        network = config(coils=4, phases=phases, width=8, features=8)
        for label, candidate in MEMORY_METHODS.items():
            torch.manual_seed(0)
            loops = InnerLoops(builder(train, val, network, args.inner_steps)(*candidate), precision="fp32")
            loops.step()  # warm-up: optimizer state exists, the first W-step's lazy allocations are done
            with track_peak_memory("cpu") as mem:
                loops.step()
            loops.close()
            rows.append({"T": phases, "method": label, "k": args.inner_steps, "peak_bytes": mem.peak_bytes})
            print(f"[memory] T={phases:>2} {label:>15}: {mem.peak_bytes / 2**20:8.2f} MiB", flush=True)
    return rows


def tables(audited: list[dict[str, Any]], measured: list[dict[str, Any]]) -> str:
    steps = sorted({r["w_step"] for r in audited})
    lines = ["| method | " + " | ".join(f"W-step {s}" for s in steps) + " | min |", "|---|" + "---|" * (len(steps) + 1)]
    for label in dict.fromkeys(r["method"] for r in audited):
        cos = {r["w_step"]: r["cosine"] for r in audited if r["method"] == label}
        lines.append(f"| {label} | " + " | ".join(f"{cos[s]:+.3f}" for s in steps) + f" | {min(cos.values()):+.3f} |")
    lines += ["", "| T | " + " | ".join(MEMORY_METHODS) + " |", "|---|" + "---|" * len(MEMORY_METHODS)]
    for phases in dict.fromkeys(r["T"] for r in measured):
        peak = {r["method"]: r["peak_bytes"] for r in measured if r["T"] == phases}
        lines.append(f"| {phases} | " + " | ".join(f"{peak[m] / 2**20:.2f} MiB" for m in MEMORY_METHODS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for taskcorr_hypergradient.json")
    parser.add_argument("--w-steps", type=int, default=150, help="W-steps of every audited run")
    parser.add_argument("--every", type=int, default=10, help="audit every N W-steps (and at the first)")
    parser.add_argument("--inner-steps", type=int, default=2, help="k, θ-steps per W-step")
    parser.add_argument("--methods", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES))
    parser.add_argument("--phases", type=int, nargs="+", default=[2, 4, 8], help="values of T for the memory table")
    args = parser.parse_args(argv)
    if min(args.w_steps, args.every, args.inner_steps, *args.phases) < 1:
        parser.error("--w-steps, --every, --inner-steps and --phases must be >= 1")
    torch.set_num_threads(1)
    result = {"audit": audits(args), "memory": memory(args)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "taskcorr_hypergradient.json").write_text(json.dumps(result, indent=1))
    print(tables(result["audit"], result["memory"]))
    return result


if __name__ == "__main__":
    main()
