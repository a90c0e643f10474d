"""``adjoint_unroll``: W's hypergradient through the k real optimizer steps of θ, without a double-backward graph.

What the ``correlation`` level should follow is the gradient of what is trained: the validation loss
after the k θ-steps of one W-step, differentiated with respect to W, with θ's value, its optimizer
state and the k batches at the start of the inner loop held fixed. ``exact`` computes it by
replaying the k steps with a double-backward graph through every phase of the network. This method
computes the same derivative in reverse mode over the *recorded* steps — the k optimizer steps are
a discrete dynamical system like the network's phases, and this is its adjoint recursion:

    θ_{s+1}, z_{s+1} = U(θ_s, z_s, g_s)            (the optimizer's rule, z its state: Adam's moments)
    g_s = ∂g/∂θ (θ_s, W; b_s)                       (the gradient of step s on its batch b_s)

    λ_k = v = ∂L/∂θ_k;  for s = k..1:
        (λ_θ, λ_z, u_s) = (∂U/∂(θ_s, z_s, g_s))ᵀ (λ_{s+1}, λ_z)     elementwise: the optimizer replayed
        λ_s = λ_θ + H_s u_s,   dL/dW += (∂²g/∂W∂θ)_s u_s              two second-order products at θ_s

The products come from the level when it has ``second_order_products(direction, upper, hessian=...)`` (the
task-correlation ``theta`` level: the network's second-order adjoint,
:mod:`problems.taskcorr.second_order`, exact and flat in memory in the number of phases), else from
central differences of first-order gradients at ``θ_s ± ε u_s`` with ``ε = alpha / ‖u_s‖``. The
``u_s`` are where ``darts`` goes wrong for an Adam-trained lower level: it uses ``v`` itself, without
the update's Jacobian, and its direction drifts from the gradient of what is trained.

Options: ``products`` (``"auto"``: the level's when it has them, else ``"finite_difference"``;
``"level"``), ``alpha`` (0.01, the length of each difference), ``hessian`` (True; False drops the
``H_s u_s`` terms, i.e. treats the network as linear between the k steps).
``python benchmarks/taskcorr_hypergradient.py`` measures every variant against ``exact``.

Memory: k iterates, gradients and batches (parameter-sized), plus what one product needs (with the
level's products: the states and tangents of one forward pass and one phase's double-backward
graph). Cost per hop: k second-order products (≈ 4 passes of the lower loss each) and an elementwise
replay of the optimizer. Nothing here is specific to MRI: the method is registered in the engine's
table under this name and needs a lower level trained by one of
:data:`engines.hypergrad.diff_optim.SUPPORTED`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from engines import METHODS, MethodInfo, register_method
from engines.hypergrad import diff_optim
from engines.hypergrad.common import deliver, hop_options, report, zeros_for_none
from engines.hypergrad.finite_difference import _parameters_at
from engines.hypergrad.option_checks import choice, flag, real

__all__ = ["METHOD", "UnrollRecord", "adjoint_unroll", "record_unroll_step"]

METHOD = "adjoint_unroll"
Vector = list[Tensor]


@dataclass
class UnrollRecord:
    """One inner loop as it was trained: the optimizer state before its first step, then per step the
    iterate, the gradient applied, the batch, the random state and the optimizer's settings."""

    state: list[dict[str, Any]]
    iterates: list[Vector] = field(default_factory=list)
    grads: list[Vector] = field(default_factory=list)
    batches: list[Any] = field(default_factory=list)
    rngs: list[Any] = field(default_factory=list)
    settings: list[list[dict[str, Any]]] = field(default_factory=list)


def record_unroll_step(level: Any, batch: Any) -> None:
    """The level's hook after each real step's gradient, before the optimizer update."""
    params = level.trainable_parameters()
    if (level.count - 1) % level.unroll == 0:
        level.unroll_record = UnrollRecord(state=diff_optim.snapshot_state(level.optimizer, params))
    record: UnrollRecord = level.unroll_record
    record.iterates.append([p.detach().clone() for p in params])
    record.grads.append([torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params])
    record.batches.append(batch)
    record.rngs.append(level.last_step_rng)
    record.settings.append(diff_optim.group_settings(level.optimizer))


