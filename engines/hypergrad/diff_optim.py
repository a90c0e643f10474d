"""Differentiable (out-of-place) versions of the SGD, Adam/AdamW and RMSprop updates.

``exact`` replays a level's recorded steps functionally; each update must keep the
autograd graph from the new parameters back to the old ones and to the gradients.
The hyperparameters are read from the level's real ``torch.optim`` optimizer, so the
replay follows the same rule as the steps it re-enacts, including ``torch.optim``'s rule for a
parameter whose gradient was None in the real step: it is skipped (no weight decay, no momentum,
no moment or step count), so the replay leaves it and its state as they were.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

SUPPORTED = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop)
"""The optimizers whose update ``exact`` can replay (the registry lists them for graph validation)."""


def group_settings(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """The hyperparameters of every param group now (without the parameters themselves)."""
    return [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]


def _group_index(optimizer: torch.optim.Optimizer, param: Tensor) -> int:
    for i, group in enumerate(optimizer.param_groups):
        if any(p is param for p in group["params"]):
            return i
    raise KeyError("parameter is not managed by the level's optimizer")


def without_gradient(params: Sequence[Tensor]) -> list[bool]:
    """For each parameter, whether its ``.grad`` is None now: ``torch.optim`` skips those in its step, and
    a replay of that step must skip them too (see :func:`update`). Called after a real step's gradient
    is formed, before the optimizer's update."""
    return [p.grad is None for p in params]


def snapshot_state(optimizer: torch.optim.Optimizer, params: list[Tensor]) -> list[dict[str, Any]]:
    """Detached copies of the per-parameter optimizer state (momentum buffers, Adam moments)."""
    out = []
    for p in params:
        state = optimizer.state.get(p, {})
        out.append({k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in state.items()})
    return out


def update(
    optimizer: torch.optim.Optimizer,
    params: list[Tensor],
    grads: list[Tensor],
    values: list[Tensor],
    states: list[dict[str, Any]],
    settings: list[dict[str, Any]],
    skipped: Sequence[bool] | None = None,
) -> tuple[list[Tensor], list[dict[str, Any]]]:
    """One differentiable step: new ``values`` and ``states``. ``params`` are the real parameters,
    used only to find their param group; ``settings`` are the groups' hyperparameters recorded
    at the step being replayed (see :func:`group_settings`); ``skipped`` marks the parameters whose
    gradient was None in that step (see :func:`without_gradient`): as ``torch.optim`` does, their value
    and state are returned unchanged (the same tensors), whatever ``grads`` holds for them."""
    if isinstance(optimizer, torch.optim.SGD):
        step = _sgd
    elif isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        step = _adam
    elif isinstance(optimizer, torch.optim.RMSprop):
        step = _rmsprop
    else:
        raise TypeError(f"no differentiable update for {type(optimizer).__name__}")
    decoupled = isinstance(optimizer, torch.optim.AdamW)
    new_values, new_states = [], []
    skipped = [False] * len(params) if skipped is None else list(skipped)
    if len(skipped) != len(params):
        raise ValueError(f"update: {len(skipped)} skip flags for {len(params)} parameters")
    for p, g, v, s, skip in zip(params, grads, values, states, skipped):
        if skip:
            new_values.append(v)
            new_states.append(s)
            continue
        nv, ns = step(settings[_group_index(optimizer, p)], g, v, s, decoupled)
        new_values.append(nv)
        new_states.append(ns)
    return new_values, new_states


def _sgd(group: dict, g: Tensor, p: Tensor, state: dict, _: bool) -> tuple[Tensor, dict]:
    if group.get("maximize", False):
        g = -g
    if group["weight_decay"]:
        g = g + group["weight_decay"] * p
    momentum = group["momentum"]
    if momentum:
        buf = state.get("momentum_buffer")
        buf = g if buf is None else momentum * buf + (1 - group["dampening"]) * g
        g = g + momentum * buf if group["nesterov"] else buf
        state = {**state, "momentum_buffer": buf}
    return p - group["lr"] * g, state


def _adam(group: dict, g: Tensor, p: Tensor, state: dict, decoupled: bool) -> tuple[Tensor, dict]:
    if group.get("amsgrad", False):
        raise TypeError("exact: AMSGrad has no differentiable replay here; use plain Adam/AdamW")
    if group.get("maximize", False):
        g = -g
    lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    if wd:
        if decoupled:
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
    step = float(state.get("step", 0)) + 1
    m = state.get("exp_avg", torch.zeros_like(p))
    v = state.get("exp_avg_sq", torch.zeros_like(p))
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    m_hat = m / (1 - beta1**step)
    v_hat = v / (1 - beta2**step)
    # the tiny shift keeps d sqrt(v)/dv finite where v == 0 (there g == 0, so the product is 0)
    new_p = p - lr * m_hat / ((v_hat + 1e-30).sqrt() + eps)
    return new_p, {**state, "step": torch.tensor(step), "exp_avg": m, "exp_avg_sq": v}


def _rmsprop(group: dict, g: Tensor, p: Tensor, state: dict, _: bool) -> tuple[Tensor, dict]:
    if group.get("centered", False):
        raise TypeError("exact: centered RMSprop has no differentiable replay here; use centered=False")
    if group.get("maximize", False):
        g = -g
    if group["weight_decay"]:
        g = g + group["weight_decay"] * p
    alpha, eps, lr, momentum = group["alpha"], group["eps"], group["lr"], group["momentum"]
    square_avg = alpha * state.get("square_avg", torch.zeros_like(p)) + (1 - alpha) * g * g
    avg = (square_avg + 1e-30).sqrt() + eps
    new_state = {**state, "square_avg": square_avg, "step": torch.tensor(float(state.get("step", 0)) + 1)}
    if momentum > 0:
        buf = momentum * state.get("momentum_buffer", torch.zeros_like(p)) + g / avg
        return p - lr * buf, {**new_state, "momentum_buffer": buf}
    return p - lr * g / avg, new_state
