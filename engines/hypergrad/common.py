"""What every hop needs: the active hop (method, options, state, diagnostics) and derivative helpers.

Every method has Betty's signature ``fn(vector, curr, prev, sync)``: ``vector`` is the gradient of
an upper loss with respect to ``curr``'s parameters; the method returns its product with the
best-response Jacobian of ``curr`` with respect to ``prev``'s parameters (one hop of a path).

When medmlo's path walker (:mod:`engines.hypergrad.paths`) calls a method it first sets the
*active hop*: the method and options chosen for this edge (a graph edge may override the
level's default), a state slot private to this (path, hop) — so two uppers sharing a lower
level never share, e.g., a warm-start vector — and a report dict whose values are logged once,
on the step of the level whose hypergradient this is. When Betty calls a method directly (a plain
Betty program), there is no active hop: options come from the level's ``hypergrad_options`` or,
for a plain Betty problem, from its ``Config`` fields; state lives on the problem.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .registry import METHODS

__all__ = [
    "Hop",
    "active_hop",
    "deliver",
    "hessian_vector_product",
    "hop_options",
    "hop_state",
    "lower_gradient",
    "mixed_vjp",
    "report",
    "zeros_for_none",
]


@dataclass
class Hop:
    """One hop of a hypergradient path as the walker runs it.

    Attributes:
        curr, prev: the level differentiated through and the level whose parameters the result is for.
        method, options: what this edge uses (the level's default or the edge's override).
        state_key: key of this hop's private slot in ``curr.method_state``.
        report: diagnostics of this hop (logged on the upper level's step that computed them).
    """

    curr: Any
    prev: Any
    method: str
    options: dict[str, Any]
    state_key: str
    report: dict[str, Any] = field(default_factory=dict)


_ACTIVE: ContextVar[Hop | None] = ContextVar("medmlo_active_hop", default=None)


def active_hop(curr: Any = None, prev: Any = None) -> Hop | None:
    """The hop the walker is running (None when Betty called the method directly)."""
    hop = _ACTIVE.get()
    if hop is None or (curr is not None and hop.curr is not curr) or (prev is not None and hop.prev is not prev):
        return None
    return hop


@contextlib.contextmanager
def running(hop: Hop) -> Iterator[Hop]:
    token = _ACTIVE.set(hop)
    try:
        yield hop
    finally:
        _ACTIVE.reset(token)


def hop_options(curr: Any, prev: Any, method: str) -> dict[str, Any]:
    """Options of ``method`` for this hop: the edge's, else the level's, else a Betty ``Config``'s fields."""
    info = METHODS[method]
    options = info.defaults()
    hop = active_hop(curr, prev)
    if hop is not None:
        return {**options, **hop.options}
    own = getattr(curr, "hypergrad_options", None)
    if isinstance(own, Mapping):
        return {**options, **own}
    config = getattr(curr, "config", None)
    for key, (betty_field, _) in info.options.items():
        if betty_field is not None and hasattr(config, betty_field):
            options[key] = getattr(config, betty_field)
    return options


def hop_state(curr: Any, prev: Any) -> dict[str, Any]:
    """A state dict private to this hop (checkpointed with ``curr``), e.g. a warm-start vector."""
    hop = active_hop(curr, prev)
    key = hop.state_key if hop is not None else f"{getattr(prev, 'name', 'upper')}"
    store = getattr(curr, "method_state", None)
    if not isinstance(store, dict):
        store = {}
        curr.method_state = store  # a plain Betty problem: keep it on the problem
    return store.setdefault(key, {})


def report(curr: Any, prev: Any, **values: Any) -> None:
    """Record diagnostics of this hop (residual reached, products done...)."""
    hop = active_hop(curr, prev)
    if hop is not None:
        hop.report.update(values)
        return
    diagnostics = getattr(curr, "diagnostics", None)
    if isinstance(diagnostics, dict):
        diagnostics.update(values)


def zeros_for_none(grads: Sequence[Tensor | None], params: Sequence[Tensor]) -> list[Tensor]:
    """Replace ``None`` (parameter not reached) by zeros of the parameter's shape."""
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


def deliver(grads: list[Tensor], prev: Any, sync: bool) -> list[Tensor] | None:
    """Return the hop's result, or accumulate it into ``prev``'s ``.grad`` when Betty asks to sync."""
    if sync:
        prev.set_grads(prev.trainable_parameters(), grads)
        return None
    return grads


def lower_gradient(curr: Any) -> tuple[list[Tensor], list[Tensor]]:
    """``(params, dg/dparams)`` of ``curr``'s loss on its current batch, with a graph for second derivatives.

    A parameter the loss does not use gets a zero gradient without graph (Hessian-vector products
    skip it). The loss is recomputed with the random state of ``curr``'s last real step, so
    dropout and in-loss sampling match the step the hypergradient stands for.
    """
    params = list(curr.trainable_parameters())
    loss = curr.training_step_exec(curr.cur_batch)
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    return params, zeros_for_none(grads, params)


def hessian_vector_product(grads: Sequence[Tensor], params: Sequence[Tensor]):
    """``v -> H v`` for the gradient ``grads`` (with graph) of a loss in ``params``; parameters the
    loss does not reach contribute (and receive) zero curvature."""
    live = [i for i, g in enumerate(grads) if g.requires_grad]

    def hvp(v: Sequence[Tensor]) -> list[Tensor]:
        out = [torch.zeros_like(p) for p in params]
        if not live:
            return out
        products = torch.autograd.grad(
            [grads[i] for i in live], params, grad_outputs=[v[i] for i in live], retain_graph=True, allow_unused=True
        )
        return [torch.zeros_like(p) if h is None else h.detach() for h, p in zip(products, params)]

    return hvp


def mixed_vjp(grad_g: Sequence[Tensor], v: Sequence[Tensor], prev: Any) -> list[Tensor]:
    """``-(d^2 g / d prev d curr) v``: the implicit-function-theorem term of one hop."""
    prev_params = list(prev.trainable_parameters())
    used = [(g, vi) for g, vi in zip(grad_g, v) if g.requires_grad]
    if not used:
        return [torch.zeros_like(p) for p in prev_params]
    out = torch.autograd.grad([g for g, _ in used], prev_params, grad_outputs=[vi for _, vi in used], allow_unused=True)
    return [-g for g in zeros_for_none(out, prev_params)]
