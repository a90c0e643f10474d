"""Second-order adjoint of the optimal-control network: Hessian-vector products with memory flat in T.

For ``L(u) = Σ_b c_b ℓ_b(x_0, x_T)`` with ``x_0 = G(y; u_0)``, ``x_t = F(x_{t-1}; u_t)``
(:mod:`problems.taskcorr.optimal_control`) and a direction ``d = (d_0, ..., d_T)`` in the controls,
this computes the gradient, the Hessian-vector product ``∇²L · d`` and every sample's directional
derivative ``ℓ̇_b = ⟨∇ℓ_b, d⟩`` without the double-backward graph of the whole unrolled network
(which ``create_graph=True`` through the adjoint path builds). It is the tangent-linear and
second-order adjoint system of optimal control (e.g. Wang, Navon, Le Dimet & Zou, "The second order
adjoint analysis", Meteorology and Atmospheric Physics, 1992):

    forward:   x_t, ẋ_t = F(x_{t-1}; u_t), F_x ẋ_{t-1} + F_u d_t          (one forward-mode JVP per phase)
    loss:      λ_T = ∂L/∂x_T,  λ̇_T = ∂²L/∂x_T∂(x_0, x_T) · (ẋ_0, ẋ_T)   (and the same at x_0)
    backward:  with s_t = ⟨λ_t, F(x_{t-1}; u_t)⟩, for t = T..1:
               λ_{t-1} = ∂s_t/∂x,          ∇_{u_t} L = ∂s_t/∂u
               λ̇_{t-1} = F_xᵀ λ̇_t + ∇²_{x,(x,u)} s_t · (ẋ_{t-1}, d_t)
               (∇²L d)_{u_t} = F_uᵀ λ̇_t + ∇²_{u,(x,u)} s_t · (ẋ_{t-1}, d_t)

Each backward step re-runs one phase at its stored state with a graph, takes one first-order
vector-Jacobian product with ``create_graph`` and two more products on that one phase's graph (the
Hessian of the scalar ``s_t`` is symmetric, so its product with a vector is a vector-Jacobian
product). Memory: the ``T + 1`` states and their ``T + 1`` tangents, plus one phase's
double-backward graph; the unrolled double-backward graph grows with every phase.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .optimal_control import OptimalControlNet, Reconstruction, _run_block

__all__ = ["SecondOrder", "second_order_adjoint"]

SampleLoss = Callable[[Reconstruction], Tensor]


class SecondOrder(NamedTuple):
    """Results of :func:`second_order_adjoint`, lists in ``net.parameters()`` order.

    gradient: ∇L. hessian_product: ∇²L · d (both None when not asked for). losses: ℓ_b ``[B]``. loss_tangents: ℓ̇_b = ⟨∇ℓ_b, d⟩ ``[B]``.
    """

    gradient: list[Tensor] | None
    hessian_product: list[Tensor] | None
    losses: Tensor
    loss_tangents: Tensor


def _grad(outputs: Sequence[Tensor], inputs: Sequence[Tensor], cotangents: Sequence[Tensor], **kw) -> list[Tensor]:
    """Vector-Jacobian product; zeros for inputs not reached (and for outputs that carry no graph)."""
    pairs = [(o, c) for o, c in zip(outputs, cotangents) if o.requires_grad and c is not None]
    if not pairs:
        return [torch.zeros_like(i) for i in inputs]
    out = torch.autograd.grad([o for o, _ in pairs], inputs, [c for _, c in pairs], allow_unused=True, **kw)
    return [torch.zeros_like(i) if g is None else g for g, i in zip(out, inputs)]


def _split(flat: Sequence[Tensor], blocks: Sequence[torch.nn.Module]) -> list[list[Tensor]]:
    out, start = [], 0
    for block in blocks:
        n = len(list(block.parameters()))
        out.append(list(flat[start : start + n]))
        start += n
    return out


def second_order_adjoint(
    net: OptimalControlNet,
    kspace: Tensor,
    mask: Tensor,
    direction: Sequence[Tensor],
    sample_loss: SampleLoss,
    weights: Tensor,
    *,
    hessian: bool = True,
) -> SecondOrder:
    """Gradient, Hessian-vector product and per-sample loss tangents of ``L = Σ_b weights_b ℓ_b`` (module docstring).

    Args:
        net: the network; its current parameters are the point (they are not modified).
        kspace, mask: one batch, as for ``net(kspace, mask)``.
        direction: ``d``, one tensor per parameter of ``net`` (``net.parameters()`` order).
        sample_loss: ``Reconstruction -> ℓ`` ``[B]`` (per sample; sample b must depend on sample b only).
        weights: ``c`` ``[B]``.
        hessian: False skips the backward recursion (gradient and Hessian-vector product are then
            None): the losses and their tangents need the tangent-linear forward pass only.
    """
    blocks = net.blocks()
    params = [p.detach() for p in net.parameters()]
    if len(direction) != len(params) or any(d.shape != p.shape for d, p in zip(direction, params)):
        raise ValueError("second_order_adjoint: the direction needs one tensor of each parameter's shape")
    controls, tangents = _split(params, blocks), _split([d.detach() for d in direction], blocks)

    with torch.no_grad():  # tangent-linear forward: states and their tangents, no graph kept
        x, xdot = torch.func.jvp(
            lambda *u: _run_block(blocks[0], list(u), kspace), tuple(controls[0]), tuple(tangents[0])
        )
        states, state_tangents = [x], [xdot]
        for t in range(1, len(blocks)):
            x, xdot = torch.func.jvp(
                lambda x_, *u, t=t: _run_block(blocks[t], list(u), x_, kspace, mask),
                (states[-1], *controls[t]),
                (state_tangents[-1], *tangents[t]),
            )
            states.append(x)
            state_tangents.append(xdot)

    with torch.enable_grad():  # the loss: λ and λ̇ at x_0 and x_T, per-sample tangents
        ends = [states[0].clone().requires_grad_(True), states[-1].clone().requires_grad_(True)]
        end_tangents = [state_tangents[0], state_tangents[-1]]
        losses = sample_loss(Reconstruction(*ends))
        per_sample = _grad([losses.sum()], ends, [torch.ones_like(losses.sum())], retain_graph=True)
        first = _grad([(weights * losses).sum()], ends, [torch.ones_like(losses.sum())], create_graph=True)
        second = _grad(first, ends, end_tangents)
    reduce = tuple(range(1, states[0].dim()))
    loss_tangents = sum((torch.conj(g) * dx).real.sum(reduce) for g, dx in zip(per_sample, end_tangents))
    if not hessian:
        return SecondOrder(None, None, losses.detach(), loss_tangents)
    lam, lam_dot = first[1].detach(), second[1]
    lam0, lam0_dot = first[0].detach(), second[0]

    gradient: list[list[Tensor]] = [[] for _ in blocks]
    hessian: list[list[Tensor]] = [[] for _ in blocks]
    for t in range(len(blocks) - 1, -1, -1):
        if t == 0:
            lam, lam_dot = lam + lam0, lam_dot + lam0_dot
        with torch.enable_grad():
            u = [c.clone().requires_grad_(True) for c in controls[t]]
            inputs = u if t == 0 else [states[t - 1].clone().requires_grad_(True), *u]
            directions = tangents[t] if t == 0 else [state_tangents[t - 1], *tangents[t]]
            out = _run_block(blocks[0], u, kspace) if t == 0 else _run_block(blocks[t], u, inputs[0], kspace, mask)
            transposed = _grad([out], inputs, [lam_dot], retain_graph=True)  # F^T λ̇
            first_order = _grad([out], inputs, [lam], create_graph=True)  # ∇ s_t
            curvature = _grad(first_order, inputs, directions)  # ∇² s_t · (ẋ, d)
        combined = [a + b for a, b in zip(transposed, curvature)]
        first_order = [g.detach() for g in first_order]
        if t == 0:
            gradient[0], hessian[0] = first_order, combined
        else:
            lam, lam_dot = first_order[0], combined[0]
            gradient[t], hessian[t] = first_order[1:], combined[1:]
    return SecondOrder(
        [g for gs in gradient for g in gs], [h for hs in hessian for h in hs], losses.detach(), loss_tangents
    )
