"""Implicit solves on non-convex levels: Gauss-Newton products, MINRES, adaptive damping, warm-start safeguard."""

import functools
import json

import core_toys
import pytest
import torch
from torch import nn

from engines import closed_form, run
from engines.hypergrad import curvature_product

mlp_graph = functools.partial(core_toys.mlp_graph, mark=True)


def hops(folder):
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    return [ln["hypergradient"]["weights<-net"]["net->weights"] for ln in lines if ln["level"] == "weights"]


def test_gauss_newton_product_equals_the_dense_generalised_gauss_newton_matrix():
    g = mlp_graph()
    run(g, 2, device="cpu", progress=False)  # a real iterate, a real batch
    net = g["net"]
    params, _, product, used = curvature_product(net, "gauss_newton")
    assert used == "gauss_newton"
    x, y, idx = net.cur_batch
    names = [n for n, _ in net.module.named_parameters()]
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]
    flat = torch.cat([p.detach().flatten() for p in params])

    def split(v):
        return [c.view(s) for c, s in zip(torch.split(v, sizes), shapes)]

    def logits_of(v):
        return torch.func.functional_call(net.module, dict(zip(names, split(v))), (x,))

    weights = torch.sigmoid(net.weights.module(idx)).squeeze(1).detach()
    J = torch.autograd.functional.jacobian(logits_of, flat).reshape(-1, flat.numel())
    z = logits_of(flat).detach()
    Hz = torch.autograd.functional.hessian(
        lambda zz: (weights * nn.functional.cross_entropy(zz.view_as(z), y, reduction="none")).mean(), z.flatten()
    )
    dense = J.T @ Hz @ J + 2e-3 * torch.eye(flat.numel(), dtype=flat.dtype)  # + the regulariser's exact Hessian
    v = torch.randn_like(flat)
    got = torch.cat([t.flatten() for t in product(split(v))])
    assert torch.allclose(got, dense @ v, rtol=1e-8, atol=1e-10)
    evals = torch.linalg.eigvalsh(dense)
    assert evals.min() > 0  # positive definite, unlike the Hessian of this non-convex level


def test_gauss_newton_cg_converges_on_a_non_convex_level_where_hessian_cg_does_not(tmp_path):
    options = {"maxiter": 15, "tol": 1e-3, "adaptive_damping": False}
    run(mlp_graph("cg", {**options, "curvature": "hessian"}), 6, out=tmp_path / "h", device="cpu", progress=False)
    run(
        mlp_graph("cg", {**options, "curvature": "gauss_newton", "damping": 1e-2}),
        6,
        out=tmp_path / "gn",
        device="cpu",
        progress=False,
    )
    hessian, gn = hops(tmp_path / "h"), hops(tmp_path / "gn")
    assert all(h["curvature"] == "gauss_newton" and h["residual"] <= 1e-3 for h in gn)
    assert max(h["residual"] for h in hessian) > 1e-3  # negative curvature stops plain CG short


def test_minres_solves_the_closed_form_problem_like_cg():
    result = closed_form.measure(
        closed_form.build("quadratic", "cg", {"solver": "minres", "maxiter": 60, "tol": 1e-11})
    )["hyper"]
    assert result["relative_error"] < 1e-8


def test_minres_on_the_indefinite_hessian_never_ends_worse_than_zero(tmp_path):
    run(
        mlp_graph("cg", {"solver": "minres", "curvature": "hessian", "maxiter": 10, "adaptive_damping": False}),
        6,
        out=tmp_path,
        device="cpu",
        progress=False,
    )
    assert all(h["residual"] <= 1.0 for h in hops(tmp_path))  # MINRES' residual never grows


def test_damping_adapts_until_the_solve_converges_within_its_budget(tmp_path):
    run(
        mlp_graph("cg", {"maxiter": 6, "tol": 1e-4, "target_residual": 1e-4, "curvature": "gauss_newton"}),
        12,
        out=tmp_path,
        device="cpu",
        progress=False,
    )
    reports = hops(tmp_path)
    assert reports[0]["damping"] == 0.0 and reports[0]["residual"] > 1e-4  # too few products without damping
    assert reports[-1]["residual"] <= 1e-4 and reports[-1]["damping"] > 0  # raised until it converges


def test_negative_curvature_raises_the_damping_within_the_same_solve(tmp_path):
    run(
        mlp_graph("cg", {"maxiter": 30, "tol": 1e-6, "curvature": "hessian"}),
        6,
        out=tmp_path,
        device="cpu",
        progress=False,
    )
    reports = hops(tmp_path)
    met = [h for h in reports if h["negative_curvature"] > 0]
    assert met, "the MLP's Hessian should be indefinite somewhere"
    assert all(h["damping"] > 0 and h["residual"] < 1.0 for h in met)


def test_a_warm_start_worse_than_zero_restarts_cold_and_is_counted(tmp_path):
    run(
        mlp_graph(
            "cg_warm", {"maxiter": 10, "tol": 1e-8, "curvature": "gauss_newton", "damping": 1e-2}, upper_sign_flips=True
        ),
        12,
        out=tmp_path,
        device="cpu",
        progress=False,
    )
    reports = hops(tmp_path)
    restarted = [i for i, h in enumerate(reports) if h["cold_restart"]]
    assert restarted and reports[-1]["cold_restarts_total"] == len(restarted)
    assert all(h["residual"] < 1.0 for h in reports)
    # the warm start's residual costs one product that does not come out of maxiter
    assert max(h["products"] for h in reports) <= 10 + 2


def test_hypergradients_can_be_read_per_upper_and_path(tmp_path):
    g = mlp_graph("darts")
    run(g, 3, out=tmp_path, device="cpu", progress=False)
    readout = g["weights"].hypergradients["weights<-net"]
    assert readout[0].shape == g["weights"].module.weight.shape
    logged = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()][-1]
    assert logged["level"] == "weights"
    norm = float(readout[0].norm())
    assert logged["hypergradient"]["weights<-net"]["norm"] == pytest.approx(norm, rel=1e-9)
