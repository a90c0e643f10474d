"""Accuracy of every hypergradient method against closed-form hypergradients.

Usage: python benchmarks/hypergrad_accuracy.py --out DIR

Prints a table and writes DIR/hypergrad_accuracy.json: a list of rows
{method, problem, upper, levels, cosine, relative_error, settings}. The problems and their
exact hypergradients are in engines/closed_form.py. Betty 0.2.1's shipped cg appears as
`betty_cg` so the difference from the corrected `cg` is visible. `one_step` differentiates only the
last lower step (DARTS's second-order formula), so on problems whose lower level has converged over
K = 20 steps it is far from the implicit hypergradient by design; its check is against `exact` with
`truncate=1` (tests). The `dual_meta` rows use a method per edge (exact / first_order) through one
shared lower level, each compared with its own analytic value, in both orders of the two uppers.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

from engines import closed_form

CG = {"maxiter": 20, "tol": 1e-10}
METHODS: list[tuple[str, str, dict]] = [
    ("exact", "exact", {}),
    ("exact (truncate=2)", "exact", {"truncate": 2}),
    ("cg", "cg", CG),
    ("cg_warm", "cg_warm", CG),
    ("neumann (20 it.)", "neumann", {"iterations": 20}),
    ("darts", "darts", {}),
    ("one_step", "one_step", {}),
    ("sama", "sama", {}),
    ("first_order", "first_order", {}),
    ("betty_cg (20 it., alpha=1)", "betty_cg", {"iterations": 20, "alpha": 1.0}),
    ("betty_cg (20 it., alpha=0.5)", "betty_cg", {"iterations": 20, "alpha": 0.5}),
]
# a Neumann series converges only for alpha < 2 / lambda_max of the lower Hessian
NEUMANN_ALPHA = {"quadratic_ill": 0.03}
LEVELS = {"three_level": 3}
# implicit and finite-difference methods differentiate the lower loss w.r.t. the upper parameters, which
# do not enter MAML's inner loss (they only set its start): only unrolled and first-order methods apply
ONLY = {"maml": {"exact", "first_order"}}
# (upper, method on its edge) of the per-edge problem, both orders of the uppers
DUAL = [("exact, first_order", False), ("exact, first_order (uppers swapped)", True)]


def rows() -> list[dict]:
    out = []
    for problem in closed_form.PROBLEMS:
        for label, method, options in METHODS:
            if problem in ONLY and method not in ONLY[problem]:
                continue
            if problem == "maml" and options.get("truncate"):
                continue
            options = dict(options)
            if method == "neumann":
                options["alpha"] = NEUMANN_ALPHA.get(problem, 0.25)
            cf = closed_form.build(problem, method, options)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = closed_form.measure(cf)
            for upper, r in result.items():
                out.append(
                    {
                        "method": label,
                        "problem": problem,
                        "upper": upper,
                        "levels": LEVELS.get(problem, 2),
                        "cosine": r["cosine"],
                        "relative_error": r["relative_error"],
                        "settings": {"hypergrad": method, "options": options, **cf.settings},
                    }
                )
    for label, swap in DUAL:
        cf = closed_form.dual_meta(swap_edges=swap)
        for upper, r in closed_form.measure(cf).items():
            out.append(
                {
                    "method": f"{label}: {upper}",
                    "problem": "dual_meta",
                    "upper": upper,
                    "levels": 2,
                    "cosine": r["cosine"],
                    "relative_error": r["relative_error"],
                    "settings": {"edges": {"encoder": "exact", "init": "first_order"}, **cf.settings},
                }
            )
    return out


def table(data: list[dict]) -> str:
    lines = [f"{'problem':<14} {'upper':<7} {'method':<46} {'cosine':>8} {'rel. error':>11}", "-" * 90]
    for r in data:
        lines.append(
            f"{r['problem']:<14} {r['upper']:<7} {r['method']:<46} {r['cosine']:>8.4f} {r['relative_error']:>11.2e}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for hypergrad_accuracy.json")
    args = parser.parse_args()
    data = rows()
    print(table(data))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hypergrad_accuracy.json").write_text(json.dumps(data, indent=1))
    print(f"wrote {args.out / 'hypergrad_accuracy.json'}")


if __name__ == "__main__":
    main()