def _differentiable(state: dict[str, Any]) -> list[str]:
    """The optimizer-state entries the update is differentiable in (moments, momentum; not step counts)."""
    return [k for k, t in state.items() if torch.is_tensor(t) and t.is_floating_point() and k != "step"]


def _states(level: Any, record: UnrollRecord) -> list[list[dict[str, Any]]]:
    """The optimizer state before every recorded step, replayed from the first with the recorded gradients."""
    params = level.trainable_parameters()
    states = [[dict(s) for s in record.state]]
    with torch.no_grad():
        for iterate, grads, settings in zip(record.iterates, record.grads, record.settings):
            _, after = diff_optim.update(level.optimizer, params, grads, iterate, states[-1], settings)
            states.append(after)
    return states


def _step_vjp(
    level: Any,
    iterate: Vector,
    grads: Vector,
    state: list[dict[str, Any]],
    settings: list[dict[str, Any]],
    lam: Vector,
    lam_state: list[dict[str, Tensor]],
) -> tuple[Vector, list[dict[str, Tensor]], Vector, Vector]:
    """One optimizer step pulled back: ``(λ_θ, λ_z, u)`` for ``(θ_s, z_s, g_s)``, and the step's result θ_{s+1}."""
    params = level.trainable_parameters()
    with torch.enable_grad():
        theta = [t.clone().requires_grad_(True) for t in iterate]
        g = [t.clone().requires_grad_(True) for t in grads]
        z = [
            {k: (t.clone().requires_grad_(True) if k in _differentiable(s) else t) for k, t in s.items()} for s in state
        ]
        new_theta, new_z = diff_optim.update(level.optimizer, params, g, theta, z, settings)
        outputs, cotangents = list(new_theta), list(lam)
        for after, lam_after in zip(new_z, lam_state):
            for key, value in lam_after.items():
                if key in after and after[key].requires_grad:
                    outputs.append(after[key])
                    cotangents.append(value)
        leaves = [*theta, *g, *(s[k] for s in z for k in _differentiable(s))]
        pulled = zeros_for_none(torch.autograd.grad(outputs, leaves, cotangents, allow_unused=True), leaves)
    n = len(params)
    lam_theta, u, rest = pulled[:n], pulled[n : 2 * n], iter(pulled[2 * n :])
    lam_z = [{k: next(rest) for k in _differentiable(s)} for s in z]
    return lam_theta, lam_z, u, [t.detach() for t in new_theta]


@contextlib.contextmanager
def _at(level: Any, values: Sequence[Tensor], batch: Any, rng: Any) -> Iterator[list[Tensor]]:
    """The level's parameters set to ``values`` and its batch and random state to a recorded step's;
    everything restored exactly afterwards."""
    saved = level.cur_batch, level.last_step_rng
    level.cur_batch, level.last_step_rng = batch, rng
    try:
        with _parameters_at(level, values) as params:
            yield params
    finally:
        level.cur_batch, level.last_step_rng = saved


def finite_difference_products(
    level: Any, upper: Any, direction: Vector, *, alpha: float, hessian: bool
) -> tuple[Vector | None, Vector]:
    """``(H u, (∂²g/∂λ∂θ) u)`` of the level's loss at its current parameters and batch, by central
    differences of its first-order gradient in θ and in the upper parameters λ (``H u`` is None
    when ``hessian`` is False)."""
    point = [p.detach().clone() for p in level.trainable_parameters()]
    upper_params = list(upper.trainable_parameters())
    eps = alpha / (float(torch.sqrt(sum((d.double() ** 2).sum() for d in direction))) + 1e-15)
    sides = []
    for sign in (1.0, -1.0):
        with _parameters_at(level, [x + sign * eps * d for x, d in zip(point, direction)]) as params:
            wrt = [*params, *upper_params] if hessian else upper_params
            loss = level.training_step_exec(level.cur_batch)
            sides.append(zeros_for_none(torch.autograd.grad(loss, wrt, allow_unused=True), wrt))
            del loss
    diffs = [(a - b) / (2 * eps) for a, b in zip(*sides)]
    if not hessian:
        return None, diffs
    return diffs[: len(point)], diffs[len(point) :]


