"""The hypergradient method registry: Betty's methods plus medmlo's, in Betty's own table.

A level's ``hypergrad`` names how upper levels differentiate *through* it (one hop of a
hypergradient path); a graph edge may override it for one upper. Methods are registered
here and inserted into ``betty.hypergradient.jvp_fn_mapping``, so Betty's path machinery (and
a plain Betty program with ``Config(type=...)``) calls them like its own: they read their
options from a medmlo level or edge, or from the Betty ``Config`` fields of a plain problem.

Betty 0.2.1's ``darts``, ``sama``, ``neumann`` and ``cg`` are replaced under the same names by
medmlo's implementations (same algorithms; lean memory, exact parameter restoration, unused
parameters handled, a correct CG); the shipped ``cg`` stays available as ``betty_cg`` only so
accuracy tables can show the difference.
"""

from __future__ import annotations

from betty.hypergradient.cg import cg as _betty_cg

from . import diff_optim
from .finite_difference import FD_OPTIONS, SAMA_OPTIONS, darts, one_step, record_one_step, sama
from .first_order import first_order
from .implicit import CG_OPTIONS, CURVATURES, NEUMANN_OPTIONS, SOLVERS, cg, cg_warm, curvature_product, neumann
from .linear_solve import CGResult, conjugate_gradient, minres
from .option_checks import choice, flag, integer, optional, real
from .penalty import PENALTY_OPTIONS, penalty, penalty_lower_step
from .registry import METHODS, MethodInfo, method_table, register_method
from .unrolled import EXACT_OPTIONS, exact, record_step

__all__ = [
    "METHODS",
    "CGResult",
    "MethodInfo",
    "conjugate_gradient",
    "curvature_product",
    "method_table",
    "minres",
    "register_method",
]

_ADAPTIVE_OPTIMIZERS = tuple(cls.__name__ for cls in diff_optim.SUPPORTED)

# Option value checks (type and range) of each method; register_method refuses an option without one.
_STEP = {"alpha": real(0.0, strict=True)}  # finite-difference scale (darts, sama, one_step)
CG_CHECKS = {
    "maxiter": integer(1),
    "tol": real(0.0),
    "damping": real(0.0),
    "adaptive_damping": flag(),
    "target_residual": real(0.0, strict=True),
    "curvature": choice(*CURVATURES),
    "solver": choice(*SOLVERS),
    "blockwise": flag(),
}
NEUMANN_CHECKS = {"iterations": integer(0), "alpha": real(0.0, strict=True), "curvature": choice(*CURVATURES)}
EXACT_CHECKS = {"truncate": optional(integer(1))}  # and <= the level's unroll, checked by Graph.validate
PENALTY_CHECKS = {
    "lam": real(0.0, strict=True),  # λ = 0 would make the hop exactly zero
    "lam_growth": real(1.0),
    "delta": real(0.0),
    "delta_decay": real(0.0, strict=True, maximum=1.0),
    "delta_tol": real(0.0),
    "max_rounds": integer(1),
}

