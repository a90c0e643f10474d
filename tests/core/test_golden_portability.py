"""Goldens hold on other CPUs: every golden test is run again with the CPU's float kernels and thread count
perturbed (ATEN_CPU_CAPABILITY=default on one thread; avx2 on two threads) and must still pass."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("capability,threads", [("default", "1"), ("avx2", "2")])
def test_goldens_pass_with_other_cpu_kernels_and_thread_counts(capability, threads):
    if os.environ.get("MEDMLO_GOLDEN_PERTURBATION"):
        pytest.skip("already inside a perturbed golden run")  # guards against recursion only
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
           "MEDMLO_GOLDEN_PERTURBATION": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "golden", "-q", "-p", "no:cacheprovider",
                           "-W", "ignore"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-2000:]
    assert proc.returncode == 0, f"goldens fail with ATEN_CPU_CAPABILITY={capability}, {threads} thread(s):\n" \
                                 f"{proc.stdout[-4000:]}"
    assert "passed" in summary and "failed" not in summary
