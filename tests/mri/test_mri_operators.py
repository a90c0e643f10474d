"""The k-space operators are unitary / adjoint as the reconstruction algorithms assume."""

import pytest
import torch

from problems.mri import MultiCoil, SingleCoil, fft2c, ifft2c, root_sum_of_squares, sampling_mask, simulate_coil_maps


def inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b.conj()).sum()


def random_complex(*shape: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.complex(
        torch.randn(*shape, generator=gen, dtype=torch.float64), torch.randn(*shape, generator=gen, dtype=torch.float64)
    )


def test_centred_fft_is_unitary_and_puts_dc_in_the_centre():
    x = random_complex(3, 20, 18, seed=0)
    assert torch.allclose(ifft2c(fft2c(x)), x, atol=1e-12)
    assert torch.allclose(torch.linalg.vector_norm(fft2c(x)), torch.linalg.vector_norm(x))
    constant = torch.ones(20, 18, dtype=torch.complex128)
    k = fft2c(constant)
    assert k[10, 9].abs() == pytest.approx((20 * 18) ** 0.5) and k.abs().sum() == pytest.approx(k[10, 9].abs())


@pytest.mark.parametrize("pattern", ["radial", "cartesian", "poisson"])
def test_single_coil_adjointness(pattern):
    mask = sampling_mask(pattern, 0.25, (24, 28), cache=False).double()
    op = SingleCoil(mask)
    x, y = random_complex(2, 24, 28, seed=1), random_complex(2, 24, 28, seed=2)
    assert torch.allclose(inner(op(x), y), inner(x, op.adjoint(y)), atol=1e-10)  # <Ax, y> = <x, A^H y>
    assert torch.allclose(op.normal(x), op.adjoint(op(x)), atol=1e-12)


def test_multi_coil_adjointness_with_simulated_maps():
    maps = simulate_coil_maps((24, 28), 6, seed=3, dtype=torch.complex128)
    assert torch.allclose(root_sum_of_squares(maps, dim=0), torch.ones(24, 28, dtype=torch.float64), atol=1e-10)
    op = MultiCoil(sampling_mask("radial", 0.25, (24, 28), cache=False).double(), maps[None])
    x, y = random_complex(2, 24, 28, seed=4), random_complex(2, 6, 24, 28, seed=5)
    assert torch.allclose(inner(op(x), y), inner(x, op.adjoint(y)), atol=1e-10)
    full = MultiCoil(torch.ones(24, 28, dtype=torch.float64), maps[None])
    assert torch.allclose(full.adjoint(full(x)), x, atol=1e-10)  # sum_c |S_c|^2 = 1: A^H A = I when fully sampled


def test_data_gradient_is_the_gradient_of_the_data_term():
    mask = sampling_mask("radial", 0.2, (16, 16), cache=False).double()
    op = SingleCoil(mask)
    x = random_complex(2, 16, 16, seed=6).requires_grad_(True)
    y = op(random_complex(2, 16, 16, seed=7))
    (grad,) = torch.autograd.grad(0.5 * (op(x) - y).abs().pow(2).sum(), x)
    assert torch.allclose(grad, op.data_gradient(x.detach(), y), atol=1e-12)


def test_operators_refuse_real_images():
    with pytest.raises(TypeError, match="complex"):
        fft2c(torch.randn(4, 4))
