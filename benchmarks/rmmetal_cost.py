"""What a preset of ``recipes/rmmetal.py`` costs: seconds per outer step of every algorithm it trains, the
meta-test's seconds per task, and the whole run extrapolated from them (how the study preset was sized).

    python benchmarks/rmmetal_cost.py [--preset smoke|study] [--rounds 2] [--threads 1]

Every algorithm's graph is built as the recipe builds it (``graph_for``'s configuration, the preset's
sizes) and timed with the recipe's own alternating measurement (problems/rmmetal/timing.py: one
warm-up outer step each, then ``--rounds`` rounds of one outer step per algorithm). The meta-test
protocol (fine-tuning a head on each task, problems/rmmetal/metatest.py) is timed on the untrained
backbone over the preset's validation tasks. The estimate: per seed, for every trained algorithm,
T outer steps, T / valid_every validations and one meta-test on the test tasks (the measurements
of memory, timing and the hypergradient check are not included). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
import rmmetal  # noqa: E402

from problems.fewshot import load_fewshot  # noqa: E402
from problems.rmmetal import evaluate, time_per_outer_step  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=("smoke", "study"), default="study")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe_args = rmmetal.parse_args(["--preset", args.preset, "--device", "cpu"])
    plan = rmmetal.make_plan(recipe_args)
    p, device = plan.values, torch.device("cpu")
    ctx = rmmetal.Context(plan, load_fewshot("digits", None), device, recipe_args)
    configs = [ctx.config(m) for m in plan.methods]
    timing = time_per_outer_step(configs, ctx.data, device, 0, rounds=args.rounds)
    meta = rmmetal.graph_for(rmmetal.RunSpec("rm-metal", 0), ctx)["backbone"].module
    t0 = time.perf_counter()
    evaluate(meta, ctx.episodes(0)["val"], plan.protocol)
    per_task = (time.perf_counter() - t0) / p.valid_tasks
    evaluating = (p.steps // p.valid_every * p.valid_tasks + p.test_tasks) * per_task
    per_run = {m: p.steps * statistics.median(timing["seconds"][m]) + evaluating for m in plan.methods}
    total = len(plan.seeds) * sum(per_run.values())
    print(f"| algorithm | one outer step (median, s) | one run of {p.steps} outer steps with its meta-tests (min) |")
    print("|---|---|---|")
    for m in plan.methods:
        print(f"| {m} | {timing['median_seconds'][m]:.3f} | {per_run[m] / 60:.1f} |")
    print(f"\nmeta-test: {per_task * 1000:.1f} ms per task; {len(plan.seeds)} seeds: about {total / 60:.0f} min")
    return {**per_run, "total": total}


if __name__ == "__main__":
    main()
