"""Implicit-differentiation hops: ``cg``, ``cg_warm`` and ``neumann``.

All three compute ``-d^2g/(dλ dθ) · (C + δI)^{-1} v`` at the lower level's current iterate θ
(implicit function theorem), where ``C`` is a curvature model of the lower loss ``g``:

* ``curvature="hessian"`` — the exact Hessian ``d^2g/dθ^2`` (right for convex levels: ridge
  regression, RM-MetaL's linear heads). At a level that itself has lower levels it is the partial
  Hessian of its own loss, the levels below being accounted for by their own hops.
* ``curvature="gauss_newton"`` — the generalised Gauss-Newton matrix ``J^T (d^2ℓ/dz^2) J + d^2r/dθ^2``:
  the network outputs ``z`` that the loss marks with ``level.mark_output(z)`` are linearised in θ,
  the loss of those outputs keeps its exact curvature (positive semi-definite for cross-entropy or
  squared error with non-negative weights), and terms of the loss that read θ directly
  (regularisers) keep their exact Hessian. This is what converges on non-convex networks.
* ``curvature="auto"`` (default) — Gauss-Newton when the loss marks outputs, else the Hessian.

Solvers (``solver``): ``"cg"`` (positive definite systems) or ``"minres"`` (indefinite systems,
e.g. the exact Hessian of a non-convex network). ``damping`` δ is Tikhonov damping (the proximal
term of iMAML); with ``adaptive_damping`` it adapts to the curvature met, per hop, across outer
steps (Levenberg-Marquardt style): CG meeting non-positive curvature raises δ at once and goes on
from where it stopped within the same budget; a solve that ends above ``target_residual`` raises δ
for the next outer step; one that reaches ``target_residual / 10`` in half its budget lowers it
again, never below the ``damping`` option. The solve itself stops at ``tol`` (or after ``maxiter``
products). The hypergradient is exactly that of the damped system, and the damping used is logged.

``cg_warm`` is RM-MetaL's Subroutine 1: the solve starts from the previous outer step's solution
``v_{t-1}`` (kept per hop, checkpointed). The warm start's residual costs one product that does
not take one of the ``maxiter`` iterations; if it is worse than a cold start (relative residual
above 1), the solve restarts from zero and the restart is counted.

Every solve reports, on the upper level's metrics line: the relative residual reached, the
products done, the damping used, cold restarts and negative-curvature events. A relative residual
above 1 at the end (the "solution" is worse than zero) triggers a warning, once per hop.

Cost per hop: one backward with ``create_graph`` for ``dg/dθ``, at most ``maxiter`` curvature
products (Hessian: one double-backward each; Gauss-Newton: about two backward passes each, plus one
forward at set-up), one mixed vector-Jacobian product. Memory: one double-backward graph of a
single lower step, independent of the number of lower steps ``K``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..errors import GraphError
from .common import (
    deliver,
    hessian_vector_product,
    hop_options,
    hop_state,
    lower_gradient,
    mixed_vjp,
    report,
    zeros_for_none,
)
from .linear_solve import conjugate_gradient, minres

__all__ = ["CG_OPTIONS", "NEUMANN_OPTIONS", "cg", "cg_warm", "curvature_product", "neumann"]

Vector = list[Tensor]

CG_OPTIONS: dict[str, tuple[str | None, Any]] = {
    "maxiter": ("cg_iterations", 20),
    "tol": (None, 1e-6),
    "damping": (None, 0.0),
    "adaptive_damping": (None, True),
    "target_residual": (None, 1e-2),
    "curvature": (None, "auto"),
    "solver": (None, "cg"),
    "blockwise": (None, False),
}
NEUMANN_OPTIONS: dict[str, tuple[str | None, Any]] = {
    "iterations": ("neumann_iterations", 1),
    "alpha": ("neumann_alpha", 1.0),
    "curvature": (None, "auto"),
}
CURVATURES = ("auto", "hessian", "gauss_newton")
SOLVERS = {"cg": conjugate_gradient, "minres": minres}
_RAISE, _LOWER = 4.0, 2.0  # damping factors on a missed / an easy solve


def curvature_product(curr: Any, kind: str) -> tuple[list[Tensor], list[Tensor], Callable[[Vector], Vector], str]:
    """``(params, dg/dθ with graph, v -> C v, curvature used)`` for ``curr``'s loss on its current batch."""
    if kind not in CURVATURES:
        raise GraphError(f"level '{curr.name}': curvature must be one of {CURVATURES}, got {kind!r}")
    capture = getattr(curr, "capturing_outputs", None)
    if capture is None:  # a plain Betty problem: no output marking, exact Hessian
        if kind == "gauss_newton":
            raise GraphError(
                f"problem '{curr.name}': curvature='gauss_newton' needs a medmlo Level that marks its "
                "network outputs with level.mark_output(z)"
            )
        params, grads = lower_gradient(curr)
        return params, grads, hessian_vector_product(grads, params), "hessian"
    with capture() as outputs:
        params, grads = lower_gradient(curr)
    if kind == "hessian" or (kind == "auto" and not outputs):
        return params, grads, hessian_vector_product(grads, params), "hessian"
    if not outputs:
        raise GraphError(
            f"level '{curr.name}': curvature='gauss_newton' needs its loss to mark the network output, e.g. "
            "`logits = level.mark_output(level.module(x))`; it marked none"
        )
    return params, grads, _gauss_newton(curr, params, outputs), "gauss_newton"


