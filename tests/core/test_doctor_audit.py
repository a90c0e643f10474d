"""Runner(audit_every=N): the active method against the doctor's reference during a run, logged and warned
about, without changing the run."""

from __future__ import annotations

import json
import random
import warnings

import numpy as np
import pytest
import torch
from core_toys import parameters, reweighting_graph
from doctor_toys import reweighting

from engines import AuditSettings, Graph, Level, Runner, closed_form, diagnose
from engines.doctor import DoctorError


def _final_state(graph: Graph) -> dict[str, torch.Tensor]:
    state = parameters(graph)
    for name, level in graph.levels.items():
        for i, s in level.optimizer.state_dict()["state"].items():
            state.update({f"{name}.opt.{i}.{k}": v for k, v in s.items()})
        if level._source is not None:
            state[f"{name}.data"] = torch.tensor(list(level._source.state_dict().values()))
        if level.scheduler is not None:
            state[f"{name}.lr"] = torch.tensor(level.scheduler.get_last_lr())
    state["torch_rng"] = torch.get_rng_state()
    state["numpy_rng"] = torch.from_numpy(np.random.get_state()[1].astype(np.int64))
    state["python_rng"] = torch.tensor(random.getstate()[1])
    return state


def _metrics(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("build", [lambda: reweighting_graph("cg_warm", unroll=3, seed=1), lambda: reweighting("cg")])
def test_an_audited_run_ends_bitwise_equal_to_the_plain_run(build, tmp_path):
    """Dropout, BatchNorm, Adam, a scheduler and a data stream (float32), and the float64 reweighting graph."""
    runs = {}
    for every in (0, 2):
        graph = build()
        out = tmp_path / f"every{every}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = Runner(graph, 18, out=out, device="cpu", seed=3, progress=False, audit_every=every).run()
        runs[every] = (_final_state(graph), result.losses, _metrics(out))
    (plain, plain_losses, plain_lines), (audited, audited_losses, audited_lines) = runs[0], runs[2]
    assert plain.keys() == audited.keys()
    assert all(torch.equal(plain[k], audited[k]) for k in plain)
    assert plain_losses == audited_losses
    stripped = [{k: v for k, v in line.items() if k != "audit"} for line in audited_lines]
    assert stripped == plain_lines
    upper = next(n for n in ("gates", "weights") if any(line["level"] == n for line in plain_lines))
    upper_steps = sum(line["level"] == upper for line in plain_lines)
    audited_steps = [line["local_step"] for line in audited_lines if "audit" in line]
    assert upper_steps >= 3 and audited_steps == [s for s in range(1, upper_steps + 1) if (s - 1) % 2 == 0]
    assert all(line["level"] == upper for line in audited_lines if "audit" in line)


def test_the_audit_logs_what_the_doctor_finds_and_warns_once_per_path(tmp_path):
    """At the first upper step the audit compares cg with the reference exactly as diagnose does at that state."""
    doctor = diagnose(reweighting("cg"), methods=["cg"], rounds=1, fd_directions=0)["weights"]
    expected = doctor.methods[0].paths["weights<-classifier"]
    graph = reweighting("cg")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runner = Runner(graph, 20, out=tmp_path, device="cpu", progress=False, tensorboard=True, audit_every=3)
        runner.run()
    audits = [line for line in _metrics(tmp_path) if "audit" in line]
    assert [line["local_step"] for line in audits] == [1, 4]
    first = audits[0]["audit"]["weights<-classifier"]
    assert first["cosine"] == pytest.approx(expected.cosine, abs=1e-9)
    assert first["norm_ratio"] == pytest.approx(expected.norm_ratio, rel=1e-9)
    assert first["cosine"] < 0.5 and first["reference_trust"] < 1e-3
    assert first["ratio_to_direct"] is None  # the weights act only through the classifier: no direct gradient
    assert set(audits[0]["audit"]) == {"weights<-classifier", "total"}
    assert runner.audits[0]["audit"] == audits[0]["audit"]
    messages = [str(w.message) for w in caught if "hypergradient audit" in str(w.message)]
    assert len(messages) == 1  # both audits are below the floor; one warning per path
    assert "level 'weights', path 'weights<-classifier', method cg" in messages[0]
    assert "try exact or one_step" in messages[0]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert "weights/audit/weights<-classifier/cosine" in events.Tags()["scalars"]


def test_a_hypergradient_negligible_against_the_direct_gradient_is_warned_about():
    """The penalty method at a tiny λ: its ω-part is ~1e-9 of the upper level's direct gradient."""
    cf = closed_form.quadratic("penalty", {"lam": 1e-9}, unroll=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runner = Runner(cf.graph, cf.steps + 10, device="cpu", progress=False, audit_every=1)
        runner.run()
    assert len(runner.audits) == 3
    assert all(a["audit"]["hyper<-solution"]["ratio_to_direct"] < 1e-6 for a in runner.audits)
    messages = [str(w.message) for w in caught if "hypergradient audit" in str(w.message)]
    assert len(messages) == 1
    assert "method penalty" in messages[0] and "of the direct gradient" in messages[0] and "lam" in messages[0]


def test_the_audit_refuses_what_it_cannot_do_before_training():
    inner = Level(
        "inner",
        torch.nn.Linear(2, 1),
        lambda ps: torch.optim.SGD(ps, lr=0.1),
        lambda lv, b: (lv.module(b) * lv.outer.module.weight.sum()).pow(2).mean(),
        iter([torch.ones(3, 2)] * 10),
    )
    outer = Level(
        "outer",
        torch.nn.Linear(1, 1),
        lambda ps: torch.optim.SGD(ps, lr=0.1),
        lambda lv, _: lv.inner.module.weight.sum(),
    )
    graph = Graph("plain_iterator")
    graph.add(inner, outer)
    graph.bilevel(lower=inner, upper=outer)
    runner = Runner(graph, 3, device="cpu", progress=False, audit_every=1)
    with pytest.raises(DoctorError, match="level 'inner' reads from an iterator that cannot save and restore"):
        runner.run()
    assert runner.step_count == 0
    with pytest.raises(ValueError, match="audit_every must be an integer >= 0"):
        Runner(graph, 3, audit_every=-1)
    with pytest.raises(TypeError, match="AuditSettings"):
        Runner(graph, 3, audit_every=1, audit={"cosine_floor": 0.3})
    with pytest.raises(DoctorError, match="'solution' is not an upper level"):
        Runner(closed_form.quadratic("cg").graph, 3, audit_every=1, audit=AuditSettings(uppers=("solution",))).run()


def test_a_window_the_reference_cannot_replay_is_logged_as_such_and_the_run_goes_on():
    cf = closed_form.quadratic("cg", unroll=4, lower_optimizer=lambda ps: torch.optim.Adagrad(ps, lr=0.1))
    runner = Runner(cf.graph, cf.steps + 4, device="cpu", progress=False, audit_every=1)
    result = runner.run()
    assert result.steps == cf.steps + 4 and len(runner.audits) == 2
    reason = runner.audits[0]["audit"]["unavailable"]
    assert "level 'solution' uses Adagrad" in reason and "SGD, Adam, AdamW, RMSprop" in reason
