"""Real brain-tissue datasets read from their on-disk layouts with nibabel.

Two layouts, both read in place (nothing is converted on disk):

* **A folder per domain, nnU-Net raw layout** (what OASIS3 / IBIS / ADNI tissue maps usually end
  up as after iBEAT or FreeSurfer)::

      <domain>/imagesTr/<case>_0000.nii.gz     T1w (channel 0000; other channels are ignored)
      <domain>/labelsTr/<case>.nii.gz          tissue labels
      <domain>/dataset.json                    optional; its "labels" map names the values
      <domain>/subjects.csv                    optional; columns case, age_months, series, time_point

  Label values are mapped to 0 bg / 1 CSF / 2 GM / 3 WM by a label map: the ``label_map``
  argument (a :data:`LABEL_MAPS` key or a ``{value: tissue}`` dict), else the ``dataset.json``
  labels (nnU-Net v1 ``{"1": "CSF"}`` or v2 ``{"CSF": 1}``), else the identity 0..3.
* **iSeg-2019 training layout** (6-month infants, Analyze 7.5)::

      iSeg-2019-Training/subject-<N>-T1.hdr/.img, subject-<N>-T2.hdr/.img, subject-<N>-label.hdr/.img

  volumes of 144 x 192 x 256 (+ a trailing singleton axis), labels 0 / 10 / 150 / 250.

Every volume is reoriented to RAS+ (nibabel's closest canonical) and checked before use: image and
label must share shape and affine, every image needs its label, label values must be in the map.
Failures raise :class:`BrainDataError` naming the file and what was expected.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .subjects import NUM_CLASSES, ROLES, TISSUES, BrainDataError, BrainDomain, Subject, normalise_intensity

__all__ = [
    "ISEG_AGE_MONTHS",
    "LABEL_MAPS",
    "PAPER_META_TEST",
    "PAPER_META_TRAIN",
    "load_domain_folder",
    "load_domains",
    "load_iseg2019",
    "resolve_label_map",
]

PAPER_META_TRAIN: tuple[str, ...] = ("OASIS3", "IBIS12M", "IBIS24M")
"""Folder names of the paper's meta-training pool under ``--data-root``."""

PAPER_META_TEST: tuple[str, ...] = ("iSeg-2019", "ADNI")
"""Folder names of the paper's unseen meta-test domains under ``--data-root``."""

ISEG_AGE_MONTHS = 6.0

_FREESURFER_CSF = (4, 5, 14, 15, 24, 31, 43, 44, 63, 72)  # ventricles, CSF, choroid plexus
_FREESURFER_GM = (3, 8, 10, 11, 12, 13, 17, 18, 26, 42, 47, 49, 50, 51, 52, 53, 54, 58)  # cortex, deep GM
_FREESURFER_WM = (2, 7, 16, 28, 41, 46, 60, 77, 85, 251, 252, 253, 254, 255)  # cerebral/cerebellar WM, stem, CC
_FREESURFER_BACKGROUND = (0, 30, 62, 80)  # unknown, vessels, non-WM hypointensities

LABEL_MAPS: dict[str, dict[int, int]] = {
    "identity": {0: 0, 1: 1, 2: 2, 3: 3},
    "iseg": {0: 0, 10: 1, 150: 2, 250: 3},
    "ibeat": {0: 0, 10: 1, 150: 2, 250: 3},
    "freesurfer": {
        **dict.fromkeys(_FREESURFER_BACKGROUND, 0),
        **dict.fromkeys(_FREESURFER_CSF, 1),
        **dict.fromkeys(_FREESURFER_GM, 2),
        **dict.fromkeys(_FREESURFER_WM, 3),
    },
}
"""Raw label value -> tissue index (0 bg, 1 CSF, 2 GM, 3 WM). ``iseg``/``ibeat``: grey values
10/150/250 of iSeg-2019 and iBEAT outputs; ``freesurfer``: aseg labels (ventricles and CSF -> CSF,
cortex and deep grey nuclei -> GM, cerebral/cerebellar WM, brain stem, ventral DC, corpus
callosum -> WM, vessels -> background)."""

