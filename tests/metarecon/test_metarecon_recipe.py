"""`python recipes/metarecon.py` end to end on the embedded stand-in, its plans, and its clear input errors."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "recipes"))
import metarecon  # noqa: E402

FAST = [
    "--preset",
    "smoke",
    "--steps",
    "4",
    "--no-progress",
    "--unseen-tasks",
    "radial-15",
    "cartesian:0.3",
    "--lambdas",
    "1e-3",
    "--ablation-hypergrad",
    "darts",
]
MAIN_META = "meta__contrastt1__seed0"


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
        "figures/claims.png",
        "figures/theta_ratio.png",
        "figures/omega_ratio.png",
        "figures/reconstructions_t1_seen.png",
        "figures/reconstructions_t1_radial.png",
        "figures/reconstructions_t1_cartesian.png",
        f"runs/{MAIN_META}/model.pt",
        "runs/meta__contrastt1__lam0.001__seed0/result.json",
        "runs/meta__contrastt1__hypergraddarts__seed0/result.json",
        "runs/adapt__contrastt1__taskradial-15__seed0/result.json",
        "runs/conventional__contrastt1__taskcartesian-30__seed0/result.json",
    ):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    assert saved["data"]["source"] == "embedded" and saved["data"]["stand_in"]
    assert "at least 4 mm from a training slice" in saved["data"]["description"]
    markdown = (out / "results.md").read_text()
    assert markdown.index("## The paper's claims, tested") < markdown.index("Stand-in data, not the paper's")
    assert "Table 1 layout" in markdown and "(23.27 ± 1.12)" in markdown  # the paper's meta PSNR, radial 10 %, T1
    assert "| PSNR gain of meta over conventional, seen ratios, T1 | Section 5.3 (Table 1) | +1.54 dB |" in markdown
    assert "## Is the penalty method bilevel here? The λ ablation" in markdown and "## The ε reduction" in markdown


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
    psnr = {(r["task"], r["method"]): r for r in rows if r["metric"] == "psnr"}
    assert all(r["n"] == 4 and r["seed"] == 0 for r in psnr.values())  # 4 test slices, one seed
    for task in tasks:  # 4 steps from x_0 = the zero-filled image: the networks are still close to it
        assert abs(psnr[(task, "meta")]["value"] - psnr[(task, "zero-filled")]["value"]) < 1.0
    assert {r["paper_table"] for r in rows if r["seen"]} == {"table1"}
    claim = {(c["contrast"], c["group"]): c for c in results["sigma_claim"]}
    assert set(claim) == {("t1", "seen")} and claim[("t1", "seen")]["paper"]["strictly_decreasing"]
    assert [c["verdict"].split(":")[0] for c in results["claims"]] == [
        "not testable at this scale"
    ] * 7  # one seed; 5 claims + 2 ablation rows
    with open(out / "per_slice.csv") as handle:
        per_slice = list(csv.DictReader(handle))
    assert len(per_slice) == (6 * 3 + 2 * 4) * 4  # main runs, then the 2 ablation runs' 4 seen tasks
    assert {"psnr", "ssim", "nmse", "slice", "task", "method", "seed", "ablation"} <= set(per_slice[0])


def test_the_ablation_measures_how_bilevel_each_setting_is(smoke):
    _, results = smoke
    ablation = {r["setting"]: r for r in results["ablation"]}
    assert set(ablation) == {"penalty λ0=1e-05", "penalty λ0=0.001", "darts"}
    paper, larger = ablation["penalty λ0=1e-05"], ablation["penalty λ0=0.001"]
    assert paper["lam"] == pytest.approx(1e-5, rel=0.01) and larger["lam"] == pytest.approx(1e-3, rel=0.01)
    assert 0 < paper["theta_ratio"] < larger["theta_ratio"] and 0 < paper["omega_ratio"] < larger["omega_ratio"]
    assert ablation["darts"]["theta_ratio"] == 0 and ablation["darts"]["omega_ratio"] > 0  # θ descends L_tr alone
    assert set(paper["sigma"]) == {"radial-10", "radial-20", "radial-30", "radial-40"}
    eps = results["eps_rule"]
    assert [r["sigma"] for r in eps] == [1.0, 1e2, 1e4, 1e6] and eps[0]["eps_reduced"] == 0.0
    ratios = [r["grad_over_eps_threshold"] for r in eps]  # ‖∇φ_ε‖ / σγε falls as 1/σ (the same network)
    assert ratios[0] == pytest.approx(100 * ratios[1], rel=1e-5) and ratios[0] > 1


def test_every_run_is_scored_at_its_best_validation_checkpoint(smoke):
    out, results = smoke
    for name, run in results["runs"].items():
        logged = [json.loads(line) for line in (out / "runs" / name / "metrics.jsonl").read_text().splitlines()]
        validations = [e for e in logged if e["level"] == "validation"]
        best = max(validations, key=lambda e: e["val_psnr"])
        assert run["val_psnr"] == pytest.approx(best["val_psnr"]) and run["best_step"] == best["step"], name
        kept = torch.load(out / "runs" / name / "checkpoint_best.pt", weights_only=True)["levels"]
        saved = torch.load(out / "runs" / name / "model.pt", weights_only=True)
        if "theta" in kept:
            assert all(torch.equal(saved["network"][k], v) for k, v in kept["theta"]["module"].items()), name
        if "omega" in kept:  # the σ(ω_i) reported is the kept checkpoint's
            assert list(run["sigma"].values()) == pytest.approx(
                torch.sigmoid(kept["omega"]["module"]["omega"]).tolist()
            )
    meta = results["runs"][MAIN_META]["phases"]
    adapt = torch.load(out / "runs/adapt__contrastt1__taskradial-15__seed0/model.pt", weights_only=True)
    assert adapt["phases"] == meta  # adaptation runs the phases of the meta-learning checkpoint it starts from


def test_resume_skips_finished_runs(smoke):
    out, results = smoke
    stamp = (out / f"runs/{MAIN_META}/model.pt").stat().st_mtime
    again = metarecon.main([*FAST, "--out", str(out), "--resume"])
    assert (out / f"runs/{MAIN_META}/model.pt").stat().st_mtime == stamp
    same = {(r["task"], r["method"], r["metric"]): r["value"] for r in results["rows"]}
    assert {(r["task"], r["method"], r["metric"]): r["value"] for r in again["rows"]} == pytest.approx(same)
    with pytest.raises(SystemExit, match="other settings"):
        metarecon.main([*FAST, "--out", str(out), "--resume", "--inner-steps", "1"])


def test_study_plan_is_the_one_documented():
    plan = metarecon.make_plan(metarecon.parse_args(["--preset", "study"]))
    page = (ROOT / "docs" / "recipes" / "metarecon.md").read_text().splitlines()
    start = page.index("## Study preset")
    table = [line for line in page[start:] if line.startswith("|")]
    assert table[: len(plan.markdown())] == plan.markdown()
    assert plan.seeds == [0, 1, 2] and plan.methods == ["meta", "conventional", "adapt"]
    assert len(plan.runs) == 3 * (1 + 4 + 2 * 3 + 1)  # per seed: meta, 4 conventional, 3 adapt + conventional, exact
    assert plan.settings["meta_steps"] == 360 and plan.settings["valid_every"] == 35


def test_ablation_options_add_meta_learning_runs_only():
    base = metarecon.make_plan(metarecon.parse_args(["--preset", "smoke"]))
    more = metarecon.make_plan(
        metarecon.parse_args(
            ["--preset", "smoke", "--lambdas", "1e-5", "1e-3", "--ablation-hypergrad", "penalty", "cg"]
        )
    )
    extra = [r for r in more.runs if r not in base.runs]
    assert [(r.method, r.variant[1:]) for r in extra] == [("meta", (("lam", 1e-3),)), ("meta", (("hypergrad", "cg"),))]


def brats(root, skip=None, shape=(70, 70, 12), nan=None):
    """Three HGG cases in the BraTS 2018 training layout (random volumes); ``nan``: a case whose T1 holds NaN."""
    base = root / "MICCAI_BraTS_2018_Data_Training" / "HGG"
    for i in range(3):
        case = f"Brats18_X_{i}_1"
        for modality in ("t1", "t1ce", "t2", "flair"):
            if (case, modality) != skip:
                (base / case).mkdir(parents=True, exist_ok=True)
                data = np.random.default_rng(i).random(shape).astype(np.float32)
                if (case, modality) == (nan, "t1"):
                    data[5:9, 5:9, 4:6] = np.nan
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
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert results["data"]["source"] == "brats2018" and not results["data"]["stand_in"]
    assert results["data"]["counts"] == {"train": 10, "val": 8, "test": 4}  # 1/1/1 patients x 10 slices, capped
    assert "0 slice(s) dropped as all-zero" in results["data"]["description"]
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
        (["--ablation-hypergrad", "magic"], "unknown method 'magic'"),
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
    brats(tmp_path / "nan", nan="Brats18_X_2_1")  # a NaN block: an error, not a volume silently dropped
    with pytest.raises(SystemExit, match=r"Brats18_X_2_1_t1\.nii\.gz: 32 voxel\(s\) are NaN or infinite"):
        metarecon.main(["--preset", "smoke", "--data-root", str(tmp_path / "nan"), "--out", str(tmp_path / "o3")])
    assert not (tmp_path / "o3" / "runs").exists()
    folder = tmp_path / "volumes"
    folder.mkdir()
    for name in ("a", "b"):
        nib.save(nib.Nifti1Image(np.ones((20, 20, 8), np.float32), np.eye(4)), str(folder / f"{name}.nii.gz"))
    nib.save(nib.Nifti1Image(np.ones((20, 20, 8, 2), np.float32), np.eye(4)), str(folder / "c.nii.gz"))
    with pytest.raises(SystemExit, match=r"expected a 3D volume .*\(20, 20, 8, 2\)"):
        metarecon.main(["--preset", "smoke", "--data-root", str(folder), "--out", str(tmp_path / "o2")])


@pytest.mark.slow
def test_wallclock_benchmark_writes_rows(tmp_path):
    """benchmarks/metarecon_wallclock.py (the recipe's former --compare-hypergrad) runs and writes its rows."""
    command = [sys.executable, str(ROOT / "benchmarks" / "metarecon_wallclock.py"), "--out", str(tmp_path)]
    command += ["--methods", "penalty", "darts", "--seconds", "1", "--size", "32", "--phases", "1"]
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    rows = json.loads((tmp_path / "metarecon_wallclock.json").read_text())
    assert [r["method"] for r in rows] == ["penalty", "darts"] and all(r["outer_steps"] >= 1 for r in rows)
    assert all(r["seconds"] >= 1 and len(r["sigma_omega"]) == 4 for r in rows)
