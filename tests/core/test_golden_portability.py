"""Goldens hold on other CPUs: every golden test is run again with the CPU's float kernels and thread count
perturbed (ATEN_CPU_CAPABILITY=default on one thread; avx2 on two threads; oneDNN off on one thread) and must
still pass. This test is not marked ``golden``, so the ``-m golden`` runs it starts never collect it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "capability,threads,onednn",
    [  # the default suite runs the largest perturbation (other kernels and two threads); the rest are slow
        pytest.param("default", "1", "1", marks=pytest.mark.slow),
        ("avx2", "2", "1"),
        pytest.param(None, "1", "0", marks=pytest.mark.slow),
    ],
)
def test_goldens_pass_with_other_cpu_kernels_and_thread_counts(capability, threads, onednn):
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "MEDMLO_ONEDNN": onednn}
    if capability is not None:
        env["ATEN_CPU_CAPABILITY"] = capability
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "golden", "-q", "-p", "no:cacheprovider", "-W", "ignore"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-2000:]
    assert proc.returncode == 0, (
        f"goldens fail with ATEN_CPU_CAPABILITY={capability}, {threads} thread(s), oneDNN {onednn}:\n"
        f"{proc.stdout[-4000:]}"
    )
    assert "passed" in summary and "failed" not in summary
