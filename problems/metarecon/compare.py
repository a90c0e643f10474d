"""Hypergradient methods compared at equal wall-clock: each meta-learns for the same seconds, then
the validation PSNR it reached is measured (a speed-and-accuracy comparison: its numbers depend on
the machine that ran it)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from engines import Graph, Runner

from .scoring import ValidationPSNR

__all__ = ["compare_at_equal_wallclock"]


def compare_at_equal_wallclock(
    build: Callable[[str], Graph],
    methods: Sequence[str],
    seconds: float,
    validation: ValidationPSNR,
    *,
    inner_steps: int,
    device: torch.device,
    seed: int,
) -> list[dict[str, Any]]:
    """For every method: ``build(method)`` a meta-learning graph, step it for ``seconds`` (then to the
    end of the outer round), and measure ``validation`` on it. Rows hold the method, the validation
    PSNR, the seconds and outer steps actually run, and the σ(ω_i) reached."""
    if not seconds > 0:
        raise ValueError(f"compare_at_equal_wallclock: seconds must be positive, got {seconds}")
    rows = []
    for method in methods:
        graph = build(method)
        runner = Runner(graph, 10**9, device=device, seed=seed, progress=False)
        start = time.perf_counter()
        while time.perf_counter() - start < seconds or not runner.at_rest():
            runner.step()
        elapsed = time.perf_counter() - start
        runner.close()
        graph.engine.eval()
        psnr = validation(graph)["val_psnr"]
        outer = runner.step_count // inner_steps
        rows.append(
            {
                "method": method,
                "metric": "val_psnr_at_equal_wallclock",
                "value": psnr,
                "seconds": elapsed,
                "outer_steps": outer,
                "budget_seconds": seconds,
                "sigma_omega": graph["omega"].module.sigma().tolist(),
            }
        )
    return rows
