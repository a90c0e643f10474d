"""nnU-Net's default training augmentation, with MONAI transforms, for 2D or 3D brain patches.

The pipeline, order and probabilities of nnU-Net v2's ``nnUNetTrainer.get_training_transforms``
(Isensee et al., Nature Methods 2021), applied to one patch at a time:

1. spatial — rotation (probability 0.2) by an angle drawn uniformly in ±30° about every axis for
   3D patches, ±180° for 2D ones (nnU-Net's ``rotation_for_DA``), and scaling (probability 0.2) of
   the sampling grid by one factor drawn in [0.7, 1.4] for every axis (> 1 shows a larger region);
   no elastic deformation (nnU-Net v2 sets ``p_elastic_deform = 0``). As in nnU-Net the patch is
   cut from a larger one (:func:`initial_patch_size`: the patch turned by the largest angle about
   each axis, divided by 0.85) and resampled around its centre, so rotated corners hold image, not
   padding. MONAI ``Affine``: image bilinear, labels nearest, zeros outside;
2. Gaussian noise (probability 0.1), standard deviation drawn in [0, 0.1];
3. Gaussian blur (probability 0.2, then 0.5 for the one channel), σ drawn in [0.5, 1] per axis
   (MONAI ``GaussianSmooth``);
4. multiplicative brightness (probability 0.15), factor in [0.75, 1.25];
5. contrast (probability 0.15): the image scaled about its mean by a factor in [0.75, 1.25] and
   clipped to its range (MONAI ``ScaleIntensityFixedMean``, the transform MONAI wrote for nnU-Net's);
6. simulated low resolution (probability 0.25, then 0.5 for the channel): down-sampled by a factor
   in [0.5, 1] (nearest) and back up (linear) (MONAI ``Resize``);
7. gamma of the inverted image (probability 0.1), then gamma (probability 0.3), γ drawn as nnU-Net's
   ``BGContrast((0.7, 1.5))`` (half the time in [0.7, 1], else in [1, 1.5]), mean and standard
   deviation retained (MONAI ``AdjustContrast``);
8. mirroring along every axis, each with probability 0.5.

Factors drawn "in [a, b]" are uniform; nnU-Net's ``BGContrast`` for [0.75, 1.25] is the uniform law
too (its two halves are equally long). Every draw comes from the ``numpy`` generator passed in, so
a patch's augmentation is a pure function of it (resume stays exact). One difference from nnU-Net:
labels are resampled by nearest neighbour, where nnU-Net v2 interpolates each label's mask linearly.
The spatial resampling, the costly step for 3D patches (about 0.7 s for a 206³ -> 128³ image on one
CPU core, where nnU-Net spreads it over worker processes), runs on ``device`` when one is given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .subjects import BrainDataError

__all__ = ["NNUNET_PROBABILITIES", "NnUNetAugmentation", "initial_patch_size"]

NNUNET_PROBABILITIES: dict[str, float] = {
    "rotation": 0.2,
    "scaling": 0.2,
    "noise": 0.1,
    "blur": 0.2 * 0.5,  # the transform's 0.2, then 0.5 for the one channel
    "brightness": 0.15,
    "contrast": 0.15,
    "low_resolution": 0.25 * 0.5,  # likewise
    "inverted_gamma": 0.1,
    "gamma": 0.3,
    "mirror": 0.5,  # per axis
}
"""The probability of every transform of nnU-Net v2's default training pipeline (module docstring)."""


def _rotated_extent(size: np.ndarray, angle: float, axes: tuple[int, int]) -> np.ndarray:
    """The bounding box of a box of ``size`` turned by ``angle`` (0 to 90°) in the plane of ``axes``."""
    out = size.copy()
    i, j = axes
    out[i] = size[i] * math.cos(angle) + size[j] * math.sin(angle)
    out[j] = size[i] * math.sin(angle) + size[j] * math.cos(angle)
    return out


def initial_patch_size(patch: Sequence[int], max_angle: float, min_scale: float = 0.85) -> tuple[int, ...]:
    """The larger patch nnU-Net cuts before its spatial transform: the bounding box of the patch turned by
    the largest angle (at most 90°) in each plane of two axes, the largest extent per axis, divided by
    ``min_scale``; rounded up to the patch's parity, so the centre crop of an unrotated patch falls on the
    voxel grid.

    For a 128³ patch and 30° this is 205 (nnU-Net's 3D default; 206 with the parity), for a 64² patch
    and 180° it is 75 (76).
    """
    size = np.asarray(patch, dtype=np.float64)
    angle = min(abs(max_angle), math.pi / 2)
    planes = [(0, 1)] if len(size) == 2 else [(1, 2), (0, 2), (0, 1)]
    extent = np.max([size, *(_rotated_extent(size, angle, p) for p in planes)], axis=0) / min_scale
    grown = [max(p, int(e)) for p, e in zip(patch, extent)]
    return tuple(g + (g - p) % 2 for g, p in zip(grown, patch))


