"""Does every declared edge carry something? The per-edge dependence check run before training.

A hypergradient path ``[U, l_1, ..., l_n, U]`` is a product of factors, one per consecutive pair
``(x, y)``: ``U``'s loss read ``l_1``'s parameters (the first vector ``∂f_U/∂l_1``), each ``l_i``
responds to ``l_{i+1}`` (a hop through ``l_i``), and ``l_n`` responds to ``U``. If one loss does
not read the level after it, that factor — and the whole path — is exactly zero at every step,
with no error. The graph (:meth:`engines.topology.Topology.read_checks`) lists, for every level,
which levels its loss must read and which declaration asks for it; :func:`check_reads` evaluates
them on one loss value, as a hypergradient recomputation sees it (``level.in_real_step`` False),
and raises :class:`~engines.errors.LossError` naming the edge, the loss and the fix.

What carries a hop depends on its method: implicit and finite-difference methods differentiate
the lower loss only; ``exact`` also differentiates a ``start`` map (when its window covers the
whole inner loop); ``first_order`` differentiates the ``start`` map only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .errors import LossError

__all__ = ["CARRIERS", "ReadCheck", "check_reads"]

CARRIERS = ("loss", "start", "loss_or_start")


@dataclass(frozen=True)
class ReadCheck:
    """One dependence a level must have for a declared edge to carry a hypergradient.

    Attributes:
        reads: the level whose trainable parameters the loss (or start map) must read.
        edge: the declaration that asks for it, as the user wrote it (``g.feeds('rho', into='w')``).
        paths: labels of the hypergradient paths that need it (``rho<-weights<-hyper``).
        carrier: ``"loss"``, ``"start"`` (the start map only) or ``"loss_or_start"``.
        method: the method of the hop (None for a path's first vector, which is the upper's own loss).
        via: levels whose loss reads ``reads`` and which the checking level could read instead (the
            upper loss of a first vector that reads the level below ``reads``: see ``nest(..., via=)``).
    """

    reads: str
    edge: str
    paths: tuple[str, ...]
    carrier: str = "loss"
    method: str | None = None
    via: tuple[str, ...] = ()


def _reaches(outputs: Sequence[Tensor], params: Sequence[Tensor]) -> bool:
    """Whether autograd connects any of ``outputs`` to any of ``params``."""
    outputs = [o for o in outputs if torch.is_tensor(o) and o.requires_grad]
    params = list(params)
    if not outputs or not params:
        return False
    grads = torch.autograd.grad(
        outputs,
        params,
        grad_outputs=[torch.ones_like(o) for o in outputs],
        retain_graph=True,
        allow_unused=True,
    )
    return any(g is not None for g in grads)


def check_reads(
    level: Any,
    loss: Tensor,
    checks: Sequence[ReadCheck],
    other: Callable[[str], Any],
) -> None:
    """Raise :class:`LossError` for the first check ``level`` fails.

    Args:
        level: the :class:`engines.Level` whose ``loss`` (a recomputation of its loss) is checked.
        checks: what the graph requires of it.
        other: level name -> level (the checked levels' trainable parameters are read from it).
    """
    start: list[Tensor] | None = None
    for check in checks:
        params = other(check.reads).trainable_parameters()
        by_loss = check.carrier != "start" and _reaches([loss], params)
        by_start = False
        if check.carrier != "loss" and level.has_start:
            if start is None:
                with torch.enable_grad():
                    values = level.start_values()
                start = [values[name] for name in level.trainable_names]
            by_start = _reaches(start, params)
        if by_loss or by_start:
            continue
        raise LossError(_message(level, loss, check, other))


def _message(level: Any, loss: Tensor, check: ReadCheck, other: Callable[[str], Any]) -> str:
    name, reads = level.name, check.reads
    paths = ", ".join(check.paths)
    if check.method is None:
        what = f"the loss of '{name}' does not read the parameters of '{reads}'"
        zero = f"so the hypergradient of '{name}' along {paths} would be zero at every step"
    elif check.carrier == "start":
        what = (
            f"the hop through '{name}' with respect to '{reads}' uses hypergrad '{check.method}', which differentiates "
            f"only the start map of '{name}', and that map does not read '{reads}'"
        )
        zero = f"so the hypergradient along {paths} would be zero at every step"
    else:
        also = " (nor does its start map)" if check.carrier == "loss_or_start" and level.has_start else ""
        what = f"the loss of '{name}' does not read the parameters of '{reads}'{also}"
        if check.carrier == "loss" and level.has_start:
            what += (
                f"; hypergrad '{check.method}' does not differentiate the start map of '{name}' (exact and "
                "first_order do)"
            )
        zero = f"so the hop through '{name}' with respect to '{reads}' on {paths} would be zero at every step"
    fix = (
        f"make the loss of '{name}' read level.{reads} (through level.{reads}.module, as a hypergradient "
        "recomputation runs it: level.in_real_step is False then), or remove the edge"
    )
    readers = [v for v in check.via if _reaches([loss], other(v).trainable_parameters())]
    if readers:
        v = readers[0]
        fix = (
            f"'{name}' reads '{v}', whose loss reads '{reads}': declare g.nest(lower='{reads}', upper='{name}', "
            f"via='{v}') instead, so that the path runs {name} <- {v} <- {reads} (see docs/chains.md)"
        )
    return f"level '{name}': {check.edge}: {what}, {zero}; {fix}"
