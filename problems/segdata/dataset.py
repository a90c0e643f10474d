"""A map-style torch Dataset over :class:`Case` records."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .io import read_case
from .layouts import Case

__all__ = ["SegmentationDataset"]


class SegmentationDataset(Dataset):
    """Image/mask pairs for binary segmentation.

    Items are dicts ``{"image": float32 [C, S, S] in [0, 1], "mask": float32 [1, S, S] in {0, 1},
    "case_id": str}`` with ``S = size`` (the shape binary losses on ``[B, 1, S, S]`` logits expect).

    Args:
        cases: cases from :func:`find_cases` (usually one split of :func:`make_splits`).
        size: side every pair is resized to (image bilinear, mask nearest); None keeps the files'
            sizes, which only batches if they agree.
        transform: optional albumentations-style callable ``transform(image=HWC, mask=HW) -> dict``
            applied to the numpy arrays (e.g. ``A.Compose``); it must keep the mask binary.
        cache: keep the resized arrays in memory after the first read (worth it for the few
            dozen labelled training cases; the transform is still applied on every access).

    ``sample(index, seed)`` reseeds a transform that has ``set_random_seed`` (albumentations 2.x)
    before applying it, so a caller that owns the randomness (``engines.data.DataStream``) gets the
    same augmentation for the same key in every worker and after a resume.
    """

    def __init__(
        self,
        cases: Sequence[Case],
        size: int | None = 256,
        *,
        transform: Callable[..., dict[str, Any]] | None = None,
        cache: bool = False,
    ):
        self.cases = list(cases)
        self.size = size
        self.transform = transform
        self.cache = cache
        self._arrays: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.cases)

    def arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The case's ``(image [S, S, C] float32, mask [S, S] uint8)`` before any transform."""
        if index in self._arrays:
            return self._arrays[index]
        pair = read_case(self.cases[index], self.size)
        if self.cache:
            self._arrays[index] = pair
        return pair

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask = self.arrays(index)
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, -1, 0), dtype=np.float32)),
            "mask": torch.from_numpy(np.ascontiguousarray(mask[None], dtype=np.float32)),
            "case_id": self.cases[index].case_id,
        }

    def sample(self, index: int, seed: int) -> dict[str, Any]:
        """``self[index]`` with the transform's random state set from ``seed`` first."""
        reseed = getattr(self.transform, "set_random_seed", None)
        if callable(reseed):
            reseed(seed)
        return self[index]
