"""The checkpoint write itself (docs/runs.md, "Checkpoints"): the temporary is fsynced before it is
renamed and the folder after; ``checkpoint_latest.pt`` is never absent and never partial, whenever the
writing process is killed — between any two file-system steps of a rotation, or in the middle of
writing a large checkpoint; and a run directory is refused naming the checkpoint files it really holds.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from core_toys import reweighting_graph
from crash_hooks import kill_before

from engines import ResumeError, Runner
from engines import checkpoint as checkpoint_module
from engines.checkpoint import load_checkpoint, remove_stale_temporaries, save_atomic

HERE = Path(__file__).resolve().parent
RESUME_WORKER = HERE / "resume_worker.py"


NEW_STATE = {"step": 2, "weights": torch.arange(1000, dtype=torch.float64)}


def _two_checkpoints(folder: Path) -> bytes:
    """``checkpoint_previous.pt`` at step 0 and ``checkpoint_latest.pt`` at step 1; returns the latter's bytes."""
    save_atomic({"step": 0}, folder / "checkpoint_latest.pt")
    save_atomic(
        {"step": 1, "weights": torch.zeros(1000, dtype=torch.float64)},
        folder / "checkpoint_latest.pt",
        keep_previous=True,
    )
    return (folder / "checkpoint_latest.pt").read_bytes()


def _steps(folder: Path) -> dict[str, int]:
    return {p.name: int(load_checkpoint(p)["step"]) for p in sorted(folder.glob("checkpoint_*.pt"))}


def test_the_temporary_is_fsynced_before_its_rename_and_the_folder_after_it(tmp_path, monkeypatch):
    _two_checkpoints(tmp_path)
    events: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        info = os.fstat(fd)
        events.append(("fsync", info.st_ino, info.st_size, stat.S_ISDIR(info.st_mode)))
        return real_fsync(fd)

    def replace(src, dst, **kwargs):
        events.append(("rename", os.stat(src).st_ino, Path(dst).name))
        return real_replace(src, dst, **kwargs)

    monkeypatch.setattr(checkpoint_module.os, "fsync", fsync)  # spies: the real calls still run
    monkeypatch.setattr(checkpoint_module.os, "replace", replace)
    save_atomic(
        {"step": 2, "weights": torch.ones(5000, dtype=torch.float64)},
        tmp_path / "checkpoint_latest.pt",
        keep_previous=True,
    )
    monkeypatch.undo()

    final = (tmp_path / "checkpoint_latest.pt").stat()
    onto_latest = [i for i, e in enumerate(events) if e[0] == "rename" and e[2] == "checkpoint_latest.pt"]
    assert len(onto_latest) == 1 and events[onto_latest[0]][1] == final.st_ino
    synced = [i for i, e in enumerate(events) if e[0] == "fsync" and e[1] == final.st_ino]
    assert synced and synced[0] < onto_latest[0], events  # the new file reached the disk before it was named
    assert events[synced[0]][2] == final.st_size  # ... all of it
    folder_synced = [i for i, e in enumerate(events) if e[0] == "fsync" and e[3]]
    assert folder_synced and folder_synced[-1] > onto_latest[0], events  # and the rename itself after it
    assert _steps(tmp_path) == {"checkpoint_latest.pt": 2, "checkpoint_previous.pt": 1}


def _refuse_hard_link(src, dst, **_):
    raise OSError(errno.EPERM, "hard links are not supported here", str(dst))


def test_without_hard_links_the_previous_checkpoint_is_a_fsynced_copy(tmp_path, monkeypatch):
    old = _two_checkpoints(tmp_path)
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        info = os.fstat(fd)
        synced.append((info.st_ino, info.st_size))
        return real_fsync(fd)

    # a file system without hard links (some network and FUSE mounts), simulated: os.link refuses
    monkeypatch.setattr(checkpoint_module.os, "link", _refuse_hard_link)
    monkeypatch.setattr(checkpoint_module.os, "fsync", fsync)
    save_atomic(NEW_STATE, tmp_path / "checkpoint_latest.pt", keep_previous=True)
    monkeypatch.undo()
    assert (tmp_path / "checkpoint_previous.pt").read_bytes() == old
    assert _steps(tmp_path) == {"checkpoint_latest.pt": 2, "checkpoint_previous.pt": 1}
    previous = (tmp_path / "checkpoint_previous.pt").stat()
    assert (previous.st_ino, len(old)) in synced  # the copy reached the disk (before it was renamed into place)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_latest.pt", "checkpoint_previous.pt"]


