"""`python recipes/taskcorr.py --preset smoke` end to end, resume, and its command-line errors."""

import json
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
        "figures/claims.png",
        "figures/task_weights.png",
        "figures/task_similarity.png",
        "figures/task_weights_over_steps.png",
        "figures/reconstructions.png",
        "figures/graph.png",
    ):
        assert (out / name).is_file(), name
    for method in taskcorr.METHODS:
        assert (out / "runs" / f"{method}__seed0" / "result.json").is_file(), method
    saved = json.loads((out / "results.json").read_text())
    assert saved["recipe"] == "taskcorr" and saved["preset"] == "smoke" and saved["data"]["stand_in"]
    markdown = (out / "results.md").read_text()
    assert markdown.index("claims, tested") < markdown.index("PSNR / SSIM / NMSE")  # the claims table comes first
    assert "Stand-in data" in markdown and "reports no experiments" in markdown
    assert "learned task weights" in markdown and "not a measured correlation" in markdown


def test_every_method_reconstructs_better_than_zero_filled(smoke):
    """All test slices of both tasks: each trained method's mean PSNR is clearly above the zero-filled one."""
    _, results = smoke
    rows = results["rows"]
    assert {(r["method"], r["task"], r["metric"]) for r in rows} == {
        (m, t, k)
        for m in (*taskcorr.METHODS, "zero-filled")
        for t in results["val_tasks"]
        for k in ("psnr", "ssim", "nmse")
    }
    psnr = {
        m: np.mean([r["value"] for r in rows if r["method"] == m and r["metric"] == "psnr"]) for m in taskcorr.METHODS
    }
    zero_filled = np.mean([r["value"] for r in rows if r["method"] == "zero-filled" and r["metric"] == "psnr"])
    assert results["test_slices"] == dict.fromkeys(results["val_tasks"], 4)
    for method in ("uniform", "independent", "learned-shared", "learned"):
        assert psnr[method] > zero_filled + 0.25, (method, psnr[method], zero_filled)


def test_learned_weights_are_column_stochastic_moved_and_set_beside_a_measured_similarity(smoke):
    _, results = smoke
    n, m = len(results["train_tasks"]), len(results["val_tasks"])
    for method, shape in (("learned", (n, m)), ("learned-shared", (n, 1))):
        sigma = np.array(results["sigma"][method])
        similarity = np.array(results["similarity"][method])
        assert sigma.shape == similarity.shape == shape
        assert np.allclose(sigma.sum(0), 1.0, atol=1e-6) and (sigma > 0).all()
        assert np.abs(sigma - 1 / n).max() > 0.05, method  # W was learned, not left uniform
        assert (np.abs(similarity) <= 1).all() and similarity.std() > 0.1  # cosines, and they differ by group
    claims = {c["test"]: c for c in results["claims"]}
    assert len(claims) == 6 and all("not testable" in c["verdict"] for c in claims.values())  # one seed


def test_resume_reuses_finished_runs(smoke, capsys):
    out, results = smoke
    again = taskcorr.main(["--preset", "smoke", "--out", str(out), "--no-progress", "--resume"])
    assert again["rows"] == results["rows"] and again["sigma"] == results["sigma"]
    assert capsys.readouterr().out.count("finished earlier, read back") == len(taskcorr.METHODS)


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
        (["--val-tasks", "noise:radial:0.2"], "cannot be pure noise"),
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


def test_the_study_plan_is_the_one_its_page_states():
    """--preset study: >= 3 seeds, >= 150 W-steps, every test slice, the three main methods; docs/recipes/taskcorr.md
    quotes the plan verbatim under '## Study preset' (nothing is trained)."""
    plan = taskcorr.make_plan(taskcorr.parse_args(["--preset", "study"]))
    assert len(plan.seeds) >= 3 and plan.settings["outer_steps"] >= 150 and plan.settings["test_slices"] is None
    assert {"uniform", "independent", "learned"} <= set(plan.methods)
    assert any(t.startswith("noise:") for t in plan.settings["train_tasks"])
    page = (ROOT / "docs" / "recipes" / "taskcorr.md").read_text().splitlines()
    start = page.index("## Study preset")
    table = [line for line in page[start:] if line.startswith("|")]
    assert table[: len(plan.markdown())] == plan.markdown()
