"""``exact``: iterative differentiation through the level's last ``K`` unrolled steps.

Betty 0.2.1's ``IterativeProblem``/``HigherIterativeProblem`` fail at set-up on current
PyTorch, so this is our own, on ``torch.func.functional_call``. The real lower steps stay
ordinary in-place optimizer steps; the level records what each step saw (batch, random
state, and at a level with lower levels of its own the hypergradient it added) plus a
snapshot of parameters and optimizer state at the start of the window. When an upper
level asks for the hypergradient, the window is replayed functionally with the upper
levels' parameters live, and ``v`` is pulled back through it:
``d θ_K / d λ ^T v`` (Eq. 3 of RM-MetaL, any differentiable optimizer rule).

Options:
    truncate (int, default K): differentiate only through the last ``truncate`` steps;
        earlier steps are treated as constant (truncated back-propagation). Different uppers
        may use different truncations through one level: the window recorded is the longest.
    checkpoint (bool or int, default False): activation checkpointing of the replay, so that
        memory does not grow with the number of steps. The window is first replayed without any
        graph, keeping the parameters and optimizer state at the start of every segment of
        ``checkpoint`` steps (``True``: segments of ``ceil(sqrt(T))`` steps); ``v`` is then pulled
        back one step at a time, last step first, each step re-run with its graph from the state
        kept for it (re-computed within its segment), so only one step's graph is ever alive. The
        result is the same hypergradient (tested to 1e-10 in float64); the extra cost is one or
        two replays of the window without graph.

Start of the window: if the level has a ``start`` map (its parameters are reset at every
inner loop from a function of upper parameters, as in MAML/ANIL) and the window covers
the whole inner loop, the replay starts from that live function, so the Jacobian includes
the initialisation path. Otherwise it starts from the detached snapshot.

Norm buffers (BatchNorm/InstanceNorm running statistics) — the policy:
    the replay runs every layer in the mode the real step ran in (train mode: batch
    statistics, exactly as recorded); running statistics are read from a snapshot taken at
    the start of the window and every update the replay makes to them is discarded, so
    the level's buffers advance once per real step and never twice; no gradient flows
    through running statistics (they are state, not parameters).

Other module state that is not one of the level's trainable parameters (e.g. a
discriminator updated inside the level's step) is read at its current value.

Cost per hop: ``T`` forward passes and ``T`` backward passes with ``create_graph``, then one
reverse pass through the unrolled graph (about 3T lower steps in all); with ``checkpoint``, one
or two more passes over the window without graph.
Memory: grows linearly with ``T``: the activations of ``T`` lower steps are alive during
the hop, plus ``T`` recorded batches and one parameter/optimizer snapshot between hops. With
``checkpoint``, one step's activations plus about ``2 sqrt(T)`` parameter/optimizer states.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..errors import GraphError
from . import diff_optim
from .common import deliver, hop_options, report, zeros_for_none

__all__ = ["EXACT_OPTIONS", "REPLAY_GAP_WARNING", "RecordedStep", "Trajectory", "exact", "record_step", "window"]

EXACT_OPTIONS: dict[str, tuple[str | None, Any]] = {"truncate": (None, None), "checkpoint": (None, False)}
# A replay that ends farther than this (relative L2) from the real iterate is warned about, once per hop:
# a float64 replay lands within ~1e-15 and a float32 one within ~1e-6, while a drift of a few tenths of a
# percent already changes the hypergradient (it is taken at the wrong point of the wrong trajectory).
REPLAY_GAP_WARNING = 1e-3


@dataclass
class RecordedStep:
    batch: Any
    rng: Any
    indirect: list[Tensor] | None
    hyper: list[dict[str, Any]]  # the optimizer's param-group settings at this step (lr may be scheduled)
    # per trainable parameter, whether its gradient was None in the real step (torch.optim skipped it);
    # None: every parameter had one
    skipped: list[bool] | None = None


@dataclass
class Trajectory:
    """What ``exact`` needs to replay a window of lower steps."""

    values: list[Tensor]
    buffers: dict[str, Tensor]
    optimizer_state: list[dict[str, Any]]
    from_inner_loop_start: bool
    steps: list[RecordedStep] = field(default_factory=list)


def _truncation(level: Any, options: dict[str, Any]) -> int:
    truncate = options.get("truncate")
    return max(1, min(int(level.unroll if truncate is None else truncate), level.unroll))


def window(level: Any) -> int:
    """Number of recorded steps: the longest truncation any ``exact`` hop through the level asks for."""
    sizes = [_truncation(level, o) for o in level.options_through("exact")]
    return max(sizes) if sizes else _truncation(level, level.hypergrad_options)


def record_step(level: Any, batch: Any) -> None:
    """Called by the level after the gradient of a real step and before the optimizer update."""
    position = (level.count - 1) % level.unroll
    if position == level.unroll - window(level):
        params = level.trainable_parameters()
        level.trajectory = Trajectory(
            values=[p.detach().clone() for p in params],
            buffers={n: b.detach().clone() for n, b in level.module.named_buffers()},
            optimizer_state=diff_optim.snapshot_state(level.optimizer, params),
            from_inner_loop_start=position == 0,
        )
    if level.trajectory is not None:
        indirect = level.last_indirect_grads
        level.trajectory.steps.append(
            RecordedStep(
                batch=batch,
                rng=level.last_step_rng,
                indirect=None if indirect is None else [g.detach() for g in indirect],
                hyper=diff_optim.group_settings(level.optimizer),
                skipped=diff_optim.without_gradient(level.trainable_parameters()),
            )
        )


def exact(vector: list[Tensor], curr: Any, prev: Any, sync: bool) -> list[Tensor] | None:
    """Iterative-differentiation hop: replay the recorded window and pull ``vector`` back."""
    traj: Trajectory | None = getattr(curr, "trajectory", None)
    if not hasattr(curr, "functional_loss"):
        raise TypeError(f"exact: '{curr.name}' is not a medmlo Level (exact replays the steps a Level records)")
    recorded = window(curr)
    if traj is None or len(traj.steps) != recorded:
        found = 0 if traj is None else len(traj.steps)
        raise RuntimeError(
            f"exact: level '{curr.name}' has {found} of the {recorded} recorded steps it must "
            "replay; hypergradients through it can only be taken after a full inner loop"
        )
    options = hop_options(curr, prev, "exact")
    depth = _truncation(curr, options)
    segment = _segment(curr, options.get("checkpoint", False), len(traj.steps))
    params = curr.trainable_parameters()
    full = depth == curr.unroll and traj.from_inner_loop_start and curr.has_start
    prev_params = list(prev.trainable_parameters())
    if full:
        start = curr.start_values()
        values = [start[name] for name in curr.trainable_names]
    else:
        values = list(traj.values)  # never written to: every step makes new tensors
    if segment:
        out = _checkpointed(curr, prev, vector, params, prev_params, values, traj, depth, segment, full)
        return deliver(zeros_for_none(out, prev_params), prev, sync)
    values = [v.clone() for v in values]
    states = [{k: (t.clone() if torch.is_tensor(t) else t) for k, t in s.items()} for s in traj.optimizer_state]
    buffers = {n: b.clone() for n, b in traj.buffers.items()}
    with torch.enable_grad():
        for i, step in enumerate(traj.steps):
            live = i >= len(traj.steps) - depth
            if live:
                values = [v if v.requires_grad else v.detach().clone().requires_grad_(True) for v in values]
            else:  # before the truncation window: replayed to reach its start, without graph
                values = [v.detach().requires_grad_(True) for v in values]
            values, states = _replay_step(curr, params, values, states, buffers, step, create_graph=live)
            if not live:
                values = [v.detach() for v in values]
                states = _detached(states)
        _check_replay(curr, prev, values, params)
        out = torch.autograd.grad(values, prev_params, grad_outputs=vector, allow_unused=True)
    return deliver(zeros_for_none(out, prev_params), prev, sync)


def _replay_step(
    curr: Any,
    params: list[Tensor],
    values: list[Tensor],
    states: list[dict[str, Any]],
    buffers: dict[str, Tensor],
    step: RecordedStep,
    *,
    create_graph: bool,
) -> tuple[list[Tensor], list[dict[str, Any]]]:
    """One recorded lower step re-enacted functionally: gradient at ``values`` on the step's batch and random
    state (plus the hypergradient the level received then), then the optimizer's update, which leaves the
    parameters that had no gradient in the real step where they were (``torch.optim`` skipped them)."""
    loss = curr.functional_loss(values, buffers, step.batch, step.rng)
    grads = zeros_for_none(torch.autograd.grad(loss, values, create_graph=create_graph, allow_unused=True), values)
    if step.indirect is not None:
        grads = [g + ind for g, ind in zip(grads, step.indirect)]
    return diff_optim.update(curr.optimizer, params, grads, values, states, step.hyper, step.skipped)


def _detached(states: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: (t.detach() if torch.is_tensor(t) else t) for k, t in s.items()} for s in states]


def _segment(curr: Any, checkpoint: Any, steps: int) -> int:
    """Steps per checkpointed segment (0: no checkpointing)."""
    if checkpoint is False or checkpoint is None:
        return 0
    if checkpoint is True:
        return max(1, math.ceil(math.sqrt(steps)))
    if isinstance(checkpoint, bool) or not isinstance(checkpoint, int) or checkpoint < 1:
        raise GraphError(
            f"level '{curr.name}': exact option checkpoint must be False, True or a segment length >= 1, "
            f"got {checkpoint!r}"
        )
    return checkpoint


_NOT_DIFFERENTIATED = ("step",)  # optimizer-state entries that carry no derivative (step counters)


def _differentiable(key: str, value: Any) -> bool:
    return key not in _NOT_DIFFERENTIATED and torch.is_tensor(value) and value.is_floating_point()


def _checkpointed(
    curr: Any,
    prev: Any,
    vector: list[Tensor],
    params: list[Tensor],
    prev_params: list[Tensor],
    start: list[Tensor],
    traj: Trajectory,
    depth: int,
    segment: int,
    from_start: bool,
) -> list[Tensor | None]:
    """``(dθ_T/dλ)ᵀ v`` with one step's graph alive at a time (see the ``checkpoint`` option); ``start`` are
    the window's first parameter values (a function of upper parameters when ``from_start``). Kept states
    share storage with the trajectory's snapshot or are made by the replay; none is written in place."""
    steps = traj.steps
    kept: dict[int, tuple[list[Tensor], list[dict[str, Any]], dict[str, Tensor]]] = {}
    values = [v.detach() for v in start]
    states = _detached(traj.optimizer_state)
    buffers = {n: b.clone() for n, b in traj.buffers.items()}
    with torch.enable_grad():
        for i, step in enumerate(steps):  # sweep without graph, keeping the start of every segment
            if i % segment == 0:
                kept[i] = (values, states, {n: b.clone() for n, b in buffers.items()})
            values = [v.detach().requires_grad_(True) for v in values]
            values, states = _replay_step(curr, params, values, states, buffers, step, create_graph=False)
            values, states = [v.detach() for v in values], _detached(states)
        _check_replay(curr, prev, values, params)
        adj_values = [v.detach() for v in vector]
        adj_states: list[dict[str, Tensor]] = [{} for _ in params]
        total: list[Tensor | None] = [None] * len(prev_params)
        first_live = len(steps) - depth
        for seg_start in sorted(kept, reverse=True):
            if seg_start + segment <= first_live:
                break
            inputs = [kept[seg_start]]  # the states at every step of this segment, recomputed without graph
            for i in range(seg_start, min(seg_start + segment, len(steps)) - 1):
                v, s, b = inputs[-1]
                b = {n: t.clone() for n, t in b.items()}
                nv = [t.detach().requires_grad_(True) for t in v]
                nv, ns = _replay_step(curr, params, nv, s, b, steps[i], create_graph=False)
                inputs.append(([t.detach() for t in nv], _detached(ns), b))
            del kept[seg_start]
            for offset in range(len(inputs) - 1, -1, -1):
                i = seg_start + offset
                if i < first_live:
                    break
                v, s, b = inputs.pop()
                adj_values, adj_states, mixed = _pull_back(
                    curr, params, prev_params, v, s, b, steps[i], adj_values, adj_states
                )
                total = [t if m is None else (m if t is None else t + m) for t, m in zip(total, mixed)]
        if from_start:
            start_grads = torch.autograd.grad(start, prev_params, grad_outputs=adj_values, allow_unused=True)
            total = [t if m is None else (m if t is None else t + m) for t, m in zip(total, start_grads)]
    return total


