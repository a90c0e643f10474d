"""`python recipes/rmmetal.py --preset smoke` end to end: one meta-test protocol for all, the untrained
reference row, memory against K as the paper measures it, and command-line errors."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "recipes"))
import rmmetal  # noqa: E402

# A quarter of the smoke preset's outer steps (already enough to separate trained from untrained), and
# no MAML (its vmapped whole-network replays cost as much as the three others together; its levels are
# tested in test_rmmetal_levels.py), so that this end-to-end test takes a few minutes on 2 cores.
STEPS = 10
METHODS = ["rm-metal", "itd-bio", "anil"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke run, with every meta-test call recorded (the real function runs)."""
    out = tmp_path_factory.mktemp("rmmetal_smoke")
    calls = []
    original = rmmetal.meta_test

    def recording(meta, episodes, *, steps, lr, **kw):
        calls.append(
            {
                "steps": steps,
                "lr": lr,
                "tasks": episodes.n_tasks,
                "query": episodes.query_y.shape[1],
                "support": episodes.support_y.shape[1],
            }
        )
        return original(meta, episodes, steps=steps, lr=lr, **kw)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rmmetal, "meta_test", recording)
        results = rmmetal.main(
            ["--preset", "smoke", "--steps", str(STEPS), "--methods", *METHODS, "--out", str(out), "--no-progress"]
        )
    return out, results, calls


def test_smoke_writes_results_and_figures(smoke):
    out, results, _ = smoke
    for name in ("results.json", "results.md", "figures/memory_vs_k.png", "figures/graph.png"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    assert saved["recipe"] == "rmmetal" and saved["preset"] == "smoke"
    assert saved["data"]["stand_in"] and "stand-in" in saved["data"]["description"].lower()
    markdown = (out / "results.md").read_text()
    assert "Stand-in data" in markdown and "untrained (reference)" in markdown
    assert "The paper's claims on this data" in markdown
    assert rmmetal.MetaTestProtocol(**saved["protocol"]).describe() in markdown


def test_one_meta_test_protocol_for_every_method(smoke):
    _, results, calls = smoke
    preset = rmmetal.PRESETS["smoke"]
    protocol = results["protocol"]
    assert protocol == {
        "steps": 20,
        "lr": 0.05,
        "query_per_class": preset.k_shot,
        "test_tasks": preset.test_tasks,
        "checkpoint": "final",
    }
    runs = results["runs"]
    assert set(runs) == {*METHODS, rmmetal.UNTRAINED}
    assert all(r["protocol"] == protocol for r in runs.values())
    assert all(runs[m]["tested_step"] == STEPS for m in METHODS)  # the final model, not the best
    # what was actually run: the same steps, step size and query count for validation and test of every method
    assert {(c["steps"], c["lr"], c["query"], c["support"]) for c in calls} == {(20, 0.05, 25, 25)}
    assert len([c for c in calls if c["tasks"] == preset.test_tasks]) == len(METHODS) + 1


def test_meta_training_beats_the_untrained_backbone(smoke):
    _, results, _ = smoke
    accuracy = {r["method"]: r for r in results["rows"] if r["metric"] == "test_accuracy"}
    assert set(accuracy) == {*METHODS, rmmetal.UNTRAINED}
    assert all(0.0 < r["value"] <= 1.0 and r["ci95"] > 0 for r in accuracy.values())
    untrained = accuracy[rmmetal.UNTRAINED]["value"]
    assert all(accuracy[m]["value"] >= untrained + 0.10 for m in METHODS)  # the stand-in shows meta-learning


def test_smoke_memory_rows_cover_every_method_and_k(smoke):
    _, results, _ = smoke
    memory = [r for r in results["rows"] if r["metric"] == "peak_memory_bytes"]
    expected = rmmetal.memory_methods(METHODS)
    assert expected == [*METHODS, "itd-bio-shared", "anil-shared"]
    assert {(r["method"], r["k"]) for r in memory} == {(m, k) for m in expected for k in rmmetal.MEMORY_KS}
    assert all(r["tasks"] == rmmetal.PRESETS["smoke"].memory_tasks for r in memory)


def test_rm_metal_needs_at_most_half_the_memory_of_reference_itd_bio(smoke):
    """Fig. 2 / §5.2 at the smoke sizes, from the recipe's own measurement (peak_memory_of_outer_step):
    RM-MetaL's peak is flat in K; ITD-BiO's and ANIL's (backbone re-run in every differentiated inner
    step, as the reference code does) grow, while their feature-sharing variants' stay nearly flat."""
    _, results, _ = smoke
    peak = {(r["method"], r["k"]): r["value"] for r in results["rows"] if r["metric"] == "peak_memory_bytes"}
    assert peak["rm-metal", 20] <= 0.5 * peak["itd-bio", 20]
    assert peak["rm-metal", 5] <= 0.5 * peak["itd-bio", 5] and peak["rm-metal", 5] <= 0.5 * peak["anil", 5]
    assert abs(peak["rm-metal", 20] - peak["rm-metal", 1]) <= 0.1 * peak["rm-metal", 1]
    for method in ("itd-bio", "anil"):
        assert peak[method, 20] > 2 * peak[method, 1]
        assert peak[f"{method}-shared", 20] <= 1.1 * peak[f"{method}-shared", 1]
    verdicts = {
        claim: verdict
        for claim, _, verdict in rmmetal.paper_claims(
            results["rows"], rmmetal.reporting.load_paper("rmmetal")["memory"]
        )
    }
    assert verdicts["Fig. 2: RM-MetaL's memory stays flat in K"] == "yes"


def test_other_rows(smoke):
    _, results, _ = smoke
    clock = [r for r in results["rows"] if r["metric"] == "seconds_to_0.9_best_val"]
    assert [r["method"] for r in clock] == METHODS and any(r["value"] is not None for r in clock)
    checks = {r["hypergrad"]: r for r in results["rows"] if r["metric"] == "hypergradient_cosine_vs_dense_implicit"}
    assert set(checks) == {"cg_warm", "cg"}
    for check in checks.values():  # measured over outer steps 2..T of training, not on the first solve
        assert len(check["per_step"]) == check["outer_steps"] and check["value"] > 0.99
        assert check["products_per_solve"] <= check["cg_iterations"] + 1  # the warm residual is not one of N
    assert checks["cg"]["cold_restarts"] == 0


def test_command_line_errors(tmp_path):
    with pytest.raises(SystemExit, match="FC100_train.pickle"):
        rmmetal.main(
            ["--dataset", "fc100", "--data-root", str(tmp_path), "--preset", "smoke", "--out", str(tmp_path / "out")]
        )
    with pytest.raises(SystemExit, match="--mu must be >= 0"):
        rmmetal.main(["--preset", "smoke", "--mu", "-1", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit):
        rmmetal.parse_args(["--tasks", "0"])