def _gauss_newton(curr: Any, params: list[Tensor], outputs: list[Tensor]) -> Callable[[Vector], Vector]:
    """``v -> J^T H_z J v + H_r v`` with ``z`` the marked outputs and ``r`` the loss terms that read θ directly."""
    with curr.capturing_outputs(detach=True):
        explicit = curr.training_step_exec(curr.cur_batch)  # the loss with every marked output held constant
    explicit_grads = zeros_for_none(
        torch.autograd.grad(explicit, params, create_graph=True, allow_unused=True)
        if explicit.requires_grad
        else [None] * len(params),
        params,
    )
    explicit_hvp = hessian_vector_product(explicit_grads, params)
    with curr.capturing_outputs() as again:
        loss = curr.training_step_exec(curr.cur_batch)
    z = [o for o in again if o.requires_grad]
    grad_z = torch.autograd.grad(loss, z, create_graph=True, allow_unused=True)
    live_z = [(zi, gi) for zi, gi in zip(z, grad_z) if gi is not None and gi.requires_grad]
    dummies = [torch.zeros_like(zi, requires_grad=True) for zi, _ in live_z]
    # J^T u as a function of dummy u (linear): differentiating it in u gives J v (the "double-VJP" trick)
    jt_u = torch.autograd.grad(
        [zi for zi, _ in live_z], params, grad_outputs=dummies, create_graph=True, allow_unused=True
    )
    jt_live = [(i, t) for i, t in enumerate(jt_u) if t is not None]

    def product(v: Vector) -> Vector:
        out = explicit_hvp(v)
        if not live_z or not jt_live:
            return out
        jv = torch.autograd.grad(
            [t for _, t in jt_live],
            dummies,
            grad_outputs=[v[i] for i, _ in jt_live],
            retain_graph=True,
            allow_unused=True,
        )
        jv = zeros_for_none(jv, dummies)
        h_jv = torch.autograd.grad(
            [gi for _, gi in live_z], [zi for zi, _ in live_z], grad_outputs=jv, retain_graph=True, allow_unused=True
        )
        h_jv = zeros_for_none(h_jv, [zi for zi, _ in live_z])
        jt = torch.autograd.grad(
            [zi for zi, _ in live_z], params, grad_outputs=h_jv, retain_graph=True, allow_unused=True
        )
        return [o + (0 if t is None else t.detach()) for o, t in zip(out, jt)]

    return product


