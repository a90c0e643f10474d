"""Which way a validation metric improves, told from its name — or not at all.

The runner keeps ``checkpoint_best.pt`` at the best value of a monitored metric. Guessing the
direction of an unknown name picks the *worst* model half of the time (``val_mse`` maximised), so
only well-known names decide it, and anything else needs an explicit ``mode``.
"""

from __future__ import annotations

__all__ = ["MAXIMISED", "MINIMISED", "metric_mode"]

MINIMISED = ("loss", "mse", "mae", "error", "nll", "distance", "hausdorff", "hd95", "assd")
MAXIMISED = ("acc", "dice", "iou", "jaccard", "psnr", "ssim", "auc", "f1", "score")


def metric_mode(name: str) -> tuple[str, str]:
    """``("min" | "max", reason)`` for the metric ``name``, from the well-known words it contains.

    Raises ValueError when the name contains none of them, or words of both directions
    (``dice_loss``), saying to pass ``mode``.
    """
    lowered = name.lower()
    low = [word for word in MINIMISED if word in lowered]
    high = [word for word in MAXIMISED if word in lowered]
    if low and not high:
        return "min", f"'{name}' contains '{low[0]}', a quantity to minimise"
    if high and not low:
        return "max", f"'{name}' contains '{high[0]}', a quantity to maximise"
    found = f"it contains both {low} (minimised) and {high} (maximised)" if low else "its name is not a well-known one"
    raise ValueError(
        f"cannot tell whether the monitored metric '{name}' should be maximised or minimised ({found}); "
        f"pass mode='max' or mode='min' (names containing {', '.join(MINIMISED)} are minimised, names "
        f"containing {', '.join(MAXIMISED)} maximised)"
    )
