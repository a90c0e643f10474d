"""Resampled volumes, axial slices, random patches and the series-aware subject splits."""

from __future__ import annotations

import numpy as np
import pytest
from braindata_fixtures import toy_labels, toy_subject

from problems.braindata import (
    BrainDataError,
    BrainDomain,
    Subject,
    axial_slices,
    few_shot_split,
    random_patches,
    resample_subject,
    train_val_split,
)


def _padded_subject() -> Subject:
    """A toy brain inside a larger empty field, anisotropic voxels (1 x 1 x 2 mm)."""
    labels = np.zeros((40, 36, 20), dtype=np.int64)
    labels[5:33, 6:30, 3:17] = toy_labels((28, 24, 14))
    image = np.where(labels > 0, 0.2 + 0.25 * labels, 0.0).astype(np.float32)
    return Subject("pad", image, labels, (1.0, 1.0, 2.0), "toy")


def test_resample_crops_pads_and_keeps_voxels_isotropic() -> None:
    subject = _padded_subject()
    small = resample_subject(subject, (16, 16, 16))
    assert small.image.shape == (16, 16, 16) and small.label.shape == (16, 16, 16)
    assert small.spacing[0] == pytest.approx(small.spacing[1]) == pytest.approx(small.spacing[2])
    # the brain spans 28 x 24 x 28 mm; 4 mm margins make the largest extent 36 mm
    assert small.spacing[0] == pytest.approx(36.0 / 16)
    assert set(np.unique(small.label)) == {0, 1, 2, 3}
    before, after = subject.tissue_volumes_ml, small.tissue_volumes_ml
    assert after["WM"] == pytest.approx(before["WM"], rel=0.2) and after["GM"] == pytest.approx(before["GM"], rel=0.2)
    assert small.image.min() >= 0.0 and small.image.max() <= 1.0
    assert (small.subject_id, small.domain) == (subject.subject_id, subject.domain)
    upsampled = resample_subject(subject, (64, 64, 64))
    assert upsampled.spacing[0] == pytest.approx(36.0 / 64)
    assert upsampled.tissue_volumes_ml["WM"] == pytest.approx(before["WM"], rel=0.1)


def test_axial_slices_keep_in_plane_aspect_and_drop_empty_slices() -> None:
    subject = _padded_subject()
    images, labels = axial_slices(subject, 32)
    assert images.dtype == np.float32 and labels.dtype == np.int64
    assert images.shape[1:] == (32, 32) and images.shape == labels.shape
    all_images, _ = axial_slices(subject, 32, min_brain_fraction=0.0)
    assert all_images.shape[0] == 14 + 2 * 2  # the brain's 14 slices plus 4 mm of margin (2 slices each side)
    assert images.shape[0] < all_images.shape[0]
    assert ((labels > 0).mean(axis=(1, 2)) >= 0.05).all()
    # one slice of a volume resampled in plane only is exactly what axial_slices returns
    plane = resample_subject(subject, (32, 32, None))
    np.testing.assert_array_equal(all_images[5], plane.image[:, :, 5])
    assert plane.spacing[2] == 2.0


def test_random_patches() -> None:
    subject = toy_subject(shape=(14, 12, 10))
    images, labels = random_patches(subject, (8, 8, 8), 6, np.random.default_rng(0), foreground_fraction=1.0)
    assert images.shape == labels.shape == (6, 8, 8, 8)
    assert all((patch > 0).any() for patch in labels)
    again, _ = random_patches(subject, (8, 8, 8), 6, np.random.default_rng(0), foreground_fraction=1.0)
    np.testing.assert_array_equal(images, again)
    big, big_labels = random_patches(subject, (16, 16, 16), 2, np.random.default_rng(1))
    assert big.shape == (2, 16, 16, 16)  # larger than the volume: zero-padded, the whole brain in each patch
    assert (big_labels > 0).sum(axis=(1, 2, 3)).tolist() == [(subject.label > 0).sum()] * 2
    with pytest.raises(BrainDataError, match="3D patch size"):
        random_patches(subject, (8, 8), 1, np.random.default_rng(0))


def _longitudinal_domain() -> BrainDomain:
    subjects = [
        toy_subject(f"p{p}-t{t}", series=f"p{p}", time_point=t, age_months=900.0 + 12 * t)
        for p in range(5)
        for t in range(3)
    ]
    subjects.append(toy_subject("single"))
    return BrainDomain("toy", subjects, "embedded", "toy", role="meta-test")


def _person(subject: Subject) -> str:
    return subject.series or subject.subject_id


def test_few_shot_split_keeps_people_apart() -> None:
    domain = _longitudinal_domain()
    split = few_shot_split(domain, shots=2, n_val=1, seed=3)
    assert len(split.support) == 2 and all(s.time_point in (0, None) for s in split.support)
    parts = [{_person(s) for s in part} for part in (split.support, split.val, split.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert len(parts[0] | parts[1] | parts[2]) == 6
    assert len(split.support) + len(split.val) + len(split.test) <= len(domain.subjects)

    def ids(split):
        return [[s.subject_id for s in part] for part in (split.support, split.val, split.test)]

    assert ids(few_shot_split(domain, shots=2, n_val=1, seed=3)) == ids(split)
    assert ids(few_shot_split(domain, shots=2, n_val=1, seed=4)) != ids(split)
    with pytest.raises(BrainDataError, match="has 6 people; cannot take 5 shot"):
        few_shot_split(domain, shots=5, n_val=1)


def test_train_val_split() -> None:
    domain = _longitudinal_domain()
    train, val = train_val_split(domain, val_fraction=0.2, seed=0)
    assert len({_person(s) for s in val}) == 1 and len({_person(s) for s in train}) == 5
    assert {_person(s) for s in train}.isdisjoint({_person(s) for s in val})
    assert len(train) + len(val) == len(domain.subjects)
    only = BrainDomain("one", [toy_subject("x")], "real", "one")
    assert train_val_split(only) == ([only.subjects[0]], [])
