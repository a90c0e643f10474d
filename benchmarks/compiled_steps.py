"""What compiling the lower network (``torch.compile``) saves per outer step, for each hypergradient method.

Usage: python benchmarks/compiled_steps.py --out DIR [--rounds N] [--batch B] [--backend inductor] [--threads T]

The lower level's module of the benchmark CNN program (``hypergrad_cost.py``) is ``torch.compile(cnn)``:
real steps run the compiled network, every hypergradient recomputation the original module eagerly (same
parameters; see ``engines.level.eager``). For each method, the compiled program and the eager one take
one outer step per round, alternating which goes first; the table gives the median (and IQR) of the
compiled/eager time ratio (per-process CPU time), the same for a plain training step, and the relative
difference between the two programs' hypergradients after the warm-up (float32 kernels of the compiled
graph may round differently). Compilation happens in the warm-up and is reported separately.
Writes DIR/compiled_steps.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import torch
from hypergrad_cost import build  # the benchmark CNN (this folder is on sys.path)

from engines import Runner

CASES: list[tuple[str, str | None, int, dict]] = [
    ("plain step", None, 1, {}),
    ("darts", "darts", 1, {}),
    ("one_step", "one_step", 1, {}),
    ("cg (defaults)", "cg", 1, {}),
    ("exact", "exact", 1, {}),
]


def runner(method: str | None, unroll: int, options: dict, batch: int, backend: str | None) -> Runner:
    return Runner(build(method, unroll, dict(options), batch, backend), 10**6, device="cpu", progress=False)


def outer_step(r: Runner, unroll: int) -> float:
    t0 = time.thread_time()
    for _ in range(unroll):
        r.step()
    return time.thread_time() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for compiled_steps.json")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds")
    parser.add_argument("--batch", type=int, default=32, help="images per batch")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    rows = []
    print(f"{'method':<16} {'compiled/eager (IQR)':>22} {'warm-up s':>10} {'hypergradient rel. diff':>24}")
    for label, method, unroll, options in CASES:
        eager, compiled = (
            runner(method, unroll, options, args.batch, None),
            runner(method, unroll, options, args.batch, args.backend),
        )
        outer_step(eager, unroll)
        t0 = time.perf_counter()
        outer_step(compiled, unroll)  # compiles
        warmup = time.perf_counter() - t0
        difference = None
        if method is not None:
            a = eager.graph["weights"].hypergradients["weights<-net"][0]
            b = compiled.graph["weights"].hypergradients["weights<-net"][0]
            difference = float((a - b).norm() / a.norm())
        ratios = []
        for r in range(args.rounds):
            first, second = (eager, compiled) if r % 2 == 0 else (compiled, eager)
            times = {id(first): outer_step(first, unroll), id(second): outer_step(second, unroll)}
            ratios.append(times[id(compiled)] / times[id(eager)])
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        rows.append(
            {
                "method": label,
                "hypergrad": method,
                "unroll": unroll,
                "backend": args.backend,
                "time_ratio_compiled_to_eager": q[1],
                "time_ratio_q1": q[0],
                "time_ratio_q3": q[2],
                "warmup_s": warmup,
                "hypergradient_relative_difference": difference,
                "rounds": args.rounds,
                "batch": args.batch,
            }
        )
        diff = "-" if difference is None else f"{difference:.1e}"
        print(f"{label:<16} {q[1]:>8.2f} ({q[0]:.2f}-{q[2]:.2f})    {warmup:>10.1f} {diff:>24}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compiled_steps.json").write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out / 'compiled_steps.json'}")


if __name__ == "__main__":
    main()
