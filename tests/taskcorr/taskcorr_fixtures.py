"""Small multi-coil groups from the embedded MNI152 slices (16x16), shared by the task-correlation tests."""

import torch

from problems.mri import SliceSpec, fft2c, load_slices, sampling_mask, simulate_coil_maps
from problems.taskcorr import ReconGroup, simulate_group

SIZE = 16


def load_mni(size: int = SIZE) -> dict:
    spec = SliceSpec(crop=(180, 180), size=(size, size))
    return {c: load_slices(None, contrast=c, spec=spec) for c in ("t1", "t2")}


def make_group(
    slices,
    contrast: str,
    split: str,
    pattern: str,
    ratio: float,
    coils: int,
    n: int = 8,
    offset: int = 0,
    every: int = 1,
) -> ReconGroup:
    """A group of slices ``offset, offset + every, ...`` (``n`` of them) in torch's default dtype
    (float64 while goldens are built)."""
    dtype = torch.get_default_dtype()
    images = slices[contrast].splits[split].images[offset : offset + every * n : every].to(dtype)
    mask = sampling_mask(pattern, ratio, (SIZE, SIZE), cache=False).to(dtype)
    complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    maps = simulate_coil_maps((SIZE, SIZE), coils, dtype=complex_dtype)
    return simulate_group(f"{contrast} {pattern} {ratio:.0%} ({split})", images, mask, maps)


def pure_noise_group(like: ReconGroup, seed: int = 0) -> ReconGroup:
    """A group of pure noise shaped like ``like``: k-space measured from uniform-noise coil images and
    independent uniform-noise targets (it teaches nothing about reconstruction)."""
    gen = torch.Generator().manual_seed(seed)
    real = like.masks.dtype
    measured = torch.rand(like.coils.shape, generator=gen, dtype=real).to(like.coils.dtype)
    targets = torch.rand(like.coils.shape, generator=gen, dtype=real).to(like.coils.dtype)
    return ReconGroup("pure noise", like.masks * fft2c(measured), like.masks, targets)
