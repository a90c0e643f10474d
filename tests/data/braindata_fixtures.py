"""Tiny brain-like volumes and on-disk layouts (nnU-Net raw folder, iSeg-2019 Analyze) for the braindata tests."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from problems.braindata import Subject


def toy_labels(shape: tuple[int, int, int] = (14, 12, 10)) -> np.ndarray:
    """Nested ellipsoids: WM core, GM shell, CSF outer rim and a CSF 'ventricle' in the middle (0..3)."""
    grid = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) / (n / 2) for n in shape], indexing="ij")
    r = np.sqrt(sum(g**2 for g in grid))
    labels = np.zeros(shape, dtype=np.int64)
    labels[r < 0.95] = 1
    labels[r < 0.8] = 2
    labels[r < 0.55] = 3
    labels[r < 0.2] = 1
    return labels


def toy_image(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    means = np.array([0.0, 30.0, 70.0, 100.0], dtype=np.float32)
    rng = np.random.default_rng(seed)
    return (means[np.clip(labels, 0, 3)] + rng.normal(0, 2, labels.shape) * (labels > 0)).astype(np.float32)


def toy_subject(
    subject_id: str = "s0",
    *,
    series: str | None = None,
    time_point: int | None = None,
    age_months: float | None = None,
    shape: tuple[int, int, int] = (14, 12, 10),
    spacing: tuple[float, float, float] = (2.0, 2.0, 2.0),
) -> Subject:
    labels = toy_labels(shape)
    image = toy_image(labels)
    return Subject(
        subject_id=subject_id,
        image=image / image.max(),
        label=labels,
        spacing=spacing,
        domain="toy",
        series=series,
        time_point=time_point,
        age_months=age_months,
        source="test",
    )


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.2, 1.5, 1.0]) if affine is None else affine), str(path))
    return path


def write_nnunet_domain(
    root: Path,
    cases: dict[str, np.ndarray],
    *,
    labels_json: dict | None = None,
    value_map: dict[int, int] | None = None,
    affine: np.ndarray | None = None,
) -> Path:
    """A domain folder ``root/imagesTr/<case>_0000.nii.gz`` + ``root/labelsTr/<case>.nii.gz``.

    ``cases`` maps case id to a 0..3 label volume; ``value_map`` turns 0..3 into the stored values.
    """
    for i, (case, labels) in enumerate(cases.items()):
        stored = labels if value_map is None else np.vectorize(value_map.get)(labels)
        write_nifti(root / "imagesTr" / f"{case}_0000.nii.gz", toy_image(labels, seed=i), affine)
        write_nifti(root / "labelsTr" / f"{case}.nii.gz", stored.astype(np.uint8), affine)
    if labels_json is not None:
        (root / "dataset.json").write_text(json.dumps({"labels": labels_json}))
    return root


ISEG_VALUES = {0: 0, 1: 10, 2: 150, 3: 250}


def write_iseg(
    root: Path, n_subjects: int = 2, *, shape: tuple[int, int, int] = (12, 14, 10), labelled: bool = True
) -> Path:
    """``root/iSeg-2019-Training/subject-N-{T1,T2,label}.hdr/.img`` as the challenge ships them (Analyze 7.5,
    a trailing singleton axis, labels 0/10/150/250)."""
    folder = root / "iSeg-2019-Training"
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(1, n_subjects + 1):
        labels = toy_labels(shape)
        for modality, data in (("T1", toy_image(labels, n)), ("T2", 120.0 - toy_image(labels, n))):
            img = nib.AnalyzeImage(data.astype(np.int16)[..., None], np.eye(4))
            img.header.set_zooms((1.0, 1.0, 1.0, 1.0))
            nib.save(img, str(folder / f"subject-{n}-{modality}.hdr"))
        if labelled:
            stored = np.vectorize(ISEG_VALUES.get)(labels).astype(np.uint8)[..., None]
            img = nib.AnalyzeImage(stored, np.eye(4))
            img.header.set_zooms((1.0, 1.0, 1.0, 1.0))
            nib.save(img, str(folder / f"subject-{n}-label.hdr"))
    return folder
