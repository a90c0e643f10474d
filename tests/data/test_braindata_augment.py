"""nnU-Net's default augmentation with MONAI: the larger source patch, the spatial and intensity parts,
labels that only move with the image, and draws that are a pure function of the generator."""

import math

import numpy as np
import pytest
import torch

from problems.braindata import BrainDataError, Subject
from problems.braindata.augment import NNUNET_PROBABILITIES, NnUNetAugmentation, initial_patch_size
from problems.dumeta.data import PatchItems

OFF = dict.fromkeys(NNUNET_PROBABILITIES, 0.0)


def pair(shape, seed=0):
    """A smooth image with an asymmetric label map (so flips and crops are visible)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*(np.linspace(0, 1, n) for n in shape), indexing="ij")
    image = (sum((i + 1) * g for i, g in enumerate(grids)) + 0.05 * rng.standard_normal(shape)).astype(np.float32)
    label = np.digitize(image, np.quantile(image, [0.25, 0.5, 0.75])).astype(np.int64)
    return image, label


def centre(volume, patch):
    return volume[tuple(slice((n - p) // 2, (n - p) // 2 + p) for n, p in zip(volume.shape, patch))]


def test_the_source_patch_is_nnunets_initial_patch_size():
    # nnU-Net: the patch turned by the largest angle in each plane, / 0.85 (its 3D default gives 205)
    assert int(128 * (math.cos(math.pi / 6) + math.sin(math.pi / 6)) / 0.85) == 205
    assert initial_patch_size((128, 128, 128), math.pi / 6) == (206, 206, 206)  # 205, rounded to the parity of 128
    assert initial_patch_size((64, 64), math.pi) == (76, 76)  # 180° is capped at 90°: 64 / 0.85 = 75 -> 76
    assert NnUNetAugmentation((64, 64)).source_patch == (76, 76)
    assert NnUNetAugmentation((32, 32, 32)).max_angle == pytest.approx(math.pi / 6)


def test_with_every_transform_off_the_result_is_the_centre_crop():
    augment = NnUNetAugmentation((32, 32), probabilities=OFF)
    image, label = pair(augment.source_patch)
    x, y = augment(image, label, np.random.default_rng(0))
    assert np.array_equal(x, centre(image, (32, 32))) and np.array_equal(y, centre(label, (32, 32)))
    assert x.dtype == np.float32 and y.dtype == np.int64


def test_mirroring_flips_image_and_labels_together():
    augment = NnUNetAugmentation((16, 16, 16), probabilities={**OFF, "mirror": 1.0})
    image, label = pair(augment.source_patch)
    x, y = augment(image, label, np.random.default_rng(0))
    flipped = (0, 1, 2)
    assert np.array_equal(x, np.flip(centre(image, (16,) * 3), flipped))
    assert np.array_equal(y, np.flip(centre(label, (16,) * 3), flipped))


def test_intensity_transforms_change_the_image_and_never_the_labels():
    intensity = ("noise", "blur", "brightness", "contrast", "low_resolution", "inverted_gamma", "gamma")
    augment = NnUNetAugmentation((32, 32), probabilities={**OFF, **dict.fromkeys(intensity, 1.0)})
    image, label = pair(augment.source_patch)
    x, y = augment(image, label, np.random.default_rng(1))
    assert np.array_equal(y, centre(label, (32, 32)))
    assert np.abs(x - centre(image, (32, 32))).mean() > 1e-3 and np.isfinite(x).all()


def test_rotation_and_scaling_resample_labels_without_inventing_classes():
    augment = NnUNetAugmentation((32, 32), probabilities={**OFF, "rotation": 1.0, "scaling": 1.0})
    image, label = pair(augment.source_patch)
    x, y = augment(image, label, np.random.default_rng(2))
    assert x.shape == y.shape == (32, 32) and set(np.unique(y)) <= {0, 1, 2, 3}
    assert not np.array_equal(y, centre(label, (32, 32)))
    # the labels moved with the image: each class still has its own intensities (the image is the label's ramp)
    means = [x[y == c].mean() for c in range(1, 4) if (y == c).sum() > 20]
    assert means == sorted(means)


def test_default_draws_are_a_pure_function_of_the_generator():
    augment = NnUNetAugmentation((32, 32, 32))
    image, label = pair(augment.source_patch)
    a = [augment(image, label, np.random.default_rng(7)) for _ in range(2)]
    assert all(np.array_equal(u, v) for u, v in zip(a[0], a[1]))
    b = augment(image, label, np.random.default_rng(8))
    assert a[0][0].shape == (32, 32, 32) and not np.array_equal(a[0][0], b[0])
    with pytest.raises(BrainDataError, match="expected image and label of"):
        augment(image[:-1], label[:-1], np.random.default_rng(0))
    with pytest.raises(BrainDataError, match="probabilities must name"):
        NnUNetAugmentation((32, 32), probabilities={"rotation": 1.0})


def test_patch_items_draw_augmented_patches_of_the_training_size():
    image, label = pair((80, 80, 6))
    subject = Subject("s0", image, label, (1.0, 1.0, 2.0), "toy")
    items = PatchItems("toy", [subject], (64, 64, 1), augment=True)
    x, y = items.draw(3, torch.Generator().manual_seed(0))
    assert x.shape == (3, 1, 64, 64) and y.shape == (3, 64, 64) and y.dtype == torch.long
    again = items.draw(3, torch.Generator().manual_seed(0))
    assert torch.equal(x, again[0]) and torch.equal(y, again[1])
