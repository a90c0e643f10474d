"""Dice + cross-entropy with deep supervision (nnU-Net's ``DC_and_CE`` as DuMeta++ uses it).

``L_seg = Σ_k w_k · [Dice_k + CE_k]`` over the K deep-supervision outputs, the labels
downsampled to each output's size by nearest-neighbour interpolation (nnU-Net resizes the
segmentation with order 0), weights ``w = (1, 0.5, 0.25, 0.125, 0.0625)`` fine to coarse and not
renormalised (Sec. IV-A2). Dice is MONAI's soft Dice over the tissue classes (background
excluded), per sample (nnU-Net's ``batch_dice=False``), smoothing 1e-5; CE is over all classes.

MONAI's ``DeepSupervisionLoss`` does the same sum but casts every output to float32, which would
break float64 regression runs; the few lines below keep the logits' dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.losses import DiceCELoss
from torch import Tensor

__all__ = ["PAPER_DS_WEIGHTS", "DeepSupervisedDiceCE", "downsample_labels"]

PAPER_DS_WEIGHTS = (1.0, 0.5, 0.25, 0.125, 0.0625)
"""Deep-supervision weights, fine to coarse (Sec. IV-A2: 0.0625 … 1.0 from coarsest to finest)."""


def downsample_labels(label: Tensor, size: Sequence[int]) -> Tensor:
    """Integer labels ``[B, *S]`` resized to ``[B, *size]`` by nearest neighbour ('nearest-exact')."""
    if tuple(label.shape[1:]) == tuple(size):
        return label
    resized = torch.nn.functional.interpolate(label[:, None].double(), size=tuple(size), mode="nearest-exact")
    return resized[:, 0].round().to(label.dtype)


class DeepSupervisedDiceCE:
    """``L_seg`` of Eq. 1/7/15: weighted Dice + CE over deep-supervision outputs.

    Args:
        weights: one weight per output, fine to coarse (default: the paper's five).
    """

    def __init__(self, weights: Sequence[float] = PAPER_DS_WEIGHTS):
        if not weights or any(w < 0 for w in weights):
            raise ValueError(f"deep-supervision weights must be non-negative and not empty, got {list(weights)}")
        self.weights = tuple(float(w) for w in weights)
        self.dice_ce = DiceCELoss(
            include_background=False, to_onehot_y=True, softmax=True, smooth_nr=1e-5, smooth_dr=1e-5, batch=False
        )

    def __call__(self, logits: Sequence[Tensor], label: Tensor) -> Tensor:
        """``logits``: K tensors ``[B, C, *S_k]`` fine to coarse; ``label``: ``[B, *S]`` int64 at full size."""
        if len(logits) != len(self.weights):
            raise ValueError(f"expected {len(self.weights)} deep-supervision outputs, got {len(logits)}")
        if label.dtype != torch.long or tuple(label.shape[1:]) != tuple(logits[0].shape[2:]):
            raise ValueError(
                f"label must be int64 [B, *S] matching the finest logits {tuple(logits[0].shape)}, got "
                f"{label.dtype} {tuple(label.shape)}"
            )
        total = logits[0].new_zeros(())
        for weight, out in zip(self.weights, logits):
            if weight:
                target = downsample_labels(label, out.shape[2:])[:, None]
                total = total + weight * self.dice_ce(out, target)
        return total
