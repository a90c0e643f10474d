"""RM-MetaL's hypergradient against the exact implicit one, measured while it trains.

Subroutine 1 approximates ``v_i = [∇²_φφ g_i]^{-1} ∇_φ f_i`` with N conjugate-gradient iterations,
warm-started from the previous outer step's solution (``cg_warm``). :func:`dense_implicit_hypergradient`
forms each task's Hessian densely and solves exactly, so on a tiny head the two can be compared at
every outer step of a real training run: from the second step on the warm start comes from other
tasks and another θ, which is when it can help or hurt.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from engines import Graph, Runner

from ..fewshot import FewShotDataset
from .graphs import GraphConfig, build_graph

__all__ = [
    "CHECK_OUTER_STEPS",
    "dense_implicit_hypergradient",
    "hypergradient_check",
    "last_solve_report",
]

CHECK_OUTER_STEPS = 10


def dense_implicit_hypergradient(graph: Graph) -> Tensor:
    """The exact implicit hypergradient at the lower level's current iterate, by dense solves.

    ``∇F = ∇_θ f - Σ_i ∇²_{θφ_i} g · [∇²_{φ_i} g]^{-1} ∇_{φ_i} f`` (Eq. 4/6), each task's Hessian
    formed densely from Hessian-vector products with unit vectors (only sensible for tiny heads:
    a check of what CG approximates). Returns the flat gradient over the upper's trainable parameters.
    """
    heads, upper = graph["heads"], graph["backbone"]
    batch = heads.cur_batch
    theta, phi = list(upper.trainable_parameters()), list(heads.trainable_parameters())
    f = upper.training_step_exec(batch)
    f_theta = torch.autograd.grad(f, theta, retain_graph=True, allow_unused=True)
    f_phi = torch.autograd.grad(f, phi)
    g_phi = torch.autograd.grad(heads.training_step_exec(batch), phi, create_graph=True)
    sizes = [p[0].numel() for p in phi]

    def task_slice(tensors: tuple[Tensor, ...] | list[Tensor], i: int) -> Tensor:
        return torch.cat([t[i].reshape(-1) for t in tensors])

    def embed(vector: Tensor, i: int) -> list[Tensor]:
        out = [torch.zeros_like(p) for p in phi]
        for o, chunk in zip(out, vector.split(sizes)):
            o[i] = chunk.view_as(o[i])
        return out

    v = [torch.zeros_like(p) for p in phi]
    for i in range(phi[0].shape[0]):
        basis = torch.eye(sum(sizes), dtype=phi[0].dtype, device=phi[0].device)
        hessian = torch.stack(
            [task_slice(torch.autograd.grad(g_phi, phi, grad_outputs=embed(e, i), retain_graph=True), i) for e in basis]
        )
        for acc, part in zip(v, embed(torch.linalg.solve(hessian, task_slice(f_phi, i)), i)):
            acc += part
    mixed = torch.autograd.grad(g_phi, theta, grad_outputs=v, allow_unused=True)
    zero = lambda t: torch.zeros_like(t)  # noqa: E731
    return torch.cat(
        [
            ((a if a is not None else zero(t)) - (b if b is not None else zero(t))).reshape(-1)
            for a, b, t in zip(f_theta, mixed, theta)
        ]
    )


def hypergradient_check(
    config: GraphConfig,
    data: FewShotDataset,
    seed: int,
    *,
    outer_steps: int = CHECK_OUTER_STEPS,
    inner_steps: int = 5,
    width: int = 4,
    n_tasks: int = 2,
    cg_iterations: int = 20,
) -> list[dict[str, Any]]:
    """RM-MetaL's hypergradient against the exact implicit one, measured while it trains, for the warm-started
    CG of Subroutine 1 (``cg_warm``) and a cold-started one (``cg``), both with ``cg_iterations`` (N), on
    ``n_tasks`` tasks, K = ``inner_steps`` and a Conv-4 of ``width`` (by default a tiny one: every task's
    Hessian is formed densely, one Hessian-vector product per head parameter).

    ``config`` is the run's RM-MetaL config (its step sizes and μ are kept). The heads are warm-started
    (Algorithm 1) and the backbone trains with RM-MetaL's optimizer, so from the second outer step on
    ``cg_warm`` starts from the previous step's solution for new tasks and a new θ. At every outer step the
    hypergradient the engine formed is compared with :func:`dense_implicit_hypergradient` at the same state.
    The engine's warm-start safeguard is on (a start worse than zero restarts from zero, counted). One row
    per method: cosine and relative error over outer steps 2..T (after the first warm start), the relative
    residual reached, products per solve and the number of cold restarts.
    """
    rows = []
    for method in ("cg_warm", "cg"):
        sizes = {"inner_steps": inner_steps, "width": width, "n_tasks": n_tasks, "cg_iterations": cg_iterations}
        check = replace(config, method="rm-metal", hypergrad=method, **sizes)
        graph = build_graph(check, data, seed)
        upper = graph["backbone"]
        steps: list[dict[str, float]] = []

        def compare(upper=upper, graph=graph, steps=steps) -> None:
            engine = torch.cat([p.grad.flatten() for p in upper.trainable_parameters()])
            dense = dense_implicit_hypergradient(graph)
            solve = upper.hypergradient_report["backbone<-heads"]["heads->backbone"]
            steps.append(
                {
                    "cosine": float(torch.nn.functional.cosine_similarity(engine, dense, dim=0)),
                    "relative_error": float((engine - dense).norm() / dense.norm()),
                    "residual": solve["residual"],
                    "products": solve["products"],
                    "cold_restart": solve.get("cold_restart", 0),
                }
            )

        upper.grad_callback = compare
        Runner(graph, outer_steps * check.inner_steps, device="cpu", progress=False, seed=seed).run()
        later = steps[1:]  # from the second outer step on, cg_warm starts from the previous solution
        rows.append(
            {
                "method": "rm-metal",
                "hypergrad": method,
                "dataset": data.name,
                "metric": "hypergradient_cosine_vs_dense_implicit",
                "value": statistics.fmean([s["cosine"] for s in later]),
                "min_cosine": min(s["cosine"] for s in later),
                "relative_error": statistics.fmean([s["relative_error"] for s in later]),
                "mean_residual": statistics.fmean([s["residual"] for s in later]),
                "products_per_solve": statistics.fmean([s["products"] for s in later]),
                "cold_restarts": int(sum(s["cold_restart"] for s in steps)),
                "cg_iterations": check.cg_iterations,
                "outer_steps": outer_steps,
                "inner_steps": check.inner_steps,
                "tasks": check.n_tasks,
                "width": check.width,
                "per_step": steps,
            }
        )
    return rows


def last_solve_report(run_dir: Path) -> dict[str, Any]:
    """The diagnostics of the last implicit solve logged in ``run_dir/metrics.jsonl`` (residual, products...),
    or ``{}`` for methods that solve nothing (first-order, unrolled)."""
    path = Path(run_dir) / "metrics.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    for line in reversed(lines):
        entry = json.loads(line) if line.strip() else {}
        for hops in entry.get("hypergradient", {}).values():
            for hop in hops.values():
                if isinstance(hop, dict) and "residual" in hop:
                    return hop
    return {}