_TISSUE_ALIASES = {
    "background": 0,
    "bg": 0,
    "csf": 1,
    "cerebrospinal fluid": 1,
    "cerebrospinal_fluid": 1,
    "gm": 2,
    "gray matter": 2,
    "grey matter": 2,
    "gray_matter": 2,
    "grey_matter": 2,
    "wm": 3,
    "white matter": 3,
    "white_matter": 3,
}

_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_CHANNEL = "_0000"


def _tissue_index(name: Any, where: str) -> int:
    if isinstance(name, (int, np.integer)) and 0 <= int(name) < NUM_CLASSES:
        return int(name)
    key = str(name).strip().lower()
    if key not in _TISSUE_ALIASES:
        raise BrainDataError(
            f"{where}: cannot map {name!r} to a tissue; expected one of background, {', '.join(TISSUES)} (or 0..3)"
        )
    return _TISSUE_ALIASES[key]


def _labels_from_dataset_json(path: Path) -> dict[int, int]:
    """Label map from an nnU-Net ``dataset.json`` (v1 ``{"1": "CSF"}`` or v2 ``{"CSF": 1}``)."""
    try:
        labels = json.loads(path.read_text())["labels"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise BrainDataError(f"{path}: expected a JSON object with a 'labels' map ({error})") from error
    if not isinstance(labels, dict) or not labels:
        raise BrainDataError(f"{path}: 'labels' must be a non-empty object, got {labels!r}")
    result = {}
    for key, value in labels.items():
        if isinstance(value, list):
            raise BrainDataError(
                f"{path}: region-based label {key!r}: {value} is not supported; expected one integer value per tissue"
            )
        if str(key).lstrip("-").isdigit():  # v1: "value": "name"
            result[int(key)] = _tissue_index(value, str(path))
        else:  # v2: "name": value
            result[int(value)] = _tissue_index(key, str(path))
    return result


def resolve_label_map(
    label_map: str | Mapping[int, int | str] | None, *, dataset_json: Path | None = None
) -> dict[int, int]:
    """The raw-value -> tissue-index map to use for a folder.

    ``label_map`` wins: a :data:`LABEL_MAPS` key, or a dict from raw value to a tissue index (0..3)
    or name (``"CSF"``, ``"grey matter"``...). Without it, the ``dataset.json`` labels are used if
    the file exists, else the identity map (labels already 0..3).
    """
    if isinstance(label_map, str):
        if label_map not in LABEL_MAPS:
            raise BrainDataError(
                f"label_map: unknown preset {label_map!r}; expected one of {sorted(LABEL_MAPS)} "
                f"or a {{value: tissue}} dict"
            )
        return dict(LABEL_MAPS[label_map])
    if label_map is not None:
        return {int(value): _tissue_index(tissue, "label_map") for value, tissue in label_map.items()}
    if dataset_json is not None and dataset_json.is_file():
        return _labels_from_dataset_json(dataset_json)
    return dict(LABEL_MAPS["identity"])


def _describe_map(label_map: Mapping[int, int]) -> str:
    names = ("background", *TISSUES)
    return ", ".join(f"{value}->{names[index]}" for value, index in sorted(label_map.items()))


def _load(path: Path) -> nib.spatialimages.SpatialImage:
    try:
        return nib.load(str(path))
    except Exception as error:  # nibabel raises several types (ImageFileError, FileNotFoundError, ...)
        raise BrainDataError(f"{path}: cannot be read as NIfTI/Analyze ({error})") from error


def _volume(img: nib.spatialimages.SpatialImage, path: Path) -> np.ndarray:
    """The 3D data array of ``img``, trailing singleton axes dropped."""
    shape = img.shape
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise BrainDataError(f"{path}: expected a 3D volume (a trailing axis of 1 is allowed), got shape {img.shape}")
    return np.asanyarray(img.dataobj).reshape(shape)


def _canonical(img: nib.spatialimages.SpatialImage, data: np.ndarray) -> tuple[np.ndarray, tuple[float, ...]]:
    """``data`` reoriented to RAS+ and its voxel size in mm along the new axes."""
    orientation = nib.orientations.io_orientation(img.affine)
    data = nib.orientations.apply_orientation(data, orientation)
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=float)[orientation[:, 0].astype(int)]
    return np.ascontiguousarray(data), tuple(float(z) for z in zooms)


