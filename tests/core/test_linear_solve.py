"""The Krylov solvers on their own: tolerance, warm start (and its fallback to zero), damping, blocks, MINRES."""

import itertools

import pytest
import torch

from engines.hypergrad import conjugate_gradient, minres


def _spd(n, seed, cond=50.0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.logspace(0, torch.log10(torch.tensor(cond)).item(), n, dtype=torch.float64)) @ q.T


def test_solves_to_tolerance_and_reports_residual():
    A, b = _spd(30, 0), torch.randn(30, dtype=torch.float64)
    res = conjugate_gradient(lambda v: [A @ v[0]], [b], tol=1e-10, maxiter=100)
    assert res.converged and res.relative_residual <= 1e-10
    assert torch.allclose(res.x[0], torch.linalg.solve(A, b), atol=1e-8)
    assert res.iterations < 2 * 30  # n in exact arithmetic; rounding costs a few more


def test_stops_at_maxiter_and_says_so():
    A, b = _spd(30, 1), torch.randn(30, dtype=torch.float64)
    res = conjugate_gradient(lambda v: [A @ v[0]], [b], tol=1e-14, maxiter=3)
    assert res.iterations == 3 and not res.converged and res.relative_residual > 1e-6


def test_warm_start_needs_fewer_iterations():
    A, b = _spd(40, 2), torch.randn(40, dtype=torch.float64)
    cold = conjugate_gradient(lambda v: [A @ v[0]], [b], tol=1e-8, maxiter=200)
    near = cold.x[0] + 1e-6 * torch.randn(40, dtype=torch.float64)
    warm = conjugate_gradient(lambda v: [A @ v[0]], [b], x0=[near], tol=1e-8, maxiter=200)
    assert warm.converged and warm.iterations < cold.iterations


def test_damping_solves_the_shifted_system_even_when_singular():
    A = torch.diag(torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64))  # singular
    b = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    res = conjugate_gradient(lambda v: [A @ v[0]], [b], damping=0.5, tol=1e-12, maxiter=10)
    assert torch.allclose(res.x[0], torch.linalg.solve(A + 0.5 * torch.eye(3, dtype=torch.float64), b))


def test_blockwise_equals_separate_solves():
    blocks = torch.stack([_spd(8, s, cond=5.0 * (s + 1)) for s in range(4)])
    b = torch.randn(4, 8, dtype=torch.float64)
    res = conjugate_gradient(
        lambda v: [torch.einsum("bij,bj->bi", blocks, v[0])], [b], tol=1e-12, maxiter=50, blockwise=True
    )
    for i in range(4):
        alone = conjugate_gradient(lambda v, i=i: [blocks[i] @ v[0]], [b[i]], tol=1e-12, maxiter=50)
        assert torch.allclose(res.x[0][i], alone.x[0], atol=1e-10)


def test_negative_curvature_stops_the_block_without_dividing_by_it():
    A = torch.diag(torch.tensor([-1.0, -2.0], dtype=torch.float64))
    res = conjugate_gradient(lambda v: [A @ v[0]], [torch.ones(2, dtype=torch.float64)], maxiter=5)
    assert torch.isfinite(res.x[0]).all() and not res.converged
    assert res.min_curvature < 0  # reported, so a caller can tell the system was not positive definite


def _indefinite(n, seed):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.linspace(-2.0, 3.0, n, dtype=torch.float64) + 0.01) @ q.T


