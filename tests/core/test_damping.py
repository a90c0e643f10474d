"""Adaptive damping (docs/methods.md, "Implicit solves"): a solve that ends above ``target_residual``
raises δ for the next outer step; one that reaches ``target_residual / 10`` within half its budget
lowers it again, never below the ``damping`` option.

The problem needs both: its lower curvature is ill-conditioned for the first outer steps (a few CG
products cannot reach the target without damping) and the identity afterwards (one product solves
any damped system exactly), so δ must go up and then come back down to its floor.
"""

from __future__ import annotations

import functools
import itertools
import json

import pytest
import torch

from engines import Graph, Level, Runner
from engines.closed_form import Vector

DTYPE = torch.float64
HARD_STEPS, EASY_STEPS = 10, 14
FLOOR, TARGET, MAXITER = 1e-4, 1e-2, 6


def _graph(method: str) -> Graph:
    gen = torch.Generator().manual_seed(0)
    n, p = 12, 3
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DTYPE))
    hard = q @ torch.diag(torch.logspace(-4, 0, n, dtype=DTYPE)) @ q.T
    easy = torch.eye(n, dtype=DTYPE)
    C = torch.randn(n, p, generator=gen, dtype=DTYPE)
    t = torch.randn(n, generator=gen, dtype=DTYPE)

    def lower(level, _):
        H = hard if level.global_step <= HARD_STEPS else easy
        w = level.module()
        return w @ H @ w / 2 - w @ (C @ level.hyper.module())

    def upper(level, _):
        return (level.solution.module() - t).pow(2).sum() / 2

    options = {"maxiter": MAXITER, "tol": TARGET / 10, "target_residual": TARGET, "damping": FLOOR}
    g = Graph("damping")
    g.add(
        Level(
            "solution",
            Vector(torch.randn(n, generator=gen, dtype=DTYPE)),
            functools.partial(torch.optim.SGD, lr=0.01),
            lower,
            hypergrad=method,
            options=options,
        )
    )
    g.add(
        Level(
            "hyper",
            Vector(torch.randn(p, generator=gen, dtype=DTYPE)),
            functools.partial(torch.optim.SGD, lr=0.0),
            upper,
        )
    )
    g.bilevel("solution", "hyper")
    return g


@pytest.mark.parametrize("method", ["cg", "cg_warm"])
def test_damping_is_raised_on_a_missed_target_and_lowered_again_on_an_easy_solve(method, tmp_path):
    Runner(_graph(method), HARD_STEPS + EASY_STEPS, out=tmp_path, device="cpu", progress=False).run()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    solves = [ln["hypergradient"]["hyper<-solution"]["solution->hyper"] for ln in lines if ln["level"] == "hyper"]
    assert len(solves) == HARD_STEPS + EASY_STEPS
    assert all(s["negative_curvature"] == 0 for s in solves)  # positive definite: only the outer rule acts
    assert all(s["damping"] >= FLOOR for s in solves)
    raised = lowered = 0
    for i, (before, after) in enumerate(itertools.pairwise(solves)):
        # products taken from the budget: cg_warm's warm-start residual (from its 2nd solve on) is not one of them
        used = before["products"] - (1 if method == "cg_warm" and i > 0 else 0)
        if before["residual"] > TARGET:
            assert after["damping"] > before["damping"], (before, after)
            raised += 1
        elif before["residual"] <= TARGET / 10 and used <= MAXITER // 2:
            assert after["damping"] < before["damping"] or after["damping"] == before["damping"] == FLOOR
            lowered += after["damping"] < before["damping"]
        else:
            assert after["damping"] == before["damping"], (before, after)
    assert solves[0]["damping"] == FLOOR and solves[0]["residual"] > TARGET  # the hard phase needs damping
    peak = max(s["damping"] for s in solves[:HARD_STEPS])
    assert raised >= 2 and peak >= 100 * FLOOR
    assert solves[HARD_STEPS - 1]["residual"] <= TARGET  # raised until the hard solve meets its target
    assert lowered >= 2 and solves[-1]["damping"] == FLOOR  # and lowered back to the floor once it is easy
