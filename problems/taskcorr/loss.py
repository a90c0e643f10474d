"""ℓ, the reconstruction loss of Bian's pMRI code on the optimal-control network's output.

L1 of the root-sum-of-squares image against the target's, plus the mean squared error of the coil
images, plus 0.01 × L1 of the initial coil images x_0 (:mod:`problems.taskcorr.optimal_control`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .optimal_control import Reconstruction, combined_magnitude

__all__ = ["LossWeights", "reconstruction_loss"]


@dataclass(frozen=True)
class LossWeights:
    """ℓ = L1(|x_T|_rss, |x*|) + ``coils`` · MSE(x_T, x*_c) + ``initial`` · L1(x_0, x*_c) (Bian's pMRI loss)."""

    coils: float = 1.0
    initial: float = 0.01


def reconstruction_loss(recon: Reconstruction, coils: Tensor, weights: LossWeights = LossWeights()) -> Tensor:
    """ℓ per sample ``[B]`` (means over pixels and coils) for a reconstruction and the target coil
    images ``[B, C, H, W]``."""
    loss = (combined_magnitude(recon.final) - combined_magnitude(coils)).abs().mean((-2, -1))
    if weights.coils:
        loss = loss + weights.coils * (recon.final - coils).abs().pow(2).mean((-3, -2, -1))
    if weights.initial:
        loss = loss + weights.initial * (recon.initial - coils).abs().mean((-3, -2, -1))
    return loss
