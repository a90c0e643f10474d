"""benchmarks/adjoint_memory.py runs and writes its rows (T, method, peak bytes, time) on a tiny network."""

import json
import sys
from pathlib import Path

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
