"""How much of each level's step comes through the other level: is the penalty method bilevel here?

With the penalty method (Algorithm 2) θ descends ``L̃ = L_val + λ/2 ‖∇_θ L_tr‖²``, so its gradient is

    ∇_θ L_val  +  λ ∇²_θθ L_tr ∇_θ L_tr,

and ω's is ``∇_ω L_val + λ ∇²_ωθ L_tr ∇_θ L_tr``. When the λ-parts are negligible θ is fit on the
validation split and ω by its direct validation gradient alone: the two levels do not interact,
and the method is not bilevel. :func:`gradient_balance` measures, on fixed mini-batches, the norms
of every part and the two ratios

* ``theta_ratio = λ ‖∇²_θθ L_tr ∇_θ L_tr‖ / ‖∇_θ L_val‖`` (the penalty part of θ's step);
* ``omega_ratio = ‖hypergradient through θ‖ / ‖∇_ω L_val‖`` — for the penalty method the
  hypergradient is ``λ ∇²_ωθ L_tr ∇_θ L_tr`` on the same batches; for any other method it is what
  the engine computed at the last ω step (``last_indirect_grads`` of the upper level).

:class:`BalanceProbe` does this at every validation of a meta-learning run, so the ratios are
logged beside the validation PSNR.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import default_collate

from engines import Graph

from .levels import CrossTaskSlices, OmegaLevel, ThetaLevel

__all__ = ["BalanceProbe", "gradient_balance"]


def _norm(tensors: list[Tensor | None]) -> float:
    parts = [t.detach().double().pow(2).sum() for t in tensors if t is not None]
    return float(torch.stack(parts).sum().sqrt()) if parts else 0.0


def gradient_balance(
    theta: ThetaLevel,
    omega: OmegaLevel,
    train_batch: dict[str, Tensor],
    val_batch: dict[str, Tensor],
    *,
    lam: float | None,
    indirect: list[Tensor] | None = None,
) -> dict[str, float]:
    """The parts of both levels' gradients at the current θ, ω (module docstring).

    ``lam`` is the penalty weight (None: the method is not the penalty method, θ descends ``L_tr``
    alone and ``theta_ratio`` is 0); ``indirect`` is ω's hypergradient through θ for another method.
    """
    theta_params = [p for p in theta.module.parameters() if p.requires_grad]
    omega_params = list(omega.module.parameters())
    with torch.enable_grad():
        grad_val = torch.autograd.grad(omega.loss(val_batch)["loss"], [*theta_params, *omega_params], allow_unused=True)
        val_theta, val_omega = list(grad_val[: len(theta_params)]), list(grad_val[len(theta_params) :])
        out = {"val_grad_theta": _norm(val_theta), "val_grad_omega": _norm(val_omega)}
        if lam is not None:
            loss_tr = theta.loss(train_batch)["loss"]
            grad_tr = torch.autograd.grad(loss_tr, theta_params, create_graph=True, allow_unused=True)
            live = [(g, p) for g, p in zip(grad_tr, theta_params) if g is not None and g.requires_grad]
            vector = [g.detach() for g, _ in live]
            curvature = torch.autograd.grad(
                [g for g, _ in live], [*theta_params, *omega_params], vector, allow_unused=True
            )
            hessian_theta, mixed_omega = curvature[: len(theta_params)], curvature[len(theta_params) :]
            out.update(
                train_grad_theta=_norm(list(grad_tr)),
                penalty_theta=lam * _norm(list(hessian_theta)),
                penalty_omega=lam * _norm(list(mixed_omega)),
                lam=lam,
            )
            indirect_norm = out["penalty_omega"]
        else:
            indirect_norm = _norm(list(indirect or []))
            out["penalty_theta"] = 0.0
    out["theta_ratio"] = out["penalty_theta"] / max(out["val_grad_theta"], 1e-300)
    out["omega_ratio"] = indirect_norm / max(out["val_grad_omega"], 1e-300)
    return out


class BalanceProbe:
    """:func:`gradient_balance` of a meta-learning graph on fixed cross-task batches of ``batch`` slices
    per task of the training and validation images (the same slices at every call). ``lam`` is the
    penalty method's initial λ (None for another method); the probe reads the current λ from the
    method's state once it has grown."""

    def __init__(self, train: Tensor, val: Tensor, masks: Tensor, batch: int, *, lam: float | None, seed: int = 0):
        data = (CrossTaskSlices(train, masks, seed=seed), CrossTaskSlices(val, masks, seed=seed + 1))
        self.batches = [default_collate([d[k] for k in range(min(batch, len(d)))]) for d in data]
        self.lam = lam

    def __call__(self, graph: Graph) -> dict[str, float]:
        theta, omega = graph["theta"], graph["omega"]
        like = theta.module.eps0
        train, val = (
            {k: v.to(like.device) if k == "task" else v.to(like.device, like.dtype) for k, v in batch.items()}
            for batch in self.batches
        )
        lam = None if self.lam is None else float(theta.method_state.get("penalty", {}).get("lam", self.lam))
        return gradient_balance(theta, omega, train, val, lam=lam, indirect=omega.last_indirect_grads)
