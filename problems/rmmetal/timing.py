"""Time per outer step of each algorithm, and what an equal wall-clock budget gives each of them.

The paper compares wall-clock time (Table 2: seconds to reach 0.9 x the best validation accuracy,
§5.3). Training times taken one run after another mix the algorithms' costs with whatever else the
machine does meanwhile, so the time per outer step is measured separately, in one process, with
the algorithms alternating: every round times one outer step of each (K lower steps and the upper
step with its hypergradient), in an order rotated every round, and each algorithm's cost is the
median over rounds of its time divided by the reference algorithm's time in the same round. A
change of load during the measurement then falls on all algorithms alike.

The equal wall-clock budget is the time the cheapest algorithm needs for the run's T outer steps;
each algorithm is credited with the outer steps that fit into it (T x cheapest ratio / its ratio,
rounded down) and is scored at its first snapshot at or after them: snapshots are kept every few
outer steps (every step in the smoke and study presets), and rounding up never gives an algorithm
less time than the budget, so the comparison is, if anything, tilted against the cheapest one.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from engines import Runner

from ..fewshot import FewShotDataset
from .graphs import GraphConfig, build_graph

__all__ = ["equal_time_steps", "first_snapshot_from", "steps_to_reach", "time_per_outer_step"]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_per_outer_step(
    configs: Sequence[GraphConfig],
    data: FewShotDataset,
    device: torch.device,
    seed: int,
    *,
    rounds: int,
    reference: str = "rm-metal",
) -> dict[str, Any]:
    """Seconds of one outer step of every config, alternating as the module says, after one warm-up outer
    step each. Returns ``{"seconds": {method: [per round]}, "median_seconds": {...}, "ratio": {method:
    median of its time / reference's time in the same round}, "rounds", "reference"}``."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    methods = [c.method for c in configs]
    if reference not in methods:
        raise ValueError(f"the reference algorithm {reference!r} is not among the timed ones {methods}")
    runners = {}
    for config in configs:
        runner = Runner(build_graph(config, data, seed), 2**62, device=device, progress=False, seed=seed)
        for _ in range(config.inner_steps):  # warm-up: optimizer states, warm starts, caches
            runner.step()
        runners[config.method] = (runner, config.inner_steps)
    seconds: dict[str, list[float]] = {m: [] for m in methods}
    for r in range(rounds):
        for method in methods[r % len(methods) :] + methods[: r % len(methods)]:
            runner, k = runners[method]
            _synchronize(device)
            t0 = time.perf_counter()
            for _ in range(k):
                runner.step()
            _synchronize(device)
            seconds[method].append(time.perf_counter() - t0)
    for runner, _ in runners.values():
        runner.close()
    ratio = {
        m: statistics.median(t / ref for t, ref in zip(seconds[m], seconds[reference], strict=True)) for m in methods
    }
    return {
        "seconds": seconds,
        "median_seconds": {m: statistics.median(t) for m, t in seconds.items()},
        "ratio": ratio,
        "rounds": rounds,
        "reference": reference,
    }


def equal_time_steps(ratio: Mapping[str, float], steps: int) -> dict[str, int]:
    """Outer steps each algorithm completes within the time the cheapest one needs for ``steps`` outer
    steps, from the cost ratios of :func:`time_per_outer_step` (at most ``steps``)."""
    cheapest = min(ratio.values())
    return {m: min(steps, math.floor(steps * cheapest / r + 1e-9)) for m, r in ratio.items()}


def first_snapshot_from(available: Sequence[int], step: int) -> int:
    """The earliest of the ``available`` snapshot steps not before ``step`` (ValueError if there is none)."""
    later = [s for s in available if s >= step]
    if not later:
        raise ValueError(f"no snapshot at or after outer step {step}; kept: {sorted(available)}")
    return min(later)


def steps_to_reach(curve: Sequence[Mapping[str, float]], target: float) -> int | None:
    """The first validated outer step whose accuracy reaches ``target`` (None: never)."""
    return next((int(v["step"]) for v in curve if v["accuracy"] >= target), None)
