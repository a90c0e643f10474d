"""Per-image segmentation scores (MONAI) for binary masks.

The E2EAug paper scores every test image and reports the mean over the test set: the Jaccard
index for skin lesions (as the ISIC challenge) and the Dice score otherwise. Predictions are
``sigmoid(logit) > 0.5``. An image whose ground truth and prediction are both empty scores 1
(MONAI's ``ignore_empty=False``), one with empty ground truth and a non-empty prediction 0.
"""

from __future__ import annotations

from monai.metrics import compute_dice, compute_iou
from torch import Tensor

__all__ = ["METRICS", "per_image_score"]

METRICS = ("jaccard", "dice")


def per_image_score(logits: Tensor, target: Tensor, metric: str) -> Tensor:
    """Scores ``[B]`` for logits and binary targets of shape ``[B, 1, H, W]``."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if logits.shape != target.shape or logits.dim() != 4 or logits.shape[1] != 1:
        raise ValueError(
            f"expected logits and target of equal shape [B, 1, H, W], got {tuple(logits.shape)} "
            f"and {tuple(target.shape)}"
        )
    pred = (logits.detach() > 0).float()  # sigmoid(logit) > 0.5
    fn = compute_iou if metric == "jaccard" else compute_dice
    return fn(pred, (target > 0.5).float(), include_background=True, ignore_empty=False)[:, 0]
