"""`python recipes/taskcorr.py --preset smoke` end to end, resume, and its command-line errors."""

import json
import math
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "recipes"))
import taskcorr  # noqa: E402


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("taskcorr_smoke")
    return out, taskcorr.main(["--preset", "smoke", "--out", str(out), "--no-progress"])


def test_smoke_writes_results_figures_and_run_folders(smoke):
    out, results = smoke
    for name in (
        "results.json",
        "results.md",
        "per_slice.csv",
        "figures/correlation.png",
        "figures/correlation_learned-shared.png",
        "figures/reconstructions.png",
        "figures/graph.png",
    ):
        assert (out / name).is_file(), name
    for method in taskcorr.METHODS:
        assert (out / "runs" / f"{method}__seed0" / "result.json").is_file(), method
    saved = json.loads((out / "results.json").read_text())
    assert saved["recipe"] == "taskcorr" and saved["preset"] == "smoke" and saved["data"]["stand_in"]
    markdown = (out / "results.md").read_text()
    assert "Stand-in data" in markdown and "reports no experiments" in markdown


def test_smoke_rows_cover_every_method_task_and_metric(smoke):
    _, results = smoke
    rows = results["rows"]
    assert {(r["method"], r["task"], r["metric"]) for r in rows} == {
        (m, t, k) for m in taskcorr.METHODS for t in results["val_tasks"] for k in ("psnr", "ssim", "nmse")
    }
    for r in rows:
        assert math.isfinite(r["value"]), r
        if r["metric"] == "psnr":
            assert 15 < r["value"] < 60, r  # far above the zero image, far from perfect after a few steps
        if r["metric"] == "ssim":
            assert 0 < r["value"] <= 1, r


def test_learned_correlations_are_column_stochastic_and_moved(smoke):
    _, results = smoke
    n, m = len(results["train_tasks"]), len(results["val_tasks"])
    for method, shape in (("learned", (n, m)), ("learned-shared", (n, 1))):
        sigma = np.array(results["sigma"][method])
        assert sigma.shape == shape
        assert np.allclose(sigma.sum(0), 1.0, atol=1e-6) and (sigma > 0).all()
        assert np.abs(sigma - 1 / n).max() > 1e-3, method  # W was learned, not left uniform


def test_resume_reuses_finished_runs(smoke):
    out, results = smoke
    again = taskcorr.main(["--preset", "smoke", "--out", str(out), "--no-progress", "--resume"])
    assert again["rows"] == results["rows"] and again["sigma"] == results["sigma"]


def test_a_finished_output_folder_needs_resume(smoke):
    out, _ = smoke
    with pytest.raises(SystemExit, match="--resume"):
        taskcorr.main(["--preset", "smoke", "--out", str(out), "--no-progress"])


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--train-tasks", "t1:radial:0.2"], "N >= 2 training groups"),
        (["--train-tasks", "t1:radial", "t2:radial:0.2"], "must read pattern"),
        (["--train-tasks", "t1:radial:20", "t2:radial:0.2"], "must lie in"),
        (["--val-tasks", "t1:spiral:0.2"], "unknown sampling pattern"),
        (["--train-tasks", "flair:radial:0.2", "t1:radial:0.2"], "flair"),
        (["--dataset", "brats2018"], "needs --data-root"),
        (["--hypergrad", "theta=nonsense"], "unknown method"),
    ],
)
def test_bad_arguments_fail_clearly(tmp_path, argv, message):
    with pytest.raises(SystemExit, match=message):
        taskcorr.main([*argv, "--preset", "smoke", "--out", str(tmp_path / "out"), "--no-progress"])
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_a_nifti_folder_holds_one_contrast(tmp_path):
    for i in range(3):
        volume = np.random.default_rng(i).random((40, 40, 12)).astype(np.float32)
        nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / f"case{i}.nii.gz")
    with pytest.raises(SystemExit, match="one contrast"):
        taskcorr.main(
            [
                "--data-root",
                str(tmp_path),
                "--preset",
                "smoke",
                "--out",
                str(tmp_path / "out"),
                "--train-tasks",
                "t1:radial:0.2",
                "t2:radial:0.2",
                "--val-tasks",
                "t1:radial:0.25",
            ]
        )
