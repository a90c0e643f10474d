"""The hypergradient method registry: Betty's methods plus medmlo's, in Betty's own table.

A level's ``hypergrad`` names how upper levels differentiate *through* it (one hop of a
hypergradient path). New methods are registered here and inserted into
``betty.hypergradient.jvp_fn_mapping``, so Betty's path machinery calls them like its own.

Betty 0.2.1's ``cg`` is replaced under the same name by a correct one; the shipped
function stays available as ``betty_cg`` only so accuracy tables can show the difference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import betty.hypergradient as _betty_hg
from betty.hypergradient.cg import cg as _betty_cg
from betty.hypergradient.darts import darts as _darts
from betty.hypergradient.neumann import neumann as _neumann
from betty.hypergradient.sama import sama as _sama

from . import diff_optim
from .first_order import first_order
from .implicit import CG_DEFAULTS, cg, cg_warm
from .linear_solve import CGResult, conjugate_gradient
from .unrolled import exact, record_step

__all__ = [
    "METHODS",
    "MethodInfo",
    "CGResult",
    "conjugate_gradient",
    "register_method",
    "method_table",
]


@dataclass(frozen=True)
class MethodInfo:
    """How a method behaves, what it costs, and where it may be used.

    Attributes:
        name: the registry key used as ``Level(hypergrad=...)``.
        fn: Betty-style hop ``fn(vector, curr, prev, sync)``; None for refused methods.
        origin: "betty" or "medmlo".
        summary: one line on what it computes.
        cost: extra work per hop through a level (passes, Hessian-vector products).
        memory: memory behaviour.
        options: accepted ``Level(options=...)`` keys -> Betty ``Config`` field (or None if
            the method reads ``level.hypergrad_options`` itself) with their defaults.
        leaf_only: refuses a level that owns hypergradient paths itself.
        optimizers: the level optimizer classes the method needs (None: any).
        on_lower_step: called by the level after each real step's gradient (recording).
        refused: if set, graph validation refuses the method with this reason.
    """

    name: str
    fn: Callable[..., Any] | None
    origin: str
    summary: str
    cost: str
    memory: str
    options: dict[str, tuple[str | None, Any]] = field(default_factory=dict)
    leaf_only: bool = False
    optimizers: tuple[str, ...] | None = None
    on_lower_step: Callable[[Any, Any], None] | None = None
    refused: str | None = None


METHODS: dict[str, MethodInfo] = {}


def register_method(info: MethodInfo) -> MethodInfo:
    """Add a method to medmlo's registry and to Betty's ``jvp_fn_mapping``."""
    METHODS[info.name] = info
    if info.fn is not None:
        _betty_hg.jvp_fn_mapping[info.name] = info.fn
    else:
        _betty_hg.jvp_fn_mapping.pop(info.name, None)
    return info


_CG_OPTIONS = {key: (None, value) for key, value in CG_DEFAULTS.items()}

register_method(MethodInfo(
    name="darts", fn=_darts, origin="betty",
    summary="finite-difference mixed derivative with H^-1 ≈ I (DARTS, one-step unrolled)",
    cost="2 forward + 2 backward passes of the lower loss, no double backward",
    memory="one lower step",
    options={"alpha": ("darts_alpha", 0.01)},
))
register_method(MethodInfo(
    name="sama", fn=_sama, origin="betty",
    summary="darts with the vector preconditioned by the lower Adam update (SAMA)",
    cost="as darts plus elementwise preconditioning",
    memory="one lower step",
    options={"alpha": ("sama_adam_alpha", 1.0)},
    optimizers=("Adam", "AdamW", "SGD"),
))
register_method(MethodInfo(
    name="neumann", fn=_neumann, origin="betty",
    summary="implicit gradient with a truncated Neumann series for H^-1 (Betty's)",
    cost="1 backward with create_graph + `iterations` Hessian-vector products + 1 mixed VJP",
    memory="one double-backward graph of a lower step",
    options={"iterations": ("neumann_iterations", 1), "alpha": ("neumann_alpha", 1.0)},
    leaf_only=True,
))
register_method(MethodInfo(
    name="cg", fn=cg, origin="medmlo",
    summary="implicit gradient, conjugate gradient with tolerance stop and damping",
    cost="1 backward with create_graph + <= maxiter Hessian-vector products + 1 mixed VJP",
    memory="one double-backward graph of a lower step, independent of K",
    options=_CG_OPTIONS,
))
register_method(MethodInfo(
    name="cg_warm", fn=cg_warm, origin="medmlo",
    summary="cg warm-started from the previous outer step's solution (RM-MetaL Subroutine 1)",
    cost="as cg (+1 Hessian-vector product for the warm-start residual)",
    memory="as cg plus one parameter-sized solution vector kept between steps; independent of K",
    options=_CG_OPTIONS,
))
register_method(MethodInfo(
    name="exact", fn=exact, origin="medmlo",
    summary="iterative differentiation through the last K (or `truncate`) unrolled lower steps",
    cost="T forward + T backward with create_graph + one reverse pass through them (≈3T lower steps)",
    memory="grows linearly with T (activations of T steps during the hop; T batches kept)",
    options={"truncate": (None, None)},
    optimizers=tuple(cls.__name__ for cls in diff_optim.SUPPORTED),
    on_lower_step=record_step,
))
register_method(MethodInfo(
    name="first_order", fn=first_order, origin="medmlo",
    summary="second-order term dropped: Jacobian of the start map only (FOMAML/Reptile-style), else 0",
    cost="one vector-Jacobian product of the start map (nothing without one)",
    memory="none",
))
register_method(MethodInfo(
    name="betty_cg", fn=_betty_cg, origin="betty",
    summary="Betty 0.2.1's shipped cg, kept for comparison only (wrong direction update, no tolerance)",
    cost="1 backward with create_graph + `iterations` Hessian-vector products + 1 mixed VJP",
    memory="one double-backward graph of a lower step",
    options={"iterations": ("cg_iterations", 1), "alpha": ("cg_alpha", 1.0)},
    leaf_only=True,
))
register_method(MethodInfo(
    name="reinforce", fn=None, origin="betty",
    summary="score-function hypergradient",
    cost="-", memory="-",
    refused=(
        "Betty 0.2.1's 'reinforce' is an unimplemented stub (it takes 3 arguments and is called "
        "with 4, so any use raises TypeError); choose darts, sama, cg, cg_warm, exact or first_order"
    ),
))


def method_table() -> str:
    """A Markdown table of the registered methods (name, origin, cost, memory)."""
    rows = ["| method | origin | computes | cost per hop | memory |", "|---|---|---|---|---|"]
    for m in METHODS.values():
        rows.append(f"| `{m.name}` | {m.origin} | {m.summary} | {m.cost} | {m.memory} |")
    return "\n".join(rows)
