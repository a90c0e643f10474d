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


def test_the_accuracy_benchmark_writes_rows_whose_settings_hold_functions(tmp_path):
    """dual_meta's settings name its reference computations (functions): written by name, not a crash."""
    assert _accuracy_module().main(["--out", str(tmp_path), "--problems", "dual_meta"]) == 0
    rows = json.loads((tmp_path / "hypergrad_accuracy.json").read_text())
    assert {r["problem"] for r in rows} == {"dual_meta"} and len(rows) == 4
    assert all(r["settings"]["unrolled"]["init"].endswith("exact_init") for r in rows)


def test_the_readme_methods_benchmark_runs_the_example_with_another_method(tmp_path):
    spec = importlib.util.spec_from_file_location("readme_methods", ROOT / "benchmarks" / "readme_methods.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    summary = module.main(["--out", str(tmp_path), "--hypergrad", "cg_warm", "--steps", "4"])
    assert json.loads((tmp_path / "readme_methods.json").read_text()) == summary
    assert summary["hypergrad"] == "cg_warm" and summary["upper_steps"] == 4
    assert 0 <= summary["median_residual"] <= summary["max_residual"] and summary["cold_restarts"] >= 0
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert '"method": "cg_warm"' in metrics  # the switched method ran, not the example's darts


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


@pytest.mark.slow
def test_the_non_convex_default_benchmark_gives_gauss_newton_without_marks(tmp_path):
    _run("nonconvex_default.py", tmp_path, "--steps", "10")
    rows = {r["run"]: r for r in json.loads((tmp_path / "nonconvex_default.json").read_text())}
    default, marked = rows["cg (defaults)"], rows["cg, outputs marked"]
    assert default["curvature"] == "gauss_newton" and rows['cg, curvature="hessian"']["curvature"] == "hessian"
    assert default["max_residual"] <= 1e-2
    assert abs(default["validation_mse"] - marked["validation_mse"]) < 1e-10
