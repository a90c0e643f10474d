"""Multilevel problems whose hypergradients are known exactly, for checking methods.

Each builder returns a :class:`ClosedForm`: a ready graph whose top level's first
hypergradient is captured after the lower levels have converged, and the exact
hypergradient computed by a dense float64 solve. Used by the tests and by
``benchmarks/hypergrad_accuracy.py``.

Problems (``n``: dimension):

* ``ridge`` — weight-decay HPO of ridge regression, one decay per feature:
  lower ``g(w, λ) = ||X w - y||²/2n + Σ_j exp(λ_j) w_j²/2``, upper the validation MSE.
* ``quadratic`` — ``g(w, λ) = wᵀHw/2 - wᵀCλ``, ``f = ||w - t||²/2 + λᵀDλ/2``;
  ``dw*/dλ = H⁻¹C`` in closed form (``cond`` sets H's condition number).
* ``three_level`` — E2EAug's shape: ``z*(λ)`` (bottom, λ enters its loss), ``w*(z*, λ)``
  (middle, λ enters its loss too), ``f(w*)`` on top.
* ``two_uppers`` — DuMeta++'s shape: one lower shared by two uppers, each with its own loss.
* ``maml`` — a start map ``φ_0 = θ`` and K gradient steps on a quadratic: the hypergradient
  is ``((I - ηH)^K)ᵀ (φ_K - b)``; only unrolled and first-order methods apply.
* :func:`dual_meta` — DuMeta++'s shape with a method per edge: a lower level restarted from
  ``ψ`` (upper ``init``) whose loss reads ``θ`` (upper ``encoder``); ``encoder`` differentiates
  through it with ``exact``, ``init`` with ``first_order``; both analytic values follow from the
  same inner trajectory. With ``coupling`` the loss of ``init`` also reads ``θ`` (DuMeta++'s head
  initialisation is scored through the encoder), so that the two uppers' order matters unless they
  step simultaneously; ``upper_order="sequential"`` gives the second its value at the first's
  updated parameters.
* :func:`chain_through_pair` — a top level whose loss reads the *lowest* level of a bilevel pair
  (``weights`` below ``hyper``) and which feeds the middle one: the path
  ``top <- weights <- hyper`` declared with ``nest(lower=hyper, upper=top, via=weights)``.
* :func:`penalty_minimiser` / :func:`bilevel_minimiser` — the penalty method's joint minimiser
  on the quadratic problem, and the bilevel solution it tends to as λ grows.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .graph import Graph
from .level import Level
from .run import Runner

__all__ = [
    "PROBLEMS",
    "ClosedForm",
    "bilevel_minimiser",
    "build",
    "capture",
    "chain_through_pair",
    "dual_meta",
    "measure",
    "penalty_minimiser",
    "quadratic_data",
]

DTYPE = torch.float64


class Vector(nn.Module):
    """A module holding one parameter vector."""

    def __init__(self, value: Tensor):
        super().__init__()
        self.value = nn.Parameter(value.clone().to(DTYPE))

    def forward(self) -> Tensor:
        return self.value


@dataclass
class ClosedForm:
    """A graph plus the exact hypergradient of its top level(s).

    ``exact[name]()`` returns the exact hypergradient of upper level ``name`` at the current
    upper parameters; ``steps`` global steps bring the lower levels to convergence and trigger
    the uppers once.
    """

    name: str
    graph: Graph
    exact: dict[str, Callable[[], Tensor]]
    steps: int
    settings: dict[str, Any] = field(default_factory=dict)


def _spd(n: int, cond: float, gen: torch.Generator) -> Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DTYPE))
    eig = torch.logspace(0, torch.log10(torch.tensor(cond)).item(), n, dtype=DTYPE) / cond**0.5
    return q @ torch.diag(eig) @ q.T


def _sgd(lr: float) -> Callable:
    return functools.partial(torch.optim.SGD, lr=lr)


def _lower_steps(H: Tensor) -> tuple[float, int]:
    """Step size 1/L and enough steps to converge to ~1e-10 on a quadratic with Hessian H."""
    eig = torch.linalg.eigvalsh(H)
    lr = 1.0 / float(eig.max())
    rate = 1 - float(eig.min()) * lr
    return lr, int(min(5000, max(50, torch.log(torch.tensor(1e-10)) / torch.log(torch.tensor(rate)))))


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


def ridge(method: str, options: dict | None = None, *, unroll: int = 20, n: int = 20, seed: int = 0) -> ClosedForm:
    gen = torch.Generator().manual_seed(seed)
    samples = 4 * n
    X_tr, X_val = (torch.randn(samples, n, generator=gen, dtype=DTYPE) for _ in range(2))
    w_true = torch.randn(n, generator=gen, dtype=DTYPE)
    y_tr = X_tr @ w_true + 0.5 * torch.randn(samples, generator=gen, dtype=DTYPE)
    y_val = X_val @ w_true + 0.5 * torch.randn(samples, generator=gen, dtype=DTYPE)
    lam0 = 0.3 * torch.randn(n, generator=gen, dtype=DTYPE)
    A = X_tr.T @ X_tr / samples

    def inner_loss(level: Level, _: Any) -> Tensor:
        w, lam = level.module(), level.decay.module()
        return (X_tr @ w - y_tr).pow(2).sum() / (2 * samples) + (lam.exp() * w * w).sum() / 2

    def outer_loss(level: Level, _: Any) -> Tensor:
        return (X_val @ level.weights.module() - y_val).pow(2).sum() / (2 * samples)

    lr, needed = _lower_steps(A + torch.diag(lam0.exp()))
    warmup = _round_up(needed, unroll)
    inner = Level(
        "weights",
        Vector(torch.zeros(n)),
        _sgd(lr),
        inner_loss,
        hypergrad=method,
        unroll=unroll,
        options=options,
        warmup=warmup,
    )
    outer = Level("decay", Vector(lam0), _sgd(0.0), outer_loss)
    g = Graph("ridge")
    g.add(inner, outer)
    g.bilevel(lower=inner, upper=outer)

    def exact() -> Tensor:
        lam = outer.module.value.detach().clone().requires_grad_(True)
        w = torch.linalg.solve(A + torch.diag(lam.exp()), X_tr.T @ y_tr / samples)
        return torch.autograd.grad((X_val @ w - y_val).pow(2).sum() / (2 * samples), lam)[0]

    return ClosedForm("ridge", g, {"decay": exact}, warmup + unroll, {"n": n, "unroll": unroll, "lower_lr": lr})


def quadratic_data(n: int = 20, p: int = 8, cond: float = 4.0, seed: int = 0) -> dict[str, Tensor]:
    """``H`` (SPD, condition ``cond``), ``C``, ``D``, ``t`` and a start ``lam0`` of the quadratic problem."""
    gen = torch.Generator().manual_seed(seed)
    H = _spd(n, cond, gen)
    C = torch.randn(n, p, generator=gen, dtype=DTYPE) / n**0.5
    D = torch.diag(torch.rand(p, generator=gen, dtype=DTYPE))
    t = torch.randn(n, generator=gen, dtype=DTYPE)
    lam0 = torch.randn(p, generator=gen, dtype=DTYPE)
    return {"H": H, "C": C, "D": D, "t": t, "lam0": lam0}


def quadratic(
    method: str,
    options: dict | None = None,
    *,
    unroll: int = 20,
    n: int = 20,
    p: int = 8,
    cond: float = 4.0,
    seed: int = 0,
    lower_optimizer: Callable | None = None,
    upper_lr: float = 0.0,
) -> ClosedForm:
    data = quadratic_data(n, p, cond, seed)
    H, C, D, t, lam0 = data["H"], data["C"], data["D"], data["t"], data["lam0"]

    def inner_loss(level: Level, _: Any) -> Tensor:
        w = level.module()
        return w @ H @ w / 2 - w @ (C @ level.hyper.module())

    def outer_loss(level: Level, _: Any) -> Tensor:
        lam = level.module()
        return (level.solution.module() - t).pow(2).sum() / 2 + lam @ D @ lam / 2

    lr, needed = _lower_steps(H)
    warmup = _round_up(needed, unroll)
    inner = Level(
        "solution",
        Vector(torch.zeros(n)),
        lower_optimizer or _sgd(lr),
        inner_loss,
        hypergrad=method,
        unroll=unroll,
        options=options,
        warmup=warmup,
    )
    outer = Level("hyper", Vector(lam0), _sgd(upper_lr), outer_loss)
    g = Graph(f"quadratic(cond={cond:g})")
    g.add(inner, outer)
    g.bilevel(lower=inner, upper=outer)

    def exact() -> Tensor:
        lam = outer.module.value.detach()
        w = torch.linalg.solve(H, C @ lam)
        return C.T @ torch.linalg.solve(H, w - t) + D @ lam

    name = "quadratic" if cond <= 10 else "quadratic_ill"
    return ClosedForm(name, g, {"hyper": exact}, warmup + unroll, {"n": n, "p": p, "cond": cond, "unroll": unroll})


def three_level(
    method: str,
    options: dict | None = None,
    *,
    unroll: int = 10,
    n: int = 12,
    seed: int = 0,
    lower_optimizer: Callable | None = None,
    cond: float = 4.0,
) -> ClosedForm:
    """``z* = H1⁻¹C1λ``; ``w* = H2⁻¹(Bz* + C2λ)``; ``f = ||w* - t||²/2 + ρ||λ||²/2`` (``cond``: H1's and H2's
    condition number)."""
    gen = torch.Generator().manual_seed(seed)
    H1, H2 = _spd(n, cond, gen), _spd(n, cond, gen)
    B = torch.randn(n, n, generator=gen, dtype=DTYPE) / n**0.5
    C1, C2 = (torch.randn(n, n, generator=gen, dtype=DTYPE) / n**0.5 for _ in range(2))
    t = torch.randn(n, generator=gen, dtype=DTYPE)
    rho = 0.1
    lam0 = torch.randn(n, generator=gen, dtype=DTYPE)

    def bottom_loss(level: Level, _: Any) -> Tensor:
        z = level.module()
        return z @ H1 @ z / 2 - z @ (C1 @ level.top.module())

    def middle_loss(level: Level, _: Any) -> Tensor:
        w = level.module()
        return w @ H2 @ w / 2 - w @ (B @ level.bottom.module() + C2 @ level.top.module())

    def top_loss(level: Level, _: Any) -> Tensor:
        lam = level.module()
        return (level.middle.module() - t).pow(2).sum() / 2 + rho * lam @ lam / 2

    lr1, need1 = _lower_steps(H1)
    lr2, need2 = _lower_steps(H2)
    # the middle level moves once per `unroll` bottom steps; it converges in need2 of its own steps
    warm_mid = _round_up(need2, unroll)
    warm_bottom = _round_up(need1, unroll)
    bottom = Level(
        "bottom",
        Vector(torch.zeros(n)),
        lower_optimizer or _sgd(lr1),
        bottom_loss,
        hypergrad=method,
        unroll=unroll,
        options=options,
        warmup=warm_bottom,
    )
    middle = Level(
        "middle",
        Vector(torch.zeros(n)),
        lower_optimizer or _sgd(lr2),
        middle_loss,
        hypergrad=method,
        unroll=unroll,
        options=options,
        warmup=warm_mid,
    )
    top = Level("top", Vector(lam0), _sgd(0.0), top_loss)
    g = Graph("three_level")
    g.add(bottom, middle, top)
    g.nest(lower=bottom, upper=middle)
    g.nest(lower=middle, upper=top)
    g.feeds(top, into=[bottom, middle])

    def exact() -> Tensor:
        lam = top.module.value.detach()
        J = torch.linalg.solve(H2, B @ torch.linalg.solve(H1, C1) + C2)
        return J.T @ (J @ lam - t) + rho * lam

    steps = warm_bottom + (warm_mid + unroll) * unroll  # the middle level steps once per `unroll` bottom steps
    return ClosedForm("three_level", g, {"top": exact}, steps, {"n": n, "unroll": unroll})


def two_uppers(
    method: str, options: dict | None = None, *, unroll: int = 20, n: int = 16, p: int = 6, seed: int = 0
) -> ClosedForm:
    """``g(w; λ1, λ2) = wᵀHw/2 - wᵀ(C1λ1 + C2λ2)``; ``f1 = ||w - t1||²/2``, ``f2 = ||Mw - t2||²/2``."""
    gen = torch.Generator().manual_seed(seed)
    H = _spd(n, 4.0, gen)
    C1, C2 = (torch.randn(n, p, generator=gen, dtype=DTYPE) / n**0.5 for _ in range(2))
    M = torch.randn(n, n, generator=gen, dtype=DTYPE) / n**0.5
    t1, t2 = torch.randn(n, generator=gen, dtype=DTYPE), torch.randn(n, generator=gen, dtype=DTYPE)
    l1, l2 = torch.randn(p, generator=gen, dtype=DTYPE), torch.randn(p, generator=gen, dtype=DTYPE)

    def inner_loss(level: Level, _: Any) -> Tensor:
        w = level.module()
        return w @ H @ w / 2 - w @ (C1 @ level.first.module() + C2 @ level.second.module())

    lr, needed = _lower_steps(H)
    warmup = _round_up(needed, unroll)
    inner = Level(
        "shared",
        Vector(torch.zeros(n)),
        _sgd(lr),
        inner_loss,
        hypergrad=method,
        unroll=unroll,
        options=options,
        warmup=warmup,
    )
    first = Level("first", Vector(l1), _sgd(0.0), lambda lv, _: (lv.shared.module() - t1).pow(2).sum() / 2)
    second = Level("second", Vector(l2), _sgd(0.0), lambda lv, _: (M @ lv.shared.module() - t2).pow(2).sum() / 2)
    g = Graph("two_uppers")
    g.add(inner, first, second)
    g.bilevel(lower=inner, upper=first)
    g.bilevel(lower=inner, upper=second)

    def w_star() -> Tensor:
        return torch.linalg.solve(H, C1 @ first.module.value.detach() + C2 @ second.module.value.detach())

    return ClosedForm(
        "two_uppers",
        g,
        {
            "first": lambda: C1.T @ torch.linalg.solve(H, w_star() - t1),
            "second": lambda: C2.T @ torch.linalg.solve(H, M.T @ (M @ w_star() - t2)),
        },
        warmup + unroll,
        {"n": n, "p": p, "unroll": unroll},
    )


def maml(method: str, options: dict | None = None, *, unroll: int = 5, n: int = 10, seed: int = 0) -> ClosedForm:
    """Inner ``g(φ) = (φ-a)ᵀH(φ-a)/2`` from ``φ_0 = θ``; outer ``f = ||φ_K - b||²/2``."""
    gen = torch.Generator().manual_seed(seed)
    H = _spd(n, 4.0, gen)
    a, b = torch.randn(n, generator=gen, dtype=DTYPE), torch.randn(n, generator=gen, dtype=DTYPE)
    theta0 = torch.randn(n, generator=gen, dtype=DTYPE)
    lr = 0.5 / float(torch.linalg.eigvalsh(H).max())

    def inner_loss(level: Level, _: Any) -> Tensor:
        d = level.module() - a
        return d @ H @ d / 2

    inner = Level(
        "adapted",
        Vector(theta0),
        _sgd(lr),
        inner_loss,
        hypergrad=method,
        unroll=unroll,
        options=options,
        start=lambda lv: {"value": lv.meta.module()},
    )
    outer = Level("meta", Vector(theta0), _sgd(0.0), lambda lv, _: (lv.adapted.module() - b).pow(2).sum() / 2)
    g = Graph("maml")
    g.add(inner, outer)
    g.nest(lower=inner, upper=outer)
    g.feeds(outer, into=inner)  # θ enters the lower problem through its start map

    def exact() -> Tensor:
        theta = outer.module.value.detach()
        P = torch.linalg.matrix_power(torch.eye(n, dtype=DTYPE) - lr * H, unroll)
        phi_k = a + P @ (theta - a)
        return P.T @ (phi_k - b)

    return ClosedForm("maml", g, {"meta": exact}, unroll, {"n": n, "unroll": unroll, "inner_lr": lr})


def dual_meta(
    encoder_method: str = "exact",
    init_method: str = "first_order",
    *,
    unroll: int = 3,
    n: int = 8,
    p: int = 5,
    upper_lr: float = 0.05,
    seed: int = 0,
    swap_edges: bool = False,
    coupling: float = 0.0,
    upper_order: str | None = None,
) -> ClosedForm:
    """One lower level ``phi`` shared by two uppers with a method per edge (DuMeta++'s shape).

    ``phi`` restarts from ``psi`` (upper ``init``) and takes K SGD steps on
    ``g = (phi-a)ᵀH(phi-a)/2 - phiᵀCθ`` (θ: upper ``encoder``), so
    ``phi_K = P^K psi + Σ_{j<K} P^j η(Ha + Cθ)`` with ``P = I - ηH``.
    ``encoder``: ``f1 = ||phi_K - t1||²/2``, exact hypergradient ``(Σ_j P^j ηC)ᵀ(phi_K - t1)``;
    ``init``: ``f2 = ||M phi_K + c Eθ - t2||²/2`` (``c`` = ``coupling``), first-order (FOMAML)
    hypergradient ``Mᵀ(M phi_K + c Eθ - t2)``.
    Both uppers have non-zero learning rates, so a hypergradient computed after the other upper
    updated may differ; ``swap_edges`` declares the two edges in the other order. ``upper_order`` is
    the shared level's (None: the default, simultaneous); the analytic values follow it: sequentially,
    the second upper's value is taken at the first one's updated parameters (``phi_K``, the real
    iterate, is the same for both: the inner loop ran before either upper stepped).
    """
    gen = torch.Generator().manual_seed(seed)
    H = _spd(n, 4.0, gen)
    C = torch.randn(n, p, generator=gen, dtype=DTYPE) / n**0.5
    M = torch.randn(n, n, generator=gen, dtype=DTYPE) / n**0.5
    a, t1, t2 = (torch.randn(n, generator=gen, dtype=DTYPE) for _ in range(3))
    theta0, psi0 = torch.randn(p, generator=gen, dtype=DTYPE), torch.randn(n, generator=gen, dtype=DTYPE)
    E = coupling * torch.randn(n, p, generator=gen, dtype=DTYPE) / n**0.5
    eta = 0.5 / float(torch.linalg.eigvalsh(H).max())

    def inner_loss(level: Level, _: Any) -> Tensor:
        phi = level.module()
        return (phi - a) @ H @ (phi - a) / 2 - phi @ (C @ level.encoder.module())

    def init_loss(level: Level, _: Any) -> Tensor:
        return (M @ level.phi.module() + E @ level.encoder.module() - t2).pow(2).sum() / 2

    inner = Level(
        "phi",
        Vector(psi0),
        _sgd(eta),
        inner_loss,
        unroll=unroll,
        start=lambda lv: {"value": lv.init.module()},
        upper_order=upper_order,
    )
    encoder = Level("encoder", Vector(theta0), _sgd(upper_lr), lambda lv, _: (lv.phi.module() - t1).pow(2).sum() / 2)
    init = Level("init", Vector(psi0), _sgd(upper_lr), init_loss)
    g = Graph("dual_meta")
    g.add(inner, encoder, init)
    edges = [("encoder", encoder_method), ("init", init_method)]
    for upper, method in reversed(edges) if swap_edges else edges:
        g.bilevel(lower=inner, upper=upper, hypergrad=method)

    P = torch.eye(n, dtype=DTYPE) - eta * H
    powers = [torch.linalg.matrix_power(P, j) for j in range(unroll)]

    def phi_k(theta: Tensor, psi: Tensor) -> Tensor:
        return torch.linalg.matrix_power(P, unroll) @ psi + sum(Pj @ (eta * (H @ a + C @ theta)) for Pj in powers)

    phi_real = phi_k(theta0, psi0)  # the inner loop ran with the uppers' values before either updated
    J = sum(Pj @ (eta * C) for Pj in powers)

    def hypergradients() -> dict[str, Tensor]:
        """Both uppers' hypergradients in the order they step; sequentially, θ or ψ is updated in between.
        (The encoder's is ``Jᵀ(phi_K - t1)`` at any ψ: ``phi_K`` is linear in ψ, so ``dphi_K/dθ`` is not
        a function of it.)"""
        theta, psi, out = theta0, psi0, {}
        for name, _ in reversed(edges) if swap_edges else edges:
            if name == "encoder":
                out[name] = J.T @ (phi_real - t1)
            else:
                out[name] = M.T @ (M @ phi_real + E @ theta - t2)
            if upper_order == "sequential":
                if name == "encoder":
                    theta = theta - upper_lr * out[name]
                else:
                    psi = psi - upper_lr * out[name]
        return out

    def exact_encoder() -> Tensor:  # what exact on the encoder edge gives (the uppers' values of the inner loop)
        return J.T @ (phi_real - t1)

    def exact_init() -> Tensor:  # what exact on the init edge would give: (P^K)ᵀ Mᵀ(M phi_K + c Eθ - t2)
        return torch.linalg.matrix_power(P, unroll).T @ (M.T @ (M @ phi_real + E @ theta0 - t2))

    return ClosedForm(
        "dual_meta",
        g,
        {"encoder": lambda: hypergradients()["encoder"], "init": lambda: hypergradients()["init"]},
        unroll,
        {
            "n": n,
            "p": p,
            "unroll": unroll,
            "inner_lr": eta,
            "upper_lr": upper_lr,
            "unrolled": {"encoder": exact_encoder, "init": exact_init},
        },
    )


def chain_through_pair(
    method: str = "cg",
    options: dict | None = None,
    *,
    unroll: int = 4,
    n: int = 6,
    seed: int = 0,
) -> ClosedForm:
    """A top level that reads the lowest level of a bilevel pair and feeds the middle one.

    ``weights`` (θ): ``g = θᵀH1θ/2 - θᵀC1w``, so ``θ*(w) = H1⁻¹C1w``;
    ``hyper`` (w, a bilevel pair with θ): ``h = bᵀθ + wᵀH2w/2 - wᵀC2ρ`` — it reads θ* (its hypergradient
    through ``weights``) and ρ;
    ``top`` (ρ): ``f = ||θ - t||²/2 + r||ρ||²/2`` — it reads only the *lowest* level.

    ``dF/dρ = (H1⁻¹C1 H2⁻¹C2)ᵀ(θ* - t) + rρ`` with ``w* = H2⁻¹(C2ρ - C1ᵀH1⁻¹b)``: the path
    ``top <- weights <- hyper``, declared by ``nest(lower=hyper, upper=top, via=weights)``. (``h`` is
    linear in θ, so its curvature in w is H2 whether or not θ* is substituted: a hop through ``hyper``
    that differentiates ``h`` at fixed θ is exact.) ``method``/``options`` are both lower levels'.
    """
    gen = torch.Generator().manual_seed(seed)
    H1, H2 = _spd(n, 2.0, gen), _spd(n, 2.0, gen)
    C1, C2 = (torch.randn(n, n, generator=gen, dtype=DTYPE) / n**0.5 for _ in range(2))
    b, t = torch.randn(n, generator=gen, dtype=DTYPE), torch.randn(n, generator=gen, dtype=DTYPE)
    rho0 = torch.randn(n, generator=gen, dtype=DTYPE)
    r = 0.1

    def weights_loss(level: Level, _: Any) -> Tensor:
        theta = level.module()
        return theta @ H1 @ theta / 2 - theta @ (C1 @ level.hyper.module())

    def hyper_loss(level: Level, _: Any) -> Tensor:
        w = level.module()
        return b @ level.weights.module() + w @ H2 @ w / 2 - w @ (C2 @ level.top.module())

    def top_loss(level: Level, _: Any) -> Tensor:
        rho = level.module()
        return (level.weights.module() - t).pow(2).sum() / 2 + r * rho @ rho / 2

    lr1, need1 = _lower_steps(H1)
    lr2, need2 = _lower_steps(H2)
    warm_hyper = _round_up(need2, unroll)
    warm_weights = _round_up(need1, unroll)
    weights = Level(
        "weights",
        Vector(torch.zeros(n)),
        _sgd(lr1),
        weights_loss,
        hypergrad=method,
        unroll=unroll,
        options=options,
        warmup=warm_weights,
    )
    hyper = Level(
        "hyper",
        Vector(torch.zeros(n)),
        _sgd(lr2),
        hyper_loss,
        hypergrad=method,
        unroll=unroll,
        options=options,
        warmup=warm_hyper,
    )
    top = Level("top", Vector(rho0), _sgd(0.0), top_loss)
    g = Graph("chain_through_pair")
    g.add(weights, hyper, top)
    g.bilevel(lower=weights, upper=hyper)
    g.nest(lower=hyper, upper=top, via=weights)  # top reads hyper's solution through weights
    g.feeds(top, into=hyper)

    def exact() -> Tensor:
        rho = top.module.value.detach()
        w = torch.linalg.solve(H2, C2 @ rho - C1.T @ torch.linalg.solve(H1, b))
        theta = torch.linalg.solve(H1, C1 @ w)
        J = torch.linalg.solve(H1, C1 @ torch.linalg.solve(H2, C2))
        return J.T @ (theta - t) + r * rho

    # hyper converges in need2 of its steps, one per `unroll` steps of weights, while weights tracks it
    steps = warm_weights + (warm_hyper + 3 * need1 + unroll) * unroll
    return ClosedForm("chain_through_pair", g, {"top": exact}, steps, {"n": n, "unroll": unroll})


def penalty_minimiser(data: dict[str, Tensor], lam: float) -> tuple[Tensor, Tensor]:
    """Joint minimiser ``(w, λ)`` of ``f + lam/2 ||∇_w g||²`` on the quadratic problem
    (``g = wᵀHw/2 - wᵀCλ``, ``f = ||w - t||²/2 + λᵀDλ/2``): the linear system of its gradient."""
    H, C, D, t = data["H"], data["C"], data["D"], data["t"]
    n, p = C.shape
    A = torch.zeros(n + p, n + p, dtype=DTYPE)
    A[:n, :n] = torch.eye(n, dtype=DTYPE) + lam * H @ H
    A[:n, n:] = -lam * H @ C
    A[n:, :n] = -lam * C.T @ H
    A[n:, n:] = D + lam * C.T @ C
    rhs = torch.cat([t, torch.zeros(p, dtype=DTYPE)])
    sol = torch.linalg.solve(A, rhs)
    return sol[:n], sol[n:]


def bilevel_minimiser(data: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """The bilevel solution: ``λ* = argmin f(H⁻¹Cλ, λ)`` and ``w* = H⁻¹Cλ*``."""
    H, C, D, t = data["H"], data["C"], data["D"], data["t"]
    J = torch.linalg.solve(H, C)
    lam = torch.linalg.solve(J.T @ J + D, J.T @ t)
    return J @ lam, lam


PROBLEMS: dict[str, Callable[..., ClosedForm]] = {
    "ridge": ridge,
    "quadratic": quadratic,
    "quadratic_ill": functools.partial(quadratic, cond=1e3),
    "three_level": three_level,
    "two_uppers": two_uppers,
    "maml": maml,
}


def build(problem: str, method: str, options: dict | None = None, **kwargs: Any) -> ClosedForm:
    return PROBLEMS[problem](method, options, **kwargs)


def capture(cf: ClosedForm) -> dict[str, Tensor]:
    """Run ``cf`` until every upper level has computed its first hypergradient; return them flat."""
    captured: dict[str, Tensor] = {}
    uppers = {name: cf.graph[name] for name in cf.exact}
    for name, level in uppers.items():

        def grab(level: Level = level, name: str = name) -> None:
            if name not in captured:
                captured[name] = torch.cat([p.grad.detach().flatten() for p in level.trainable_parameters()])

        level.grad_callback = grab
    runner = Runner(cf.graph, cf.steps + 1, device="cpu", progress=False)
    while len(captured) < len(uppers) and runner.step_count < cf.steps + 1:
        runner.step()
    runner.close()
    missing = sorted(set(uppers) - set(captured))
    if missing:
        raise RuntimeError(f"{cf.name}: upper level(s) {missing} were never stepped in {cf.steps + 1} steps")
    return captured


def measure(cf: ClosedForm) -> dict[str, dict[str, float]]:
    """Compare each upper's first hypergradient with the exact one.

    Returns ``{upper: {"cosine": ..., "relative_error": ..., "norm": ..., "exact_norm": ...}}``.
    """
    out = {}
    for name, got in capture(cf).items():
        want = cf.exact[name]()
        cos = float(torch.nn.functional.cosine_similarity(got, want, dim=0)) if got.norm() > 0 else 0.0
        out[name] = {
            "cosine": cos,
            "relative_error": float((got - want).norm() / want.norm()),
            "norm": float(got.norm()),
            "exact_norm": float(want.norm()),
        }
    return out
