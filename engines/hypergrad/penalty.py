"""``penalty``: the stochastic alternating penalty method of Bian et al. (Algorithm 2 of "An Optimization-Based
Meta-Learning Model for MRI Reconstruction with Diverse Dataset", Journal of Imaging 2021).

The bilevel problem ``min_ω L_val(θ*(ω), ω)`` s.t. ``θ*(ω) = argmin_θ L_tr(θ, ω)`` is relaxed to
the single-level penalised objective (Eq. 17)

    L̃(θ, ω) = L_val(θ, ω) + λ/2 ||∇_θ L_tr(θ, ω)||²,

and both levels descend it in turn: K steps of the lower level ``θ ← θ - ρ ∇_θ L̃`` (its
gradient is *replaced*: ``∇_θ L_val + λ ∇²_θθ L_tr ∇_θ L_tr``; the logged loss stays L_tr), then
one step of the upper level on ``∇_ω L̃ = ∇_ω L_val + λ ∇²_ωθ L_tr ∇_θ L_tr`` (its direct gradient
plus this hop). As λ grows the minimiser of L̃ tends to the bilevel solution. The training and
validation mini-batches are held fixed across rounds of (K θ-steps, one ω-step) until
``||∇_θ L̃||² + ||∇_ω L̃||² ≤ δ`` (Algorithm 2 lines 5-10, capped at ``max_rounds`` rounds); then new
batches are drawn and ``δ ← ν_δ δ``, ``λ ← ν_λ λ`` (line 11). When δ falls below ``delta_tol`` the
level asks the runner to stop (line 2), if ``delta_tol > 0``.

Options: ``lam`` (λ0, 1e-5), ``lam_growth`` (ν_λ, 1.001), ``delta`` (δ0, 1e-3), ``delta_decay``
(ν_δ, 0.95), ``delta_tol`` (0: run for the given steps), ``max_rounds`` (rounds on one pair of
batches before drawing new ones regardless, 20).

Cost: each lower step one extra backward with ``create_graph``, one Hessian-vector product and
one backward of the upper loss; each upper step one backward with graph, one mixed product and
one backward of the upper loss. Memory: one double-backward graph of a lower step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .common import deliver, hop_options, report, zeros_for_none

__all__ = ["PENALTY_OPTIONS", "penalty", "penalty_lower_step"]

PENALTY_OPTIONS: dict[str, tuple[str | None, Any]] = {
    "lam": (None, 1e-5),
    "lam_growth": (None, 1.001),
    "delta": (None, 1e-3),
    "delta_decay": (None, 0.95),
    "delta_tol": (None, 0.0),
    "max_rounds": (None, 20),
}


def _upper(level: Any) -> Any:
    uppers = [u for u in level._parents if level.method_through(u)[0] == "penalty"]
    if len(uppers) != 1:
        raise RuntimeError(
            f"penalty: level '{level.name}' needs exactly one upper level using the penalty method "
            f"through it, found {[u.name for u in uppers]}"
        )
    return uppers[0]


def _state(level: Any, options: dict[str, Any]) -> dict[str, Any]:
    state = level.method_state.setdefault("penalty", {})
    if not state:
        state.update(
            lam=float(options["lam"]),
            delta=float(options["delta"]),
            rounds=0,
            resample=True,
            theta_grad_sq=float("inf"),
            met=0,
            capped=0,
        )
    return state


def penalty_lower_step(level: Any, batch: Any) -> None:
    """Replace the lower level's gradient by ``∇_θ L̃`` and manage the held mini-batches."""
    upper = _upper(level)
    opts = {**_defaults(), **level.method_through(upper)[1]}
    state = _state(level, opts)
    if level.inner_step == 1 and state["resample"]:
        upper.cur_batch = upper.get_batch()  # B_val of this pair of batches (Algorithm 2 line 4)
        upper.hold_batch = True
        state["resample"] = False
        state["rounds"] = 0
    level.hold_batch = True  # B_tr is kept for the K steps and the rounds that follow
    params = list(level.trainable_parameters())
    grad_tr = zeros_for_none(
        torch.autograd.grad(level.training_step_exec(batch), params, create_graph=True, allow_unused=True), params
    )
    live = [(g, p) for g, p in zip(grad_tr, params) if g.requires_grad]
    curvature = (
        torch.autograd.grad([g for g, _ in live], params, grad_outputs=[g.detach() for g, _ in live], allow_unused=True)
        if live
        else [None] * len(params)
    )
    grad_val = torch.autograd.grad(upper.training_step_exec(upper.cur_batch), params, allow_unused=True)
    lam = state["lam"]
    indirect = level.last_indirect_grads or [None] * len(params)
    total = []
    for p, gv, hv, ind in zip(params, zeros_for_none(grad_val, params), zeros_for_none(curvature, params), indirect):
        g = gv + lam * hv
        if ind is not None:
            g = g + ind
        p.grad = g
        total.append(g)
    state["theta_grad_sq"] = float(sum((g.double() ** 2).sum() for g in total))
    level.diagnostics.update(
        penalty_lambda=lam,
        penalty_delta=state["delta"],
        penalty_term=0.5 * lam * float(sum((g.detach().double() ** 2).sum() for g in grad_tr)),
    )


