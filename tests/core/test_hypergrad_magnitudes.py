"""The approximate methods against their *own* closed forms, magnitude included, and warm starts kept
per path.

darts, sama, one_step and neumann are approximations of the implicit hypergradient, so comparing them
with it can only check a direction. Each is, however, an exact formula of its own on the quadratic
problem ``g(w, λ) = wᵀHw/2 - wᵀCλ``, ``f = ||w - t||²/2 + λᵀDλ/2`` (``∂²g/∂λ∂w = -Cᵀ``, ``v = w - t``):

* darts: ``Cᵀ v`` at the current iterate (H⁻¹ ≈ I, no step size);
* sama: ``Cᵀ P(v)``, ``P`` the SAMA preconditioner of the lower Adam state (Betty's rule);
* one_step with SGD: ``ξ Cᵀ v`` (ξ the lower learning rate);
* neumann: ``Cᵀ α Σ_{j=0}^{J} (I - αH)^j v``.

Central differences of a gradient that is linear in ``w`` are exact up to rounding, so each must
match to about 1e-9: a central difference divided by ε instead of 2ε, or a dropped α, fails.
"""

from __future__ import annotations

import functools

import pytest
import torch
from betty.hypergradient.utils import precondition

from engines import Runner, closed_form

DATA = closed_form.quadratic_data()  # the data closed_form.quadratic builds its problem from (same defaults)


def _hop_and_v(cf: closed_form.ClosedForm) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``cf`` to its first upper step; return the hop of its one path and ``v = ∂f/∂w`` it was given."""
    closed_form.capture(cf)
    hop = cf.graph["hyper"].hypergradients["hyper<-solution"][0]
    v = cf.graph["solution"].module.value.detach() - DATA["t"]
    return hop, v


def _assert_matches(got: torch.Tensor, want: torch.Tensor) -> None:
    assert want.norm() > 0.1
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-12), float((got - want).norm() / want.norm())


def test_darts_is_c_transpose_v_at_the_current_iterate():
    hop, v = _hop_and_v(closed_form.build("quadratic", "darts", unroll=1))
    _assert_matches(hop, DATA["C"].T @ v)


def test_sama_is_c_transpose_of_the_adam_preconditioned_v():
    cf = closed_form.build(
        "quadratic", "sama", unroll=1, lower_optimizer=functools.partial(torch.optim.Adam, lr=0.01, betas=(0.5, 0.9))
    )
    hop, v = _hop_and_v(cf)
    (preconditioned,) = precondition([v], cf.graph["solution"])  # Betty's rule on the state the hop saw
    assert not torch.allclose(preconditioned, v)  # with Adam the preconditioner is not the identity
    _assert_matches(hop, DATA["C"].T @ preconditioned)


@pytest.mark.parametrize("unroll", [1, 3])
def test_one_step_with_sgd_is_the_step_size_times_c_transpose_v(unroll):
    cf = closed_form.build("quadratic", "one_step", unroll=unroll)
    hop, v = _hop_and_v(cf)
    lr = cf.graph["solution"].optimizer.param_groups[0]["lr"]
    assert lr < 0.5  # so a dropped step size is visible
    _assert_matches(hop, lr * DATA["C"].T @ v)


@pytest.mark.parametrize("iterations,alpha", [(0, 0.3), (3, 0.25), (6, 0.1)])
def test_neumann_is_c_transpose_of_its_truncated_series(iterations, alpha):
    cf = closed_form.build("quadratic", "neumann", {"iterations": iterations, "alpha": alpha}, unroll=1)
    hop, v = _hop_and_v(cf)
    H = DATA["H"]
    step = torch.eye(len(H), dtype=H.dtype) - alpha * H
    series = sum(torch.linalg.matrix_power(step, j) for j in range(iterations + 1))
    _assert_matches(hop, DATA["C"].T @ (alpha * series @ v))


def test_two_paths_through_one_level_keep_separate_cg_warm_solutions():
    """Two uppers share one lower level; each path warm-starts from its own previous solution.

    With two CG iterations per outer step, a solve reaches the exact hypergradient only by carrying
    its progress over many outer steps (the lower level is converged and the uppers do not move, so
    each path's system stays the same): one warm-start slot shared by the two paths would start each
    solve from the other path's solution and never get there, and a cold solve never gets there either.
    """
    options = {"maxiter": 2, "tol": 0.0, "adaptive_damping": False}
    outer_steps = 30
    results = {}
    for method in ("cg_warm", "cg"):
        cf = closed_form.build("two_uppers", method, options, unroll=1)
        runner = Runner(cf.graph, cf.steps + outer_steps, device="cpu", progress=False)
        runner.run()
        results[method] = {
            name: float(
                (cf.graph[name].hypergradients[f"{name}<-shared"][0] - cf.exact[name]()).norm()
                / cf.exact[name]().norm()
            )
            for name in ("first", "second")
        }
        if method == "cg_warm":
            solutions = [s["solution"] for s in cf.graph["shared"].method_state.values() if "solution" in s]
    assert max(results["cg_warm"].values()) < 1e-7, results
    assert min(results["cg"].values()) > 1e-3, results  # two cold iterations are far from the solution
    assert len(solutions) == 2 and not torch.allclose(solutions[0][0], solutions[1][0])
