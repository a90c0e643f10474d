"""Rotate / flip / translate augmentations (albumentations), for masks and for image-mask pairs.

E2EAug §4.1: an augmented mask M̂ is made "by sequentially applying rotation, flip, and
translation, where the order of these operations in the sequence is random". The same three
operations, applied jointly to image and mask with the same parameters, are the paper's simple
baselines (Rotate, Flip, Translate, Combine). Ranges follow the authors' code: rotation
±15°, horizontal flip with probability 0.5, translation ±10 % of the side. Masks are
resampled with nearest-neighbour interpolation so they stay binary.
"""

from __future__ import annotations

import albumentations as A

__all__ = ["BASELINE_AUGMENTATIONS", "joint_augmentation", "mask_augmentation"]


def _rotate() -> A.BasicTransform:
    return A.Rotate(limit=15, border_mode=0, fill=0, fill_mask=0, p=1.0)


def _flip() -> A.BasicTransform:
    return A.HorizontalFlip(p=0.5)


def _translate() -> A.BasicTransform:
    return A.Affine(translate_percent=(-0.1, 0.1), border_mode=0, fill=0, fill_mask=0, p=1.0)


def mask_augmentation(seed: int | None = None) -> A.Compose:
    """Rotation, flip and translation in a random order (E2EAug's mask augmentation)."""
    return A.Compose([A.RandomOrder([_rotate(), _flip(), _translate()], n=3, p=1.0)], seed=seed)


BASELINE_AUGMENTATIONS = ("rotate", "flip", "translate", "combine")


def joint_augmentation(name: str, seed: int | None = None) -> A.Compose:
    """The baseline ``name`` (rotate, flip, translate or combine), applied to image and mask together."""
    ops = {"rotate": [_rotate()], "flip": [A.HorizontalFlip(p=1.0)], "translate": [_translate()]}
    if name == "combine":
        return mask_augmentation(seed)
    if name not in ops:
        raise ValueError(f"unknown augmentation '{name}'; expected one of {BASELINE_AUGMENTATIONS}")
    return A.Compose(ops[name], seed=seed)
