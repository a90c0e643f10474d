"""Implicit-differentiation hops: ``cg``, ``cg_warm`` and ``neumann``.

All three compute ``-d^2g/(dλ dθ) · (C + δI)^{-1} v`` at the lower level's current iterate θ
(implicit function theorem), where ``C`` is a curvature model of the lower loss ``g``
(:mod:`engines.hypergrad.curvature`):

* ``curvature="hessian"`` — the exact Hessian ``d^2g/dθ^2`` (right for convex levels: ridge
  regression, RM-MetaL's linear heads). At a level that itself has lower levels it is the partial
  Hessian of its own loss, the levels below being accounted for by their own hops.
* ``curvature="gauss_newton"`` — the generalised Gauss-Newton matrix ``J^T (d^2ℓ/dz^2) J + d^2r/dθ^2``:
  the network outputs ``z`` (the outputs of the level's module, or those the loss marks with
  ``level.mark_output(z)``) are linearised in θ, the loss of those outputs keeps its exact curvature
  (positive semi-definite for cross-entropy or squared error with non-negative weights), and terms of
  the loss that read θ directly (regularisers) keep their exact Hessian. This is what converges on
  non-convex networks; on a linear model it is the Hessian.
* ``curvature="auto"`` (default) — Gauss-Newton when the loss calls the level's module (or marks
  outputs), else the Hessian.

``jvp`` chooses how a Gauss-Newton product forms ``J v``: ``"linearize"`` (default: the network
linearised once per solve, one tangent pass and one backward per product), ``"forward"`` (forward mode,
primal values recomputed) or ``"reverse"`` (the double-VJP trick, the reference).

Solvers (``solver``): ``"cg"`` (positive definite systems) or ``"minres"`` (indefinite systems,
e.g. the exact Hessian of a non-convex network). ``damping`` δ is Tikhonov damping (the proximal
term of iMAML); with ``adaptive_damping`` it adapts to the curvature met, per hop, across outer
steps (Levenberg-Marquardt style): CG meeting non-positive curvature — or curvature below 1e-4 of
the largest met, as along the null space of a Gauss-Newton matrix whose rank is below the number of
parameters — raises δ at once and goes on from its best iterate (after vanishing curvature, once per
solve, with a fresh budget); a solve that ends above ``target_residual`` raises δ for the next outer
step; one that reaches ``target_residual / 10`` in half its budget lowers it again, never below the
``damping`` option. The solve itself stops at ``tol`` (or after ``maxiter`` products). The
hypergradient is exactly that of the damped system, and the damping used is logged.

``cg_warm`` is RM-MetaL's Subroutine 1: the solve starts from the previous outer step's solution
``v_{t-1}`` (kept per hop, checkpointed). The warm start's residual costs one product that does
not take one of the ``maxiter`` iterations; if it is worse than a cold start (relative residual
above 1), the solve restarts from zero and the restart is counted.

Every solve reports, on the upper level's metrics line: the relative residual reached, the
products done, the damping used, the curvature (and ``jvp``) used, cold restarts and
negative-curvature events. A relative residual of 1 or more at the end (the "solution" is no
better than zero) triggers a warning, once per hop.

Cost per hop: one recomputation of the loss with its graph, at most ``maxiter`` curvature products
(Hessian: one double backward each; Gauss-Newton: one tangent pass and one backward, plus one
forward to linearise at set-up), and the mixed term (Gauss-Newton with outputs that do not depend on
the upper level and no term reading θ directly: a backward through the loss head, with ``J x``
carried by the CG solve from its products' ``J p`` (MINRES and ``neumann``: one more tangent pass);
otherwise a backward with ``create_graph`` and a double backward). Memory: the graph of a
single lower step (and the linearisation's saved values), independent of the number of lower steps ``K``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from torch import Tensor

from ..errors import GraphError
from .common import deliver, hop_options, hop_state, lower_gradient, report
from .curvature import CURVATURES, JVP_MODES, Curvature, curvature_model
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
    "jvp": (None, "linearize"),
}
NEUMANN_OPTIONS: dict[str, tuple[str | None, Any]] = {
    "iterations": ("neumann_iterations", 1),
    "alpha": ("neumann_alpha", 1.0),
    "curvature": (None, "auto"),
    "jvp": (None, "linearize"),
}
SOLVERS = {"cg": conjugate_gradient, "minres": minres}
_RAISE, _LOWER = 4.0, 2.0  # damping factors on a missed / an easy solve
# with adaptive damping, CG treats a direction whose curvature is below this fraction of the largest met as
# singular (raise the damping, go on from the best iterate) instead of stepping far along it
_NEAR_SINGULAR = 1e-4


def curvature_product(curr: Any, kind: str) -> tuple[list[Tensor], list[Tensor], Callable[[Vector], Vector], str]:
    """``(params, dg/dθ with graph, v -> C v, curvature used)`` for ``curr``'s loss on its current batch.

    The tuple form of :func:`engines.hypergrad.curvature.curvature_model` (which the hops use, and which
    forms ``dg/dθ`` with a graph only when the mixed term needs it)."""
    model = curvature_model(curr, kind)
    _, grads = lower_gradient(curr)
    return model.params, grads, model.product, model.kind


def _solve(vector: Vector, curr: Any, prev: Any, sync: bool, *, method: str, warm: bool) -> Vector | None:
    opts = hop_options(curr, prev, method)
    solver = SOLVERS.get(opts["solver"])
    if solver is None:
        raise GraphError(
            f"level '{curr.name}': {method} option solver must be one of {sorted(SOLVERS)}, got {opts['solver']!r}"
        )
    state = hop_state(curr, prev)
    model = _model(curr, opts)
    product = model.product
    floor = float(opts["damping"])
    adaptive = bool(opts["adaptive_damping"])
    damping = float(state.get("damping", floor)) if adaptive else floor
    maxiter, tol, blockwise = int(opts["maxiter"]), float(opts["tol"]), bool(opts["blockwise"])

    x0 = state.get("solution") if warm else None
    if x0 is not None and [t.shape for t in x0] != [t.shape for t in vector]:
        x0 = None
    budget, products, negative, scale, restarts, refreshed = maxiter, 0, 0, 0.0, 0, False
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
            **({"min_curvature_ratio": _NEAR_SINGULAR} if solver is conjugate_gradient and adaptive else {}),
            **({"image": model.image} if solver is conjugate_gradient and model.image is not None else {}),
        )
        products += result.iterations
        restarts += result.restarted
        budget -= result.iterations - (1 if x0 is not None else 0)
        scale = max(scale, result.max_curvature - damping)
        singular = result.min_curvature <= _NEAR_SINGULAR * result.max_curvature
        if (
            (result.min_curvature - damping <= 1e-12 * max(scale, 1e-12) or singular)
            and not result.converged
            and adaptive
        ):
            # CG met non-positive (or vanishing) curvature: shift it out and go on from its best iterate
            negative += 1
            damping = max(_RAISE * damping, -(result.min_curvature - damping) + 1e-3 * scale, 1e-8)
            if singular and not refreshed:  # steps along nearly singular directions are wasted: once, a new budget
                budget, refreshed = maxiter, True
            if budget > 0:
                x0 = result.best if result.best is not None else result.x
                continue
        break

    if adaptive:
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
        solver=opts["solver"],
        **_describe(model),
        negative_curvature=negative,
        **({"cold_restart": restarts, "cold_restarts_total": state["cold_restarts"]} if warm else {}),
    )
    if result.relative_residual >= 1.0:
        _warn_once(
            curr,
            prev,
            f"{method} through level '{curr.name}' ended with relative residual "
            f"{result.relative_residual:.3g} >= 1 (the solve is no better than zero): raise maxiter, use "
            "curvature='gauss_newton' (non-convex level) or solver='minres', or add damping",
        )
    return deliver(model.mixed(result.x, prev, image=result.image), prev, sync)


def _model(curr: Any, opts: dict[str, Any]) -> Curvature:
    """The curvature model the options ask for (options checked before any recomputation)."""
    if opts["curvature"] not in CURVATURES:
        raise GraphError(f"level '{curr.name}': curvature must be one of {CURVATURES}, got {opts['curvature']!r}")
    if opts["jvp"] not in JVP_MODES:
        raise GraphError(f"level '{curr.name}': option jvp must be one of {JVP_MODES}, got {opts['jvp']!r}")
    return curvature_model(curr, opts["curvature"], jvp=opts["jvp"])


def _describe(model: Curvature) -> dict[str, Any]:
    """What a hop's report says about its curvature model."""
    out: dict[str, Any] = {"curvature": model.kind}
    if model.jvp is not None:
        out["jvp"] = model.jvp
    if model.notes():
        out["curvature_note"] = model.notes()
    return out


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
    model = _model(curr, opts)
    alpha = float(opts["alpha"])
    term = [t.detach() for t in vector]
    total = [t.clone() for t in term]
    for _ in range(int(opts["iterations"])):
        term = [t - alpha * c for t, c in zip(term, model.product(term))]
        total = [s + t for s, t in zip(total, term)]
    report(curr, prev, products=int(opts["iterations"]), **_describe(model))
    return deliver(model.mixed([alpha * t for t in total], prev), prev, sync)