def _defaults() -> dict[str, Any]:
    return {k: d for k, (_, d) in PENALTY_OPTIONS.items()}


def penalty(vector: list[Tensor], curr: Any, prev: Any, sync: bool) -> list[Tensor] | None:
    """The ω-part of ``∇_ω L̃`` beyond the upper's direct gradient: ``λ (∂∇_θ L_tr/∂ω)^T ∇_θ L_tr``
    (``vector`` = ∇_θ L_val is not used: the penalty method never inverts a Hessian)."""
    if not hasattr(curr, "method_through"):
        raise TypeError(f"penalty: '{curr.name}' is not a medmlo Level (the penalty method replaces its steps)")
    opts = hop_options(curr, prev, "penalty")
    state = _state(curr, opts)
    params = list(curr.trainable_parameters())
    prev_params = list(prev.trainable_parameters())
    grad_tr = zeros_for_none(
        torch.autograd.grad(curr.training_step_exec(curr.cur_batch), params, create_graph=True, allow_unused=True),
        params,
    )
    live = [g for g in grad_tr if g.requires_grad]
    mixed = (
        torch.autograd.grad(live, prev_params, grad_outputs=[g.detach() for g in live], allow_unused=True)
        if live
        else [None] * len(prev_params)
    )
    hop = [state["lam"] * g for g in zeros_for_none(mixed, prev_params)]
    # the stopping test of the inner while loop needs the full ∇_ω L̃ (direct + this hop)
    direct = zeros_for_none(
        torch.autograd.grad(prev.training_step_exec(prev.cur_batch), prev_params, allow_unused=True), prev_params
    )
    omega_sq = float(sum(((d + h).double() ** 2).sum() for d, h in zip(direct, hop)))
    criterion = state["theta_grad_sq"] + omega_sq
    state["rounds"] += 1
    met = criterion <= state["delta"]
    if met or state["rounds"] >= int(opts["max_rounds"]):
        state["resample"] = True  # draw new batches next round (line 3-4)
        curr.hold_batch = False
        prev.hold_batch = False
        state["met" if met else "capped"] += 1
        state["delta"] *= float(opts["delta_decay"])
        state["lam"] *= float(opts["lam_growth"])
        if float(opts["delta_tol"]) > 0 and state["delta"] <= float(opts["delta_tol"]):
            curr.stop_request = f"penalty method converged: δ = {state['delta']:.3g} <= delta_tol"
    report(
        curr,
        prev,
        criterion=criterion,
        delta=state["delta"],
        lam=state["lam"],
        rounds=state["rounds"],
        resampled=bool(state["resample"]),
    )
    return deliver(hop, prev, sync)
