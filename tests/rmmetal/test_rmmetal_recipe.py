"""`python recipes/rmmetal.py --preset smoke` end to end, and its command-line errors."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "recipes"))
import rmmetal  # noqa: E402


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("rmmetal_smoke")
    return out, rmmetal.main(["--preset", "smoke", "--out", str(out), "--no-progress"])


def test_smoke_writes_results_and_the_memory_plot(smoke):
    out, results = smoke
    for name in ("results.json", "results.md", "figures/memory_vs_k.png"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    assert saved["recipe"] == "rmmetal" and saved["preset"] == "smoke"
    assert saved["data"]["stand_in"] and "stand-in" in saved["data"]["description"].lower()
    assert "Stand-in data" in (out / "results.md").read_text()


def test_smoke_rows(smoke):
    _, results = smoke
    rows = results["rows"]
    accuracy = {r["method"]: r for r in rows if r["metric"] == "test_accuracy"}
    assert set(accuracy) == set(rmmetal.METHODS)
    assert all(0.2 < r["value"] <= 1.0 and r["ci95"] > 0 for r in accuracy.values())  # above 5-way chance
    memory = [r for r in rows if r["metric"] == "peak_memory_bytes"]
    assert {(r["method"], r["k"]) for r in memory} == {(m, k) for m in rmmetal.METHODS for k in rmmetal.MEMORY_KS}
    rm = {r["k"]: r["value"] for r in memory if r["method"] == "rm-metal"}
    maml = {r["k"]: r["value"] for r in memory if r["method"] == "maml"}
    assert abs(rm[20] - rm[1]) <= 0.1 * rm[1] and maml[20] > 2 * maml[1]
    clock = [r for r in rows if r["metric"] == "seconds_to_0.9_best_val"]
    assert len(clock) == 4 and any(r["value"] is not None for r in clock)
    check = next(r for r in rows if r["metric"] == "hypergradient_cosine_vs_dense_implicit")
    assert check["value"] > 0.99


def test_missing_dataset_files_fail_clearly(tmp_path):
    with pytest.raises(SystemExit, match="FC100_train.pickle"):
        rmmetal.main(["--dataset", "fc100", "--data-root", str(tmp_path), "--preset", "smoke",
                      "--out", str(tmp_path / "out")])
