"""The conjugate-gradient solver on its own: tolerance, warm start, damping, blocks."""

import torch

from engines.hypergrad import conjugate_gradient


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
