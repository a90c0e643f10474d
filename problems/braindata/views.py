"""What the networks eat: a subject on a smaller grid, its axial slices, or random 3D patches.

* 3D ``small`` preset: ``resample_subject(s, (64, 64, 64))``;
* 2D CPU presets: ``axial_slices(s, 64)`` for training, and ``resample_subject(s, (64, 64, None))``
  for evaluation (predict every axial slice, stack them along Z, score with the returned spacing);
* 3D ``paper`` preset: ``random_patches(s, (128, 128, 128), n, rng)`` on the 1 mm volumes.

Resampling keeps voxels isotropic across the resized axes: the volume is cropped to the brain,
padded (zeros) to the target's aspect ratio, then resized with MONAI ``Resize`` (area averaging
when every axis shrinks, else trilinear); labels are resized as one-hot maps and re-labelled by
argmax, a soft majority vote.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from monai.transforms import Resize

from .subjects import NUM_CLASSES, BrainDataError, Subject

__all__ = ["axial_slices", "random_patches", "resample_subject"]


def _brain_box(subject: Subject, margin_mm: float) -> tuple[slice, ...]:
    """Bounding box of the non-zero image or label voxels, grown by ``margin_mm``."""
    foreground = (subject.image > 0) | (subject.label > 0)
    if not foreground.any():
        raise BrainDataError(f"subject {subject.subject_id!r}: image and label are empty; expected a brain")
    box = []
    for axis, (n, spacing) in enumerate(zip(subject.label.shape, subject.spacing, strict=True)):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(foreground.any(axis=other))
        margin = int(np.ceil(margin_mm / spacing))
        box.append(slice(max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, n)))
    return tuple(box)


def _pad_centred(volume: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    pads = [((t - n) // 2, t - n - (t - n) // 2) for n, t in zip(volume.shape, shape, strict=True)]
    return np.pad(volume, pads)


def resample_subject(
    subject: Subject, shape: Sequence[int | None], *, crop_to_brain: bool = True, margin_mm: float = 4.0
) -> Subject:
    """``subject`` on a grid of ``shape`` voxels (``None`` keeps that axis' voxels and spacing).

    The brain (non-zero image or label, plus ``margin_mm``) is cropped, the resized axes are
    padded so that one isotropic voxel size fits them all, and image and label are resized.
    Returns a new :class:`Subject` with the new spacing; everything else is copied.
    """
    if len(shape) != 3 or any(s is not None and int(s) < 1 for s in shape):
        raise BrainDataError(f"shape: expected three positive sizes (or None to keep an axis), got {tuple(shape)}")
    image, label = subject.image, subject.label
    if crop_to_brain:
        box = _brain_box(subject, margin_mm)
        image, label = image[box], label[box]
    resized = [i for i, s in enumerate(shape) if s is not None]
    if not resized:
        return dataclasses.replace(subject, image=np.ascontiguousarray(image), label=np.ascontiguousarray(label))
    voxel = max(image.shape[i] * subject.spacing[i] / shape[i] for i in resized)
    padded = [
        int(np.ceil(voxel * shape[i] / subject.spacing[i] - 1e-6)) if i in resized else image.shape[i] for i in range(3)
    ]
    padded = [max(p, n) for p, n in zip(padded, image.shape, strict=True)]
    image, label = _pad_centred(image, padded), _pad_centred(label, padded)
    target = [int(shape[i]) if i in resized else padded[i] for i in range(3)]
    spacing = tuple(padded[i] * subject.spacing[i] / target[i] for i in range(3))
    if list(target) != list(padded):
        shrink = all(t <= p for t, p in zip(target, padded, strict=True))
        resize = Resize(target, mode="area") if shrink else Resize(target, mode="trilinear", anti_aliasing=True)
        image = np.clip(np.asarray(resize(image[None]))[0], 0.0, 1.0).astype(np.float32)
        one_hot = np.stack([label == k for k in range(NUM_CLASSES)]).astype(np.float32)
        label = np.asarray(resize(one_hot)).argmax(axis=0).astype(np.int64)
    return dataclasses.replace(
        subject,
        image=np.ascontiguousarray(image, dtype=np.float32),
        label=np.ascontiguousarray(label, dtype=np.int64),
        spacing=spacing,
    )


def axial_slices(subject: Subject, size: int, *, min_brain_fraction: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Axial slices resized to ``size x size``: images float32 ``[N, size, size]``, labels int64 ``[N, size, size]``.

    Slices are ``resample_subject(subject, (size, size, None))`` at each Z (rows = X, columns = Y),
    inferior to superior; those whose brain covers less than ``min_brain_fraction`` of the slice
    are dropped (use 0 to keep all).
    """
    if size < 1:
        raise BrainDataError(f"size: expected a positive slice size, got {size}")
    resampled = resample_subject(subject, (size, size, None))
    images = np.ascontiguousarray(resampled.image.transpose(2, 0, 1))
    labels = np.ascontiguousarray(resampled.label.transpose(2, 0, 1))
    keep = (labels > 0).mean(axis=(1, 2)) >= min_brain_fraction
    return images[keep], labels[keep]


def random_patches(
    subject: Subject, patch_size: Sequence[int], n: int, rng: np.random.Generator, *, foreground_fraction: float = 1 / 3
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random 3D patches: images float32 ``[n, *patch_size]``, labels int64 ``[n, *patch_size]``.

    A ``foreground_fraction`` of the patches is centred on a random tissue voxel (nnU-Net's
    foreground oversampling, 0.33), the rest anywhere; volumes smaller than the patch are
    zero-padded around the centre.
    """
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != 3 or min(patch) < 1 or n < 1:
        raise BrainDataError(f"expected a 3D patch size and n >= 1, got {tuple(patch_size)} and {n}")
    shape = [max(p, s) for p, s in zip(patch, subject.label.shape, strict=True)]
    image, label = _pad_centred(subject.image, shape), _pad_centred(subject.label, shape)
    tissue = np.argwhere(label > 0)
    images, labels = [], []
    for _ in range(n):
        if tissue.size and rng.random() < foreground_fraction:
            centre = tissue[rng.integers(len(tissue))]
            start = [int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(centre, patch, shape, strict=True)]
        else:
            start = [int(rng.integers(0, s - p + 1)) for p, s in zip(patch, shape, strict=True)]
        box = tuple(slice(b, b + p) for b, p in zip(start, patch, strict=True))
        images.append(image[box])
        labels.append(label[box])
    return np.stack(images).astype(np.float32), np.stack(labels).astype(np.int64)
