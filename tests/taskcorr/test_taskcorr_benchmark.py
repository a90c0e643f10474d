"""The benchmarks of this recipe run and write their rows on tiny sizes: benchmarks/adjoint_memory.py (T, method,
peak bytes, time) and benchmarks/taskcorr_hypergradient.py (audits against exact, memory of one W-step against T)."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import adjoint_memory  # noqa: E402


def test_adjoint_memory_benchmark_writes_its_rows(tmp_path):
    adjoint_memory.main(
        [
            "--out",
            str(tmp_path),
            "--device",
            "cpu",
            "--phases",
            "2",
            "6",
            "--size",
            "16",
            "--coils",
            "2",
            "--batch",
            "2",
            "--width",
            "4",
            "--features",
            "4",
            "--repeats",
            "1",
        ]
    )
    rows = json.loads((tmp_path / "adjoint_memory.json").read_text())
    assert {(r["T"], r["method"]) for r in rows} == {
        (t, m) for t in (2, 6) for m in ("autograd", "adjoint", "adjoint_checkpointed")
    }
    assert all({"peak_bytes", "time_s", "gradient_difference"} <= set(r) for r in rows)
    assert max(r["gradient_difference"] for r in rows) < 1e-4  # float32: the three gradients agree
    peak = {(r["T"], r["method"]): r["peak_bytes"] for r in rows}
    autograd_growth = peak[6, "autograd"] - peak[2, "autograd"]
    assert peak[6, "adjoint"] - peak[2, "adjoint"] < 0.25 * autograd_growth  # states only, not activations


@pytest.mark.slow  # five minutes: every candidate audited along a run, memory at three phase counts
def test_hypergradient_benchmark_audits_candidates_and_measures_memory_against_phases(tmp_path):
    import taskcorr_hypergradient

    tiny = ["--w-steps", "2", "--every", "1", "--methods", "darts", "adjoint_unroll", "--phases", "2", "4"]
    result = taskcorr_hypergradient.main(["--out", str(tmp_path), *tiny])
    assert json.loads((tmp_path / "taskcorr_hypergradient.json").read_text()) == result
    audited = {(r["method"], r["w_step"]): r for r in result["audit"]}
    assert set(audited) == {(m, s) for m in ("darts", "adjoint_unroll") for s in (1, 2)}
    assert all(audited["adjoint_unroll", s]["cosine"] > 0.999 for s in (1, 2))  # equal to exact
    peak = {(r["T"], r["method"]): r["peak_bytes"] for r in result["memory"]}
    exact_growth = peak[4, "exact"] - peak[2, "exact"]
    assert exact_growth > 0 and peak[4, "adjoint_unroll"] < peak[4, "exact"]
    assert peak[4, "adjoint_unroll"] - peak[2, "adjoint_unroll"] < 0.25 * exact_growth  # flat in T, exact is not
