"""The reference hypergradient: ``exact`` through the full window the lower levels really took.

At the moment an upper level forms its gradient, the doctor recomputes the upper loss's gradient
with respect to the upper parameters (the *direct* gradient) and to the first level of every path,
then walks every path hop by hop with a chosen method per hop (:func:`walk`). The reference walks
with ``exact`` on every hop, each replaying the level's last inner loop in full (all ``unroll``
steps: their batches, random states and learning rates, recorded by
:class:`engines.doctor.window.Recorder`), so it is the derivative of what the window really did,
hop by hop: at two levels the gradient of the upper loss after the ``K`` real lower steps with
respect to the upper parameters (the lower level's start of the window held fixed); at more levels,
each hop's replay holds the levels below it at their current values and their hypergradients as
recorded, which the finite-difference check measures (:mod:`engines.doctor.finite_difference`).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..hypergrad import METHODS, diff_optim
from ..hypergrad.common import Hop, running, zeros_for_none
from ..hypergrad.paths import path_label
from ..hypergrad.unrolled import Trajectory
from ..level import Level

__all__ = ["HopChoice", "StepVectors", "reference", "step_vectors", "walk", "window_of"]

HopChoice = Callable[[Level, Level], tuple[str, dict[str, Any]]]
"""``(through, with respect to) -> (method, options)`` for one hop."""


@dataclass
class StepVectors:
    """What every path starts from, at the upper level's step: ``direct`` = d loss / d upper parameters,
    ``first[name]`` = d loss / d parameters of level ``name`` (the first level of some path)."""

    direct: list[Tensor]
    first: dict[str, list[Tensor]]
    loss: float


def step_vectors(upper: Level, paths: Sequence[Sequence[Any]], batch: Any) -> StepVectors:
    """Recompute the upper loss on the step's batch (its random state replayed, buffers untouched) and
    its gradient in the upper parameters and in the first level of every path, in one backward pass."""
    params = list(upper.trainable_parameters())
    firsts = list({path[1].name: path[1] for path in paths}.values())
    first_params = [list(level.trainable_parameters()) for level in firsts]
    with torch.enable_grad():
        loss = upper.training_step_exec(batch)
        grads = torch.autograd.grad(loss, [*params, *(p for ps in first_params for p in ps)], allow_unused=True)
    direct = zeros_for_none(grads[: len(params)], params)
    first, offset = {}, len(params)
    for level, ps in zip(firsts, first_params):
        first[level.name] = [g.detach() for g in zeros_for_none(grads[offset : offset + len(ps)], ps)]
        offset += len(ps)
    return StepVectors([g.detach() for g in direct], first, float(loss.detach()))


@contextlib.contextmanager
def window_of(paths: Sequence[Sequence[Any]], choose: HopChoice, trajectories: Mapping[str, Trajectory]) -> Iterator:
    """Within the block every hop on ``paths`` is configured with the method ``choose`` gives it (so that
    ``exact``'s window matches the recorded one) and every level on the paths replays the recorded
    inner loop; both are put back afterwards."""
    saved: dict[str, tuple[Level, dict, Any]] = {}
    try:
        for path in paths:
            for curr, prev in itertools.pairwise(path[1:]):
                if curr.name not in saved:
                    saved[curr.name] = (curr, dict(curr._edge_methods), curr.trajectory)
                curr._edge_methods[prev.name] = choose(curr, prev)
                if curr.name in trajectories:
                    curr.trajectory = trajectories[curr.name]
        yield
    finally:
        for level, edges, trajectory in saved.values():
            level._edge_methods = edges
            level.trajectory = trajectory


def walk(vector: Sequence[Tensor], path: Sequence[Any], choose: HopChoice) -> tuple[list[Tensor], dict[str, dict]]:
    """As :func:`engines.hypergrad.paths.walk_path`, with the method of every hop given by ``choose``; the
    values the levels cached for this hypergradient are dropped afterwards (as the engine does)."""
    vector = zeros_for_none(list(vector), list(path[1].trainable_parameters()))
    label = path_label(path)
    reports: dict[str, dict] = {}
    try:
        for curr, prev in itertools.pairwise(path[1:]):
            method, options = choose(curr, prev)
            hop = Hop(
                curr,
                prev,
                method,
                dict(options),
                state_key=f"{label}|{curr.name}->{prev.name}",
                report={"method": method},
            )
            with running(hop):
                vector = METHODS[method].fn(vector, curr, prev, False)
            reports[f"{curr.name}->{prev.name}"] = hop.report
    finally:
        for level in path[1:-1]:
            level.hop_cache.clear()
    return [v.detach() for v in vector], reports


def exact_everywhere(curr: Level, prev: Level) -> tuple[str, dict[str, Any]]:
    """The reference's choice: ``exact`` through the whole inner loop on every hop."""
    return "exact", {}


@dataclass
class ReferenceResult:
    """The reference hypergradient per path (None with ``reason`` when it cannot be formed)."""

    paths: dict[str, list[Tensor]] | None
    reason: str | None = None
    hops: dict[str, dict[str, Any]] = field(default_factory=dict)


def reference(
    paths: Sequence[Sequence[Any]], vectors: StepVectors, trajectories: Mapping[str, Trajectory], missing: Mapping
) -> ReferenceResult:
    """``exact`` on every hop of every path through the recorded windows; or why it cannot be formed."""
    if missing:
        name, why = next(iter(missing.items()))
        return ReferenceResult(None, f"level '{name}': {why}")
    for level in {lv.name: lv for path in paths for lv in path[1:-1]}.values():
        if not isinstance(level.optimizer, diff_optim.SUPPORTED):
            supported = ", ".join(cls.__name__ for cls in diff_optim.SUPPORTED)
            return ReferenceResult(
                None,
                f"level '{level.name}' uses {type(level.optimizer).__name__}, whose update the reference cannot "
                f"replay differentiably (supported: {supported})",
            )
    try:
        with window_of(paths, exact_everywhere, trajectories):
            out, hops = _shared_walk(paths, vectors)
    except (RuntimeError, TypeError, ValueError) as err:
        return ReferenceResult(None, f"exact could not replay the window: {type(err).__name__}: {err}")
    return ReferenceResult(out, None, hops)


class _Together:
    """Several levels as the one ``prev`` of a hop: a single replay of ``curr``'s window then gives the hop's
    result with respect to all of them (``exact`` pulls the same vector back to every parameter it is given)."""

    def __init__(self, levels: Sequence[Level]):
        self.levels = list(levels)
        self.name = "+".join(level.name for level in self.levels)

    def trainable_parameters(self) -> list[Tensor]:
        return [p for level in self.levels for p in level.trainable_parameters()]


def _shared_walk(paths: Sequence[Sequence[Any]], vectors: StepVectors) -> tuple[dict, dict]:
    """``exact`` on every hop of every path, each replay shared by the paths that reach it with the same vector
    (E2EAug's ``arch<-seg`` and ``arch<-seg<-gan`` replay ``seg`` once, not twice)."""
    labels = {id(path): path_label(path) for path in paths}
    frontier = [(path, 1, vectors.first[path[1].name]) for path in paths]  # (path, position of curr, vector)
    out: dict[str, list[Tensor]] = {}
    reports: dict[str, dict[str, Any]] = {labels[id(path)]: {} for path in paths}
    try:
        while frontier:
            groups: dict[tuple[str, int], list] = {}
            for item in frontier:
                path, i, vector = item
                groups.setdefault((path[i].name, id(vector)), []).append(item)
            frontier = []
            for members in groups.values():
                path, i, vector = members[0]
                curr = path[i]
                prevs = list({p[j + 1].name: p[j + 1] for p, j, _ in members}.values())
                prev = prevs[0] if len(prevs) == 1 else _Together(prevs)
                hop = Hop(curr, prev, "exact", {}, state_key=f"{curr.name}->{prev.name}", report={"method": "exact"})
                with running(hop):
                    result = [g.detach() for g in METHODS["exact"].fn(list(vector), curr, prev, False)]
                split, offset = {}, 0
                for level in prevs:
                    count = len(level.trainable_parameters())
                    split[level.name], offset = result[offset : offset + count], offset + count
                for p, j, _ in members:
                    following = p[j + 1]
                    reports[labels[id(p)]][f"{curr.name}->{following.name}"] = hop.report
                    if j + 1 == len(p) - 1:  # reached the upper level: the path's hypergradient
                        out[labels[id(p)]] = split[following.name]
                    else:
                        frontier.append((p, j + 1, split[following.name]))
    finally:
        for path in paths:
            for level in path[1:-1]:
                level.hop_cache.clear()
    return {labels[id(path)]: out[labels[id(path)]] for path in paths}, reports
