"""The two hypergradient benchmarks run and write the rows they promise (slow: run with -m slow)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_accuracy_benchmark_writes_rows(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "hypergrad_accuracy.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True, cwd=ROOT)
    rows = json.loads((tmp_path / "hypergrad_accuracy.json").read_text())
    assert {"method", "problem", "cosine", "relative_error", "settings"} <= set(rows[0])
    assert {r["problem"] for r in rows} == {"ridge", "quadratic", "quadratic_ill", "three_level", "two_uppers", "maml"}
    assert any(r["method"].startswith("betty_cg") for r in rows)


@pytest.mark.slow
def test_cost_benchmark_writes_rows(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "hypergrad_cost.py"), "--out", str(tmp_path),
                    "--steps", "2", "--device", "cpu"], check=True, capture_output=True, cwd=ROOT)
    rows = json.loads((tmp_path / "hypergrad_cost.json").read_text())
    assert {"method", "time_ratio", "memory_ratio", "peak_memory_bytes"} <= set(rows[0])
    exact = {r["unroll"]: r["peak_memory_bytes"] for r in rows if r["hypergrad"] == "exact"}
    warm = {r["unroll"]: r["peak_memory_bytes"] for r in rows if r["hypergrad"] == "cg_warm"}
    assert exact[5] > 1.5 * exact[1] and warm[5] == warm[1]