def test_minres_solves_indefinite_systems_where_cg_breaks_down():
    A, b = _indefinite(30, 0), torch.randn(30, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    res = minres(lambda v: [A @ v[0]], [b], tol=1e-10, maxiter=80)
    assert res.converged and torch.allclose(res.x[0], torch.linalg.solve(A, b), atol=1e-8)
    assert not conjugate_gradient(lambda v: [A @ v[0]], [b], tol=1e-10, maxiter=80).converged


def test_minres_residual_never_increases_with_more_iterations():
    A, b = _indefinite(40, 2), torch.randn(40, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    residuals = [minres(lambda v: [A @ v[0]], [b], tol=0.0, maxiter=k).relative_residual for k in range(1, 25)]
    assert all(later <= earlier * (1 + 1e-9) for earlier, later in itertools.pairwise(residuals))


def test_minres_blockwise_equals_separate_solves():
    blocks = torch.stack([_indefinite(10, s) for s in range(3)])
    b = torch.randn(3, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    res = minres(lambda v: [torch.einsum("bij,bj->bi", blocks, v[0])], [b], tol=1e-12, maxiter=60, blockwise=True)
    for i in range(3):
        assert torch.allclose(res.x[0][i], torch.linalg.solve(blocks[i], b[i]), atol=1e-8)


@pytest.mark.parametrize("solver", [conjugate_gradient, minres])
def test_a_warm_start_worse_than_zero_falls_back_to_zero_per_block(solver):
    blocks = torch.stack([_spd(6, s) for s in range(2)])
    b = torch.randn(2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    exact = torch.stack([torch.linalg.solve(blocks[i], b[i]) for i in range(2)])
    x0 = torch.stack([exact[0] + 1e-3, -50 * exact[1]])  # block 0: a good start; block 1: far worse than zero
    res = solver(
        lambda v: [torch.einsum("bij,bj->bi", blocks, v[0])],
        [b],
        x0=[x0],
        tol=1e-10,
        maxiter=40,
        blockwise=True,
        cold_if_worse=True,
    )
    assert res.restarted == 1 and res.initial_relative_residual > 1 and res.converged
    assert torch.allclose(res.x[0], exact, atol=1e-8)


def _gauss_newton_system(seed=5):
    """``A = Mᵀ M`` with the image ``M v`` formed on the way, as a Gauss-Newton product forms ``J v``."""
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(12, 30, generator=g, dtype=torch.float64)
    last = {}

    def matvec(v):
        last["v"], last["image"] = v, [M @ v[0]]
        return [M.T @ last["image"][0]]

    def image(v):
        return last["image"] if last.get("v") is v else None

    return M, matvec, image, torch.randn(30, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("start", ["cold", "warm", "warm worse than zero"])
def test_cg_carries_the_image_of_its_iterate(start):
    """``L x`` accumulated from the products' ``L p`` equals ``L`` applied to the solution."""
    M, matvec, image, b = _gauss_newton_system()
    x0 = {"cold": None, "warm": [0.01 * b], "warm worse than zero": [-100.0 * b]}[start]
    res = conjugate_gradient(matvec, [b], x0=x0, damping=0.3, tol=1e-12, maxiter=25, cold_if_worse=True, image=image)
    assert res.restarted == (start == "warm worse than zero")
    assert torch.linalg.norm(res.image[0] - M @ res.x[0]) <= 1e-10 * torch.linalg.norm(M @ res.x[0])
    assert torch.linalg.norm(res.best_image[0] - M @ res.best[0]) <= 1e-10 * torch.linalg.norm(M @ res.best[0])


def test_cg_drops_the_image_when_a_product_has_none_and_blockwise_never_carries_one():
    M, matvec, image, b = _gauss_newton_system()
    calls = itertools.count()
    flaky = conjugate_gradient(
        matvec, [b], damping=0.3, maxiter=6, image=lambda v: None if next(calls) == 3 else image(v)
    )
    assert flaky.image is None and flaky.iterations == 6  # the solve itself goes on
    blocks = conjugate_gradient(
        lambda v: [v[0] @ (M.T @ M)], [b.repeat(2, 1)], damping=0.3, blockwise=True, image=image
    )
    assert blocks.image is None


@pytest.mark.parametrize("start", ["cold", "warm"])
def test_a_vector_of_several_tensors_is_solved_as_their_concatenation(start):
    """A network's parameters are many tensors; CG runs on their concatenation (one kernel per vector
    operation, not one per tensor) and gives the one-tensor solve's iterates and image bit for bit, while
    the products and the image see tensors shaped like ``b``."""
    M, matvec, image, b = _gauss_newton_system()
    shapes = [(2, 3), (4,), (5, 4)]

    def parts(t):
        return [c.reshape(s) for c, s in zip(torch.split(t, [6, 4, 20]), shapes)]

    seen, last = set(), {}

    def matvec_parts(v):
        seen.add(tuple(tuple(t.shape) for t in v))
        last["v"], last["image"] = v, [M @ torch.cat([t.reshape(-1) for t in v])]
        return parts(M.T @ last["image"][0])

    def image_parts(v):
        return last["image"] if last.get("v") is v else None

    x0 = None if start == "cold" else 0.01 * b
    options = {"damping": 0.3, "tol": 1e-12, "maxiter": 8}
    whole = conjugate_gradient(matvec, [b], x0=None if x0 is None else [x0], image=image, **options)
    split = conjugate_gradient(
        matvec_parts, parts(b), x0=None if x0 is None else parts(x0), image=image_parts, **options
    )
    assert seen == {tuple(shapes)}
    assert [tuple(t.shape) for t in split.x] == shapes and split.iterations == whole.iterations
    assert torch.equal(torch.cat([t.reshape(-1) for t in split.x]), whole.x[0])
    assert torch.equal(split.image[0], whole.image[0])
