"""Cost of one meta-iteration of every DuMeta++ meta-training graph, at a preset's sizes, on the embedded data.

    python benchmarks/dumeta_cost.py [--preset smoke|study] [--rounds 5] [--threads 1] [--out FILE]

For each method (joint training, DuMeta++, its ablations C and E, MAML, Reptile) it builds the run's
graph exactly as ``recipes/dumeta.py`` does (``graph_for``), takes one warm-up meta-iteration, then
times ``--rounds`` meta-iterations (Reptile's K inner steps and its outer step count as one) and
reports their median, and the peak of live tensor memory during one meta-iteration
(engines/memory.py: on CPU the tensors created inside the step, parameters and data excluded).
Rounds are interleaved across methods, so load on the machine affects all of them alike. Prints a
Markdown table and, with ``--out``, writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
import dumeta  # noqa: E402
import planning  # noqa: E402

from engines import Runner, track_peak_memory  # noqa: E402

METHODS = ("joint", "dumeta++", "mfl+mil", "sample", "maml", "reptile")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=("smoke", "study"), default="smoke")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe_args = dumeta.parse_args(["--preset", args.preset, "--device", "cpu", "--methods", *METHODS])
    plan = dumeta.make_plan(recipe_args)
    _, preset, _, _ = dumeta.resolve(recipe_args)
    ctx = dumeta.Context(preset, plan.settings, recipe_args, torch.device("cpu"))
    data = ctx.data(0)
    runners, per_step, memory = {}, {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the sequential-order fallback warning, once per graph
        for method in METHODS:
            graph, steps, _ = dumeta.graph_for(planning.RunSpec(method, 0), ctx, data)
            runners[method] = (Runner(graph, 10**6, device="cpu", seed=0, progress=False), steps // preset.steps)
    for method, (runner, k) in runners.items():
        for _ in range(k):  # warm-up
            runner.step()
        with track_peak_memory("cpu") as report:
            for _ in range(k):
                runner.step()
        memory[method] = report.peak_bytes / 2**20
    for _ in range(args.rounds):
        for method, (runner, k) in runners.items():
            t0 = time.perf_counter()
            for _ in range(k):
                runner.step()
            per_step.setdefault(method, []).append(time.perf_counter() - t0)
    rows = [
        {
            "method": m,
            "preset": args.preset,
            "base_width": preset.base_width,
            "threads": args.threads,
            "median_s": statistics.median(per_step[m]),
            "peak_mib": memory[m],
        }
        for m in METHODS
    ]
    print("| method | one meta-iteration (median, s) | peak live tensors (MiB) |\n|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['median_s']:.3f} | {r['peak_mib']:.1f} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
