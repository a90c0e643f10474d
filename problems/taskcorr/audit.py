"""Auditing W's hypergradient along a training run: a method against the gradient of what is trained.

What the ``correlation`` level should receive is the total derivative of the validation loss after
the k real θ-steps of one W-step with respect to W, ``d/dW Σ_j ℓ(θ_j^k(W); V_j)`` with θ^0, Adam's
state and the k batches held as they were. The engine's ``exact`` computes it (it replays the k
recorded Adam steps with W live); :func:`finite_difference_hypergradient` checks that by central
differences of the same quantity. Any cheaper method is judged by how close it stays to it.

An audit (:func:`audit`) trains a graph with the candidate method and, every ``every`` W-steps,
copies the whole state (parameters, Adam moments, data positions, counters) into a second graph
that uses the reference method; both then take the same inner loop — the same k θ-steps, which do
not depend on the method — and the two hypergradients of that W-step are compared. The candidate's
trajectory, not the reference's, is followed: the question is whether what trains W points where
the true gradient of its own run points.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from engines import Graph, Runner

__all__ = [
    "AuditPoint",
    "InnerLoops",
    "audit",
    "cosine",
    "finite_difference_hypergradient",
    "graph_state",
    "load_graph_state",
]

UPPER, LOWER = "correlation", "theta"
PATH = f"{UPPER}<-{LOWER}"


def graph_state(graph: Graph) -> dict[str, Any]:
    """A deep copy of every level's state (parameters, optimizer state, data position, counters)."""
    return copy.deepcopy({name: level.state_dict() for name, level in graph.levels.items()})


def load_graph_state(graph: Graph, state: dict[str, Any]) -> None:
    """Load a :func:`graph_state` into ``graph`` (a copy of it: optimizers must not share moment tensors)."""
    for name, level in graph.levels.items():
        level.load_state_dict(copy.deepcopy(state[name]))


def cosine(a: Tensor, b: Tensor) -> float:
    """Cosine of two tensors (flattened); NaN when either is zero."""
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    norms = float(a.norm() * b.norm())
    return float(a @ b) / norms if norms > 0 else math.nan


class InnerLoops:
    """A graph with levels ``theta`` below ``correlation``, stepped one inner loop at a time.

    One inner loop is k global steps (k = ``theta.unroll`` θ-steps), the last of which ends with the
    W-step. ``precision`` is the runner's (``"fp64"`` for audits and finite differences).
    """

    def __init__(self, graph: Graph, *, precision: str = "fp64", device: str = "cpu", seed: int = 0):
        if set(graph.levels) != {LOWER, UPPER}:
            raise ValueError(f"InnerLoops needs the levels '{LOWER}' and '{UPPER}', got {sorted(graph.levels)}")
        self.graph = graph
        self.runner = Runner(graph, 10**9, device=device, precision=precision, seed=seed, progress=False)
        self.runner.start()
        self.unroll = graph[LOWER].unroll

    def step(self) -> float:
        """One inner loop; returns the validation loss Σ_j ℓ(θ_j^k; V_j) that its W-step was taken on."""
        steps_before = len(self.runner.losses.get(UPPER, []))
        for _ in range(self.unroll):
            self.runner.step()
        losses = self.runner.losses[UPPER]
        if len(losses) != steps_before + 1:
            raise RuntimeError(f"an inner loop of {self.unroll} θ-steps should end with one W-step")
        return losses[-1]

    def hypergradient(self) -> Tensor:
        """W's hypergradient of the last W-step (a copy), as the method of ``theta`` computed it."""
        return self.graph[UPPER].hypergradients[PATH][0].clone()

    @property
    def logits(self) -> Tensor:
        return self.graph[UPPER].module.logits

    def close(self) -> None:
        self.runner.close()


def finite_difference_hypergradient(loops: InnerLoops, state: dict[str, Any], eps: float = 1e-5) -> Tensor:
    """Central differences of the validation loss after one inner loop from ``state``, entry by entry of W.

    Every evaluation loads ``state`` with one entry of W moved by ±eps and runs the inner loop: the
    same k batches and Adam steps, so this is the derivative of what training computes. Cost: 2·N·M
    inner loops (use the smallest instance).
    """
    base = state[UPPER]["module"]["logits"].detach().clone()
    grad = torch.zeros_like(base, dtype=torch.float64)
    for index in torch.cartesian_prod(*(torch.arange(n) for n in base.shape)).view(-1, base.dim()).tolist():
        values = []
        for sign in (1.0, -1.0):
            load_graph_state(loops.graph, state)
            with torch.no_grad():
                loops.logits.copy_(base)
                loops.logits[tuple(index)] += sign * eps
            values.append(loops.step())
        grad[tuple(index)] = (values[0] - values[1]) / (2 * eps)
    return grad


@dataclass(frozen=True)
class AuditPoint:
    """One audited W-step: its number (1-based), the cosine and relative error of the candidate's
    hypergradient to the reference's, both norms, and the validation loss of that W-step."""

    w_step: int
    cosine: float
    relative_error: float
    candidate_norm: float
    reference_norm: float
    validation_loss: float


def audit(
    build: Callable[[str, dict[str, Any]], Graph],
    candidate: tuple[str, dict[str, Any]],
    *,
    w_steps: int,
    every: int,
    reference: tuple[str, dict[str, Any]] = ("exact", {}),
    precision: str = "fp64",
    seed: int = 0,
) -> list[AuditPoint]:
    """Train ``build(*candidate)`` for ``w_steps`` W-steps; at W-step 1 and every ``every``-th, compare its
    hypergradient with ``build(*reference)``'s taken from the same state on the same inner loop."""
    if w_steps < 1 or every < 1:
        raise ValueError(f"audit: w_steps and every must be >= 1, got {w_steps} and {every}")
    trained = InnerLoops(build(*candidate), precision=precision, seed=seed)
    checker = InnerLoops(build(*reference), precision=precision, seed=seed)
    points = []
    try:
        for step in range(1, w_steps + 1):
            audited = step == 1 or step % every == 0
            if audited:
                load_graph_state(checker.graph, graph_state(trained.graph))
                checker.step()
                truth = checker.hypergradient()
            loss = trained.step()
            if audited:
                got = trained.hypergradient()
                points.append(
                    AuditPoint(
                        w_step=step,
                        cosine=cosine(got, truth),
                        relative_error=float((got - truth).norm() / truth.norm()),
                        candidate_norm=float(got.norm()),
                        reference_norm=float(truth.norm()),
                        validation_loss=loss,
                    )
                )
    finally:  # in reverse order of starting: each runner restores the default dtype it found
        checker.close()
        trained.close()
    return points
