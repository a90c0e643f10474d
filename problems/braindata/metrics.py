"""Meta-test metrics of DuMeta++ (Tables I-IV): Dice and ASSD per tissue, STCS and ASPC per series.

Inputs are integer label maps (numpy or torch) with values 0 = background, 1 = CSF, 2 = GM,
3 = WM, of shape ``[X, Y]`` or ``[X, Y, Z]``; ``spacing`` is the voxel size in mm, one entry per
axis, so surface distances are in mm.

Undefined scores are NaN, never an exception, and are counted by :func:`summarise_rows`:

* Dice of a tissue absent from both prediction and ground truth is NaN (0/0, as nnU-Net); absent
  from only one of them it is 0.
* ASSD of a tissue absent from the prediction or the ground truth is NaN (no surface to measure).

Longitudinal consistency (Table IV) compares consecutive time points of a series:

* STCS (spatio-temporal consistency of segmentation, Li et al. 2021): Dice per tissue between the
  segmentation of one time point and that of the next, in a common space. The embedded ADNI-like
  series are generated in one space (no head motion), so none is needed; for real data the scans
  must already be registered to each other (no registration happens here).
* ASPC (absolute symmetrised percent change, Reuter et al. 2012): ``|V2 - V1| / ((V1 + V2) / 2)
  x 100`` per tissue; divided by the interval in years when both ages are known (the rate form of
  Reuter et al., unit "%/year"), else per interval (unit "%"). Each row says which.
"""

from __future__ import annotations

import itertools
import math
import statistics
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_average_surface_distance, compute_dice

from .subjects import NUM_CLASSES, TISSUES, BrainDataError, Subject

__all__ = [
    "aspc",
    "assd_per_tissue",
    "dice_per_tissue",
    "longitudinal_rows",
    "score_subjects",
    "stcs",
    "summarise_rows",
]

LabelMap = np.ndarray | torch.Tensor


def _as_labels(name: str, labels: LabelMap) -> torch.Tensor:
    """``labels`` as an int64 CPU tensor, checked to hold only 0..3."""
    tensor = torch.as_tensor(labels).detach().cpu()
    if tensor.is_floating_point() or tensor.is_complex():
        raise BrainDataError(
            f"{name}: expected an integer label map (0 bg, 1 CSF, 2 GM, 3 WM), got {tensor.dtype}; "
            f"take the argmax over classes first"
        )
    tensor = tensor.long()
    if tensor.dim() not in (2, 3):
        raise BrainDataError(f"{name}: expected a label map of shape [X, Y] or [X, Y, Z], got {tuple(tensor.shape)}")
    if tensor.numel() and (tensor.min() < 0 or tensor.max() >= NUM_CLASSES):
        raise BrainDataError(
            f"{name}: expected label values in 0..{NUM_CLASSES - 1}, got {sorted(torch.unique(tensor).tolist())}"
        )
    return tensor


def _pair(pred: LabelMap, target: LabelMap) -> tuple[torch.Tensor, torch.Tensor]:
    p, t = _as_labels("prediction", pred), _as_labels("target", target)
    if p.shape != t.shape:
        raise BrainDataError(
            f"prediction and target must have the same shape, got {tuple(p.shape)} and {tuple(t.shape)}"
        )
    return p, t


def _one_hot_tissues(labels: torch.Tensor) -> torch.Tensor:
    """``[1, 3, *spatial]`` float one-hot of CSF, GM, WM (background dropped)."""
    return torch.stack([labels == k for k in range(1, NUM_CLASSES)]).unsqueeze(0).float()


def _present(labels: torch.Tensor) -> list[bool]:
    counts = torch.bincount(labels.flatten(), minlength=NUM_CLASSES)
    return [bool(counts[k] > 0) for k in range(1, NUM_CLASSES)]