def _forked(target: Callable[[Callable[[str], None]], None]) -> tuple[int, int, list[str]]:
    """Run ``target(say)`` in a forked child (no interpreter start-up: each kill costs milliseconds).
    Returns the child's pid, its exit code (``-signal`` if killed) and the lines it said."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read)
            target(lambda line: os.write(write, (line + "\n").encode()))
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as lines:
        said = lines.read().splitlines()
    _, status = os.waitpid(pid, 0)
    return pid, os.waitstatus_to_exitcode(status), said


@pytest.mark.parametrize("hard_links", [True, False], ids=["hard links", "no hard links"])
def test_a_kill_before_any_file_system_step_of_a_rotation_leaves_a_complete_latest(tmp_path, hard_links):
    """SIGKILL before the 1st, 2nd, ... file-system change of a rotation, until one completes; also on
    a file system without hard links (simulated in the child: os.link refuses)."""
    places = []
    for n in range(1, 20):
        folder = tmp_path / str(n)
        folder.mkdir()
        old = _two_checkpoints(folder)

        def rotate(say, folder=folder, n=n):
            if not hard_links:
                os.link = _refuse_hard_link  # in the forked child only
            kill_before(folder, lambda index, _what: index == n, report=say)
            save_atomic(NEW_STATE, folder / "checkpoint_latest.pt", keep_previous=True)

        _, code, said = _forked(rotate)
        if code == 0:
            assert _steps(folder) == {"checkpoint_latest.pt": 2, "checkpoint_previous.pt": 1}
            break
        assert code == -signal.SIGKILL and len(said) == 1, (code, said)
        where = said[0].removeprefix("killed before: ")
        places.append(where)
        steps = _steps(folder)  # every checkpoint file left is complete: load_checkpoint would raise otherwise
        latest = steps.get("checkpoint_latest.pt")
        assert latest in (1, 2), (where, steps)  # never absent, never older than the last completed write
        if latest == 1:
            assert (folder / "checkpoint_latest.pt").read_bytes() == old, where
        assert steps.get("checkpoint_previous.pt") in (0, 1), (where, steps)
        remove_stale_temporaries(folder)
        assert sorted(p.name for p in folder.iterdir()) == ["checkpoint_latest.pt", "checkpoint_previous.pt"]
    else:
        pytest.fail(f"the rotation never completed; killed before {places}")
    # the instant of the crash report: the previous checkpoint already rotated, the new one not yet renamed
    assert any(p.startswith("os.rename") and p.endswith("-> checkpoint_latest.pt") for p in places), places


def test_a_kill_while_a_large_checkpoint_is_written_leaves_the_old_latest_intact(tmp_path):
    """SIGKILL as soon as the folder shows the new checkpoint being written (whatever file it goes to)."""
    large = {**NEW_STATE, "payload": [torch.full((2**20,), float(i), dtype=torch.float64) for i in range(12)]}  # 96 MiB
    mid_write = 0
    for attempt in range(8):
        folder = tmp_path / str(attempt)
        folder.mkdir()
        old = _two_checkpoints(folder)
        before = {p.name: (p.stat().st_ino, p.stat().st_size) for p in folder.iterdir()}
        pid = os.fork()
        if pid == 0:  # the child writes; the parent watches the folder and kills it
            code = 1
            try:
                save_atomic(large, folder / "checkpoint_latest.pt", keep_previous=True)
                code = 0
            finally:
                os._exit(code)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and os.waitpid(pid, os.WNOHANG) == (0, 0):
            now = {entry.name: (entry.stat().st_ino, entry.stat().st_size) for entry in os.scandir(folder)}
            if any(now.get(name) != was for name, was in before.items()) or any(
                size > 0 for name, (_, size) in now.items() if name not in before
            ):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
        else:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        latest = folder / "checkpoint_latest.pt"
        if latest.read_bytes() != old and load_checkpoint(latest)["step"] == 2:
            continue  # the write finished before the kill landed: try again
        mid_write += 1
        assert latest.read_bytes() == old  # the old checkpoint, byte for byte, not merely "some checkpoint"
        assert load_checkpoint(latest)["step"] == 1
        assert [p for p in folder.glob(".*.tmp") if p.stat().st_size > 0], "the kill landed before the write began"
        if mid_write == 2:
            break
    assert mid_write >= 1, "no kill landed during the write in 8 attempts"


def test_a_run_directory_is_refused_naming_the_checkpoints_it_really_holds(tmp_path):
    Runner(reweighting_graph(), 4, out=tmp_path, device="cpu", progress=False, checkpoint_every=2).run()
    with pytest.raises(ResumeError, match=r"already holds a run \(checkpoint_latest.pt, checkpoint_previous.pt\)"):
        Runner(reweighting_graph(), 4, out=tmp_path, device="cpu", progress=False).start()
    (tmp_path / "checkpoint_latest.pt").unlink()  # what a crash between two renames used to leave
    with pytest.raises(ResumeError, match=r"already holds a run \(checkpoint_previous.pt\)") as refused:
        Runner(reweighting_graph(), 4, out=tmp_path, device="cpu", progress=False).start()
    assert "checkpoint_latest" not in str(refused.value)


def _run_worker(out: Path, method: str, steps: int, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(RESUME_WORKER), str(out), method, str(steps)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def test_a_darts_run_killed_between_the_two_renames_resumes_from_latest_and_equals_an_uninterrupted_run(tmp_path):
    """The worker resumes only when ``checkpoint_latest.pt`` exists, as users write launchers."""
    steps = 12
    assert _run_worker(tmp_path / "whole", "darts", steps).returncode == 0
    killed = _run_worker(
        tmp_path / "killed", "darts", steps, {"MEDMLO_TEST_KILL_BEFORE_RENAME_ONTO": "checkpoint_latest.pt:2"}
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert re.fullmatch(
        r"killed before: os.rename \.checkpoint_latest\.pt\.\w+\.tmp -> checkpoint_latest\.pt",
        killed.stdout.splitlines()[-1],
    )
    folder = tmp_path / "killed"
    # checkpoints are taken at rest (unroll 2): step 4's had been kept as previous, step 6's was complete
    # in its temporary, and checkpoint_latest.pt still held step 4's
    steps_left = _steps(folder)
    assert (steps_left["checkpoint_latest.pt"], steps_left["checkpoint_previous.pt"]) == (4, 4)
    assert [load_checkpoint(p)["step"] for p in folder.glob(".checkpoint_latest.pt.*.tmp")] == [6]
    resumed = _run_worker(folder, "darts", steps)
    assert resumed.returncode == 0, resumed.stderr
    whole = torch.load(tmp_path / "whole" / "final_parameters.pt")
    again = torch.load(folder / "final_parameters.pt")
    assert all(torch.equal(whole[k], again[k]) for k in whole)
    lines = [(tmp_path / d / "metrics.jsonl").read_text().splitlines() for d in ("whole", "killed")]
    assert [json.loads(x) for x in lines[0]] == [json.loads(x) for x in lines[1]]
