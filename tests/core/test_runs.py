"""Runs: resume equivalence, non-finite stop, early stopping, best checkpoints, logs, precision."""

import json

import pytest
import torch
from core_toys import parameters, reweighting_graph

from engines import EarlyStopping, NonFiniteError, ResumeError, Runner, run
from engines.checkpoint import load_checkpoint


def gated(level, x):  # the toy's lower loss reads the upper level's gates (its hypergradient path)
    return x * torch.sigmoid(level.gates.module.weight).squeeze(1)


@pytest.mark.parametrize("method", ["cg_warm", "exact", "darts"])
def test_ten_steps_resume_ten_steps_equals_twenty(tmp_path, method):
    full_graph = reweighting_graph(method)
    full = run(full_graph, 20, out=tmp_path / "full", device="cpu", progress=False, checkpoint_every=5)

    first = run(reweighting_graph(method), 10, out=tmp_path / "split", device="cpu", progress=False, checkpoint_every=5)
    assert first.steps == 10
    resumed_graph = reweighting_graph(method)
    with torch.no_grad():  # spoil the fresh weights: everything must come from the checkpoint
        for level in resumed_graph.levels.values():
            for p in level.module.parameters():
                p.add_(1.0)
    resumed = run(
        resumed_graph, 20, out=tmp_path / "split", device="cpu", progress=False, checkpoint_every=5, resume=True
    )

    a, b = parameters(full_graph), parameters(resumed_graph)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed.losses == full.losses
    lines = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert lines(tmp_path / "split") == lines(tmp_path / "full")


def test_checkpoint_holds_every_level_state_and_loads_weights_only(tmp_path):
    run(reweighting_graph("cg_warm"), 6, out=tmp_path, device="cpu", progress=False, checkpoint_every=3)
    state = load_checkpoint(tmp_path / "checkpoint_latest.pt")
    assert state["step"] == 6
    for name in ("net", "gates"):
        level = state["levels"][name]
        assert {"module", "optimizer", "count", "data", "method_state"} <= set(level)
    assert state["levels"]["net"]["scheduler"]["last_epoch"] == 6
    hop = state["levels"]["net"]["method_state"]["gates<-net|net->gates"]
    assert hop["solution"] and "damping" in hop and "cold_restarts" in hop  # the warm start is saved
    assert {"python", "numpy", "torch"} <= set(state["rng"])
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["graph"]["levels"]["net"]["hypergrad"] == "cg_warm" and "torch" in config["versions"]


def test_a_finished_run_directory_is_not_overwritten_without_resume(tmp_path):
    run(reweighting_graph(), 2, out=tmp_path, device="cpu", progress=False)
    with pytest.raises(ResumeError, match="already holds a run"):
        run(reweighting_graph(), 2, out=tmp_path, device="cpu", progress=False)
    with pytest.raises(ResumeError, match="different graph"):
        run(reweighting_graph("darts", unroll=1), 4, out=tmp_path, device="cpu", progress=False, resume=True)


def test_non_finite_loss_stops_naming_level_and_step_and_keeps_the_last_good_checkpoint(tmp_path):
    def exploding(level, batch):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(level.module(gated(level, x)), y)
        return loss * float("nan") if level.global_step == 7 else loss

    graph = reweighting_graph("darts", unroll=1, lower_loss=exploding)
    with pytest.raises(NonFiniteError, match="level 'net' produced a non-finite loss \\(nan\\) at global step 7"):
        run(graph, 20, out=tmp_path, device="cpu", progress=False, checkpoint_every=5)
    assert load_checkpoint(tmp_path / "checkpoint_latest.pt")["step"] == 5
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "non_finite" and last["failed_level"] == "net" and "not overwritten" in last["message"]


def test_non_finite_gradient_stops_too():
    def bad_gradient(level, batch):
        x, y = batch
        edge = (level.module[0].weight * 0).abs().sqrt().sum()  # finite value, NaN gradient
        return torch.nn.functional.cross_entropy(level.module(gated(level, x)), y) + edge

    with pytest.raises(NonFiniteError, match="level 'net' produced a non-finite gradient norm"):
        run(reweighting_graph("darts", unroll=1, lower_loss=bad_gradient), 3, device="cpu", progress=False)


def test_early_stopping_and_best_checkpoint(tmp_path):
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.69, 0.9, 1.0])
    result = run(
        reweighting_graph(),
        50,
        out=tmp_path,
        device="cpu",
        progress=False,
        validate=lambda g: {"score": next(scores)},
        valid_every=2,
        early_stopping=EarlyStopping(patience=3),
    )
    assert result.stop_reason == "early_stopping" and result.steps == 10
    assert result.best["step"] == 4 and result.best["metrics"]["score"] == 0.7
    assert load_checkpoint(tmp_path / "checkpoint_best.pt")["step"] == 4
    validations = [
        json.loads(x)
        for x in (tmp_path / "metrics.jsonl").read_text().splitlines()
        if json.loads(x)["level"] == "validation"
    ]
    assert [v["step"] for v in validations] == [2, 4, 6, 8, 10]


def test_metrics_log_has_one_line_per_level_step(tmp_path):
    run(reweighting_graph("cg", unroll=2), 6, out=tmp_path, device="cpu", progress=False)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    net = [ln for ln in lines if ln["level"] == "net"]
    gates = [ln for ln in lines if ln["level"] == "gates"]
    assert [ln["local_step"] for ln in net] == [1, 2, 3, 4, 5, 6] and len(gates) == 3
    assert all("loss" in ln and "lr" in ln and "grad_norm" in ln for ln in lines)
    # the solve through 'net' is reported once, on the 'gates' step that computed it, not on 'net' lines
    assert all("hypergradient" not in ln for ln in net)
    for ln in gates:
        hop = ln["hypergradient"]["gates<-net"]
        assert hop["norm"] > 0 and hop["net->gates"]["method"] == "cg"
        assert hop["net->gates"]["products"] >= 1 and hop["net->gates"]["residual"] >= 0


def test_bf16_autocast_runs_on_cpu_and_fp16_needs_a_gpu():
    result = run(reweighting_graph("darts", unroll=1), 3, device="cpu", precision="bf16", progress=False)
    assert all(torch.isfinite(torch.tensor(v)).all() for v in result.losses.values())
    with pytest.raises(ValueError, match="fp16' needs a CUDA device"):
        Runner(reweighting_graph(), 1, device="cpu", precision="fp16")


def test_asking_for_cuda_without_a_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on the CPU-only CI machine
    with pytest.raises(ValueError, match="no CUDA device"):
        Runner(reweighting_graph(), 1, device="cuda")
