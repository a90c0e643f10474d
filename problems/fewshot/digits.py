"""The embedded offline default: a cluttered few-shot set built from scikit-learn's handwritten digits.

None of the paper's benchmarks (CIFAR-FS, FC100, mini-/tieredImageNet) may be redistributed, so
the package ships a stand-in that needs no download, generated in code from the 1797 real 8x8
handwritten digits (UCI "optdigits" test set, values 0..16) bundled in scikit-learn's wheel
(``load_digits``).

Classes. Ten digits are too few classes for 5-way tasks drawn from disjoint meta-splits, so
classes are augmented the way Omniglot is (Santoro et al. 2016): each (digit, rotation) pair,
rotation in {0, 90, 180, 270} degrees, is its own class, giving 40 classes of about 180 images
each. Meta-splits are disjoint by digit, so no handwriting of a test digit is ever seen in training:

* train: digits 0, 1, 2, 6, 8, 9 (24 classes);
* val: digits 3, 5 (8 classes);
* test: digits 4, 7 (8 classes).

The digits whose 180-degree rotation looks like themselves (0, 1, 8; 1 also at 90/270) make
near-duplicate classes; they are kept in train, where such label noise only makes meta-training
harder, so every val/test class can be told apart from the others. 6 rotated by 180 degrees is a
9, so 6 and 9 stay together: splitting them would put test classes into training in disguise.

Rendering. Upright digits on an empty canvas are so easy that an untrained Conv-4 with a
fine-tuned head already scores about 91 %, leaving no room to see meta-learning. Each image is
therefore rendered like cluttered translated MNIST (Mnih et al. 2014) on a 32x32 canvas: the
rotated digit at a random size (70-90 % of the canvas side) and a random offset (up to 15 % of
the half-side), plus two distractors — smaller (25-45 %), freely rotated digits drawn from the
same split's images, anywhere on the canvas — combined by a pixelwise maximum. Everything is
drawn from one fixed seed, so the set is the same on every machine (rendered in float64, so
that no CPU's rounding changes a pixel). Images are grey, replicated to 3 channels so the Conv-4
backbone used for CIFAR-FS applies unchanged, and stored as uint8 0..255 like the real benchmarks.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .formats import ClassSplit, FewShotDataset

__all__ = ["CLUTTER", "DIGIT_SPLITS", "IMAGE_SIZE", "ROTATIONS", "SEED", "load_digits_fewshot", "render_digits"]

DIGIT_SPLITS: dict[str, tuple[int, ...]] = {"train": (0, 1, 2, 6, 8, 9), "val": (3, 5), "test": (4, 7)}
ROTATIONS: tuple[int, ...] = (0, 90, 180, 270)  # degrees, counter-clockwise
IMAGE_SIZE = 32
SEED = 2014
DIGIT_SCALE = (0.7, 0.9)  # side of the class digit, as a fraction of the canvas side
MAX_OFFSET = 0.15  # its centre offset, as a fraction of the canvas half-side
CLUTTER = 2  # distractor digits per image
CLUTTER_SCALE = (0.25, 0.45)  # their side, as a fraction of the canvas side
_MAX_VALUE = 16.0  # optdigits pixels count set bits in 4x4 blocks: 0..16


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def _place(images: torch.Tensor, scale: torch.Tensor, angle: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Draw ``images`` [N, 8, 8] (float64 in [0, 1]) onto empty 32x32 canvases [N, 1, 32, 32]:
    side ``scale`` [N] of the canvas, rotated by ``angle`` [N] radians, centred at ``centre`` [N, 2]
    (canvas coordinates in [-1, 1]), bilinear."""
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # output pixel p samples the digit at A (p - centre), A = R(-angle) / scale
    shift = -(torch.stack([cos, -sin], 1) * centre).sum(1), -(torch.stack([sin, cos], 1) * centre).sum(1)
    theta = torch.stack([torch.stack([cos, -sin, shift[0]], 1), torch.stack([sin, cos, shift[1]], 1)], 1)
    grid = F.affine_grid(theta, [len(images), 1, IMAGE_SIZE, IMAGE_SIZE], align_corners=False)
    return F.grid_sample(images.unsqueeze(1), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def render_digits(
    images: torch.Tensor, clutter_pool: torch.Tensor, generator: torch.Generator, *, clutter: int = CLUTTER
) -> torch.Tensor:
    """Cluttered renderings [N, 3, 32, 32] uint8 of ``images`` [N, 8, 8] (float64 in [0, 1]).

    Each image: the digit upright as given, at a random size in DIGIT_SCALE and offset up to
    MAX_OFFSET, then ``clutter`` distractors from ``clutter_pool`` [M, 8, 8] (random image,
    size in CLUTTER_SCALE, any rotation, any position), combined by a pixelwise maximum. The
    distractors are drawn after the digit, so ``clutter=0`` with the same generator state gives
    the same digits without them.
    """
    n = len(images)
    zero = torch.zeros(n, dtype=torch.float64)
    offset = MAX_OFFSET * (2 * torch.rand(n, 2, generator=generator, dtype=torch.float64) - 1)
    canvas = _place(images, _uniform(n, *DIGIT_SCALE, generator), zero, offset)
    for _ in range(clutter):
        pick = torch.randint(len(clutter_pool), (n,), generator=generator)
        scale = _uniform(n, *CLUTTER_SCALE, generator)
        angle = _uniform(n, 0.0, 2 * math.pi, generator)
        centre = 2 * torch.rand(n, 2, generator=generator, dtype=torch.float64) - 1
        canvas = torch.maximum(canvas, _place(clutter_pool[pick], scale, angle, centre))
    grey = (canvas.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return grey.expand(-1, 3, -1, -1).contiguous()


def _digit_split(
    images: torch.Tensor, targets: torch.Tensor, digits: tuple[int, ...], split: str, generator: torch.Generator
) -> ClassSplit:
    """All (digit, rotation) classes of ``digits``; label = position in ``class_names``; distractors
    come from the same digits, so no split sees another split's handwriting."""
    pool = images[torch.isin(targets, torch.tensor(digits))]
    parts, labels, names = [], [], []
    for digit in digits:
        mine = images[targets == digit]
        for degrees in ROTATIONS:
            parts.append(render_digits(torch.rot90(mine, k=degrees // 90, dims=(-2, -1)), pool, generator))
            labels.append(torch.full((mine.shape[0],), len(names), dtype=torch.int64))
            names.append(f"{digit}-rot{degrees}")
    return ClassSplit(torch.cat(parts), torch.cat(labels), names, f"digits {split} (scikit-learn load_digits)")


def load_digits_fewshot() -> FewShotDataset:
    """The embedded 40-class cluttered-digits few-shot set (24/8/8 classes, uint8 ``[N, 3, 32, 32]``)."""
    # scikit-learn's dataset module takes about a second to import; only this loader needs it.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float64) / _MAX_VALUE)
    targets = torch.from_numpy(bunch.target.astype(np.int64))
    generator = torch.Generator().manual_seed(SEED)
    return FewShotDataset(
        name="digits",
        splits={s: _digit_split(images, targets, d, s, generator) for s, d in DIGIT_SPLITS.items()},
        image_size=IMAGE_SIZE,
        channels=3,
        description=(
            "Embedded stand-in, not one of the paper's benchmarks: scikit-learn's 1797 real 8x8 handwritten "
            "digits, classes = (digit, rotation by 0/90/180/270 degrees), split by digit into 24/8/8 "
            "train/val/test classes, each rendered at a random size and offset on a 32x32 canvas with two "
            "smaller, freely rotated distractor digits of the same split (cluttered-MNIST style), grey as RGB."
        ),
        synthetic=False,
    )
