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
reverse pass through the unrolled graph (about 3T lower steps in all).
Memory: grows linearly with ``T``: the activations of ``T`` lower steps are alive during
the hop, plus ``T`` recorded batches and one parameter/optimizer snapshot between hops.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from . import diff_optim
from .common import deliver, hop_options, report, zeros_for_none

__all__ = ["EXACT_OPTIONS", "REPLAY_GAP_WARNING", "RecordedStep", "Trajectory", "exact", "record_step", "window"]

EXACT_OPTIONS: dict[str, tuple[str | None, Any]] = {"truncate": (None, None)}
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
    depth = _truncation(curr, hop_options(curr, prev, "exact"))
    params = curr.trainable_parameters()
    full = depth == curr.unroll and traj.from_inner_loop_start and curr.has_start
    if full:
        start = curr.start_values()
        values = [start[name] for name in curr.trainable_names]
    else:
        values = [v.clone() for v in traj.values]
    states = [{k: (t.clone() if torch.is_tensor(t) else t) for k, t in s.items()} for s in traj.optimizer_state]
    buffers = {n: b.clone() for n, b in traj.buffers.items()}
    with torch.enable_grad():
        for i, step in enumerate(traj.steps):
            live = i >= len(traj.steps) - depth
            if live:
                values = [v if v.requires_grad else v.detach().clone().requires_grad_(True) for v in values]
            else:  # before the truncation window: replayed to reach its start, without graph
                values = [v.detach().requires_grad_(True) for v in values]
            loss = curr.functional_loss(values, buffers, step.batch, step.rng)
            grads = zeros_for_none(torch.autograd.grad(loss, values, create_graph=live, allow_unused=True), values)
            if step.indirect is not None:
                grads = [g + ind for g, ind in zip(grads, step.indirect)]
            values, states = diff_optim.update(curr.optimizer, params, grads, values, states, step.hyper)
            if not live:
                values = [v.detach() for v in values]
                states = [{k: (t.detach() if torch.is_tensor(t) else t) for k, t in s.items()} for s in states]
        _check_replay(curr, prev, values, params)
        prev_params = list(prev.trainable_parameters())
        out = torch.autograd.grad(values, prev_params, grad_outputs=vector, allow_unused=True)
    return deliver(zeros_for_none(out, prev_params), prev, sync)


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
