"""The hypergradient benchmarks: the accuracy benchmark against its stored expected values (it exits
non-zero when a value moves beyond the stated tolerance), and both write the rows they promise (the
full runs are slow: run with -m slow)."""

import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ACCURACY = ROOT / "benchmarks" / "hypergrad_accuracy.py"


def _accuracy_module():
    spec = importlib.util.spec_from_file_location("hypergrad_accuracy", ACCURACY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_accuracy_rows_of_two_problems_equal_their_stored_values():
    bench = _accuracy_module()
    expected = json.loads(bench.EXPECTED.read_text())
    assert expected["tolerance"] == bench.TOLERANCE
    problems = ["quadratic", "maml"]
    data = bench.rows(problems)
    assert len(data) == sum(r["problem"] in problems for r in expected["rows"]) == 13
    assert bench.compare(data, expected, problems) == []


def test_the_accuracy_comparison_flags_moved_missing_and_new_rows():
    bench = _accuracy_module()
    expected = json.loads(bench.EXPECTED.read_text())
    rows = [r for r in expected["rows"] if r["problem"] == "quadratic"]
    assert bench.compare(copy.deepcopy(rows), expected, ["quadratic"]) == []
    rtol, atol = expected["tolerance"]["rtol"], expected["tolerance"]["atol"]
    moved = copy.deepcopy(rows)
    neumann = next(r for r in moved if r["method"].startswith("neumann"))
    neumann["relative_error"] *= 1 + 3 * rtol  # beyond rtol
    darts = next(r for r in moved if r["method"] == "darts")
    darts["cosine"] += 0.5 * rtol * abs(darts["cosine"])  # within it
    cg = next(r for r in moved if r["method"] == "cg")
    cg["relative_error"] += 2 * atol  # an error at the rounding level: beyond atol
    lines = bench.compare(moved, expected, ["quadratic"])
    assert len(lines) == 2, lines
    assert "'neumann (20 it.)') relative_error" in lines[1] and "'cg') relative_error" in lines[0]
    fewer = [r for r in rows if r["method"] != "sama"] + [{**rows[0], "method": "brand new"}]
    lines = bench.compare(fewer, expected, ["quadratic"])
    assert len(lines) == 2 and lines[0].startswith("missing row ('quadratic', 'hyper', 'sama')")
    assert lines[1].startswith("new row ('quadratic', 'hyper', 'brand new')")


def test_the_accuracy_benchmark_exits_non_zero_and_prints_the_difference(tmp_path):
    expected = json.loads((ROOT / "assets" / "benchmarks" / "hypergrad_accuracy.json").read_text())
    row = next(r for r in expected["rows"] if (r["problem"], r["method"]) == ("maml", "first_order"))
    row["cosine"] = 0.5
    tampered = tmp_path / "expected.json"
    tampered.write_text(json.dumps(expected))
    command = [sys.executable, str(ACCURACY), "--problems", "maml", "--expected"]
    bad = subprocess.run([*command, str(tampered)], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "1 difference(s)" in bad.stdout
    assert "('maml', 'meta', 'first_order') cosine: got 7.79" in bad.stdout and "expected 5.000000e-01" in bad.stdout
    good = subprocess.run(
        [*command, str(ROOT / "assets" / "benchmarks" / "hypergrad_accuracy.json")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert good.returncode == 0 and "all 2 rows within rtol 1e-06, atol 1e-10" in good.stdout, good.stdout


@pytest.mark.slow
def test_accuracy_benchmark_matches_its_stored_values_and_writes_rows(tmp_path):
    subprocess.run([sys.executable, str(ACCURACY), "--out", str(tmp_path)], check=True, capture_output=True, cwd=ROOT)
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
