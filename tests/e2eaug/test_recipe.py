"""`python recipes/e2eaug.py` end to end on the smoke preset, resuming, and its command-line errors."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "recipes"))
import e2eaug  # noqa: E402


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2eaug_smoke")
    results = e2eaug.main(["--dataset", "isic", "--preset", "smoke", "--out", str(out), "--no-progress"])
    return out, results


def test_smoke_run_writes_every_result_file(smoke):
    out, results = smoke
    for name in ("results.json", "results.md", "figures/augmented_pairs.png", "figures/test_segmentations.png"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    assert saved["recipe"] == "e2eaug" and saved["preset"] == "smoke"
    assert {k: v["source"] for k, v in saved["data"].items()} == {
        "isic2018": "embedded-sample", "ph2": "embedded-sample", "dermis": "embedded-sample"}
    assert "Synthetic data" in (out / "results.md").read_text()


def test_smoke_rows_cover_every_method_and_test_set_within_0_1(smoke):
    _, results = smoke
    rows = results["rows"]
    assert {r["method"] for r in rows} == set(e2eaug.METHODS)
    assert {r["test_set"] for r in rows} == {"isic2018", "ph2", "dermis"}
    for r in rows:
        assert set(r) >= {"method", "backbone", "train_size", "test_set", "metric", "value"}
        assert r["metric"] == "jaccard" and 0.0 <= r["value"] <= 1.0
    runs = {r["method"]: r for r in results["runs"]}
    assert runs["e2eaug"]["genotype"]["down"] and runs["e2eaug"]["val"] > 0


def test_the_architecture_moved_during_the_end_to_end_run(smoke):
    out, _ = smoke
    lines = [json.loads(x) for x in (out / "runs" / "e2eaug__unet__n20__seed0" / "metrics.jsonl").read_text().splitlines()]
    arch = [ln for ln in lines if ln["level"] == "arch"]
    assert len(arch) == e2eaug.PRESETS["smoke"].steps and all(ln["grad_norm"] > 0 for ln in arch)


def test_resume_reuses_finished_runs_and_reproduces_the_results(smoke):
    out, results = smoke
    again = e2eaug.main(["--dataset", "isic", "--preset", "smoke", "--out", str(out), "--no-progress", "--resume"])
    assert again["rows"] == results["rows"]


def test_a_finished_output_folder_needs_resume(smoke):
    out, _ = smoke
    with pytest.raises(SystemExit, match="already holds results.json"):
        e2eaug.main(["--dataset", "isic", "--preset", "smoke", "--out", str(out)])


def test_bad_arguments_fail_clearly(tmp_path):
    with pytest.raises(SystemExit, match="--hypergrad names level 'generator'"):
        e2eaug.main(["--preset", "smoke", "--out", str(tmp_path / "a"), "--hypergrad", "generator=cg"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match="error: .*isic2018"):
        e2eaug.main(["--preset", "smoke", "--out", str(tmp_path / "b"), "--data-root", str(empty)])
    with pytest.raises(SystemExit, match="power of two"):
        e2eaug.main(["--preset", "smoke", "--out", str(tmp_path / "c"), "--image-size", "48"])