def _read_pair(
    image_path: Path, label_path: Path, label_map: Mapping[int, int]
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Image (normalised float32) and tissue label (int64) of one scan, both RAS+, after all checks."""
    image_img, label_img = _load(image_path), _load(label_path)
    image, label = _volume(image_img, image_path), _volume(label_img, label_path)
    if image.shape != label.shape:
        raise BrainDataError(
            f"{label_path}: label shape {label.shape} differs from image {image_path.name} shape "
            f"{image.shape}; expected the same voxel grid"
        )
    if not np.allclose(image_img.affine, label_img.affine, atol=1e-3):
        raise BrainDataError(
            f"{label_path}: affine differs from image {image_path.name}'s; expected the same voxel "
            f"grid\nimage affine:\n{image_img.affine}\nlabel affine:\n{label_img.affine}"
        )
    values = np.unique(label)
    if not np.array_equal(values, np.round(values)):
        raise BrainDataError(f"{label_path}: label values must be integers, got {values[:8].tolist()}")
    if values.size == 0:
        raise BrainDataError(f"{label_path}: empty label volume; expected a 3D tissue label map")
    unknown = sorted(int(v) for v in values if int(v) not in label_map)
    if unknown:
        raise BrainDataError(
            f"{label_path}: label values {unknown} are outside the label map "
            f"({_describe_map(label_map)}); expected only {sorted(label_map)} (pass label_map= "
            f"to map other values)"
        )
    lookup = np.zeros(int(values.max()) + 1, dtype=np.int64)
    for value, tissue in label_map.items():
        if 0 <= value < lookup.size:
            lookup[value] = tissue
    tissue = lookup[label.astype(np.int64)]
    image, spacing = _canonical(image_img, np.asarray(image, dtype=np.float32))
    tissue, _ = _canonical(label_img, tissue)
    try:
        image = normalise_intensity(image)
    except BrainDataError as error:
        raise BrainDataError(f"{image_path}: {error}") from error
    return image, tissue.astype(np.int64), spacing


def _case_id(path: Path) -> str:
    name = path.name
    for suffix in _NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(_NIFTI_SUFFIXES))


def _read_metadata(path: Path, cases: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``case -> {age_months, series, time_point}`` from a subjects CSV; unknown cases are errors."""
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = list(reader)
    except OSError as error:
        raise BrainDataError(f"{path}: cannot be read ({error})") from error
    if "case" not in header:
        raise BrainDataError(
            f"{path}: expected a header with a 'case' column (and any of age_months, series, time_point), got {header}"
        )
    known = set(cases)
    metadata: dict[str, dict[str, Any]] = {}
    for line, raw in enumerate(rows, start=2):
        row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        case = row["case"]
        if case not in known:
            raise BrainDataError(
                f"{path} line {line}: case {case!r} has no image in the domain folder; expected one "
                f"of {sorted(known)[:6]}{' ...' if len(known) > 6 else ''}"
            )
        try:
            age = float(row["age_months"]) if row.get("age_months") else None
            time_point = int(row["time_point"]) if row.get("time_point") else None
        except ValueError as error:
            raise BrainDataError(
                f"{path} line {line}: expected a number in age_months and an integer in time_point ({error})"
            ) from error
        series = row.get("series") or None
        if (series is None) != (time_point is None):
            raise BrainDataError(
                f"{path} line {line}: series and time_point go together, got series={series!r}, "
                f"time_point={time_point!r}"
            )
        metadata[case] = {"age_months": age, "series": series, "time_point": time_point}
    return metadata


def load_domain_folder(
    path: Path | str,
    *,
    label_map: str | Mapping[int, int | str] | None = None,
    name: str | None = None,
    metadata_csv: Path | str | None = None,
    role: str = "",
) -> BrainDomain:
    """One domain stored in the nnU-Net raw layout (``imagesTr/<case>_0000.nii.gz`` + ``labelsTr/<case>.nii.gz``).

    Args:
        path: the domain folder.
        label_map: raw label value -> tissue (see :func:`resolve_label_map`).
        name: domain name; default the folder name.
        metadata_csv: per-case ``age_months``, ``series``, ``time_point``; default
            ``<path>/subjects.csv`` if present.
        role: ``"meta-train"``, ``"meta-test"`` or ``""``.
    """
    folder = Path(path)
    images_dir, labels_dir = folder / "imagesTr", folder / "labelsTr"
    if not folder.is_dir():
        raise BrainDataError(f"{folder}: domain folder not found; expected imagesTr/ and labelsTr/ inside")
    images = list(_nifti_files(images_dir)) if images_dir.is_dir() else []
    if not images:
        raise BrainDataError(
            f"{folder}: no images; expected imagesTr/<case>{_CHANNEL}.nii.gz with labels in "
            f"labelsTr/<case>.nii.gz (nnU-Net raw layout)"
        )
    t1 = {_case_id(p)[: -len(_CHANNEL)]: p for p in images if _case_id(p).endswith(_CHANNEL)}
    if not t1:
        raise BrainDataError(
            f"{images_dir}: no file ends in {_CHANNEL}.nii.gz; expected imagesTr/<case>_0000.nii.gz "
            f"(found {[p.name for p in images[:4]]})"
        )
    labels = {_case_id(p): p for p in _nifti_files(labels_dir)} if labels_dir.is_dir() else {}
    for case, image_path in t1.items():
        if case not in labels:
            raise BrainDataError(
                f"{image_path}: subject {case!r} has no label; expected {labels_dir / (case + '.nii.gz')}"
            )
    for case, label_path in labels.items():
        if case not in t1:
            raise BrainDataError(
                f"{label_path}: label without image; expected {images_dir / (case + _CHANNEL + '.nii.gz')}"
            )
    mapping = resolve_label_map(label_map, dataset_json=folder / "dataset.json")
    csv_path = Path(metadata_csv) if metadata_csv is not None else folder / "subjects.csv"
    if metadata_csv is not None and not csv_path.is_file():
        raise BrainDataError(f"{csv_path}: metadata CSV not found")
    metadata = _read_metadata(csv_path, sorted(t1)) if csv_path.is_file() else {}
    domain_name = name or folder.name
    subjects = []
    for case in sorted(t1):
        image, label, spacing = _read_pair(t1[case], labels[case], mapping)
        subjects.append(
            Subject(
                subject_id=case,
                image=image,
                label=label,
                spacing=spacing,
                domain=domain_name,
                source=f"{t1[case]} + {labels[case]}",
                **metadata.get(case, {}),
            )
        )
    return BrainDomain(
        name=domain_name,
        subjects=subjects,
        source="real",
        role=role,
        description=f"{domain_name}: {len(subjects)} labelled T1w scans from {folder} ({role or 'no role'})",
    )


def _iseg_training_dir(path: Path) -> Path:
    if any(path.glob("subject-*-T1.hdr")):
        return path
    nested = path / "iSeg-2019-Training"
    if nested.is_dir():
        return nested
    raise BrainDataError(
        f"{path}: no iSeg-2019 subjects; expected subject-<N>-T1.hdr/.img and "
        f"subject-<N>-label.hdr/.img here or in {nested.name}/"
    )


def load_iseg2019(
    path: Path | str, *, modality: str = "T1", name: str = "iSeg-2019", role: str = "meta-test"
) -> BrainDomain:
    """The labelled iSeg-2019 training subjects (6-month infants) from the challenge's Analyze layout.

    ``path`` is ``iSeg-2019-Training/`` or its parent. ``modality`` picks ``T1`` (the paper uses
    T1w) or ``T2``. Labels 10 / 150 / 250 become CSF / GM / WM; every subject is 6 months old.
    """
    if modality not in ("T1", "T2"):
        raise BrainDataError(f"modality: expected 'T1' or 'T2', got {modality!r}")
    folder = Path(path)
    if not folder.is_dir():
        raise BrainDataError(
            f"{folder}: iSeg-2019 folder not found; expected iSeg-2019-Training/ with "
            f"subject-<N>-T1.hdr/.img and subject-<N>-label.hdr/.img"
        )
    folder = _iseg_training_dir(folder)
    pattern = re.compile(rf"subject-(\d+)-{modality}\.hdr$")
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := pattern.match(p.name)))
    if not found:
        raise BrainDataError(f"{folder}: no subject-<N>-{modality}.hdr files; expected the iSeg-2019 Analyze layout")
    subjects = []
    for number, image_path in found:
        label_path = folder / f"subject-{number}-label.hdr"
        if not label_path.is_file():
            raise BrainDataError(
                f"{image_path}: subject-{number} has no label; expected {label_path} (.hdr/.img). "
                f"Only iSeg-2019-Training subjects are labelled"
            )
        image, label, spacing = _read_pair(image_path, label_path, LABEL_MAPS["iseg"])
        subjects.append(
            Subject(
                subject_id=f"subject-{number}",
                image=image,
                label=label,
                spacing=spacing,
                domain=name,
                age_months=ISEG_AGE_MONTHS,
                source=f"{image_path} + {label_path}",
            )
        )
    return BrainDomain(
        name=name,
        subjects=subjects,
        source="real",
        role=role,
        description=f"{name}: {len(subjects)} labelled 6-month infant {modality}w scans "
        f"(iSeg-2019 training, {folder}; {role or 'no role'})",
    )


