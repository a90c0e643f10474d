"""The records every brain-tissue loader returns: one :class:`Subject` (a T1w volume with its
CSF/GM/WM label map) and one :class:`BrainDomain` (the subjects of one dataset or age group).

All loaders agree on these conventions, so the DuMeta++ levels never look at a file format:

* label values 0 = background, 1 = CSF, 2 = GM, 3 = WM (``TISSUES[k - 1]`` names value ``k``);
* arrays are ``[X, Y, Z]`` in RAS+ voxel order (nibabel's closest canonical orientation), so
  ``image[:, :, k]`` is an axial slice, inferior to superior in ``k``;
* intensities are scaled per volume to [0, 1] by :func:`normalise_intensity` (robust min/max:
  the 0.5th and 99.5th percentiles of the non-zero voxels, clipped).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

__all__ = [
    "LOWER_PERCENTILE",
    "NUM_CLASSES",
    "ROLES",
    "TISSUES",
    "UPPER_PERCENTILE",
    "BrainDataError",
    "BrainDomain",
    "Subject",
    "normalise_intensity",
]

TISSUES: tuple[str, ...] = ("CSF", "GM", "WM")
"""Tissue names; label value ``k`` (1..3) is ``TISSUES[k - 1]``, 0 is background."""

NUM_CLASSES = len(TISSUES) + 1
"""Classes of a segmentation network's output: background + the three tissues."""

ROLES: tuple[str, ...] = ("meta-train", "meta-test")
"""What a domain is for: the meta-training pool, or an unseen domain for one-/few-shot meta-test."""

LOWER_PERCENTILE, UPPER_PERCENTILE = 0.5, 99.5
"""Percentiles of the non-zero voxels mapped to 0 and 1 by :func:`normalise_intensity`."""


class BrainDataError(ValueError):
    """Bad or missing brain data; the message names the file or folder and what was expected."""


def normalise_intensity(volume: np.ndarray) -> np.ndarray:
    """``volume`` scaled to [0, 1] as float32: robust per-volume min/max scaling.

    The 0.5th and 99.5th percentiles of the non-zero voxels (the skull-stripped head; all voxels
    if none is zero) become 0 and 1, and values outside are clipped, so a few hot voxels or a
    background offset do not squash the tissue contrast. Zero voxels (the background of a
    skull-stripped scan) stay 0.
    """
    volume = np.asarray(volume, dtype=np.float32)
    if not np.isfinite(volume).all():
        raise BrainDataError("image holds NaN or infinite values; expected finite intensities")
    foreground = volume[volume != 0]
    reference = foreground if foreground.size else volume.ravel()
    low, high = np.percentile(reference, [LOWER_PERCENTILE, UPPER_PERCENTILE])
    if high <= low:
        raise BrainDataError(f"image is constant ({low:g}); expected a T1-weighted volume with contrast")
    scaled = np.clip((volume - low) / (high - low), 0.0, 1.0)
    scaled[volume == 0] = 0.0
    return scaled.astype(np.float32)


@dataclass(eq=False)  # arrays have no single truth value: subjects compare by identity
class Subject:
    """One T1-weighted scan with its tissue labels (a subject at one time point).

    Attributes:
        subject_id: unique within its domain, e.g. ``"subject-3"`` or ``"elderly-s02-t1"``.
        image: float32 ``[X, Y, Z]`` in [0, 1] (see :func:`normalise_intensity`).
        label: int64 ``[X, Y, Z]`` in {0, 1, 2, 3} = background, CSF, GM, WM.
        spacing: voxel size in mm along X, Y, Z.
        domain: name of the :class:`BrainDomain` it belongs to.
        age_months: age at the scan, if known.
        series: longitudinal series id (the same person across time points), if any.
        time_point: 0-based index of the scan within its series, if any.
        source: the file path(s) it was read from, or ``"embedded"`` for the synthetic default.
    """

    subject_id: str
    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]
    domain: str
    age_months: float | None = None
    series: str | None = None
    time_point: int | None = None
    source: str = ""

    def __post_init__(self) -> None:
        where = f"subject {self.subject_id!r} ({self.source or self.domain})"
        if self.image.ndim != 3 or self.image.shape != self.label.shape:
            raise BrainDataError(
                f"{where}: expected image and label of equal 3D shape [X, Y, Z], got "
                f"{self.image.shape} and {self.label.shape}"
            )
        if self.image.dtype != np.float32 or self.label.dtype != np.int64:
            raise BrainDataError(
                f"{where}: expected a float32 image and an int64 label, got {self.image.dtype} and {self.label.dtype}"
            )
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise BrainDataError(f"{where}: expected three positive voxel sizes in mm, got {self.spacing}")
        if (self.series is None) != (self.time_point is None):
            raise BrainDataError(
                f"{where}: series and time_point go together, got series={self.series!r}, "
                f"time_point={self.time_point!r}"
            )

    @property
    def tissue_volumes_ml(self) -> dict[str, float]:
        """Volume of each tissue in millilitres (voxel count times voxel volume)."""
        voxel_ml = float(np.prod(self.spacing)) / 1000.0
        counts = np.bincount(self.label.ravel(), minlength=NUM_CLASSES)
        return {name: float(counts[k + 1]) * voxel_ml for k, name in enumerate(TISSUES)}


@dataclass(eq=False)
class BrainDomain:
    """The subjects of one dataset (real) or one age group (embedded).

    Attributes:
        name: key of the domain, e.g. ``"infant6m"`` or the folder name ``"OASIS3"``.
        subjects: its scans, sorted by ``subject_id``.
        source: ``"embedded"`` (synthetic, made by :func:`lifespan_domains`) or ``"real"``.
        description: one line for results.md; embedded domains say they are synthetic.
        role: ``"meta-train"``, ``"meta-test"`` or ``""`` when the caller has not assigned one.
    """

    name: str
    subjects: list[Subject]
    source: str
    description: str
    role: str = ""

    def __post_init__(self) -> None:
        if not self.subjects:
            raise BrainDataError(f"domain {self.name!r} has no subjects; expected at least one labelled scan")
        if self.source not in ("embedded", "real"):
            raise BrainDataError(f"domain {self.name!r}: source must be 'embedded' or 'real', got {self.source!r}")
        if self.role not in ("", *ROLES):
            raise BrainDataError(f"domain {self.name!r}: role must be one of {ROLES}, got {self.role!r}")
        ids = [s.subject_id for s in self.subjects]
        if len(set(ids)) != len(ids):
            raise BrainDataError(f"domain {self.name!r}: subject ids repeat: {sorted(ids)}")

    def series(self) -> dict[str, list[Subject]]:
        """Longitudinal series id -> its scans sorted by time point (only series with >= 2 scans)."""
        groups: dict[str, list[Subject]] = defaultdict(list)
        for subject in self.subjects:
            if subject.series is not None:
                groups[subject.series].append(subject)
        return {
            sid: sorted(scans, key=lambda s: s.time_point) for sid, scans in sorted(groups.items()) if len(scans) >= 2
        }

    def __len__(self) -> int:
        return len(self.subjects)
