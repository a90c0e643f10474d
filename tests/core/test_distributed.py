"""Two CPU processes under torchrun (gloo): ranks stay in sync, read disjoint data, stop together."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def test_two_process_cpu_run_stays_in_sync(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parents[1])}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(HERE / "ddp_worker.py"),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    ranks = [json.loads((tmp_path / f"rank_{r}.json").read_text()) for r in (0, 1)]
    early, complete = [r["early"] for r in ranks], [r["complete"] for r in ranks]
    assert all(r["world"] == 2 for r in early)
    # early stopping was decided on rank 0 and shared: both ranks stopped at the same step
    assert early[0]["steps"] == early[1]["steps"] == 10 and early[0]["stop"] == early[1]["stop"] == "early_stopping"
    # a run that completes ends on every rank; validation outcomes (best, plateau learning rate) agree
    assert complete[0]["steps"] == complete[1]["steps"] == 12 and complete[0]["stop"] == "completed"
    assert complete[0]["best"] == complete[1]["best"] and complete[0]["best"]["step"] == 6
    assert complete[0]["lr"] == complete[1]["lr"] < 0.1
    # each epoch of 64 items is split into two disjoint halves of 32 (4 batches of 8 per rank)
    first_epoch = [{i for batch in r["seen"][:4] for i in batch} for r in early]
    assert not first_epoch[0] & first_epoch[1] and first_epoch[0] | first_epoch[1] == set(range(64))
    # gradients were averaged: parameters are identical on both ranks
    for mode in ("early", "complete"):
        p0, p1 = torch.load(tmp_path / f"params_{mode}_0.pt"), torch.load(tmp_path / f"params_{mode}_1.pt")
        assert all(torch.equal(p0[k], p1[k]) for k in p0), mode
    # only rank 0 wrote the run directory
    lines = (tmp_path / "early" / "metrics.jsonl").read_text().splitlines()
    assert sum(json.loads(x)["level"] == "validation" for x in lines) == 5
    assert (tmp_path / "early" / "checkpoint_latest.pt").is_file()