def _pull_back(
    curr: Any,
    params: list[Tensor],
    prev_params: list[Tensor],
    values: list[Tensor],
    states: list[dict[str, Any]],
    buffers: dict[str, Tensor],
    step: RecordedStep,
    adj_values: list[Tensor],
    adj_states: list[dict[str, Tensor]],
) -> tuple[list[Tensor], list[dict[str, Tensor]], list[Tensor | None]]:
    """The adjoints of one step's inputs (parameters, optimizer state) and its contribution to λ's gradient,
    given the adjoints of its outputs: the step re-run with its graph, then one vector-Jacobian product."""
    values = [v.detach().requires_grad_(True) for v in values]
    states = [
        {k: (t.detach().requires_grad_(True) if _differentiable(k, t) else t) for k, t in s.items()} for s in states
    ]
    new_values, new_states = _replay_step(
        curr, params, values, states, {n: t.clone() for n, t in buffers.items()}, step, create_graph=True
    )
    outputs, cotangents = list(new_values), list(adj_values)
    for s, adj in zip(new_states, adj_states):
        for k, a in adj.items():
            if torch.is_tensor(s.get(k)) and s[k].requires_grad:
                outputs.append(s[k])
                cotangents.append(a)
    state_inputs = [(j, k, t) for j, s in enumerate(states) for k, t in s.items() if _differentiable(k, t)]
    inputs = values + [t for _, _, t in state_inputs] + prev_params
    grads = torch.autograd.grad(outputs, inputs, grad_outputs=cotangents, allow_unused=True)
    n = len(values)
    new_adj_values = zeros_for_none(grads[:n], values)
    new_adj_states: list[dict[str, Tensor]] = [{} for _ in states]
    for (j, k, t), g in zip(state_inputs, grads[n : n + len(state_inputs)]):
        new_adj_states[j][k] = torch.zeros_like(t) if g is None else g
    mixed = list(grads[n + len(state_inputs) :])
    return [g.detach() for g in new_adj_values], new_adj_states, mixed


def _check_replay(curr: Any, prev: Any, replayed: list[Tensor], params: list[Tensor]) -> None:
    """Record how far (relative L2) the replay landed from the real iterate; warn once if far."""
    with torch.no_grad():
        gap = torch.sqrt(sum(((r - p) ** 2).sum() for r, p in zip(replayed, params)))
        scale = torch.sqrt(sum((p**2).sum() for p in params)) + 1e-12
        relative = float(gap / scale)
    report(curr, prev, replay_gap=relative)
    warned = curr.__dict__.setdefault("_replay_warned", set())
    if relative > REPLAY_GAP_WARNING and prev.name not in warned:
        warned.add(prev.name)
        warnings.warn(
            f"exact: replaying level '{curr.name}' for '{prev.name}' ended {relative:.2e} (relative L2, warned above "
            f"{REPLAY_GAP_WARNING:g}) away from its real iterate, so its hypergradient may be wrong: its loss is random beyond the random state the engine restores, its upper parameters "
            "changed since the steps were taken, or its optimizer amplifies rounding differences (e.g. Adam on "
            "parameters whose gradient is ~0)",
            RuntimeWarning,
            stacklevel=2,
        )
