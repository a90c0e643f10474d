"""The hypergradient doctor on the E2EAug smoke graph, after training has run for a while.

Usage: python benchmarks/e2eaug_doctor.py --run DIR [--hypergrad H] [--methods one_step darts ...] [--rounds N]

``DIR`` is the folder of a finished or interrupted smoke ``e2eaug`` run of
``recipes/e2eaug.py --dataset isic --methods e2eaug --out OUT`` (``OUT/runs/e2eaug__backboneunet__n20__seed0``).
``--doctor`` on the recipe examines a run's first outer step, where RMSprop (``seg``) takes its first
step with an empty state: that step is ``lr·g/√((1-α)·g²)``, a sign-like map whose derivative is close
to zero, so any one-step look-ahead is degenerate there. This script examines the state of the run's
``checkpoint_latest.pt`` instead (the optimizers' states warmed by the run's steps) and writes
``hypergrad_doctor.{md,json,png}`` into ``DIR/doctor_at_checkpoint/``. Float64 end to end, so the
accuracy columns are the same on every machine; the time columns depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))

import e2eaug  # noqa: E402  (the recipe's own graph builder)
from doctor import write_doctor  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="the smoke e2eaug run's folder")
    parser.add_argument("--methods", nargs="+", default=None, help="candidates (default: every applicable one)")
    parser.add_argument("--rounds", type=int, default=1, help="timed runs of each method")
    parser.add_argument(
        "--hypergrad", default=None, help="the run's --hypergrad, if it set one (the configured method)"
    )
    args = parser.parse_args(argv)
    checkpoint = args.run / "checkpoint_latest.pt"
    if not checkpoint.exists():
        raise SystemExit(f"error: --run {args.run}: no checkpoint_latest.pt (train the smoke e2eaug run first)")
    out = args.run.parents[1]  # OUT/runs/<run> -> OUT: the samples and pre-trainings the run used
    argv = ["--dataset", "isic", "--preset", "smoke", "--methods", "e2eaug", "--out", str(out), "--no-progress"]
    recipe_args = e2eaug.parse_args([*argv, *(["--hypergrad", args.hypergrad] if args.hypergrad else [])])
    plan = e2eaug.make_plan(recipe_args)
    spec = next(s for s in plan.runs if s.name == args.run.name)
    ctx = e2eaug.prepare(recipe_args, plan, out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_doctor(
            lambda: e2eaug.graph_for(spec, ctx),
            args.run / "doctor_at_checkpoint",
            checkpoint=checkpoint,
            methods=args.methods,
            rounds=args.rounds,
        )


if __name__ == "__main__":
    main()
