"""The hypergradient doctor's example tables of docs/doctor.md, on two graphs where a common method fails.

Usage: python benchmarks/doctor_examples.py --out DIR [--rounds N]

* ``chain`` — engines/closed_form.py's three-level problem with lower learning rates of 1e-5 (SGD,
  K = 3) and ``darts`` on both hops: darts weighs each hop by 1/lr, so its two paths point the right way
  but are 3e4 and 1e9 times too long, and their sum points elsewhere.
* ``reweighting`` — per-example weights (upper, Adam) over an MLP classifier (lower, Adam, K = 5) on
  a weighted cross-entropy, examined after 25 lower steps, far from a lower optimum; ``cg`` configured.
  It is the graph of tests/core/doctor_toys.py, which the tests assert on.

Both are float64 end to end, so the accuracy columns are the same on every machine; the time columns
depend on the machine and its load. Writes DIR/<name>/hypergrad_doctor.{md,json,png}. Then the
reweighting graph is trained for 20 steps with ``audit_every=3`` (run folder DIR/audited): the
metrics line of its first audit and the audit's warnings are printed.
"""

from __future__ import annotations

import argparse
import functools
import sys
import warnings
from pathlib import Path

import torch

from engines import Runner, closed_form, diagnose

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "core"))
from doctor_toys import reweighting  # noqa: E402  (the graph the doctor's tests use)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    command = "python benchmarks/doctor_examples.py --out DIR"
    chain = closed_form.three_level("darts", unroll=3, lower_optimizer=functools.partial(torch.optim.SGD, lr=1e-5))
    graph = reweighting("cg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Runner(graph, 25, device="cpu", seed=0, progress=False).run()
    for name, examined in (("chain", chain.graph), ("reweighting", graph)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = diagnose(examined, rounds=args.rounds, command=command)
        paths = report.save(args.out / name)
        print(paths["md"].read_text())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Runner(reweighting("cg"), 20, out=args.out / "audited", device="cpu", progress=False, audit_every=3).run()
    lines = (args.out / "audited" / "metrics.jsonl").read_text().splitlines()
    print(next(line for line in lines if '"audit"' in line))
    for w in caught:
        if "hypergradient audit" in str(w.message):
            print(f"{w.category.__name__}: {w.message}")


if __name__ == "__main__":
    main()
