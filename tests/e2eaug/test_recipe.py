"""`python recipes/e2eaug.py` end to end: the smoke comparison (paired, equal generator budgets), the
ablations on the smallest settings, resuming, and command-line errors raised before any training."""

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "recipes"))
import e2eaug  # noqa: E402

from problems.e2eaug.methods import DEFAULT_HYPERGRAD, METHODS, new_segmenter  # noqa: E402

SMOKE = e2eaug.PRESETS["smoke"]


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2eaug_smoke")
    results = e2eaug.main(["--dataset", "isic", "--preset", "smoke", "--out", str(out), "--no-progress"])
    return out, results


def test_smoke_run_writes_every_result_file(smoke):
    out, results = smoke
    for name in (
        "results.json",
        "results.md",
        "figures/augmented_pairs.png",
        "figures/test_segmentations.png",
        "figures/graph.png",
        "figures/claims.png",
        "figures/validation_curves.png",
    ):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    assert saved["recipe"] == "e2eaug" and saved["preset"] == "smoke"
    assert saved["hypergrad"] == {"gan": DEFAULT_HYPERGRAD, "seg": DEFAULT_HYPERGRAD}
    assert {k: v["source"] for k, v in saved["data"].items()} == {
        "isic2018": "embedded-sample",
        "ph2": "embedded-sample",
        "dermis": "embedded-sample",
    }
    markdown = (out / "results.md").read_text()
    headings = [line for line in markdown.splitlines() if line.startswith("## ")]
    assert headings[0] == "## The paper's claims on this run"  # the claims table comes first
    assert saved["claims"] and all(
        c["verdict"] == "not testable at this scale: 1 seed(s), at least 3 are needed for an interval"
        for c in saved["claims"]
    )
    for text in (
        "Stand-in data",
        "Paired differences against no augmentation",
        "The paper's claims on this run",
        "Ours (A frozen)-UNet",
    ):
        assert text in markdown, text


def test_smoke_rows_cover_every_method_and_test_set_within_0_1(smoke):
    _, results = smoke
    rows = results["rows"]
    assert {r["study"] for r in rows} == {"comparison"}
    assert {r["method"] for r in rows} == set(METHODS)
    assert {r["test_set"] for r in rows} == {"isic2018", "ph2", "dermis"}
    for r in rows:
        assert set(r) >= {"method", "backbone", "train_size", "test_set", "metric", "value", "std", "n"}
        assert r["metric"] == "jaccard" and 0.0 <= r["value"] <= 1.0 and r["n"] == 1
    runs = {r["run"]: r for r in results["runs"]}
    assert (
        runs["e2eaug__backboneunet__n20__seed0"]["genotype"]["down"]
        and runs["e2eaug__backboneunet__n20__seed0"]["val"] > 0
    )


def test_paired_differences_are_per_seed_differences_against_none(smoke):
    _, results = smoke
    value = {(r["method"], r["test_set"]): r["value"] for r in results["seed_rows"]}
    paired = [r for r in results["paired"] if r["study"] == "comparison"]
    assert {r["method"] for r in paired} == set(METHODS) - {"none"}
    for r in paired:
        assert r["baseline"] == "none" and r["pairs"] == 1
        assert r["difference"] == pytest.approx(value[(r["method"], r["test_set"])] - value[("none", r["test_set"])])


def test_every_method_starts_from_the_same_segmenter_and_batches(smoke):
    """Paired design: the segmenter's loss on real pairs at step 1 is the same number in every run."""
    out, _ = smoke
    first = {}
    for method in METHODS:
        line = next(ln for ln in _metrics(out / "runs" / f"{method}__backboneunet__n20__seed0") if ln["level"] == "seg")
        first[method] = line.get("real", line["loss"])  # augmented methods log the real-pair term separately
    assert all(v == pytest.approx(first["none"], rel=1e-5) for v in first.values()), first


def test_every_generator_takes_the_same_number_of_updates(smoke):
    out, _ = smoke
    runs = out / "runs"

    def gan_steps(run: str) -> int:
        return sum(ln["level"] == "gan" for ln in _metrics(runs / run))

    budget = SMOKE.pretrain_steps + SMOKE.steps
    assert gan_steps("pix2pix_vanilla__n20__seed0") == budget  # GAN-Separate: all of it, then frozen
    assert gan_steps("gan_separate__backboneunet__n20__seed0") == 0
    for method in ("e2eaug", "e2eaug_frozen_arch"):  # pre-training, then jointly with the segmenter
        assert gan_steps("pix2pix__n20__seed0") + gan_steps(f"{method}__backboneunet__n20__seed0") == budget


