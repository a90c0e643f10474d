"""Crash-exact resume: SIGKILL at any moment, damaged checkpoints, finished runs, stale temporaries."""

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from core_toys import reweighting_graph

from engines import EarlyStopping, ResumeError, run
from engines.checkpoint import load_checkpoint

WORKER = Path(__file__).resolve().parent / "resume_worker.py"


def metric_lines(folder: Path) -> list[dict]:
    return [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]


def worker(out: Path, method: str, steps: int, kill_after: int | None = None) -> int:
    """Run the worker; with ``kill_after``, SIGKILL it once it has printed that global step."""
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), str(out), method, str(steps)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    if kill_after is not None:
        for line in proc.stdout:
            if int(line) >= kill_after:
                proc.send_signal(signal.SIGKILL)
                break
    proc.communicate(timeout=300)
    return proc.returncode


@pytest.mark.parametrize("method", ["cg_warm", "exact"])
def test_killed_at_random_moments_and_resumed_equals_an_uninterrupted_run(tmp_path, method):
    steps = 24
    assert worker(tmp_path / "whole", method, steps) == 0
    rng = random.Random(method)
    kills = sorted(rng.sample(range(1, steps), 4))
    for k in kills:
        assert worker(tmp_path / "killed", method, steps, kill_after=k) == -signal.SIGKILL
    assert worker(tmp_path / "killed", method, steps) == 0
    whole = torch.load(tmp_path / "whole" / "final_parameters.pt")
    killed = torch.load(tmp_path / "killed" / "final_parameters.pt")
    assert all(torch.equal(whole[k], killed[k]) for k in whole)
    assert metric_lines(tmp_path / "killed") == metric_lines(tmp_path / "whole")
    assert not list((tmp_path / "killed").glob(".*.tmp"))


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage):
    whole = run(reweighting_graph(), 12, out=tmp_path / "whole", device="cpu", progress=False, checkpoint_every=3)
    run(reweighting_graph(), 9, out=tmp_path / "cut", device="cpu", progress=False, checkpoint_every=3)
    latest = tmp_path / "cut" / "checkpoint_latest.pt"
    data = latest.read_bytes()
    latest.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"not a checkpoint" * 50}[damage])
    with pytest.warns(RuntimeWarning, match=r"checkpoint_latest.pt is damaged .*resuming from checkpoint_previous.pt"):
        resumed = run(
            reweighting_graph(), 12, out=tmp_path / "cut", device="cpu", progress=False, checkpoint_every=3, resume=True
        )
    assert resumed.losses == whole.losses
    assert metric_lines(tmp_path / "cut") == metric_lines(tmp_path / "whole")


def test_damaged_checkpoints_without_a_good_one_name_the_file(tmp_path):
    run(reweighting_graph(), 3, out=tmp_path, device="cpu", progress=False, checkpoint_every=3)
    (tmp_path / "checkpoint_latest.pt").write_bytes(b"")
    with pytest.raises(
        ResumeError, match=r"checkpoint_latest.pt is damaged \(the file is empty.*no checkpoint_previous"
    ):
        run(reweighting_graph(), 6, out=tmp_path, device="cpu", progress=False, resume=True)


def test_a_finished_or_early_stopped_run_is_returned_not_trained_on(tmp_path, capsys):
    scores = iter([0.9, 0.5, 0.4, 0.3, 0.2])
    first = run(
        reweighting_graph(),
        50,
        out=tmp_path,
        device="cpu",
        progress=False,
        valid_every=2,
        validate=lambda g: {"score": next(scores)},
        early_stopping=EarlyStopping(patience=2),
    )
    assert first.stop_reason == "early_stopping" and first.steps == 6
    lines = metric_lines(tmp_path)
    again = run(
        reweighting_graph(),
        50,
        out=tmp_path,
        device="cpu",
        progress=False,
        resume=True,
        valid_every=2,
        validate=lambda g: {"score": 1.0},
        early_stopping=EarlyStopping(patience=2),
    )
    assert again.stop_reason == "early_stopping" and again.steps == 6 and again.best == first.best
    assert metric_lines(tmp_path) == lines
    assert "already finished (early_stopping at step 6)" in capsys.readouterr().out

    done = run(reweighting_graph(), 4, out=tmp_path / "done", device="cpu", progress=False)
    same = run(reweighting_graph(), 4, out=tmp_path / "done", device="cpu", progress=False, resume=True)
    assert same.steps == 4 and same.losses == done.losses
    longer = run(reweighting_graph(), 6, out=tmp_path / "done", device="cpu", progress=False, resume=True)
    assert longer.steps == 6  # asking for more steps continues a completed run


def test_a_fresh_start_clears_what_a_killed_run_left_behind(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"level": "net", "step": 1, "loss": 9}\n{"level": "ne')
    (tmp_path / ".checkpoint_latest.pt.abc123.tmp").write_bytes(b"partial")
    run(reweighting_graph(), 2, out=tmp_path, device="cpu", progress=False)
    assert not list(tmp_path.glob(".*.tmp"))
    lines = metric_lines(tmp_path)
    assert [ln["step"] for ln in lines if ln["level"] == "net"] == [1, 2] and all(ln["loss"] != 9 for ln in lines)


def test_the_previous_checkpoint_is_the_one_before_the_latest(tmp_path):
    run(reweighting_graph(), 8, out=tmp_path, device="cpu", progress=False, checkpoint_every=2)
    latest = load_checkpoint(tmp_path / "checkpoint_latest.pt")
    assert latest["step"] == 8 and latest["runner"]["stop_reason"] == "completed"
    assert load_checkpoint(tmp_path / "checkpoint_previous.pt")["step"] == 6
