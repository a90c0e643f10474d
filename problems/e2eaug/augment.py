"""Rotate / flip / translate augmentations (albumentations), for masks and for image-mask pairs.

E2EAug §4.1: an augmented mask M̂ is made "by sequentially applying rotation, flip, and
translation, where the order of these operations in the sequence is random". The same three
operations, applied jointly to image and mask with the same parameters, are the paper's simple
baselines (Rotate, Flip, Translate, Combine), and one of them alone is the §4.3 ablation "single
mask operation". Ranges follow the authors' code: rotation ±15°, translation ±10 % of the side;
flip is horizontal, with probability 0.5 inside the random-order sequence (the authors' code)
and always when it is the only operation (otherwise half of the "augmented" copies would be
the originals). Masks are resampled with nearest-neighbour interpolation so they stay binary.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A

__all__ = ["BASELINE_AUGMENTATIONS", "MASK_OPERATIONS", "joint_augmentation", "mask_augmentation"]

MASK_OPERATIONS = ("rotate", "flip", "translate")
"""The basic operations E2EAug applies to masks (§4.1), in the paper's order."""

BASELINE_AUGMENTATIONS: dict[str, tuple[str, ...]] = {
    "rotate": ("rotate",),
    "flip": ("flip",),
    "translate": ("translate",),
    "combine": MASK_OPERATIONS,
}
"""The simple baselines of Tables 2/3 and the operations each applies."""


def _operation(name: str, *, alone: bool) -> A.BasicTransform:
    if name == "rotate":
        return A.Rotate(limit=15, border_mode=0, fill=0, fill_mask=0, p=1.0)
    if name == "flip":
        return A.HorizontalFlip(p=1.0 if alone else 0.5)
    if name == "translate":
        return A.Affine(translate_percent=(-0.1, 0.1), border_mode=0, fill=0, fill_mask=0, p=1.0)
    raise ValueError(f"unknown mask operation {name!r}; expected one of {MASK_OPERATIONS}")


def mask_augmentation(operations: Sequence[str] = MASK_OPERATIONS, seed: int | None = None) -> A.Compose:
    """``operations`` (a subset of rotate, flip, translate) applied in a random order; E2EAug's
    mask augmentation with the default, one operation alone for the §4.3 ablation."""
    operations = tuple(operations)
    if not operations or len(set(operations)) != len(operations):
        raise ValueError(f"operations must be distinct names from {MASK_OPERATIONS}, got {operations}")
    if len(operations) == 1:
        return A.Compose([_operation(operations[0], alone=True)], seed=seed)
    ops = [_operation(name, alone=False) for name in operations]
    return A.Compose([A.RandomOrder(ops, n=len(ops), p=1.0)], seed=seed)


def joint_augmentation(name: str, seed: int | None = None) -> A.Compose:
    """The baseline ``name`` (rotate, flip, translate or combine), applied to image and mask together."""
    if name not in BASELINE_AUGMENTATIONS:
        raise ValueError(f"unknown augmentation '{name}'; expected one of {tuple(BASELINE_AUGMENTATIONS)}")
    return mask_augmentation(BASELINE_AUGMENTATIONS[name], seed)
