"""The hypergradient doctor (engines.diagnose): its reference against closed forms, its finite-difference
trust, the table's verdicts, and that it leaves every graph exactly as it found it."""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from core_toys import parameters, reweighting_graph
from doctor_toys import reweighting

from engines import Graph, Level, Runner, closed_form, diagnose
from engines.doctor import DoctorError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "recipes"))
import common
import doctor

# The analytic values of ridge, quadratic, three_level and two_uppers are implicit hypergradients (lower
# levels at their optimum). The reference differentiates the K steps the lower level really took from the
# start of its window, so K is chosen for the window to have converged: (1 - 1/cond)^K <= 1e-7.
CLOSED_FORMS = {
    "ridge": lambda: closed_form.build("ridge", "cg", unroll=100),
    "quadratic": lambda: closed_form.build("quadratic", "cg", unroll=60),
    "three_level": lambda: closed_form.build("three_level", "cg", unroll=15, cond=1.5),
    "two_uppers": lambda: closed_form.build("two_uppers", "cg", unroll=60),
    "maml": lambda: closed_form.build("maml", "exact"),
}


def flat(vectors) -> torch.Tensor:
    return torch.cat([v.detach().flatten().double() for v in vectors])


def relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


@pytest.mark.parametrize("problem", sorted(CLOSED_FORMS))
def test_reference_equals_the_closed_form_and_finite_differences_agree(problem):
    cf = CLOSED_FORMS[problem]()
    report = diagnose(cf.graph, methods=["exact"], rounds=1, fd_directions=2)
    for upper, analytic in cf.exact.items():
        found = report[upper]
        assert found.dtype == "float64" and found.reference.available
        assert relative(flat(found.tensors["reference_total"]), analytic()) <= 1e-6
        assert found.reference.fd["relative_disagreement"] <= 1e-4
        assert found.reference.trust == "agrees"
        assert len(found.reference.fd["slopes"]) == 3  # the reference's own direction and two random ones
        # the reference shares replays between paths; `exact` as the engine runs it walks each path alone
        assert all(c.relative_error <= 1e-10 for c in found.methods[0].paths.values())


def test_reference_follows_each_edge_of_a_shared_lower_level():
    """DuMeta++'s shape: one lower level, two uppers with a method per edge; the reference is exact on both."""
    cf = closed_form.dual_meta()
    report = diagnose(cf.graph, methods=["exact", "first_order"], rounds=1, fd_directions=1)
    for upper in ("encoder", "init"):
        found = report[upper]
        assert relative(flat(found.tensors["reference_total"]), cf.settings["unrolled"][upper]()) <= 1e-6
        assert found.reference.fd["relative_disagreement"] <= 1e-4
    rows = {row.label: row for row in report["init"].methods}
    assert rows["first_order"].configured and rows["first_order"].status == "ok"
    # first_order drops (P^K)ᵀ: it is not the reference, and the finite differences say so too
    assert rows["first_order"].total.relative_error > 1e-2
    assert rows["first_order"].fd_disagreement > 1e-2


def test_darts_is_flagged_on_a_chain_with_small_lower_learning_rates():
    """Three levels with lower learning rates of 1e-5: darts weighs each hop by 1/lr, so its paths are
    right in direction but wrong by 1e4 and 1e9 in size and their sum points elsewhere."""
    cf = closed_form.three_level("darts", unroll=3, lower_optimizer=functools.partial(torch.optim.SGD, lr=1e-5))
    report = diagnose(cf.graph, rounds=1, fd_directions=1)
    top = report["top"]
    rows = {row.label: row for row in top.methods}
    assert top.reference.trust == "agrees"
    assert rows["darts"].configured and rows["darts"].worst_cosine() < 0.9
    assert rows["darts"].total.cosine < 0.5
    assert rows["darts"].fd_disagreement > 0.5 > 1e-4 > rows["exact"].fd_disagreement
    assert top.recommendation is not None and top.recommendation != "darts"
    assert rows[top.recommendation].worst_cosine() >= 0.9
    assert "the configured `darts` is below it" in top.recommendation_text()


def test_implicit_methods_far_from_a_lower_optimum_are_found_out():
    """Per-example weights over an MLP with Adam, K = 5, 25 lower steps in: the implicit methods' assumption
    of a converged lower level does not hold, and only methods following the real steps pass."""
    graph = reweighting("cg")
    Runner(graph, 25, device="cpu", seed=0, progress=False).run()
    report = diagnose(graph, rounds=1, fd_directions=1, methods=["exact", "cg", "neumann", "darts"])
    weights = report["weights"]
    rows = {row.label: row for row in weights.methods}
    assert weights.reference.trust == "agrees"
    assert all(rows[m].worst_cosine() < 0.9 for m in ("cg", "neumann", "darts"))
    assert weights.recommendation == "exact"


