"""k-space forward models: orthonormal centred 2D FFT, undersampling, coil sensitivities.

Convention, stated once for all of ``problems.mri``: images and k-space are **native torch
complex tensors** (``complex64`` or ``complex128``). Spatial axes are always the last two
(``[..., H, W]``). A single-coil image is ``[B, H, W]``; multi-coil data carry a coil axis just
before them (``[B, C, H, W]``). Sampling masks are real ``{0, 1}`` tensors ``[H, W]`` (or
broadcastable to the data), with k-space centred (DC at ``(H // 2, W // 2)``).

The Fourier transform is orthonormal (``norm="ortho"``), so ``F^H F = I`` and the zero-filled
reconstruction ``A^H y`` is the true adjoint of ``A = P F`` — unlike the authors' TF1 code,
whose un-normalised FFT makes ``A^H`` the adjoint only up to the number of pixels.

Forward models:

* :class:`SingleCoil` — ``y = P F x``.
* :class:`MultiCoil` — ``y_c = P F (S_c x)`` with coil sensitivities ``S``;
  ``A^H y = Σ_c conj(S_c) F^H P y_c``.
* :class:`CoilImages` — ``y_c = P F x_c`` on per-coil images (no sensitivities needed): the
  joint-channel model of the optimal-control network (Bian, Chen & Ye 2022).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "CoilImages",
    "MultiCoil",
    "SingleCoil",
    "fft2c",
    "ifft2c",
    "root_sum_of_squares",
    "simulate_coil_maps",
]

_SPATIAL = (-2, -1)


def fft2c(image: Tensor) -> Tensor:
    """Orthonormal centred 2D FFT over the last two axes (DC moved to the centre)."""
    _check_complex(image, "fft2c")
    shifted = torch.fft.ifftshift(image, dim=_SPATIAL)
    return torch.fft.fftshift(torch.fft.fft2(shifted, dim=_SPATIAL, norm="ortho"), dim=_SPATIAL)


def ifft2c(kspace: Tensor) -> Tensor:
    """Inverse of :func:`fft2c` (also its adjoint: the transform is unitary)."""
    _check_complex(kspace, "ifft2c")
    shifted = torch.fft.ifftshift(kspace, dim=_SPATIAL)
    return torch.fft.fftshift(torch.fft.ifft2(shifted, dim=_SPATIAL, norm="ortho"), dim=_SPATIAL)


def root_sum_of_squares(coils: Tensor, dim: int = -3) -> Tensor:
    """``sqrt(Σ_c |x_c|²)`` over the coil axis ``dim`` (real tensor)."""
    return coils.abs().pow(2).sum(dim).sqrt()


def _check_complex(t: Tensor, where: str) -> None:
    if not torch.is_complex(t):
        raise TypeError(f"{where}: expected a complex tensor (problems.mri uses native complex dtypes), got {t.dtype}")


def _check_mask(mask: Tensor) -> Tensor:
    if mask.dim() < 2:
        raise ValueError(f"sampling mask must have at least 2 dimensions [..., H, W], got shape {tuple(mask.shape)}")
    if torch.is_complex(mask):
        raise TypeError("sampling mask must be real (0/1), got a complex tensor")
    return mask


class SingleCoil:
    """``A x = P F x`` for images ``[..., H, W]`` and a mask ``[H, W]`` (or broadcastable).

    Example:
        >>> mask = torch.zeros(8, 8); mask[:, ::2] = 1
        >>> A = SingleCoil(mask)
        >>> x = torch.randn(2, 8, 8, dtype=torch.complex64)
        >>> A.adjoint(A(x)).shape
        torch.Size([2, 8, 8])
    """

    def __init__(self, mask: Tensor):
        self.mask = _check_mask(mask)

    def __call__(self, image: Tensor) -> Tensor:
        return self.mask * fft2c(image)

    def adjoint(self, kspace: Tensor) -> Tensor:
        """``A^H y = F^H P y`` (the zero-filled reconstruction)."""
        return ifft2c(self.mask * kspace)

    def normal(self, image: Tensor) -> Tensor:
        """``A^H A x`` (P is a projection, so it is applied once)."""
        return ifft2c(self.mask * fft2c(image))

    def data_gradient(self, image: Tensor, kspace: Tensor) -> Tensor:
        """``∇_x ½||A x - y||² = A^H (A x - y)``."""
        return self.adjoint(self(image) - kspace)

    def to(self, device: torch.device | str) -> SingleCoil:
        return type(self)(self.mask.to(device))


class CoilImages(SingleCoil):
    """``y_c = P F x_c`` applied coil by coil to images ``[B, C, H, W]``; no sensitivities.

    Identical in form to :class:`SingleCoil` (the coil axis is a batch axis of the FFT); kept as
    its own name so a reader sees which model a network assumes.
    """


class MultiCoil:
    """``y_c = P F (S_c x)`` for images ``[B, H, W]``, sensitivities ``[B or 1, C, H, W]`` and a mask.

    ``A^H y = Σ_c conj(S_c) F^H (P y_c)``; with ``Σ_c |S_c|² = 1`` (see
    :func:`simulate_coil_maps`) the coil combination is the identity on fully sampled data.
    """

    def __init__(self, mask: Tensor, sensitivities: Tensor):
        self.mask = _check_mask(mask)
        _check_complex(sensitivities, "MultiCoil sensitivities")
        if sensitivities.dim() != 4:
            raise ValueError(f"sensitivities must be [B, C, H, W], got shape {tuple(sensitivities.shape)}")
        self.sensitivities = sensitivities

    def __call__(self, image: Tensor) -> Tensor:
        return self.mask * fft2c(self.sensitivities * image.unsqueeze(-3))

    def adjoint(self, kspace: Tensor) -> Tensor:
        return (self.sensitivities.conj() * ifft2c(self.mask * kspace)).sum(-3)

    def normal(self, image: Tensor) -> Tensor:
        return self.adjoint(self(image))

    def data_gradient(self, image: Tensor, kspace: Tensor) -> Tensor:
        return self.adjoint(self(image) - kspace)

    def to(self, device: torch.device | str) -> MultiCoil:
        return type(self)(self.mask.to(device), self.sensitivities.to(device))


def simulate_coil_maps(
    shape: tuple[int, int], n_coils: int, *, seed: int = 0, dtype: torch.dtype = torch.complex64
) -> Tensor:
    """Smooth complex coil sensitivities ``[C, H, W]`` with ``Σ_c |S_c|² = 1`` at every pixel.

    Coil ``c`` is a 2D Gaussian bump centred on a circle around the image (the usual birdcage
    layout), times a slowly varying phase; the maps are then normalised so that their
    root-sum-of-squares is one. Used when the data come without sensitivities.
    """
    if n_coils < 1:
        raise ValueError(f"n_coils must be >= 1, got {n_coils}")
    h, w = shape
    gen = torch.Generator().manual_seed(seed)
    real = torch.float64
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h, dtype=real), torch.linspace(-1, 1, w, dtype=real), indexing="ij")
    maps = []
    for c in range(n_coils):
        angle = 2 * math.pi * c / n_coils + 0.3 * float(torch.rand((), generator=gen))
        cy, cx = 1.2 * math.sin(angle), 1.2 * math.cos(angle)
        width = 0.9 + 0.3 * float(torch.rand((), generator=gen))
        magnitude = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width**2))
        phase = math.pi * (
            0.5 * float(torch.randn((), generator=gen)) * yy + 0.5 * float(torch.randn((), generator=gen)) * xx
        )
        maps.append(magnitude * torch.exp(1j * (phase + angle)))
    stack = torch.stack(maps)
    stack = stack / root_sum_of_squares(stack, dim=0).clamp_min(1e-12)
    return stack.to(dtype)
