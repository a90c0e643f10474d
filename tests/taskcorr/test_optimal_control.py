"""The optimal-control network: the adjoint (Lagrange-multiplier) gradient equals autograd's (Theorem 1),
first and second order, single- and multi-coil; the checkpointed variant keeps less memory; bad input fails."""

import pytest
import torch

from engines import track_peak_memory
from problems.mri import fft2c, ifft2c, simulate_coil_maps
from problems.mri.masks import sampling_mask
from problems.taskcorr import LossWeights, reconstruction_loss
from problems.taskcorr.optimal_control import GRADIENT_PATHS, ControlNetConfig, OptimalControlNet, combined_magnitude


def problem(coils: int, phases: int, size: int = 16, batch: int = 2, dtype=torch.float64, seed: int = 0):
    """A float64 network and multi-coil data (random images, simulated coils, a radial mask)."""
    torch.manual_seed(seed)
    config = ControlNetConfig(coils=coils, phases=phases, width=4, features=3, kernel=3, threshold=0.05)
    net = OptimalControlNet(config).to(dtype)
    complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    images = torch.rand(batch, size, size, dtype=dtype)
    targets = simulate_coil_maps((size, size), coils, dtype=complex_dtype) * images[:, None]
    mask = sampling_mask("radial", 0.3, (size, size), cache=False).to(dtype)
    return net, mask * fft2c(targets), mask, targets


def loss_of(net, kspace, mask, targets):
    return reconstruction_loss(net(kspace, mask), targets, LossWeights(coils=1.0, initial=0.01)).sum()


def gradients(net, kspace, mask, targets, path, create_graph=False):
    net.gradient = path
    params = list(net.parameters())
    return params, torch.autograd.grad(loss_of(net, kspace, mask, targets), params, create_graph=create_graph)


def assert_close_per_parameter(got, want, names, rtol=1e-6):
    for name, g, w in zip(names, got, want):
        assert w.abs().max() > 0, f"{name}: autograd gradient is zero, the comparison would be void"
        relative = float((g - w).norm() / w.norm())
        assert relative <= rtol, f"{name}: relative difference {relative:.2e}"


@pytest.mark.parametrize("coils", [1, 4], ids=["single-coil", "multi-coil"])
@pytest.mark.parametrize(
    "path,checkpoint_every", [("adjoint", None), ("adjoint_checkpointed", 2), ("adjoint_checkpointed", 3)]
)
def test_adjoint_gradient_equals_autograd_on_every_parameter(coils, path, checkpoint_every):
    net, kspace, mask, targets = problem(coils, phases=5)
    if checkpoint_every:
        net.checkpoint_every = checkpoint_every
    names = [n for n, _ in net.named_parameters()]
    _, reference = gradients(net, kspace, mask, targets, "autograd")
    _, adjoint = gradients(net, kspace, mask, targets, path)
    assert_close_per_parameter(adjoint, reference, names)


@pytest.mark.parametrize("path", ["adjoint", "adjoint_checkpointed"])
def test_adjoint_is_twice_differentiable_like_autograd(path):
    """A Hessian-vector product through the costate recursion (what cg / exact hypergradients need)."""
    net, kspace, mask, targets = problem(coils=2, phases=3)
    names = [n for n, _ in net.named_parameters()]
    vector = [torch.randn_like(p) for p in net.parameters()]
    hvps = {}
    for p in ("autograd", path):
        params, grads = gradients(net, kspace, mask, targets, p, create_graph=True)
        hvps[p] = torch.autograd.grad(grads, params, vector)
    assert_close_per_parameter(hvps[path], hvps["autograd"], names)


def test_every_path_gives_the_same_reconstruction_and_needs_no_coil_maps():
    net, kspace, mask, targets = problem(coils=3, phases=2)
    outputs = {}
    for path in GRADIENT_PATHS:
        net.gradient = path
        recon = net(kspace, mask)
        outputs[path] = combined_magnitude(recon.final)
        assert recon.final.shape == kspace.shape and recon.initial.shape == kspace.shape
    for path in GRADIENT_PATHS[1:]:
        assert torch.equal(outputs[path], outputs["autograd"])


def test_the_untrained_network_starts_near_the_zero_filled_coil_images():
    net, kspace, mask, _ = problem(coils=3, phases=3)
    net = OptimalControlNet(net.config).double()  # the real initialisation, threshold 0.05 aside
    zero_filled = ifft2c(kspace)
    with torch.no_grad():
        recon = net(kspace, mask)
    for x in recon:
        assert 0 < float((x - zero_filled).norm() / zero_filled.norm()) < 0.05


def test_phase_is_a_gradient_step_on_the_data_term_when_the_residual_is_zero():
    """With J̃'s last layer zeroed, F(x) = x - α A^H(Ax - y): measured samples are pulled to the data."""
    net, kspace, mask, targets = problem(coils=2, phases=1)
    phase = net.phases[0]
    with torch.no_grad():
        phase.spread[-1].weight_real.zero_()
        phase.spread[-1].weight_imag.zero_()
        phase.step.fill_(1.0)
    x = torch.randn_like(targets)
    out = phase(x, kspace, mask)
    assert torch.allclose(mask * fft2c(out), kspace, atol=1e-12)  # α = 1: exact data consistency
    assert torch.allclose((1 - mask) * fft2c(out), (1 - mask) * fft2c(x), atol=1e-12)


def peak_backward_bytes(path: str, phases: int) -> int:
    net, kspace, mask, targets = problem(coils=2, phases=phases, size=24, dtype=torch.float32)
    net.gradient = path
    with track_peak_memory("cpu") as mem:
        loss_of(net, kspace, mask, targets).backward()
    return mem.peak_bytes


def test_adjoint_paths_keep_less_memory_than_autograd():
    autograd, adjoint, checkpointed = (peak_backward_bytes(p, 9) for p in GRADIENT_PATHS)
    assert checkpointed < adjoint < autograd
    # autograd keeps all 9 phases' activations; the adjoint one phase's plus 10 states
    assert autograd > 3 * adjoint


def test_bad_inputs_fail_clearly():
    net, kspace, mask, targets = problem(coils=2, phases=1)
    with pytest.raises(ValueError, match="3 coils, the network was built for 2"):
        net(torch.cat([kspace, kspace[:, :1]], 1), mask)
    with pytest.raises(ValueError, match="gradient must be one of"):
        net.gradient = "backprop"
    with pytest.raises(ValueError, match="complex"):
        net(kspace.real, mask)
    with pytest.raises(ValueError, match="mask"):
        net(kspace, mask[:8])
    net.gradient = "adjoint"
    with pytest.raises(ValueError, match="controls u_t only"):
        net(kspace.clone().requires_grad_(True), mask)
    with pytest.raises(ValueError, match="checkpoint_every"):
        OptimalControlNet(ControlNetConfig(coils=1), checkpoint_every=0)