def dice_per_tissue(pred: LabelMap, target: LabelMap) -> dict[str, float]:
    """Dice of CSF, GM and WM between two label maps (MONAI ``compute_dice``).

    NaN for a tissue present in neither map; 0 for one present in only one of them.
    """
    p, t = _pair(pred, target)
    scores = compute_dice(_one_hot_tissues(p), _one_hot_tissues(t), include_background=True, ignore_empty=False)[0]
    return {
        name: (float(scores[k]) if (in_p or in_t) else math.nan)
        for k, (name, in_p, in_t) in enumerate(zip(TISSUES, _present(p), _present(t), strict=True))
    }


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim or min(spacing) <= 0:
        raise BrainDataError(f"spacing: expected {ndim} positive voxel sizes in mm (one per axis), got {spacing}")
    return spacing


def assd_per_tissue(pred: LabelMap, target: LabelMap, spacing: Sequence[float]) -> dict[str, float]:
    """Average symmetric surface distance in mm of CSF, GM and WM (MONAI, ``symmetric=True``).

    The mean over the distances from every prediction-surface voxel to the target surface and
    from every target-surface voxel to the prediction surface (the classic ASSD). NaN for a
    tissue missing from either map.
    """
    p, t = _pair(pred, target)
    spacing = _check_spacing(spacing, p.dim())
    valid = [k for k, (in_p, in_t) in enumerate(zip(_present(p), _present(t), strict=True)) if in_p and in_t]
    result = dict.fromkeys(TISSUES, math.nan)
    if valid:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # MONAI 1.6 internal always_return_as_numpy notice
            distances = compute_average_surface_distance(
                _one_hot_tissues(p)[:, valid],
                _one_hot_tissues(t)[:, valid],
                include_background=True,
                symmetric=True,
                spacing=list(spacing),
            )[0]
        for k, value in zip(valid, distances.tolist(), strict=True):
            result[TISSUES[k]] = float(value)
    return result


def stcs(seg_a: LabelMap, seg_b: LabelMap) -> dict[str, float]:
    """Spatio-temporal consistency: Dice per tissue between two time points' segmentations.

    Both must be in one common space (same grid, voxel to voxel); see the module docstring.
    """
    return dice_per_tissue(seg_a, seg_b)


def aspc(seg_a: LabelMap, seg_b: LabelMap, spacing: Sequence[float], *, years: float | None = None) -> dict[str, float]:
    """Absolute symmetrised percent change of each tissue's volume between two time points.

    ``|V_b - V_a| / ((V_a + V_b) / 2) * 100``, divided by ``years`` when given (a rate in %/year).
    NaN for a tissue absent from both segmentations. The two maps may have different grids.
    """
    a, b = _as_labels("first segmentation", seg_a), _as_labels("second segmentation", seg_b)
    voxel = float(np.prod(_check_spacing(spacing, a.dim())))
    if b.dim() != a.dim():
        raise BrainDataError(f"segmentations must both be 2D or both 3D, got {tuple(a.shape)} and {tuple(b.shape)}")
    if years is not None and not years > 0:
        raise BrainDataError(f"years: expected a positive interval between the two scans, got {years}")
    va = torch.bincount(a.flatten(), minlength=NUM_CLASSES).double() * voxel
    vb = torch.bincount(b.flatten(), minlength=NUM_CLASSES).double() * voxel
    result = {}
    for k, name in enumerate(TISSUES, start=1):
        mean = (va[k] + vb[k]) / 2
        change = float(abs(vb[k] - va[k]) / mean * 100) if mean > 0 else math.nan
        result[name] = change / years if years is not None else change
    return result


def _prediction_for(predictions: Mapping[str, LabelMap], subject: Subject) -> LabelMap:
    if subject.subject_id not in predictions:
        raise BrainDataError(
            f"no prediction for subject {subject.subject_id!r}; predictions hold "
            f"{sorted(predictions)[:8]}{' ...' if len(predictions) > 8 else ''}"
        )
    prediction = predictions[subject.subject_id]
    if tuple(prediction.shape) != subject.label.shape:
        raise BrainDataError(
            f"prediction for {subject.subject_id!r} has shape {tuple(prediction.shape)}, "
            f"expected the subject's label shape {subject.label.shape}"
        )
    return prediction


