"""Real brain layouts read with nibabel: nnU-Net domain folders, iSeg-2019 Analyze, and every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from braindata_fixtures import toy_labels, write_iseg, write_nifti, write_nnunet_domain

from problems.braindata import (
    LABEL_MAPS,
    BrainDataError,
    load_domain_folder,
    load_domains,
    load_iseg2019,
    resolve_label_map,
)


def test_nnunet_folder_maps_labels_reads_spacing_and_metadata(tmp_path: Path) -> None:
    labels = toy_labels()
    root = write_nnunet_domain(tmp_path / "ADNI", {"a_t0": labels, "a_t1": labels, "b_t0": labels})
    (root / "subjects.csv").write_text("case,age_months,series,time_point\na_t0,900,a,0\na_t1,912,a,1\nb_t0,880,,\n")
    domain = load_domain_folder(root, role="meta-test")
    assert domain.name == "ADNI" and domain.source == "real" and domain.role == "meta-test"
    assert [s.subject_id for s in domain.subjects] == ["a_t0", "a_t1", "b_t0"]
    first = domain.subjects[0]
    np.testing.assert_array_equal(first.label, labels)
    assert first.spacing == pytest.approx((1.0, 1.2, 1.5))
    assert first.image.dtype == np.float32 and first.image.min() >= 0.0 and first.image.max() == 1.0
    assert (first.image[labels == 0] == 0).all()  # skull-stripped background stays 0
    assert (first.age_months, first.series, first.time_point) == (900.0, "a", 0)
    assert domain.subjects[2].series is None and domain.subjects[2].age_months == 880.0
    assert list(domain.series()) == ["a"]
    assert first.source == f"{root / 'imagesTr' / 'a_t0_0000.nii.gz'} + {root / 'labelsTr' / 'a_t0.nii.gz'}"


def test_volumes_are_reoriented_to_ras(tmp_path: Path) -> None:
    labels = toy_labels()
    labels[0, 0, 0] = 3  # a marker in the first stored voxel
    flip_x = np.diag([-2.0, 1.0, 1.0, 1.0])  # stored left-to-right (LAS)
    root = write_nnunet_domain(tmp_path / "d", {"c": labels}, affine=flip_x)
    subject = load_domain_folder(root).subjects[0]
    np.testing.assert_array_equal(subject.label, labels[::-1])
    assert subject.spacing == (2.0, 1.0, 1.0)


@pytest.mark.parametrize(
    "labels_json",
    [
        {"0": "background", "10": "CSF", "150": "grey matter", "250": "White_Matter"},  # nnU-Net v1: value -> name
        {"background": 0, "CSF": 10, "GM": 150, "WM": 250},  # nnU-Net v2: name -> value
    ],
)
def test_dataset_json_label_map(tmp_path: Path, labels_json: dict) -> None:
    labels = toy_labels()
    root = write_nnunet_domain(
        tmp_path / "IBIS12M", {"c": labels}, labels_json=labels_json, value_map={0: 0, 1: 10, 2: 150, 3: 250}
    )
    np.testing.assert_array_equal(load_domain_folder(root).subjects[0].label, labels)


def test_label_map_argument_wins_and_freesurfer_preset(tmp_path: Path) -> None:
    labels = toy_labels()
    aseg = {0: 0, 1: 24, 2: 3, 3: 2}  # CSF, cortex, cerebral WM
    root = write_nnunet_domain(
        tmp_path / "OASIS3", {"c": labels}, value_map=aseg, labels_json={"background": 0, "CSF": 1, "GM": 2, "WM": 3}
    )
    np.testing.assert_array_equal(load_domain_folder(root, label_map="freesurfer").subjects[0].label, labels)
    assert resolve_label_map({0: "bg", 24: "csf", 3: "GM", 2: 3}) == {0: 0, 24: 1, 3: 2, 2: 3}
    assert LABEL_MAPS["freesurfer"][4] == 1 and LABEL_MAPS["freesurfer"][42] == 2 and LABEL_MAPS["freesurfer"][41] == 3


def test_iseg2019_analyze_layout(tmp_path: Path) -> None:
    write_iseg(tmp_path, n_subjects=2)
    domain = load_iseg2019(tmp_path)  # the parent of iSeg-2019-Training works too
    assert [s.subject_id for s in domain.subjects] == ["subject-1", "subject-2"]
    subject = domain.subjects[0]
    assert subject.image.shape == (12, 14, 10)  # trailing singleton axis dropped
    np.testing.assert_array_equal(subject.label, toy_labels((12, 14, 10)))
    assert subject.age_months == 6.0 and subject.spacing == (1.0, 1.0, 1.0) and domain.role == "meta-test"
    assert subject.source.endswith("subject-1-label.hdr")
    t2 = load_iseg2019(tmp_path / "iSeg-2019-Training", modality="T2").subjects[0]
    assert not np.allclose(t2.image, subject.image)
    assert isinstance(nib.load(str(tmp_path / "iSeg-2019-Training" / "subject-1-T1.hdr")), nib.AnalyzeImage)


def test_load_domains_reads_real_roots_with_roles(tmp_path: Path) -> None:
    labels = toy_labels()
    for name in ("OASIS3", "IBIS12M", "IBIS24M", "ADNI"):
        write_nnunet_domain(tmp_path / name, {f"{name}_1": labels})
    write_iseg(tmp_path / "iSeg-2019", n_subjects=1)
    domains = load_domains(tmp_path)
    assert list(domains) == ["OASIS3", "IBIS12M", "IBIS24M", "iSeg-2019", "ADNI"]
    assert [d.role for d in domains.values()] == ["meta-train"] * 3 + ["meta-test"] * 2
    assert domains["iSeg-2019"].subjects[0].age_months == 6.0
    with pytest.raises(BrainDataError, match=r"Missing.*domain folder not found.*found \['ADNI'"):
        load_domains(tmp_path, meta_train=["OASIS3", "Missing"])
    with pytest.raises(BrainDataError, match="both meta-train and meta-test"):
        load_domains(tmp_path, meta_train=["OASIS3"], meta_test=["OASIS3"])
    with pytest.raises(BrainDataError, match="embedded domains only"):
        load_domains(tmp_path, people=2)


# ------------------------------------------------------------------------------------------- bad input


def test_label_value_outside_the_map_names_file_and_expected_values(tmp_path: Path) -> None:
    labels = toy_labels()
    labels[1, 1, 1] = 7
    root = write_nnunet_domain(tmp_path / "d", {"c": labels})
    with pytest.raises(
        BrainDataError,
        match=r"labelsTr/c\.nii\.gz: label values \[7\] are outside the label "
        r"map.*expected only \[0, 1, 2, 3\]",
    ):
        load_domain_folder(root)


def test_iseg_label_outside_10_150_250(tmp_path: Path) -> None:
    folder = write_iseg(tmp_path, n_subjects=1)
    bad = np.zeros((12, 14, 10, 1), dtype=np.uint8)
    bad[2, 2, 2] = 200
    nib.save(nib.AnalyzeImage(bad, np.eye(4)), str(folder / "subject-1-label.hdr"))
    with pytest.raises(
        BrainDataError, match=r"subject-1-label\.hdr: label values \[200\].*expected only \[0, 10, 150, 250\]"
    ):
        load_iseg2019(folder)


def test_shape_mismatch(tmp_path: Path) -> None:
    root = write_nnunet_domain(tmp_path / "d", {"c": toy_labels()})
    write_nifti(root / "labelsTr" / "c.nii.gz", toy_labels((14, 12, 9)).astype(np.uint8))
    with pytest.raises(
        BrainDataError,
        match=r"c\.nii\.gz: label shape \(14, 12, 9\) differs from image "
        r"c_0000\.nii\.gz shape \(14, 12, 10\)",
    ):
        load_domain_folder(root)


def test_affine_mismatch(tmp_path: Path) -> None:
    root = write_nnunet_domain(tmp_path / "d", {"c": toy_labels()})
    write_nifti(root / "labelsTr" / "c.nii.gz", toy_labels().astype(np.uint8), np.diag([1.0, 1.0, 1.0, 1.0]))
    with pytest.raises(BrainDataError, match=r"labelsTr/c\.nii\.gz: affine differs from image c_0000\.nii\.gz"):
        load_domain_folder(root)


def test_subject_without_label(tmp_path: Path) -> None:
    root = write_nnunet_domain(tmp_path / "d", {"a": toy_labels(), "b": toy_labels()})
    (root / "labelsTr" / "b.nii.gz").unlink()
    with pytest.raises(
        BrainDataError, match=r"b_0000\.nii\.gz: subject 'b' has no label; expected .*labelsTr/b\.nii\.gz"
    ):
        load_domain_folder(root)
    write_iseg(tmp_path / "val", n_subjects=1, labelled=False)
    with pytest.raises(
        BrainDataError, match=r"subject-1-T1\.hdr: subject-1 has no label; expected .*subject-1-label\.hdr"
    ):
        load_iseg2019(tmp_path / "val")


def test_label_without_image(tmp_path: Path) -> None:
    root = write_nnunet_domain(tmp_path / "d", {"a": toy_labels()})
    write_nifti(root / "labelsTr" / "z.nii.gz", toy_labels().astype(np.uint8))
    with pytest.raises(BrainDataError, match=r"z\.nii\.gz: label without image; expected .*imagesTr/z_0000\.nii\.gz"):
        load_domain_folder(root)


def test_empty_domain_folders(tmp_path: Path) -> None:
    (tmp_path / "empty" / "imagesTr").mkdir(parents=True)
    with pytest.raises(BrainDataError, match=r"empty: no images; expected imagesTr/<case>_0000\.nii\.gz"):
        load_domain_folder(tmp_path / "empty")
    with pytest.raises(BrainDataError, match="domain folder not found"):
        load_domain_folder(tmp_path / "absent")
    (tmp_path / "iseg").mkdir()
    with pytest.raises(BrainDataError, match=r"iseg: no iSeg-2019 subjects; expected subject-<N>-T1\.hdr"):
        load_iseg2019(tmp_path / "iseg")


def test_bad_metadata_csv(tmp_path: Path) -> None:
    root = write_nnunet_domain(tmp_path / "d", {"a": toy_labels()})
    (root / "subjects.csv").write_text("case,age_months\nb,12\n")
    with pytest.raises(BrainDataError, match=r"subjects\.csv line 2: case 'b' has no image"):
        load_domain_folder(root)
    (root / "subjects.csv").write_text("case,age_months\na,twelve\n")
    with pytest.raises(BrainDataError, match=r"subjects\.csv line 2: expected a number in age_months"):
        load_domain_folder(root)
    (root / "subjects.csv").write_text("subject,age\na,12\n")
    with pytest.raises(BrainDataError, match=r"subjects\.csv: expected a header with a 'case' column"):
        load_domain_folder(root)
    (root / "subjects.csv").write_text("case,series\na,s1\n")
    with pytest.raises(BrainDataError, match="series and time_point go together"):
        load_domain_folder(root)


def test_bad_label_maps(tmp_path: Path) -> None:
    with pytest.raises(BrainDataError, match=r"unknown preset 'aseg'; expected one of \['freesurfer', 'ibeat'"):
        resolve_label_map("aseg")
    with pytest.raises(BrainDataError, match="cannot map 'cortex' to a tissue"):
        resolve_label_map({3: "cortex"})
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": {"background": 0, "brain": [1, 2, 3]}}))
    with pytest.raises(BrainDataError, match="region-based label 'brain'"):
        resolve_label_map(None, dataset_json=path)


def test_non_3d_and_unreadable_files(tmp_path: Path) -> None:
    root = write_nnunet_domain(tmp_path / "d", {"a": toy_labels()})
    write_nifti(root / "imagesTr" / "a_0000.nii.gz", np.zeros((14, 12), dtype=np.float32))
    with pytest.raises(BrainDataError, match=r"a_0000\.nii\.gz: expected a 3D volume"):
        load_domain_folder(root)
    (root / "imagesTr" / "a_0000.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(BrainDataError, match=r"a_0000\.nii\.gz: cannot be read as NIfTI/Analyze"):
        load_domain_folder(root)
