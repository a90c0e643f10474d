"""Krylov solvers for the linear systems of implicit differentiation: CG and MINRES.

Small pure functions in the style of TorchOpt's ``solve_cg``: vectors are lists of tensors
(one per parameter), the matrix is a callable ``matvec``. Both solve ``(A + damping I) x = b``
from an optional warm start ``x0``, stop on a relative-residual tolerance and report the
residual they reached and the matrix-vector products they did.

* :func:`conjugate_gradient` — for symmetric positive (semi-)definite ``A`` (convex lower
  levels, Gauss-Newton curvature). Unlike Betty 0.2.1's ``cg`` it builds each new direction
  from the *new* residual. It reports the smallest Rayleigh quotient ``p^T A p / p^T p`` it met,
  so a caller can tell that ``A`` was not positive definite.
* :func:`minres` — for symmetric *indefinite* ``A`` (the Hessian of a non-convex lower level):
  Paige & Saunders' MINRES minimises the residual over the Krylov space, so the residual never
  grows even when CG would break down on negative curvature.

With ``blockwise=True`` the leading dimension of every tensor indexes independent systems
(e.g. one linear head per task): step sizes and stopping are then per block, exactly as
solving each block separately, but batched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["CGResult", "conjugate_gradient", "minres"]

Vector = Sequence[Tensor]


@dataclass
class CGResult:
    """Solution and diagnostics of :func:`conjugate_gradient`.

    Attributes:
        x: the solution, same structure as ``b``.
        iterations: matrix-vector products performed (including the one a warm start needs).
        relative_residual: ``max_blocks ||b - (A + damping I) x|| / ||b||`` at exit.
        converged: whether every block met the tolerance.
        min_curvature: the smallest Rayleigh quotient ``p^T (A + damping I) p / p^T p`` met
            (CG only; a value <= 0 means the system is not positive definite).
        max_curvature: the largest Rayleigh quotient met (CG only; a lower bound of ``||A + damping I||``).
        initial_relative_residual: ``||b - A x0|| / ||b||`` of the given starting point (1 for a cold start).
        restarted: blocks whose warm start was worse than zero and were restarted from zero
            (with ``cold_if_worse``).
        best: the iterate with the smallest residual met, per block (CG only; None otherwise).
        image: ``L x`` for the linear map ``L`` of the ``image`` argument (CG only), else None.
        best_image: ``L best`` likewise.
    """

    x: list[Tensor]
    iterations: int
    relative_residual: float
    converged: bool
    min_curvature: float = float("inf")
    max_curvature: float = 0.0
    initial_relative_residual: float = 1.0
    restarted: int = 0
    best: list[Tensor] | None = None
    image: list[Tensor] | None = None
    best_image: list[Tensor] | None = None


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
    cold_if_worse: bool = False,
    min_curvature_ratio: float = 0.0,
    image: Callable[[Sequence[Tensor]], list[Tensor] | None] | None = None,
) -> CGResult:
    """Solve ``(A + damping I) x = b`` for symmetric positive-definite ``A``.

    Args:
        matvec: ``v -> A v`` (e.g. a Hessian-vector product).
        b: right-hand side, a list of tensors.
        x0: initial guess (warm start); zeros when None.
        damping: Tikhonov term added to ``A``; makes semi-definite Hessians solvable.
        tol: stop when ``||r|| <= tol * ||b||`` (per block when ``blockwise``).
        maxiter: at most this many matrix-vector products (besides the one a warm start needs).
        blockwise: treat the leading dimension as independent systems.
        cold_if_worse: a block whose warm start has a larger residual than zero (``||b - A x0|| > ||b||``)
            starts from zero instead (no extra product; counted in ``restarted``).
        min_curvature_ratio: a direction whose Rayleigh quotient is at most this fraction of the largest
            one met counts as non-positive curvature (nearly singular ``A``, e.g. a Gauss-Newton matrix
            of rank below the parameter count, where CG steps would grow without bound); 0 disables it.
        image: ``v -> L v`` for a linear map ``L`` that ``matvec`` applies on its way (a Gauss-Newton
            product ``Jᵀ H J v`` forms ``J v``), called right after ``matvec(v)`` and returning None when
            it has no image of that ``v``. CG then carries ``L x`` along with ``x`` (``L x_k = L x_{k-1}
            + α_k L p_k``), so a caller needing ``L x`` at the end saves one application of ``L``.
            Not with ``blockwise``.

    Returns:
        A :class:`CGResult`. Directions with non-positive curvature (``p^T A p <= 1e-12 p^T p``)
        stop their block instead of dividing by it; the warm start's residual costs one extra
        product, which is counted but does not take one of ``maxiter``. ``x`` is the last iterate
        (the best in the ``A``-norm of the error when ``A`` is positive definite), ``best`` the one
        with the smallest residual (safer to go on from once ``A`` turned out singular or indefinite:
        CG steps along nearly singular directions can make the iterate explode).

    Example:
        >>> A = torch.tensor([[3.0, 1.0], [1.0, 2.0]])
        >>> res = conjugate_gradient(lambda v: [A @ v[0]], [torch.tensor([1.0, 0.0])], tol=1e-10)
        >>> torch.allclose(A @ res.x[0], torch.tensor([1.0, 0.0]), atol=1e-6)
        True
    """

    if not blockwise and _flattenable(b, x0):
        return _flat_conjugate_gradient(
            matvec,
            b,
            x0=x0,
            damping=damping,
            tol=tol,
            maxiter=maxiter,
            cold_if_worse=cold_if_worse,
            min_curvature_ratio=min_curvature_ratio,
            image=image,
        )
    apply = _damped(matvec, damping)

    b = [t.detach() for t in b]
    track = image is not None and not blockwise
    # x_image is L x: None stands for zero at a cold start; dropped (never wrong) when an image is missing
    x, r, products, initial, restarted, x_image = _start(
        apply, b, x0, blockwise, cold_if_worse, image if track else None
    )
    track = track and (x0 is None or x_image is not None)
    p = [t.clone() for t in r]
    b_norm = _dot(b, b, blockwise).sqrt()
    safe_b = torch.where(b_norm > 0, b_norm, torch.ones_like(b_norm))
    threshold = tol * safe_b
    rs = _dot(r, r, blockwise)
    active = rs.sqrt() > threshold
    min_curvature, max_curvature = float("inf"), 0.0
    iterations = 0
    best_rs, x_best, best_image = rs, x, x_image

    while iterations < maxiter and bool(active.any()):
        ap = apply(p)
        p_image = image(p) if track else None
        track = p_image is not None
        curvature = _dot(p, ap, blockwise)
        pp = _dot(p, p, blockwise)
        quotient = curvature / pp.clamp_min(1e-300)
        min_curvature = min(min_curvature, _min(torch.where(active, quotient, torch.inf)))
        max_curvature = max(max_curvature, _max(torch.where(active, quotient, -torch.inf)))
        # stop a block on non-positive (or numerically vanishing) curvature instead of dividing by it
        active = active & (curvature > 1e-12 * pp) & (quotient > min_curvature_ratio * max_curvature)
        step = torch.where(active, rs / torch.where(active, curvature, torch.ones_like(curvature)), 0.0)
        x = [xi + _scale(step, pi, blockwise) for xi, pi in zip(x, p)]
        if track:
            steps = [step * t for t in p_image]
            x_image = steps if x_image is None else [xi + t for xi, t in zip(x_image, steps)]
        r = [ri - _scale(step, api, blockwise) for ri, api in zip(r, ap)]
        rs_new = _dot(r, r, blockwise)
        beta = torch.where(active, rs_new / torch.where(rs > 0, rs, torch.ones_like(rs)), 0.0)
        p = [ri + _scale(beta, pi, blockwise) for ri, pi in zip(r, p)]  # new residual, not the old one
        rs = torch.where(active, rs_new, rs)
        better = rs < best_rs
        if not blockwise:  # iterates are new tensors every iteration: keeping a reference is enough
            if bool(better):
                x_best, best_rs, best_image = x, rs, x_image
        elif bool(better.any()):
            x_best = [torch.where(_expand(better, xi, blockwise), xi, bi) for xi, bi in zip(x, x_best)]
            best_rs = torch.where(better, rs, best_rs)
        active = active & (rs.sqrt() > threshold)
        iterations += 1

    rel_max = _max(rs.sqrt() / safe_b)
    return CGResult(
        x=x,
        best=x_best,
        iterations=iterations + products,
        relative_residual=rel_max,
        converged=rel_max <= tol,
        min_curvature=min_curvature,
        max_curvature=max_curvature,
        initial_relative_residual=initial,
        restarted=restarted,
        image=x_image if track else None,
        best_image=best_image if track else None,
    )


def _flattenable(b: Vector, x0: Vector | None) -> bool:
    """Whether ``b`` (and ``x0``) are several tensors of one dtype and device, so CG can run on one flat vector."""
    tensors = [*b, *(x0 or [])]
    return len(b) > 1 and len({(t.dtype, t.device) for t in tensors}) == 1


def _flat_conjugate_gradient(
    matvec: Callable[[list[Tensor]], Sequence[Tensor]],
    b: Vector,
    *,
    x0: Vector | None,
    image: Callable[[Sequence[Tensor]], list[Tensor] | None] | None,
    **options: float | int | bool,
) -> CGResult:
    """:func:`conjugate_gradient` on the concatenation of the tensors of ``b``: every vector operation of an
    iteration is one kernel instead of one per parameter tensor (a network has dozens). ``matvec`` and
    ``image`` still see lists of tensors shaped like ``b``, the same list object for one direction."""
    shapes = [t.shape for t in b]
    sizes = [t.numel() for t in b]

    def flat(ts: Sequence[Tensor]) -> Tensor:
        return torch.cat([t.detach().reshape(-1) for t in ts])

    def split(v: Tensor) -> list[Tensor]:
        return [c.view(s) for c, s in zip(v.split(sizes), shapes)]

    last: list[tuple[Tensor, list[Tensor]]] = []  # the flat direction last multiplied, as the list matvec saw

    def listed(v: Tensor) -> list[Tensor]:
        if last and last[0][0] is v:
            return last[0][1]
        last[:] = [(v, split(v))]
        return last[0][1]

    def flat_matvec(v: list[Tensor]) -> list[Tensor]:
        return [flat(matvec(listed(v[0])))]

    flat_image = None if image is None else (lambda v: image(listed(v[0])))
    res = conjugate_gradient(flat_matvec, [flat(b)], x0=None if x0 is None else [flat(x0)], image=flat_image, **options)
    res.x = split(res.x[0])
    res.best = None if res.best is None else split(res.best[0])
    return res


def minres(
    matvec: Callable[[list[Tensor]], Sequence[Tensor]],
    b: Vector,
    *,
    x0: Vector | None = None,
    damping: float = 0.0,
    tol: float = 1e-6,
    maxiter: int = 20,
    blockwise: bool = False,
    cold_if_worse: bool = False,
) -> CGResult:
    """Solve ``(A + damping I) x = b`` for symmetric, possibly indefinite ``A`` (Paige & Saunders 1975).

    Each iteration extends a Lanczos basis by one product and updates ``x`` so that the residual
    is the smallest over the Krylov space: the residual norm never increases, and there is no
    breakdown on negative curvature. Arguments and result as :func:`conjugate_gradient`
    (``min_curvature`` is not measured).

    Example:
        >>> A = torch.tensor([[2.0, 0.0], [0.0, -1.0]])        # indefinite
        >>> res = minres(lambda v: [A @ v[0]], [torch.tensor([1.0, 1.0])], tol=1e-10)
        >>> torch.allclose(res.x[0], torch.tensor([0.5, -1.0]), atol=1e-6)
        True
    """

    apply = _damped(matvec, damping)

    def scaled(s: Tensor, t: Tensor) -> Tensor:
        return _scale(s, t, blockwise)

    b = [t.detach() for t in b]
    x, r, products, initial, restarted, _ = _start(apply, b, x0, blockwise, cold_if_worse)
    b_norm = _dot(b, b, blockwise).sqrt()
    safe_b = torch.where(b_norm > 0, b_norm, torch.ones_like(b_norm))
    beta = _dot(r, r, blockwise).sqrt()
    eta = beta.clone()
    v_prev = [torch.zeros_like(t) for t in r]
    v = [scaled(1 / beta.clamp_min(1e-300), t) for t in r]
    w_prev2 = [torch.zeros_like(t) for t in r]
    w_prev = [torch.zeros_like(t) for t in r]
    one, zero = torch.ones_like(beta), torch.zeros_like(beta)
    c_prev2, c_prev, s_prev2, s_prev = one, one, zero, zero
    active = beta > tol * safe_b
    iterations = 0
    while iterations < maxiter and bool(active.any()):
        av = apply(v)
        alpha = _dot(v, av, blockwise)
        v_next = [a - scaled(alpha, vi) - scaled(beta, vp) for a, vi, vp in zip(av, v, v_prev)]
        beta_next = _dot(v_next, v_next, blockwise).sqrt()
        delta = c_prev * alpha - c_prev2 * s_prev * beta
        rho1 = torch.sqrt(delta**2 + beta_next**2)
        rho2 = s_prev * alpha + c_prev2 * c_prev * beta
        rho3 = s_prev2 * beta
        ok = active & (rho1 > 0)
        safe_rho1 = torch.where(ok, rho1, one)
        c, s = torch.where(ok, delta / safe_rho1, c_prev), torch.where(ok, beta_next / safe_rho1, zero)
        w = [scaled(1 / safe_rho1, vi - scaled(rho3, w2) - scaled(rho2, w1)) for vi, w2, w1 in zip(v, w_prev2, w_prev)]
        x = [xi + scaled(torch.where(ok, c * eta, zero), wi) for xi, wi in zip(x, w)]
        eta = torch.where(ok, -s * eta, eta)
        v_prev, v = v, [scaled(1 / beta_next.clamp_min(1e-300), t) for t in v_next]
        w_prev2, w_prev = w_prev, w
        c_prev2, c_prev, s_prev2, s_prev, beta = c_prev, c, s_prev, s, beta_next
        active = ok & (eta.abs() > tol * safe_b) & (beta_next > 0)
        iterations += 1
    # the recurrence's |eta| is the residual in exact arithmetic; report the true one (one more product)
    true_r = [bi - ai for bi, ai in zip(b, apply(x))]
    rel_max = _max(_dot(true_r, true_r, blockwise).sqrt() / safe_b)
    return CGResult(
        x=x,
        iterations=iterations + products + 1,
        relative_residual=rel_max,
        converged=rel_max <= tol,
        initial_relative_residual=initial,
        restarted=restarted,
    )


def _damped(
    matvec: Callable[[list[Tensor]], Sequence[Tensor]], damping: float
) -> Callable[[list[Tensor]], list[Tensor]]:
    """``v -> (A + damping I) v`` with the product detached (the solvers need values, not graphs)."""

    def apply(v: list[Tensor]) -> list[Tensor]:
        av = [t.detach() for t in matvec(v)]
        return [a + damping * t for a, t in zip(av, v)] if damping else av

    return apply


def _start(
    apply: Callable[[list[Tensor]], list[Tensor]],
    b: list[Tensor],
    x0: Vector | None,
    blockwise: bool,
    cold_if_worse: bool,
    image: Callable[[Sequence[Tensor]], list[Tensor] | None] | None = None,
) -> tuple[list[Tensor], list[Tensor], int, float, int, list[Tensor] | None]:
    """Initial iterate and residual, the products spent on them (1 for a warm start, else 0), the warm
    start's relative residual, how many blocks fell back to zero because it was worse, and the
    iterate's ``image`` (None at a cold start, without ``image``, or when it has none; not blockwise)."""
    if x0 is None:
        return [torch.zeros_like(t) for t in b], [t.clone() for t in b], 0, 1.0, 0, None
    x = [t.detach().clone() for t in x0]
    r = [bi - ai for bi, ai in zip(b, apply(x))]
    x_image = image(x) if image is not None else None
    r_norm, b_norm = _dot(r, r, blockwise).sqrt(), _dot(b, b, blockwise).sqrt()
    initial = _max(r_norm / torch.where(b_norm > 0, b_norm, torch.ones_like(b_norm)))
    if not cold_if_worse:
        return x, r, 1, initial, 0, x_image
    worse = r_norm > b_norm
    x = [torch.where(_expand(worse, t, blockwise), torch.zeros_like(t), t) for t in x]
    r = [torch.where(_expand(worse, ri, blockwise), bi, ri) for ri, bi in zip(r, b)]
    if x_image is not None and bool(worse.all()):
        x_image = [torch.zeros_like(t) for t in x_image]
    elif bool(worse.any()):
        x_image = None
    return x, r, 1, initial, int(worse.sum()), x_image


def _expand(mask: Tensor, t: Tensor, blockwise: bool) -> Tensor:
    return mask.view(-1, *([1] * (t.dim() - 1))) if blockwise else mask


def _max(t: Tensor) -> float:
    return float(t.max()) if t.dim() else float(t)


def _min(t: Tensor) -> float:
    return float(t.min()) if t.dim() else float(t)
