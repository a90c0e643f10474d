"""Measure how much each regression golden moves on other CPU kernels and thread counts.

Usage: python benchmarks/golden_spread.py [--out DIR]

Runs ``pytest -m golden`` once per perturbation (``ATEN_CPU_CAPABILITY`` default / avx2 / the
machine's best, on 1 and 2 threads; and oneDNN off) with ``MEDMLO_GOLDEN_RECORD`` set, so every golden test writes
the trace it produced instead of comparing; then prints, for each golden file, the largest
relative difference from the stored golden across perturbations next to the file's tolerance.
A tolerance about 100x the measured spread absorbs CPU differences while catching real changes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOLDENS = ROOT / "assets" / "goldens"
# (ATEN_CPU_CAPABILITY or None for the machine's best, threads, oneDNN on "1" / off "0")
PERTURBATIONS = [
    ("default", "1", "1"),
    ("default", "2", "1"),
    ("avx2", "1", "1"),
    ("avx2", "2", "1"),
    (None, "1", "1"),
    (None, "2", "1"),
    (None, "1", "0"),
]


def leaves(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from leaves(v, f"{prefix}.{k}")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from leaves(v, f"{prefix}[{i}]")
    else:
        yield prefix, tree


def spread(got: dict, want: dict) -> tuple[float, str]:
    """Largest |got - want| / (|want| + 1e-12) over the numbers of two traces, and where."""
    values = dict(leaves(want))
    worst, where = 0.0, ""
    for key, value in leaves(got):
        ref = values.get(key)
        if isinstance(ref, float) and isinstance(value, float):
            rel = abs(value - ref) / (abs(ref) + 1e-12)
            if rel > worst:
                worst, where = rel, key
    return worst, where


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="keep the recorded traces here")
    args = parser.parse_args()
    base = args.out or Path(tempfile.mkdtemp(prefix="golden-spread-"))
    worst: dict[str, tuple[float, str, str]] = {}
    for capability, threads, onednn in PERTURBATIONS:
        label = f"{capability or 'native'}-{threads}t" + ("" if onednn == "1" else "-no-onednn")
        folder = base / label
        env = {
            **os.environ,
            "MEDMLO_GOLDEN_RECORD": str(folder),
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "MEDMLO_ONEDNN": onednn,
        }
        if capability:
            env["ATEN_CPU_CAPABILITY"] = capability
        subprocess.run(
            [sys.executable, "-m", "pytest", "-m", "golden", "-q", "-p", "no:cacheprovider", "-W", "ignore"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        for recorded in sorted(folder.glob("*.json")):
            stored = json.loads((GOLDENS / recorded.name).read_text())
            rel, where = spread(json.loads(recorded.read_text())["trace"], stored["trace"])
            if rel >= worst.get(recorded.name, (-1.0, "", ""))[0]:
                worst[recorded.name] = (rel, where, label)
    print(f"{'golden':<32} {'max rel. diff':>14} {'rtol in file':>13}  where (perturbation)")
    for name, (rel, where, label) in sorted(worst.items()):
        rtol = json.loads((GOLDENS / name).read_text())["tolerance"]["rtol"]
        print(f"{name:<32} {rel:>14.2e} {rtol:>13.1e}  {where or '-'} ({label})")


if __name__ == "__main__":
    main()
