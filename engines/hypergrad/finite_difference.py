"""Finite-difference hops: ``darts``, ``sama`` and ``one_step``.

All three need one mixed second derivative of the lower loss ``g`` applied to a vector ``u``,
``(d^2 g / dλ dθ) u``, and get it by central differences of ``dg/dλ`` at ``θ ± ε u`` (two forward
and two backward passes, no double backward). medmlo's version restores the parameters exactly
(a saved copy, not ``+ε - 2ε + ε`` in floating point), leaves running statistics of norm layers
unchanged (a level's recomputations never advance them), and frees the first perturbed loss's
graph before building the second (Betty 0.2.1 keeps both alive: 1.8x a plain step's peak memory).

* ``darts`` (Betty's algorithm) — ``u = v`` at the current iterate: the implicit gradient with
  ``H^{-1} ≈ I`` and *no* step size. In a chain of levels each hop is thus weighted by ``1/ξ``
  relative to the one-step unrolled gradient (ξ the lower level's learning rate).
* ``sama`` (Betty's algorithm, SAMA) — ``u`` = ``v`` preconditioned by the lower Adam update.
* ``one_step`` — the true one-step unrolled hypergradient of E2EAug §3.3 / DARTS's second-order
  formula: the last lower step ``θ_K = θ_{K-1} - U(∇_θ g(θ_{K-1}, λ))`` differentiated in λ,
  ``dθ_K/dλ = -D (d^2 g / dθ dλ)`` with ``D = dU/d(gradient)`` the (diagonal) Jacobian of the
  level's optimizer update — ``lr`` for plain SGD, the momentum/Nesterov factor, or Adam's and
  RMSprop's elementwise preconditioner — evaluated where and as the step was taken (the iterate
  before the step, its batch, its random state and optimizer state). Equal to ``exact`` with
  ``truncate=1`` (tested against it on closed-form problems at two and three levels).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from betty.hypergradient.utils import precondition
from torch import Tensor

from .common import deliver, hop_options, report, zeros_for_none

__all__ = ["FD_OPTIONS", "darts", "one_step", "record_one_step", "sama", "update_jacobian"]

Vector = list[Tensor]
FD_OPTIONS: dict[str, tuple[str | None, Any]] = {"alpha": ("darts_alpha", 0.01)}
SAMA_OPTIONS: dict[str, tuple[str | None, Any]] = {"alpha": ("sama_adam_alpha", 1.0)}


@contextlib.contextmanager
def _parameters_at(curr: Any, values: Sequence[Tensor] | None) -> Iterator[list[Tensor]]:
    """Temporarily set ``curr``'s trainable parameters; restore them exactly (from a copy)."""
    params = list(curr.trainable_parameters())
    saved = [p.detach().clone() for p in params]
    try:
        if values is not None:
            with torch.no_grad():
                for p, v in zip(params, values):
                    p.copy_(v)
        yield params
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


def mixed_product(
    curr: Any, prev: Any, direction: Vector, *, alpha: float, point: Sequence[Tensor] | None = None
) -> Vector:
    """``(d^2 g / d θ_prev d θ_curr) · direction`` by central differences of ``dg/dθ_prev`` at
    ``point ± ε direction`` (``point``: ``curr``'s parameters, default their current values), with
    ``ε = alpha / ||direction||``."""
    prev_params = list(prev.trainable_parameters())
    norm = torch.sqrt(sum((d.detach().double() ** 2).sum() for d in direction))
    eps = alpha / (float(norm) + 1e-15)
    grads = []
    with _parameters_at(curr, point) as params:
        base = [p.detach().clone() for p in params]
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for p, b, d in zip(params, base, direction):
                    p.copy_(b + sign * eps * d)
            loss = curr.training_step_exec(curr.cur_batch)
            # retain_graph: a loss may reuse, through ``hop_cache``, values computed once per hypergradient
            # from the upper's parameters (RM-MetaL's support features); their graph must survive the first
            # evaluation. The rest of this perturbed graph is freed with ``loss`` before the next is built.
            grads.append(
                zeros_for_none(
                    torch.autograd.grad(loss, prev_params, allow_unused=True, retain_graph=True), prev_params
                )
            )
            del loss
    return [(gp - gn) / (2 * eps) for gp, gn in zip(*grads)]


def darts(vector: Vector, curr: Any, prev: Any, sync: bool) -> Vector | None:
    """``-(d^2 g / dλ dθ) v``: implicit gradient with H^{-1} ≈ I and no step size (Betty's darts)."""
    opts = hop_options(curr, prev, "darts")
    out = mixed_product(curr, prev, [v.detach() for v in vector], alpha=float(opts["alpha"]))
    return deliver([-g for g in out], prev, sync)


