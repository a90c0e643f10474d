"""Every hypergradient method against closed-form hypergradients, at two and three levels."""

import pytest
import torch

from engines import closed_form

CG = {"maxiter": 60, "tol": 1e-10}
ACCURATE = [("exact", {}), ("cg", CG), ("cg_warm", CG)]
# methods whose direction theory guarantees on well-conditioned quadratics (H ≈ I up to a factor 4)
DIRECTIONAL = [("darts", {}), ("sama", {}), ("neumann", {"iterations": 5, "alpha": 0.25})]
WELL_CONDITIONED = ["ridge", "quadratic", "three_level", "two_uppers"]


@pytest.mark.parametrize("problem", WELL_CONDITIONED)
@pytest.mark.parametrize("method,options", ACCURATE, ids=[m for m, _ in ACCURATE])
def test_accurate_methods_match_closed_form(problem, method, options):
    for upper, r in closed_form.measure(closed_form.build(problem, method, options)).items():
        assert r["cosine"] >= 0.99, (problem, method, upper, r)
        if method != "exact":  # exact truncates to K steps; implicit solves are exact up to tol
            assert r["relative_error"] < 1e-5, (problem, method, upper, r)


@pytest.mark.parametrize("problem", WELL_CONDITIONED)
@pytest.mark.parametrize("method,options", DIRECTIONAL, ids=[m for m, _ in DIRECTIONAL])
def test_approximate_methods_point_the_right_way(problem, method, options):
    for upper, r in closed_form.measure(closed_form.build(problem, method, options)).items():
        assert r["cosine"] > 0.5, (problem, method, upper, r)


def test_first_order_and_exact_on_maml():
    exact = closed_form.measure(closed_form.build("maml", "exact"))["meta"]
    first = closed_form.measure(closed_form.build("maml", "first_order"))["meta"]
    assert exact["relative_error"] < 1e-8
    # (I - ηH)^K is positive definite here, so dropping it keeps an acute angle but not the length
    assert 0.3 < first["cosine"] < 0.999 and first["relative_error"] > 0.1


def test_first_order_drops_the_indirect_term_without_a_start_map():
    cf = closed_form.build("quadratic", "first_order")
    got = closed_form.capture(cf)["hyper"]
    upper = cf.graph["hyper"]
    direct = torch.autograd.grad(upper.training_step(None), upper.trainable_parameters())[0]
    assert torch.allclose(got, direct, rtol=1e-12, atol=1e-12)
    assert direct.norm() > 0


def test_exact_truncation_interpolates_towards_first_order():
    full = closed_form.measure(closed_form.build("quadratic", "exact", unroll=20))["hyper"]
    short = closed_form.measure(closed_form.build("quadratic", "exact", {"truncate": 2}, unroll=20))["hyper"]
    assert full["relative_error"] < short["relative_error"]


def test_ours_cg_fixes_bettys_shipped_cg():
    ours = closed_form.measure(closed_form.build("ridge", "cg", {"maxiter": 20, "tol": 0.0}))["decay"]
    betty = closed_form.measure(closed_form.build("ridge", "betty_cg", {"iterations": 20, "alpha": 0.5}))["decay"]
    assert ours["relative_error"] < 1e-6
    assert betty["relative_error"] > 0.1  # wrong whenever cg_alpha != 1 (old residual in the update)


def test_ill_conditioned_problem_separates_methods():
    cg = closed_form.measure(closed_form.build("quadratic_ill", "cg", {"maxiter": 200, "tol": 1e-12}))["hyper"]
    darts = closed_form.measure(closed_form.build("quadratic_ill", "darts"))["hyper"]
    assert cg["cosine"] > 0.999 and darts["relative_error"] > 0.5
