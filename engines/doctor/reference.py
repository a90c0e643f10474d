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
    out: dict[str, list[Tensor]] = {}
    hops: dict[str, dict[str, Any]] = {}
    try:
        with window_of(paths, exact_everywhere, trajectories):
            for path in paths:
                label = path_label(path)
                out[label], reports = walk(vectors.first[path[1].name], path, exact_everywhere)
                hops[label] = reports
    except (RuntimeError, TypeError, ValueError) as err:
        return ReferenceResult(None, f"exact could not replay the window: {type(err).__name__}: {err}")
    return ReferenceResult(out, None, hops)
