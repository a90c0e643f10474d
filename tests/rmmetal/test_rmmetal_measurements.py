"""The measurements behind RM-MetaL's claims: backbone snapshots every few outer steps, the training time
that survives a resume, the alternating time per outer step and the equal wall-clock budget."""

import itertools
import statistics

import pytest
import torch

from engines import Runner
from problems.fewshot import load_fewshot, sample_episodes
from problems.rmmetal import (
    GraphConfig,
    MetaTestProtocol,
    MetaValidation,
    build_graph,
    equal_time_steps,
    first_snapshot_from,
    keep_snapshots,
    load_snapshot,
    snapshot_steps,
    steps_to_reach,
    time_per_outer_step,
    validation_curve,
)

TINY = {"n_tasks": 2, "width": 4, "cg_iterations": 3}
K = 2


@pytest.fixture(scope="module")
def digits():
    return load_fewshot("digits", None)


def config(method="rm-metal", **changes):
    return GraphConfig(method, inner_steps=K, inner_lr=0.1, outer_lr=1e-2, **{**TINY, **changes})


def validation_tasks(digits):
    gen = torch.Generator().manual_seed(0)
    return sample_episodes(digits.splits["val"], n_way=5, k_shot=5, k_query=5, n_tasks=4, generator=gen)


PROTOCOL = MetaTestProtocol(steps=3, lr=0.05, query_per_class=5, test_tasks=4, checkpoint="final")


def train(digits, run_dir, outer_steps, *, resume=False, snapshot_every=1):
    """``outer_steps`` of RM-MetaL validated and checkpointed every outer step, with snapshots."""
    graph = build_graph(config(), digits, seed=0)
    keep_snapshots(graph, run_dir, snapshot_every)
    validation = MetaValidation(validation_tasks(digits), PROTOCOL, run_dir)
    Runner(
        graph,
        outer_steps * K,
        out=run_dir,
        device="cpu",
        validate=validation,
        valid_every=K,
        monitor="val_accuracy",
        mode="max",
        checkpoint_every=K,
        resume=resume,
        progress=False,
    ).run()
    return graph


def test_snapshots_hold_the_backbone_of_their_outer_step(digits, tmp_path):
    trained = train(digits, tmp_path / "three", 3)
    assert snapshot_steps(tmp_path / "three") == [1, 2, 3]
    train(digits, tmp_path / "every other", 5, snapshot_every=2)
    assert snapshot_steps(tmp_path / "every other") == [2, 4]
    shorter = train(digits, tmp_path / "two", 2)
    loaded = load_snapshot(tmp_path / "three", 2, build_graph(config(), digits, seed=0)["backbone"].module)
    assert all(
        torch.equal(a, b)
        for a, b in zip(loaded.state_dict().values(), shorter["backbone"].module.state_dict().values())
    )
    final = load_snapshot(tmp_path / "three", 3, build_graph(config(), digits, seed=0)["backbone"].module)
    assert all(
        torch.equal(a, b) for a, b in zip(final.state_dict().values(), trained["backbone"].module.state_dict().values())
    )
    with pytest.raises(FileNotFoundError, match="no snapshot of outer step 7"):
        load_snapshot(tmp_path / "three", 7, loaded)


def test_validation_curve_and_training_time_survive_a_resume(digits, tmp_path):
    train(digits, tmp_path / "resumed", 2)
    before = validation_curve(tmp_path / "resumed", K)
    train(digits, tmp_path / "resumed", 4, resume=True)
    curve = validation_curve(tmp_path / "resumed", K)
    assert [v["step"] for v in curve] == [1, 2, 3, 4] and curve[:2] == before
    seconds = [v["train_seconds"] for v in curve]
    assert all(later > earlier for earlier, later in itertools.pairwise(seconds))  # continued, not restarted at 0
    train(digits, tmp_path / "once", 4)
    uninterrupted = validation_curve(tmp_path / "once", K)
    assert [v["accuracy"] for v in curve] == [v["accuracy"] for v in uninterrupted]


def test_time_per_outer_step_alternates_and_reports_ratios_to_the_reference(digits):
    timing = time_per_outer_step([config(), config("itd-bio")], digits, torch.device("cpu"), 0, rounds=3)
    assert {m: len(t) for m, t in timing["seconds"].items()} == {"rm-metal": 3, "itd-bio": 3}
    assert timing["ratio"]["rm-metal"] == 1.0
    per_round = [t / ref for t, ref in zip(timing["seconds"]["itd-bio"], timing["seconds"]["rm-metal"])]
    assert timing["ratio"]["itd-bio"] == statistics.median(per_round)
    with pytest.raises(ValueError, match="reference algorithm 'maml'"):
        time_per_outer_step([config()], digits, torch.device("cpu"), 0, rounds=1, reference="maml")


def test_equal_time_budget_is_what_the_cheapest_algorithm_needs_for_all_steps():
    # costs relative to rm-metal: the cheapest (0.5) keeps its 100 steps; the budget is 100 x 0.5 = 50 rm-metal steps
    assert equal_time_steps({"rm-metal": 1.0, "itd-bio": 2.5, "fast": 0.5}, 100) == {
        "rm-metal": 50,
        "itd-bio": 20,
        "fast": 100,
    }
    assert equal_time_steps({"rm-metal": 1.0, "itd-bio": 3.0}, 40) == {"rm-metal": 40, "itd-bio": 13}
    # scored at the first snapshot at or after the credited steps: never less time than the budget
    assert first_snapshot_from([0, 10, 20, 30], 21) == 30 and first_snapshot_from([0, 10], 10) == 10
    assert first_snapshot_from([0, 10, 20], 0) == 0
    with pytest.raises(ValueError, match="no snapshot at or after outer step 11"):
        first_snapshot_from([5, 10], 11)


def test_steps_to_reach_the_target():
    curve = [{"step": 10, "accuracy": 0.5}, {"step": 20, "accuracy": 0.7}, {"step": 30, "accuracy": 0.65}]
    assert steps_to_reach(curve, 0.6) == 20 and steps_to_reach(curve, 0.7) == 20 and steps_to_reach(curve, 0.8) is None
