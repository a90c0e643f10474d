"""Implicit-differentiation hops solved by conjugate gradient: ``cg`` and ``cg_warm``.

Both compute ``-d^2g/(dλ dθ) · (H + δI)^{-1} v`` with ``H = d^2g/dθ^2`` of the lower loss
``g`` at the lower level's current iterate θ (implicit function theorem). At a level
that itself has lower levels, ``H`` is the partial Hessian of its own loss with the
levels below held fixed (their response is accounted for by their own hop on the
path).

Cost per hop: one backward pass with ``create_graph`` for ``dg/dθ``, at most ``maxiter``
Hessian-vector products (double-backward passes), one mixed vector-Jacobian product.
Memory: one double-backward graph of a single lower step, independent of the number of
lower steps ``K``.

``cg_warm`` is RM-MetaL's Subroutine 1: the CG solve starts from the previous outer
step's solution ``v_{t-1}`` (kept in ``curr.method_state``, checkpointed) instead of 0,
so a few iterations per outer step track the slowly moving solution.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .common import deliver, lower_gradient, mixed_vjp
from .linear_solve import conjugate_gradient

CG_DEFAULTS = {"maxiter": 20, "tol": 1e-6, "damping": 0.0, "blockwise": False}


def _solve(vector: list[Tensor], curr: Any, prev: Any, sync: bool, *, warm: bool) -> list[Tensor] | None:
    opts = {**CG_DEFAULTS, **curr.hypergrad_options}
    params, grad_g = lower_gradient(curr)

    def hvp(v: list[Tensor]) -> list[Tensor]:
        out = torch.autograd.grad(grad_g, params, grad_outputs=v, retain_graph=True, allow_unused=True)
        return [torch.zeros_like(v_i) if h is None else h for h, v_i in zip(out, v)]

    x0 = curr.method_state.get("cg_solution") if warm else None
    if x0 is not None and [t.shape for t in x0] != [t.shape for t in vector]:
        x0 = None
    result = conjugate_gradient(
        hvp,
        vector,
        x0=x0,
        damping=float(opts["damping"]),
        tol=float(opts["tol"]),
        maxiter=int(opts["maxiter"]),
        blockwise=bool(opts["blockwise"]),
    )
    if warm:
        curr.method_state["cg_solution"] = [t.detach() for t in result.x]
    curr.diagnostics.update(
        {"hg_cg_iterations": result.iterations, "hg_cg_residual": result.relative_residual}
    )
    return deliver(mixed_vjp(grad_g, result.x, prev), prev, sync)


def cg(vector: list[Tensor], curr: Any, prev: Any, sync: bool) -> list[Tensor] | None:
    """Implicit hop with a cold-started CG solve (tolerance stop, optional damping)."""
    return _solve(vector, curr, prev, sync, warm=False)


def cg_warm(vector: list[Tensor], curr: Any, prev: Any, sync: bool) -> list[Tensor] | None:
    """Implicit hop with the CG solve warm-started from the previous outer step (RM-MetaL)."""
    return _solve(vector, curr, prev, sync, warm=True)
