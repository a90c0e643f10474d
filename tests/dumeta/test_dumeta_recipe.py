"""`python recipes/dumeta.py` end to end on the embedded data (reduced steps and methods), on a real
nnU-Net-layout data root, resume, and its command-line errors."""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "recipes"))
import dumeta  # noqa: E402
import planning  # noqa: E402

FAST = ["--preset", "smoke", "--steps", "2", "--fine-tune-steps", "2", "--no-progress"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("dumeta_smoke")
    argv = [
        *FAST,
        "--methods",
        "dumeta++",
        "mfl+mil",
        "randinit-2d",
        "maml",
        "--capacities",
        "1",
        "--depths",
        "0",
        "3",
        "--shots",
        "1",
        "--out",
        str(out),
    ]
    return out, argv, dumeta.main(argv)


def test_smoke_writes_results_figures_and_run_folders(smoke):
    out, _, results = smoke
    for name in (
        "results.json",
        "results.md",
        "figures/segmentation_infant6m_1shot.png",
        "figures/segmentation_elderly_1shot.png",
        "figures/feature_embedding.png",
        "figures/head_depth.png",
        "figures/graph.png",
    ):
        assert (out / name).is_file(), name
    for run in ("dumeta++__seed0", "mfl+mil__seed0", "dumeta++__capacity1__seed0"):
        for name in ("config.json", "metrics.jsonl", "checkpoint_latest.pt", "result.json"):
            assert (out / "runs" / run / name).is_file(), f"{run}/{name}"
    assert (out / "runs" / "randinit-2d__seed0" / "finetune" / "infant6m__1shot__depthall" / "result.json").is_file()
    saved = json.loads((out / "results.json").read_text())
    assert (
        saved["recipe"] == "dumeta"
        and saved["data"]["stand_in"]
        and saved["pool"] == ["infant12m", "infant24m", "adult"]
    )
    markdown = (out / "results.md").read_text()
    assert "Stand-in data" in markdown and "setting differs" in markdown
    for title in ("Table I:", "Table II:", "Table IV:", "Table V:", "Table VI:", "Fig. 7:"):
        assert title in markdown, title
    assert "(0.9665)" in markdown  # the paper's DuMeta++ Dice CSF of Table I beside ours


def test_smoke_rows_cover_every_table_with_valid_scores(smoke):
    out, _, results = smoke
    rows = results["rows"]  # per-seed means over the test subjects of every meta-test
    dice = [r["value"] for r in rows if r["metric"] == "Dice"]
    assert dice and all(0.0 <= v <= 1.0 for v in dice if math.isfinite(v))
    assert {r["metric"] for r in rows} == {"Dice", "ASSD", "STCS", "ASPC"}
    jobs = {(r["method"], r["capacity"], r["domain"], r["shots"], r["depth"]) for r in rows}
    assert ("dumeta++", 100, "infant6m", 1, "3") in jobs and ("dumeta++", 100, "infant6m", 1, "0") in jobs
    assert ("dumeta++", 1, "elderly", 1, "3") in jobs and ("randinit-2d", 100, "elderly", 1, "all") in jobs
    assert ("mfl+mil", 100, "infant6m", 1, "3") in jobs
    assert {r["domain"] for r in rows if r["metric"] == "STCS"} == {"elderly"}
    made = {f"{m}__seed0" for m in ("dumeta++", "mfl+mil", "randinit-2d", "maml", "truth", "all-gm")}
    assert set(results["runs"]) == made | {"dumeta++__capacity1__seed0"}
    # the per-subject rows stay in each run's result.json; the per-seed cell is their mean
    run = json.loads((out / "runs" / "dumeta++__seed0" / "result.json").read_text())["result"]
    subjects = [
        r["value"]
        for r in run["rows"]
        if (r["domain"], r["shots"], r["depth"], r["metric"], r["tissue"]) == ("infant6m", 1, "3", "Dice", "GM")
    ]
    cell = next(
        r
        for r in rows
        if (r["method"], r["capacity"], r["domain"], r["shots"], r["depth"], r["metric"], r["tissue"])
        == ("dumeta++", 100, "infant6m", 1, "3", "Dice", "GM")
    )
    assert len(subjects) == 2 and cell["value"] == pytest.approx(sum(subjects) / 2) and cell["n"] == 2


def cell(rows, method, metric, tissue, **match):
    found = [
        r
        for r in rows
        if (r["method"], r["metric"], r["tissue"]) == (method, metric, tissue)
        and all(r[k] == v for k, v in match.items())
    ]
    assert len(found) == 1, (method, metric, tissue, match, found)
    return found[0]["value"]


def test_each_baseline_is_meta_tested_the_way_its_paper_does(smoke):
    _, _, results = smoke
    protocols = {(r["method"], r["depth"]) for r in results["rows"] if r["metric"] == "Dice"}
    assert {("randinit-2d", "all"), ("maml", "all"), ("maml", "3"), ("dumeta++", "3")} <= protocols
    assert ("randinit-2d", "3") not in protocols and ("mfl+mil", "all") not in protocols
    markdown = (results_dir := smoke[0] / "results.md").read_text()
    assert "| MAML, whole network | " in markdown and "| MAML, encoder frozen (3 stages) | " in markdown
    maml_rows = [line for line in markdown.splitlines() if line.startswith("| MAML, ")]
    # the paper's MAML number (Table I, Dice CSF 0.9433) sits beside the whole-network row only
    assert "(0.9433)" in maml_rows[0] and "(" not in maml_rows[1].split("|", 2)[2], results_dir


def test_table_iv_has_the_labels_and_a_trivial_labelling_beside_the_methods(smoke):
    _, _, results = smoke
    rows, key = results["rows"], {"domain": "elderly", "shots": 1}
    assert all(cell(rows, "truth", "Dice", t, **key) == 1.0 for t in ("CSF", "GM", "WM"))
    assert cell(rows, "all-gm", "Dice", "CSF", **key) == 0.0 and cell(rows, "all-gm", "Dice", "WM", **key) == 0.0
    # labelling every brain voxel GM is "more consistent" than the true labels, whose atrophy is built in
    assert cell(rows, "all-gm", "STCS", "GM", **key) > cell(rows, "truth", "STCS", "GM", **key)
    assert cell(rows, "truth", "ASPC", "CSF", **key) > 1.0 > cell(rows, "all-gm", "ASPC", "GM", **key)
    markdown = (smoke[0] / "results.md").read_text()
    table_iv = markdown[markdown.index("## Table IV") : markdown.index("## Table V")]
    assert "| Ground truth (the labels) |" in table_iv and "| Trivial: every brain voxel GM |" in table_iv
    claims = [c["test"] for c in results["claims"]]
    assert any(c.startswith("|ASPC MAML − ASPC labels|") for c in claims)


def test_resume_reuses_finished_runs(smoke):
    out, argv, results = smoke
    again = dumeta.main([*argv, "--resume"])
    assert json.dumps(again["rows"]) == json.dumps(results["rows"])  # NaN (an undefined ASSD) included


def write_domain(root: Path, name: str, people: int, seed: int, series: bool = False) -> None:
    """A domain in the nnU-Net raw layout: imagesTr/<case>_0000.nii.gz, labelsTr/<case>.nii.gz (+ subjects.csv)."""
    rng = np.random.default_rng(seed)
    (root / name / "imagesTr").mkdir(parents=True)
    (root / name / "labelsTr").mkdir(parents=True)
    cases = []
    for p in range(people):
        for t in range(2 if series else 1):
            label = np.zeros((48, 56, 6), dtype=np.int16)
            r = 18 - t - rng.integers(0, 3)
            yy, xx = np.meshgrid(np.arange(48) - 24, np.arange(56) - 28, indexing="ij")
            dist = np.sqrt(yy**2 + xx**2)[..., None].repeat(6, axis=2)
            label[dist < r + 4] = 1
            label[dist < r] = 2
            label[dist < r - 6] = 3
            image = (label * 30.0 + rng.normal(0, 3, label.shape)).astype(np.float32) * (label > 0)
            case = f"{name}_{p:02d}_{t}"
            affine = np.diag([1.5, 1.5, 3.0, 1.0])
            nib.save(nib.Nifti1Image(image, affine), root / name / "imagesTr" / f"{case}_0000.nii.gz")
            nib.save(nib.Nifti1Image(label, affine), root / name / "labelsTr" / f"{case}.nii.gz")
            cases.append(
                {
                    "case": case,
                    "age_months": 900 + 12 * t,
                    "series": f"{name}_{p:02d}" if series else "",
                    "time_point": t if series else "",
                }
            )
    if series:
        with open(root / name / "subjects.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["case", "age_months", "series", "time_point"])
            writer.writeheader()
            writer.writerows(cases)


def test_data_root_reads_the_real_layout_end_to_end(tmp_path):
    root = tmp_path / "data"
    for i, name in enumerate(("OASIS3", "IBIS12M", "IBIS24M")):
        write_domain(root, name, people=3, seed=i)
    write_domain(root, "iSegLike", people=3, seed=5)
    write_domain(root, "ADNI", people=3, seed=6, series=True)
    results = dumeta.main(
        [
            *FAST,
            "--data-root",
            str(root),
            "--meta-test",
            "iSegLike",
            "ADNI",
            "--methods",
            "dumeta++",
            "--capacities",
            "--depths",
            "--shots",
            "1",
            "--label-map",
            "identity",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert results["data"]["source"] == "real" and not results["data"]["stand_in"]
    assert results["pool"] == ["OASIS3", "IBIS12M", "IBIS24M"] and results["targets"] == ["iSegLike", "ADNI"]
    assert any(r["metric"] == "STCS" for r in results["rows"])
    assert "Stand-in" not in (tmp_path / "out" / "results.md").read_text()


def test_resume_refuses_runs_made_or_begun_with_other_settings(smoke, tmp_path):
    out, argv, _ = smoke
    with pytest.raises(SystemExit, match=r"made with other settings \(lambda2: 0.1 then, 0.2 now\)"):
        dumeta.main([*argv, "--resume", "--lambda2", "0.2"])
    spec = planning.RunSpec("dumeta++", 0)
    planning.started(tmp_path, spec, {"lambda1": 1.5, "lambda2": 0.1})  # a run begins, then is interrupted
    planning.started(tmp_path, spec, {"lambda1": 1.5, "lambda2": 0.1})  # continued with the same settings
    with pytest.raises(SystemExit, match=r"started.json.*lambda2: 0.1 then, 0.2 now"):
        planning.started(tmp_path, spec, {"lambda1": 1.5, "lambda2": 0.2})


def test_impossible_settings_stop_before_any_training(tmp_path, capsys):
    for flag, value in (("--lambda2", "nan"), ("--lambda1", "-1"), ("--lambda2", "inf")):
        with pytest.raises(SystemExit) as stop:
            dumeta.parse_args([flag, value])
        assert stop.value.code == 2 and "expected a finite number >= 0" in capsys.readouterr().err
    out = tmp_path / "many_shots"
    with pytest.raises(SystemExit, match=r"'infant6m' has 10 people; cannot take 10 shot\(s\).*--shots 1 10"):
        dumeta.main([*FAST, "--methods", "dumeta++", "--shots", "1", "10", "--out", str(out)])
    assert not (out / "runs").exists()


def test_results_claim_the_papers_setting_only_with_nnunets_augmentation():
    from reports import dumeta as report

    settings = {"head_depth": 3, "shots": [1], "capacities": [], "depths": [], "upper_order": "sequential"}
    results = {
        "rows": [],
        "targets": ["iSeg-2019", "ADNI"],
        "pool": ["OASIS3", "IBIS12M", "IBIS24M"],
        "methods": [],
        "runs": {},
        "seeds": [0],
        "figures": [],
        "preset": "paper",
        "data": {"source": "real", "stand_in": False, "root": "/data", "descriptions": {}},
    }
    paper = {"rows": []}
    with_augmentation = report.render({**results, "settings": {**settings, "augment": True}}, [], paper)
    without = report.render({**results, "settings": {**settings, "augment": False}}, [], paper)
    assert "Setting: the paper's" in with_augmentation and "setting differs" not in with_augmentation
    assert "Setting: the paper's" not in without and "No data augmentation" in without
    assert dumeta.PRESETS["paper"].augment and not dumeta.PRESETS["smoke"].augment


def test_study_plan_is_the_one_the_docs_state():
    plan = dumeta.make_plan(dumeta.parse_args(["--preset", "study"]))
    assert plan.seeds == [0, 1, 2] and len(plan.runs) == 21
    assert plan.methods == ["randinit-2d", "maml", "reptile", "sample", "dumeta++", "truth", "all-gm"]
    s = plan.settings
    assert (s["dims"], s["base_width"], s["steps"], s["fine_tune_steps"]) == (2, 8, 300, 300)
    assert (s["people"], s["test_people"], s["shots"], s["augment"]) == (16, 6, (1, 5), False)
    assert (s["inner_lr"], s["outer_lr"], s["momentum"], s["upper_order"]) == (0.01, 0.01, 0.99, "sequential")
    page = (ROOT / "docs" / "recipes" / "dumeta.md").read_text()
    section = page[page.index("## Study preset") :]
    section = section[: section.find("\n## ", 1) if "\n## " in section[1:] else None]
    missing = [line for line in plan.markdown() if line not in section.splitlines()]
    assert not missing, f"docs/recipes/dumeta.md '## Study preset' lacks {missing}"


@pytest.mark.slow
def test_cost_benchmark_times_every_meta_training_graph(tmp_path):
    out = tmp_path / "cost.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "dumeta_cost.py"), "--rounds", "1", "--out", str(out)],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    rows = json.loads(out.read_text())
    assert [r["method"] for r in rows] == ["joint", "dumeta++", "mfl+mil", "sample", "maml", "reptile"]
    assert all(r["median_s"] > 0 and r["peak_mib"] > 0 for r in rows)


def test_command_line_errors_are_clear(tmp_path):
    with pytest.raises(SystemExit, match="randinit-3d needs a 3D preset"):
        dumeta.main([*FAST, "--methods", "randinit-3d", "--out", str(tmp_path / "a")])
    with pytest.raises(SystemExit, match="folder not found"):
        dumeta.main([*FAST, "--data-root", str(tmp_path / "missing"), "--out", str(tmp_path / "b")])
    with pytest.raises(SystemExit):
        dumeta.parse_args(["--head-depth", "7"])