def _solve(vector: Vector, curr: Any, prev: Any, sync: bool, *, method: str, warm: bool) -> Vector | None:
    opts = hop_options(curr, prev, method)
    solver = SOLVERS.get(opts["solver"])
    if solver is None:
        raise GraphError(
            f"level '{curr.name}': {method} option solver must be one of {sorted(SOLVERS)}, got {opts['solver']!r}"
        )
    state = hop_state(curr, prev)
    params, grad_g, product, curvature = curvature_product(curr, opts["curvature"])
    floor = float(opts["damping"])
    damping = float(state.get("damping", floor)) if opts["adaptive_damping"] else floor
    maxiter, tol, blockwise = int(opts["maxiter"]), float(opts["tol"]), bool(opts["blockwise"])

    x0 = state.get("solution") if warm else None
    if x0 is not None and [t.shape for t in x0] != [t.shape for t in vector]:
        x0 = None
    budget, products, negative, scale, restarts = maxiter, 0, 0, 0.0, 0
    while True:
        result = solver(
            product,
            vector,
            x0=x0,
            damping=damping,
            tol=tol,
            maxiter=budget,
            blockwise=blockwise,
            cold_if_worse=warm and restarts == 0 and negative == 0,
        )
        products += result.iterations
        restarts += result.restarted
        budget -= result.iterations - (1 if x0 is not None else 0)
        scale = max(scale, result.max_curvature - damping)
        if (
            result.min_curvature - damping <= 1e-12 * max(scale, 1e-12)
            and not result.converged
            and opts["adaptive_damping"]
        ):
            # CG met non-positive curvature: shift it out and go on from where it stopped
            negative += 1
            damping = max(_RAISE * damping, -(result.min_curvature - damping) + 1e-3 * scale, 1e-8)
            if budget > 0:
                x0 = result.x
                continue
        break

    if opts["adaptive_damping"]:
        # Levenberg-Marquardt-style adaptation for the next outer step of this hop
        target = float(opts["target_residual"])
        if result.relative_residual > target:
            state["damping"] = max(_RAISE * damping, 1e-3 * scale, floor)
        elif result.relative_residual <= target / 10 and maxiter - budget <= maxiter // 2:
            lowered = damping / _LOWER
            state["damping"] = floor if lowered <= max(floor, 1e-6 * scale) else lowered
        else:
            state["damping"] = damping
    if warm:
        state["solution"] = [t.detach() for t in result.x]
        state["cold_restarts"] = int(state.get("cold_restarts", 0)) + restarts
    report(
        curr,
        prev,
        residual=result.relative_residual,
        products=products,
        damping=damping,
        curvature=curvature,
        solver=opts["solver"],
        negative_curvature=negative,
        **({"cold_restart": restarts, "cold_restarts_total": state["cold_restarts"]} if warm else {}),
    )
    if result.relative_residual > 1.0:
        _warn_once(
            curr,
            prev,
            f"{method} through level '{curr.name}' ended with relative residual "
            f"{result.relative_residual:.3g} > 1 (the solve is worse than zero): raise maxiter, use "
            "curvature='gauss_newton' (non-convex level) or solver='minres', or add damping",
        )
    return deliver(mixed_vjp(grad_g, result.x, prev), prev, sync)


def _warn_once(curr: Any, prev: Any, message: str) -> None:
    warned = getattr(curr, "_warned_hops", None)
    if warned is None:
        warned = set()
        curr._warned_hops = warned
    key = getattr(prev, "name", "upper")
    if key not in warned:
        warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def cg(vector: Vector, curr: Any, prev: Any, sync: bool) -> Vector | None:
    """Implicit hop with a cold-started Krylov solve (tolerance stop, adaptive damping, residual reported)."""
    return _solve(vector, curr, prev, sync, method="cg", warm=False)


def cg_warm(vector: Vector, curr: Any, prev: Any, sync: bool) -> Vector | None:
    """Implicit hop with the solve warm-started from this hop's previous solution (RM-MetaL Subroutine 1)."""
    return _solve(vector, curr, prev, sync, method="cg_warm", warm=True)


def neumann(vector: Vector, curr: Any, prev: Any, sync: bool) -> Vector | None:
    """Implicit hop with ``(C)^{-1} ≈ α Σ_{j=0}^{J} (I - αC)^j`` (Lorraine et al. 2020), J = ``iterations``."""
    opts = hop_options(curr, prev, "neumann")
    params, grad_g, product, curvature = curvature_product(curr, opts["curvature"])
    alpha = float(opts["alpha"])
    term = [t.detach() for t in vector]
    total = [t.clone() for t in term]
    for _ in range(int(opts["iterations"])):
        term = [t - alpha * c for t, c in zip(term, product(term))]
        total = [s + t for s, t in zip(total, term)]
    report(curr, prev, products=int(opts["iterations"]), curvature=curvature)
    return deliver(mixed_vjp(grad_g, [alpha * t for t in total], prev), prev, sync)
