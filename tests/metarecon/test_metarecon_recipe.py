"""`python recipes/metarecon.py` end to end on the embedded stand-in, and its clear input errors."""

import csv
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "recipes"))
import metarecon  # noqa: E402

FAST = [
    "--preset",
    "smoke",
    "--steps",
    "4",
    "--compare-seconds",
    "1",
    "--no-progress",
    "--unseen-tasks",
    "radial-15",
    "cartesian:0.3",
]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("metarecon_smoke")
    return out, metarecon.main([*FAST, "--out", str(out)])


def test_smoke_writes_every_output_labelled_as_stand_in(smoke):
    out, results = smoke
    for name in (
        "results.json",
        "results.md",
        "per_slice.csv",
        "figures/sigma_vs_ratio.png",
        "figures/graph.png",
        "figures/reconstructions_t1_seen.png",
        "figures/reconstructions_t1_radial.png",
        "figures/reconstructions_t1_cartesian.png",
        "figures/claims.png",
        "runs/meta__contrastt1__seed0/model.pt",
        "runs/adapt__contrastt1__taskradial-15__seed0/result.json",
        "runs/conventional__contrastt1__taskcartesian-30__seed0/result.json",
    ):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    assert saved["data"]["source"] == "embedded" and saved["data"]["stand_in"]
    assert "Stand-in" in saved["data"]["description"]
    markdown = (out / "results.md").read_text()
    assert "Stand-in data, not the paper's" in markdown and "Table 1 layout" in markdown
    assert "(23.27 ± 1.12)" in markdown  # the paper's meta-learning PSNR at radial 10 %, T1, beside ours


def test_smoke_rows_cover_every_task_method_and_metric(smoke):
    out, results = smoke
    rows = results["rows"]
    tasks = {"radial-10", "radial-20", "radial-30", "radial-40", "radial-15", "cartesian-30"}
    for method in ("meta", "conventional", "zero-filled"):
        for metric in ("psnr", "ssim", "nmse"):
            got = {r["task"] for r in rows if r["method"] == method and r["metric"] == metric}
            assert got == tasks, (method, metric)
    sigma = {r["task"]: r["value"] for r in rows if r["metric"] == "sigma_omega"}
    assert set(sigma) == tasks and all(0 < v < 1 for v in sigma.values())
    assert all(abs(r["achieved_ratio"] - r["ratio"]) <= 0.01 for r in rows)
    psnr = [r for r in rows if r["metric"] == "psnr"]
    assert all(10 < r["value"] < 60 and r["n"] == 4 for r in psnr)
    assert {r["paper_table"] for r in rows if r["seen"]} == {"table1"}
    claim = {(c["contrast"], c["group"]): c for c in results["sigma_claim"]}
    assert set(claim) == {("t1", "seen")} and claim[("t1", "seen")]["paper"]["strictly_decreasing"]
    compared = results["hypergradient_comparison"]
    assert [r["method"] for r in compared] == list(metarecon.PRESETS["smoke"].compare_methods)
    assert all(r["outer_steps"] >= 1 and 10 < r["value"] < 60 for r in compared)
    with open(out / "per_slice.csv") as handle:
        per_slice = list(csv.DictReader(handle))
    assert len(per_slice) == 6 * 3 * 4 and {"psnr", "ssim", "nmse", "slice", "task", "method"} <= set(per_slice[0])


def test_resume_skips_finished_runs(smoke):
    out, results = smoke
    stamp = (out / "runs/meta__contrastt1__seed0/model.pt").stat().st_mtime
    again = metarecon.main([*FAST, "--out", str(out), "--resume"])
    assert (out / "runs/meta__contrastt1__seed0/model.pt").stat().st_mtime == stamp
    same = {(r["task"], r["method"], r["metric"]): r["value"] for r in results["rows"]}
    assert {(r["task"], r["method"], r["metric"]): r["value"] for r in again["rows"]} == pytest.approx(same)


def brats(root, skip=None, shape=(70, 70, 12)):
    """Three HGG cases in the BraTS 2018 training layout (random volumes)."""
    base = root / "MICCAI_BraTS_2018_Data_Training" / "HGG"
    for i in range(3):
        case = f"Brats18_X_{i}_1"
        for modality in ("t1", "t1ce", "t2", "flair"):
            if (case, modality) != skip:
                (base / case).mkdir(parents=True, exist_ok=True)
                data = np.random.default_rng(i).random(shape).astype(np.float32)
                nib.save(nib.Nifti1Image(data, np.eye(4)), str(base / case / f"{case}_{modality}.nii.gz"))


def test_data_root_reads_the_brats_layout(tmp_path):
    brats(tmp_path / "brats", shape=(170, 190, 14))
    out = tmp_path / "out"
    results = metarecon.main(
        [
            "--preset",
            "smoke",
            "--data-root",
            str(tmp_path / "brats"),
            "--contrasts",
            "t2",
            "--steps",
            "2",
            "--baseline-epoch-ratio",
            "0.5",
            "--unseen-tasks",
            "radial-15",
            "--compare-hypergrad",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert results["data"]["source"] == "brats2018" and not results["data"]["stand_in"]
    assert results["data"]["counts"] == {"train": 10, "val": 8, "test": 4}  # 1/1/1 patients x 10 slices, capped
    assert {r["paper_table"] for r in results["rows"] if r["seen"]} == {"table3"}
    markdown = (out / "results.md").read_text()
    assert "Stand-in" not in markdown and "Data: BraTS 2018 HGG T2" in markdown and "Table 3 layout" in markdown


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--seen-tasks", "radial:0"], r"\(0, 1\]"),
        (["--unseen-tasks", "radial:1.5"], r"\(0, 1\]"),
        (["--unseen-tasks", "radial:20"], r"\(0, 1\]"),
        (["--unseen-tasks", "spiral:20"], "unknown sampling pattern 'spiral'"),
        (["--compare-hypergrad", "magic"], "unknown method 'magic'"),
    ],
)
def test_bad_tasks_fail_before_any_training(tmp_path, extra, message):
    with pytest.raises(SystemExit, match=message):
        metarecon.main(["--preset", "smoke", "--out", str(tmp_path / "out"), *extra])
    assert not (tmp_path / "out" / "runs").exists()


def test_bad_data_fails_naming_the_file(tmp_path):
    brats(tmp_path / "brats", skip=("Brats18_X_1_1", "t1"))
    with pytest.raises(SystemExit, match=r"missing modality file .*Brats18_X_1_1_t1\.nii\.gz"):
        metarecon.main(["--preset", "smoke", "--data-root", str(tmp_path / "brats"), "--out", str(tmp_path / "o1")])
    folder = tmp_path / "volumes"
    folder.mkdir()
    for name in ("a", "b"):
        nib.save(nib.Nifti1Image(np.ones((20, 20, 8), np.float32), np.eye(4)), str(folder / f"{name}.nii.gz"))
    nib.save(nib.Nifti1Image(np.ones((20, 20, 8, 2), np.float32), np.eye(4)), str(folder / "c.nii.gz"))
    with pytest.raises(SystemExit, match=r"expected a 3D volume .*\(20, 20, 8, 2\)"):
        metarecon.main(["--preset", "smoke", "--data-root", str(folder), "--out", str(tmp_path / "o2")])