def _products(
    level: Any, upper: Any, direction: Vector, options: dict[str, Any], *, hessian: bool
) -> tuple[Vector | None, Vector]:
    """The step's two products: from the level when it has them (and ``products`` allows), else by differences."""
    kind = options["products"]
    own = getattr(level, "second_order_products", None)
    if kind not in ("auto", "level", "finite_difference"):
        raise ValueError(f"{METHOD}: products must be 'auto', 'level' or 'finite_difference', got {kind!r}")
    if kind == "level" and own is None:
        raise TypeError(f"{METHOD}: level '{level.name}' has no second_order_products(direction, upper, hessian=)")
    if kind == "finite_difference" or own is None:
        return finite_difference_products(level, upper, direction, alpha=float(options["alpha"]), hessian=hessian)
    return own(direction, upper, hessian=hessian)


def adjoint_unroll(vector: Vector, curr: Any, prev: Any, sync: bool) -> Vector | None:
    """``(dθ_k/dλ)ᵀ v`` over the inner loop's recorded steps (see the module docstring)."""
    record: UnrollRecord | None = getattr(curr, "unroll_record", None)
    if record is None or len(record.grads) != curr.unroll:
        found = 0 if record is None else len(record.grads)
        raise RuntimeError(
            f"{METHOD}: level '{curr.name}' has {found} of the {curr.unroll} recorded steps of its inner loop; "
            "hypergradients through it can only be taken after a full inner loop"
        )
    options = hop_options(curr, prev, METHOD)
    states = _states(curr, record)
    lam = [v.detach() for v in vector]
    lam_state: list[dict[str, Tensor]] = [{} for _ in lam]
    total = [torch.zeros_like(p) for p in prev.trainable_parameters()]
    replayed: Vector = []
    for s in reversed(range(curr.unroll)):
        lam, lam_state, u, after = _step_vjp(
            curr, record.iterates[s], record.grads[s], states[s], record.settings[s], lam, lam_state
        )
        if s == curr.unroll - 1:
            replayed = after
        if not any(bool(d.any()) for d in u):
            continue  # e.g. Adam's first step: its update is the gradient's sign, flat in the gradient
        hessian = bool(options["hessian"]) and s > 0  # λ_0 is not needed: the inner loop's start is held fixed
        with _at(curr, record.iterates[s], record.batches[s], record.rngs[s]):
            hvp, mixed = _products(curr, prev, u, options, hessian=hessian)
        total = [t + m for t, m in zip(total, mixed)]
        if hvp is not None:
            lam = [a + h for a, h in zip(lam, hvp)]
    params = curr.trainable_parameters()
    with torch.no_grad():  # the replayed last step must land on the real iterate
        gap = torch.sqrt(sum(((r - p) ** 2).sum() for r, p in zip(replayed, params)))
        scale = torch.sqrt(sum((p**2).sum() for p in params)) + 1e-12
    report(curr, prev, replay_gap=float(gap / scale), steps=curr.unroll)
    return deliver(total, prev, sync)


if METHOD not in METHODS:
    register_method(
        MethodInfo(
            name=METHOD,
            fn=adjoint_unroll,
            origin="medmlo",
            summary="the k recorded lower steps differentiated in reverse mode through the optimizer's rule (Adam's "
            "moments included), with the level's own second-order products or central differences",
            cost="k second-order products of the lower loss per hop (k = unroll), plus an elementwise replay of the "
            "optimizer",
            memory="k iterates, gradients and batches (parameter-sized) and what one product needs; no double-backward "
            "graph through the recorded steps",
            options={"products": (None, "auto"), "alpha": (None, 0.01), "hessian": (None, True)},
            checks={
                "products": choice("auto", "level", "finite_difference"),
                "alpha": real(0.0, strict=True),
                "hessian": flag(),
            },
            leaf_only=True,
            optimizers=tuple(cls.__name__ for cls in diff_optim.SUPPORTED),
            on_lower_step=record_unroll_step,
        )
    )
