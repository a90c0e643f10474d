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
    exact = {r["unroll"]: r["peak_memory_bytes"] for r in rows if r["method"] == "exact"}
    checkpointed = {r["unroll"]: r["peak_memory_bytes"] for r in rows if r["method"] == "exact, checkpointed"}
    warm = {r["unroll"]: r["peak_memory_bytes"] for r in rows if r["hypergrad"] == "cg_warm"}
    assert exact[5] > 1.5 * exact[1] and warm[5] == warm[1]
    assert checkpointed[5] < 1.2 * checkpointed[1]  # the checkpointed replay keeps one step's graph
    by_label = {r["method"]: r for r in rows if r["unroll"] == 1}
    assert by_label["darts"]["memory_ratio"] <= 1.1  # the first perturbed graph is freed before the second
    assert by_label["cg (defaults)"]["median_relative_residual"] <= 1e-2
    assert by_label["cg (defaults)"]["median_products"] <= 21


def _run(script, tmp_path, *args):
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--out", str(tmp_path), *args],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )


@pytest.mark.slow
def test_exact_memory_benchmark_shows_flat_memory_with_checkpointing(tmp_path):
    _run("exact_memory.py", tmp_path, "--unrolls", "1,4", "--rounds", "1", "--batch", "8")
    rows = json.loads((tmp_path / "exact_memory.json").read_text())
    by = {(r["unroll"], r["checkpoint"]): r for r in rows}
    assert by[(4, True)]["memory_ratio_to_k1"] < 1.2 < by[(4, False)]["memory_ratio_to_k1"]
    assert all(r["relative_difference"] < 1e-10 for r in rows)


@pytest.mark.slow
def test_torchopt_comparison_checks_both_libraries_against_each_other_and_a_dense_solve(tmp_path):
    pytest.importorskip("torchopt")  # an optional benchmark dependency
    _run("torchopt_compare.py", tmp_path, "--check", "--batch", "8")
    rows = {r["program"]: r for r in json.loads((tmp_path / "torchopt_compare.json").read_text())}
    assert rows["cnn Hessian"]["relative_difference"] < 1e-10
    assert rows["logistic medmlo"]["relative_error"] < 1e-8 and rows["logistic TorchOpt"]["relative_error"] < 1e-8


@pytest.mark.slow
def test_torchopt_comparison_times_every_section(tmp_path):
    _run("torchopt_compare.py", tmp_path, "--rounds", "1", "--batch", "8", "--sections", "logistic,betty")
    rows = json.loads((tmp_path / "torchopt_compare.json").read_text())
    assert {r["section"].split(":")[0] for r in rows} >= {"DSL against hand-written Betty"}
    assert all(r["time_ratio"] > 0 for r in rows)


@pytest.mark.slow
def test_precision_and_preconditioning_benchmarks_write_their_tables(tmp_path):
    _run("preconditioning.py", tmp_path, "--batch", "8", "--steps", "2", "--dampings", "1,30")
    rows = json.loads((tmp_path / "preconditioning.json").read_text())
    assert [r["damping"] for r in rows] == [1.0, 30.0]
    assert rows[1]["none"]["products_to_1e-2"] is not None  # heavy damping converges within the budget
    _run("hypergrad_precision.py", tmp_path, "--batch", "8", "--warmup", "1")
    rows = json.loads((tmp_path / "hypergrad_precision.json").read_text())
    assert all(r["fp32"]["cosine"] > 0.9 for r in rows if r["hypergrad"] in ("exact", "neumann"))
