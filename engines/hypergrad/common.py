"""Helpers shared by the hypergradient methods.

Every method has Betty's signature ``fn(vector, curr, prev, sync)``: ``vector`` is
the gradient of an upper loss with respect to ``curr``'s parameters; the method
returns its product with the best-response Jacobian of ``curr`` with respect to
``prev``'s parameters (one hop of a hypergradient path).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


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

    The loss is recomputed with the random state of ``curr``'s last real step, so dropout
    and in-loss sampling match the step the hypergradient stands for.
    """
    params = list(curr.trainable_parameters())
    loss = curr.training_step_exec(curr.cur_batch)
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    return params, zeros_for_none(grads, params)


def mixed_vjp(grad_g: Sequence[Tensor], v: Sequence[Tensor], prev: Any) -> list[Tensor]:
    """``-(d^2 g / d prev d curr) v``: the implicit-function-theorem term of one hop."""
    prev_params = list(prev.trainable_parameters())
    used = [(g, vi) for g, vi in zip(grad_g, v) if g.requires_grad]
    if not used:
        return [torch.zeros_like(p) for p in prev_params]
    out = torch.autograd.grad(
        [g for g, _ in used], prev_params, grad_outputs=[vi for _, vi in used], allow_unused=True
    )
    return [-g for g in zeros_for_none(out, prev_params)]