def _is_iseg(folder: Path) -> bool:
    return any(folder.glob("subject-*-T1.hdr")) or (folder / "iSeg-2019-Training").is_dir()


def load_domains(
    data_root: Path | str | None,
    *,
    meta_train: Sequence[str] | None = None,
    meta_test: Sequence[str] | None = None,
    label_map: str | Mapping[int, int | str] | None = None,
    **embedded: Any,
) -> dict[str, BrainDomain]:
    """All domains of a DuMeta++ run, meta-training pool first, each with its role set.

    With ``data_root=None`` this is the embedded synthetic default, :func:`lifespan_domains`
    (``embedded`` keyword arguments are passed on; ``meta_train``/``meta_test`` pick among its
    domains). Otherwise every name is a folder under ``data_root`` (defaults
    :data:`PAPER_META_TRAIN` and :data:`PAPER_META_TEST`): an iSeg-2019 folder is read with
    :func:`load_iseg2019`, any other with :func:`load_domain_folder` and ``label_map``.
    """
    if data_root is None:
        from .lifespan import META_TEST, META_TRAIN, lifespan_domains

        train, test = tuple(meta_train or META_TRAIN), tuple(meta_test or META_TEST)
        _check_roles(train, test)
        domains = lifespan_domains(domains=train + test, **embedded)
        return {name: domains[name] for name in train + test}
    if embedded:
        raise BrainDataError(
            f"options {sorted(embedded)} apply to the embedded domains only, not to --data-root {data_root}"
        )
    root = Path(data_root)
    if not root.is_dir():
        raise BrainDataError(f"--data-root {root}: folder not found; expected one subfolder per domain")
    train = tuple(meta_train or PAPER_META_TRAIN)
    test = tuple(meta_test or PAPER_META_TEST)
    _check_roles(train, test)
    present = sorted(p.name for p in root.iterdir() if p.is_dir())
    result = {}
    for names, role in ((train, ROLES[0]), (test, ROLES[1])):
        for name in names:
            folder = root / name
            if not folder.is_dir():
                raise BrainDataError(
                    f"{folder}: domain folder not found; expected one folder per domain under {root} (found {present})"
                )
            result[name] = (
                load_iseg2019(folder, name=name, role=role)
                if _is_iseg(folder)
                else load_domain_folder(folder, label_map=label_map, name=name, role=role)
            )
    return result


def _check_roles(train: tuple[str, ...], test: tuple[str, ...]) -> None:
    if not train or not test:
        raise BrainDataError(f"expected at least one meta-train and one meta-test domain, got {train} and {test}")
    overlap = set(train) & set(test)
    if overlap:
        raise BrainDataError(
            f"domains {sorted(overlap)} are both meta-train and meta-test; the meta-test domain "
            f"must be unseen in meta-training"
        )