@dataclass(frozen=True)
class NnUNetAugmentation:
    """nnU-Net's default augmentation (module docstring) for patches of ``patch`` voxels (2 or 3 sizes).

    Draw a patch of :attr:`source_patch` voxels and call the augmentation on it: it returns the
    augmented ``patch``-sized centre (image float32, labels int64). ``probabilities`` (default
    :data:`NNUNET_PROBABILITIES`) says how often each transform applies.
    """

    patch: tuple[int, ...]
    device: str | None = None  # where the spatial resampling runs (None: CPU)
    probabilities: Mapping[str, float] = field(default_factory=lambda: dict(NNUNET_PROBABILITIES))

    def __post_init__(self) -> None:
        if len(self.patch) not in (2, 3) or min(self.patch) < 1:
            raise BrainDataError(f"augmentation: expected a 2D or 3D patch size, got {tuple(self.patch)}")
        if set(self.probabilities) != set(NNUNET_PROBABILITIES):
            raise BrainDataError(
                f"augmentation: probabilities must name {sorted(NNUNET_PROBABILITIES)}, got {sorted(self.probabilities)}"
            )

    @property
    def max_angle(self) -> float:
        """nnU-Net's rotation range: ±180° for 2D patches, ±30° for (isotropic) 3D ones."""
        return math.pi if len(self.patch) == 2 else math.pi / 6

    @property
    def source_patch(self) -> tuple[int, ...]:
        """The size of the patch to draw (:func:`initial_patch_size`)."""
        return initial_patch_size(self.patch, self.max_angle)

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``image``, ``label`` of :attr:`source_patch` voxels -> the augmented ``patch``-sized pair."""
        from monai.transforms import AdjustContrast, Affine, GaussianSmooth, Resize, ScaleIntensityFixedMean

        if tuple(image.shape) != self.source_patch or image.shape != label.shape:
            raise BrainDataError(
                f"augmentation: expected image and label of {self.source_patch} voxels, got "
                f"{tuple(image.shape)} and {tuple(label.shape)}"
            )
        dims, p = len(self.patch), self.probabilities
        rotate = [float(rng.uniform(-self.max_angle, self.max_angle)) for _ in range(1 if dims == 2 else 3)]
        rotate = rotate if rng.random() < p["rotation"] else [0.0] * len(rotate)
        scale = float(rng.uniform(0.7, 1.4)) if rng.random() < p["scaling"] else 1.0
        if any(rotate) or scale != 1.0:
            spatial = {"rotate_params": rotate, "scale_params": [scale] * dims, "spatial_size": self.patch}
            spatial.update(padding_mode="zeros", image_only=True, device=torch.device(self.device or "cpu"))
            x, y = (
                Affine(**spatial, mode=mode)(torch.as_tensor(v[None], dtype=torch.float32, device=spatial["device"]))
                .cpu()
                .numpy()
                for v, mode in ((image, "bilinear"), (label, "nearest"))
            )
            y = y.round()
        else:  # no spatial transform: the centre crop (what the resampling would return, without its cost)
            box = tuple(slice((n - q) // 2, (n - q) // 2 + q) for n, q in zip(image.shape, self.patch))
            x, y = image[box][None].astype(np.float32), label[box][None]
        if rng.random() < p["noise"]:
            x = x + rng.normal(0.0, rng.uniform(0.0, 0.1), x.shape)
        if rng.random() < p["blur"]:
            x = np.asarray(GaussianSmooth(sigma=[float(s) for s in rng.uniform(0.5, 1.0, dims)])(x))
        if rng.random() < p["brightness"]:
            x = x * rng.uniform(0.75, 1.25)
        if rng.random() < p["contrast"]:
            x = np.asarray(ScaleIntensityFixedMean(factor=rng.uniform(0.75, 1.25) - 1, preserve_range=True)(x))
        if rng.random() < p["low_resolution"]:
            zoom = rng.uniform(0.5, 1.0)
            x = np.asarray(Resize([max(1, round(n * zoom)) for n in self.patch], mode="nearest-exact")(x))
            x = np.asarray(Resize(self.patch, mode="bilinear" if dims == 2 else "trilinear")(x))
        for invert, key in ((True, "inverted_gamma"), (False, "gamma")):
            if rng.random() < p[key]:
                gamma = rng.uniform(0.7, 1.0) if rng.random() < 0.5 else rng.uniform(1.0, 1.5)
                x = np.asarray(AdjustContrast(gamma, invert_image=invert, retain_stats=True)(x))
        x, y = x[0], y[0]
        for axis in range(dims):
            if rng.random() < p["mirror"]:
                x, y = np.flip(x, axis), np.flip(y, axis)
        return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y).astype(np.int64)