def test_methods_a_level_cannot_use_are_reported_not_crashed_on():
    cf = closed_form.quadratic("cg", unroll=5, lower_optimizer=functools.partial(torch.optim.RMSprop, lr=0.01))
    methods = ["sama", "first_order", "reinforce", "penalty", ("cg/gauss-newton", "cg", {"curvature": "gauss_newton"})]
    report = diagnose(cf.graph, rounds=1, fd_directions=0, methods=[*methods, "exact"])
    rows = {row.label: row for row in report["hyper"].methods}
    assert rows["sama"].status == "unsupported" and "'solution', which uses RMSprop" in rows["sama"].reason
    assert rows["first_order"].status == "unsupported" and "no start map" in rows["first_order"].reason
    assert rows["reinforce"].status == "unsupported" and rows["reinforce"].reason.startswith("refused")
    assert rows["penalty"].status == "unsupported" and "not comparable" in rows["penalty"].reason
    assert rows["cg/gauss-newton"].status == "failed" and "mark_output" in rows["cg/gauss-newton"].reason
    assert rows["exact"].status == "ok"
    text = report.to_markdown()
    assert "`sama` (unsupported)" in text and "`cg/gauss-newton` (failed)" in text


def test_a_window_the_reference_cannot_replay_is_said_so():
    cf = closed_form.quadratic("cg", unroll=3, lower_optimizer=functools.partial(torch.optim.Adam, amsgrad=True))
    report = diagnose(cf.graph, rounds=1, fd_directions=1, methods=["cg", "exact", "one_step"])
    hyper = report["hyper"]
    assert not hyper.reference.available and "AMSGrad" in hyper.reference.reason
    assert hyper.recommendation is None and "reference is unavailable" in hyper.recommendation_text()
    rows = {row.label: row for row in hyper.methods}
    assert rows["cg"].status == "ok" and rows["cg"].paths["hyper<-solution"].cosine is None
    assert rows["one_step"].status == "unsupported" and "amsgrad" in rows["one_step"].reason
    assert len(hyper.reference.fd["slopes"]) == 1 and hyper.reference.fd["relative_disagreement"] is None


