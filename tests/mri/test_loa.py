"""The LOA network follows Algorithm 1: the learned regulariser's gradient, both branches, the ε rules."""

import pytest
import torch

from problems.metarecon.loa import FeatureCNN, LOANetwork, LOASettings, smoothed_relu, smoothed_relu_derivative
from problems.mri import SingleCoil, fft2c, sampling_mask


def problem(batch=3, size=24, ratio=0.25, seed=0):
    """A float64 single-coil problem: smooth random images, radial mask, k-space y = P F x."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.nn.functional.avg_pool2d(
        torch.rand(batch, 1, size, size, generator=gen, dtype=torch.float64), 5, stride=1, padding=2
    )[:, 0]
    op = SingleCoil(sampling_mask("radial", ratio, (size, size), cache=False).double())
    return images, op, op(images.to(torch.complex128))


def network(seed=0, **settings):
    torch.manual_seed(seed)
    return LOANetwork(LOASettings(**settings)).double()


def test_smoothed_relu_is_eq_19_and_its_derivative():
    x = torch.linspace(-0.004, 0.004, 101, dtype=torch.float64)
    d = 1e-3
    expected = torch.where(x <= -d, torch.zeros_like(x), torch.where(x >= d, x, x * x / (4 * d) + x / 2 + d / 4))
    assert torch.allclose(smoothed_relu(x, d), expected, atol=1e-15)
    x = x[(x.abs() - d).abs() > 1e-9].requires_grad_(True)  # away from the two kinks' exact points
    (grad,) = torch.autograd.grad(smoothed_relu(x, d).sum(), x)
    assert torch.allclose(grad, smoothed_relu_derivative(x.detach(), d))


def test_block_real_convolution_is_the_complex_convolution():
    torch.manual_seed(0)
    g = FeatureCNN(channels=4, layers=3).double()
    x = torch.randn(2, 10, 12, dtype=torch.complex128)
    h = x.unsqueeze(1)
    for i, kernel in enumerate(g.kernels()):
        if i:
            h = torch.complex(smoothed_relu(h.real), smoothed_relu(h.imag))
        h = torch.nn.functional.conv2d(h, kernel, padding=1)
    assert torch.allclose(g(x), h, atol=1e-12)


def test_regularizer_gradient_is_eq_a2_and_matches_autograd():
    net = network()
    x = torch.randn(3, 16, 18, dtype=torch.complex128, requires_grad=True)
    eps = torch.tensor([1e-3, 1e-2, 0.5], dtype=torch.float64)
    value, grad = net.regularizer_and_gradient(x, eps)
    (expected,) = torch.autograd.grad(net.regularizer(x, eps).sum(), x)
    assert torch.allclose(value, net.regularizer(x, eps)) and torch.allclose(grad, expected, atol=1e-10)
    images, op, y = problem()
    weight = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    x = op.adjoint(y).requires_grad_(True)
    phi, grad_phi = net.objective_and_gradient(x, y, op, weight, eps)
    (expected,) = torch.autograd.grad(net.objective(x, y, op, weight, eps).sum(), x)
    assert torch.allclose(grad_phi, expected, atol=1e-10)


def test_the_u_step_is_taken_when_both_descent_tests_hold():
    images, op, y = problem()
    net = network(tau0=0.01)
    weight = torch.full((3,), 0.5, dtype=torch.float64)
    x1, trace = net(y, op, weight, phases=1, trace=True)
    assert trace.accepted_u[0].all() and (trace.backtracks[0] == -1).all()
    x0 = op.adjoint(y)
    eps = net.eps0.abs().expand(3)
    z = x0 - net.alpha[0] * op.data_gradient(x0, y)  # line 3
    u = z - net.tau[0] * 0.5 * net.regularizer_and_gradient(z, eps)[1]  # line 4
    assert torch.allclose(x1, u, atol=1e-12)
    assert (trace.objective[0] < trace.objective_before[0]).all()


def test_the_safeguard_runs_when_the_descent_test_fails_and_decreases_the_objective():
    images, op, y = problem()
    net = network(tau0=50.0)  # u overshoots the stiff regulariser: line 5 must fail
    weight = torch.full((3,), 0.5, dtype=torch.float64)
    x0 = op.adjoint(y)
    eps = net.eps0.abs().expand(3)
    phi0, grad0 = net.objective_and_gradient(x0, y, op, weight, eps)
    x1, trace = net(y, op, weight, phases=1, trace=True)
    assert not trace.accepted_u[0].any()
    k = trace.backtracks[0]
    assert (k >= 0).all() and (k <= net.settings.max_backtracks).all()
    v = x0 - (net.alpha[0] * net.settings.rho ** k.double()).view(-1, 1, 1) * grad0  # lines 8-12
    assert torch.allclose(x1, v, atol=1e-12)
    phi1 = net.objective(x1, y, op, weight, eps)
    step = torch.linalg.vector_norm((x1 - x0).flatten(1), dim=1)
    assert (phi1 - phi0 <= -(step**2) / net.settings.a).all() and (phi1 < phi0).all()  # the line-9 descent holds
    assert torch.allclose(trace.objective[0], phi1.detach())
    # a step size that is too long is really reduced: with α = 50 every sample backtracks at least once
    with torch.no_grad():
        net.alpha_raw.fill_(50.0)  # softplus(50) = 50
    _, trace = net(y, op, weight, phases=1, trace=True)
    assert (trace.backtracks[0] >= 1).all() and (trace.objective[0] < trace.objective_before[0]).all()


def test_gradients_flow_through_the_branch_each_sample_took():
    images, op, y = problem()
    for tau, used in ((0.01, "tau"), (50.0, "alpha")):
        net = network(tau0=tau, phases=2)
        x, trace = net(y, op, torch.full((3,), 0.5, dtype=torch.float64), phases=1, trace=True)
        assert trace.accepted_u[0].all() == (used == "tau") and trace.accepted_u[0].any() == (used == "tau")
        (x - images).abs().pow(2).mean().backward()
        assert net.alpha_raw.grad[0] != 0 and net.eps0.grad != 0 and net.g.real[0].grad.abs().sum() > 0
        assert (net.tau_raw.grad[0] != 0) == (used == "tau")  # the safeguard's v does not use τ
        assert net.alpha_raw.grad[1] == 0 and net.tau_raw.grad[1] == 0  # phase 2 did not run


def test_epsilon_reduction_and_termination():
    images, op, y = problem()
    weight = torch.full((3,), 0.5, dtype=torch.float64)
    net = network(eps0=1e4)  # ||∇φ(x_1)|| < σγε certainly: ε ← γε (line 15)
    _, trace = net(y, op, weight, phases=2, trace=True)
    assert torch.allclose(trace.eps[0], torch.full((3,), 0.9e4, dtype=torch.float64))
    assert torch.allclose(trace.eps[1], torch.full((3,), 0.81e4, dtype=torch.float64))
    net = network(eps0=1e-3)
    _, trace = net(y, op, weight, phases=2, trace=True)
    assert torch.allclose(trace.eps[1], torch.full((3,), 1e-3, dtype=torch.float64))  # no reduction
    net = network(eps0=1e-3, eps_tol=1e-2, phases=4)  # σε < ε_tol after phase 1: terminate (line 16)
    one, trace = net(y, op, weight, phases=1, trace=True)
    four, trace = net(y, op, weight, phases=4, trace=True)
    assert torch.equal(one, four) and len(trace.active) == 1


def test_the_trace_records_both_sides_of_the_epsilon_test():
    images, op, y = problem()
    weight = torch.full((3,), 0.5, dtype=torch.float64)
    net = network(phases=3)
    _, trace = net(y, op, weight, trace=True)
    for t in range(3):  # the record is the test of line 15: ‖∇φ_ε(x_{t+1})‖ against σγε_t
        x_next = net(y, op, weight, phases=t + 1)
        eps = trace.eps[t - 1] if t else net.eps0.detach().abs().expand(3)
        _, grad = net.objective_and_gradient(x_next, y, op, weight, eps)
        assert torch.allclose(trace.grad_norm[t], grad.flatten(1).norm(dim=1))
        assert torch.allclose(trace.threshold[t], 0.9 * eps)
    summary = trace.summary()
    assert summary["eps_reduced"] == 0.0 and summary["grad_over_eps_threshold"] > 1
    ratio = torch.stack(trace.grad_norm) / torch.stack(trace.threshold)
    assert summary["grad_over_eps_threshold"] == pytest.approx(float(ratio.flatten().median()))
    big = network(phases=3, sigma=10 * summary["grad_over_eps_threshold"] * float(ratio.max() / ratio.min()))
    _, trace = big(y, op, weight, trace=True)  # σ beyond every ratio: ε shrinks at every phase
    assert big.settings.sigma > 1 and trace.summary()["eps_reduced"] == 1.0
    assert torch.allclose(trace.eps[2], net.eps0.detach().abs() * 0.9**3)


def test_phases_and_settings_are_checked():
    images, op, y = problem()
    net = network(phases=3)
    with pytest.raises(ValueError, match="phases must lie in 1..3"):
        net(y, op, torch.ones(3, dtype=torch.float64), phases=4)
    with pytest.raises(ValueError, match="rho must lie in"):
        LOANetwork(LOASettings(rho=1.5))
    with pytest.raises(ValueError, match="tau0 must be positive"):
        LOANetwork(LOASettings(tau0=-1.0))
    assert torch.allclose(net.alpha, torch.full((3,), 0.5, dtype=torch.float64))
    assert not torch.allclose(
        net(y, op, torch.ones(3, dtype=torch.float64), phases=1),
        net(y, op, torch.ones(3, dtype=torch.float64), phases=3),
    )
    assert torch.is_complex(fft2c(net(y, op, torch.ones(3, dtype=torch.float64))))


def test_the_network_accepts_a_multi_coil_forward_model():
    from problems.mri import MultiCoil, simulate_coil_maps

    images, _, _ = problem()
    maps = simulate_coil_maps((24, 24), 4, seed=1, dtype=torch.complex128)[None]
    op = MultiCoil(sampling_mask("radial", 0.25, (24, 24), cache=False).double(), maps)
    y = op(images.to(torch.complex128))
    net = network()
    x, trace = net(y, op, torch.full((3,), 0.5, dtype=torch.float64), phases=2, trace=True)
    assert x.shape == images.shape
    assert all((after < before).all() for before, after in zip(trace.objective_before, trace.objective))
