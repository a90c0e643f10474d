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
        earlier steps are treated as constant (truncated back-propagation).

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
from .common import deliver, zeros_for_none


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


def window(level: Any) -> int:
    """Number of replayed steps: ``truncate`` if given, else the level's unroll steps."""
    truncate = int(level.hypergrad_options.get("truncate", level.unroll))
    return max(1, min(truncate, level.unroll))


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
    traj: Trajectory | None = curr.trajectory
    expected = window(curr)
    if traj is None or len(traj.steps) != expected:
        found = 0 if traj is None else len(traj.steps)
        raise RuntimeError(
            f"exact: level '{curr.name}' has {found} of the {expected} recorded steps it must "
            "replay; hypergradients through it can only be taken after a full inner loop"
        )
    params = curr.trainable_parameters()
    if traj.from_inner_loop_start and curr.has_start:
        start = curr.start_values()
        values = [start[name] for name in curr.trainable_names]
    else:
        values = [v.clone().requires_grad_(True) for v in traj.values]
    values = [v if v.requires_grad else v.clone().requires_grad_(True) for v in values]
    states = [
        {k: (t.clone() if torch.is_tensor(t) else t) for k, t in s.items()} for s in traj.optimizer_state
    ]
    buffers = {n: b.clone() for n, b in traj.buffers.items()}
    with torch.enable_grad():
        for step in traj.steps:
            loss = curr.functional_loss(values, buffers, step.batch, step.rng)
            grads = zeros_for_none(
                torch.autograd.grad(loss, values, create_graph=True, allow_unused=True), values
            )
            if step.indirect is not None:
                grads = [g + i for g, i in zip(grads, step.indirect)]
            values, states = diff_optim.update(curr.optimizer, params, grads, values, states, step.hyper)
        _check_replay(curr, values, params)
        prev_params = list(prev.trainable_parameters())
        out = torch.autograd.grad(values, prev_params, grad_outputs=vector, allow_unused=True)
    return deliver(zeros_for_none(out, prev_params), prev, sync)


def _check_replay(curr: Any, replayed: list[Tensor], params: list[Tensor]) -> None:
    """Record how far (relative L2) the replay landed from the real iterate; warn once if far."""
    with torch.no_grad():
        gap = torch.sqrt(sum(((r - p) ** 2).sum() for r, p in zip(replayed, params)))
        scale = torch.sqrt(sum((p**2).sum() for p in params)) + 1e-12
        relative = float(gap / scale)
    curr.diagnostics["hg_exact_replay_gap"] = relative
    if relative > 0.05 and not curr.method_state.get("replay_warned"):
        curr.method_state["replay_warned"] = True
        warnings.warn(
            f"exact: replaying level '{curr.name}' ended {relative:.2e} (relative L2) away from its real "
            "iterate: its loss is random beyond the random state the engine restores, or its optimizer "
            "amplifies rounding differences (e.g. Adam on parameters whose gradient is ~0)",
            RuntimeWarning,
            stacklevel=2,
        )
