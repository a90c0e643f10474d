"""MRI slices: the embedded MNI152 stand-in, the BraTS 2018 layout, a NIfTI folder, and clear input errors."""

import nibabel as nib
import numpy as np
import pytest
import torch

from problems.mri import (
    SLABS_WITH_GAPS,
    EmbeddedLayout,
    MRIDataError,
    SliceSpec,
    SplitCounts,
    load_slices,
    read_volume,
    split_sizes,
)
from problems.mri.data import BRATS_FOLDER, center_crop

SMALL = SliceSpec(crop=(32, 36), slices_per_volume=4)


def write_volume(path, shape=(40, 44, 20), seed=0, value=None):
    rng = np.random.default_rng(seed)
    data = rng.random(shape).astype(np.float32) * 100 if value is None else np.full(shape, value, np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return data


def brats_tree(root, n_hgg=4, n_lgg=1, skip=None):
    """The BraTS 2018 training layout with small random volumes (modality files of every case)."""
    base = root / BRATS_FOLDER
    for grade, n in (("HGG", n_hgg), ("LGG", n_lgg)):
        for i in range(n):
            case = f"Brats18_TEST_{grade}_{i}_1"
            for modality in ("t1", "t1ce", "t2", "flair"):
                if (case, modality) != skip:
                    write_volume(base / grade / case / f"{case}_{modality}.nii.gz", seed=hash((case, modality)) % 1000)
    return base


def test_embedded_stand_in_has_both_contrasts_and_disjoint_max_normalised_splits():
    for contrast in ("t1", "t2"):
        data = load_slices(None, contrast=contrast, spec=SliceSpec(crop=(160, 180)))
        assert data.stand_in and data.source == "embedded" and "Stand-in" in data.description
        assert data.shape == (160, 180) and data.counts() == {"train": 54, "val": 18, "test": 18}
        used = [set(s.slice_index) for s in data.splits.values()]
        assert not (used[0] & used[1] or used[0] & used[2] or used[1] & used[2])
        for split in data.splits.values():
            assert torch.allclose(split.images.flatten(1).amax(1), torch.ones(len(split)))
    t1 = load_slices(None, contrast="t1", spec=SliceSpec(crop=(160, 180)), limit={"test": 6}).splits["test"]
    t2 = load_slices(None, contrast="t2", spec=SliceSpec(crop=(160, 180)), limit={"test": 6}).splits["test"]
    assert len(t1) == 6 and t1.slice_index == t2.slice_index and not torch.allclose(t1.images, t2.images)


def test_embedded_resize_for_the_smoke_preset():
    data = load_slices(None, spec=SliceSpec(crop=(160, 160), size=(64, 64)), limit={"train": 8})
    assert data.shape == (64, 64) and len(data.splits["train"]) == 8


def test_brats_layout_reads_the_requested_modality_and_central_slices(tmp_path):
    brats_tree(tmp_path)
    data = load_slices(tmp_path, contrast="t2", spec=SMALL, counts=SplitCounts(2, 1, 1), seed=0)
    assert data.source == "brats2018" and not data.stand_in and data.contrast == "t2"
    assert data.counts() == {"train": 8, "val": 4, "test": 4}  # 2/1/1 HGG patients x 4 slices; LGG not used
    cases = [set(s.cases) for s in data.splits.values()]
    assert all("HGG" in c for s in cases for c in s) and not (cases[0] & cases[1] or cases[0] & cases[2])
    assert data.splits["train"].slice_index[:4] == [8, 9, 10, 11]  # the 4 central of 20 axial slices
    case = data.splits["test"].cases[0]
    volume = read_volume(tmp_path / BRATS_FOLDER / "HGG" / case / f"{case}_t2.nii.gz")
    expected = center_crop(volume[:, :, 8], (32, 36))
    assert np.allclose(data.splits["test"].images[0].numpy(), expected / expected.max())
    # the folder itself may also be given, and fewer patients than the counts are split proportionally
    again = load_slices(tmp_path / BRATS_FOLDER, contrast="t2", spec=SMALL, seed=0)
    assert sum(again.counts().values()) == 16


def test_missing_modality_file_is_named(tmp_path):
    brats_tree(tmp_path, skip=("Brats18_TEST_HGG_2_1", "flair"))
    with pytest.raises(MRIDataError, match=r"missing modality file .*Brats18_TEST_HGG_2_1_flair\.nii\.gz"):
        load_slices(tmp_path, contrast="flair", spec=SMALL)
    with pytest.raises(MRIDataError, match="contrast must be one of"):
        load_slices(tmp_path, contrast="pd", spec=SMALL)


def test_volumes_of_the_wrong_rank_are_refused(tmp_path):
    write_volume(tmp_path / "ok4d.nii.gz", shape=(40, 44, 20, 1))
    assert read_volume(tmp_path / "ok4d.nii.gz").shape == (40, 44, 20)
    write_volume(tmp_path / "bad.nii.gz", shape=(40, 44, 20, 3))
    with pytest.raises(MRIDataError, match=r"expected a 3D volume \[X, Y, Z\].*\(40, 44, 20, 3\)"):
        read_volume(tmp_path / "bad.nii.gz")
    write_volume(tmp_path / "flat.nii.gz", shape=(40, 44))
    with pytest.raises(MRIDataError, match="expected a 3D volume"):
        read_volume(tmp_path / "flat.nii.gz")


def test_plain_nifti_folder_and_unknown_folders(tmp_path):
    for i in range(3):
        write_volume(tmp_path / "vols" / f"subject{i}.nii.gz", seed=i)
    data = load_slices(tmp_path / "vols", spec=SMALL)
    assert data.source == "nifti" and data.counts() == {"train": 4, "val": 4, "test": 4}
    (tmp_path / "empty").mkdir()
    with pytest.raises(MRIDataError, match="neither the BraTS 2018 layout"):
        load_slices(tmp_path / "empty", spec=SMALL)
    with pytest.raises(MRIDataError, match="is not a folder"):
        load_slices(tmp_path / "nowhere", spec=SMALL)


def test_slabs_with_gaps_keep_test_slices_away_from_training_slices():
    data = load_slices(None, spec=SliceSpec(crop=(160, 180)), layout=SLABS_WITH_GAPS)
    index = {split: np.asarray(s.slice_index) for split, s in data.splits.items()}
    assert data.counts() == {"train": 36, "val": 9, "test": 9} == split_sizes(None, layout=SLABS_WITH_GAPS)
    for a, b in (("train", "test"), ("train", "val"), ("val", "test")):  # 3 slices left out between slabs
        assert np.abs(index[a][:, None] - index[b][None, :]).min() == (4 if a == "train" else 13), (a, b)
    assert "at least 4 mm from a training slice" in data.description
    # the default deals adjacent blocks: a test slice is then 1 mm from a training slice
    adjacent = load_slices(None, spec=SliceSpec(crop=(160, 180)))
    assert (
        np.abs(np.subtract.outer(adjacent.splits["train"].slice_index, adjacent.splits["test"].slice_index)).min() == 1
    )
    assert split_sizes(None) == adjacent.counts() == {"train": 54, "val": 18, "test": 18}
    with pytest.raises(MRIDataError, match="must name every split"):
        EmbeddedLayout((("train", 3), ("test", 3)), ("train", "test"))
    with pytest.raises(MRIDataError, match="gap >= 0"):
        EmbeddedLayout(gap=-1)


def test_a_volume_with_nan_voxels_is_an_error_naming_the_file(tmp_path):
    base = brats_tree(tmp_path)
    case = "Brats18_TEST_HGG_1_1"
    data = write_volume(base / "HGG" / case / f"{case}_t1.nii.gz", seed=5)
    data[10:14, 10:14, 9:11] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(base / "HGG" / case / f"{case}_t1.nii.gz"))
    with pytest.raises(MRIDataError, match=rf"{case}_t1\.nii\.gz: 32 voxel\(s\) are NaN or infinite"):
        load_slices(tmp_path, contrast="t1", spec=SMALL)
    data[10:14, 10:14, 9:11] = np.inf
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "inf.nii.gz"))
    with pytest.raises(MRIDataError, match=r"inf\.nii\.gz: 32 voxel"):
        read_volume(tmp_path / "inf.nii.gz")
    assert load_slices(tmp_path, contrast="t2", spec=SMALL).counts()["train"] > 0  # other modalities are clean


def test_slices_dropped_as_empty_are_counted_in_the_description(tmp_path):
    for i in range(3):
        data = write_volume(tmp_path / "vols" / f"subject{i}.nii.gz", seed=i)
        if i == 0:  # two of the four central slices of subject0 are all zero
            data[:, :, 8:10] = 0.0
            nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "vols" / "subject0.nii.gz"))
    loaded = load_slices(tmp_path / "vols", spec=SMALL)
    split = next(k for k, s in loaded.splits.items() if "subject0.nii.gz" in s.cases)
    assert len(loaded.splits[split]) == 2 and loaded.splits[split].dropped == 2
    expected = "/".join("2" if k == split else "0" for k in ("train", "val", "test"))
    assert f"2 slice(s) dropped as all-zero (train/val/test: {expected})" in loaded.description