def _train(doctor: str | None, steps: int = 12) -> tuple[dict, Runner]:
    graph = reweighting_graph("cg_warm", unroll=3, seed=2)  # dropout, BatchNorm, Adam, a scheduler, a data stream
    if doctor == "before":
        diagnose(graph, rounds=1, fd_directions=1, methods=["exact", "cg_warm", "darts"])
    runner = Runner(graph, steps, device="cpu", seed=5, progress=False)
    for _ in range(steps // 2):
        runner.step()
    if doctor == "midway":
        diagnose(graph, rounds=1, fd_directions=1, methods=["exact", "cg_warm", "darts"])
    for _ in range(steps - steps // 2):
        runner.step()
    runner.close()
    state = parameters(graph)
    for name, level in graph.levels.items():
        for i, s in level.optimizer.state_dict()["state"].items():
            state.update({f"{name}.opt.{i}.{k}": v for k, v in s.items()})
        state[f"{name}.data"] = torch.tensor(list(level._source.state_dict().values()) if level._source else [])
    state["rng"] = torch.get_rng_state()
    return state, runner


@pytest.mark.parametrize("when", ["before", "midway"])
def test_diagnose_leaves_the_graph_bitwise_unchanged(when):
    """Before a run (the graph is built for the examination and unbuilt after) or between its steps."""
    plain, plain_runner = _train(None)
    examined, examined_runner = _train(when)
    assert plain.keys() == examined.keys()
    assert all(torch.equal(plain[k], examined[k]) for k in plain)
    assert plain_runner.losses == examined_runner.losses


def test_diagnose_reads_a_checkpoint(tmp_path):
    graph = reweighting("cg")
    Runner(graph, 10, out=tmp_path, checkpoint_every=5, device="cpu", progress=False).run()
    live = diagnose(graph, methods=["exact", "darts"], rounds=1, fd_directions=0)
    fresh = reweighting("cg")
    saved = diagnose(
        fresh, checkpoint=tmp_path / "checkpoint_latest.pt", methods=["exact", "darts"], rounds=1, fd_directions=0
    )
    assert live["weights"].global_step == saved["weights"].global_step == 15
    assert (
        relative(flat(saved["weights"].tensors["reference_total"]), flat(live["weights"].tensors["reference_total"]))
        < 1e-12
    )
    with pytest.raises(DoctorError, match="different graph"):
        diagnose(closed_form.quadratic("cg", unroll=5).graph, checkpoint=tmp_path / "checkpoint_latest.pt")


def test_report_files_and_bad_arguments(tmp_path):
    cf = closed_form.quadratic("cg", unroll=10)
    report = diagnose(cf.graph, rounds=2, fd_directions=1, methods=["exact", "cg", "darts"], command="pytest")
    paths = report.save(tmp_path)
    text = paths["md"].read_text()
    assert "| method | path | cosine | norm ratio | rel. error | time (ms) | peak memory (MiB) |" in text
    assert "Produced by `pytest`" in text and "**Recommendation**" in text
    data = json.loads(paths["json"].read_text())
    hyper = data["uppers"][0]
    assert hyper["upper"] == "hyper" and hyper["reference"]["trust"] == "agrees"
    assert {m["label"] for m in hyper["methods"]} == {"exact", "cg", "darts"}
    assert all(len(m["seconds_rounds"]) == 2 for m in hyper["methods"])
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for bad, match in (
        ({"rounds": 0}, "rounds"),
        ({"dtype": "half"}, "dtype"),
        ({"threshold": 2}, "threshold"),
        ({"uppers": ["nope"]}, "unknown upper level 'nope'"),
        ({"uppers": ["solution"]}, "no hypergradient paths"),
        ({"methods": ["magic"]}, "unknown method 'magic'"),
        ({"methods": [("x", "cg", {"maxiterations": 3})]}, "maxiterations"),
    ):
        with pytest.raises((ValueError, TypeError), match=match):
            diagnose(closed_form.quadratic("cg", unroll=5).graph, **bad)


def test_the_recipe_flag_writes_the_doctor_files(tmp_path, capsys):
    """--doctor and --audit-every parse in every recipe, and write_doctor writes hypergrad_doctor.{md,json,png}."""
    parser = argparse.ArgumentParser()
    common.add_common_arguments(parser, datasets=["toy"], default_dataset="toy")
    args = parser.parse_args(["--doctor", "--audit-every", "5"])
    assert args.doctor and args.audit_every == 5
    assert not parser.parse_args([]).doctor
    report, paths = doctor.write_doctor(
        lambda: reweighting("cg"), tmp_path / "run", rounds=1, fd_directions=0, methods=["exact", "cg"], command="toy"
    )
    assert {p.name for p in paths.values()} == {"hypergrad_doctor.md", "hypergrad_doctor.json", "hypergrad_doctor.png"}
    assert all(p.parent == tmp_path / "run" and p.stat().st_size > 0 for p in paths.values())
    assert report["weights"].recommendation == "exact"
    assert "weights: `exact`" in capsys.readouterr().out
    with pytest.raises(TypeError, match="Graph or a function"):
        doctor.write_doctor(42, tmp_path)


def test_finite_differences_shrink_their_step_where_the_upper_loss_is_rough():
    """An upper loss with a term oscillating at a 1e-8 scale: central differences at the default step see
    the oscillation; a step 1e4 times smaller sees the derivative, which the reference has right."""
    g = torch.Generator().manual_seed(0)
    C, t = torch.randn(4, 2, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    lower = Level(
        "w",
        closed_form.Vector(torch.zeros(4)),
        functools.partial(torch.optim.SGD, lr=0.1),
        lambda lv, _: (lv.module() - C @ lv.lam.module()).pow(2).sum() / 2,
        hypergrad="cg",
        unroll=3,
    )
    upper = Level(
        "lam",
        closed_form.Vector(torch.ones(2)),
        functools.partial(torch.optim.SGD, lr=0.0),
        lambda lv, _: (lv.w.module() - t).pow(2).sum() / 2 + 1e-8 * torch.sin(1e8 * lv.module()).sum(),
    )
    graph = Graph("rough")
    graph.add(lower, upper)
    graph.bilevel(lower=lower, upper=upper)
    fd = diagnose(graph, methods=["exact"], rounds=1, fd_directions=2)["lam"].reference.fd
    assert [round(math.log10(x["eps"])) for x in fd["tried"]] == [-6, -8, -10]
    assert fd["tried"][0]["relative_disagreement"] > 1e-1 and fd["relative_disagreement"] <= 1e-4
    assert fd["eps"] == fd["tried"][-1]["eps"]