def sama(vector: Vector, curr: Any, prev: Any, sync: bool) -> Vector | None:
    """darts with ``v`` preconditioned by the lower level's Adam update (SAMA, Betty's rule)."""
    opts = hop_options(curr, prev, "sama")
    direction = [t.detach() for t in precondition([v.detach() for v in vector], curr)]
    out = mixed_product(curr, prev, direction, alpha=float(opts["alpha"]))
    return deliver([-g for g in out], prev, sync)


def one_step(vector: Vector, curr: Any, prev: Any, sync: bool) -> Vector | None:
    """``(dθ_K/dλ)^T v = -(d^2 g/dλ dθ)|_{θ_{K-1}} (D ⊙ v)``: the last step differentiated exactly."""
    record = getattr(curr, "one_step_record", None)
    if record is None:
        raise RuntimeError(
            f"one_step: level '{curr.name}' has no recorded step to differentiate; hypergradients "
            "through it can only be taken after it stepped"
        )
    opts = hop_options(curr, prev, "one_step")
    direction = [d * v.detach() for d, v in zip(record["jacobian"], vector)]
    out = mixed_product(curr, prev, direction, alpha=float(opts["alpha"]), point=record["iterate"])
    report(curr, prev, lr=record["lr"])
    return deliver([-g for g in out], prev, sync)


def record_one_step(level: Any, batch: Any) -> None:
    """Before the optimizer update: keep the iterate and ``D = dU/d(gradient)`` of the step about to be taken."""
    params = list(level.trainable_parameters())
    grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach() for p in params]
    level.one_step_record = {
        "iterate": [p.detach().clone() for p in params],
        "jacobian": update_jacobian(level.optimizer, params, grads),
        "lr": float(level.optimizer.param_groups[0]["lr"]),
    }


def update_jacobian(optimizer: torch.optim.Optimizer, params: Sequence[Tensor], grads: Sequence[Tensor]) -> Vector:
    """Elementwise ``d(update)/d(gradient)`` of the step ``optimizer`` is about to take with ``grads``.

    Supported: SGD (momentum, dampening, Nesterov), Adam/AdamW (not AMSGrad) and RMSprop (not centered);
    ``maximize`` flips the sign. The optimizer's state is read, not changed.
    """
    out = []
    for p, g in zip(params, grads):
        group = next(gr for gr in optimizer.param_groups if any(q is p for q in gr["params"]))
        state = optimizer.state.get(p, {})
        sign = -1.0 if group.get("maximize", False) else 1.0
        g = sign * g
        if isinstance(optimizer, torch.optim.SGD):
            mu, damp = group["momentum"], group["dampening"]
            first = "momentum_buffer" not in state or state["momentum_buffer"] is None
            factor = 1.0 if (mu == 0 or first) else (1 - damp)
            if mu and group["nesterov"]:
                factor = 1.0 + mu * factor
            out.append(torch.full_like(p, sign * group["lr"] * factor))
        elif isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
            if group.get("amsgrad", False):
                raise TypeError(
                    "one_step: Adam with amsgrad=True has no closed-form update Jacobian; use amsgrad=False"
                )
            beta1, beta2 = group["betas"]
            eps, lr = group["eps"], group["lr"]
            if not isinstance(optimizer, torch.optim.AdamW) and group["weight_decay"]:
                g = g + group["weight_decay"] * p.detach()
            step = float(state.get("step", 0)) + 1
            m = beta1 * state.get("exp_avg", torch.zeros_like(p)) + (1 - beta1) * g
            v = beta2 * state.get("exp_avg_sq", torch.zeros_like(p)) + (1 - beta2) * g * g
            c1, c2 = 1 - beta1**step, 1 - beta2**step
            root = (v / c2).sqrt()
            denom = root + eps
            dm = (1 - beta1) / c1 / denom
            dv = torch.where(
                root > 0, (m / c1) / denom**2 * (1 - beta2) * g / (c2 * root.clamp_min(1e-300)), torch.zeros_like(p)
            )
            out.append(sign * lr * (dm - dv))
        elif isinstance(optimizer, torch.optim.RMSprop):
            if group.get("centered", False):
                raise TypeError(
                    "one_step: centered RMSprop has no closed-form update Jacobian here; use centered=False"
                )
            if group["weight_decay"]:
                g = g + group["weight_decay"] * p.detach()
            a, eps, lr = group["alpha"], group["eps"], group["lr"]
            s = a * state.get("square_avg", torch.zeros_like(p)) + (1 - a) * g * g
            root = s.sqrt()
            avg = root + eps
            d = 1 / avg - torch.where(
                root > 0, g * (1 - a) * g / (root.clamp_min(1e-300) * avg**2), torch.zeros_like(p)
            )
            out.append(sign * lr * d)
        else:
            raise TypeError(
                f"one_step: no update Jacobian for {type(optimizer).__name__}; use SGD, Adam, AdamW or "
                "RMSprop on this level, or another hypergradient method"
            )
    return out
