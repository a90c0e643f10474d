"""The embedded offline default: a few-shot set built from scikit-learn's handwritten digits.

None of the paper's benchmarks (CIFAR-FS, FC100, mini-/tieredImageNet) may be redistributed, so
the package ships a stand-in that needs no download: the 1797 real 8x8 handwritten digits (UCI
"optdigits" test set, values 0..16) bundled in scikit-learn's wheel (``load_digits``).

Ten digits are too few classes for 5-way tasks drawn from disjoint meta-splits, so classes are
augmented the way Omniglot is (Santoro et al. 2016): each (digit, rotation) pair, rotation in
{0, 90, 180, 270} degrees, is its own class, giving 40 classes of about 180 images each.

Meta-splits are disjoint by digit, so no handwriting of a test digit is ever seen in training:

* train: digits 0, 1, 2, 6, 8, 9 (24 classes);
* val: digits 3, 5 (8 classes);
* test: digits 4, 7 (8 classes).

The digits whose 180-degree rotation looks like themselves (0, 1, 8; 1 also at 90/270) make
near-duplicate classes; they are kept in train, where such label noise only makes meta-training
harder, so every val/test class can be told apart from the others. 6 rotated by 180 degrees is a
9, so 6 and 9 stay together: splitting them would put test classes into training in disguise.

Images are upsampled to 32x32 (bilinear) and replicated to 3 channels, so the Conv-4 backbone
used for CIFAR-FS applies unchanged, and stored as uint8 0..255 like the real benchmarks.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .formats import ClassSplit, FewShotDataset

__all__ = ["DIGIT_SPLITS", "IMAGE_SIZE", "ROTATIONS", "load_digits_fewshot"]

DIGIT_SPLITS: dict[str, tuple[int, ...]] = {"train": (0, 1, 2, 6, 8, 9), "val": (3, 5), "test": (4, 7)}
ROTATIONS: tuple[int, ...] = (0, 90, 180, 270)  # degrees, counter-clockwise
IMAGE_SIZE = 32
_MAX_VALUE = 16.0  # optdigits pixels count set bits in 4x4 blocks: 0..16


def _render(images: np.ndarray) -> torch.Tensor:
    """float ``[N, 8, 8]`` in 0..16 -> uint8 ``[N, 3, 32, 32]`` in 0..255 (bilinear upsampling)."""
    x = torch.from_numpy(images).float().unsqueeze(1) / _MAX_VALUE
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    x = (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return x.expand(-1, 3, -1, -1).contiguous()


def _digit_split(images: torch.Tensor, targets: torch.Tensor, digits: tuple[int, ...], split: str) -> ClassSplit:
    """All (digit, rotation) classes of ``digits``; label = position in ``class_names``."""
    parts, labels, names = [], [], []
    for digit in digits:
        mine = images[targets == digit]
        for degrees in ROTATIONS:
            parts.append(torch.rot90(mine, k=degrees // 90, dims=(-2, -1)))
            labels.append(torch.full((mine.shape[0],), len(names), dtype=torch.int64))
            names.append(f"{digit}-rot{degrees}")
    return ClassSplit(torch.cat(parts), torch.cat(labels), names, f"digits {split} (scikit-learn load_digits)")


def load_digits_fewshot() -> FewShotDataset:
    """The embedded 40-class digits few-shot set (24/8/8 classes, uint8 ``[N, 3, 32, 32]``)."""
    # scikit-learn's dataset module takes about a second to import; only this loader needs it.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = _render(bunch.images)
    targets = torch.from_numpy(bunch.target.astype(np.int64))
    return FewShotDataset(
        name="digits",
        splits={s: _digit_split(images, targets, d, s) for s, d in DIGIT_SPLITS.items()},
        image_size=IMAGE_SIZE,
        channels=3,
        description=(
            "Embedded stand-in, not one of the paper's benchmarks: scikit-learn's 1797 real 8x8 handwritten "
            "digits, classes = (digit, rotation by 0/90/180/270 degrees), split by digit into 24/8/8 "
            "train/val/test classes, upsampled to 32x32 RGB."
        ),
        synthetic=False,
    )