def score_subjects(predictions: Mapping[str, LabelMap], subjects: Iterable[Subject]) -> list[dict[str, Any]]:
    """Dice and ASSD (mm) per tissue of each subject's prediction against its label.

    ``predictions`` maps ``subject_id`` to an integer label map on the subject's grid. Returns
    rows ``{"subject", "domain", "metric" ("Dice" | "ASSD"), "tissue", "value"}`` for the
    reporting layer.
    """
    rows = []
    for subject in subjects:
        prediction = _prediction_for(predictions, subject)
        for metric, scores in (
            ("Dice", dice_per_tissue(prediction, subject.label)),
            ("ASSD", assd_per_tissue(prediction, subject.label, subject.spacing)),
        ):
            rows += [
                {
                    "subject": subject.subject_id,
                    "domain": subject.domain,
                    "metric": metric,
                    "tissue": tissue,
                    "value": value,
                }
                for tissue, value in scores.items()
            ]
    return rows


def longitudinal_rows(predictions: Mapping[str, LabelMap], subjects: Iterable[Subject]) -> list[dict[str, Any]]:
    """STCS and ASPC per tissue for each pair of consecutive time points of every series.

    Subjects without a series, or alone in theirs, are skipped. Pass ``{s.subject_id: s.label}``
    as ``predictions`` to measure the reference labels' own change. Rows:
    ``{"series", "pair" ("t0-t1"), "metric" ("STCS" | "ASPC"), "tissue", "value", "unit"}``.
    """
    groups: dict[str, list[Subject]] = defaultdict(list)
    for subject in subjects:
        if subject.series is not None:
            groups[subject.series].append(subject)
    rows = []
    for series, scans in sorted(groups.items()):
        scans = sorted(scans, key=lambda s: s.time_point)
        for first, second in itertools.pairwise(scans):
            seg_a, seg_b = _prediction_for(predictions, first), _prediction_for(predictions, second)
            if first.label.shape != second.label.shape:
                raise BrainDataError(
                    f"series {series!r}: {first.subject_id!r} {first.label.shape} and "
                    f"{second.subject_id!r} {second.label.shape} are not in one common space; "
                    f"STCS needs the time points registered to one grid"
                )
            years = None
            if first.age_months is not None and second.age_months is not None:
                years = (second.age_months - first.age_months) / 12.0
                if years <= 0:
                    raise BrainDataError(
                        f"series {series!r}: age of {second.subject_id!r} ({second.age_months} "
                        f"months) must exceed that of {first.subject_id!r} ({first.age_months})"
                    )
            pair = f"t{first.time_point}-t{second.time_point}"
            base = {"series": series, "pair": pair, "domain": first.domain}
            rows += [
                {**base, "metric": "STCS", "tissue": tissue, "value": value, "unit": "Dice"}
                for tissue, value in stcs(seg_a, seg_b).items()
            ]
            unit = "%/year" if years is not None else "%"
            rows += [
                {**base, "metric": "ASPC", "tissue": tissue, "value": value, "unit": unit}
                for tissue, value in aspc(seg_a, seg_b, first.spacing, years=years).items()
            ]
    return rows


def summarise_rows(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{metric: {tissue: {"mean", "std", "n", "n_undefined"}}}`` over rows (NaN values counted apart).

    ``std`` is the sample standard deviation (0 for a single value); ``n`` counts finite values;
    ``mean`` and ``std`` are NaN when no value is finite.
    """
    groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        groups[row["metric"]][row["tissue"]].append(float(row["value"]))
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for metric, by_tissue in groups.items():
        summary[metric] = {}
        for tissue in [t for t in TISSUES if t in by_tissue] + [t for t in by_tissue if t not in TISSUES]:
            values = by_tissue[tissue]
            finite = [v for v in values if math.isfinite(v)]
            summary[metric][tissue] = {
                "mean": statistics.fmean(finite) if finite else math.nan,
                "std": statistics.stdev(finite) if len(finite) > 1 else (0.0 if finite else math.nan),
                "n": len(finite),
                "n_undefined": len(values) - len(finite),
            }
    return summary
