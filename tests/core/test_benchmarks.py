"""The two hypergradient benchmarks run and write the rows they promise (slow: run with -m slow)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_accuracy_benchmark_writes_rows(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "hypergrad_accuracy.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    rows = json.loads((tmp_path / "hypergrad_accuracy.json").read_text())
    assert {"method", "problem", "cosine", "relative_error", "settings"} <= set(rows[0])
    assert {r["problem"] for r in rows} == {
        "ridge",
        "quadratic",
        "quadratic_ill",
        "three_level",
        "two_uppers",
        "maml",
        "dual_meta",
    }
    assert any(r["method"].startswith("betty_cg") for r in rows)
    assert all(r["relative_error"] < 1e-10 for r in rows if r["problem"] == "dual_meta")


@pytest.mark.slow
def test_cost_benchmark_writes_rows(tmp_path):
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "hypergrad_cost.py"),
            "--out",
            str(tmp_path),
            "--rounds",
            "2",
            "--device",
            "cpu",
        ],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    rows = json.loads((tmp_path / "hypergrad_cost.json").read_text())
    assert {
        "method",
        "time_ratio",
        "time_ratio_q1",
        "time_ratio_q3",
        "memory_ratio",
        "peak_memory_bytes",
        "median_relative_residual",
        "median_products",
    } <= set(rows[0])
    exact = {r["unroll"]: r["peak_memory_bytes"] for r in rows if r["hypergrad"] == "exact"}
    warm = {r["unroll"]: r["peak_memory_bytes"] for r in rows if r["hypergrad"] == "cg_warm"}
    assert exact[5] > 1.5 * exact[1] and warm[5] == warm[1]
    by_label = {r["method"]: r for r in rows if r["unroll"] == 1}
    assert by_label["darts"]["memory_ratio"] <= 1.1  # the first perturbed graph is freed before the second
    assert by_label["cg (defaults)"]["median_relative_residual"] <= 1e-2
    assert by_label["cg (defaults)"]["median_products"] <= 21
