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
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "ddp_worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    ranks = [json.loads((tmp_path / f"rank_{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 for r in ranks)
    # early stopping was decided on rank 0 and broadcast: both ranks stopped at the same step
    assert ranks[0]["steps"] == ranks[1]["steps"] == 10 and ranks[0]["stop"] == ranks[1]["stop"] == "early_stopping"
    # each epoch of 64 items is split into two disjoint halves of 32 (4 batches of 8 per rank)
    first_epoch = [{i for batch in r["seen"][:4] for i in batch} for r in ranks]
    assert not first_epoch[0] & first_epoch[1] and first_epoch[0] | first_epoch[1] == set(range(64))
    # gradients were averaged: parameters are identical on both ranks
    p0, p1 = torch.load(tmp_path / "params_0.pt"), torch.load(tmp_path / "params_1.pt")
    assert all(torch.equal(p0[k], p1[k]) for k in p0)
    # only rank 0 wrote the run directory
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert sum(json.loads(x)["level"] == "validation" for x in lines) == 5
    assert (tmp_path / "run" / "checkpoint_latest.pt").is_file()