register_method(
    MethodInfo(
        name="darts",
        fn=darts,
        origin="betty",
        summary="finite-difference mixed derivative with H^-1 ≈ I and no step size (Betty's darts)",
        cost="2 forward + 2 backward passes of the lower loss, no double backward",
        memory="one lower step (the first perturbed graph is freed before the second is built)",
        options=FD_OPTIONS,
        checks=_STEP,
    )
)
register_method(
    MethodInfo(
        name="sama",
        fn=sama,
        origin="betty",
        summary="darts with the vector preconditioned by the lower Adam update (SAMA)",
        cost="as darts plus elementwise preconditioning",
        memory="one lower step",
        options=SAMA_OPTIONS,
        checks=_STEP,
        optimizers=("Adam", "AdamW", "SGD"),
    )
)
register_method(
    MethodInfo(
        name="one_step",
        fn=one_step,
        origin="medmlo",
        summary="true one-step unrolled hypergradient: the last lower step differentiated, each hop scaled by the "
        "lower optimizer's update Jacobian (lr for SGD; Adam/RMSprop preconditioner) at the pre-step iterate",
        cost="as darts (2 forward + 2 backward passes), plus one parameter copy per lower step",
        memory="one lower step plus two parameter-sized vectors (pre-step iterate, update Jacobian)",
        options={"alpha": (None, 0.01)},
        checks=_STEP,
        optimizers=_ADAPTIVE_OPTIMIZERS,
        on_lower_step=record_one_step,
    )
)
register_method(
    MethodInfo(
        name="neumann",
        fn=neumann,
        origin="betty",
        summary="implicit gradient with a truncated Neumann series (Hessian or Gauss-Newton curvature)",
        cost="1 backward with create_graph + `iterations` curvature products + 1 mixed VJP",
        memory="one double-backward graph of a lower step",
        options=NEUMANN_OPTIONS,
        checks=NEUMANN_CHECKS,
    )
)
register_method(
    MethodInfo(
        name="cg",
        fn=cg,
        origin="medmlo",
        summary="implicit gradient by CG or MINRES (Hessian or Gauss-Newton curvature, adaptive damping), "
        "residual and products reported",
        cost="1 backward with create_graph + <= maxiter curvature products + 1 mixed VJP",
        memory="one double-backward graph of a lower step, independent of K",
        options=CG_OPTIONS,
        checks=CG_CHECKS,
    )
)
register_method(
    MethodInfo(
        name="cg_warm",
        fn=cg_warm,
        origin="medmlo",
        summary="cg warm-started from this hop's previous solution, restarted cold when that start is worse than zero "
        "(RM-MetaL Subroutine 1)",
        cost="as cg, +1 product for the warm start's residual (not taken from maxiter)",
        memory="as cg plus one parameter-sized solution vector kept between steps; independent of K",
        options=CG_OPTIONS,
        checks=CG_CHECKS,
    )
)
register_method(
    MethodInfo(
        name="exact",
        fn=exact,
        origin="medmlo",
        summary="iterative differentiation through the last K (or `truncate`) unrolled lower steps",
        cost="T forward + T backward with create_graph + one reverse pass through them (≈3T lower steps)",
        memory="grows linearly with T (activations of T steps during the hop; T batches kept)",
        options=EXACT_OPTIONS,
        checks=EXACT_CHECKS,
        optimizers=_ADAPTIVE_OPTIMIZERS,
        on_lower_step=record_step,
    )
)
register_method(
    MethodInfo(
        name="first_order",
        fn=first_order,
        origin="medmlo",
        summary="second-order term dropped: Jacobian of the start map only (FOMAML/Reptile-style), else 0",
        cost="one vector-Jacobian product of the start map (nothing without one)",
        memory="none",
        needs_start=True,
    )
)
register_method(
    MethodInfo(
        name="penalty",
        fn=penalty,
        origin="medmlo",
        summary="penalty method (Bian et al. Algorithm 2): both levels descend L_val + λ/2 ||∇_θ L_tr||², held "
        "batches, δ and λ schedules",
        cost="per lower step: 1 backward with graph + 1 Hessian-vector product + 1 upper backward",
        memory="one double-backward graph of a lower step",
        options=PENALTY_OPTIONS,
        checks=PENALTY_CHECKS,
        on_lower_step=penalty_lower_step,
    )
)
register_method(
    MethodInfo(
        name="betty_cg",
        fn=_betty_cg,
        origin="betty",
        summary="Betty 0.2.1's shipped cg, kept for comparison only (wrong direction update, no tolerance)",
        cost="1 backward with create_graph + `iterations` Hessian-vector products + 1 mixed VJP",
        memory="one double-backward graph of a lower step",
        options={"iterations": ("cg_iterations", 1), "alpha": ("cg_alpha", 1.0)},
        checks={"iterations": integer(1), "alpha": real(0.0, strict=True)},
        leaf_only=True,
    )
)
register_method(
    MethodInfo(
        name="reinforce",
        fn=None,
        origin="betty",
        summary="score-function hypergradient",
        cost="-",
        memory="-",
        refused=(
            "Betty 0.2.1's 'reinforce' is an unimplemented stub (it takes 3 arguments and is called "
            "with 4, so any use raises TypeError); choose darts, sama, one_step, cg, cg_warm, exact or first_order"
        ),
    )
)
