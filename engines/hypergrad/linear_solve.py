"""Conjugate gradient for the linear systems of implicit differentiation.

A small pure function in the style of TorchOpt's ``solve_cg``: vectors are lists of
tensors (one per parameter), the matrix is a callable ``matvec``. Unlike Betty
0.2.1's ``cg`` it builds each new direction from the *new* residual, stops on a
relative-residual tolerance, supports damping ``(A + damping I) x = b`` and a warm
start ``x0``, and reports the residual it reached.

With ``blockwise=True`` the leading dimension of every tensor indexes independent
systems (e.g. one linear head per task): step sizes and stopping are then per
block, exactly as running CG separately on each block, but batched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["CGResult", "conjugate_gradient"]

Vector = Sequence[Tensor]


@dataclass
class CGResult:
    """Solution and diagnostics of :func:`conjugate_gradient`.

    Attributes:
        x: the solution, same structure as ``b``.
        iterations: matrix-vector products performed.
        relative_residual: ``max_blocks ||b - (A + damping I) x|| / ||b||`` at exit.
        converged: whether every block met the tolerance.
    """

    x: list[Tensor]
    iterations: int
    relative_residual: float
    converged: bool


def _dot(a: Vector, b: Vector, blockwise: bool) -> Tensor:
    """Inner product; ``[B]`` per-block values when ``blockwise`` else a 0-d tensor."""
    if blockwise:
        return sum((x * y).flatten(1).sum(1) for x, y in zip(a, b))
    return sum((x * y).sum() for x, y in zip(a, b))


def _scale(s: Tensor, t: Tensor, blockwise: bool) -> Tensor:
    return s.view(-1, *([1] * (t.dim() - 1))) * t if blockwise else s * t


def conjugate_gradient(
    matvec: Callable[[list[Tensor]], Sequence[Tensor]],
    b: Vector,
    *,
    x0: Vector | None = None,
    damping: float = 0.0,
    tol: float = 1e-6,
    maxiter: int = 20,
    blockwise: bool = False,
) -> CGResult:
    """Solve ``(A + damping I) x = b`` for symmetric positive-definite ``A``.

    Args:
        matvec: ``v -> A v`` (e.g. a Hessian-vector product).
        b: right-hand side, a list of tensors.
        x0: initial guess (warm start); zeros when None.
        damping: Tikhonov term added to ``A``; makes semi-definite Hessians solvable.
        tol: stop when ``||r|| <= tol * ||b||`` (per block when ``blockwise``).
        maxiter: at most this many matrix-vector products.
        blockwise: treat the leading dimension as independent systems.

    Returns:
        A :class:`CGResult`. Directions with non-positive curvature (``p^T A p <= 1e-12 p^T p``)
        stop their block (the current iterate is kept) instead of dividing by it.

    Example:
        >>> A = torch.tensor([[3.0, 1.0], [1.0, 2.0]])
        >>> res = conjugate_gradient(lambda v: [A @ v[0]], [torch.tensor([1.0, 0.0])], tol=1e-10)
        >>> torch.allclose(A @ res.x[0], torch.tensor([1.0, 0.0]), atol=1e-6)
        True
    """

    def apply(v: list[Tensor]) -> list[Tensor]:
        av = [t.detach() for t in matvec(v)]
        if damping:
            av = [a + damping * t for a, t in zip(av, v)]
        return av

    b = [t.detach() for t in b]
    if x0 is None:
        x = [torch.zeros_like(t) for t in b]
        r = [t.clone() for t in b]
        iterations = 0
    else:
        x = [t.detach().clone() for t in x0]
        r = [bi - ai for bi, ai in zip(b, apply(x))]
        iterations = 1
    p = [t.clone() for t in r]
    b_norm = _dot(b, b, blockwise).sqrt()
    threshold = tol * torch.where(b_norm > 0, b_norm, torch.ones_like(b_norm))
    rs = _dot(r, r, blockwise)
    active = rs.sqrt() > threshold

    while iterations < maxiter and bool(active.any()):
        ap = apply(p)
        curvature = _dot(p, ap, blockwise)
        # stop a block on non-positive (or numerically vanishing) curvature instead of dividing by it
        active = active & (curvature > 1e-12 * _dot(p, p, blockwise))
        step = torch.where(active, rs / torch.where(active, curvature, torch.ones_like(curvature)), 0.0)
        x = [xi + _scale(step, pi, blockwise) for xi, pi in zip(x, p)]
        r = [ri - _scale(step, api, blockwise) for ri, api in zip(r, ap)]
        rs_new = _dot(r, r, blockwise)
        beta = torch.where(active, rs_new / torch.where(rs > 0, rs, torch.ones_like(rs)), 0.0)
        p = [ri + _scale(beta, pi, blockwise) for ri, pi in zip(r, p)]  # new residual, not the old one
        rs = torch.where(active, rs_new, rs)
        active = active & (rs.sqrt() > threshold)
        iterations += 1

    rel = rs.sqrt() / torch.where(b_norm > 0, b_norm, torch.ones_like(b_norm))
    rel_max = float(rel.max()) if rel.dim() else float(rel)
    return CGResult(x=x, iterations=iterations, relative_residual=rel_max, converged=rel_max <= tol)
