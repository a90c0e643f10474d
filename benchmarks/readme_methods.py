"""The README example (examples/reweighting.py) run to the end with another hypergradient method.

Usage: python benchmarks/readme_methods.py --out DIR [--hypergrad cg_warm] [--steps 300]

Builds the example's graph, switches the classifier's method to ``--hypergrad``, runs the example's
300 steps and prints what the method reported along the way (median and largest relative residual
of its solves, the damping over the second half of the run, cold restarts of a warm-started solve)
and what was learned (validation accuracy, mean weight of the flipped and the clean labels). Writes
DIR/readme_methods.json; the run itself is in DIR/run.
"""

from __future__ import annotations

import argparse
import json
import runpy
import statistics
from pathlib import Path

import torch

from engines.hypergrad import METHODS

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "reweighting.py"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the run and readme_methods.json")
    parser.add_argument("--hypergrad", default="cg_warm", choices=sorted(METHODS), help="the classifier's method")
    parser.add_argument("--steps", type=int, default=300, help="outer steps (the example runs 300)")
    args = parser.parse_args(argv)
    example = runpy.run_path(str(EXAMPLE), run_name="example")  # the graph, not its __main__ run
    g, weights, flipped = example["g"], example["w"], example["flipped"]
    g["classifier"].hypergrad = args.hypergrad
    result = g.run(steps=args.steps, device="cpu", out=args.out / "run", validate=example["accuracy"], progress=False)

    lines = [json.loads(line) for line in (args.out / "run" / "metrics.jsonl").read_text().splitlines()]
    hops = [
        line["hypergradient"]["weights<-classifier"]["classifier->weights"]
        for line in lines
        if line.get("level") == "weights" and "hypergradient" in line
    ]
    residuals = [h["residual"] for h in hops if "residual" in h]
    late = [h["damping"] for h in hops[len(hops) // 2 :] if "damping" in h]
    learned = torch.sigmoid(weights.module.weight.detach().squeeze(1))
    summary = {
        "hypergrad": args.hypergrad,
        "steps": args.steps,
        "upper_steps": len(hops),
        "median_residual": statistics.median(residuals) if residuals else None,
        "max_residual": max(residuals) if residuals else None,
        "damping_second_half": [min(late), max(late)] if late else None,
        "cold_restarts": hops[-1].get("cold_restarts_total") if hops else None,
        "val_acc": float(result.best["metrics"]["val_acc"]),
        "weight_flipped": float(learned[flipped].mean()),
        "weight_clean": float(learned[~flipped].mean()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "readme_methods.json").write_text(json.dumps(summary, indent=1))
    for key, value in summary.items():
        print(f"{key:22s} {value}")
    return summary


if __name__ == "__main__":
    main()
