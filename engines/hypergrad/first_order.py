"""``first_order``: drop the second-order (indirect) term of the best-response Jacobian.

For a level whose parameters restart every inner loop from a function of upper
parameters (``start`` map, e.g. MAML's ``φ_0 = θ``), the Jacobian ``dφ_K/dθ`` is
approximated by ``dφ_0/dθ`` (identity for plain copies): first-order MAML (FOMAML); with the
upper step of Reptile-style updates this is the usual first-order family. For any other
level the hop contributes nothing, i.e. the upper level sees only its direct gradient (graph
validation warns about that).

Cost per hop: one vector-Jacobian product of the start map (free without one).
Memory: none beyond the start map's graph.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .common import deliver, zeros_for_none


def first_order(vector: list[Tensor], curr: Any, prev: Any, sync: bool) -> list[Tensor] | None:
    prev_params = list(prev.trainable_parameters())
    if getattr(curr, "has_start", False):
        start = curr.start_values()
        outs = [start[name] for name in curr.trainable_names]
        pairs = [(o, v) for o, v in zip(outs, vector) if o.requires_grad]
        if pairs:
            grads = torch.autograd.grad(
                [o for o, _ in pairs], prev_params, grad_outputs=[v for _, v in pairs], allow_unused=True
            )
            return deliver(zeros_for_none(grads, prev_params), prev, sync)
    return deliver([torch.zeros_like(p) for p in prev_params], prev, sync)
