"""Dice / ASSD per tissue (MONAI) against independent counts and brute-force surface distances; STCS, ASPC."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from braindata_fixtures import toy_labels, toy_subject
from scipy import ndimage

from problems.braindata import (
    BrainDataError,
    aspc,
    assd_per_tissue,
    dice_per_tissue,
    longitudinal_rows,
    score_subjects,
    stcs,
    summarise_rows,
)


def _shifted(labels: np.ndarray, shift: int, axis: int) -> np.ndarray:
    return np.roll(labels, shift, axis=axis)


def _brute_force_assd(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> float:
    """Mean of all boundary-to-boundary nearest distances in both directions (boundary = mask minus its erosion)."""

    def boundary(mask: np.ndarray) -> np.ndarray:
        return np.argwhere(mask & ~ndimage.binary_erosion(mask)) * np.asarray(spacing)

    pa, pb = boundary(a), boundary(b)
    d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return float(np.concatenate([d.min(axis=1), d.min(axis=0)]).mean())


def test_dice_matches_counts() -> None:
    target = toy_labels((16, 14, 12))
    pred = _shifted(target, 1, axis=0)
    scores = dice_per_tissue(pred, torch.as_tensor(target))  # numpy and torch inputs mix
    for k, tissue in enumerate(("CSF", "GM", "WM"), start=1):
        a, b = pred == k, target == k
        assert scores[tissue] == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()), rel=1e-6)
    assert dice_per_tissue(target, target) == {"CSF": 1.0, "GM": 1.0, "WM": 1.0}


def test_dice_empty_tissues() -> None:
    target = toy_labels()
    no_csf = np.where(target == 1, 2, target)
    assert math.isnan(dice_per_tissue(no_csf, no_csf)["CSF"])  # absent from both: undefined
    assert dice_per_tissue(no_csf, target)["CSF"] == 0.0  # missed entirely
    assert dice_per_tissue(target, no_csf)["CSF"] == 0.0  # predicted where there is none


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 1.0, 0.5)])
def test_assd_matches_brute_force_in_mm(spacing: tuple[float, float, float]) -> None:
    target = toy_labels((16, 14, 12))
    pred = _shifted(target, 1, axis=0)
    scores = assd_per_tissue(pred, target, spacing)
    for k, tissue in enumerate(("CSF", "GM", "WM"), start=1):
        assert scores[tissue] == pytest.approx(_brute_force_assd(pred == k, target == k, spacing), rel=1e-5)
    assert assd_per_tissue(target, target, spacing) == {"CSF": 0.0, "GM": 0.0, "WM": 0.0}


def test_assd_2d_and_empty_tissue_gives_nan_without_warnings() -> None:
    target = toy_labels((16, 14, 12))[:, :, 6]
    pred = np.where(target == 1, 0, target)  # CSF never predicted
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = assd_per_tissue(pred, target, (1.0, 1.0))
    assert math.isnan(scores["CSF"])
    assert scores["GM"] == pytest.approx(_brute_force_assd(pred == 2, target == 2, (1.0, 1.0)), rel=1e-5)


def test_metric_input_errors() -> None:
    labels = toy_labels()
    with pytest.raises(BrainDataError, match="expected an integer label map"):
        dice_per_tissue(labels.astype(np.float32), labels)
    bad = labels.copy()
    bad[0, 0, 0] = 5
    with pytest.raises(BrainDataError, match=r"prediction: expected label values in 0..3, got \[0, 1, 2, 3, 5\]"):
        dice_per_tissue(bad, labels)
    with pytest.raises(BrainDataError, match="same shape"):
        dice_per_tissue(labels[:-1], labels)
    with pytest.raises(BrainDataError, match=r"spacing: expected 3 positive voxel sizes"):
        assd_per_tissue(labels, labels, (1.0, 1.0))


def test_aspc_and_stcs() -> None:
    a = np.zeros((10, 10, 10), dtype=np.int64)
    b = a.copy()
    a[:5, :5, :4] = 1  # 100 CSF voxels
    b[:5, :5, :4] = 1
    b[5:, :5, :4] = 1
    b[5:, 5:, :4] = 1  # 300 CSF voxels
    a[:, :, 5:] = 3  # 500 WM in both
    b[:, :, 5:] = 3
    change = aspc(a, b, (2.0, 2.0, 2.0))
    assert change["CSF"] == pytest.approx(200 / 200 * 100)
    assert change["WM"] == 0.0 and math.isnan(change["GM"])
    assert aspc(a, b, (1.0, 1.0, 1.0), years=2.0)["CSF"] == pytest.approx(50.0)  # a rate per year
    consistency = stcs(a, b)
    assert consistency["CSF"] == pytest.approx(2 * 100 / 400) and consistency["WM"] == 1.0
    with pytest.raises(BrainDataError, match="positive interval"):
        aspc(a, b, (1.0, 1.0, 1.0), years=0.0)


def test_score_subjects_and_longitudinal_rows() -> None:
    scans = [
        toy_subject("p-t0", series="p", time_point=0, age_months=900.0),
        toy_subject("p-t1", series="p", time_point=1, age_months=918.0),
        toy_subject("q", age_months=800.0),
    ]
    grown = np.where(ndimage.binary_dilation(scans[1].label == 1) & (scans[1].label > 0), 1, scans[1].label)
    predictions = {"p-t0": scans[0].label, "p-t1": grown, "q": np.where(scans[2].label == 1, 0, scans[2].label)}

    rows = score_subjects(predictions, scans)
    assert len(rows) == 3 * 2 * 3 and {r["metric"] for r in rows} == {"Dice", "ASSD"}
    q_csf = [r for r in rows if r["subject"] == "q" and r["tissue"] == "CSF"]
    assert [r["value"] for r in q_csf if r["metric"] == "Dice"] == [0.0]
    assert all(math.isnan(r["value"]) for r in q_csf if r["metric"] == "ASSD")
    summary = summarise_rows(rows)
    assert summary["ASSD"]["CSF"]["n"] == 2 and summary["ASSD"]["CSF"]["n_undefined"] == 1
    assert summary["Dice"]["GM"]["mean"] == pytest.approx(
        np.mean([r["value"] for r in rows if r["metric"] == "Dice" and r["tissue"] == "GM"])
    )

    longitudinal = longitudinal_rows(predictions, scans)  # "q" has no series: skipped
    assert {(r["series"], r["pair"]) for r in longitudinal} == {("p", "t0-t1")}
    by = {(r["metric"], r["tissue"]): r for r in longitudinal}
    v0, v1 = (scans[0].label == 1).sum(), (grown == 1).sum()
    assert by["ASPC", "CSF"]["value"] == pytest.approx(abs(v1 - v0) / ((v0 + v1) / 2) * 100 / 1.5)  # 18 months
    assert by["ASPC", "CSF"]["unit"] == "%/year"
    assert by["STCS", "CSF"]["value"] == pytest.approx(dice_per_tissue(grown, scans[0].label)["CSF"])
    assert by["STCS", "WM"]["value"] < 1.0 and by["ASPC", "WM"]["value"] > 0.0
    reference = longitudinal_rows({s.subject_id: s.label for s in scans}, scans)
    assert all(r["value"] == (1.0 if r["metric"] == "STCS" else 0.0) for r in reference)


def test_score_errors_name_the_subject() -> None:
    scans = [
        toy_subject("a", series="p", time_point=0, age_months=10.0),
        toy_subject("b", series="p", time_point=1, age_months=10.0),
    ]
    with pytest.raises(BrainDataError, match="no prediction for subject 'a'"):
        score_subjects({}, scans)
    with pytest.raises(BrainDataError, match=r"prediction for 'a' has shape \(3, 3, 3\), expected"):
        score_subjects({"a": np.zeros((3, 3, 3), dtype=np.int64)}, scans)
    with pytest.raises(BrainDataError, match=r"age of 'b' \(10.0 months\) must exceed that of 'a'"):
        longitudinal_rows({s.subject_id: s.label for s in scans}, scans)