def test_the_architecture_moves_only_in_e2eaug(smoke):
    out, _ = smoke
    arch = [ln for ln in _metrics(out / "runs" / "e2eaug__backboneunet__n20__seed0") if ln["level"] == "arch"]
    assert len(arch) == SMOKE.steps and all(ln["grad_norm"] > 0 for ln in arch)
    assert DEFAULT_HYPERGRAD == "exact"  # §3.3's one-step unrolling, through the real optimizer steps
    for ln in arch:  # the norm of each path into arch, logged on every arch step
        paths = ln["hypergradient"]
        assert set(paths) == {"arch<-seg", "arch<-seg<-gan"} and all(p["norm"] > 0 for p in paths.values())
        assert {hop["method"] for p in paths.values() for k, hop in p.items() if k != "norm"} == {"exact"}
    frozen = _metrics(out / "runs" / "e2eaug_frozen_arch__backboneunet__n20__seed0")
    assert {ln["level"] for ln in frozen} == {"gan", "seg", "validation"}


def test_segmenter_initialisation_does_not_depend_on_what_was_built_before():
    torch.manual_seed(123)
    a = new_segmenter("unet", SMOKE, 3, seed=4)
    state = torch.get_rng_state()
    torch.randn(1000)
    b = new_segmenter("unet", SMOKE, 3, seed=4)
    c = new_segmenter("unet", SMOKE, 3, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))
    torch.set_rng_state(state)
    new_segmenter("unet", SMOKE, 3, seed=4)
    assert torch.equal(torch.get_rng_state(), state)  # the global stream is left untouched


def test_resume_reuses_finished_runs_and_reproduces_the_results(smoke):
    out, results = smoke
    again = e2eaug.main(["--dataset", "isic", "--preset", "smoke", "--out", str(out), "--no-progress", "--resume"])
    assert again["rows"] == results["rows"] and again["paired"] == results["paired"]


def test_a_finished_output_folder_needs_resume(smoke):
    out, _ = smoke
    with pytest.raises(SystemExit, match="already holds results.json"):
        e2eaug.main(["--dataset", "isic", "--preset", "smoke", "--out", str(out)])


def test_ablations_write_their_tables_rows_and_figures(tmp_path):
    out = tmp_path / "ablations"
    results = e2eaug.main(
        [
            "--preset",
            "smoke",
            "--out",
            str(out),
            "--no-progress",
            "--steps",
            "2",
            "--pretrain-steps",
            "1",
            "--ablation",
            "lambda",
            "mask-op",
            "train-size",
            "--lambdas",
            "0.5",
            "1",
            "--methods",
            "none",
            "e2eaug",
            "--train-sizes",
            "10",
            "20",
        ]
    )
    for name in ("ablation_lambda.png", "ablation_mask_ops.png", "performance_vs_n.png"):
        assert (out / "figures" / name).is_file(), name
    rows = results["rows"]
    assert {r["lambda"] for r in rows if r["study"] == "lambda"} == {0.5, 1.0}
    assert {r["mask_ops"] for r in rows if r["study"] == "mask_op"} == {
        "rotate+flip+translate",
        "rotate",
        "flip",
        "translate",
    }
    assert {(r["method"], r["train_size"]) for r in rows if r["study"] == "train_size"} == {
        (m, n) for m in ("none", "e2eaug") for n in (10, 20)
    }
    assert {r["train_size"] for r in rows if r["study"] in ("lambda", "mask_op")} == {10}  # §4.3: the smallest N
    # runs shared between studies are trained once: λ = 1 and all three operations are the comparison's e2eaug run
    assert len(results["runs"]) == 4 + 1 + 3
    markdown = (out / "results.md").read_text()
    for text in (
        "Ablation: λ of Eq. 2",
        "Ablation: mask operations",
        "Figure 2",
        "λ = 1 gives the best trade-off",
        "All three mask operations beat any single one",
        "The gain is larger with fewer training examples",
    ):
        assert text in markdown, text
    lam = {(r["lambda"], r["test_set"]): r for r in results["paired"] if r["study"] == "lambda"}
    assert set(lam) == {(0.5, t) for t in ("isic2018", "ph2", "dermis")}  # differences against the default λ


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--hypergrad", "generator=cg"], "--hypergrad names level 'generator'"),
        (["--hypergrad", "seg=sama"], "'sama' needs one of .* at level 'seg', which uses RMSprop"),
        (["--image-size", "48"], "power of two"),
        (["--encoder", "no_such_encoder"], "cannot build the unet segmenter"),
        (["--train-sizes", "200"], "--train-sizes 200: .*isic2018"),
    ],
)
def test_bad_arguments_fail_before_any_training(tmp_path, argv, message):
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=message):
        e2eaug.main(["--preset", "smoke", "--out", str(out), "--no-progress", *argv])
    assert not (out / "runs").exists()


