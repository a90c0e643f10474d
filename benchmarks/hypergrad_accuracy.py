"""Accuracy of every hypergradient method against closed-form hypergradients, checked against stored values.

Usage: python benchmarks/hypergrad_accuracy.py [--out DIR] [--problems NAME ...] [--expected FILE] [--update]

Prints a table, writes DIR/hypergrad_accuracy.json (with ``--out``): a list of rows
{method, problem, upper, levels, cosine, relative_error, settings}, then compares every row's cosine
and relative error with the stored expected values (``assets/benchmarks/hypergrad_accuracy.json`` by
default) and exits with status 1, printing each difference, when a value moved beyond the file's
tolerance ``|got - expected| <= rtol * |expected| + atol``, or a row is missing or new. ``--update``
rewrites the expected values from this run (after an intended change; say why in the commit).
Everything runs in float64 on CPU, so the values do not depend on the CPU's float32 kernels.

The problems and their exact hypergradients are in engines/closed_form.py. Betty 0.2.1's shipped cg
appears as `betty_cg` so the difference from the corrected `cg` is visible. `one_step` differentiates
only the last lower step (DARTS's second-order formula), so on problems whose lower level has converged
over K = 20 steps it is far from the implicit hypergradient by design; its check is against `exact`
with `truncate=1` (tests). The `dual_meta` rows use a method per edge (exact / first_order) through
one shared lower level, each compared with its own analytic value, in both orders of the two uppers.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Iterable
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
# CG on the 20-dimensional problem with condition number 1e3: in exact arithmetic its 20th product solves
# the system, in floating point that iterate depends on rounding (loss of orthogonality) and its error
# moves by ~20 % between CPU kernels; 40 products reach tol, which every CPU reproduces
CG_MAXITER = {"quadratic_ill": 40}
LEVELS = {"three_level": 3}
# implicit and finite-difference methods differentiate the lower loss w.r.t. the upper parameters, which
# do not enter MAML's inner loss (they only set its start): only unrolled and first-order methods apply
ONLY = {"maml": {"exact", "first_order"}}
# (upper, method on its edge) of the per-edge problem, both orders of the uppers
DUAL = [("exact, first_order", False), ("exact, first_order (uppers swapped)", True)]
PROBLEMS = [*closed_form.PROBLEMS, "dual_meta"]
EXPECTED = Path(__file__).resolve().parents[1] / "assets" / "benchmarks" / "hypergrad_accuracy.json"
COMPARED = ("cosine", "relative_error")
# float64 throughout: LAPACK and summation order move these values by ~1e-15 relative across CPUs; a CG
# stopped at tol 1e-10 may take one iteration more or less, which moves an error of ~1e-12 by < 1e-10
TOLERANCE = {"rtol": 1e-6, "atol": 1e-10}


def rows(problems: Iterable[str] = PROBLEMS) -> list[dict]:
    """One row per (problem, upper, method) for the chosen problems."""
    problems = list(problems)
    unknown = sorted(set(problems) - set(PROBLEMS))
    if unknown:
        raise ValueError(f"unknown problem(s) {unknown}; the problems are {PROBLEMS}")
    out = []
    for problem in closed_form.PROBLEMS:
        if problem not in problems:
            continue
        for label, method, options in METHODS:
            if problem in ONLY and method not in ONLY[problem]:
                continue
            if problem == "maml" and options.get("truncate"):
                continue
            options = dict(options)
            if method == "neumann":
                options["alpha"] = NEUMANN_ALPHA.get(problem, 0.25)
            if method in ("cg", "cg_warm") and problem in CG_MAXITER:
                options["maxiter"] = CG_MAXITER[problem]
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
    for label, swap in DUAL if "dual_meta" in problems else []:
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


def key(row: dict) -> tuple[str, str, str]:
    return row["problem"], row["upper"], row["method"]


def compare(data: list[dict], expected: dict, problems: Iterable[str] = PROBLEMS) -> list[str]:
    """Differences between ``data`` and the ``expected`` file's rows of ``problems``, one line each
    (empty: every value within ``|got - expected| <= rtol * |expected| + atol``)."""
    rtol, atol = float(expected["tolerance"]["rtol"]), float(expected["tolerance"]["atol"])
    problems = set(problems)
    want = {key(r): r for r in expected["rows"] if r["problem"] in problems}
    got = {key(r): r for r in data}
    lines = [f"missing row {k}: expected {want[k]}" for k in want if k not in got]
    lines += [f"new row {k} (not in the expected values; --update to accept it)" for k in got if k not in want]
    for k in want.keys() & got.keys():
        for field in COMPARED:
            a, b = float(got[k][field]), float(want[k][field])
            if not abs(a - b) <= rtol * abs(b) + atol:
                lines.append(
                    f"{k} {field}: got {a:.6e}, expected {b:.6e} (|diff| {abs(a - b):.2e} > {rtol:g}*|expected| + {atol:g})"
                )
    return sorted(lines)


def expected_file(data: list[dict]) -> dict:
    """The expected-values file for ``data``: the tolerance, the command, and the compared fields per row."""
    return {
        "command": "python benchmarks/hypergrad_accuracy.py --update",
        "tolerance": TOLERANCE,
        "rows": [{**dict(zip(("problem", "upper", "method"), key(r))), **{f: r[f] for f in COMPARED}} for r in data],
    }


def _name(value: object) -> str:
    """A setting that JSON cannot hold (a problem's reference computation) by its qualified name."""
    return getattr(value, "__qualname__", repr(value))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for hypergrad_accuracy.json")
    parser.add_argument("--problems", nargs="+", default=PROBLEMS, choices=PROBLEMS, help="a subset of the problems")
    parser.add_argument("--expected", type=Path, default=EXPECTED, help="stored expected values (default: %(default)s)")
    parser.add_argument("--update", action="store_true", help="rewrite the expected values from this run")
    args = parser.parse_args(argv)
    if args.update and sorted(args.problems) != sorted(PROBLEMS):
        parser.error("--update rewrites every row: run it without --problems")
    data = rows(args.problems)
    print(table(data))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "hypergrad_accuracy.json").write_text(json.dumps(data, indent=1, default=_name))
        print(f"wrote {args.out / 'hypergrad_accuracy.json'}")
    if args.update:
        args.expected.parent.mkdir(parents=True, exist_ok=True)
        args.expected.write_text(json.dumps(expected_file(data), indent=1) + "\n")
        print(f"updated the expected values in {args.expected}")
        return 0
    expected = json.loads(args.expected.read_text())
    differences = compare(data, expected, args.problems)
    tol = expected["tolerance"]
    if differences:
        print(f"\n{len(differences)} difference(s) from {args.expected} (rtol {tol['rtol']:g}, atol {tol['atol']:g}):")
        print("\n".join(f"  {line}" for line in differences))
        return 1
    print(f"\nall {len(data)} rows within rtol {tol['rtol']:g}, atol {tol['atol']:g} of {args.expected}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