@pytest.mark.parametrize(
    "argv", [["--pretrain-steps", "0"], ["--lambdas", "1"], ["--ablation", "lambda", "--lambdas", "-1"]]
)
def test_bad_option_values_are_refused_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit):
        e2eaug.parse_args(argv)
    assert "error:" in capsys.readouterr().err


def test_missing_real_data_names_the_dataset(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match="error: .*isic2018"):
        e2eaug.main(["--preset", "smoke", "--out", str(tmp_path / "b"), "--data-root", str(empty)])


def _study_plan():
    return e2eaug.make_plan(e2eaug.parse_args(["--preset", "study"]))


def test_study_plan_tests_every_claim_over_at_least_three_seeds():
    plan = _study_plan()
    assert plan.preset == "study" and len(plan.seeds) >= 3
    assert set(plan.methods) == set(METHODS)  # none, the simple augmentations, GAN-Separate, A frozen, Ours
    assert len(plan.runs) == len(plan.seeds) * len(METHODS)
    study = e2eaug.PRESETS["study"]
    assert plan.settings["steps"] == study.steps > SMOKE.steps
    assert study.sample.test > e2eaug.SampleSizes().test_of("isic2018")  # more test images than the smoke's


def test_study_plan_is_quoted_verbatim_in_the_docs():
    page = (ROOT / "docs" / "recipes" / "e2eaug.md").read_text().splitlines()
    start = page.index("## Study preset")
    table = next(i for i in range(start, len(page)) if page[i].startswith("| setting |"))
    expected = _study_plan().markdown()
    assert page[table : table + len(expected)] == expected


def test_make_plan_reads_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = e2eaug.make_plan(e2eaug.parse_args(["--preset", "smoke", "--out", str(tmp_path / "out")]))
    assert [r.name for r in plan.runs][-1] == "e2eaug__backboneunet__n20__seed0"
    assert list(tmp_path.iterdir()) == []


def test_resuming_with_other_settings_is_refused(tmp_path):
    out = str(tmp_path / "out")
    e2eaug.main(["--preset", "smoke", "--methods", "none", "--steps", "2", "--out", out, "--no-progress"])
    with pytest.raises(SystemExit, match="made with other settings .*steps: 2 then, 3 now"):
        e2eaug.main(["--preset", "smoke", "--methods", "none", "--steps", "3", "--out", out, "--resume"])


def _tiny_e2eaug(out, *extra):
    argv = ["--preset", "smoke", "--image-size", "16", "--methods", "e2eaug", "--steps", "2", "--pretrain-steps", "1"]
    e2eaug.main([*argv, "--out", str(out), "--no-progress", *extra])
    return _metrics(out / "runs" / "e2eaug__backboneunet__n20__seed0")


@pytest.mark.filterwarnings("error:hypergradient audit")  # the audit warns when a path disagrees
def test_audit_every_audits_the_architecture_level_and_the_default_agrees_with_its_reference(tmp_path):
    audited = [ln for ln in _tiny_e2eaug(tmp_path / "audit", "--audit-every", "1") if "audit" in ln]
    assert {ln["level"] for ln in audited} == {"arch"} and len(audited) == 2
    for ln in audited:  # one_step (the former default): -0.53 and 0.66 in total on the smoke graph
        audit = ln["audit"]
        assert set(audit) == {"arch<-seg", "arch<-seg<-gan", "total"}
        assert all(a["cosine"] > 0.999 and abs(a["norm_ratio"] - 1) < 1e-3 for a in audit.values())


@pytest.mark.slow
def test_doctor_writes_its_table_into_the_e2eaug_run_folder(tmp_path):
    _tiny_e2eaug(tmp_path / "doctor", "--doctor")
    run = tmp_path / "doctor" / "runs"
    assert (run / "e2eaug__backboneunet__n20__seed0" / "hypergrad_doctor.md").is_file()
